CREATE TABLE storage_buckets (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    surface TEXT NOT NULL,
    active_deployment_id TEXT,
    created_at_ms BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE storage_kv (
    bucket_id TEXT NOT NULL REFERENCES storage_buckets (id) ON DELETE CASCADE,
    key TEXT __COLLATE__ NOT NULL,
    value TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_id, key)
);
CREATE INDEX storage_kv_expiry ON storage_kv (expires_at_ms);
CREATE TABLE storage_deployments (
    id TEXT PRIMARY KEY,
    bucket_id TEXT NOT NULL REFERENCES storage_buckets (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    file_count BIGINT NOT NULL,
    total_bytes BIGINT NOT NULL
);
CREATE INDEX storage_deployments_bucket ON storage_deployments (bucket_id, id);
CREATE TABLE storage_files (
    deployment_id TEXT NOT NULL REFERENCES storage_deployments (id) ON DELETE CASCADE,
    path TEXT __COLLATE__ NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (deployment_id, path)
);
CREATE TABLE storage_blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE storage_bindings (
    host TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    bucket_id TEXT NOT NULL REFERENCES storage_buckets (id) ON DELETE CASCADE,
    enabled BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX storage_bindings_org ON storage_bindings (org_id);
CREATE TABLE storage_tokens (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    surface TEXT NOT NULL,
    access TEXT NOT NULL,
    buckets TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE INDEX storage_tokens_org ON storage_tokens (org_id);
CREATE TABLE storage_audit (
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
CREATE INDEX storage_audit_org_at ON storage_audit (org_id, at_ms);
