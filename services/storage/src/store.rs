//! The storage tables. Tenant data is always filtered by `org_id`; the lookups that
//! cross orgs (a host binding, a storage token by hash) are those that establish the
//! org of an anonymous or token-bearing caller.

use lattice_core::db::{Db, Migration, MigrationSet};
use lattice_core::time::now_ms;

const SCHEMA: &str = include_str!("migrations/0001_storage.sql");
const SECRET_BUCKETS: &str = include_str!("migrations/0002_secret_buckets.sql");

/// The storage service's migrations. Postgres sorts keys and paths bytewise
/// (`COLLATE "C"`), like SQLite, so listings and cursors agree on both.
pub fn migrations() -> MigrationSet {
    static SQLITE: std::sync::LazyLock<&'static str> =
        std::sync::LazyLock::new(|| Box::leak(SCHEMA.replace("__COLLATE__", "").into_boxed_str()));
    static POSTGRES: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        Box::leak(
            SCHEMA
                .replace("__COLLATE__", "COLLATE \"C\"")
                .into_boxed_str(),
        )
    });
    static SET: std::sync::LazyLock<[Migration; 2]> = std::sync::LazyLock::new(|| {
        [
            Migration {
                version: 1,
                name: "buckets, kv, deployments, bindings, storage tokens, audit",
                sqlite: *SQLITE,
                postgres: *POSTGRES,
            },
            Migration {
                version: 2,
                name: "secret kv buckets",
                sqlite: SECRET_BUCKETS,
                postgres: SECRET_BUCKETS,
            },
        ]
    });
    MigrationSet {
        component: "storage",
        migrations: &*SET,
    }
}

/// A bucket row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    /// Id.
    pub id: String,
    /// Owner org.
    pub org_id: String,
    /// Name (unique in the org).
    pub name: String,
    /// `kv` or `static`.
    pub surface: String,
    /// Active deployment (static).
    pub active_deployment_id: Option<String>,
    /// Created.
    pub created_at_ms: i64,
    /// A kv bucket of secrets: values sealed at rest, reads decided by policy.
    pub secret: bool,
}

type BucketTuple = (String, String, String, String, Option<String>, i64, i64);
/// Column list shared by the queries below (a literal, so queries stay `&'static str`).
macro_rules! bucket_cols {
    () => {
        "id, org_id, name, surface, active_deployment_id, created_at_ms, secret"
    };
}

fn bucket(t: BucketTuple) -> BucketRow {
    BucketRow {
        id: t.0,
        org_id: t.1,
        name: t.2,
        surface: t.3,
        active_deployment_id: t.4,
        created_at_ms: t.5,
        secret: t.6 != 0,
    }
}

/// A KV row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    /// Key.
    pub key: String,
    /// JSON text.
    pub value: String,
    /// Increases on every write.
    pub version: i64,
    /// Last write.
    pub updated_at_ms: i64,
    /// 0: none.
    pub expires_at_ms: i64,
}

/// A deployment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRow {
    /// Id (UUIDv7: ordered by creation).
    pub id: String,
    /// Bucket.
    pub bucket_id: String,
    /// Created.
    pub created_at_ms: i64,
    /// Who.
    pub created_by: String,
    /// Files.
    pub file_count: i64,
    /// Bytes.
    pub total_bytes: i64,
}

/// A file of a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Site path.
    pub path: String,
    /// Content hash (hex).
    pub sha256: String,
    /// Bytes.
    pub size: i64,
    /// Media type.
    pub content_type: String,
}

/// A binding joined with its bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    /// Host.
    pub host: String,
    /// Org.
    pub org_id: String,
    /// Bucket id.
    pub bucket_id: String,
    /// Bucket name.
    pub bucket: String,
    /// Bucket surface.
    pub surface: String,
    /// Serving on.
    pub enabled: bool,
    /// Created.
    pub created_at_ms: i64,
    /// The bucket's active deployment.
    pub active_deployment_id: Option<String>,
    /// The bucket holds secrets.
    pub secret: bool,
}

type BindingTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
);
/// Column list shared by the queries below (a literal, so queries stay `&'static str`).
macro_rules! binding_select {
    () => {
        "SELECT b.host, b.org_id, b.bucket_id, k.name, k.surface, b.enabled, b.created_at_ms, k.active_deployment_id, k.secret \
     FROM storage_bindings b JOIN storage_buckets k ON k.id = b.bucket_id"
    };
}

fn binding(t: BindingTuple) -> BindingRow {
    BindingRow {
        host: t.0,
        org_id: t.1,
        bucket_id: t.2,
        bucket: t.3,
        surface: t.4,
        enabled: t.5 != 0,
        created_at_ms: t.6,
        active_deployment_id: t.7,
        secret: t.8 != 0,
    }
}

/// A storage token row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Id.
    pub id: String,
    /// Org.
    pub org_id: String,
    /// Label.
    pub name: String,
    /// `kv` or `static`.
    pub surface: String,
    /// `read`, `write` or `admin`.
    pub access: String,
    /// Bucket names or `*`.
    pub buckets: Vec<String>,
    /// Created.
    pub created_at_ms: i64,
    /// 0: none.
    pub expires_at_ms: i64,
    /// Revoked.
    pub revoked: bool,
}

type TokenTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);
/// Column list shared by the queries below (a literal, so queries stay `&'static str`).
macro_rules! token_cols {
    () => {
        "id, org_id, name, surface, access, buckets, created_at_ms, expires_at_ms, revoked_at_ms"
    };
}

fn token(t: TokenTuple) -> TokenRow {
    TokenRow {
        id: t.0,
        org_id: t.1,
        name: t.2,
        surface: t.3,
        access: t.4,
        buckets: serde_json::from_str(&t.5).unwrap_or_default(),
        created_at_ms: t.6,
        expires_at_ms: t.7,
        revoked: t.8.is_some(),
    }
}

/// Outcome of a conditional KV write.
#[derive(Debug)]
pub enum Written {
    /// Stored with this version.
    Ok(KvRow),
    /// The condition did not hold.
    ConditionFailed,
}

/// Storage's database access.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Wrap a migrated database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Create a bucket; a duplicate name is a unique violation.
    pub async fn insert_bucket(
        &self,
        org_id: &str,
        name: &str,
        surface: &str,
        secret: bool,
    ) -> sqlx::Result<BucketRow> {
        let row = BucketRow {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: org_id.into(),
            name: name.into(),
            surface: surface.into(),
            active_deployment_id: None,
            created_at_ms: now_ms(),
            secret,
        };
        sqlx::query("INSERT INTO storage_buckets (id, org_id, name, surface, created_at_ms, secret) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&row.id)
            .bind(&row.org_id)
            .bind(&row.name)
            .bind(&row.surface)
            .bind(row.created_at_ms)
            .bind(i64::from(secret))
            .execute(self.db.pool())
            .await?;
        Ok(row)
    }

    /// A bucket of the org by name.
    pub async fn bucket(&self, org_id: &str, name: &str) -> sqlx::Result<Option<BucketRow>> {
        let row: Option<BucketTuple> = sqlx::query_as(concat!(
            "SELECT ",
            bucket_cols!(),
            " FROM storage_buckets WHERE org_id = $1 AND name = $2"
        ))
        .bind(org_id)
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(bucket))
    }

    /// A bucket of the org by id.
    pub async fn bucket_by_id(&self, org_id: &str, id: &str) -> sqlx::Result<Option<BucketRow>> {
        let row: Option<BucketTuple> = sqlx::query_as(concat!(
            "SELECT ",
            bucket_cols!(),
            " FROM storage_buckets WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(bucket))
    }

    /// Buckets of the org, by name, optionally of one surface.
    pub async fn list_buckets(
        &self,
        org_id: &str,
        surface: Option<&str>,
    ) -> sqlx::Result<Vec<BucketRow>> {
        let rows: Vec<BucketTuple> = sqlx::query_as(concat!(
            "SELECT ",
            bucket_cols!(),
            " FROM storage_buckets WHERE org_id = $1 AND ($2 = '' OR surface = $2) ORDER BY name"
        ))
        .bind(org_id)
        .bind(surface.unwrap_or(""))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(bucket).collect())
    }

    /// Delete a bucket with everything in it (KV rows, deployments, bindings).
    /// Returns the hosts that were bound to it.
    pub async fn delete_bucket(&self, org_id: &str, id: &str) -> sqlx::Result<Vec<String>> {
        let mut tx = self.db.begin().await?;
        let hosts: Vec<(String,)> = sqlx::query_as(
            "SELECT host FROM storage_bindings WHERE org_id = $1 AND bucket_id = $2",
        )
        .bind(org_id)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        for statement in [
            "DELETE FROM storage_bindings WHERE bucket_id = $1",
            "DELETE FROM storage_kv WHERE bucket_id = $1",
        ] {
            sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM storage_files WHERE deployment_id IN (SELECT id FROM storage_deployments WHERE bucket_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM storage_deployments WHERE bucket_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM storage_buckets WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(hosts.into_iter().map(|h| h.0).collect())
    }

    /// Write a KV entry. `if_version`: only if that version is current;
    /// `if_absent`: only if no live entry exists.
    pub async fn kv_put(
        &self,
        bucket_id: &str,
        key: &str,
        value: &str,
        expires_at_ms: i64,
        if_version: Option<i64>,
        if_absent: bool,
    ) -> sqlx::Result<Written> {
        let now = now_ms();
        let row: Option<(i64,)> = if if_absent {
            // An expired entry counts as absent: clear it first (same key only).
            sqlx::query("DELETE FROM storage_kv WHERE bucket_id = $1 AND key = $2 AND expires_at_ms <> 0 AND expires_at_ms <= $3")
                .bind(bucket_id)
                .bind(key)
                .bind(now)
                .execute(self.db.pool())
                .await?;
            sqlx::query_as(
                "INSERT INTO storage_kv (bucket_id, key, value, version, updated_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, 1, $4, $5) ON CONFLICT (bucket_id, key) DO NOTHING RETURNING version",
            )
            .bind(bucket_id)
            .bind(key)
            .bind(value)
            .bind(now)
            .bind(expires_at_ms)
            .fetch_optional(self.db.pool())
            .await?
        } else if let Some(expected) = if_version {
            sqlx::query_as(
                "UPDATE storage_kv SET value = $3, version = version + 1, updated_at_ms = $4, expires_at_ms = $5 \
                 WHERE bucket_id = $1 AND key = $2 AND version = $6 AND (expires_at_ms = 0 OR expires_at_ms > $4) \
                 RETURNING version",
            )
            .bind(bucket_id)
            .bind(key)
            .bind(value)
            .bind(now)
            .bind(expires_at_ms)
            .bind(expected)
            .fetch_optional(self.db.pool())
            .await?
        } else {
            sqlx::query_as(
                "INSERT INTO storage_kv (bucket_id, key, value, version, updated_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, 1, $4, $5) \
                 ON CONFLICT (bucket_id, key) DO UPDATE SET value = excluded.value, version = storage_kv.version + 1, \
                   updated_at_ms = excluded.updated_at_ms, expires_at_ms = excluded.expires_at_ms \
                 RETURNING version",
            )
            .bind(bucket_id)
            .bind(key)
            .bind(value)
            .bind(now)
            .bind(expires_at_ms)
            .fetch_optional(self.db.pool())
            .await?
        };
        Ok(match row {
            Some((version,)) => Written::Ok(KvRow {
                key: key.into(),
                value: value.into(),
                version,
                updated_at_ms: now,
                expires_at_ms,
            }),
            None => Written::ConditionFailed,
        })
    }

    /// A live KV entry.
    pub async fn kv_get(&self, bucket_id: &str, key: &str) -> sqlx::Result<Option<KvRow>> {
        let row: Option<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT key, value, version, updated_at_ms, expires_at_ms FROM storage_kv \
             WHERE bucket_id = $1 AND key = $2 AND (expires_at_ms = 0 OR expires_at_ms > $3)",
        )
        .bind(bucket_id)
        .bind(key)
        .bind(now_ms())
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| KvRow {
            key: r.0,
            value: r.1,
            version: r.2,
            updated_at_ms: r.3,
            expires_at_ms: r.4,
        }))
    }

    /// Delete a KV entry (optionally only at `if_version`). Returns whether a live
    /// entry was deleted; `None` when the version did not match.
    pub async fn kv_delete(
        &self,
        bucket_id: &str,
        key: &str,
        if_version: Option<i64>,
    ) -> sqlx::Result<Option<bool>> {
        let now = now_ms();
        if let Some(expected) = if_version {
            let res = sqlx::query(
                "DELETE FROM storage_kv WHERE bucket_id = $1 AND key = $2 AND version = $3 AND (expires_at_ms = 0 OR expires_at_ms > $4)",
            )
            .bind(bucket_id)
            .bind(key)
            .bind(expected)
            .bind(now)
            .execute(self.db.pool())
            .await?;
            return Ok((res.rows_affected() == 1).then_some(true));
        }
        let res = sqlx::query("DELETE FROM storage_kv WHERE bucket_id = $1 AND key = $2 AND (expires_at_ms = 0 OR expires_at_ms > $3)")
            .bind(bucket_id)
            .bind(key)
            .bind(now)
            .execute(self.db.pool())
            .await?;
        Ok(Some(res.rows_affected() == 1))
    }

    /// Live entries in key order: keys starting with `prefix`, after `cursor`.
    pub async fn kv_list(
        &self,
        bucket_id: &str,
        prefix: &str,
        cursor: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<KvRow>> {
        // Prefix match as a key range: [prefix, prefix + U+10FFFF) works on both
        // backends with bytewise collation and uses the primary key index.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT key, value, version, updated_at_ms, expires_at_ms FROM storage_kv \
             WHERE bucket_id = $1 AND key >= $2 AND key < $3 AND key > $4 AND (expires_at_ms = 0 OR expires_at_ms > $5) \
             ORDER BY key LIMIT $6",
        )
        .bind(bucket_id)
        .bind(prefix)
        .bind(upper)
        .bind(cursor)
        .bind(now_ms())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| KvRow {
                key: r.0,
                value: r.1,
                version: r.2,
                updated_at_ms: r.3,
                expires_at_ms: r.4,
            })
            .collect())
    }

    /// Remove expired KV rows (background sweep). Returns how many.
    pub async fn kv_sweep(&self) -> sqlx::Result<u64> {
        let res =
            sqlx::query("DELETE FROM storage_kv WHERE expires_at_ms <> 0 AND expires_at_ms <= $1")
                .bind(now_ms())
                .execute(self.db.pool())
                .await?;
        Ok(res.rows_affected())
    }

    /// Record a blob (content-addressed; a second insert is a no-op).
    pub async fn insert_blob(&self, sha256: &str, size: i64) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO storage_blobs (sha256, size, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING")
            .bind(sha256)
            .bind(size)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Store a deployment and its file list in one transaction; optionally make it
    /// the bucket's active deployment in the same transaction (the pointer swap).
    /// With `expected_active`, activation happens only if the bucket's active
    /// deployment is still that one (compare-and-set: a derived edit never undoes a
    /// concurrent one); on a mismatch nothing is stored and `Ok(false)` is returned.
    pub async fn insert_deployment(
        &self,
        d: &DeploymentRow,
        files: &[FileRow],
        activate: bool,
        expected_active: Option<&str>,
    ) -> sqlx::Result<bool> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO storage_deployments (id, bucket_id, created_at_ms, created_by, file_count, total_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(&d.bucket_id)
        .bind(d.created_at_ms)
        .bind(&d.created_by)
        .bind(d.file_count)
        .bind(d.total_bytes)
        .execute(&mut *tx)
        .await?;
        for f in files {
            sqlx::query("INSERT INTO storage_files (deployment_id, path, sha256, size, content_type) VALUES ($1, $2, $3, $4, $5)")
                .bind(&d.id)
                .bind(&f.path)
                .bind(&f.sha256)
                .bind(f.size)
                .bind(&f.content_type)
                .execute(&mut *tx)
                .await?;
        }
        if activate {
            let res = sqlx::query(
                "UPDATE storage_buckets SET active_deployment_id = $2 WHERE id = $1 \
                 AND ($3 = '-' OR COALESCE(active_deployment_id, '') = $3)",
            )
            .bind(&d.bucket_id)
            .bind(&d.id)
            .bind(expected_active.unwrap_or("-"))
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Deployments of a bucket, newest first.
    pub async fn list_deployments(&self, bucket_id: &str) -> sqlx::Result<Vec<DeploymentRow>> {
        let rows: Vec<(String, String, i64, String, i64, i64)> = sqlx::query_as(
            "SELECT id, bucket_id, created_at_ms, created_by, file_count, total_bytes FROM storage_deployments \
             WHERE bucket_id = $1 ORDER BY id DESC",
        )
        .bind(bucket_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeploymentRow {
                id: r.0,
                bucket_id: r.1,
                created_at_ms: r.2,
                created_by: r.3,
                file_count: r.4,
                total_bytes: r.5,
            })
            .collect())
    }

    /// Make `deployment_id` (which must belong to the bucket) active.
    pub async fn activate(&self, bucket_id: &str, deployment_id: &str) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE storage_buckets SET active_deployment_id = $2 WHERE id = $1 \
             AND EXISTS (SELECT 1 FROM storage_deployments WHERE id = $2 AND bucket_id = $1)",
        )
        .bind(bucket_id)
        .bind(deployment_id)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Every file of a deployment, by path.
    pub async fn files(&self, deployment_id: &str) -> sqlx::Result<Vec<FileRow>> {
        let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
            "SELECT path, sha256, size, content_type FROM storage_files WHERE deployment_id = $1 ORDER BY path",
        )
        .bind(deployment_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| FileRow {
                path: r.0,
                sha256: r.1,
                size: r.2,
                content_type: r.3,
            })
            .collect())
    }

    /// One file of a deployment.
    pub async fn file(&self, deployment_id: &str, path: &str) -> sqlx::Result<Option<FileRow>> {
        let row: Option<(String, String, i64, String)> = sqlx::query_as(
            "SELECT path, sha256, size, content_type FROM storage_files WHERE deployment_id = $1 AND path = $2",
        )
        .bind(deployment_id)
        .bind(path)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| FileRow {
            path: r.0,
            sha256: r.1,
            size: r.2,
            content_type: r.3,
        }))
    }

    /// Bind a host; a host already bound (in any org) is a unique violation.
    pub async fn insert_binding(
        &self,
        host: &str,
        org_id: &str,
        bucket_id: &str,
    ) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO storage_bindings (host, org_id, bucket_id, enabled, created_at_ms) VALUES ($1, $2, $3, 1, $4)")
            .bind(host)
            .bind(org_id)
            .bind(bucket_id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The org's bindings, by host.
    pub async fn list_bindings(&self, org_id: &str) -> sqlx::Result<Vec<BindingRow>> {
        let rows: Vec<BindingTuple> = sqlx::query_as(concat!(
            binding_select!(),
            " WHERE b.org_id = $1 ORDER BY b.host"
        ))
        .bind(org_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(binding).collect())
    }

    /// One binding of the org.
    pub async fn binding(&self, org_id: &str, host: &str) -> sqlx::Result<Option<BindingRow>> {
        let row: Option<BindingTuple> = sqlx::query_as(concat!(
            binding_select!(),
            " WHERE b.org_id = $1 AND b.host = $2"
        ))
        .bind(org_id)
        .bind(host)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(binding))
    }

    /// The binding of a host, in whatever org (serving).
    pub async fn resolve_host(&self, host: &str) -> sqlx::Result<Option<BindingRow>> {
        let row: Option<BindingTuple> =
            sqlx::query_as(concat!(binding_select!(), " WHERE b.host = $1"))
                .bind(host)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(binding))
    }

    /// Delete a binding of the org.
    pub async fn delete_binding(&self, org_id: &str, host: &str) -> sqlx::Result<bool> {
        let res = sqlx::query("DELETE FROM storage_bindings WHERE org_id = $1 AND host = $2")
            .bind(org_id)
            .bind(host)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Turn a binding on or off.
    pub async fn set_binding_enabled(
        &self,
        org_id: &str,
        host: &str,
        enabled: bool,
    ) -> sqlx::Result<bool> {
        let res =
            sqlx::query("UPDATE storage_bindings SET enabled = $3 WHERE org_id = $1 AND host = $2")
                .bind(org_id)
                .bind(host)
                .bind(i64::from(enabled))
                .execute(self.db.pool())
                .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Create a storage token.
    pub async fn insert_token(&self, t: &TokenRow, secret_hash: &str) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO storage_tokens (id, org_id, secret_hash, name, surface, access, buckets, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&t.id)
        .bind(&t.org_id)
        .bind(secret_hash)
        .bind(&t.name)
        .bind(&t.surface)
        .bind(&t.access)
        .bind(serde_json::to_string(&t.buckets).expect("a list of strings serialises"))
        .bind(t.created_at_ms)
        .bind(t.expires_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Live tokens of the org, newest first.
    pub async fn list_tokens(&self, org_id: &str) -> sqlx::Result<Vec<TokenRow>> {
        let rows: Vec<TokenTuple> = sqlx::query_as(concat!(
            "SELECT ",
            token_cols!(),
            " FROM storage_tokens WHERE org_id = $1 AND revoked_at_ms IS NULL \
             AND (expires_at_ms = 0 OR expires_at_ms > $2) ORDER BY id DESC"
        ))
        .bind(org_id)
        .bind(now_ms())
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(token).collect())
    }

    /// A token of the org by id.
    pub async fn token(&self, org_id: &str, id: &str) -> sqlx::Result<Option<TokenRow>> {
        let row: Option<TokenTuple> = sqlx::query_as(concat!(
            "SELECT ",
            token_cols!(),
            " FROM storage_tokens WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(token))
    }

    /// A token by the hash of its secret (serving).
    pub async fn token_by_hash(&self, secret_hash: &str) -> sqlx::Result<Option<TokenRow>> {
        let row: Option<TokenTuple> = sqlx::query_as(concat!(
            "SELECT ",
            token_cols!(),
            " FROM storage_tokens WHERE secret_hash = $1"
        ))
        .bind(secret_hash)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(token))
    }

    /// Revoke the org's live tokens that name `bucket` explicitly (not `*`); returns
    /// their ids.
    pub async fn revoke_tokens_naming(
        &self,
        org_id: &str,
        bucket: &str,
    ) -> sqlx::Result<Vec<String>> {
        let ids: Vec<String> = self
            .list_tokens(org_id)
            .await?
            .into_iter()
            .filter(|t| t.buckets.iter().any(|b| b == bucket))
            .map(|t| t.id)
            .collect();
        for id in &ids {
            self.revoke_token(org_id, id).await?;
        }
        Ok(ids)
    }

    /// How many buckets the org has.
    pub async fn count_buckets(&self, org_id: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM storage_buckets WHERE org_id = $1")
            .bind(org_id)
            .fetch_one(self.db.pool())
            .await?;
        Ok(n)
    }

    /// Bytes the org stores: its KV values and the files of every deployment kept.
    pub async fn stored_bytes(&self, org_id: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT CAST(\
               COALESCE((SELECT SUM(LENGTH(k.value)) FROM storage_kv k \
                  JOIN storage_buckets b ON b.id = k.bucket_id WHERE b.org_id = $1), 0) + \
               COALESCE((SELECT SUM(d.total_bytes) FROM storage_deployments d \
                  JOIN storage_buckets b ON b.id = d.bucket_id WHERE b.org_id = $1), 0) AS BIGINT)",
        )
        .bind(org_id)
        .fetch_one(self.db.pool())
        .await?;
        Ok(n)
    }

    /// Delete every storage token of the org (live or not); returns their ids.
    pub async fn delete_tokens_of_org(&self, org_id: &str) -> sqlx::Result<Vec<String>> {
        let ids: Vec<(String,)> =
            sqlx::query_as("DELETE FROM storage_tokens WHERE org_id = $1 RETURNING id")
                .bind(org_id)
                .fetch_all(self.db.pool())
                .await?;
        Ok(ids.into_iter().map(|r| r.0).collect())
    }

    /// What the org holds: buckets, host bindings, live storage tokens, and the
    /// bytes stored (KV values and the files of every deployment).
    pub async fn org_usage(
        &self,
        org_id: &str,
    ) -> sqlx::Result<std::collections::BTreeMap<String, i64>> {
        let (buckets, bindings, tokens): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT COUNT(*) FROM storage_buckets WHERE org_id = $1), \
               (SELECT COUNT(*) FROM storage_bindings WHERE org_id = $1), \
               (SELECT COUNT(*) FROM storage_tokens WHERE org_id = $1 AND revoked_at_ms IS NULL \
                  AND (expires_at_ms = 0 OR expires_at_ms > $2))",
        )
        .bind(org_id)
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok([
            ("buckets", buckets),
            ("host_bindings", bindings),
            ("storage_tokens", tokens),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect())
    }

    /// Revoke a token of the org.
    pub async fn revoke_token(&self, org_id: &str, id: &str) -> sqlx::Result<bool> {
        let res = sqlx::query("UPDATE storage_tokens SET revoked_at_ms = $3 WHERE org_id = $1 AND id = $2 AND revoked_at_ms IS NULL")
            .bind(org_id)
            .bind(id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }
}
