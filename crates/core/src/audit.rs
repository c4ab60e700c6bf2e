//! The audit interface. Services record every mutation and auth event through an
//! [`AuditSink`]. A service writes to its own `*_audit` table (so recording never
//! waits on another service and a crash loses nothing); the server forwards those
//! rows to the tasks service's hash-chained log and deletes them once acknowledged.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::RequestContext;

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was attempted and refused or failed.
    Failure,
}

impl Outcome {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One audited event: who did what to which thing, from where, with what result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Tenant (empty when unknown, e.g. a login for an unknown user).
    pub org_id: String,
    /// User id, `service:<name>`, or the attempted username for failed logins.
    pub actor: String,
    /// Dotted verb: `auth.login`, `auth.lockout`, `token.create`, ...
    pub action: String,
    /// The thing acted on (user id, token id, ...).
    pub target: String,
    /// Result.
    pub outcome: Outcome,
    /// Client address as seen by the gateway.
    pub client_ip: String,
    /// Extra facts as JSON text (never secrets).
    pub detail: String,
}

impl AuditEvent {
    /// Largest `detail` the central log takes.
    pub const MAX_DETAIL_BYTES: usize = 64 * 1024;

    /// Why the central log would refuse this event, if it would: no actor, no
    /// action, or a detail over [`Self::MAX_DETAIL_BYTES`]. Checked when an event is
    /// recorded too, so one such event cannot hold up a service's forwarding.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.actor.is_empty() || self.action.is_empty() {
            Some("actor and action are required")
        } else if self.detail.len() > Self::MAX_DETAIL_BYTES {
            Some("detail is over 64 KiB")
        } else {
            None
        }
    }
}

/// Who acted and from where: the part of an [`AuditEvent`] a service learns from
/// its caller ([`Actor::of`] a request context) or, for node and login events, from
/// the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor<'a> {
    /// Tenant ("" when unknown).
    pub org_id: &'a str,
    /// User id, `service:<name>`, `node:<id>`, or the attempted username.
    pub id: &'a str,
    /// Client address as seen by the gateway ("" when unknown or internal).
    pub client_ip: &'a str,
}

impl<'a> Actor<'a> {
    /// The caller of a request, in its org.
    pub fn of(ctx: &'a RequestContext) -> Self {
        Self {
            org_id: &ctx.principal.org_id,
            id: &ctx.principal.sub,
            client_ip: &ctx.client_ip,
        }
    }

    /// The caller of a request, acting on another org (`org_id`): a platform admin
    /// purging it, a user accepting its invitation or making a token for it.
    pub fn in_org(ctx: &'a RequestContext, org_id: &'a str) -> Self {
        Self {
            org_id,
            ..Self::of(ctx)
        }
    }

    /// The event of this actor doing `action` to `target`.
    pub fn event(
        self,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: &serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            org_id: self.org_id.into(),
            actor: self.id.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            client_ip: self.client_ip.into(),
            detail: detail.to_string(),
        }
    }
}

/// Where audit events go. Recording must not fail the caller's action silently: an
/// error is returned, and the caller decides (auth events log it and carry on).
#[async_trait]
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Append one event.
    async fn record(&self, event: AuditEvent) -> anyhow::Result<()>;
}

/// Records events in an `*_audit` table of the recording service's own database
/// (columns: id, org_id, at_ms, actor, action, target, outcome, client_ip, detail):
/// the service's outbox towards the central hash-chained log.
#[derive(Debug, Clone)]
pub struct TableAudit {
    db: crate::db::Db,
    insert: &'static str,
    select: &'static str,
    delete: &'static str,
}

impl TableAudit {
    /// Record into `table` of `db`. `table` is a name from the service's own
    /// migrations, never input.
    pub fn new(db: crate::db::Db, table: &'static str) -> Self {
        // Built once per construction (at start-up) and kept: sqlx wants
        // `&'static str` statements.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let insert = leak(format!(
            "INSERT INTO {table} (id, org_id, at_ms, actor, action, target, outcome, client_ip, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ));
        let select = leak(format!(
            "SELECT id, at_ms, org_id, actor, action, target, outcome, client_ip, detail \
             FROM {table} ORDER BY at_ms, id LIMIT $1"
        ));
        let delete = leak(format!("DELETE FROM {table} WHERE id = $1"));
        Self {
            db,
            insert,
            select,
            delete,
        }
    }
}

#[async_trait]
impl AuditSink for TableAudit {
    async fn record(&self, e: AuditEvent) -> anyhow::Result<()> {
        // The forwarder sends events in order and stops at a refused one: never keep
        // one the central log would refuse.
        if let Some(why) = e.refusal() {
            anyhow::bail!("audit event {:?} not recorded: {why}", e.action);
        }
        sqlx::query(self.insert)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&e.org_id)
            .bind(crate::time::now_ms())
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.outcome.as_str())
            .bind(&e.client_ip)
            .bind(&e.detail)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}

impl TableAudit {
    /// The oldest `limit` recorded events (id, at_ms, event), for forwarding to the
    /// central log.
    pub async fn pending(&self, limit: i64) -> anyhow::Result<Vec<(String, i64, AuditEvent)>> {
        type Row = (
            String,
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(self.select)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let outcome = if r.6 == "success" {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                (
                    r.0,
                    r.1,
                    AuditEvent {
                        org_id: r.2,
                        actor: r.3,
                        action: r.4,
                        target: r.5,
                        outcome,
                        client_ip: r.7,
                        detail: r.8,
                    },
                )
            })
            .collect())
    }

    /// Delete events the central log has acknowledged.
    pub async fn forwarded(&self, ids: &[String]) -> anyhow::Result<()> {
        let mut tx = self.db.begin().await?;
        for id in ids {
            sqlx::query(self.delete).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_the_central_log_refuses() {
        let ok = AuditEvent {
            org_id: String::new(),
            actor: "nobody".into(),
            action: "auth.login".into(),
            target: String::new(),
            outcome: Outcome::Failure,
            client_ip: String::new(),
            detail: "{}".into(),
        };
        assert_eq!(ok.refusal(), None);
        for bad in [
            AuditEvent {
                actor: String::new(),
                ..ok.clone()
            },
            AuditEvent {
                action: String::new(),
                ..ok.clone()
            },
            AuditEvent {
                detail: "x".repeat(AuditEvent::MAX_DETAIL_BYTES + 1),
                ..ok.clone()
            },
        ] {
            assert!(bad.refusal().is_some(), "{bad:?}");
        }
    }

    use crate::auth::Principal;

    #[test]
    fn the_actor_of_a_request_is_its_principal_in_its_org_from_its_client() {
        let ctx = RequestContext {
            principal: Principal {
                org_id: "o1".into(),
                ..Principal::service("gateway")
            },
            client_ip: "192.0.2.7".into(),
        };
        let event = Actor::of(&ctx).event(
            "kv.put",
            "conf/k",
            Outcome::Success,
            &serde_json::json!({"version": 2}),
        );
        assert_eq!(
            event,
            AuditEvent {
                org_id: "o1".into(),
                actor: "service:gateway".into(),
                action: "kv.put".into(),
                target: "conf/k".into(),
                outcome: Outcome::Success,
                client_ip: "192.0.2.7".into(),
                detail: r#"{"version":2}"#.into(),
            }
        );
    }
}
