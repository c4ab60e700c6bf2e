//! Stored credentials: one JSON file, readable only by its owner.
//!
//! Location: `--config` / `$LATTICE_CONFIG`, else `$XDG_CONFIG_HOME/lattice/config.json`,
//! else `$HOME/.config/lattice/config.json`.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// What `lattice login` stores.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// Server base URL, without a trailing slash.
    pub server: String,
    /// Operator API token (`lat_...`).
    pub token: String,
    /// CA certificate(s) to trust for the server, as an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Skip TLS certificate verification.
    #[serde(default)]
    pub insecure: bool,
}

impl std::fmt::Debug for StoredConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Where the config file lives: `explicit` (the `--config` flag or `$LATTICE_CONFIG`),
/// else derived from the XDG / HOME variables `env` returns.
pub fn config_path(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let non_empty_abs = |v: Option<OsString>| {
        v.map(PathBuf::from)
            .filter(|p| !p.as_os_str().is_empty() && p.is_absolute())
    };
    if let Some(xdg) = non_empty_abs(env("XDG_CONFIG_HOME")) {
        return Ok(xdg.join("lattice").join("config.json"));
    }
    if let Some(home) = non_empty_abs(env("HOME")) {
        return Ok(home.join(".config").join("lattice").join("config.json"));
    }
    bail!(
        "cannot locate the config file: set HOME, XDG_CONFIG_HOME or LATTICE_CONFIG, or pass --config"
    )
}

/// Read the config file; `Ok(None)` when there is none.
pub fn load(path: &Path) -> anyhow::Result<Option<StoredConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    warn_if_exposed(path);
    let cfg: StoredConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid lattice config; run lattice login again",
            path.display()
        )
    })?;
    Ok(Some(cfg))
}

/// Write the config file atomically with mode 0600 (its directory 0700).
pub fn save(path: &Path, cfg: &StoredConfig) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(cfg).context("cannot encode the config")?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".to_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = write_private(&tmp, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Delete the config file; true when there was one.
pub fn remove(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is accessible by other users; run chmod 600 on it",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredConfig {
        StoredConfig {
            server: "https://lattice.example:8443".into(),
            token: "lat_secret".into(),
            ca_file: Some(PathBuf::from("/etc/lattice/ca.pem")),
            insecure: false,
        }
    }

    #[test]
    fn round_trip_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("nested")
            .join("lattice")
            .join("config.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        // Overwriting keeps the mode and leaves no temporary file behind.
        let mut other = sample();
        other.insecure = true;
        other.ca_file = None;
        save(&path, &other).unwrap();
        assert_eq!(load(&path).unwrap(), Some(other));
        let entries = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(entries, 1);
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }

    #[test]
    fn garbage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("not a valid lattice config"), "{err}");
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", sample()).contains("lat_secret"));
    }

    #[test]
    fn path_precedence() {
        let env = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some(OsString::from("/xdg")),
            "HOME" => Some(OsString::from("/home/op")),
            _ => None,
        };
        let home_only = |k: &str| (k == "HOME").then(|| OsString::from("/home/op"));
        let explicit = Path::new("/tmp/c.json");
        assert_eq!(config_path(Some(explicit), env).unwrap(), explicit);
        assert_eq!(
            config_path(None, env).unwrap(),
            Path::new("/xdg/lattice/config.json")
        );
        assert_eq!(
            config_path(None, home_only).unwrap(),
            Path::new("/home/op/.config/lattice/config.json")
        );
        assert!(config_path(None, |_| None).is_err());
    }
}
