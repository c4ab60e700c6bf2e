-- Users belong to one or more orgs, with scopes per membership. A user's own row
-- keeps its home org (where the account is administered: password, TOTP, unlock);
-- the membership in the home org is created with the user.
CREATE TABLE identity_memberships (
    org_id TEXT NOT NULL REFERENCES identity_orgs (id),
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    scopes TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX identity_memberships_user ON identity_memberships (user_id);
INSERT INTO identity_memberships (org_id, user_id, scopes, created_at_ms)
SELECT org_id, id, scopes, created_at_ms FROM identity_users;
-- The platform scope orgs:admin (which `*` does not include) goes to the bootstrap
-- admin of the first org.
UPDATE identity_memberships SET scopes = '["*","orgs:admin"]'
WHERE scopes = '["*"]'
  AND user_id IN (SELECT id FROM identity_users WHERE username = 'admin')
  AND org_id IN (SELECT id FROM identity_orgs WHERE name = 'default');
ALTER TABLE identity_users DROP COLUMN scopes;
-- An org being deleted (no credential works in it any more; the deletion resumes
-- until every service has let go of it), and its limits (0: none).
ALTER TABLE identity_orgs ADD COLUMN deleting_at_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identity_orgs ADD COLUMN max_buckets BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identity_orgs ADD COLUMN max_stored_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identity_orgs ADD COLUMN max_nodes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identity_orgs ADD COLUMN max_tokens BIGINT NOT NULL DEFAULT 0;
-- One-time invitations of an existing user into an org.
CREATE TABLE identity_invitations (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES identity_orgs (id),
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT
);
CREATE INDEX identity_invitations_org ON identity_invitations (org_id);
