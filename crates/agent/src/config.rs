//! The agent's local configuration (its half of every consent) and its state
//! (the credential it got at enrollment).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::logs::LogSource;

/// `/etc/lattice/agent.toml`. Absent: no capability, no proxy port, no logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Privileged capabilities this node consents to (`exec`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Programs `exec` tasks may run: `argv[0]` must be one of these exactly.
    #[serde(default)]
    pub exec_allow: Vec<String>,
    /// Local ports on 127.0.0.1 the proxy may reach.
    #[serde(default)]
    pub proxy_ports: Vec<u32>,
    /// Log sources to follow and ship.
    #[serde(default)]
    pub logs: Vec<LogSource>,
    /// How the `firewall` capability runs nft.
    #[serde(default)]
    pub firewall: crate::firewall::FirewallConfig,
    /// How the `dns` capability writes zones, checks and reloads them.
    #[serde(default)]
    pub dns: crate::files::DnsConfig,
    /// How the `proxy` capability writes the reverse proxy's configuration.
    #[serde(default)]
    pub proxy_core: crate::files::ProxyCoreConfig,
    /// How the `update` capability replaces this agent.
    #[serde(default)]
    pub update: crate::update::UpdateConfig,
    /// The state directory (set at start, not read from the file).
    #[serde(skip)]
    pub state_dir: PathBuf,
}

impl AgentConfig {
    /// Read `path`; a missing file is the empty configuration, a bad one an error
    /// naming the problem.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => anyhow::bail!("read {}: {e}", path.display()),
        };
        let cfg: Self =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for c in &cfg.capabilities {
            anyhow::ensure!(
                lattice_proto::task_kinds::CAPABILITIES.contains(&c.as_str()),
                "{}: capabilities: unknown capability {c:?} (known: {})",
                path.display(),
                lattice_proto::task_kinds::CAPABILITIES.join(", ")
            );
        }
        anyhow::ensure!(
            (5..=300).contains(&cfg.update.reconnect_s),
            "{}: update.reconnect_s: 5-300 seconds (the server holds an update's task for 10 minutes)",
            path.display()
        );
        for p in &cfg.proxy_ports {
            anyhow::ensure!(
                (1..=65_535).contains(p),
                "{}: proxy_ports: {p} is not a port",
                path.display()
            );
        }
        Ok(cfg)
    }
}

/// What enrollment leaves in the state directory (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// The control plane's URL.
    pub server: String,
    /// Hex SHA-256 of the pinned CA (None: plain HTTP behind a trusted network).
    pub ca_sha256: Option<String>,
    /// This node's id.
    pub node_id: String,
    /// This node's credential.
    pub node_token: String,
    /// The server's Ed25519 release key (base64), pinned at enrollment: only
    /// agent releases it signed are installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

impl Credentials {
    /// `credentials.json` in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("credentials.json")
    }

    /// Read them (a clear error when the node is not enrolled).
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(state_dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (enroll first: lattice-agent enroll --token ...)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Replace the saved ones atomically (a new file renamed over the old), readable
    /// by the agent only: a crash leaves either the old or the new, never half.
    pub fn replace(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        let tmp = state_dir.join("credentials.json.new");
        let _ = std::fs::remove_file(&tmp);
        let text = serde_json::to_vec_pretty(self)?;
        lattice_core::crypto::write_private_file(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()?;
        Ok(())
    }

    /// Write them readable by the agent only.
    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        let text = serde_json::to_vec_pretty(self)?;
        lattice_core::crypto::write_private_file(&Self::path(state_dir), &text)?;
        Ok(())
    }
}
