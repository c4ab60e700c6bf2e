//! The tunnel service's tables: join tokens, nodes (credential hash, facts,
//! capabilities, connection status), metrics samples and log lines (bounded
//! retention), and its audit table (forwarded to the central log).

use std::collections::BTreeMap;

use lattice_core::db::{Db, Migration, MigrationSet};
use lattice_core::time::now_ms;
use lattice_proto::agent::v1 as agent;
use prost::Message as _;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::error::TunnelError;

const SCHEMA: &str = include_str!("migrations/0001_tunnel.sql");
const RELEASES_SQLITE: &str = include_str!("migrations/0002_releases.sqlite.sql");
const RELEASES_POSTGRES: &str = include_str!("migrations/0002_releases.postgres.sql");

/// The tunnel service's migrations.
pub fn migrations() -> MigrationSet {
    static SET: [Migration; 2] = [
        Migration {
            version: 1,
            name: "join tokens, nodes, metrics, logs, audit",
            sqlite: SCHEMA,
            postgres: SCHEMA,
        },
        Migration {
            version: 2,
            name: "agent releases and the release signing key",
            sqlite: RELEASES_SQLITE,
            postgres: RELEASES_POSTGRES,
        },
    ];
    MigrationSet {
        component: "tunnel",
        migrations: &SET,
    }
}

/// A node row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub id: String,
    pub org_id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub agent_capabilities: Vec<String>,
    pub proxy_ports: Vec<u32>,
    pub facts: Option<agent::HostFacts>,
    pub last_metrics: Option<agent::MetricsSample>,
    pub status: String,
    pub status_reason: String,
    pub last_seen_ms: i64,
    pub connected_since_ms: i64,
    pub enrolled_at_ms: i64,
    pub agent_version: String,
}

macro_rules! node_cols {
    () => {
        "id, org_id, hostname, labels, capabilities, agent_capabilities, proxy_ports, facts, last_metrics, \
         status, status_reason, last_seen_ms, connected_since_ms, enrolled_at_ms, agent_version"
    };
}

fn json_or_default<T: serde::de::DeserializeOwned + Default>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_default()
}

fn node(r: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    let facts: Option<Vec<u8>> = r.try_get(7)?;
    let metrics: Option<Vec<u8>> = r.try_get(8)?;
    Ok(NodeRow {
        id: r.try_get(0)?,
        org_id: r.try_get(1)?,
        hostname: r.try_get(2)?,
        labels: json_or_default(&r.try_get::<String, _>(3)?),
        capabilities: json_or_default(&r.try_get::<String, _>(4)?),
        agent_capabilities: json_or_default(&r.try_get::<String, _>(5)?),
        proxy_ports: json_or_default(&r.try_get::<String, _>(6)?),
        facts: facts.and_then(|b| agent::HostFacts::decode(b.as_slice()).ok()),
        last_metrics: metrics.and_then(|b| agent::MetricsSample::decode(b.as_slice()).ok()),
        status: r.try_get(9)?,
        status_reason: r.try_get(10)?,
        last_seen_ms: r.try_get(11)?,
        connected_since_ms: r.try_get(12)?,
        enrolled_at_ms: r.try_get(13)?,
        agent_version: r.try_get(14)?,
    })
}

/// What an agent said when it connected.
#[derive(Debug, Clone)]
pub struct Connected {
    pub facts: agent::HostFacts,
    pub agent_capabilities: Vec<String>,
    pub proxy_ports: Vec<u32>,
    pub agent_version: String,
}

/// The tunnel store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// A store over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Record a join token (its hash).
    pub async fn create_join_token(
        &self,
        id: &str,
        org_id: &str,
        token_hash: &str,
        labels: &BTreeMap<String, String>,
        created_by: &str,
        expires_at_ms: i64,
    ) -> Result<(), TunnelError> {
        sqlx::query(
            "INSERT INTO tunnel_join_tokens (id, org_id, token_hash, labels, created_by, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(org_id)
        .bind(token_hash)
        .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".into()))
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Spend a join token and create the node in one transaction. The token is
    /// single-use: the conditional update lets exactly one enrollment win.
    pub async fn enroll(
        &self,
        join_hash: &str,
        node_id: &str,
        node_token_hash: &str,
        facts: &agent::HostFacts,
    ) -> Result<NodeRow, TunnelError> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let spent: Option<(String, String, i64)> = sqlx::query_as(
            "UPDATE tunnel_join_tokens SET used_at_ms = $1, node_id = $2 \
             WHERE token_hash = $3 AND used_at_ms = 0 AND expires_at_ms > $1 \
             RETURNING org_id, labels, expires_at_ms",
        )
        .bind(now)
        .bind(node_id)
        .bind(join_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((org_id, labels, _)) = spent else {
            tx.rollback().await?;
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT used_at_ms, expires_at_ms FROM tunnel_join_tokens WHERE token_hash = $1",
            )
            .bind(join_hash)
            .fetch_optional(self.db.pool())
            .await?;
            return Err(TunnelError::Unauthenticated(match row {
                None => "join token is not valid".into(),
                Some((used, _)) if used > 0 => "join token was already used".into(),
                Some(_) => "join token has expired".into(),
            }));
        };
        let row = sqlx::query(concat!(
            "INSERT INTO tunnel_nodes (id, org_id, hostname, labels, capabilities, token_hash, facts, status, enrolled_at_ms, agent_version) \
             VALUES ($1, $2, $3, $4, '[]', $5, $6, 'never_connected', $7, $8) RETURNING ",
            node_cols!()
        ))
        .bind(node_id)
        .bind(&org_id)
        .bind(&facts.hostname)
        .bind(&labels)
        .bind(node_token_hash)
        .bind(facts.encode_to_vec())
        .bind(now)
        .bind(&facts.agent_version)
        .fetch_one(&mut *tx)
        .await?;
        let row = node(&row)?;
        tx.commit().await?;
        Ok(row)
    }

    /// The node a credential belongs to.
    pub async fn node_by_token(&self, token_hash: &str) -> Result<Option<NodeRow>, TunnelError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM tunnel_nodes WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.as_ref().map(node).transpose()?)
    }

    /// A node of `org` (None: any org).
    pub async fn node(&self, org: Option<&str>, id: &str) -> Result<NodeRow, TunnelError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM tunnel_nodes WHERE id = $1 AND ($2 = '*' OR org_id = $2)"
        ))
        .bind(id)
        .bind(org.unwrap_or("*"))
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(node)
            .transpose()?
            .ok_or_else(|| TunnelError::NotFound(format!("node {id}")))
    }

    /// Every node of `org`, by hostname.
    pub async fn nodes(&self, org: &str) -> Result<Vec<NodeRow>, TunnelError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            node_cols!(),
            " FROM tunnel_nodes WHERE org_id = $1 ORDER BY hostname, id"
        ))
        .bind(org)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(node)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// Change capabilities and/or labels.
    pub async fn update_node(
        &self,
        org: &str,
        id: &str,
        capabilities: Option<&[String]>,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Result<NodeRow, TunnelError> {
        // NULL keeps the stored value.
        let caps = capabilities.map(|c| serde_json::to_string(c).unwrap_or_else(|_| "[]".into()));
        let labels = labels.map(|l| serde_json::to_string(l).unwrap_or_else(|_| "{}".into()));
        let row = sqlx::query(concat!(
            "UPDATE tunnel_nodes SET capabilities = COALESCE($1, capabilities), labels = COALESCE($2, labels) \
             WHERE id = $3 AND org_id = $4 RETURNING ",
            node_cols!()
        ))
        .bind(caps)
        .bind(labels)
        .bind(id)
        .bind(org)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(node)
            .transpose()?
            .ok_or_else(|| TunnelError::NotFound(format!("node {id}")))
    }

    /// How many nodes an org has.
    pub async fn count_nodes(&self, org: &str) -> Result<i64, TunnelError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tunnel_nodes WHERE org_id = $1")
            .bind(org)
            .fetch_one(self.db.pool())
            .await?;
        Ok(n)
    }

    /// The org of an unspent join token, by the hash of its secret.
    pub async fn join_token_org(&self, join_hash: &str) -> Result<Option<String>, TunnelError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT org_id FROM tunnel_join_tokens WHERE token_hash = $1 AND used_at_ms = 0",
        )
        .bind(join_hash)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Nodes and live join tokens of an org.
    pub async fn org_usage(&self, org: &str) -> Result<BTreeMap<String, i64>, TunnelError> {
        let (nodes, joins): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM tunnel_nodes WHERE org_id = $1), \
                    (SELECT COUNT(*) FROM tunnel_join_tokens WHERE org_id = $1 AND used_at_ms = 0 AND expires_at_ms > $2)",
        )
        .bind(org)
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok([("nodes", nodes), ("join_tokens", joins)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.to_owned(), n))
            .collect())
    }

    /// Forget every node of an org (with its metrics and logs) and its join tokens,
    /// in one transaction. Returns the forgotten nodes' ids and how many join tokens
    /// went.
    pub async fn purge_org(&self, org: &str) -> Result<(Vec<String>, u64), TunnelError> {
        let mut tx = self.db.begin().await?;
        for sql in [
            "DELETE FROM tunnel_metrics WHERE node_id IN (SELECT id FROM tunnel_nodes WHERE org_id = $1)",
            "DELETE FROM tunnel_logs WHERE node_id IN (SELECT id FROM tunnel_nodes WHERE org_id = $1)",
        ] {
            sqlx::query(sql).bind(org).execute(&mut *tx).await?;
        }
        let nodes: Vec<(String,)> =
            sqlx::query_as("DELETE FROM tunnel_nodes WHERE org_id = $1 RETURNING id")
                .bind(org)
                .fetch_all(&mut *tx)
                .await?;
        let joins = sqlx::query("DELETE FROM tunnel_join_tokens WHERE org_id = $1")
            .bind(org)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok((nodes.into_iter().map(|r| r.0).collect(), joins))
    }

    /// Forget a node (its credential stops working at once).
    pub async fn delete_node(&self, org: &str, id: &str) -> Result<(), TunnelError> {
        let mut tx = self.db.begin().await?;
        let done = sqlx::query("DELETE FROM tunnel_nodes WHERE id = $1 AND org_id = $2")
            .bind(id)
            .bind(org)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Err(TunnelError::NotFound(format!("node {id}")));
        }
        for sql in [
            "DELETE FROM tunnel_metrics WHERE node_id = $1",
            "DELETE FROM tunnel_logs WHERE node_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The agent connected.
    pub async fn connected(&self, id: &str, c: &Connected, now: i64) -> Result<(), TunnelError> {
        sqlx::query(
            "UPDATE tunnel_nodes SET status = 'connected', status_reason = '', connected_since_ms = $1, last_seen_ms = $1, \
             facts = $2, hostname = $3, agent_capabilities = $4, proxy_ports = $5, agent_version = $6 WHERE id = $7",
        )
        .bind(now)
        .bind(c.facts.encode_to_vec())
        .bind(&c.facts.hostname)
        .bind(serde_json::to_string(&c.agent_capabilities).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&c.proxy_ports).unwrap_or_else(|_| "[]".into()))
        .bind(&c.agent_version)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The agent's stream ended (only if `since` is still the current connection:
    /// a newer connection elsewhere is not overwritten).
    pub async fn disconnected(
        &self,
        id: &str,
        since: i64,
        reason: &str,
    ) -> Result<(), TunnelError> {
        sqlx::query(
            "UPDATE tunnel_nodes SET status = 'disconnected', status_reason = $1, last_seen_ms = $2 \
             WHERE id = $3 AND connected_since_ms = $4",
        )
        .bind(reason)
        .bind(now_ms())
        .bind(id)
        .bind(since)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A heartbeat arrived.
    pub async fn seen(&self, id: &str) -> Result<(), TunnelError> {
        sqlx::query("UPDATE tunnel_nodes SET last_seen_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// New host facts.
    pub async fn set_facts(&self, id: &str, facts: &agent::HostFacts) -> Result<(), TunnelError> {
        sqlx::query(
            "UPDATE tunnel_nodes SET facts = $1, hostname = $2, agent_version = $3 WHERE id = $4",
        )
        .bind(facts.encode_to_vec())
        .bind(&facts.hostname)
        .bind(&facts.agent_version)
        .bind(id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Keep a metrics sample (and make it the node's latest).
    pub async fn add_metrics(&self, id: &str, s: &agent::MetricsSample) -> Result<(), TunnelError> {
        let bytes = s.encode_to_vec();
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO tunnel_metrics (node_id, at_ms, sample) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id, at_ms) DO UPDATE SET sample = excluded.sample",
        )
        .bind(id)
        .bind(s.at_ms)
        .bind(&bytes)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tunnel_nodes SET last_metrics = $1, last_seen_ms = $2 WHERE id = $3")
            .bind(&bytes)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Samples since `since_ms`, oldest first.
    pub async fn metrics(
        &self,
        id: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<agent::MetricsSample>, TunnelError> {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT sample FROM tunnel_metrics WHERE node_id = $1 AND at_ms >= $2 ORDER BY at_ms LIMIT $3",
        )
        .bind(id)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(b,)| agent::MetricsSample::decode(b.as_slice()).ok())
            .collect())
    }

    /// Keep log lines.
    pub async fn add_logs(&self, id: &str, entries: &[agent::LogEntry]) -> Result<(), TunnelError> {
        let mut tx = self.db.begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO tunnel_logs (id, node_id, at_ms, source, priority, message) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(id)
            .bind(e.at_ms)
            .bind(&e.source)
            .bind(i64::from(e.priority))
            .bind(&e.message)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Log lines since `since_ms`, oldest first; `unit` exact, `q` a substring.
    pub async fn logs(
        &self,
        id: &str,
        since_ms: i64,
        unit: &str,
        q: &str,
        limit: i64,
    ) -> Result<Vec<agent::LogEntry>, TunnelError> {
        // LIKE with the user's text escaped, so `%` and `_` match themselves.
        let pattern = format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT at_ms, source, priority, message FROM tunnel_logs WHERE node_id = $1 AND at_ms >= $2 \
             AND ($3 = '' OR source = $3) AND ($4 = '' OR message LIKE $5 ESCAPE '\\') ORDER BY at_ms, id LIMIT $6",
        )
        .bind(id)
        .bind(since_ms)
        .bind(unit)
        .bind(q)
        .bind(pattern)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at_ms, source, priority, message)| agent::LogEntry {
                at_ms,
                source,
                message,
                priority: u32::try_from(priority).unwrap_or(6),
            })
            .collect())
    }

    /// Drop metrics and logs older than their retention, and spent or expired join
    /// tokens older than a day.
    pub async fn sweep(&self, metrics_before: i64, logs_before: i64) -> Result<u64, TunnelError> {
        let mut n = 0;
        for (sql, before) in [
            (
                "DELETE FROM tunnel_metrics WHERE at_ms < $1",
                metrics_before,
            ),
            ("DELETE FROM tunnel_logs WHERE at_ms < $1", logs_before),
            (
                "DELETE FROM tunnel_join_tokens WHERE expires_at_ms < $1",
                now_ms() - 86_400_000,
            ),
        ] {
            n += sqlx::query(sql)
                .bind(before)
                .execute(self.db.pool())
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}
