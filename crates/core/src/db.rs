//! Database access: one `AnyPool` over SQLite (embedded default) or Postgres (cloud),
//! and the migration runner every service uses for its own tables.
//!
//! Both backends speak one SQL subset (see ARCHITECTURE.md, "Storage discipline").
//! A migration carries one script per backend; the runner records applied versions per
//! component in `lattice_migrations`, refuses to start on a changed script, and
//! serialises concurrent migrators (Postgres advisory lock, SQLite write lock).

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection as _, Executor as _};

/// Which SQL engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file (embedded default).
    Sqlite,
    /// PostgreSQL (cloud).
    Postgres,
}

/// Failures opening or migrating a database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names neither `sqlite:` nor `postgres:`.
    #[error("database_url: unsupported scheme in {0:?} (expected sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    /// The database did not answer.
    #[error("connect to {backend:?} database: {source}")]
    Connect {
        /// Which backend.
        backend: Backend,
        /// Why.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migration {component} v{version} ({name}): {source}")]
    Migration {
        /// Owning service.
        component: String,
        /// Version number.
        version: i64,
        /// Human name.
        name: String,
        /// Why.
        source: sqlx::Error,
    },
    /// An applied migration's script differs from the one embedded in this binary.
    #[error(
        "migration {component} v{version} was applied with a different script (checksum mismatch); refusing to start"
    )]
    Checksum {
        /// Owning service.
        component: String,
        /// Version number.
        version: i64,
    },
    /// The database has migrations this binary does not know (a newer release ran).
    #[error(
        "database has {component} migration v{version} that this binary does not know; run a newer lattice-server"
    )]
    Unknown {
        /// Owning service.
        component: String,
        /// Version number.
        version: i64,
    },
    /// The database is behind and start-up migration is off.
    #[error(
        "database is missing {component} migrations up to v{version}; run `lattice-server migrate`"
    )]
    Pending {
        /// Owning service.
        component: String,
        /// Highest embedded version.
        version: i64,
    },
    /// Any other query failure in the runner.
    #[error("migration bookkeeping: {0}")]
    Sql(#[from] sqlx::Error),
}

/// A connection pool plus the backend it talks to.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// A pooled connection idle at least this long is pinged before it is used.
const IDLE_PING_AFTER: Duration = Duration::from_secs(1);

impl Db {
    /// Open `url` (`sqlite://path`, `sqlite::memory:` or `postgres://…`).
    /// SQLite files are created with their directory, in WAL mode with a busy timeout.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = backend_of(url)?;
        let mut url = url.to_owned();
        if backend == Backend::Sqlite && !url.contains(":memory:") {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:")
                .split('?')
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(parent) = Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(parent);
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') {
                    "&mode=rwc"
                } else {
                    "?mode=rwc"
                });
            }
        }
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // The pool pings a connection when it is returned (always), and by default
            // again when it is taken: a third round trip for every statement, which on
            // Postgres cost about a tenth of the task queue's throughput. A connection
            // returned less than a second ago was just seen healthy; one idle for
            // longer is pinged before use, so a restarted database is noticed.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= IDLE_PING_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            });
        if backend == Backend::Sqlite {
            // An in-memory database lives as long as its one connection.
            if url.contains(":memory:") {
                opts = opts
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            }
            opts = opts.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the one writer; FULL sync keeps every
                    // acknowledged commit across a crash or power loss.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    Ok(())
                })
            });
        }
        let pool = opts
            .connect(&url)
            .await
            .map_err(|source| DbError::Connect { backend, source })?;
        Ok(Self { pool, backend })
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begin a transaction. Every transaction here writes, so on SQLite it takes the
    /// write lock up front (`BEGIN IMMEDIATE`): one that read first and wrote later
    /// would fail with "database is locked" if another connection committed in
    /// between, where waiting (`busy_timeout`) is what it should do.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Which engine this is, for the few statements that differ.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// Close the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the error is a unique-constraint violation (both backends).
    pub fn is_unique_violation(err: &sqlx::Error) -> bool {
        match err {
            sqlx::Error::Database(db) => {
                db.is_unique_violation()
                    || db
                        .code()
                        .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
            }
            _ => false,
        }
    }
}

/// Whether a database error means "the database cannot be reached right now", so
/// the call may be retried later (`503 unavailable`), rather than that the statement
/// failed: no connection in time, a broken socket, a closed pool, or Postgres's
/// connection errors (SQLSTATE class 08) and shutdown (57P01-57P03: the server
/// terminated the connection, is crashing or is starting).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

fn backend_of(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(DbError::UnsupportedUrl(redact_url(url)))
    }
}

/// A URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// One schema change, written once per backend (or once for both, with placeholders
/// for what the two dialects spell differently: `__BLOB__` is the bytes column type,
/// `BLOB` on SQLite and `BYTEA` on Postgres; `__UUID__` an expression giving a new
/// random UUID as text, evaluated per row; `__NOW_MS__` an expression giving the
/// current Unix time in milliseconds, for rows a migration inserts).
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing from 1 within a component.
    pub version: i64,
    /// Short description.
    pub name: &'static str,
    /// Script for SQLite (may hold several statements).
    pub sqlite: &'static str,
    /// Script for Postgres (may hold several statements).
    pub postgres: &'static str,
}

/// A random (version 4) UUID as text, on SQLite.
const SQLITE_UUID: &str = "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' \
     || substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) \
     || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))";
/// The current Unix time in milliseconds, on SQLite.
const SQLITE_NOW_MS: &str = "(CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER))";
/// The current Unix time in milliseconds, on Postgres.
const POSTGRES_NOW_MS: &str = "(CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT))";

impl Migration {
    fn script(&self, backend: Backend) -> std::borrow::Cow<'static, str> {
        let (script, placeholders) = match backend {
            Backend::Sqlite => (
                self.sqlite,
                [
                    ("__BLOB__", "BLOB"),
                    ("__UUID__", SQLITE_UUID),
                    ("__NOW_MS__", SQLITE_NOW_MS),
                ],
            ),
            Backend::Postgres => (
                self.postgres,
                [
                    ("__BLOB__", "BYTEA"),
                    ("__UUID__", "(gen_random_uuid()::text)"),
                    ("__NOW_MS__", POSTGRES_NOW_MS),
                ],
            ),
        };
        let mut out = std::borrow::Cow::Borrowed(script);
        for (placeholder, text) in placeholders {
            if out.contains(placeholder) {
                out = out.replace(placeholder, text).into();
            }
        }
        out
    }
}

/// The migrations of one component (a service, or `core`).
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// Owner name recorded in `lattice_migrations`.
    pub component: &'static str,
    /// Ordered by version.
    pub migrations: &'static [Migration],
}

/// The core tables every service database has (data keys).
pub const CORE_MIGRATIONS: MigrationSet = MigrationSet {
    component: "core",
    migrations: &[Migration {
        version: 1,
        name: "data keys",
        sqlite: "CREATE TABLE IF NOT EXISTS lattice_data_keys (id TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created_at_ms BIGINT NOT NULL)",
        postgres: "CREATE TABLE IF NOT EXISTS lattice_data_keys (id TEXT PRIMARY KEY, wrapped BYTEA NOT NULL, created_at_ms BIGINT NOT NULL)",
    }],
};

const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS lattice_migrations (\
    component TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, checksum TEXT NOT NULL, \
    applied_at_ms BIGINT NOT NULL, PRIMARY KEY (component, version))";

/// Postgres advisory lock key for migrations ("lattice" in ASCII).
const PG_MIGRATION_LOCK: i64 = 0x006c_6174_7469_6365;

fn checksum(script: &str) -> String {
    hex::encode(Sha256::digest(script.as_bytes()))
}

/// What [`migrate`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(component, version, name)` applied in this run.
    pub applied: Vec<(String, i64, String)>,
}

/// Apply every pending migration of `sets` (in order), under a lock so concurrent
/// migrators serialise. With `apply = false` only check that nothing is pending.
pub async fn migrate(
    db: &Db,
    sets: &[MigrationSet],
    apply: bool,
) -> Result<MigrationReport, DbError> {
    let mut conn = db.pool.acquire().await?;
    let mut report = MigrationReport::default();
    match db.backend {
        Backend::Postgres => {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(PG_MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        Backend::Sqlite => {}
    }
    let result = async {
        // Only create the bookkeeping table when it is missing, so a role without
        // CREATE rights can still check that nothing is pending.
        let exists = sqlx::query("SELECT 1 FROM lattice_migrations WHERE 1 = 0")
            .execute(&mut *conn)
            .await
            .is_ok();
        if !exists {
            conn.execute(BOOKKEEPING).await?;
        }
        for set in sets {
            migrate_set(&mut conn, db.backend, set, apply, &mut report).await?;
        }
        Ok::<_, DbError>(())
    }
    .await;
    if db.backend == Backend::Postgres {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *conn)
            .await;
    }
    result.map(|()| report)
}

async fn migrate_set(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    set: &MigrationSet,
    apply: bool,
    report: &mut MigrationReport,
) -> Result<(), DbError> {
    let applied: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, checksum FROM lattice_migrations WHERE component = $1 ORDER BY version",
    )
    .bind(set.component)
    .fetch_all(&mut **conn)
    .await?;
    for (version, sum) in &applied {
        match set.migrations.iter().find(|m| m.version == *version) {
            None => {
                return Err(DbError::Unknown {
                    component: set.component.into(),
                    version: *version,
                });
            }
            Some(m) if checksum(&m.script(backend)) != *sum => {
                return Err(DbError::Checksum {
                    component: set.component.into(),
                    version: *version,
                });
            }
            Some(_) => {}
        }
    }
    for m in set.migrations {
        if applied.iter().any(|(v, _)| *v == m.version) {
            continue;
        }
        if !apply {
            let version = set.migrations.last().map_or(0, |m| m.version);
            return Err(DbError::Pending {
                component: set.component.into(),
                version,
            });
        }
        let script = m.script(backend);
        let wrap = |source| DbError::Migration {
            component: set.component.into(),
            version: m.version,
            name: m.name.into(),
            source,
        };
        // One transaction per migration: the schema change and its record land together.
        // SQLite's BEGIN IMMEDIATE takes the write lock up front, which is what
        // serialises two SQLite migrators.
        let mut tx = match backend {
            Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await.map_err(wrap)?,
            Backend::Postgres => conn.begin().await.map_err(wrap)?,
        };
        let already: Option<(i64,)> = sqlx::query_as(
            "SELECT version FROM lattice_migrations WHERE component = $1 AND version = $2",
        )
        .bind(set.component)
        .bind(m.version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(wrap)?;
        if already.is_some() {
            continue;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(script.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(wrap)?;
        sqlx::query(
            "INSERT INTO lattice_migrations (component, version, name, checksum, applied_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(set.component)
        .bind(m.version)
        .bind(m.name)
        .bind(checksum(&script))
        .bind(crate::time::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
        tracing::info!(
            component = set.component,
            version = m.version,
            name = m.name,
            "applied migration"
        );
        report
            .applied
            .push((set.component.into(), m.version, m.name.into()));
    }
    Ok(())
}

/// A store test suite written once and instantiated per backend: each listed
/// `async fn name(backend: Backend)` becomes `sqlite::name` and `postgres::name`, two
/// tests of their own, so a failure on one backend neither hides nor stops the other.
///
/// ```ignore
/// async fn enqueue_deduplicates(backend: Backend) { /* ... */ }
/// lattice_core::store_test_suite!(enqueue_deduplicates, claims_are_exclusive);
/// ```
#[macro_export]
macro_rules! store_test_suite {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($crate::db::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    if !$crate::db::testing::postgres_available() {
                        eprintln!("LATTICE_TEST_DATABASE_URL is not set: Postgres half skipped");
                        return;
                    }
                    super::$test($crate::db::Backend::Postgres).await;
                }
            )+
        }
    };
}

/// Helpers for tests that need a database: SQLite always, Postgres when
/// `LATTICE_TEST_DATABASE_URL` is set. Each Postgres test database is a fresh schema.
pub mod testing {
    use super::*;

    /// The backends a store test suite must run against in this environment.
    /// Under `CI=true` a missing `LATTICE_TEST_DATABASE_URL` is an error, not a skip.
    pub fn backends() -> Vec<Backend> {
        let mut out = vec![Backend::Sqlite];
        match std::env::var("LATTICE_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => out.push(Backend::Postgres),
            _ => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "CI=true but LATTICE_TEST_DATABASE_URL is not set: Postgres tests cannot run"
                    );
                }
            }
        }
        out
    }

    /// Whether the Postgres half of a [`store_test_suite!`](crate::store_test_suite)
    /// runs here: yes when `LATTICE_TEST_DATABASE_URL` is set; under `CI=true` a
    /// missing URL fails the test instead of skipping it.
    pub fn postgres_available() -> bool {
        backends().contains(&Backend::Postgres)
    }

    /// A fresh, empty database of `backend`: a temporary SQLite file, or a new schema
    /// in the Postgres test database (selected through `search_path`).
    pub async fn fresh(backend: Backend) -> (Db, Option<tempfile_guard::Guard>) {
        let (url, guard) = fresh_url(backend).await;
        (
            Db::connect(&url, 8).await.expect("open test database"),
            guard,
        )
    }

    /// Like [`fresh`], but only the URL (for starting whole servers on it).
    pub async fn fresh_url(backend: Backend) -> (String, Option<tempfile_guard::Guard>) {
        match backend {
            Backend::Sqlite => {
                let guard = tempfile_guard::Guard::new();
                let url = format!("sqlite://{}", guard.path.join("test.db").display());
                (url, Some(guard))
            }
            Backend::Postgres => {
                let base =
                    std::env::var("LATTICE_TEST_DATABASE_URL").expect("LATTICE_TEST_DATABASE_URL");
                let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
                let admin = Db::connect(&base, 1)
                    .await
                    .expect("connect to LATTICE_TEST_DATABASE_URL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(admin.pool())
                    .await
                    .expect("create test schema");
                admin.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                (
                    format!("{base}{sep}options=-c%20search_path%3D{schema}"),
                    None,
                )
            }
        }
    }

    /// A temporary directory removed on drop (no dev-dependency needed by callers).
    pub mod tempfile_guard {
        use std::path::PathBuf;

        /// Owns a temporary directory.
        #[derive(Debug)]
        pub struct Guard {
            /// The directory.
            pub path: PathBuf,
        }

        impl Guard {
            /// Create a new empty directory under the system temp dir.
            pub fn new() -> Self {
                let path = std::env::temp_dir()
                    .join(format!("lattice-test-{}", uuid::Uuid::now_v7().simple()));
                std::fs::create_dir_all(&path).expect("create temp dir");
                Self { path }
            }
        }

        impl Default for Guard {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }

    #[test]
    fn placeholders_become_each_dialect() {
        let m = Migration {
            version: 1,
            name: "t",
            sqlite: "CREATE TABLE t (b __BLOB__); INSERT INTO t VALUES (__UUID__, __NOW_MS__)",
            postgres: "CREATE TABLE t (b __BLOB__); INSERT INTO t VALUES (__UUID__, __NOW_MS__)",
        };
        let sqlite = m.script(Backend::Sqlite);
        let postgres = m.script(Backend::Postgres);
        for script in [&sqlite, &postgres] {
            assert!(!script.contains("__"), "{script}");
        }
        assert!(sqlite.contains("BLOB") && sqlite.contains("randomblob"));
        assert!(postgres.contains("BYTEA") && postgres.contains("gen_random_uuid()"));
        // A script without placeholders is used as it is (checksums stay put).
        assert!(matches!(
            TEST_SET.migrations[0].script(Backend::Sqlite),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    const TEST_SET: MigrationSet = MigrationSet {
        component: "test",
        migrations: &[
            Migration {
                version: 1,
                name: "things",
                sqlite: "CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL); CREATE INDEX things_n ON things (n)",
                postgres: "CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL); CREATE INDEX things_n ON things (n)",
            },
            Migration {
                version: 2,
                name: "more",
                sqlite: "ALTER TABLE things ADD COLUMN label TEXT",
                postgres: "ALTER TABLE things ADD COLUMN label TEXT",
            },
        ],
    };

    #[tokio::test]
    async fn migrations_apply_once_and_concurrently_on_every_backend() {
        for backend in testing::backends() {
            let (db, _guard) = testing::fresh(backend).await;
            assert!(matches!(
                migrate(&db, &[TEST_SET], false).await,
                Err(DbError::Pending { .. })
            ));
            // Four racing migrators: exactly one applies each version.
            let runs = futures::future::join_all(
                (0..4).map(|_| migrate(&db, &[CORE_MIGRATIONS, TEST_SET], true)),
            )
            .await;
            let applied: usize = runs
                .into_iter()
                .map(|r| r.expect("migrate").applied.len())
                .sum();
            assert_eq!(applied, 3, "{backend:?}");
            let again = migrate(&db, &[CORE_MIGRATIONS, TEST_SET], true)
                .await
                .unwrap();
            assert!(again.applied.is_empty());
            sqlx::query("INSERT INTO things (id, n, label) VALUES ($1, $2, $3)")
                .bind("a")
                .bind(1_i64)
                .bind("x")
                .execute(db.pool())
                .await
                .unwrap();
            // Tampering with an applied script is detected.
            sqlx::query("UPDATE lattice_migrations SET checksum = 'x' WHERE component = 'test' AND version = 2")
                .execute(db.pool())
                .await
                .unwrap();
            assert!(matches!(
                migrate(&db, &[TEST_SET], true).await,
                Err(DbError::Checksum { version: 2, .. })
            ));
        }
    }
}
