//! Real agents for black-box tests: the `lattice-agent` binary enrolled with a join
//! token from a running server and run with a given `agent.toml`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use super::{TestServer, wait_for};

/// A binary of the workspace, beside `lattice-server` in the target directory.
pub fn bin(name: &str) -> PathBuf {
    let path = Path::new(super::process::BIN).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace",
        path.display()
    );
    path
}

/// A running agent process, killed on drop.
pub struct AgentProc {
    pub child: Child,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `lattice-agent enroll` (off the runtime: the server runs in this process).
pub async fn enroll(token: &str, state: &Path) -> std::process::Output {
    let (token, state) = (token.to_owned(), state.to_owned());
    tokio::task::spawn_blocking(move || enroll_blocking(&token, &state))
        .await
        .unwrap()
}

pub fn agent_bin() -> PathBuf {
    bin("lattice-agent")
}

pub fn enroll_blocking(token: &str, state: &Path) -> std::process::Output {
    Command::new(agent_bin())
        .args(["enroll", "--token", token, "--state-dir"])
        .arg(state)
        .env("LATTICE_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn run_agent(state: &Path, config: &str) -> AgentProc {
    let cfg = state.join("agent.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(state)
        .env("LATTICE_AGENT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    AgentProc { child }
}

pub const FAST: &[(&str, &str)] = &[
    ("LATTICE_GATEWAY__TLS", "self-signed"),
    ("LATTICE_TUNNEL__HEARTBEAT_INTERVAL_S", "1"),
    ("LATTICE_TUNNEL__METRICS_INTERVAL_S", "1"),
    ("LATTICE_TASKS__LEASE_S", "2"),
    ("LATTICE_TUNNEL__AGENT_HOSTS", "[\"127.0.0.1\"]"),
];

pub async fn join_token(s: &TestServer, admin: &str) -> String {
    let (status, t) = s
        .call(
            "POST",
            "/api/v1/nodes/join-tokens",
            admin,
            Some(json!({"labels": {"role": "web"}, "expires_in_s": 600})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    assert!(
        t["install_command"]
            .as_str()
            .unwrap()
            .contains("lattice-agent enroll")
    );
    t["token"].as_str().unwrap().to_owned()
}

/// Enroll an agent with `config` into `s` and wait until it is connected: the
/// running agent and its node id.
pub async fn connected_agent(
    s: &TestServer,
    admin: &str,
    dir: &Path,
    config: &str,
) -> (AgentProc, String) {
    let out = enroll(&join_token(s, admin).await, dir).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = run_agent(dir, config);
    let nodes = wait_for(s, admin, "/api/v1/nodes", "agent connects", |b| {
        b["nodes"][0]["status"] == "connected"
    })
    .await;
    (agent, nodes["nodes"][0]["id"].as_str().unwrap().to_owned())
}
