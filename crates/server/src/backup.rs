//! `lattice-server backup --to DIR` and `lattice-server restore --from DIR`.
//!
//! A backup is a directory:
//!
//! - `lattice.db`: a consistent snapshot of the embedded SQLite database (`VACUUM
//!   INTO`, which reads one snapshot while the server keeps writing). With Postgres
//!   the database is not in it: back it up with `pg_dump` (docs/backup.md).
//! - `objects/`: the static-site blobs, when they live in the data dir. Blobs are
//!   content-addressed and never rewritten, and they are copied after the database
//!   snapshot, so every blob the snapshot names is there.
//! - `master.key`, when the key is the data dir's file (not when it comes from
//!   `LATTICE_MASTER_KEY`: that one lives in a secret manager, and the backup names
//!   only its fingerprint).
//! - `tls/`, when the gateway made its own CA.
//! - `lattice-backup.json`: what is in it, with the size and SHA-256 of every file
//!   and the master key's fingerprint.
//!
//! A restore checks everything before it writes anything: the manifest, every
//! file's checksum, that the data dir holds no database yet, and that the master
//! key it will run with opens the snapshot's sealed data key. Then it copies the
//! files into a staging directory inside the data dir and renames them into place.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use lattice_core::config::Config;
use lattice_core::crypto::{MasterKey, Sealer};
use lattice_core::db::Db;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};

/// The manifest's name.
pub const MANIFEST: &str = "lattice-backup.json";
const FORMAT: u64 = 1;

/// What a backup wrote.
#[derive(Debug)]
pub struct BackupReport {
    /// Files written (besides the manifest).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Whether the database is in it (SQLite) or must be dumped apart (Postgres).
    pub database_included: bool,
    /// Whether the master key is in it.
    pub master_key_included: bool,
}

/// What a restore put in place.
#[derive(Debug)]
pub struct RestoreReport {
    /// Files restored.
    pub files: usize,
    /// Whether the database was in the backup (else restore it with `pg_restore`).
    pub database_included: bool,
}

fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    Some(PathBuf::from(path))
}

/// The key the server runs with here: configured (`LATTICE_MASTER_KEY`), or the data
/// dir's `master.key` if there is one. None: neither (a fresh data dir).
fn configured_key(config: &Config) -> anyhow::Result<Option<(MasterKey, &'static str)>> {
    if let Some(k) = &config.master_key {
        return Ok(Some((
            MasterKey::parse(k.expose_secret()).context("master_key")?,
            "LATTICE_MASTER_KEY",
        )));
    }
    let path = config.data_dir.join("master.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some((
            MasterKey::parse(&text).with_context(|| format!("{}", path.display()))?,
            "the data dir's master.key",
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let n = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((n, hex::encode(hasher.finalize())))
}

/// Every regular file under `dir`, as paths relative to `dir`, sorted.
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = dir.join(&rel);
        for entry in
            std::fs::read_dir(&here).with_context(|| format!("listing {}", here.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(name);
            } else if kind.is_file() {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn copy_tree(
    from: &Path,
    to: &Path,
    prefix: &str,
    files: &mut Vec<serde_json::Value>,
) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for rel in files_under(from)? {
        let src = from.join(&rel);
        let dst = to.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&src, &dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        let (size, sha) = sha256_file(&dst)?;
        bytes += size;
        files.push(serde_json::json!({
            "path": format!("{prefix}/{}", rel.display()),
            "size": size,
            "sha256": sha,
        }));
    }
    Ok(bytes)
}

/// Move a file (a copy and a removal when a rename cannot cross filesystems).
fn move_file(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if std::fs::rename(src, dst).is_err() {
        std::fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        std::fs::remove_file(src)?;
    }
    Ok(())
}

fn private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn private_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Write a backup of this installation to `to` (a new or empty directory).
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<BackupReport> {
    if to.exists()
        && std::fs::read_dir(to)
            .with_context(|| format!("{}", to.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: back up into a new directory",
            to.display()
        );
    }
    let Some((key, key_source)) = configured_key(config)? else {
        bail!(
            "no master key: neither LATTICE_MASTER_KEY nor {} (has a server ever run with this data dir?)",
            config.data_dir.join("master.key").display()
        );
    };
    private_dir(to)?;
    let mut files = Vec::new();
    let mut bytes = 0;

    // The database first: every blob it names is already in objects/.
    let url = config.database_url();
    let database_included = match sqlite_path(&url) {
        Some(_) => {
            let db = Db::connect(&url, 1).await?;
            if !Sealer::check(&db, &key).await.context(
                "the master key does not open this database's data key (is it the right key?)",
            )? {
                tracing::warn!("the database has no data key yet: nothing sealed to back up");
            }
            let target = to.join("lattice.db");
            let quoted = target.display().to_string().replace('\'', "''");
            let vacuum = format!("VACUUM INTO '{quoted}'");
            sqlx::query(sqlx::AssertSqlSafe(vacuum))
                .execute(db.pool())
                .await
                .context("snapshotting the SQLite database (VACUUM INTO)")?;
            db.close().await;
            private_file(&target)?;
            let (size, sha) = sha256_file(&target)?;
            bytes += size;
            files.push(serde_json::json!({"path": "lattice.db", "size": size, "sha256": sha}));
            true
        }
        None => false,
    };
    let objects_local = config.storage.objects_url.is_none();
    let objects = config.data_dir.join("objects");
    if objects_local && objects.is_dir() {
        bytes += copy_tree(&objects, &to.join("objects"), "objects", &mut files)?;
    }
    let tls = config.data_dir.join("tls");
    if tls.is_dir() {
        bytes += copy_tree(&tls, &to.join("tls"), "tls", &mut files)?;
    }
    let master_key_included = key_source != "LATTICE_MASTER_KEY";
    if master_key_included {
        let target = to.join("master.key");
        std::fs::copy(config.data_dir.join("master.key"), &target)?;
        private_file(&target)?;
        let (size, sha) = sha256_file(&target)?;
        bytes += size;
        files.push(serde_json::json!({"path": "master.key", "size": size, "sha256": sha}));
    }
    let manifest = serde_json::json!({
        "format": FORMAT,
        "server_version": env!("CARGO_PKG_VERSION"),
        "created_at_ms": lattice_core::time::now_ms(),
        "database": if database_included { "sqlite" } else { "postgres: not included, back it up with pg_dump" },
        "objects": if objects_local { "included" } else { "in storage.objects_url: back up that bucket" },
        "master_key": if master_key_included { "included" } else { "not included: LATTICE_MASTER_KEY" },
        "master_key_fingerprint": key.fingerprint(),
        "files": files,
    });
    let path = to.join(MANIFEST);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)?;
    private_file(&path)?;
    Ok(BackupReport {
        files: manifest["files"].as_array().map_or(0, Vec::len),
        bytes,
        database_included,
        master_key_included,
    })
}

/// Restore the backup in `from` into this installation's data dir, which must hold
/// no database yet. Nothing is written unless every check passes.
pub async fn restore(config: &Config, from: &Path) -> anyhow::Result<RestoreReport> {
    let manifest_path = from.join(MANIFEST);
    let manifest: serde_json::Value = match std::fs::read(&manifest_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} is not a Lattice backup (no {MANIFEST})", from.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", manifest_path.display())),
    };
    if manifest["format"].as_u64() != Some(FORMAT) {
        bail!(
            "{MANIFEST}: format {} is not one this server reads ({FORMAT})",
            manifest["format"]
        );
    }
    let listed: Vec<(String, u64, String)> = manifest["files"]
        .as_array()
        .context("the manifest lists no files")?
        .iter()
        .map(|f| {
            Ok((
                f["path"]
                    .as_str()
                    .context("a file without a path")?
                    .to_owned(),
                f["size"].as_u64().context("a file without a size")?,
                f["sha256"]
                    .as_str()
                    .context("a file without a sha256")?
                    .to_owned(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    // Every file is there and unchanged.
    for (path, size, sha) in &listed {
        if path.contains("..") || path.starts_with('/') {
            bail!("{MANIFEST}: {path:?} is not a path inside the backup");
        }
        let (got_size, got_sha) =
            sha256_file(&from.join(path)).with_context(|| format!("backup file {path}"))?;
        if got_size != *size || got_sha != *sha {
            bail!(
                "backup file {path} is damaged: its size or SHA-256 is not the manifest's (nothing was restored)"
            );
        }
    }
    let has = |p: &str| listed.iter().any(|(path, _, _)| path == p);
    let database_included = has("lattice.db");
    let data_dir = &config.data_dir;
    let url = config.database_url();
    let target_db = sqlite_path(&url);
    if database_included {
        let Some(target_db) = &target_db else {
            bail!(
                "the backup holds a SQLite database, but this server is configured for {}: restore into an embedded (SQLite) data dir",
                lattice_core::db::redact_url(&url)
            );
        };
        if target_db.exists() {
            bail!(
                "{} already exists: restore into a fresh data dir (nothing was restored)",
                target_db.display()
            );
        }
    }
    // The master key this server will run with, and that it opens the snapshot.
    let expected = manifest["master_key_fingerprint"]
        .as_str()
        .unwrap_or_default();
    let configured = configured_key(config)?;
    let from_backup = if has("master.key") {
        Some(MasterKey::parse(&std::fs::read_to_string(
            from.join("master.key"),
        )?)?)
    } else {
        None
    };
    let (key, write_key) = match (configured, from_backup) {
        (Some((key, source)), _) => {
            if key.fingerprint() != expected {
                bail!(
                    "the master key from {source} (fingerprint {}) is not the one this backup was made with (fingerprint {expected}): its sealed values would not open (nothing was restored)",
                    key.fingerprint()
                );
            }
            (key, false)
        }
        (None, Some(key)) => (key, true),
        (None, None) => bail!(
            "the backup does not include the master key (it came from LATTICE_MASTER_KEY, fingerprint {expected}): set LATTICE_MASTER_KEY to that key (nothing was restored)"
        ),
    };
    if database_included {
        // Read-only, with no pragma: the backup stays as it is.
        use sqlx::Connection as _;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(from.join("lattice.db"))
            .read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .context("opening the backup's database")?;
        let wrapped: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT wrapped FROM lattice_data_keys WHERE id = 'primary'")
                .fetch_optional(&mut conn)
                .await
                .context("reading the backup's data key")?;
        let _ = conn.close().await;
        if let Some((wrapped,)) = wrapped {
            Sealer::check_wrapped(&key, &wrapped).context(
                "the master key does not open the backup's sealed data key (nothing was restored)",
            )?;
        }
    }

    // Stage everything inside the data dir, then move it into place.
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let staging = data_dir.join(format!(".restore-{}", std::process::id()));
    let result = (|| -> anyhow::Result<usize> {
        private_dir(&staging)?;
        for (path, _, _) in &listed {
            let dst = staging.join(path);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(from.join(path), &dst)?;
        }
        // Objects and TLS material merge into what the data dir may have; the key
        // and the database go last, the database very last.
        for dir in ["objects", "tls"] {
            let src = staging.join(dir);
            if src.is_dir() {
                for rel in files_under(&src)? {
                    let dst = data_dir.join(dir).join(&rel);
                    if let Some(parent) = dst.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    move_file(&src.join(&rel), &dst)?;
                }
            }
        }
        if write_key {
            let dst = data_dir.join("master.key");
            move_file(&staging.join("master.key"), &dst)?;
            private_file(&dst)?;
        }
        if let (true, Some(target_db)) = (database_included, &target_db) {
            if let Some(parent) = target_db.parent() {
                std::fs::create_dir_all(parent)?;
            }
            move_file(&staging.join("lattice.db"), target_db)?;
            private_file(target_db)?;
        }
        Ok(listed.len())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    let files = result.context("restoring into the data dir")?;
    Ok(RestoreReport {
        files,
        database_included,
    })
}
