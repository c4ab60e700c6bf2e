//! The outbox: audit events waiting to be pushed to the webhook, taken for
//! delivery, marked delivered or failed, and pruned.

use lattice_core::audit::AuditEvent;
use lattice_core::db::Backend;
use lattice_core::time::now_ms;

use super::Store;
use crate::error::TaskError;

/// An outbox event due for delivery.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub topic: String,
    pub payload: String,
    pub attempts: i64,
}

const OUTBOX_CLAIM_SQLITE: &str = "UPDATE outbox SET next_attempt_ms = $2 WHERE id IN \
     (SELECT id FROM outbox WHERE delivered_at_ms = 0 AND next_attempt_ms <= $1 ORDER BY created_at_ms, id LIMIT $3) \
     RETURNING id, topic, payload, attempts";

const OUTBOX_CLAIM_POSTGRES: &str = "UPDATE outbox SET next_attempt_ms = $2 WHERE id IN \
     (SELECT id FROM outbox WHERE delivered_at_ms = 0 AND next_attempt_ms <= $1 ORDER BY created_at_ms, id LIMIT $3 \
     FOR UPDATE SKIP LOCKED) RETURNING id, topic, payload, attempts";

impl Store {
    /// Take up to `max` due outbox events for delivery (they come back due after
    /// `retry_after_ms` if this replica dies before recording the result).
    pub async fn outbox_due(
        &self,
        max: i64,
        retry_after_ms: i64,
    ) -> Result<Vec<OutboxRow>, TaskError> {
        let now = now_ms();
        let sql = match self.db.backend() {
            Backend::Postgres => OUTBOX_CLAIM_POSTGRES,
            Backend::Sqlite => OUTBOX_CLAIM_SQLITE,
        };
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(sql)
            .bind(now)
            .bind(now + retry_after_ms)
            .bind(max)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, topic, payload, attempts)| OutboxRow {
                id,
                topic,
                payload,
                attempts,
            })
            .collect())
    }

    /// Record a delivery.
    pub async fn outbox_delivered(&self, id: &str) -> Result<(), TaskError> {
        sqlx::query("UPDATE outbox SET delivered_at_ms = $1, attempts = attempts + 1, last_error = '' WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Record a failed delivery and when to try again.
    pub async fn outbox_failed(
        &self,
        id: &str,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<(), TaskError> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $1, last_error = $2 WHERE id = $3")
            .bind(next_attempt_ms)
            .bind(error)
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Delete delivered events older than `before_ms`.
    pub async fn outbox_prune(&self, before_ms: i64) -> Result<u64, TaskError> {
        let done =
            sqlx::query("DELETE FROM outbox WHERE delivered_at_ms > 0 AND delivered_at_ms < $1")
                .bind(before_ms)
                .execute(self.db.pool())
                .await?;
        Ok(done.rows_affected())
    }
}

/// The webhook body of an audit event.
pub(super) fn outbox_payload(event_id: &str, at_ms: i64, e: &AuditEvent) -> String {
    serde_json::json!({
        "id": event_id,
        "type": e.action,
        "at_ms": at_ms,
        "org_id": e.org_id,
        "actor": e.actor,
        "target": e.target,
        "outcome": e.outcome.as_str(),
        "client_ip": e.client_ip,
        "detail": serde_json::from_str::<serde_json::Value>(&e.detail).unwrap_or(serde_json::Value::Null),
    })
    .to_string()
}
