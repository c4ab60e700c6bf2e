//! Running tasks the server pushes. Privileged kinds need the capability in this
//! agent's own config (the server checked its side before sending).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lattice_proto::agent::v1 as pb;
use lattice_proto::task_kinds;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use crate::run::Agent;

/// Output kept per stream.
const MAX_OUTPUT: usize = 64 * 1024;

pub(crate) fn failed(
    t: &pb::TaskAssignment,
    code: &str,
    error: String,
    result: serde_json::Value,
) -> pb::TaskResult {
    pb::TaskResult {
        task_id: t.task_id.clone(),
        epoch: t.epoch,
        ok: false,
        result_json: result.to_string(),
        error_code: code.into(),
        error,
    }
}

/// Start `t` (a duplicate of a task already running is ignored).
pub fn start(agent: Arc<Agent>, t: pb::TaskAssignment) {
    let cancel = CancellationToken::new();
    {
        let mut running = agent.running.lock().expect("running lock");
        if running.get(&t.task_id).is_some_and(|(e, _)| *e == t.epoch) {
            return;
        }
        running.insert(t.task_id.clone(), (t.epoch, cancel.clone()));
    }
    tokio::spawn(async move {
        let result = tokio::select! {
            r = execute(&agent, &t) => r,
            _ = cancel.cancelled() => failed(&t, "cancelled", "cancelled by the server".into(), serde_json::json!({})),
        };
        agent.finish(result).await;
    });
}

async fn execute(agent: &Agent, t: &pb::TaskAssignment) -> pb::TaskResult {
    let Some(spec) = task_kinds::spec(&t.kind) else {
        return failed(
            t,
            "unknown_kind",
            format!(
                "agent {}: unknown task kind {:?}",
                crate::run::VERSION,
                t.kind
            ),
            serde_json::json!({}),
        );
    };
    if let Some(cap) = spec.capability
        && !agent.config.capabilities.iter().any(|c| c == cap)
    {
        return failed(
            t,
            "capability_denied",
            format!(
                "agent refused: capability {cap:?} is not enabled in the agent's config (capabilities in agent.toml)"
            ),
            serde_json::json!({"refused_by": "agent", "capability": cap}),
        );
    }
    let payload: serde_json::Value =
        serde_json::from_str(&t.payload_json).unwrap_or(serde_json::Value::Null);
    match spec.name {
        "facts.refresh" => {
            let config = agent.config.clone();
            let facts = match tokio::task::spawn_blocking(move || crate::run::facts(&config)).await
            {
                Ok(f) => f,
                Err(e) => return failed(t, "internal", e.to_string(), serde_json::json!({})),
            };
            let hostname = facts.hostname.clone();
            agent.send(pb::agent_message::Msg::Facts(facts)).await;
            pb::TaskResult {
                task_id: t.task_id.clone(),
                epoch: t.epoch,
                ok: true,
                result_json: serde_json::json!({"hostname": hostname}).to_string(),
                error_code: String::new(),
                error: String::new(),
            }
        }
        "exec" => exec(agent, t, &payload).await,
        "firewall.apply" => crate::firewall::apply(agent, t).await,
        "dns.apply" | "proxy.apply" => crate::files::apply(agent, t).await,
        "agent.update" => crate::update::apply(agent, t).await,
        other => failed(
            t,
            "unknown_kind",
            format!("this agent cannot run {other:?}"),
            serde_json::json!({}),
        ),
    }
}

async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin) -> (String, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut truncated = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), truncated)
}

async fn exec(
    agent: &Agent,
    t: &pb::TaskAssignment,
    payload: &serde_json::Value,
) -> pb::TaskResult {
    let p = match task_kinds::parse_exec(payload) {
        Ok(p) => p,
        Err(e) => return failed(t, "invalid_payload", e, serde_json::json!({})),
    };
    if !agent.config.exec_allow.iter().any(|a| *a == p.argv[0]) {
        return failed(
            t,
            "capability_denied",
            format!(
                "agent refused: {:?} is not on the agent's exec_allow list",
                p.argv[0]
            ),
            serde_json::json!({"refused_by": "agent", "program": p.argv[0]}),
        );
    }
    let mut cmd = tokio::process::Command::new(&p.argv[0]);
    cmd.args(&p.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return failed(
                t,
                "exec_failed",
                format!("could not start {:?}: {e}", p.argv[0]),
                serde_json::json!({}),
            );
        }
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out = tokio::spawn(async move {
        match stdout {
            Some(s) => read_capped(s).await,
            None => (String::new(), false),
        }
    });
    let err = tokio::spawn(async move {
        match stderr {
            Some(s) => read_capped(s).await,
            None => (String::new(), false),
        }
    });
    let status = match tokio::time::timeout(Duration::from_secs(p.timeout_s), child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(t, "exec_failed", e.to_string(), serde_json::json!({})),
        Err(_) => {
            let _ = child.kill().await;
            return failed(
                t,
                "timeout",
                format!("killed after {} s", p.timeout_s),
                serde_json::json!({}),
            );
        }
    };
    let (stdout, out_cut) = out.await.unwrap_or_default();
    let (stderr, err_cut) = err.await.unwrap_or_default();
    let code = status.code();
    let result = serde_json::json!({
        "exit_code": code, "stdout": stdout, "stderr": stderr,
        "stdout_truncated": out_cut, "stderr_truncated": err_cut,
    });
    let ok = code == Some(0);
    pb::TaskResult {
        task_id: t.task_id.clone(),
        epoch: t.epoch,
        ok,
        result_json: result.to_string(),
        error_code: if ok {
            String::new()
        } else {
            "exit_status".into()
        },
        error: if ok {
            String::new()
        } else {
            format!(
                "{:?} exited with {}",
                p.argv[0],
                code.map_or("a signal".to_owned(), |c| c.to_string())
            )
        },
    }
}
