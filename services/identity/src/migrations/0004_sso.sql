CREATE TABLE identity_sso_providers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed TEXT NOT NULL,
    scopes TEXT NOT NULL,
    username_claim TEXT NOT NULL,
    require_verified_email BIGINT NOT NULL,
    create_users BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (org_id, name)
);
