//! A task's runs: claims (each with a fresh epoch and a lease), leases extended by
//! heartbeats, results recorded only for the current epoch (with, on Postgres, the
//! claim of the node's next tasks in the same statement), and the rescue of runs
//! whose lease expired.

use lattice_core::audit::AuditEvent;
use lattice_core::db::{Backend, Db};
use lattice_core::time::now_ms;
use lattice_proto::task_kinds;
use sqlx::Row as _;

use super::{AnyQuery, Store, TaskRow, backoff_ms, task};
use crate::error::TaskError;

/// An agent's result.
#[derive(Debug, Clone)]
pub struct Completion {
    pub task_id: String,
    pub epoch: i64,
    pub node_id: String,
    pub ok: bool,
    pub result: String,
    pub error_code: String,
    pub error: String,
}

/// Record a result if its epoch is current (both backends).
const COMPLETE: &str = concat!(
    "UPDATE tasks SET state = $1, result = $2, error_code = $3, error = $4, finished_at_ms = $5, \
     updated_at_ms = $5, lease_until_ms = 0 \
     WHERE id = $6 AND epoch = $7 AND node_id = $8 AND state = 'running' RETURNING ",
    task_cols!()
);

const CLAIM_SQLITE: &str = concat!(
    "UPDATE tasks SET state = 'running', epoch = epoch + 1, attempts = attempts + 1, \
     lease_until_ms = $3, started_at_ms = $2, updated_at_ms = $2 \
     WHERE id = (SELECT q.id FROM tasks q WHERE q.node_id = $1 AND q.state = 'queued' AND q.not_before_ms <= $2 \
     AND (q.exclusive = 0 OR q.kind NOT IN (SELECT r.kind FROM tasks r WHERE r.node_id = $1 AND r.state = 'running' AND r.exclusive = 1)) \
     ORDER BY q.id LIMIT 1) RETURNING ",
    task_cols!()
);

/// Postgres claims in one statement: for each kind, the oldest due task of the node
/// (one for an exclusive kind, and none while one of that kind runs), locked with
/// `SKIP LOCKED`. Each kind is an index seek on `tasks_claim`, however deep the
/// node's queue is; `tasks_one_running` refuses a racing second claim. (The rows are
/// locked by the subquery, which rechecks they are still queued; the outer statement
/// matches on the primary key alone.)
static CLAIM_POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    claim_postgres(
        ClaimParams {
            node: 1,
            now: 2,
            lease_until: 3,
            max: 4,
        },
        None,
    )
});

/// Parameter numbers of [`claim_postgres`].
struct ClaimParams {
    node: usize,
    now: usize,
    lease_until: usize,
    max: usize,
}

/// The Postgres claim. With `after`, the name of a CTE holding the task whose
/// result the same statement records: nothing is claimed unless that result was
/// (its CTE has a row), and that task no longer counts as running. It still does
/// in this statement's snapshot; it is read first (the one-time filter), so its row
/// has left `tasks_one_running` before a claim enters the index.
fn claim_postgres(p: ClaimParams, after: Option<&str>) -> String {
    let kinds = task_kinds::KINDS
        .iter()
        .map(|k| {
            // The names are this build's constants, spliced as literals.
            assert!(
                k.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'),
                "task kind {:?} is not a plain name",
                k.name
            );
            format!("('{}', {})", k.name, i32::from(k.exclusive))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let ClaimParams {
        node,
        now,
        lease_until,
        max,
    } = p;
    let (gate, not_done) = match after {
        Some(cte) => (
            format!("EXISTS (SELECT 1 FROM {cte}) AND "),
            format!(" AND r.id NOT IN (SELECT id FROM {cte})"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "UPDATE tasks SET state = 'running', epoch = epoch + 1, attempts = attempts + 1, \
         lease_until_ms = ${lease_until}, started_at_ms = ${now}, updated_at_ms = ${now} \
         WHERE id = ANY(ARRAY( \
         SELECT c.id FROM (VALUES {kinds}) AS k(kind, exclusive) \
         CROSS JOIN LATERAL (SELECT q.id FROM tasks q WHERE q.node_id = ${node} AND q.state = 'queued' AND q.kind = k.kind \
         AND q.not_before_ms <= ${now} ORDER BY q.id LIMIT CASE WHEN k.exclusive = 1 THEN 1 ELSE ${max} END FOR UPDATE SKIP LOCKED) c \
         WHERE {gate}(k.exclusive = 0 OR NOT EXISTS (SELECT 1 FROM tasks r WHERE r.node_id = ${node} AND r.kind = k.kind \
         AND r.state = 'running' AND r.exclusive = 1{not_done})) \
         LIMIT ${max})) RETURNING {}",
        task_cols!()
    )
}

impl Store {
    /// Postgres: record a result with its audit event and, `with_claim`, claim the
    /// node's next tasks, in one statement. Parameters: the result ($1..$8, as
    /// `COMPLETE`), the audit event (`audit_binds` from $9), then the lease end and
    /// the claim's maximum. Rows: the task (last column 0), then the claimed (1).
    pub(super) fn complete_postgres(&self, with_claim: bool) -> String {
        const FIRST_AUDIT: usize = 9;
        let mut sql = format!(
            "WITH u AS ({COMPLETE}), {}",
            self.audit_ctes("u", FIRST_AUDIT)
        );
        if with_claim {
            let lease_until = FIRST_AUDIT + self.audit_param_count();
            sql.push_str(&format!(
                ", claimed AS ({})",
                claim_postgres(
                    ClaimParams {
                        node: 8,
                        now: 5,
                        lease_until,
                        max: lease_until + 1,
                    },
                    Some("u"),
                )
            ));
        }
        sql.push_str(&format!(" SELECT {}, 0 FROM u", task_cols!()));
        if with_claim {
            sql.push_str(&format!(
                " UNION ALL SELECT {}, 1 FROM claimed",
                task_cols!()
            ));
        }
        sql
    }

    /// Claim up to `max` runnable tasks of `node`, each with a fresh epoch and a
    /// lease until `now + lease_ms`.
    pub async fn claim(
        &self,
        node: &str,
        max: i64,
        lease_ms: i64,
    ) -> Result<Vec<TaskRow>, TaskError> {
        let mut out = Vec::new();
        match self.db.backend() {
            Backend::Postgres => {
                // A unique violation means a concurrent claim for this node started
                // a task of the same kind first: look again, now that it is visible.
                for attempt in 0..3 {
                    let now = now_ms();
                    let rows = sqlx::query(CLAIM_POSTGRES.as_str())
                        .bind(node)
                        .bind(now)
                        .bind(now + lease_ms)
                        .bind(max)
                        .fetch_all(self.db.pool())
                        .await;
                    match rows {
                        Ok(rows) => {
                            out = rows.iter().map(task).collect::<Result<_, _>>()?;
                            break;
                        }
                        // Still racing after three looks: the other claimers are
                        // making progress; this round claims nothing.
                        Err(e) if Db::is_unique_violation(&e) => {
                            if attempt == 2 {
                                break;
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                out.sort_by(|a: &TaskRow, b| a.id.cmp(&b.id));
            }
            Backend::Sqlite => {
                let _one_writer = self.claim_lock.lock().await;
                for _ in 0..max {
                    let now = now_ms();
                    let row = sqlx::query(CLAIM_SQLITE)
                        .bind(node)
                        .bind(now)
                        .bind(now + lease_ms)
                        .fetch_optional(self.db.pool())
                        .await?;
                    match row {
                        Some(r) => out.push(task(&r)?),
                        None => break,
                    }
                }
            }
        }
        Ok(out)
    }

    /// Lengthen the lease of claimed task `id` at `epoch` to `until_ms`.
    pub async fn stretch_lease(
        &self,
        id: &str,
        epoch: i64,
        until_ms: i64,
    ) -> Result<(), TaskError> {
        sqlx::query(
            "UPDATE tasks SET lease_until_ms = $1 WHERE id = $2 AND epoch = $3 AND state = 'running' \
             AND lease_until_ms < $1",
        )
        .bind(until_ms)
        .bind(id)
        .bind(epoch)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Extend the leases that are still current; returns the ones that are not.
    pub async fn heartbeat(
        &self,
        node: &str,
        leases: &[(String, i64)],
        lease_ms: i64,
    ) -> Result<Vec<(String, i64)>, TaskError> {
        let now = now_ms();
        let mut stale = Vec::new();
        for (id, epoch) in leases {
            // A heartbeat never shortens a lease (an agent update's is longer).
            let done = sqlx::query(
                "UPDATE tasks SET lease_until_ms = CASE WHEN lease_until_ms > $1 THEN lease_until_ms ELSE $1 END, \
                 updated_at_ms = $2 WHERE id = $3 AND epoch = $4 AND node_id = $5 AND state = 'running'",
            )
            .bind(now + lease_ms)
            .bind(now)
            .bind(id)
            .bind(epoch)
            .bind(node)
            .execute(self.db.pool())
            .await?;
            if done.rows_affected() == 0 {
                stale.push((id.clone(), *epoch));
            }
        }
        Ok(stale)
    }

    /// Record a result if its epoch is current. A stale result changes nothing and
    /// is audited as rejected.
    pub async fn complete(&self, c: &Completion, audit: &AuditEvent) -> Result<TaskRow, TaskError> {
        Ok(self.complete_and_claim(c, audit, None).await?.0)
    }

    /// [`Store::complete`], then with `claim = Some((max, lease_ms))` claim up to
    /// `max` runnable tasks of the node as [`Store::claim`] does. On Postgres both
    /// are one statement (one round trip and one commit per task in a busy queue);
    /// when that statement races another claim for the node, the result is recorded
    /// alone and no claim is made (`None`). Nothing is claimed for a stale result.
    pub async fn complete_and_claim(
        &self,
        c: &Completion,
        audit: &AuditEvent,
        claim: Option<(i64, i64)>,
    ) -> Result<(TaskRow, Option<Vec<TaskRow>>), TaskError> {
        let now = now_ms();
        let state = if c.ok { "succeeded" } else { "failed" };
        fn bind<'q>(
            q: AnyQuery<'q>,
            c: &Completion,
            state: &'static str,
            now: i64,
        ) -> AnyQuery<'q> {
            q.bind(state)
                .bind(c.result.clone())
                .bind(c.error_code.clone())
                .bind(c.error.clone())
                .bind(now)
                .bind(c.task_id.clone())
                .bind(c.epoch)
                .bind(c.node_id.clone())
        }
        let mut audit = audit.clone();
        audit.action = format!("task.{state}");
        let event_id = uuid::Uuid::now_v7().to_string();
        let mut claimed = Vec::new();
        let row = match self.db.backend() {
            // One statement: the result, its audit event (whose org is the task's)
            // and the claim of what the node runs next.
            Backend::Postgres => {
                let sql = self.complete_sql[usize::from(claim.is_some())].as_str();
                let q = self.audit_binds(
                    bind(sqlx::query(sqlx::AssertSqlSafe(sql)), c, state, now),
                    event_id.clone(),
                    now,
                    &audit,
                );
                let q = match claim {
                    Some((max, lease_ms)) => q.bind(now + lease_ms).bind(max),
                    None => q,
                };
                match q.fetch_all(self.db.pool()).await {
                    Ok(rows) => {
                        let mut done = None;
                        for r in &rows {
                            let t = task(r)?;
                            if r.try_get::<i32, _>(20)? == 0 {
                                done = Some(t);
                            } else {
                                claimed.push(t);
                            }
                        }
                        claimed.sort_by(|a, b| a.id.cmp(&b.id));
                        done
                    }
                    // A concurrent claim for this node started a task of a kind this
                    // one would have: record the result alone; that claim's owner
                    // (or the caller's next claim) starts the rest.
                    Err(e) if claim.is_some() && Db::is_unique_violation(&e) => {
                        return Ok((
                            Box::pin(self.complete_and_claim(c, &audit, None)).await?.0,
                            None,
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Backend::Sqlite => {
                let mut tx = self.db.begin().await?;
                let row = bind(sqlx::query(COMPLETE), c, state, now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(r) = &row {
                    audit.org_id = r.try_get(1)?;
                    self.audit_in_tx(&mut tx, &event_id, now, &audit).await?;
                    tx.commit().await?;
                }
                match row {
                    Some(r) => {
                        // The result is committed: a failed claim must not fail the
                        // call (the agent would resend a result already recorded).
                        let t = task(&r)?;
                        if let Some((max, lease_ms)) = claim {
                            match self.claim(&c.node_id, max, lease_ms).await {
                                Ok(rows) => claimed = rows,
                                Err(err) => {
                                    tracing::warn!(node = %c.node_id, error = %lattice_core::error::DisplayChain(&err), "claim after a result failed; the tunnel claims again");
                                    return Ok((t, None));
                                }
                            }
                        }
                        Some(t)
                    }
                    None => None,
                }
            }
        };
        match row {
            Some(t) => Ok((t, claim.map(|_| claimed))),
            None => Err(self.stale_result(c, &audit).await),
        }
    }

    /// Why a result was not recorded, audited when it is a stale run's.
    async fn stale_result(&self, c: &Completion, audit: &AuditEvent) -> TaskError {
        let current = match self.get(None, &c.task_id).await {
            Ok(t) => t,
            Err(e) => return e,
        };
        if current.node_id != c.node_id {
            return TaskError::NotFound(format!("task {}", c.task_id));
        }
        let reason = if current.state == "running" {
            format!(
                "stale result: epoch {} is not the current run (epoch {})",
                c.epoch, current.epoch
            )
        } else {
            format!(
                "stale result: the task is {} (epoch {}); run {} was fenced off",
                current.state, current.epoch, c.epoch
            )
        };
        let mut audit = audit.clone();
        audit.org_id = current.org_id.clone();
        audit.action = "task.result_rejected".into();
        audit.outcome = lattice_core::audit::Outcome::Failure;
        audit.detail = serde_json::json!({"epoch": c.epoch, "current_epoch": current.epoch, "state": current.state}).to_string();
        match self.audit(&audit).await {
            Ok(()) => TaskError::Fenced(reason),
            Err(e) => e,
        }
    }

    /// Rescue running tasks whose lease expired: back to `queued` after a backoff, or
    /// `dead` after the last attempt. Returns the nodes that have runnable work again.
    pub async fn rescue_expired(&self, base_backoff_ms: i64) -> Result<Vec<String>, TaskError> {
        let now = now_ms();
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE lease_until_ms > 0 AND lease_until_ms < $1 AND state = 'running' ORDER BY lease_until_ms LIMIT 200"
        ))
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let mut nodes = Vec::new();
        for r in &rows {
            let t = task(r)?;
            let dead = t.attempts >= t.max_attempts;
            let (state, not_before, code, msg) = if dead {
                (
                    "dead",
                    t.not_before_ms,
                    "lease_expired",
                    format!(
                        "lease expired on attempt {} of {}; giving up",
                        t.attempts, t.max_attempts
                    ),
                )
            } else {
                (
                    "queued",
                    now + backoff_ms(base_backoff_ms, t.attempts),
                    "lease_expired",
                    format!(
                        "lease expired on attempt {} of {}; retrying",
                        t.attempts, t.max_attempts
                    ),
                )
            };
            let mut tx = self.db.begin().await?;
            let done = sqlx::query(
                "UPDATE tasks SET state = $1, not_before_ms = $2, error_code = $3, error = $4, lease_until_ms = 0, \
                 updated_at_ms = $5, finished_at_ms = $6 \
                 WHERE id = $7 AND epoch = $8 AND state = 'running' AND lease_until_ms < $5",
            )
            .bind(state)
            .bind(not_before)
            .bind(code)
            .bind(&msg)
            .bind(now)
            .bind(if dead { now } else { 0 })
            .bind(&t.id)
            .bind(t.epoch)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                continue;
            }
            let audit = AuditEvent {
                org_id: t.org_id.clone(),
                actor: "service:tasks".into(),
                action: if dead { "task.dead".into() } else { "task.rescued".into() },
                target: t.id.clone(),
                outcome: lattice_core::audit::Outcome::Failure,
                client_ip: String::new(),
                detail: serde_json::json!({"node_id": t.node_id, "epoch": t.epoch, "attempts": t.attempts, "reason": msg}).to_string(),
            };
            self.audit_in_tx(&mut tx, &uuid::Uuid::now_v7().to_string(), now, &audit)
                .await?;
            tx.commit().await?;
            if !dead {
                nodes.push(t.node_id);
            }
        }
        Ok(nodes)
    }

    /// Nodes with a queued task whose backoff ended in `(from, to]`.
    pub async fn nodes_due_between(&self, from: i64, to: i64) -> Result<Vec<String>, TaskError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT node_id FROM tasks WHERE state = 'queued' AND not_before_ms > created_at_ms \
             AND not_before_ms > $1 AND not_before_ms <= $2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
