//! A reviewed firewall change end to end with the real `lattice-agent` and the real
//! `nft`: intent, plan (diffed against what the node reports), four eyes, approval
//! of the hash, the apply on the node, drift after a hand edit, a stale plan
//! refused, and the whole story in the audit log. The agent's nft runs inside a
//! network namespace the test creates (`unshare -rn`, entered with `nsenter`), never
//! on the host's own tables.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::agents::{FAST, connected_agent};
use common::netns::Netns;
use common::{TestServer, wait_for};
use lattice_core::db::Backend;
use serde_json::{Value, json};

fn intent(ports: &str, node: &str) -> Value {
    json!({"name": "web-fw", "kind": "firewall", "selector": {"node": node},
    "spec": {"default": "drop", "rules": [
        {"action": "accept", "protocol": "tcp", "ports": ports, "from": "10.0.0.0/8", "comment": "ssh"}
    ]}})
}

/// Render a plan of web-fw: (status, plan).
async fn plan(s: &TestServer, token: &str) -> (u16, Value) {
    s.call(
        "POST",
        "/api/v1/plans",
        token,
        Some(json!({"intent": "web-fw"})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firewall_change_is_reviewed_applied_on_the_node_and_audited() {
    let Some(ns) = Netns::new() else {
        eprintln!("skipped here: `unshare -rn nft` is not available (CI requires it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "capabilities = [\"firewall\"]\n[firewall]\nnft = {:?}\nconfirm_s = 5\n",
        ns.nft()
    );
    let (_agent, node) = connected_agent(&s, &admin, dir.path(), &config).await;
    let (status, b) = s
        .call(
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            &admin,
            Some(json!({"capabilities": ["firewall"]})),
        )
        .await;
    assert_eq!(status, 200, "{b}");

    // A bad intent: 422 naming the field; nothing stored.
    let mut bad = intent("22", &node);
    bad["spec"]["rules"][0]["ports"] = json!("0");
    let (status, b) = s.call("POST", "/api/v1/intents", &admin, Some(bad)).await;
    assert_eq!(status, 422, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.rules[0].ports"),
        "{b}"
    );
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/intents",
            &admin,
            Some(intent("22,443", &node)),
        )
        .await;
    assert_eq!((status, &b["version"]), (201, &json!(1)), "{b}");

    // The plan diffs against the node's reported state: no table yet.
    let (status, p) = plan(&s, &admin).await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["state"], "pending");
    let target = &p["targets"][0];
    assert_eq!(target["base_hash"], "none", "{p}");
    let artifact = target["artifact"].as_str().unwrap().to_owned();
    assert!(
        target["diff"]
            .as_str()
            .unwrap()
            .contains("+\t\tip saddr 10.0.0.0/8 tcp dport { 22, 443 } accept comment \"ssh\"\n"),
        "{p}"
    );
    let (id, hash) = (
        p["id"].as_str().unwrap().to_owned(),
        p["hash"].as_str().unwrap().to_owned(),
    );

    // Four eyes: with a second admin, the author cannot approve; the other can.
    let bob = s
        .user_token("bob", &["policy:read", "policy:approve"])
        .await;
    let (status, b) = s
        .call("PUT", "/api/v1/groups/admins/members/bob", &admin, None)
        .await;
    assert!(status == 200 || status == 204, "{status} {b}");
    let approve = |hash: &str| json!({ "hash": hash });
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &admin,
            Some(approve(&hash)),
        )
        .await;
    assert_eq!(status, 403, "four eyes: {b}");
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &bob,
            Some(approve("sha256:0000")),
        )
        .await;
    assert_eq!(status, 409, "another hash: {b}");
    // Fresh MFA: bob turns TOTP on; his API token has no fresh TOTP, so approving
    // needs his code (a wrong one is 401).
    let (seed, now) = s.enable_totp("bob", "user-password-1234").await;
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &bob,
            Some(approve(&hash)),
        )
        .await;
    assert_eq!(
        (status, &b["error"]["code"]),
        (403, &json!("mfa_required")),
        "{b}"
    );
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &bob,
            Some(json!({"hash": hash, "totp_code": "000000"})),
        )
        .await;
    assert_eq!(status, 401, "{b}");
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &bob,
            Some(json!({"hash": hash,
                "totp_code": lattice_identity::totp::code_at(&seed, now + 30)})),
        )
        .await;
    assert_eq!((status, &b["state"]), (200, &json!("applying")), "{b}");

    // The agent applies it: the namespace has exactly the plan's table.
    let applied = wait_for(
        &s,
        &admin,
        &format!("/api/v1/plans/{id}"),
        "the plan applies",
        |b| b["state"] == "applied" || b["state"] == "halted",
    )
    .await;
    assert_eq!(applied["state"], "applied", "{applied}");
    assert_eq!(applied["targets"][0]["state"], "applied");
    assert_eq!(applied["targets"][0]["result"]["before"], "none");
    assert_eq!(ns.run(&["list", "table", "inet", "lattice"]), artifact);

    // A hand edit on the node is drift in the next plan; a plan rendered before
    // the edit is stale.
    let (_, before_edit) = plan(&s, &admin).await;
    assert_eq!(before_edit["targets"][0]["diff"], "", "nothing to change");
    assert_eq!(before_edit["targets"][0]["drift"], false);
    ns.run(&[
        "add", "rule", "inet", "lattice", "input", "tcp", "dport", "9999", "accept",
    ]);
    let mut drift = Value::Null;
    for _ in 0..50 {
        let (status, p) = plan(&s, &admin).await;
        assert_eq!(status, 201, "{p}");
        drift = p;
        if drift["targets"][0]["drift"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        drift["targets"][0]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("-\t\ttcp dport 9999 accept\n")),
        "the hand edit shows as drift: {drift}"
    );
    let (status, b) = s
        .call(
            "POST",
            &format!(
                "/api/v1/plans/{}/approve",
                before_edit["id"].as_str().unwrap()
            ),
            &bob,
            Some(approve(before_edit["hash"].as_str().unwrap())),
        )
        .await;
    assert_eq!(status, 409, "{b}");
    assert_eq!(b["error"]["code"], "plan_stale", "{b}");

    // No one applies a table without review: the apply kind cannot be queued
    // directly, even with every scope.
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/tasks",
            &admin,
            Some(json!({"node": node, "kind": "firewall.apply", "payload": {
                "plan": "forged", "hash": "sha256:00", "base_hash": "none", "artifact": "table inet lattice {}\n"}})),
        )
        .await;
    assert_eq!(status, 403, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only by an approved plan"),
        "{b}"
    );

    // The whole story is in the audit log.
    let audit = wait_for(
        &s,
        &admin,
        "/api/v1/audit?limit=1000",
        "the plan's story is audited",
        |b| {
            let entries = b["entries"].as_array().cloned().unwrap_or_default();
            ["intent.put", "plan.create", "plan.approve", "plan.applied"]
                .iter()
                .all(|a| {
                    entries.iter().any(|e| {
                        e["action"] == *a
                            && e["target"]
                                == json!(if *a == "intent.put" {
                                    "web-fw"
                                } else {
                                    id.as_str()
                                })
                    })
                })
        },
    )
    .await;
    assert!(audit.to_string().contains("firewall.apply"), "{audit}");
    // One plan's story by target: the plan's own entries, then its task's.
    let (status, story) = s
        .call(
            "GET",
            &format!("/api/v1/audit?limit=1000&target={id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{story}");
    let actions: Vec<&str> = story["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.starts_with(&["plan.create"]) && actions.contains(&"plan.applied"),
        "{actions:?}"
    );
    let task = applied["targets"][0]["task_id"].as_str().unwrap();
    let (_, task_story) = s
        .call(
            "GET",
            &format!("/api/v1/audit?limit=1000&target={task}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        task_story["entries"][0]["action"], "task.create",
        "{task_story}"
    );
    s.stop().await;
}

/// A plan over two nodes by label: the canary applies, the next node fails (the
/// server has not enabled its `firewall` capability), and the rollout halts there;
/// the failure is in the plan with the server's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_goes_canary_first_and_halts_on_a_failure() {
    let (Some(ns_a), Some(ns_b)) = (Netns::new(), Netns::new()) else {
        eprintln!("skipped here: `unshare -rn nft` is not available (CI requires it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let config = |ns: &Netns| {
        format!(
            "capabilities = [\"firewall\"]\n[firewall]\nnft = {:?}\nconfirm_s = 5\n",
            ns.nft()
        )
    };
    // The first node enrolled has the smaller id: it is the canary.
    let dir_a = tempfile::tempdir().unwrap();
    let (_agent_a, a) = connected_agent(&s, &admin, dir_a.path(), &config(&ns_a)).await;
    let dir_b = tempfile::tempdir().unwrap();
    let out =
        common::agents::enroll(&common::agents::join_token(&s, &admin).await, dir_b.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent_b = common::agents::run_agent(dir_b.path(), &config(&ns_b));
    let nodes = wait_for(&s, &admin, "/api/v1/nodes", "both agents connect", |b| {
        b["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| n["status"] == "connected"))
    })
    .await;
    let b = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .find(|id| *id != a)
        .unwrap();
    assert!(a < b, "enrolled first, smaller id");
    // Only the canary's capability is enabled on the server.
    let (status, body) = s
        .call(
            "PATCH",
            &format!("/api/v1/nodes/{a}"),
            &admin,
            Some(json!({"capabilities": ["firewall"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut doc = intent("22", &a);
    doc["selector"] = json!({"labels": {"role": "web"}});
    let (status, body) = s.call("POST", "/api/v1/intents", &admin, Some(doc)).await;
    assert_eq!(status, 201, "{body}");
    let (status, p) = plan(&s, &admin).await;
    assert_eq!(status, 201, "{p}");
    let waves: Vec<(String, i64)> = p["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["node"].as_str().unwrap().to_owned(),
                t["wave"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(waves, vec![(a.clone(), 0), (b.clone(), 1)], "{p}");

    // One admin: four eyes is off, the author approves.
    let done = approve_and_wait(&s, &admin, &p).await;
    assert_eq!(done["state"], "halted", "{done}");
    assert_eq!(done["targets"][0]["state"], "applied", "{done}");
    assert_eq!(done["targets"][1]["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("node {b} failed")) && r.contains("capability")),
        "{done}"
    );
    assert_eq!(
        ns_a.run(&["list", "table", "inet", "lattice"]),
        p["targets"][0]["artifact"].as_str().unwrap()
    );
    s.stop().await;
}

/// A TCP forwarder to the gateway that the test can close to new connections:
/// the agent's stream (already through it) stays up, but a fresh connection to
/// the server, the agent's confirm probe after an apply, is refused.
struct Forwarder {
    addr: std::net::SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl Forwarder {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    // Dropping the listener refuses new connections.
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { addr, cut }
    }
}

/// The confirm window: after an apply the agent must reach the server again; when
/// it cannot, it restores the previous table by itself and reports `lost_contact`,
/// and the rollout halts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_loses_the_server_is_rolled_back_by_the_agent() {
    let Some(ns) = Netns::new() else {
        eprintln!("skipped here: `unshare -rn nft` is not available (CI requires it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let gateway: std::net::SocketAddr = s
        .base
        .rsplit("://")
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap();
    let forwarder = Forwarder::to(gateway).await;
    let dir = tempfile::tempdir().unwrap();
    let token = common::agents::join_token(&s, &admin).await;
    let out = tokio::task::spawn_blocking({
        let (dir, server) = (
            dir.path().to_owned(),
            format!("https://127.0.0.1:{}", forwarder.addr.port()),
        );
        move || {
            std::process::Command::new(common::agents::agent_bin())
                .args([
                    "enroll",
                    "--token",
                    &token,
                    "--server",
                    &server,
                    "--state-dir",
                ])
                .arg(&dir)
                .env("LATTICE_AGENT_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = format!(
        "capabilities = [\"firewall\"]\n[firewall]\nnft = {:?}\nconfirm_s = 3\n",
        ns.nft()
    );
    let _agent = common::agents::run_agent(dir.path(), &config);
    let nodes = wait_for(&s, &admin, "/api/v1/nodes", "the agent connects", |b| {
        b["nodes"][0]["status"] == "connected"
    })
    .await;
    let node = nodes["nodes"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = s
        .call(
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            &admin,
            Some(json!({"capabilities": ["firewall"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .call("POST", "/api/v1/intents", &admin, Some(intent("22", &node)))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, p) = plan(&s, &admin).await;
    assert_eq!(status, 201, "{p}");
    // From now on the server cannot be reached anew (the agent's stream stays).
    forwarder.cut.cancel();

    let done = approve_and_wait(&s, &admin, &p).await;
    assert_eq!(done["state"], "halted", "{done}");
    let result = &done["targets"][0]["result"];
    assert_eq!(result["reason"], "lost contact", "{done}");
    assert_eq!(result["rolled_back"], true, "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("lost contact"),
        "{done}"
    );
    // The previous state (no table) is back.
    let prefix = ns.nft();
    let listed = Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(["list", "table", "inet", "lattice"])
        .output()
        .unwrap();
    assert!(!listed.status.success(), "the table was removed again");
    s.stop().await;
}

/// The path of a tool (`/usr/sbin` is not on every PATH); None where it is
/// missing (CI requires it).
fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {name} is missing (scripts/test.sh installs it)"
    );
    found.map(|p| p.display().to_string())
}

/// Put intent `doc`, render its plan, approve the hash, and wait for the rollout's
/// end: the finished plan.
async fn reviewed(s: &TestServer, admin: &str, doc: Value) -> Value {
    let name = doc["name"].as_str().unwrap().to_owned();
    let (status, b) = s.call("POST", "/api/v1/intents", admin, Some(doc)).await;
    assert_eq!(status, 201, "{b}");
    let (status, p) = s
        .call(
            "POST",
            "/api/v1/plans",
            admin,
            Some(json!({"intent": name})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    approve_and_wait(s, admin, &p).await
}

/// Approve plan `p` by its hash and wait for the rollout's end: the finished plan.
async fn approve_and_wait(s: &TestServer, admin: &str, p: &Value) -> Value {
    let id = p["id"].as_str().unwrap();
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            admin,
            Some(json!({"hash": p["hash"]})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    wait_for(
        s,
        admin,
        &format!("/api/v1/plans/{id}"),
        "the rollout ends",
        |b| ["applied", "halted", "failed"].contains(&b["state"].as_str().unwrap_or("")),
    )
    .await
}

/// One target's result, parsed.
fn result(plan: &Value) -> Value {
    match &plan["targets"][0]["result"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        other => other.clone(),
    }
}

async fn enable(s: &TestServer, admin: &str, node: &str, capability: &str) {
    let (status, b) = s
        .call(
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            admin,
            Some(json!({ "capabilities": [capability] })),
        )
        .await;
    assert_eq!(status, 200, "{b}");
}

fn zone(node: &str, extra: Value) -> Value {
    let mut records = vec![
        json!({"name": "@", "type": "NS", "value": "ns1"}),
        json!({"name": "ns1", "type": "A", "value": "192.0.2.53"}),
        json!({"name": "www", "type": "A", "value": "192.0.2.80"}),
    ];
    records.push(extra);
    json!({"name": "example-zone", "kind": "dns", "selector": {"node": node},
        "spec": {"zone": "example.com", "soa": {"mname": "ns1.example.com.", "rname": "hostmaster@example.com"},
            "records": records}})
}

/// A DNS zone end to end: validated by the real `named-checkzone` on the node,
/// written by rename, reloaded by the configured command; a zone the validator
/// refuses is a failed result carrying its output; a failed post-apply check puts
/// the previous zone back; a hand edit shows as drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_zone_is_validated_applied_and_rolled_back_on_the_node() {
    let Some(checkzone) = tool("named-checkzone") else {
        eprintln!("skipped here: named-checkzone is missing (CI requires it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    let log = dir.path().join("reloads.log");
    let fail = dir.path().join("fail-check");
    let config = format!(
        "capabilities = [\"dns\"]\n[dns]\ndir = {:?}\ncheck = [{:?}]\nreload = [\"sh\", \"-c\", \"echo reload {{zone}} >> {}\"]\npost_check = [\"sh\", \"-c\", \"test ! -e {}\"]\n",
        zones.display().to_string(),
        checkzone,
        log.display(),
        fail.display()
    );
    let (_agent, node) = connected_agent(&s, &admin, dir.path(), &config).await;
    enable(&s, &admin, &node, "dns").await;
    let file = zones.join("example.com.zone");

    // Applied: the node's file is the artifact, serial 1, reloaded once.
    let done = reviewed(
        &s,
        &admin,
        zone(
            &node,
            json!({"name": "@", "type": "TXT", "value": "v=spf1 -all"}),
        ),
    )
    .await;
    assert_eq!(done["state"], "applied", "{done}");
    let first = std::fs::read_to_string(&file).unwrap();
    assert_eq!(first, done["targets"][0]["artifact"].as_str().unwrap());
    assert!(first.contains("\t1\t; serial"), "{first}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "reload example.com\n"
    );
    let r = result(&done);
    assert_eq!(
        r["after"],
        json!(lattice_policy::changes::content_hash(&first)),
        "{r}"
    );
    assert!(r["validate_output"].as_str().unwrap().contains("OK"), "{r}");

    // Refused by the real validator (an in-zone NS without an address): nothing
    // replaced, the tool's words in the result.
    let done = reviewed(
        &s,
        &admin,
        zone(&node, json!({"name": "@", "type": "NS", "value": "ns2"})),
    )
    .await;
    assert_ne!(done["state"], "applied", "{done}");
    assert_eq!(done["targets"][0]["state"], "failed", "{done}");
    let r = result(&done);
    assert!(
        r["validate_output"]
            .as_str()
            .unwrap()
            .contains("ns2.example.com"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // The post-apply check fails: the previous zone is back and reloaded.
    std::fs::write(&fail, "").unwrap();
    let done = reviewed(
        &s,
        &admin,
        zone(
            &node,
            json!({"name": "api", "type": "A", "value": "192.0.2.81"}),
        ),
    )
    .await;
    assert_eq!(done["targets"][0]["state"], "failed", "{done}");
    let r = result(&done);
    assert_eq!(r["rolled_back"], true, "{r}");
    assert!(
        done["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the post-apply check failed")),
        "{done}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count(),
        3,
        "apply, then restore"
    );
    std::fs::remove_file(&fail).unwrap();

    // A hand edit on the node shows as drift; the next plan bumps over its serial.
    std::fs::write(
        &file,
        first.replace("\t1\t; serial", "\t7\t; serial") + "hand\t\tIN\tA\t192.0.2.99\n",
    )
    .unwrap();
    let mut p = Value::Null;
    for _ in 0..50 {
        let (status, next) = s
            .call(
                "POST",
                "/api/v1/plans",
                &admin,
                Some(json!({"intent": "example-zone"})),
            )
            .await;
        assert_eq!(status, 201, "{next}");
        p = next;
        if p["targets"][0]["drift"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(p["targets"][0]["drift"], true, "{p}");
    assert!(
        p["targets"][0]["artifact"]
            .as_str()
            .unwrap()
            .contains("\t8\t; serial"),
        "{p}"
    );
    assert!(
        p["targets"][0]["diff"]
            .as_str()
            .unwrap()
            .contains("-hand\t\tIN\tA\t192.0.2.99"),
        "{p}"
    );
    s.stop().await;
}

/// A tiny HTTP upstream on loopback that answers every request with `body`.
async fn upstream(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET through the proxy with `host`: the body, or None.
fn through(port: u16, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5", "-H", &format!("Host: {host}")])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A reverse-proxy configuration end to end with a real HAProxy on loopback:
/// validated by `haproxy -c` on the node, swapped in, reloaded, checked by a
/// request through it; a configuration HAProxy refuses is never loaded, and one
/// whose check fails is rolled back (the old routes answer again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_configuration_is_applied_to_a_real_haproxy() {
    let Some(haproxy) = tool("haproxy") else {
        eprintln!("skipped here: haproxy is missing (CI requires it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let pid = dir.path().join("haproxy.pid");
    let (http, https) = (free_port(), free_port());
    let reload = format!(
        "if [ -s {pid} ]; then exec {haproxy} -D -f {{file}} -p {pid} -sf $(cat {pid}); else exec {haproxy} -D -f {{file}} -p {pid}; fi",
        pid = pid.display()
    );
    let check =
        format!("curl -fsS --max-time 5 -H 'Host: app.example.com' http://127.0.0.1:{http}/");
    let config = format!(
        "capabilities = [\"proxy\"]\n[proxy_core]\npath = {:?}\ncheck = [{haproxy:?}, \"-c\", \"-f\"]\nreload = [\"sh\", \"-c\", {reload:?}]\npost_check = [\"sh\", \"-c\", {check:?}]\n",
        cfg.display().to_string()
    );
    let (_agent, node) = connected_agent(&s, &admin, dir.path(), &config).await;
    enable(&s, &admin, &node, "proxy").await;
    let up = upstream("hello from upstream").await;
    let doc = |upstream_port: u16, certificates: Option<&str>| {
        let mut d = json!({"name": "edge", "kind": "proxy", "selector": {"node": node},
            "spec": {"listen": {"address": "127.0.0.1", "http": http, "https": https},
                "routes": [{"host": "app.example.com", "upstreams": [format!("127.0.0.1:{upstream_port}")],
                    "health": {"path": "/healthz", "interval_s": 1}}]}});
        if let Some(c) = certificates {
            d["spec"]["certificates"] = json!(c);
            d["spec"]["routes"].as_array_mut().unwrap().push(
                json!({"host": "secure.example.com", "tls": "terminate", "upstreams": [format!("127.0.0.1:{upstream_port}")]}),
            );
        }
        d
    };
    let stop_haproxy = || {
        if let Ok(p) = std::fs::read_to_string(&pid) {
            for p in p.split_whitespace() {
                let _ = Command::new("kill").arg(p).status();
            }
        }
    };

    let done = reviewed(&s, &admin, doc(up, None)).await;
    assert_eq!(done["state"], "applied", "{done}");
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        done["targets"][0]["artifact"].as_str().unwrap()
    );
    assert_eq!(
        through(http, "app.example.com").as_deref(),
        Some("hello from upstream")
    );
    let r = result(&done);
    assert!(
        r["validate_output"]
            .as_str()
            .unwrap()
            .contains("Configuration file is valid"),
        "{r}"
    );
    let applied = std::fs::read_to_string(&cfg).unwrap();

    // HAProxy refuses it (a certificate that does not exist): never loaded.
    let done = reviewed(&s, &admin, doc(up, Some("/nonexistent/lattice-test.pem"))).await;
    assert_eq!(done["targets"][0]["state"], "failed", "{done}");
    let r = result(&done);
    assert!(
        r["validate_output"]
            .as_str()
            .unwrap()
            .contains("lattice-test.pem"),
        "{r}"
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), applied);

    // The check through the proxy fails (the new upstream is down): rolled back,
    // and the old route answers again.
    let done = reviewed(&s, &admin, doc(free_port(), None)).await;
    assert_eq!(done["targets"][0]["state"], "failed", "{done}");
    let r = result(&done);
    assert_eq!(r["rolled_back"], true, "{r}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), applied);
    let mut back = None;
    for _ in 0..50 {
        back = through(http, "app.example.com");
        if back.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(back.as_deref(), Some("hello from upstream"));
    stop_haproxy();
    s.stop().await;
}

/// A forwarder to the gateway that lets through the first `allow` connections
/// and, once closed, drops every later one until opened again.
struct Gate {
    addr: std::net::SocketAddr,
    seen: Arc<AtomicUsize>,
    allow: Arc<AtomicUsize>,
}

impl Gate {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, allow) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(usize::MAX)),
        );
        let (s, a) = (seen.clone(), allow.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let n = s.fetch_add(1, Ordering::SeqCst);
                if n >= a.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Self { addr, seen, allow }
    }

    /// Let `more` new connections through, then refuse.
    fn close_after(&self, more: usize) {
        self.allow
            .store(self.seen.load(Ordering::SeqCst) + more, Ordering::SeqCst);
    }

    fn open(&self) {
        self.allow.store(usize::MAX, Ordering::SeqCst);
    }
}

/// Kills every process running `0` (a path) when dropped.
struct Reap(std::path::PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.0.display().to_string())
            .status();
    }
}

/// The second build of the agent (`LATTICE_AGENT_VERSION=0.1.1-next`, made by
/// scripts/test.sh), or None where it was not built (CI requires it).
fn next_agent() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("LATTICE_TEST_AGENT_NEXT").map(std::path::PathBuf::from);
    assert!(
        path.as_ref().is_some_and(|p| p.is_file()) || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but LATTICE_TEST_AGENT_NEXT names no agent build (scripts/test.sh makes it)"
    );
    path.filter(|p| p.is_file())
}

async fn upload_release(s: &TestServer, token: &str, version: &str, binary: &[u8]) -> (u16, Value) {
    let resp = s
        .http
        .post(s.url(&format!(
            "/api/v1/agent-releases?version={version}&arch={}",
            std::env::consts::ARCH
        )))
        .bearer_auth(token)
        .body(binary.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Agent updates end to end with two real builds of the agent: a release is
/// uploaded and signed, the agent pins the key at enrollment, an approved update
/// replaces the agent's binary and the new one reports in; a release whose binary
/// is not the version it claims is refused before anything is replaced; an update
/// whose new agent cannot reconnect is rolled back by the watchdog to the
/// previous binary, which reports `rolled_back`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_updates_itself_and_rolls_back_when_the_new_one_cannot_reconnect() {
    let Some(next) = next_agent() else {
        eprintln!("skipped here: LATTICE_TEST_AGENT_NEXT is not set (scripts/test.sh builds it)");
        return;
    };
    let s = TestServer::start_with(Backend::Sqlite, FAST).await;
    let admin = s.admin_token(&["*"]).await;
    let original = std::fs::read(common::agents::agent_bin()).unwrap();
    let next_bytes = std::fs::read(&next).unwrap();

    // Releases: uploaded with releases:admin only, signed, immutable.
    let reader = s.user_token("reader", &["nodes:read"]).await;
    let (status, b) = upload_release(&s, &reader, "0.1.1-next", &next_bytes).await;
    assert_eq!(status, 403, "{b}");
    let (status, rel) = upload_release(&s, &admin, "0.1.1-next", &next_bytes).await;
    assert_eq!(status, 201, "{rel}");
    assert_eq!(rel["size"], json!(next_bytes.len()));
    let (status, b) = upload_release(&s, &admin, "0.1.1-next", &next_bytes).await;
    assert_eq!(status, 409, "{b}");
    let (status, b) = upload_release(&s, &admin, "next", &next_bytes).await;
    assert_eq!(status, 400, "{b}");
    let (_, list) = s.call("GET", "/api/v1/agent-releases", &reader, None).await;
    let key = list["release_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 44, "{list}");

    // The agent runs from its own copy of the binary (it replaces that file), and
    // reaches the server through a gate the test can close to new connections.
    let gateway: std::net::SocketAddr = s
        .base
        .rsplit("://")
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap();
    let gate = Gate::to(gateway).await;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("bin").join("lattice-agent");
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    std::fs::write(&exe, &original).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let state = dir.path().join("state");
    // After a rollback the agent runs as another process (the watchdog became
    // it): stop whatever runs from this binary when the test ends, however.
    let _reap = Reap(exe.clone());
    let token = common::agents::join_token(&s, &admin).await;
    let out = Command::new(&exe)
        .args([
            "enroll",
            "--token",
            &token,
            "--server",
            &format!("https://127.0.0.1:{}", gate.addr.port()),
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds: Value =
        serde_json::from_slice(&std::fs::read(state.join("credentials.json")).unwrap()).unwrap();
    assert_eq!(
        creds["release_key"],
        json!(key),
        "the key is pinned at enrollment"
    );
    let config = state.join("agent.toml");
    std::fs::write(
        &config,
        "capabilities = [\"update\"]\n[update]\nreconnect_s = 6\n",
    )
    .unwrap();
    let _agent = common::agents::AgentProc {
        child: Command::new(&exe)
            .args(["run", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .env("LATTICE_AGENT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let nodes = wait_for(&s, &admin, "/api/v1/nodes", "the agent connects", |b| {
        b["nodes"][0]["status"] == "connected"
    })
    .await;
    let node = nodes["nodes"][0]["id"].as_str().unwrap().to_owned();
    enable(&s, &admin, &node, "update").await;
    let update = |version: &str| {
        json!({"name": "agents", "kind": "agent.update", "selector": {"node": node},
            "spec": {"version": version}})
    };

    // The update: the plan shows the manifest; once approved the node runs 0.1.1-next.
    let done = reviewed(&s, &admin, update("0.1.1-next")).await;
    assert_eq!(done["state"], "applied", "{done}");
    let artifact = done["targets"][0]["artifact"].as_str().unwrap();
    assert!(
        artifact.starts_with("lattice-agent 0.1.1-next\n"),
        "{artifact}"
    );
    assert!(
        artifact.contains(&format!("signature {}", rel["signature"].as_str().unwrap())),
        "{artifact}"
    );
    let r = result(&done);
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("0.1.0"), Some("0.1.1-next")),
        "{r}"
    );
    assert_eq!(
        std::fs::read(&exe).unwrap(),
        next_bytes,
        "the binary was replaced"
    );
    wait_for(
        &s,
        &admin,
        &format!("/api/v1/nodes/{node}"),
        "the new agent reports its version",
        |b| b["agent_version"] == "0.1.1-next",
    )
    .await;

    // A broken release (the binary is another version than it claims): refused
    // before anything is replaced.
    let (status, b) = upload_release(&s, &admin, "0.1.2", &original).await;
    assert_eq!(status, 201, "{b}");
    let done = reviewed(&s, &admin, update("0.1.2")).await;
    assert_eq!(done["targets"][0]["state"], "failed", "{done}");
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("is not lattice-agent 0.1.2"),
        "{done}"
    );
    assert_eq!(std::fs::read(&exe).unwrap(), next_bytes, "nothing replaced");

    // A real update (back to the first build, 0.1.0) whose new agent cannot reach
    // the server: the watchdog puts 0.1.1-next back, and it reports the rollback.
    let (status, b) = upload_release(&s, &admin, "0.1.0", &original).await;
    assert_eq!(status, 201, "{b}");
    let (status, b) = s
        .call("POST", "/api/v1/intents", &admin, Some(update("0.1.0")))
        .await;
    assert_eq!(status, 201, "{b}");
    let (status, p) = s
        .call(
            "POST",
            "/api/v1/plans",
            &admin,
            Some(json!({"intent": "agents"})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    // One more connection (the download), then none.
    gate.close_after(1);
    let id = p["id"].as_str().unwrap().to_owned();
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/plans/{id}/approve"),
            &admin,
            Some(json!({"hash": p["hash"]})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let mut swapped = false;
    let mut restored = false;
    for _ in 0..300 {
        let now = std::fs::read(&exe).unwrap_or_default();
        swapped |= now == original;
        if swapped && now == next_bytes {
            restored = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        swapped && restored,
        "swapped to 0.1.0: {swapped}, restored 0.1.1-next: {restored}"
    );
    gate.open();
    let done = wait_for(
        &s,
        &admin,
        &format!("/api/v1/plans/{id}"),
        "the rollout ends",
        |b| b["state"] == "halted" || b["state"] == "applied",
    )
    .await;
    assert_eq!(done["state"], "halted", "{done}");
    let r = result(&done);
    assert_eq!(r["rolled_back"], true, "{done}");
    assert!(
        done["reason"].as_str().unwrap().contains("rolled_back"),
        "{done}"
    );
    wait_for(
        &s,
        &admin,
        &format!("/api/v1/nodes/{node}"),
        "the previous agent is back",
        |b| b["status"] == "connected" && b["agent_version"] == "0.1.1-next",
    )
    .await;
    // The agent now runs as another process (the watchdog became it).
    let _ = Command::new("pkill")
        .arg("-f")
        .arg(exe.display().to_string())
        .status();
    s.stop().await;
}
