//! Postgres: enqueues that arrive while others are being written share a statement.
//!
//! Every enqueue is a commit, and on Postgres a commit costs a round trip, a WAL
//! flush and a backend wake-up, several times the work of inserting the task. So
//! enqueues without an idempotency key (nothing they write can conflict) go through
//! one writer. While fewer than [`STATEMENTS`] of its statements are in flight, the
//! next enqueue is written at once, alone, with the usual statement: a lone enqueue
//! waits for nothing. Enqueues that arrive while they are all in flight wait, and go
//! together in the next statement, at most [`BATCH`] of them. Each task keeps its own
//! audit (and outbox) event in the statement that writes it, and an enqueue is
//! acknowledged only once that statement has committed.
//!
//! If a shared statement fails for a reason other than the database being
//! unreachable, each of its enqueues is retried alone, so one bad row fails only its
//! own call. A caller that gave up before its row was taken (its request timed out
//! or was cancelled) is dropped from the queue, so nothing is written for it; a
//! statement that takes longer than [`STATEMENT_WAIT`] fails its callers as
//! unavailable and frees its place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice_core::audit::AuditEvent;
use lattice_core::db::is_unavailable;
use lattice_core::time::now_ms;
use sqlx::Row as _;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::outbox::outbox_payload;
use super::{NewTask, Store, TaskRow, task};
use crate::error::TaskError;

/// The most enqueues one statement writes.
const BATCH: usize = 64;
/// Statements in flight at once; enqueues arriving beyond them are batched.
const STATEMENTS: usize = 4;
/// The longest a statement may take before its callers are told the database is
/// unavailable (the gateway gives up on a request after 30 s).
const STATEMENT_WAIT: Duration = Duration::from_secs(20);

/// The writer's queue, made on first use (it needs a runtime) and again if its
/// writer is gone (the runtime that ran it shut down).
pub(super) type Batcher = Arc<Mutex<Option<mpsc::Sender<Pending>>>>;

pub(super) struct Pending {
    id: String,
    event_id: String,
    new: NewTask,
    audit: AuditEvent,
    reply: oneshot::Sender<Result<TaskRow, TaskError>>,
}

impl Store {
    /// Postgres: the statement that writes a batch. `$1` is a JSON array of rows
    /// (the Any driver binds no arrays), `$2` the time.
    pub(super) fn enqueue_batch_postgres(&self) -> String {
        let cols = task_cols!();
        let audit = self.audit_ctes_of(
            "r",
            [
                "r.event_id",
                "$2",
                "r.actor",
                "r.action",
                "r.id",
                "r.outcome",
                "r.client_ip",
                "r.detail",
                "r.outbox",
            ],
        );
        format!(
            "WITH r AS (SELECT * FROM json_to_recordset($1::json) AS r(id text, org_id text, \
             node_id text, kind text, payload text, exclusive bigint, max_attempts bigint, \
             created_by text, event_id text, actor text, action text, outcome text, \
             client_ip text, detail text, outbox text)), \
             t AS (INSERT INTO tasks (id, org_id, node_id, kind, payload, idempotency_key, state, \
             exclusive, max_attempts, not_before_ms, created_at_ms, updated_at_ms, created_by) \
             SELECT id, org_id, node_id, kind, payload, NULL, 'queued', exclusive, max_attempts, \
             $2, $2, $2, created_by FROM r RETURNING {cols}), {audit} SELECT {cols} FROM t"
        )
    }

    /// Postgres: write a keyless enqueue through the writer; the task as written.
    pub(super) async fn enqueue_batched(
        &self,
        id: String,
        event_id: String,
        new: &NewTask,
        audit: AuditEvent,
    ) -> Result<TaskRow, TaskError> {
        let queue = {
            let mut batcher = self.batcher.lock().expect("batcher lock");
            match &*batcher {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(BATCH * STATEMENTS);
                    // The writer's own store has no writer of its own, so it holds
                    // no sender of its queue.
                    let writer = Store {
                        batcher: Batcher::default(),
                        ..self.clone()
                    };
                    tokio::spawn(writer.write_batches(rx));
                    *batcher = Some(tx.clone());
                    tx
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id,
            event_id,
            new: new.clone(),
            audit,
            reply,
        };
        let gone = || TaskError::Db(sqlx::Error::PoolClosed);
        queue.send(pending).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn write_batches(self, mut queue: mpsc::Receiver<Pending>) {
        let permits = Arc::new(Semaphore::new(STATEMENTS));
        while let Some(first) = queue.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            // Whatever queued while every statement was in flight goes together,
            // but not the enqueues whose callers gave up meanwhile.
            let mut batch = vec![first];
            while batch.len() < BATCH
                && let Ok(p) = queue.try_recv()
            {
                batch.push(p);
            }
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let store = self.clone();
            tokio::spawn(async move {
                store.write_batch(batch).await;
                drop(permit);
            });
        }
    }

    async fn write_batch(&self, batch: Vec<Pending>) {
        let now = now_ms();
        if batch.len() > 1 {
            let rows = batch
                .iter()
                .map(|p| batch_row(p, now, self.outbox))
                .collect();
            let rows = serde_json::Value::Array(rows).to_string();
            let statement = sqlx::query(sqlx::AssertSqlSafe(self.enqueue_sql[1].as_str()))
                .bind(rows)
                .bind(now)
                .fetch_all(self.db.pool());
            match waited(statement).await {
                Ok(rows) => {
                    for p in batch {
                        let row = rows
                            .iter()
                            .find(|r| r.try_get::<String, _>("id").is_ok_and(|id| id == p.id))
                            .map(task)
                            .unwrap_or_else(|| {
                                Err(sqlx::Error::Protocol(
                                    "a batched task was not returned".into(),
                                ))
                            });
                        let _ = p.reply.send(row.map_err(TaskError::Db));
                    }
                    return;
                }
                Err(e) if is_unavailable(&e) => {
                    for p in batch {
                        let _ = p.reply.send(Err(TaskError::Db(copy(&e))));
                    }
                    return;
                }
                // Nothing was written: each on its own, so a bad row fails alone.
                Err(_) => {}
            }
        }
        let mut down: Option<sqlx::Error> = None;
        for p in batch {
            if p.reply.is_closed() {
                continue;
            }
            let written = match &down {
                Some(e) => Err(copy(e)),
                None => {
                    let one = self.insert_postgres(&p.id, &p.event_id, now, &p.new, &p.audit);
                    waited(one).await.and_then(|row| row)
                }
            };
            if let Err(e) = &written
                && down.is_none()
                && is_unavailable(e)
            {
                down = Some(copy(e));
            }
            let _ = p.reply.send(written.map_err(TaskError::Db));
        }
    }
}

/// A statement, or unavailable after [`STATEMENT_WAIT`] (dropping it drops its
/// connection, which the pool then replaces).
async fn waited<T>(
    statement: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(STATEMENT_WAIT, statement)
        .await
        .unwrap_or_else(|_| {
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the database did not answer in time",
            )))
        })
}

fn batch_row(p: &Pending, now: i64, outbox: bool) -> serde_json::Value {
    let (new, audit) = (&p.new, &p.audit);
    let outbox = outbox.then(|| outbox_payload(&p.event_id, now, audit));
    serde_json::json!({
        "id": p.id,
        "org_id": new.org_id,
        "node_id": new.node_id,
        "kind": new.kind,
        "payload": new.payload,
        "exclusive": i64::from(new.exclusive),
        "max_attempts": new.max_attempts,
        "created_by": new.created_by,
        "event_id": p.event_id,
        "actor": audit.actor,
        "action": audit.action,
        "outcome": audit.outcome.as_str(),
        "client_ip": audit.client_ip,
        "detail": audit.detail,
        "outbox": outbox,
    })
}

/// The same failure for each caller of a batch (`sqlx::Error` is not `Clone`).
fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
