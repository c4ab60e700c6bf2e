//! The queue: enqueue (idempotent by key; on Postgres one statement with its audit
//! event, or a shared one through `batch`), reading tasks, and cancelling them.

use lattice_core::audit::AuditEvent;
use lattice_core::db::{Backend, Db};
use lattice_core::time::now_ms;

use super::{AnyQuery, Store, TaskRow, task};
use crate::error::TaskError;

/// A task to enqueue.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub org_id: String,
    pub node_id: String,
    pub kind: String,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub exclusive: bool,
    pub max_attempts: i64,
    pub created_by: String,
}

/// Insert a queued task (both backends; Postgres wraps it with its audit event).
pub(super) const ENQUEUE: &str = concat!(
    "INSERT INTO tasks (id, org_id, node_id, kind, payload, idempotency_key, state, exclusive, max_attempts, \
     not_before_ms, created_at_ms, updated_at_ms, created_by) \
     VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $9, $9, $10) RETURNING ",
    task_cols!()
);

/// The parameters of `ENQUEUE`.
fn bind_new<'q>(q: AnyQuery<'q>, id: &str, new: &NewTask, now: i64) -> AnyQuery<'q> {
    q.bind(id.to_owned())
        .bind(new.org_id.clone())
        .bind(new.node_id.clone())
        .bind(new.kind.clone())
        .bind(new.payload.clone())
        .bind(new.idempotency_key.clone())
        .bind(i64::from(new.exclusive))
        .bind(new.max_attempts)
        .bind(now)
        .bind(new.created_by.clone())
}

impl Store {
    /// Enqueue `new` with its audit event. With an idempotency key that already
    /// exists in the org, returns the existing task and `false`.
    pub async fn enqueue(
        &self,
        new: &NewTask,
        audit: &AuditEvent,
    ) -> Result<(TaskRow, bool), TaskError> {
        if let Some(key) = &new.idempotency_key
            && let Some(t) = self.by_idempotency_key(&new.org_id, key).await?
        {
            return Ok((t, false));
        }
        let now = now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let mut audit = audit.clone();
        audit.target = id.clone();
        let event_id = uuid::Uuid::now_v7().to_string();
        let inserted = match self.db.backend() {
            // Without a key nothing can conflict: it may share a statement.
            Backend::Postgres if new.idempotency_key.is_none() => {
                let row = self.enqueue_batched(id, event_id, new, audit).await?;
                return Ok((row, true));
            }
            Backend::Postgres => self.insert_postgres(&id, &event_id, now, new, &audit).await,
            Backend::Sqlite => {
                let mut tx = self.db.begin().await?;
                match bind_new(sqlx::query(ENQUEUE), &id, new, now)
                    .fetch_one(&mut *tx)
                    .await
                {
                    Ok(r) => {
                        self.audit_in_tx(&mut tx, &event_id, now, &audit).await?;
                        tx.commit().await?;
                        Ok(task(&r))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match inserted {
            Ok(row) => Ok((row?, true)),
            Err(e) if Db::is_unique_violation(&e) => {
                // A concurrent enqueue with the same key won.
                let key = new.idempotency_key.as_deref().unwrap_or_default();
                let t = self
                    .by_idempotency_key(&new.org_id, key)
                    .await?
                    .ok_or_else(|| {
                        TaskError::Conflict("idempotency key raced with a cancelled enqueue".into())
                    })?;
                Ok((t, false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Postgres: one task and its audit event, in one statement.
    pub(super) async fn insert_postgres(
        &self,
        id: &str,
        event_id: &str,
        now: i64,
        new: &NewTask,
        audit: &AuditEvent,
    ) -> Result<Result<TaskRow, sqlx::Error>, sqlx::Error> {
        let q = sqlx::query(sqlx::AssertSqlSafe(self.enqueue_sql[0].as_str()));
        self.audit_binds(bind_new(q, id, new, now), event_id.to_owned(), now, audit)
            .fetch_one(self.db.pool())
            .await
            .map(|r| task(&r))
    }

    async fn by_idempotency_key(&self, org: &str, key: &str) -> Result<Option<TaskRow>, TaskError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE org_id = $1 AND idempotency_key = $2"
        ))
        .bind(org)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(task).transpose()?)
    }

    /// A task of `org` (None: any org, for service callers).
    pub async fn get(&self, org: Option<&str>, id: &str) -> Result<TaskRow, TaskError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE id = $1 AND ($2 = '*' OR org_id = $2)"
        ))
        .bind(id)
        .bind(org.unwrap_or("*"))
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(task)
            .transpose()?
            .ok_or_else(|| TaskError::NotFound(format!("task {id}")))
    }

    /// Newest first, filtered.
    pub async fn list(
        &self,
        org: &str,
        node: &str,
        state: &str,
        before: &str,
        limit: i64,
    ) -> Result<Vec<TaskRow>, TaskError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_cols!(),
            " FROM tasks WHERE org_id = $1 AND ($2 = '' OR node_id = $2) AND ($3 = '' OR state = $3) \
              AND ($4 = '' OR id < $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(org)
        .bind(node)
        .bind(state)
        .bind(before)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(task)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Cancel a queued or running task.
    pub async fn cancel(
        &self,
        org: &str,
        id: &str,
        audit: &AuditEvent,
    ) -> Result<TaskRow, TaskError> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(concat!(
            "UPDATE tasks SET state = 'cancelled', finished_at_ms = $3, updated_at_ms = $3, lease_until_ms = 0, \
             error_code = 'cancelled', error = 'cancelled by an operator' \
             WHERE id = $1 AND org_id = $2 AND state IN ('queued', 'running') RETURNING ",
            task_cols!()
        ))
        .bind(id)
        .bind(org)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            let t = self.get(Some(org), id).await?;
            return Err(TaskError::Conflict(format!(
                "task {id} is already {}",
                t.state
            )));
        };
        let row = task(&row)?;
        self.audit_in_tx(&mut tx, &uuid::Uuid::now_v7().to_string(), now, audit)
            .await?;
        tx.commit().await?;
        Ok(row)
    }
}
