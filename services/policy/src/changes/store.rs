//! The reviewed-change tables: intents (every version kept), plans (immutable
//! once rendered; only their state moves), their targets, and per-org settings.
//! Every query filters by `org_id`.

use lattice_core::db::Db;
use lattice_core::time::now_ms;

/// One version of an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRow {
    /// Name, unique per org.
    pub name: String,
    /// 1, 2, ...
    pub version: i64,
    /// `firewall`, ...
    pub kind: String,
    /// The selector, as JSON text.
    pub selector: String,
    /// The spec, as JSON text.
    pub spec: String,
    /// This version deletes the intent.
    pub deleted: bool,
    /// When.
    pub created_at_ms: i64,
    /// Who (username).
    pub created_by: String,
}

type IntentTuple = (String, i64, String, String, String, i64, i64, String);
macro_rules! intent_cols {
    () => {
        "name, version, kind, selector, spec, deleted, created_at_ms, created_by"
    };
}

fn intent(t: IntentTuple) -> IntentRow {
    IntentRow {
        name: t.0,
        version: t.1,
        kind: t.2,
        selector: t.3,
        spec: t.4,
        deleted: t.5 != 0,
        created_at_ms: t.6,
        created_by: t.7,
    }
}

/// A plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    /// Id (UUIDv7).
    pub id: String,
    /// Org.
    pub org_id: String,
    /// The intent it renders.
    pub intent: String,
    /// That intent's version.
    pub intent_version: i64,
    /// Its kind.
    pub kind: String,
    /// What an approver sends back.
    pub hash: String,
    /// `pending`, `approved`, `applying`, `applied`, `failed`, `halted`,
    /// `rejected`, `cancelled`, `expired`.
    pub state: String,
    /// Who rendered it (username).
    pub author: String,
    /// When.
    pub created_at_ms: i64,
    /// A pending plan not approved by then is expired.
    pub expires_at_ms: i64,
    /// Who approved, rejected or cancelled it ("" while pending).
    pub decided_by: String,
    /// When (0 while pending).
    pub decided_at_ms: i64,
    /// A rejection's or a halt's reason.
    pub reason: String,
    /// The managed artifact it changes on each node (`firewall`, `dns:<zone>`,
    /// `proxy`, `agent`).
    pub artifact_name: String,
}

type PlanTuple = (
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    i64,
    String,
    String,
);
macro_rules! plan_cols {
    () => {
        "id, org_id, intent, intent_version, kind, hash, state, author, created_at_ms, expires_at_ms, decided_by, decided_at_ms, reason, artifact_name"
    };
}

fn plan(t: PlanTuple) -> PlanRow {
    PlanRow {
        id: t.0,
        org_id: t.1,
        intent: t.2,
        intent_version: t.3,
        kind: t.4,
        hash: t.5,
        state: t.6,
        author: t.7,
        created_at_ms: t.8,
        expires_at_ms: t.9,
        decided_by: t.10,
        decided_at_ms: t.11,
        reason: t.12,
        artifact_name: t.13,
    }
}

/// One node of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    /// Node id.
    pub node: String,
    /// Rollout wave: 0 is the canary.
    pub wave: i64,
    /// What the node had when the plan was rendered.
    pub base_hash: String,
    /// What it will have.
    pub artifact: String,
    /// Base to artifact.
    pub diff: String,
    /// The node's state was not the last one Lattice applied (a hand edit).
    pub drift: bool,
    /// The apply task ("" until dispatched).
    pub task_id: String,
    /// `waiting`, `queued`, `applied`, `failed`, `skipped`.
    pub state: String,
    /// The agent's result (JSON text, "" until it reports).
    pub result: String,
}

type TargetTuple = (
    String,
    i64,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
);
macro_rules! target_cols {
    () => {
        "node, wave, base_hash, artifact, diff, drift, task_id, state, result"
    };
}

fn target(t: TargetTuple) -> TargetRow {
    TargetRow {
        node: t.0,
        wave: t.1,
        base_hash: t.2,
        artifact: t.3,
        diff: t.4,
        drift: t.5 != 0,
        task_id: t.6,
        state: t.7,
        result: t.8,
    }
}

/// The reviewed-change tables.
#[derive(Debug, Clone)]
pub struct ChangeStore {
    db: Db,
}

impl ChangeStore {
    /// Over `db` (migrated with the policy migrations).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Add a version of intent `name` (the next number); a concurrent writer of
    /// the same intent makes this a unique violation.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_intent(
        &self,
        org: &str,
        name: &str,
        kind: &str,
        selector: &str,
        spec: &str,
        deleted: bool,
        by: &str,
    ) -> sqlx::Result<IntentRow> {
        let (latest,): (Option<i64>,) = sqlx::query_as(
            "SELECT MAX(version) FROM policy_intents WHERE org_id = $1 AND name = $2",
        )
        .bind(org)
        .bind(name)
        .fetch_one(self.db.pool())
        .await?;
        let row = IntentRow {
            name: name.to_owned(),
            version: latest.unwrap_or(0) + 1,
            kind: kind.to_owned(),
            selector: selector.to_owned(),
            spec: spec.to_owned(),
            deleted,
            created_at_ms: now_ms(),
            created_by: by.to_owned(),
        };
        sqlx::query(
            "INSERT INTO policy_intents (org_id, name, version, kind, selector, spec, deleted, created_at_ms, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(org)
        .bind(&row.name)
        .bind(row.version)
        .bind(&row.kind)
        .bind(&row.selector)
        .bind(&row.spec)
        .bind(i64::from(deleted))
        .bind(row.created_at_ms)
        .bind(&row.created_by)
        .execute(self.db.pool())
        .await?;
        Ok(row)
    }

    /// Every version of intent `name`, newest first.
    pub async fn intent_history(&self, org: &str, name: &str) -> sqlx::Result<Vec<IntentRow>> {
        let rows: Vec<IntentTuple> = sqlx::query_as(concat!(
            "SELECT ",
            intent_cols!(),
            " FROM policy_intents WHERE org_id = $1 AND name = $2 ORDER BY version DESC"
        ))
        .bind(org)
        .bind(name)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(intent).collect())
    }

    /// The newest version of intent `name` (a deletion included).
    pub async fn latest_intent(&self, org: &str, name: &str) -> sqlx::Result<Option<IntentRow>> {
        let row: Option<IntentTuple> = sqlx::query_as(concat!(
            "SELECT ",
            intent_cols!(),
            " FROM policy_intents WHERE org_id = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
        ))
        .bind(org)
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(intent))
    }

    /// The newest version of every live intent of `org`, by name.
    pub async fn list_intents(&self, org: &str) -> sqlx::Result<Vec<IntentRow>> {
        let rows: Vec<IntentTuple> = sqlx::query_as(concat!("SELECT ", intent_cols!(), " FROM policy_intents i WHERE org_id = $1 AND version = \
             (SELECT MAX(version) FROM policy_intents j WHERE j.org_id = i.org_id AND j.name = i.name) \
             AND deleted = 0 ORDER BY name"))
        .bind(org)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(intent).collect())
    }

    /// The newest version of every live intent of `kind`, of every org: (org, row).
    pub async fn live_intents_of_kind(&self, kind: &str) -> sqlx::Result<Vec<(String, IntentRow)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT org_id, name FROM policy_intents i WHERE kind = $1 AND version = \
             (SELECT MAX(version) FROM policy_intents j WHERE j.org_id = i.org_id AND j.name = i.name) \
             AND deleted = 0 ORDER BY org_id, name LIMIT 10000",
        )
        .bind(kind)
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (org, name) in rows {
            if let Some(row) = self.latest_intent(&org, &name).await? {
                out.push((org, row));
            }
        }
        Ok(out)
    }

    /// The newest plan of intent `name` at `version` (None: never planned).
    pub async fn latest_plan_of(
        &self,
        org: &str,
        name: &str,
        version: i64,
    ) -> sqlx::Result<Option<PlanRow>> {
        let row: Option<PlanTuple> = sqlx::query_as(concat!(
            "SELECT ",
            plan_cols!(),
            " FROM policy_plans WHERE org_id = $1 AND intent = $2 AND intent_version = $3 \
             ORDER BY created_at_ms DESC, id DESC LIMIT 1"
        ))
        .bind(org)
        .bind(name)
        .bind(version)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(plan))
    }

    /// Store a new plan with its targets, in one transaction.
    pub async fn insert_plan(&self, p: &PlanRow, targets: &[TargetRow]) -> sqlx::Result<()> {
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(concat!(
            "INSERT INTO policy_plans (",
            plan_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&p.id)
        .bind(&p.org_id)
        .bind(&p.intent)
        .bind(p.intent_version)
        .bind(&p.kind)
        .bind(&p.hash)
        .bind(&p.state)
        .bind(&p.author)
        .bind(p.created_at_ms)
        .bind(p.expires_at_ms)
        .bind(&p.decided_by)
        .bind(p.decided_at_ms)
        .bind(&p.reason)
        .bind(&p.artifact_name)
        .execute(&mut *tx)
        .await?;
        for t in targets {
            sqlx::query(concat!(
                "INSERT INTO policy_plan_targets (plan_id, ",
                target_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(&p.id)
            .bind(&t.node)
            .bind(t.wave)
            .bind(&t.base_hash)
            .bind(&t.artifact)
            .bind(&t.diff)
            .bind(i64::from(t.drift))
            .bind(&t.task_id)
            .bind(&t.state)
            .bind(&t.result)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// A plan of `org` with its targets (by wave, then node).
    pub async fn plan(
        &self,
        org: &str,
        id: &str,
    ) -> sqlx::Result<Option<(PlanRow, Vec<TargetRow>)>> {
        let row: Option<PlanTuple> = sqlx::query_as(concat!(
            "SELECT ",
            plan_cols!(),
            " FROM policy_plans WHERE org_id = $1 AND id = $2"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let targets: Vec<TargetTuple> = sqlx::query_as(concat!(
            "SELECT ",
            target_cols!(),
            " FROM policy_plan_targets WHERE plan_id = $1 ORDER BY wave, node"
        ))
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(Some((plan(row), targets.into_iter().map(target).collect())))
    }

    /// The newest plans of `org`, at most `limit`.
    pub async fn list_plans(&self, org: &str, limit: i64) -> sqlx::Result<Vec<PlanRow>> {
        let rows: Vec<PlanTuple> = sqlx::query_as(concat!(
            "SELECT ",
            plan_cols!(),
            " FROM policy_plans WHERE org_id = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        ))
        .bind(org)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(plan).collect())
    }

    /// Plans of any org in one of `states` (the rollout driver's work).
    pub async fn plans_in(&self, states: &[&str]) -> sqlx::Result<Vec<PlanRow>> {
        let mut rows = Vec::new();
        for state in states {
            let found: Vec<PlanTuple> = sqlx::query_as(concat!(
                "SELECT ",
                plan_cols!(),
                " FROM policy_plans WHERE state = $1 ORDER BY created_at_ms LIMIT 1000"
            ))
            .bind(state)
            .fetch_all(self.db.pool())
            .await?;
            rows.extend(found.into_iter().map(plan));
        }
        Ok(rows)
    }

    /// Move plan `id` from state `from` to `to` (compare and set: false when it
    /// was not in `from`, so two approvals of one plan cannot both win).
    pub async fn transition(
        &self,
        org: &str,
        id: &str,
        from: &str,
        to: &str,
        by: Option<&str>,
        reason: &str,
    ) -> sqlx::Result<bool> {
        let done = match by {
            Some(by) => sqlx::query(
                "UPDATE policy_plans SET state = $4, decided_by = $5, decided_at_ms = $6, reason = $7 \
                 WHERE org_id = $1 AND id = $2 AND state = $3",
            )
            .bind(org)
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(by)
            .bind(now_ms())
            .bind(reason)
            .execute(self.db.pool())
            .await?,
            None => sqlx::query(
                "UPDATE policy_plans SET state = $4, reason = CASE WHEN $5 = '' THEN reason ELSE $5 END \
                 WHERE org_id = $1 AND id = $2 AND state = $3",
            )
            .bind(org)
            .bind(id)
            .bind(from)
            .bind(to)
            .bind(reason)
            .execute(self.db.pool())
            .await?,
        };
        Ok(done.rows_affected() == 1)
    }

    /// Record a target's task and state.
    pub async fn set_target(
        &self,
        plan_id: &str,
        node: &str,
        task_id: &str,
        state: &str,
        result: &str,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE policy_plan_targets SET task_id = $3, state = $4, result = $5 WHERE plan_id = $1 AND node = $2",
        )
        .bind(plan_id)
        .bind(node)
        .bind(task_id)
        .bind(state)
        .bind(result)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The artifact `artifact_name` last applied to `node` by a plan of `org`.
    pub async fn last_applied(
        &self,
        org: &str,
        node: &str,
        artifact_name: &str,
    ) -> sqlx::Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT t.artifact FROM policy_plan_targets t JOIN policy_plans p ON p.id = t.plan_id \
             WHERE p.org_id = $1 AND t.node = $2 AND p.artifact_name = $3 AND t.state = 'applied' \
             ORDER BY p.decided_at_ms DESC, p.id DESC LIMIT 1",
        )
        .bind(org)
        .bind(node)
        .bind(artifact_name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// The org's four-eyes setting: `auto` (on once the org has two or more
    /// admins), `on` or `off`.
    pub async fn four_eyes(&self, org: &str) -> sqlx::Result<String> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT four_eyes FROM policy_org_settings WHERE org_id = $1")
                .bind(org)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map_or_else(|| "auto".to_owned(), |r| r.0))
    }

    /// Set the org's four-eyes setting.
    pub async fn set_four_eyes(&self, org: &str, value: &str) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO policy_org_settings (org_id, four_eyes) VALUES ($1, $2) \
             ON CONFLICT (org_id) DO UPDATE SET four_eyes = excluded.four_eyes",
        )
        .bind(org)
        .bind(value)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}
