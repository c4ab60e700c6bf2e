//! The audit trail: the event (and outbox event) written in the same commit as each
//! change, events queued from other services, and the hash chain they are moved
//! onto (`audit_pending` → `audit_log`, with its `audit_head`), listed and verified.

use lattice_core::audit::AuditEvent;
use lattice_core::time::now_ms;
use sha2::{Digest as _, Sha256};
use sqlx::any::AnyRow;
use sqlx::{Any, Row as _, Transaction};

use super::outbox::outbox_payload;
use super::{AnyQuery, Store};
use crate::error::TaskError;

/// The hash before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

impl Store {
    pub(super) async fn audit_in_tx(
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
    pub(super) fn audit_ctes(&self, source: &str, first: usize) -> String {
        let p: Vec<String> = (0..9).map(|i| format!("${}", first + i)).collect();
        let v: [&str; 9] = std::array::from_fn(|i| p[i].as_str());
        self.audit_ctes_of(source, v)
    }

    /// Postgres: the CTEs `a` (and `o` with the outbox) that write one audit event
    /// (and outbox event) per row of `source`, in that row's org. `v` are the SQL
    /// expressions for the event id, time, actor, action, target, outcome, client IP,
    /// detail and outbox payload.
    pub(super) fn audit_ctes_of(&self, source: &str, v: [&str; 9]) -> String {
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
    pub(super) fn audit_param_count(&self) -> usize {
        if self.outbox { 9 } else { 8 }
    }

    /// Postgres: the parameters of `audit_ctes`, in order.
    pub(super) fn audit_binds<'q>(
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
        target: &str,
    ) -> Result<Vec<AuditEntry>, TaskError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 AND ($2 = '*' OR org_id = $2 OR ($3 = 1 AND org_id = '')) \
             AND ($5 = '' OR target = $5) ORDER BY seq LIMIT $4",
        )
        .bind(after)
        .bind(org.unwrap_or("*"))
        .bind(i64::from(include_orgless))
        .bind(limit)
        .bind(target)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(audit_entry)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// The newest `limit` chained entries, newest first. `org` as for `list_audit`.
    pub async fn recent_audit(
        &self,
        org: Option<&str>,
        include_orgless: bool,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, TaskError> {
        let rows = sqlx::query(
            "SELECT seq, event_id, at_ms, org_id, actor, action, target, outcome, client_ip, detail, prev_hash, hash \
             FROM audit_log WHERE ($1 = '*' OR org_id = $1 OR ($2 = 1 AND org_id = '')) \
             ORDER BY seq DESC LIMIT $3",
        )
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
