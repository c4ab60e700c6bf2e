//! The `firewall` artifact: the `inet lattice` nftables table, the only table
//! Lattice touches. The agent reports it (as `nft list table` prints it) and
//! applies approved plans: it checks the node still has what the plan was rendered
//! against, validates with `nft -c -f`, replaces the one table in a single `nft -f`
//! transaction, checks the result, and restores the previous table by itself when
//! the check fails or when it cannot reach the server within the confirm window
//! (like `commit confirmed` on routers).

use std::time::Duration;

use lattice_proto::agent::v1 as pb;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::run::Agent;

/// The `[firewall]` section of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// The nft command (argv prefix): `["nft"]`, or e.g. `["sudo", "nft"]`.
    #[serde(default = "default_nft")]
    pub nft: Vec<String>,
    /// Seconds the agent waits to reach the server again after an apply before it
    /// restores the previous table.
    #[serde(default = "default_confirm")]
    pub confirm_s: u64,
}

fn default_nft() -> Vec<String> {
    vec!["nft".into()]
}

fn default_confirm() -> u64 {
    30
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            nft: default_nft(),
            confirm_s: default_confirm(),
        }
    }
}

/// `sha256:<hex>` of `content` (the server computes the same).
pub fn hash(content: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(content.as_bytes())))
}

/// Run nft with `args`: (success, stdout, stderr).
fn nft(cfg: &FirewallConfig, args: &[&str]) -> Result<(bool, String, String), String> {
    let (prog, prefix) = cfg
        .nft
        .split_first()
        .ok_or("firewall.nft is empty: name the nft command")?;
    let out = std::process::Command::new(prog)
        .args(prefix)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The table as nft lists it; None when it does not exist.
pub fn read(cfg: &FirewallConfig) -> Result<Option<String>, String> {
    let (ok, out, err) = nft(cfg, &["list", "table", "inet", "lattice"])?;
    if ok {
        Ok(Some(out))
    } else if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(format!("nft list table inet lattice: {}", err.trim()))
    }
}

/// What this node reports of the firewall artifact (only with the `firewall`
/// capability: without it, Lattice manages nothing here).
pub fn artifact(agent_cfg: &crate::config::AgentConfig) -> Option<pb::ManagedArtifact> {
    if !agent_cfg.capabilities.iter().any(|c| c == "firewall") {
        return None;
    }
    Some(match read(&agent_cfg.firewall) {
        Ok(Some(content)) => pb::ManagedArtifact {
            name: "firewall".into(),
            hash: hash(&content),
            content,
            error: String::new(),
        },
        Ok(None) => pb::ManagedArtifact {
            name: "firewall".into(),
            hash: "none".into(),
            content: String::new(),
            error: String::new(),
        },
        Err(e) => pb::ManagedArtifact {
            name: "firewall".into(),
            hash: String::new(),
            content: String::new(),
            error: e,
        },
    })
}

/// The `firewall.apply` payload.
#[derive(Debug, Deserialize)]
struct Apply {
    plan: String,
    hash: String,
    base_hash: String,
    artifact: String,
}

/// Whether `artifact` is one `inet lattice` table and nothing else: the only
/// top-level lines are its opening and closing brace (no other table, no
/// `flush ruleset`, no `include`), so an apply can never touch a table Lattice
/// does not own, whatever the server sent.
fn only_lattice_table(artifact: &str) -> bool {
    let top: Vec<&str> = artifact
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .collect();
    top == ["table inet lattice {", "}"]
}

/// A transaction that replaces only the `inet lattice` table with `table` (the
/// first line makes the delete work when the table is absent).
fn replace_with(table: Option<&str>) -> String {
    let mut tx = String::from("table inet lattice\ndelete table inet lattice\n");
    if let Some(t) = table {
        tx.push_str(t);
    }
    tx
}

/// Load a transaction from a file in the state directory: `check` validates only.
fn load(
    cfg: &FirewallConfig,
    dir: &std::path::Path,
    tx: &str,
    check: bool,
) -> Result<String, String> {
    let file = dir.join("firewall.nft");
    std::fs::write(&file, tx).map_err(|e| format!("write {}: {e}", file.display()))?;
    let path = file.display().to_string();
    let args: Vec<&str> = if check {
        vec!["-c", "-f", &path]
    } else {
        vec!["-f", &path]
    };
    let (ok, out, err) = nft(cfg, &args)?;
    let output = format!("{out}{err}");
    if ok { Ok(output) } else { Err(output) }
}

fn result(
    t: &pb::TaskAssignment,
    ok: bool,
    code: &str,
    error: String,
    detail: serde_json::Value,
) -> pb::TaskResult {
    pb::TaskResult {
        task_id: t.task_id.clone(),
        epoch: t.epoch,
        ok,
        result_json: detail.to_string(),
        error_code: if ok { String::new() } else { code.into() },
        error,
    }
}

/// Whether the server is reachable (a new TCP connection to its address).
async fn reach(server: &str) -> bool {
    let Ok(url) = url::Url::parse(server) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default().unwrap_or(443);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Apply an approved plan's table.
pub async fn apply(agent: &Agent, t: &pb::TaskAssignment) -> pb::TaskResult {
    let cfg = agent.config.firewall.clone();
    let p: Apply = match serde_json::from_str(&t.payload_json) {
        Ok(p) => p,
        Err(e) => {
            return result(
                t,
                false,
                "bad_payload",
                format!("firewall.apply payload: {e}"),
                json!({}),
            );
        }
    };
    if !only_lattice_table(&p.artifact) {
        return result(
            t,
            false,
            "foreign_table",
            "refused: the artifact is not exactly the inet lattice table (Lattice touches no other table)".into(),
            json!({"plan": p.plan}),
        );
    }
    let after_hash = hash(&p.artifact);
    let (plan, plan_hash) = (p.plan.clone(), p.hash.clone());
    let dir = agent.state_dir.clone();
    let blocking = {
        let cfg = cfg.clone();
        move || -> Result<(Option<String>, String), (String, String, serde_json::Value)> {
            // 1. The node still has what the plan was rendered against.
            let before = read(&cfg).map_err(|e| ("read_failed".into(), e, json!({})))?;
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
            // 2. Validate with the real tool before touching anything.
            let tx = replace_with(Some(&p.artifact));
            let validated = load(&cfg, &dir, &tx, true).map_err(|out| {
                (
                    "validation_failed".into(),
                    format!("nft -c refused the table: {}", out.trim()),
                    json!({"plan": p.plan, "before": before_hash, "validate_output": out}),
                )
            })?;
            // 3. Apply in one transaction that replaces only the Lattice table.
            if let Err(out) = load(&cfg, &dir, &tx, false) {
                return Err((
                    "apply_failed".into(),
                    format!("nft -f failed: {}", out.trim()),
                    json!({"plan": p.plan, "before": before_hash, "validate_output": validated, "apply_output": out}),
                ));
            }
            // 4. The check: the table is exactly the artifact; else restore.
            let after = read(&cfg).ok().flatten();
            if after.as_deref() != Some(p.artifact.as_str()) {
                let restored = load(&cfg, &dir, &replace_with(before.as_deref()), false);
                return Err((
                    "check_failed".into(),
                    "after the apply the table is not the plan's: the previous table was restored"
                        .into(),
                    json!({"plan": p.plan, "before": before_hash,
                        "after": after.as_deref().map(hash), "rolled_back": restored.is_ok()}),
                ));
            }
            Ok((before, validated))
        }
    };
    let (before, validated) = match tokio::task::spawn_blocking(blocking).await {
        Ok(Ok(v)) => v,
        Ok(Err((code, error, detail))) => return result(t, false, &code, error, detail),
        Err(e) => return result(t, false, "internal", e.to_string(), json!({})),
    };
    let before_hash = before.as_deref().map_or_else(|| "none".to_owned(), hash);
    // 5. Confirm: the server must still be reachable within the window.
    let server = agent.server.lock().expect("server lock").clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.confirm_s.max(1));
    let mut confirmed = false;
    while tokio::time::Instant::now() < deadline {
        if reach(&server).await {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !confirmed {
        let dir = agent.state_dir.clone();
        let restored = tokio::task::spawn_blocking(move || {
            load(&cfg, &dir, &replace_with(before.as_deref()), false)
        })
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
        tracing::warn!(plan = %t.task_id, restored, "firewall apply: lost contact with the server; previous table restored");
        return result(
            t,
            false,
            "lost_contact",
            "rolled_back: lost contact (the server was unreachable after the apply)".into(),
            json!({"plan": plan, "plan_hash": plan_hash, "before": before_hash,
                "rolled_back": restored, "reason": "lost contact"}),
        );
    }
    // The server sees the new state at once.
    let facts_cfg = agent.config.clone();
    if let Ok(f) = tokio::task::spawn_blocking(move || crate::run::facts(&facts_cfg)).await {
        agent.send(pb::agent_message::Msg::Facts(f)).await;
    }
    result(
        t,
        true,
        "",
        String::new(),
        json!({"plan": plan, "plan_hash": plan_hash, "before": before_hash, "after": after_hash,
            "validate_output": validated, "rolled_back": false}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lattice_table_is_applied() {
        let ours = "table inet lattice {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n";
        assert!(only_lattice_table(ours));
        for foreign in [
            "table ip filter {\n}\n",
            "flush ruleset\ntable inet lattice {\n}\n",
            "table inet lattice {\n}\ntable ip nat {\n}\n",
            "include \"/etc/nftables.conf\"\ntable inet lattice {\n}\n",
            "",
        ] {
            assert!(!only_lattice_table(foreign), "{foreign}");
        }
    }
}
