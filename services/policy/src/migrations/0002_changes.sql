CREATE TABLE policy_intents (
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    selector TEXT NOT NULL,
    spec TEXT NOT NULL,
    deleted BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (org_id, name, version)
);
CREATE TABLE policy_plans (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    intent TEXT NOT NULL,
    intent_version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    hash TEXT NOT NULL,
    state TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    decided_by TEXT NOT NULL,
    decided_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX policy_plans_org ON policy_plans (org_id, created_at_ms);
CREATE TABLE policy_plan_targets (
    plan_id TEXT NOT NULL REFERENCES policy_plans (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    wave BIGINT NOT NULL,
    base_hash TEXT NOT NULL,
    artifact TEXT NOT NULL,
    diff TEXT NOT NULL,
    drift BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (plan_id, node)
);
CREATE TABLE policy_org_settings (
    org_id TEXT PRIMARY KEY,
    four_eyes TEXT NOT NULL
);
