CREATE TABLE identity_groups (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES identity_orgs (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (org_id, name)
);
CREATE TABLE identity_group_members (
    group_id TEXT NOT NULL REFERENCES identity_groups (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES identity_users (id) ON DELETE CASCADE,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX identity_group_members_user ON identity_group_members (user_id);
-- Every org has its `admins` group; an existing org's holds every user of the org
-- who has the `*` scope (scopes are a JSON array of strings).
INSERT INTO identity_groups (id, org_id, name, description, created_at_ms, updated_at_ms)
SELECT __UUID__, id, 'admins', 'Administrators of the org', __NOW_MS__, __NOW_MS__
FROM identity_orgs;
INSERT INTO identity_group_members (group_id, user_id, added_at_ms)
SELECT g.id, u.id, __NOW_MS__
FROM identity_groups g JOIN identity_users u ON u.org_id = g.org_id
WHERE g.name = 'admins' AND u.scopes LIKE '%"*"%';
