ALTER TABLE identity_sso_logins ADD COLUMN cli_port BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identity_sso_logins ADD COLUMN cli_challenge TEXT NOT NULL DEFAULT '';
CREATE TABLE identity_sso_cli_codes (
    code_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    challenge TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
