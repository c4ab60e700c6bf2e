//! The tasks service's tables: `tasks` (the durable queue), `audit_pending` →
//! `audit_log` (the hash chain) with its `audit_head`, and `outbox`.
//!
//! Every state change of a task and its audit event (and outbox event) commit
//! together. On Postgres that is one statement (the event rows are data-modifying CTEs
//! that read the changed task), so enqueue, claim and result cost one round trip each;
//! SQLite uses a transaction. Claims: Postgres locks each kind's oldest due task with
//! `FOR UPDATE SKIP LOCKED`; SQLite (one writer) goes through an in-process lock. On
//! both, the unique index `tasks_one_running` keeps one running task per node and
//! exclusive kind.
//!
//! Split by area: `queue` (enqueue, reads, cancel), `runs` (claims, leases,
//! results fenced by epoch, rescue), `audit` (the events written with each change,
//! and the chain), `outbox`, and `batch` (Postgres enqueues sharing a statement).
//! This file holds the store, the task row and the migrations.

use std::sync::Arc;

use lattice_core::db::{Db, Migration, MigrationSet};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _};

const SCHEMA: &str = include_str!("../migrations/0001_tasks.sql");
const CLAIMS: &str = include_str!("../migrations/0002_claims.sql");

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// The tasks service's migrations.
pub fn migrations() -> MigrationSet {
    static SET: [Migration; 2] = [
        Migration {
            version: 1,
            name: "tasks, audit log, outbox",
            sqlite: SCHEMA,
            postgres: SCHEMA,
        },
        Migration {
            version: 2,
            name: "one running task per node and exclusive kind; claim index",
            sqlite: CLAIMS,
            postgres: CLAIMS,
        },
    ];
    MigrationSet {
        component: "tasks",
        migrations: &SET,
    }
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub org_id: String,
    pub node_id: String,
    pub kind: String,
    /// JSON text.
    pub payload: String,
    pub idempotency_key: Option<String>,
    /// queued | running | succeeded | failed | cancelled | dead
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub epoch: i64,
    pub lease_until_ms: i64,
    pub not_before_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// JSON text (empty until finished).
    pub result: String,
    pub error_code: String,
    pub error: String,
    pub created_by: String,
}

macro_rules! task_cols {
    () => {
        "id, org_id, node_id, kind, payload, idempotency_key, state, attempts, max_attempts, epoch, \
         lease_until_ms, not_before_ms, created_at_ms, updated_at_ms, started_at_ms, finished_at_ms, \
         result, error_code, error, created_by"
    };
}

// Declared after `task_cols!`, which they use (a macro is in scope only below it).
mod audit;
mod batch;
mod outbox;
mod queue;
mod runs;

pub use self::audit::{AuditEntry, GENESIS_HASH, Verification, entry_hash};
pub use self::outbox::OutboxRow;
use self::queue::ENQUEUE;
pub use self::queue::NewTask;
pub use self::runs::Completion;

fn task(r: &AnyRow) -> Result<TaskRow, sqlx::Error> {
    Ok(TaskRow {
        id: r.try_get(0)?,
        org_id: r.try_get(1)?,
        node_id: r.try_get(2)?,
        kind: r.try_get(3)?,
        payload: r.try_get(4)?,
        idempotency_key: r.try_get(5)?,
        state: r.try_get(6)?,
        attempts: r.try_get(7)?,
        max_attempts: r.try_get(8)?,
        epoch: r.try_get(9)?,
        lease_until_ms: r.try_get(10)?,
        not_before_ms: r.try_get(11)?,
        created_at_ms: r.try_get(12)?,
        updated_at_ms: r.try_get(13)?,
        started_at_ms: r.try_get(14)?,
        finished_at_ms: r.try_get(15)?,
        result: r.try_get(16)?,
        error_code: r.try_get(17)?,
        error: r.try_get(18)?,
        created_by: r.try_get(19)?,
    })
}

/// The tasks store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    /// SQLite's one-writer path for claims.
    claim_lock: Arc<tokio::sync::Mutex<()>>,
    /// Write outbox events (only when pushing is enabled).
    outbox: bool,
    /// Postgres: the result statement without and with the claim of the node's
    /// next tasks (built once: `complete_postgres`).
    complete_sql: Arc<[String; 2]>,
    /// Postgres: the single enqueue statement and the one for a batch (built once).
    enqueue_sql: Arc<[String; 2]>,
    /// Postgres: the writer that batches keyless enqueues (started on first use).
    batcher: batch::Batcher,
}

impl Store {
    /// Tasks of an org (any state).
    pub async fn org_task_count(&self, org_id: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tasks WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(self.db.pool())
            .await?;
        Ok(n)
    }

    /// Delete every task of an org (its audit chain stays); how many went.
    pub async fn purge_org(&self, org_id: &str) -> sqlx::Result<u64> {
        Ok(sqlx::query("DELETE FROM tasks WHERE org_id = $1")
            .bind(org_id)
            .execute(self.db.pool())
            .await?
            .rows_affected())
    }

    /// A store over `db`; `outbox` writes events for the webhook pusher.
    pub fn new(db: Db, outbox: bool) -> Self {
        let mut store = Self {
            db,
            claim_lock: Arc::new(tokio::sync::Mutex::new(())),
            outbox,
            complete_sql: Arc::new([String::new(), String::new()]),
            enqueue_sql: Arc::new([String::new(), String::new()]),
            batcher: batch::Batcher::default(),
        };
        store.complete_sql = Arc::new([
            store.complete_postgres(false),
            store.complete_postgres(true),
        ]);
        store.enqueue_sql = Arc::new([
            format!(
                "WITH t AS ({ENQUEUE}), {} SELECT {} FROM t",
                store.audit_ctes("t", 11),
                task_cols!()
            ),
            store.enqueue_batch_postgres(),
        ]);
        store
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Exponential backoff with full jitter: up to `base * 2^(attempt-1)`, capped at 5 min.
pub fn backoff_ms(base_ms: i64, attempt: i64) -> i64 {
    use rand::Rng as _;
    let exp = base_ms.saturating_mul(1_i64 << attempt.clamp(0, 20)) / 2;
    let cap = exp.clamp(base_ms, 300_000);
    rand::rng().random_range(cap / 2..=cap)
}
