-- A disabled account: no login (password or single sign-on) and no credential of
-- it works until an administrator of its home org enables it again.
ALTER TABLE identity_users ADD COLUMN disabled_at_ms BIGINT NOT NULL DEFAULT 0;
-- What a provider that creates users on first login gives them.
ALTER TABLE identity_sso_providers ADD COLUMN new_user_scopes TEXT NOT NULL DEFAULT '[]';
ALTER TABLE identity_sso_providers ADD COLUMN new_user_groups TEXT NOT NULL DEFAULT '[]';
