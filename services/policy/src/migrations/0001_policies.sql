CREATE TABLE policy_policies (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    text_sha256 TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    description TEXT NOT NULL,
    expires_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE policy_orgs (
    org_id TEXT PRIMARY KEY,
    seeded_at_ms BIGINT NOT NULL
);
CREATE TABLE policy_audit (
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
CREATE INDEX policy_audit_org_at ON policy_audit (org_id, at_ms);
