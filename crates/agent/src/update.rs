//! `agent.update`: the agent replaces itself with an approved release.
//!
//! Before anything is replaced the agent checks the plan's manifest: the node
//! still runs what the plan was rendered against, the release is for this
//! architecture, its signature verifies with the release key pinned at enrollment,
//! the downloaded binary has the manifest's size and SHA-256, and the binary itself
//! answers `version` with the manifest's version. Then it keeps its own binary as
//! `<exe>.prev`, renames the new one over `<exe>` (atomic), records the update in
//! `update.json`, starts a watchdog from the previous binary, and re-executes
//! itself. The new agent confirms once the server welcomes it and reports the
//! task's result. If it has not been welcomed within `[update] reconnect_s`, the
//! watchdog (the old, known-good code) puts the previous binary back, stops the
//! new one and starts the old one, which reports `rolled_back`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use lattice_proto::agent::v1 as pb;
use lattice_proto::release::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::files::{put, sibling};
use crate::firewall::hash;
use crate::run::{Agent, VERSION};
use crate::tasks::failed;

/// The `[update]` section of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Seconds the new agent has to be welcomed by the server before the previous
    /// binary is put back.
    #[serde(default = "default_reconnect")]
    pub reconnect_s: u64,
}

fn default_reconnect() -> u64 {
    60
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            reconnect_s: default_reconnect(),
        }
    }
}

/// What `update.json` records between the old agent and the new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    /// The apply task.
    pub task_id: String,
    /// Its epoch.
    pub epoch: i64,
    /// The plan and its hash.
    pub plan: String,
    pub plan_hash: String,
    /// The version replaced and the one installed.
    pub from: String,
    pub to: String,
    /// The manifest installed.
    pub manifest: String,
    /// The `agent` artifact's hash before.
    pub before: String,
    /// The binary replaced.
    pub exe: PathBuf,
    /// The agent's command line, to start the previous binary again.
    pub argv: Vec<String>,
    /// The agent's process (the same across the re-exec).
    pub pid: u32,
    /// Unix ms by which the new agent must be welcomed.
    pub deadline_ms: i64,
    /// `pending`, `confirmed`, `rolled_back`.
    pub state: String,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("update.json")
}

fn manifest_file(dir: &Path) -> PathBuf {
    dir.join("release.manifest")
}

fn read_pending(dir: &Path) -> Option<Pending> {
    let text = std::fs::read_to_string(state_file(dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Replace `update.json` atomically.
fn write_pending(dir: &Path, p: &Pending) -> std::io::Result<()> {
    put(&state_file(dir), Some(&serde_json::to_string_pretty(p)?))
}

/// This binary's `agent` artifact: the manifest it was installed from (when it
/// is this version's), else its version and architecture.
pub fn current(state_dir: &Path) -> String {
    match std::fs::read_to_string(manifest_file(state_dir)) {
        Ok(m) if Manifest::parse(&m).is_ok_and(|m| m.version == VERSION) => m,
        _ => lattice_proto::release::running(VERSION, std::env::consts::ARCH),
    }
}

/// What this node reports of the `agent` artifact (with the `update` capability).
pub fn artifact(cfg: &crate::config::AgentConfig) -> Option<pb::ManagedArtifact> {
    if !cfg.capabilities.iter().any(|c| c == "update") {
        return None;
    }
    let content = current(&cfg.state_dir);
    Some(pb::ManagedArtifact {
        name: "agent".into(),
        hash: hash(&content),
        content,
        error: String::new(),
    })
}

/// Whether `m`'s signature verifies with the pinned key (base64).
pub fn verify(m: &Manifest, pinned: &str) -> Result<(), String> {
    let key: [u8; 32] = B64
        .decode(pinned)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("the pinned release key is malformed")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "the pinned release key is not an Ed25519 key")?;
    let sig: [u8; 64] = B64
        .decode(&m.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("the signature is malformed")?;
    key.verify_strict(
        m.signed_message().as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| "the signature does not verify with the pinned release key".to_owned())
}

#[derive(Debug, Deserialize)]
struct Apply {
    plan: String,
    hash: String,
    base_hash: String,
    artifact: String,
}

/// Download the release into `to`: its size and SHA-256.
async fn download(agent: &Agent, m: &Manifest, to: &Path) -> anyhow::Result<(u64, String)> {
    let server = agent.server.lock().expect("server lock").clone();
    let channel = crate::tls::channel(&server, agent.creds.ca_sha256.as_deref())?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(8 * 1024 * 1024);
    let mut req = tonic::Request::new(pb::FetchReleaseRequest {
        version: m.version.clone(),
        arch: m.arch.clone(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", agent.creds.node_token).parse()?,
    );
    let mut stream = client.fetch_release(req).await?.into_inner();
    let mut file = tokio::fs::File::create(to).await?;
    let (mut size, mut hasher) = (0u64, Sha256::new());
    while let Some(chunk) = stream.message().await? {
        size += chunk.data.len() as u64;
        anyhow::ensure!(
            size <= m.size,
            "the download is larger than the manifest's {} bytes",
            m.size
        );
        hasher.update(&chunk.data);
        file.write_all(&chunk.data).await?;
    }
    file.sync_all().await?;
    Ok((size, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

/// Apply an approved plan's release.
pub async fn apply(agent: &Agent, t: &pb::TaskAssignment) -> pb::TaskResult {
    let p: Apply = match serde_json::from_str(&t.payload_json) {
        Ok(p) => p,
        Err(e) => {
            return failed(
                t,
                "bad_payload",
                format!("agent.update payload: {e}"),
                json!({}),
            );
        }
    };
    let state_dir = agent.state_dir.clone();
    let detail = |extra: serde_json::Value| {
        let mut d = json!({"plan": p.plan, "plan_hash": p.hash, "from": VERSION});
        if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        d
    };
    // 1. The node still runs what the plan was rendered against.
    let before = current(&state_dir);
    let before_hash = hash(&before);
    if before_hash != p.base_hash {
        return failed(
            t,
            "plan_stale",
            format!(
                "the node has {before_hash}, the plan was rendered against {}: nothing replaced",
                p.base_hash
            ),
            detail(json!({"before": before_hash})),
        );
    }
    let m = match Manifest::parse(&p.artifact) {
        Ok(m) => m,
        Err(e) => return failed(t, "bad_manifest", e, detail(json!({}))),
    };
    // 2. For this machine, signed with the pinned key.
    if m.arch != std::env::consts::ARCH {
        return failed(
            t,
            "wrong_arch",
            format!(
                "refused: the release is for {}, this node is {}",
                m.arch,
                std::env::consts::ARCH
            ),
            detail(json!({"to": m.version})),
        );
    }
    let Some(pinned) = agent.creds.release_key.clone() else {
        return failed(
            t,
            "no_release_key",
            "refused: no release key was pinned at enrollment (enroll again with a server that has one)".into(),
            detail(json!({"to": m.version})),
        );
    };
    if let Err(e) = verify(&m, &pinned) {
        return failed(
            t,
            "bad_signature",
            format!("refused: {e}"),
            detail(json!({"to": m.version})),
        );
    }
    if m.version == VERSION {
        // Already running it (installed by hand): record the manifest, nothing else.
        if let Err(e) = std::fs::write(manifest_file(&state_dir), &p.artifact) {
            return failed(t, "io_failed", e.to_string(), detail(json!({})));
        }
        return pb::TaskResult {
            task_id: t.task_id.clone(),
            epoch: t.epoch,
            ok: true,
            result_json: detail(json!({"to": m.version, "before": before_hash,
                "after": hash(&p.artifact), "already_running": true}))
            .to_string(),
            error_code: String::new(),
            error: String::new(),
        };
    }
    // 3. The binary: size, hash, and what it says it is.
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return failed(
                t,
                "io_failed",
                format!("where am I: {e}"),
                detail(json!({})),
            );
        }
    };
    let new = sibling(&exe, "new");
    match download(agent, &m, &new).await {
        Ok((size, sha)) if size == m.size && sha == m.sha256 => {}
        Ok((size, sha)) => {
            let _ = std::fs::remove_file(&new);
            return failed(
                t,
                "hash_mismatch",
                format!(
                    "refused: the download is {size} bytes with {sha}, the signed manifest says {} bytes with {}",
                    m.size, m.sha256
                ),
                detail(json!({"to": m.version})),
            );
        }
        Err(e) => {
            let _ = std::fs::remove_file(&new);
            return failed(
                t,
                "download_failed",
                format!("{e:#}"),
                detail(json!({"to": m.version})),
            );
        }
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755));
    }
    let says = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(&new)
            .arg("version")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    let said = match says {
        Ok(Ok(o)) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(Err(e)) => format!("cannot run it: {e}"),
        Err(_) => "it did not answer within 10 s".into(),
    };
    if said.trim() != format!("lattice-agent {}", m.version) {
        let _ = std::fs::remove_file(&new);
        return failed(
            t,
            "version_mismatch",
            format!(
                "refused: the new binary is not lattice-agent {}: `version` said {:?}",
                m.version,
                said.trim()
            ),
            detail(json!({"to": m.version, "version_output": said})),
        );
    }
    // 4. Keep this binary, swap, record, start the watchdog, become the new one.
    let prev = sibling(&exe, "prev");
    let pending = Pending {
        task_id: t.task_id.clone(),
        epoch: t.epoch,
        plan: p.plan.clone(),
        plan_hash: p.hash.clone(),
        from: VERSION.into(),
        to: m.version.clone(),
        manifest: p.artifact.clone(),
        before: before_hash.clone(),
        exe: exe.clone(),
        argv: std::env::args().collect(),
        pid: std::process::id(),
        deadline_ms: lattice_core::time::now_ms()
            + i64::try_from(agent.config.update.reconnect_s.max(5) * 1000).unwrap_or(60_000),
        state: "pending".into(),
    };
    let swapped = (|| -> std::io::Result<()> {
        std::fs::copy(&exe, &prev)?;
        std::fs::File::open(&prev)?.sync_all()?;
        write_pending(&state_dir, &pending)?;
        std::fs::rename(&new, &exe)?;
        if let Some(dir) = exe.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = swapped {
        let _ = std::fs::remove_file(&new);
        let _ = std::fs::remove_file(state_file(&state_dir));
        return failed(
            t,
            "io_failed",
            format!(
                "could not put the new binary in place ({}): {e}",
                exe.display()
            ),
            detail(json!({"to": m.version})),
        );
    }
    let watchdog = std::process::Command::new(&prev)
        .args(["update-watchdog", "--state-dir"])
        .arg(&state_dir)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = watchdog {
        restore(&pending);
        let _ = std::fs::remove_file(state_file(&state_dir));
        return failed(
            t,
            "io_failed",
            format!("could not start the update watchdog: {e}"),
            detail(json!({"to": m.version})),
        );
    }
    tracing::info!(from = VERSION, to = %m.version, "agent update: restarting into the new binary");
    let err = reexec(&exe, &pending.argv);
    // Only reached when exec failed: put everything back.
    restore(&pending);
    let _ = std::fs::remove_file(state_file(&state_dir));
    failed(
        t,
        "exec_failed",
        format!("could not start the new binary: {err}"),
        detail(json!({"to": m.version})),
    )
}

use std::os::unix::process::CommandExt as _;

/// Replace this process with `exe` run with `argv` (returns only on failure).
fn reexec(exe: &Path, argv: &[String]) -> std::io::Error {
    std::process::Command::new(exe)
        .args(argv.iter().skip(1))
        .exec()
}

/// Put the previous binary back over the new one.
fn restore(p: &Pending) -> bool {
    let prev = sibling(&p.exe, "prev");
    std::fs::rename(&prev, &p.exe).is_ok()
        && p.exe
            .parent()
            .is_none_or(|d| std::fs::File::open(d).and_then(|f| f.sync_all()).is_ok())
}

/// At start: a pending update that brought this binary is reported as running
/// (its lease kept) until the server welcomes this agent.
pub fn resume(agent: &Agent) {
    if let Some(p) = read_pending(&agent.state_dir) {
        if p.state == "pending" && p.to == VERSION {
            // This binary is the release: it reports the manifest from its hello.
            let _ = std::fs::write(manifest_file(&agent.state_dir), &p.manifest);
            // Started again before it was welcomed (a crash, a restart by the
            // service manager, which also stops the first watchdog): arm another
            // from the previous binary.
            if std::process::id() != p.pid {
                let _ = std::process::Command::new(sibling(&p.exe, "prev"))
                    .args(["update-watchdog", "--state-dir"])
                    .arg(&agent.state_dir)
                    .stdin(std::process::Stdio::null())
                    .process_group(0)
                    .spawn();
            }
        }
        agent.running.lock().expect("running lock").insert(
            p.task_id.clone(),
            (p.epoch, tokio_util::sync::CancellationToken::new()),
        );
    }
}

/// The server welcomed this agent: confirm the update that brought it (or report
/// the one that was rolled back).
pub async fn welcomed(agent: &Agent) {
    let Some(mut p) = read_pending(&agent.state_dir) else {
        return;
    };
    let base = json!({"plan": p.plan, "plan_hash": p.plan_hash, "from": p.from, "to": p.to, "before": p.before});
    let result = if p.state == "pending" && p.to == VERSION {
        p.state = "confirmed".into();
        if let Err(e) = write_pending(&agent.state_dir, &p) {
            tracing::error!(error = %e, "agent update: cannot confirm");
            return;
        }
        tracing::info!(from = %p.from, to = VERSION, "agent update confirmed");
        let mut d = base;
        d["after"] = json!(hash(&p.manifest));
        d["rolled_back"] = json!(false);
        pb::TaskResult {
            task_id: p.task_id.clone(),
            epoch: p.epoch,
            ok: true,
            result_json: d.to_string(),
            error_code: String::new(),
            error: String::new(),
        }
    } else if p.state == "pending" || p.state == "rolled_back" {
        // The previous binary runs again: the new one was not welcomed in time.
        let mut d = base;
        d["rolled_back"] = json!(true);
        d["reason"] = json!("the new agent did not reconnect");
        pb::TaskResult {
            task_id: p.task_id.clone(),
            epoch: p.epoch,
            ok: false,
            result_json: d.to_string(),
            error_code: "rolled_back".into(),
            error: format!(
                "rolled_back: agent {} was not welcomed by the server within the deadline; {} runs again",
                p.to, p.from
            ),
        }
    } else {
        let _ = std::fs::remove_file(state_file(&agent.state_dir));
        return;
    };
    agent.finish(result).await;
    let _ = std::fs::remove_file(state_file(&agent.state_dir));
    let _ = std::fs::remove_file(sibling(&p.exe, "prev"));
}

/// The watchdog: wait for the new agent's confirmation; past the deadline, put
/// the previous binary back, stop the new agent and start the previous one (under
/// systemd, `Restart=` starts it).
pub async fn watchdog(state_dir: &Path) -> anyhow::Result<()> {
    loop {
        let Some(mut p) = read_pending(state_dir) else {
            return Ok(());
        };
        if p.state != "pending" {
            return Ok(());
        }
        if lattice_core::time::now_ms() >= p.deadline_ms {
            tracing::warn!(to = %p.to, from = %p.from, "agent update: not welcomed in time, rolling back");
            if !restore(&p) {
                anyhow::bail!("cannot put {} back", sibling(&p.exe, "prev").display());
            }
            p.state = "rolled_back".into();
            write_pending(state_dir, &p)?;
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.pid.to_string()])
                .status();
            // A later start of the new agent (another pid) is stopped too.
            if let Ok(pid) = std::fs::read_to_string(state_dir.join("agent.pid"))
                && pid.trim() != p.pid.to_string()
            {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", pid.trim()])
                    .status();
            }
            if std::env::var_os("INVOCATION_ID").is_some() {
                // systemd restarts the unit into the previous binary.
                return Ok(());
            }
            return Err(reexec(&p.exe, &p.argv).into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;

    #[test]
    fn only_manifests_signed_with_the_pinned_key_verify() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
        let pinned = B64.encode(key.verifying_key().as_bytes());
        let mut m = Manifest {
            version: "1.2.3".into(),
            arch: "x86_64".into(),
            sha256: "sha256:00".into(),
            size: 10,
            signature: String::new(),
        };
        m.signature = B64.encode(key.sign(m.signed_message().as_bytes()).to_bytes());
        assert_eq!(verify(&m, &pinned), Ok(()));
        // Any field changed, another key, garbage: refused.
        let mut bigger = m.clone();
        bigger.size = 11;
        assert!(verify(&bigger, &pinned).is_err());
        let mut hash = m.clone();
        hash.sha256 = "sha256:01".into();
        assert!(verify(&hash, &pinned).is_err());
        let mut version = m.clone();
        version.version = "1.2.4".into();
        assert!(verify(&version, &pinned).is_err());
        assert!(verify(&m, &B64.encode(other.verifying_key().as_bytes())).is_err());
        let mut junk = m.clone();
        junk.signature = "not base64!".into();
        assert!(verify(&junk, &pinned).is_err());
        assert!(verify(&m, "short").is_err());
    }
}
