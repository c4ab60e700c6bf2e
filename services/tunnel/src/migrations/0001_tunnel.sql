CREATE TABLE tunnel_join_tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT NOT NULL DEFAULT 0,
    node_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE tunnel_nodes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    labels TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    agent_capabilities TEXT NOT NULL DEFAULT '[]',
    proxy_ports TEXT NOT NULL DEFAULT '[]',
    token_hash TEXT NOT NULL UNIQUE,
    facts __BLOB__,
    last_metrics __BLOB__,
    status TEXT NOT NULL,
    status_reason TEXT NOT NULL DEFAULT '',
    last_seen_ms BIGINT NOT NULL DEFAULT 0,
    connected_since_ms BIGINT NOT NULL DEFAULT 0,
    enrolled_at_ms BIGINT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT ''
);
CREATE INDEX tunnel_nodes_org ON tunnel_nodes (org_id, hostname);
CREATE TABLE tunnel_metrics (
    node_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    sample __BLOB__ NOT NULL,
    PRIMARY KEY (node_id, at_ms)
);
CREATE INDEX tunnel_metrics_age ON tunnel_metrics (at_ms);
CREATE TABLE tunnel_logs (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    source TEXT NOT NULL,
    priority BIGINT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX tunnel_logs_node ON tunnel_logs (node_id, at_ms);
CREATE INDEX tunnel_logs_age ON tunnel_logs (at_ms);
CREATE TABLE tunnel_audit (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    detail TEXT NOT NULL
);
