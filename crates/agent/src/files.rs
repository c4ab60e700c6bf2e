//! File artifacts: DNS zones (`dns:<zone>`, one file per zone in a directory) and
//! the reverse proxy's configuration (`proxy`, one file). The agent reports them
//! and applies approved plans the same way for both: it checks the node still has
//! what the plan was rendered against, validates the new file with the real tool
//! (`named-checkzone`, `haproxy -c -f`), keeps the current file, swaps the new one
//! in by rename, runs the reload command and the post-apply check, and puts the
//! previous file back (and reloads again) by itself when either fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lattice_proto::agent::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::firewall::hash;
use crate::run::Agent;
use crate::tasks::failed;

/// Longest a check, reload or post-apply command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Output kept per command.
const MAX_OUTPUT: usize = 16 * 1024;

/// The `[dns]` section of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Where zone files live: `<dir>/<zone>.zone`, included by the DNS server.
    #[serde(default = "default_zone_dir")]
    pub dir: PathBuf,
    /// The validator (argv prefix); the zone name and the new file are appended.
    #[serde(default = "default_zone_check")]
    pub check: Vec<String>,
    /// Run after the new file is in place (`{zone}` and `{file}` are replaced).
    #[serde(default = "default_zone_reload")]
    pub reload: Vec<String>,
    /// Run after the reload; a failure puts the previous zone back (empty: none).
    #[serde(default)]
    pub post_check: Vec<String>,
}

fn default_zone_dir() -> PathBuf {
    PathBuf::from("/etc/bind/lattice")
}

fn default_zone_check() -> Vec<String> {
    vec!["named-checkzone".into()]
}

fn default_zone_reload() -> Vec<String> {
    vec!["rndc".into(), "reload".into(), "{zone}".into()]
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            dir: default_zone_dir(),
            check: default_zone_check(),
            reload: default_zone_reload(),
            post_check: Vec::new(),
        }
    }
}

/// The `[proxy_core]` section of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCoreConfig {
    /// The configuration file the reverse proxy reads.
    #[serde(default = "default_proxy_path")]
    pub path: PathBuf,
    /// The validator (argv prefix); the new file is appended.
    #[serde(default = "default_proxy_check")]
    pub check: Vec<String>,
    /// Run after the new file is in place (`{file}` is replaced).
    #[serde(default = "default_proxy_reload")]
    pub reload: Vec<String>,
    /// Run after the reload; a failure puts the previous file back (empty: none).
    #[serde(default)]
    pub post_check: Vec<String>,
}

fn default_proxy_path() -> PathBuf {
    PathBuf::from("/etc/haproxy/haproxy.cfg")
}

fn default_proxy_check() -> Vec<String> {
    vec!["haproxy".into(), "-c".into(), "-f".into()]
}

fn default_proxy_reload() -> Vec<String> {
    vec!["systemctl".into(), "reload".into(), "haproxy".into()]
}

impl Default for ProxyCoreConfig {
    fn default() -> Self {
        Self {
            path: default_proxy_path(),
            check: default_proxy_check(),
            reload: default_proxy_reload(),
            post_check: Vec::new(),
        }
    }
}

/// Whether `zone` is a plain domain name (it becomes a file name).
fn zone_ok(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 253
        && zone.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        })
}

fn artifact(name: String, read: std::io::Result<String>) -> pb::ManagedArtifact {
    match read {
        Ok(content) => pb::ManagedArtifact {
            name,
            hash: hash(&content),
            content,
            error: String::new(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => pb::ManagedArtifact {
            name,
            hash: "none".into(),
            content: String::new(),
            error: String::new(),
        },
        Err(e) => pb::ManagedArtifact {
            name,
            hash: String::new(),
            content: String::new(),
            error: e.to_string(),
        },
    }
}

/// What this node reports of its zones and proxy configuration (each only with
/// its capability).
pub fn artifacts(cfg: &crate::config::AgentConfig) -> Vec<pb::ManagedArtifact> {
    let has = |c: &str| cfg.capabilities.iter().any(|x| x == c);
    let mut out = Vec::new();
    if has("dns")
        && let Ok(dir) = std::fs::read_dir(&cfg.dns.dir)
    {
        let mut zones: Vec<(String, PathBuf)> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let zone = name.strip_suffix(".zone")?.to_owned();
                zone_ok(&zone).then(|| (zone, e.path()))
            })
            .collect();
        zones.sort();
        for (zone, path) in zones {
            out.push(artifact(
                format!("dns:{zone}"),
                std::fs::read_to_string(path),
            ));
        }
    }
    if has("proxy") {
        out.push(artifact(
            "proxy".into(),
            std::fs::read_to_string(&cfg.proxy_core.path),
        ));
    }
    out
}

/// An apply payload (`dns.apply` adds the zone).
#[derive(Debug, Deserialize)]
struct Apply {
    plan: String,
    hash: String,
    base_hash: String,
    artifact: String,
    #[serde(default)]
    zone: Option<String>,
}

/// One command's outcome: (success, combined output).
async fn run(argv: &[String], what: &str) -> (bool, String) {
    let Some((prog, args)) = argv.split_first() else {
        return (false, format!("{what}: no command configured"));
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if text.len() > MAX_OUTPUT {
                let mut cut = MAX_OUTPUT;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            (out.status.success(), text)
        }
        Ok(Err(e)) => (false, format!("cannot run {prog}: {e}")),
        Err(_) => (
            false,
            format!(
                "{prog} did not finish within {} s",
                COMMAND_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Replace `path` with `content` atomically (a new file renamed over it, synced),
/// or remove it (None).
pub(crate) fn put(path: &Path, content: Option<&str>) -> std::io::Result<()> {
    match content {
        Some(c) => {
            let tmp = sibling(path, "lattice-new");
            write_synced(&tmp, c)?;
            std::fs::rename(&tmp, path)?;
        }
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn write_synced(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

fn fill(argv: &[String], zone: &str, file: &Path) -> Vec<String> {
    argv.iter()
        .map(|a| {
            a.replace("{zone}", zone)
                .replace("{file}", &file.display().to_string())
        })
        .collect()
}

struct Plan<'a> {
    path: PathBuf,
    check: Vec<String>,
    reload: &'a [String],
    post_check: &'a [String],
    zone: String,
}

/// Apply an approved plan's zone (`dns.apply`) or proxy configuration
/// (`proxy.apply`).
pub async fn apply(agent: &Agent, t: &pb::TaskAssignment) -> pb::TaskResult {
    let p: Apply = match serde_json::from_str(&t.payload_json) {
        Ok(p) => p,
        Err(e) => {
            return failed(
                t,
                "bad_payload",
                format!("{} payload: {e}", t.kind),
                json!({}),
            );
        }
    };
    let cfg = &agent.config;
    let plan = if t.kind == "dns.apply" {
        let zone = p.zone.clone().unwrap_or_default();
        if !zone_ok(&zone) {
            return failed(
                t,
                "bad_payload",
                format!("dns.apply: {zone:?} is not a zone name"),
                json!({"plan": p.plan}),
            );
        }
        let path = cfg.dns.dir.join(format!("{zone}.zone"));
        let mut check = cfg.dns.check.clone();
        check.push(zone.clone());
        Plan {
            path,
            check,
            reload: &cfg.dns.reload,
            post_check: &cfg.dns.post_check,
            zone,
        }
    } else {
        Plan {
            path: cfg.proxy_core.path.clone(),
            check: cfg.proxy_core.check.clone(),
            reload: &cfg.proxy_core.reload,
            post_check: &cfg.proxy_core.post_check,
            zone: String::new(),
        }
    };
    let result = apply_file(&p, &plan).await;
    if result.is_ok() {
        // The server sees the new state at once.
        let facts_cfg = agent.config.clone();
        if let Ok(f) = tokio::task::spawn_blocking(move || crate::run::facts(&facts_cfg)).await {
            agent.send(pb::agent_message::Msg::Facts(f)).await;
        }
    }
    match result {
        Ok(detail) => pb::TaskResult {
            task_id: t.task_id.clone(),
            epoch: t.epoch,
            ok: true,
            result_json: detail.to_string(),
            error_code: String::new(),
            error: String::new(),
        },
        Err((code, error, detail)) => failed(t, &code, error, detail),
    }
}

async fn apply_file(p: &Apply, plan: &Plan<'_>) -> Result<Value, (String, String, Value)> {
    let path = &plan.path;
    let io = |what: &str, e: std::io::Error| {
        (
            "io_failed".to_owned(),
            format!("{what} {}: {e}", path.display()),
            json!({"plan": p.plan}),
        )
    };
    // 1. The node still has what the plan was rendered against.
    let before = match tokio::fs::read_to_string(path).await {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", e)),
    };
    let before_hash = before.as_deref().map_or_else(|| "none".to_owned(), hash);
    if before_hash != p.base_hash {
        return Err((
            "plan_stale".into(),
            format!(
                "the node has {before_hash}, the plan was rendered against {}: nothing applied",
                p.base_hash
            ),
            json!({"plan": p.plan, "before": before_hash}),
        ));
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("create the directory of", e))?;
    }
    // 2. Validate the new file with the real tool before touching anything.
    let candidate = sibling(path, "lattice-check");
    write_synced(&candidate, &p.artifact).map_err(|e| io("write the candidate beside", e))?;
    let mut check = plan.check.clone();
    check.push(candidate.display().to_string());
    let (valid, validate_output) = run(&check, "check").await;
    let _ = std::fs::remove_file(&candidate);
    if !valid {
        return Err((
            "validation_failed".into(),
            format!(
                "{} refused the new file: {}",
                plan.check[0],
                validate_output.trim()
            ),
            json!({"plan": p.plan, "before": before_hash, "validate_output": validate_output}),
        ));
    }
    // 3. Keep the current file (beside it, for a hand restore too) and swap.
    if let Some(b) = &before {
        write_synced(&sibling(path, "lattice-prev"), b).map_err(|e| io("keep a copy of", e))?;
    }
    put(path, Some(&p.artifact)).map_err(|e| io("replace", e))?;
    let after_hash = hash(&p.artifact);
    // 4. Reload, then the post-apply check; either failing puts the previous back.
    let reload = fill(plan.reload, &plan.zone, path);
    let (reloaded, reload_output) = run(&reload, "reload").await;
    let (checked, post_check_output) = if !reloaded || plan.post_check.is_empty() {
        (true, String::new())
    } else {
        run(&fill(plan.post_check, &plan.zone, path), "post_check").await
    };
    if !reloaded || !checked {
        let restored = put(path, before.as_deref()).is_ok();
        // Nothing was there before: the file is removed, and there is nothing to
        // reload the service into.
        let (reloaded_again, restore_output) = match &before {
            Some(_) => run(&reload, "reload").await,
            None => (true, String::new()),
        };
        let (code, why) = if reloaded {
            ("check_failed", "the post-apply check failed")
        } else {
            ("reload_failed", "the reload command failed")
        };
        return Err((
            code.into(),
            format!(
                "rolled_back: {why}; the previous file was put back{}",
                if restored && before.is_none() {
                    " (there was none: the new one is removed)"
                } else if restored && reloaded_again {
                    " and reloaded"
                } else {
                    ", but restoring it failed too: look at the node"
                }
            ),
            json!({"plan": p.plan, "plan_hash": p.hash, "before": before_hash, "after": after_hash,
                "validate_output": validate_output, "reload_output": reload_output,
                "post_check_output": post_check_output, "restore_output": restore_output,
                "rolled_back": restored && reloaded_again}),
        ));
    }
    Ok(
        json!({"plan": p.plan, "plan_hash": p.hash, "before": before_hash, "after": after_hash,
        "validate_output": validate_output, "reload_output": reload_output,
        "post_check_output": post_check_output, "rolled_back": false}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_become_safe_file_names() {
        assert!(zone_ok("example.com"));
        assert!(zone_ok("_acme.example.com"));
        for bad in ["", "../etc", "a/b", "a..b", "Example.com", "a b"] {
            assert!(!zone_ok(bad), "{bad}");
        }
    }
}
