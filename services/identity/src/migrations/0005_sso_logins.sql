CREATE TABLE identity_sso_logins (
    state_hash TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    pkce_verifier_sealed TEXT NOT NULL,
    return_to TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE TABLE identity_sso_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    bound_at_ms BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
