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

use std::sync::Arc;

use lattice_core::audit::AuditEvent;
use lattice_core::db::{Backend, Db, Migration, MigrationSet};
use lattice_core::task_kinds;
use lattice_core::time::now_ms;
use sha2::{Digest as _, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use crate::error::TaskError;

const SCHEMA: &str = include_str!("migrations/0001_tasks.sql");
const CLAIMS: &str = include_str!("migrations/0002_claims.sql");

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// The hash before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

mod batch;

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

/// One chained audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: i64,
    pub event_id: String,
    pub at_ms: i64,
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries: i64,
    /// First broken entry and why.
    pub broken: Option<(i64, String)>,
    pub head_hash: String,
}

/// An outbox event due for delivery.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub topic: String,
    pub payload: String,
    pub attempts: i64,
}

/// The hash of one entry: SHA-256 over the previous hash and every field,
/// each length-prefixed so no two different entries encode alike.
pub fn entry_hash(prev_hash: &str, seq: i64, event_id: &str, at_ms: i64, e: &AuditEvent) -> String {
    let mut h = Sha256::new();
    let seq = seq.to_string();
    let at = at_ms.to_string();
    for field in [
        prev_hash,
        &seq,
        event_id,
        &at,
        &e.org_id,
        &e.actor,
        &e.action,
        &e.target,
        e.outcome.as_str(),
        &e.client_ip,
        &e.detail,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
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

/// Insert a queued task (both backends; Postgres wraps it with its audit event).
const ENQUEUE: &str = concat!(
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

const OUTBOX_CLAIM_SQLITE: &str = "UPDATE outbox SET next_attempt_ms = $2 WHERE id IN \
     (SELECT id FROM outbox WHERE delivered_at_ms = 0 AND next_attempt_ms <= $1 ORDER BY created_at_ms, id LIMIT $3) \
     RETURNING id, topic, payload, attempts";

const OUTBOX_CLAIM_POSTGRES: &str = "UPDATE outbox SET next_attempt_ms = $2 WHERE id IN \
     (SELECT id FROM outbox WHERE delivered_at_ms = 0 AND next_attempt_ms <= $1 ORDER BY created_at_ms, id LIMIT $3 \
     FOR UPDATE SKIP LOCKED) RETURNING id, topic, payload, attempts";

impl Store {
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

    /// Postgres: record a result with its audit event and, `with_claim`, claim the
    /// node's next tasks, in one statement. Parameters: the result ($1..$8, as
    /// `COMPLETE`), the audit event (`audit_binds` from $9), then the lease end and
    /// the claim's maximum. Rows: the task (last column 0), then the claimed (1).
    fn complete_postgres(&self, with_claim: bool) -> String {
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

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn audit_in_tx(
        &self,
        tx: &mut Transaction<'_, Any>,
        event_id: &str,
        at_ms: i64,
        e: &AuditEvent,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO audit_pending (event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(at_ms)
        .bind(&e.org_id)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(e.outcome.as_str())
        .bind(&e.client_ip)
        .bind(&e.detail)
        .execute(&mut **tx)
        .await?;
        let fresh = done.rows_affected() == 1;
        if fresh && self.outbox {
            sqlx::query(
                "INSERT INTO outbox (id, topic, payload, created_at_ms, next_attempt_ms) VALUES ($1, $2, $3, $4, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(event_id)
            .bind(&e.action)
            .bind(outbox_payload(event_id, at_ms, e))
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        }
        Ok(fresh)
    }

    /// Postgres: the audit event (and its outbox event) of the row a statement
    /// changes, as data-modifying CTEs reading that row from `source` (its `org_id`
    /// is the event's), so the change and its event commit in one statement and one
    /// round trip. Binds `audit_binds` from parameter `$first`.
    fn audit_ctes(&self, source: &str, first: usize) -> String {
        let p: Vec<String> = (0..9).map(|i| format!("${}", first + i)).collect();
        let v: [&str; 9] = std::array::from_fn(|i| p[i].as_str());
        self.audit_ctes_of(source, v)
    }

    /// Postgres: the CTEs `a` (and `o` with the outbox) that write one audit event
    /// (and outbox event) per row of `source`, in that row's org. `v` are the SQL
    /// expressions for the event id, time, actor, action, target, outcome, client IP,
    /// detail and outbox payload.
    fn audit_ctes_of(&self, source: &str, v: [&str; 9]) -> String {
        let [
            event_id,
            at_ms,
            actor,
            action,
            target,
            outcome,
            client_ip,
            detail,
            payload,
        ] = v;
        let mut sql = format!(
            "a AS (INSERT INTO audit_pending (event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail) \
             SELECT {event_id}, {at_ms}, {source}.org_id, {actor}, {action}, {target}, {outcome}, {client_ip}, {detail} FROM {source})"
        );
        if self.outbox {
            sql.push_str(&format!(
                ", o AS (INSERT INTO outbox (id, topic, payload, created_at_ms, next_attempt_ms) \
                 SELECT {event_id}, {action}, jsonb_set({payload}::jsonb, '{{org_id}}', to_jsonb({source}.org_id))::text, {at_ms}, {at_ms} FROM {source})"
            ));
        }
        sql
    }

    /// Postgres: how many parameters `audit_ctes` takes.
    fn audit_param_count(&self) -> usize {
        if self.outbox { 9 } else { 8 }
    }

    /// Postgres: the parameters of `audit_ctes`, in order.
    fn audit_binds<'q>(
        &self,
        q: AnyQuery<'q>,
        event_id: String,
        at_ms: i64,
        e: &AuditEvent,
    ) -> AnyQuery<'q> {
        let payload = self.outbox.then(|| outbox_payload(&event_id, at_ms, e));
        let q = q
            .bind(event_id)
            .bind(at_ms)
            .bind(e.actor.clone())
            .bind(e.action.clone())
            .bind(e.target.clone())
            .bind(e.outcome.as_str())
            .bind(e.client_ip.clone())
            .bind(e.detail.clone());
        match payload {
            Some(p) => q.bind(p),
            None => q,
        }
    }

    /// Queue audit events (and their outbox events) from another service; an event
    /// id seen before is skipped. Returns how many were new.
    pub async fn append_audit(
        &self,
        events: &[(String, i64, AuditEvent)],
    ) -> Result<u64, TaskError> {
        let mut tx = self.db.begin().await?;
        // Lock the head row first, so appends queue behind a chainer (on Postgres;
        // SQLite's transactions take the write lock up front anyway).
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        let mut n = 0;
        for (id, at, e) in events {
            let seen: Option<(i64,)> =
                sqlx::query_as("SELECT seq FROM audit_log WHERE event_id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if seen.is_none() && self.audit_in_tx(&mut tx, id, *at, e).await? {
                n += 1;
            }
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Record one audit event on its own (for actions that change nothing else).
    pub async fn audit(&self, e: &AuditEvent) -> Result<(), TaskError> {
        let mut tx = self.db.begin().await?;
        self.audit_in_tx(&mut tx, &uuid::Uuid::now_v7().to_string(), now_ms(), e)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Move pending events onto the chain (oldest first), at most `max`. The first
    /// statement writes the head row, so concurrent chainers (other replicas) queue
    /// behind it on both backends. Returns how many entries were chained.
    pub async fn chain_pending(&self, max: i64) -> Result<u64, TaskError> {
        let mut tx = self.db.begin().await?;
        let (mut seq, mut prev): (i64, String) =
            sqlx::query_as("UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail \
             FROM audit_pending ORDER BY at_ms, event_id LIMIT $1",
        )
        .bind(max)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let mut chained = 0;
        // In batches: one lookup of ids already chained (a forwarded event can be
        // sent again), one multi-row insert, one delete.
        for batch in rows.chunks(CHAIN_BATCH) {
            let mut pending = Vec::with_capacity(batch.len());
            for r in batch {
                let event_id: String = r.try_get(0)?;
                let at_ms: i64 = r.try_get(1)?;
                pending.push((event_id, at_ms, audit_event(r, 2)?));
            }
            let list = placeholders(1, pending.len());
            let mut seen = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
                "SELECT event_id FROM audit_log WHERE event_id IN ({list})"
            )));
            for (id, _, _) in &pending {
                seen = seen.bind(id.clone());
            }
            let seen: std::collections::HashSet<String> =
                seen.fetch_all(&mut *tx).await?.into_iter().collect();
            let mut values = Vec::new();
            let mut entries = Vec::new();
            for (event_id, at_ms, e) in &pending {
                if seen.contains(event_id) {
                    continue;
                }
                let next = seq + 1;
                let hash = entry_hash(&prev, next, event_id, *at_ms, e);
                values.push(format!("({})", placeholders(12 * entries.len() + 1, 12)));
                entries.push((
                    next,
                    event_id,
                    *at_ms,
                    e,
                    std::mem::replace(&mut prev, hash.clone()),
                    hash,
                ));
                seq = next;
            }
            if !entries.is_empty() {
                let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO audit_log (seq, event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail, prev_hash, hash) \
                     VALUES {}",
                    values.join(", ")
                )));
                for (seq, event_id, at_ms, e, prev_hash, hash) in entries.iter() {
                    insert = insert
                        .bind(*seq)
                        .bind((*event_id).clone())
                        .bind(*at_ms)
                        .bind(e.org_id.clone())
                        .bind(e.actor.clone())
                        .bind(e.action.clone())
                        .bind(e.target.clone())
                        .bind(e.outcome.as_str())
                        .bind(e.client_ip.clone())
                        .bind(e.detail.clone())
                        .bind(prev_hash.clone())
                        .bind(hash.clone());
                }
                insert.execute(&mut *tx).await?;
                chained += entries.len() as u64;
            }
            let mut delete = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM audit_pending WHERE event_id IN ({list})"
            )));
            for (id, _, _) in &pending {
                delete = delete.bind(id.clone());
            }
            delete.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(chained)
    }

    /// Chained entries after `after`, oldest first. `org`: only that org's entries
    /// (None: every entry).
    pub async fn list_audit(
        &self,
        org: Option<&str>,
        include_orgless: bool,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, TaskError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 AND ($2 = '*' OR org_id = $2 OR ($3 = 1 AND org_id = '')) \
             ORDER BY seq LIMIT $4",
        )
        .bind(after)
        .bind(org.unwrap_or("*"))
        .bind(i64::from(include_orgless))
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(audit_entry)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Walk the whole chain and report the first entry that does not hold.
    pub async fn verify_audit(&self) -> Result<Verification, TaskError> {
        let mut prev = GENESIS_HASH.to_owned();
        let mut expected_seq = 1;
        let mut entries = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail, prev_hash, hash \
                 FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT 1000",
            )
            .bind(expected_seq)
            .fetch_all(self.db.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let entry = match audit_entry(r) {
                    Ok(e) => e,
                    Err(err) => {
                        let seq: i64 = r.try_get(0).unwrap_or(expected_seq);
                        return Ok(broken(
                            entries,
                            seq,
                            format!("entry does not decode: {err}"),
                            prev,
                        ));
                    }
                };
                if entry.seq != expected_seq {
                    return Ok(broken(
                        entries,
                        expected_seq,
                        format!("entry {expected_seq} is missing (next is {})", entry.seq),
                        prev,
                    ));
                }
                if entry.prev_hash != prev {
                    return Ok(broken(
                        entries,
                        entry.seq,
                        "prev_hash does not match the previous entry's hash".into(),
                        prev,
                    ));
                }
                let recomputed =
                    entry_hash(&prev, entry.seq, &entry.event_id, entry.at_ms, &entry.event);
                if recomputed != entry.hash {
                    return Ok(broken(
                        entries,
                        entry.seq,
                        "contents do not match the entry's hash (the entry was edited)".into(),
                        prev,
                    ));
                }
                prev = entry.hash;
                expected_seq += 1;
                entries += 1;
            }
        }
        let (head_seq, head_hash): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(self.db.pool())
                .await?;
        if head_seq != entries || head_hash != prev {
            return Ok(broken(
                entries,
                entries + 1,
                format!(
                    "the chain ends at entry {entries} but its head records entry {head_seq} (entries were removed)"
                ),
                prev,
            ));
        }
        Ok(Verification {
            entries,
            broken: None,
            head_hash: prev,
        })
    }

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
    async fn insert_postgres(
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
            let done = sqlx::query(
                "UPDATE tasks SET lease_until_ms = $1, updated_at_ms = $2 \
                 WHERE id = $3 AND epoch = $4 AND node_id = $5 AND state = 'running'",
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

/// Audit events chained per statement (12 parameters each, well under both
/// backends' limits).
const CHAIN_BATCH: usize = 500;

/// `$from, $from+1, …` for `n` parameters.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The webhook body of an audit event.
fn outbox_payload(event_id: &str, at_ms: i64, e: &AuditEvent) -> String {
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

/// Exponential backoff with full jitter: up to `base * 2^(attempt-1)`, capped at 5 min.
pub fn backoff_ms(base_ms: i64, attempt: i64) -> i64 {
    use rand::Rng as _;
    let exp = base_ms.saturating_mul(1_i64 << attempt.clamp(0, 20)) / 2;
    let cap = exp.clamp(base_ms, 300_000);
    rand::rng().random_range(cap / 2..=cap)
}

fn broken(entries: i64, seq: i64, reason: String, head: String) -> Verification {
    Verification {
        entries,
        broken: Some((seq, reason)),
        head_hash: head,
    }
}

fn audit_event(r: &AnyRow, from: usize) -> Result<AuditEvent, sqlx::Error> {
    let outcome: String = r.try_get(from + 4)?;
    Ok(AuditEvent {
        org_id: r.try_get(from)?,
        actor: r.try_get(from + 1)?,
        action: r.try_get(from + 2)?,
        target: r.try_get(from + 3)?,
        outcome: match outcome.as_str() {
            "success" => lattice_core::audit::Outcome::Success,
            "failure" => lattice_core::audit::Outcome::Failure,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("audit outcome {other:?} is neither success nor failure").into(),
                ));
            }
        },
        client_ip: r.try_get(from + 5)?,
        detail: r.try_get(from + 6)?,
    })
}

fn audit_entry(r: &AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        seq: r.try_get(0)?,
        event_id: r.try_get(1)?,
        at_ms: r.try_get(2)?,
        event: audit_event(r, 3)?,
        prev_hash: r.try_get(10)?,
        hash: r.try_get(11)?,
    })
}
