CREATE TABLE identity_orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE identity_users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES identity_orgs (id),
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    totp_sealed __BLOB__,
    totp_enabled BIGINT NOT NULL DEFAULT 0,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX identity_users_org ON identity_users (org_id);
CREATE TABLE identity_recovery_codes (
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at_ms BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
CREATE TABLE identity_sessions (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    last_seen_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    user_agent TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE INDEX identity_sessions_user ON identity_sessions (user_id);
CREATE TABLE identity_tokens (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    last_used_at_ms BIGINT NOT NULL DEFAULT 0,
    revoked_at_ms BIGINT
);
CREATE INDEX identity_tokens_org_user ON identity_tokens (org_id, user_id);
CREATE TABLE identity_audit (
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
CREATE INDEX identity_audit_org_at ON identity_audit (org_id, at_ms);
