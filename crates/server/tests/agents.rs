//! Real agents (the `lattice-agent` binary) against a real server over HTTPS with the
//! generated CA pinned from the join token: enrollment, reports, the two consents,
//! tasks, the proxy (streaming and cancellation), port forwards (`lattice proxy`),
//! several tunnel replicas, server restarts, and a task rescued after its agent
//! stalls, whose late result the fence refuses. Every database backend.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::agents::{FAST, bin, connected_agent, enroll, join_token, run_agent};
use common::{TestServer, wait_for};
use lattice_core::db::{Db, testing};
use serde_json::{Value, json};

/// `PATCH /api/v1/nodes/{id}` with these capabilities: the status and the node.
async fn set_capabilities(s: &TestServer, admin: &str, id: &str, caps: Value) -> (u16, Value) {
    s.call(
        "PATCH",
        &format!("/api/v1/nodes/{id}"),
        admin,
        Some(json!({ "capabilities": caps })),
    )
    .await
}

/// Queue a task; returns its id.
async fn enqueue(s: &TestServer, admin: &str, node: &str, kind: &str, payload: Value) -> String {
    let (status, t) = s
        .call(
            "POST",
            "/api/v1/tasks",
            admin,
            Some(json!({"node": node, "kind": kind, "payload": payload})),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    t["id"].as_str().unwrap().to_owned()
}

/// The task once it has finished.
async fn finished(s: &TestServer, admin: &str, id: &str) -> Value {
    wait_for(
        s,
        admin,
        &format!("/api/v1/tasks/{id}"),
        "task finishes",
        |t| matches!(t["state"].as_str(), Some("succeeded" | "failed" | "dead")),
    )
    .await
}

async fn run_task(s: &TestServer, admin: &str, node: &str, kind: &str, payload: Value) -> Value {
    let id = enqueue(s, admin, node, kind, payload).await;
    finished(s, admin, &id).await
}

/// A local service for the proxy: echoes requests; `/stream` sends a chunk every
/// 50 ms until its client goes away (counted in `gone`).
async fn upstream(gone: Arc<AtomicUsize>) -> u16 {
    struct Gone(Arc<AtomicUsize>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let app =
        axum::Router::new()
            .route(
                "/echo",
                axum::routing::any(
                    |method: http::Method,
                     uri: http::Uri,
                     headers: http::HeaderMap,
                     body: String| async move {
                        axum::Json(json!({
                            "method": method.as_str(), "uri": uri.to_string(), "body": body,
                            "x_test": headers.get("x-test").and_then(|v| v.to_str().ok()),
                            "authorization": headers.get("authorization").is_some(),
                            "host": headers.get("host").and_then(|v| v.to_str().ok()),
                        }))
                    },
                ),
            )
            .route(
                "/big",
                axum::routing::get(|| async {
                    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                    let s = futures::stream::iter(
                        (0..256).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                    );
                    axum::body::Body::from_stream(s)
                }),
            )
            .route(
                "/stream",
                axum::routing::get(move || {
                    let guard = Gone(gone.clone());
                    async move {
                        let s = futures::stream::unfold((0u64, guard), |(i, g)| async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Some((
                                Ok::<_, std::io::Error>(bytes::Bytes::from(format!("event {i}\n"))),
                                (i + 1, g),
                            ))
                        });
                        axum::body::Body::from_stream(s)
                    }
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enroll_report_consent_tasks_and_proxy() {
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let s = TestServer::start_on(&url, guard, FAST).await;
        let admin = s.admin_token(&["*"]).await;
        let dir = tempfile::tempdir().unwrap();

        // Enrollment: a good token once; reused and expired tokens are refused.
        let token = join_token(&s, &admin).await;
        assert!(token.starts_with("ljt1."));
        let out = enroll(&token, dir.path()).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let creds = std::fs::metadata(dir.path().join("credentials.json")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&creds.permissions()) & 0o777,
            0o600
        );
        let other = tempfile::tempdir().unwrap();
        let out = enroll(&token, other.path()).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("already used"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expired = join_token(&s, &admin).await;
        let db = Db::connect(&url, 1).await.unwrap();
        sqlx::query("UPDATE tunnel_join_tokens SET expires_at_ms = 1 WHERE used_at_ms = 0")
            .execute(db.pool())
            .await
            .unwrap();
        let out = enroll(&expired, other.path()).await;
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("expired"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Reports: facts at connect, metrics every interval, log lines from a file.
        let gone = Arc::new(AtomicUsize::new(0));
        let port = upstream(gone.clone()).await;
        let log = dir.path().join("app.log");
        std::fs::write(&log, "").unwrap();
        let config = format!(
            "capabilities = [\"exec\"]\nexec_allow = [\"/bin/echo\"]\nproxy_ports = [{port}]\n[[logs]]\ntype = \"file\"\npath = \"{}\"\n",
            log.display()
        );
        let agent = run_agent(dir.path(), &config);
        let nodes = wait_for(&s, &admin, "/api/v1/nodes", "agent connects", |b| {
            b["nodes"][0]["status"] == "connected"
        })
        .await;
        let node = nodes["nodes"][0].clone();
        let id = node["id"].as_str().unwrap().to_owned();
        assert_eq!(node["labels"]["role"], "web");
        assert!(!node["facts"]["hostname"].as_str().unwrap().is_empty());
        assert!(node["facts"]["memory_bytes"].as_u64().unwrap() > 0);
        assert_eq!(node["agent_capabilities"], json!(["exec"]));
        assert_eq!(node["capabilities"], json!([]));
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}/metrics?since=0"),
            "metrics arrive",
            |b| b["samples"].as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        std::fs::write(&log, "boot ok\nneedle in the log\n").unwrap();
        let logs = wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}/logs?q=needle"),
            "log lines arrive",
            |b| b["entries"].as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
        assert_eq!(logs["entries"][0]["message"], "needle in the log");
        let resp = s
            .http
            .get(s.url("/api/v1/fleet/metrics"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(&format!("lattice_node_up{{node=\"{id}\"")),
            "{text}"
        );
        assert!(text.contains("lattice_node_memory_total_bytes{"), "{text}");

        // Two consents: the server refuses until it enables exec; then it runs.
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/echo", "hi"]}),
        )
        .await;
        assert_eq!(
            (t["state"].as_str(), t["error_code"].as_str()),
            (Some("failed"), Some("capability_denied")),
            "{t}"
        );
        assert!(
            t["error"].as_str().unwrap().starts_with("server refused"),
            "{t}"
        );
        let (status, n) = set_capabilities(&s, &admin, &id, json!(["exec"])).await;
        assert_eq!((status, &n["capabilities"]), (200, &json!(["exec"])));
        let (status, _) = set_capabilities(&s, &admin, &id, json!(["root"])).await;
        assert_eq!(status, 400);
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/echo", "hi"]}),
        )
        .await;
        assert_eq!(t["state"], "succeeded", "{t}");
        assert_eq!(t["result"]["stdout"], "hi\n");
        // A burst: one exec at a time, each result starting the next. All finish
        // in seconds (a lost wake-up would leave one for the minutes-long poll).
        let mut burst = Vec::new();
        for i in 0..20 {
            let argv = json!({"argv": ["/bin/echo", i.to_string()]});
            burst.push(enqueue(&s, &admin, &id, "exec", argv).await);
        }
        for (i, task) in burst.iter().enumerate() {
            let t = finished(&s, &admin, task).await;
            assert_eq!(t["state"], "succeeded", "{t}");
            assert_eq!(t["result"]["stdout"], format!("{i}\n"), "{t}");
        }

        // The server sends the agent to another URL of this deployment: it moves,
        // and keeps the URL once welcomed there. Bad URLs and callers without
        // nodes:write are refused.
        let reconnect = format!("/api/v1/nodes/{id}/reconnect");
        for bad in [
            "ftp://example.com",
            "https://user:pw@127.0.0.1",
            "not a url",
            "http://127.0.0.1:1",
            // Not one of tunnel.agent_hosts: a node token goes to no other server.
            "https://elsewhere.example.com",
        ] {
            let (status, body) = s
                .call("POST", &reconnect, &admin, Some(json!({ "url": bad })))
                .await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("url:"),
                "{body}"
            );
        }
        let viewer = s.admin_token(&["nodes:read"]).await;
        let (status, _) = s.call("POST", &reconnect, &viewer, Some(json!({}))).await;
        assert_eq!(status, 403);
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/nodes/0190c3f0-0000-7000-8000-00000000dead/reconnect",
                &admin,
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 404);
        let moved = s.base.replace("://localhost:", "://127.0.0.1:");
        assert_ne!(moved, s.base);
        let (status, body) = s
            .call(
                "POST",
                &reconnect,
                &admin,
                Some(json!({"url": moved, "reason": "moving"})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let saved = || {
            let text = std::fs::read_to_string(dir.path().join("credentials.json")).unwrap();
            serde_json::from_str::<Value>(&text).unwrap()["server"].clone()
        };
        let kept = eventually(|| saved() == moved.as_str()).await;
        assert!(kept, "the agent did not keep {moved}: {}", saved());
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}"),
            "agent reconnects at the new URL",
            |n| n["status"] == "connected",
        )
        .await;
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/echo", "moved"]}),
        )
        .await;
        assert_eq!(t["result"]["stdout"], "moved\n", "{t}");
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/cat", "/etc/shadow"]}),
        )
        .await;
        assert_eq!(t["error_code"], "capability_denied", "{t}");
        assert!(
            t["error"].as_str().unwrap().starts_with("agent refused"),
            "{t}"
        );
        let t = run_task(&s, &admin, &id, "facts.refresh", json!({})).await;
        assert_eq!(t["state"], "succeeded", "{t}");
        // Revoking takes effect at once (the tunnel drops the capabilities it had
        // cached for the connected agent when the node changes).
        let (status, _) = set_capabilities(&s, &admin, &id, json!([])).await;
        assert_eq!(status, 200);
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/echo", "hi"]}),
        )
        .await;
        assert_eq!(t["error_code"], "capability_denied", "{t}");
        assert!(
            t["error"].as_str().unwrap().starts_with("server refused"),
            "{t}"
        );
        let (status, _) = set_capabilities(&s, &admin, &id, json!(["exec"])).await;
        assert_eq!(status, 200);

        // The proxy: method, query, headers and body pass; credentials do not.
        let base = format!("/api/v1/nodes/{id}/proxy/{port}");
        let resp = s
            .http
            .post(s.url(&format!("{base}/echo?x=1")))
            .bearer_auth(&admin)
            .header("x-test", "yes")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], "POST");
        assert_eq!(echo["uri"], "/echo?x=1");
        assert_eq!(echo["body"], "payload");
        assert_eq!(echo["x_test"], "yes");
        assert_eq!(
            echo["authorization"], false,
            "the caller's credential never reaches the node"
        );
        // A body larger than the stream's window streams across in pieces, whole.
        let large = "y".repeat(700 * 1024);
        let resp = s
            .http
            .put(s.url(&format!("{base}/echo")))
            .bearer_auth(&admin)
            .body(large.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(
            (echo["method"].as_str(), echo["body"].as_str().map(str::len)),
            (Some("PUT"), Some(large.len()))
        );
        // Ports the agent does not allow, and callers without nodes:proxy, are refused.
        let (status, err) = s
            .call(
                "GET",
                &format!("/api/v1/nodes/{id}/proxy/22/"),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 403, "{err}");
        let reader = s.admin_token(&["nodes:read"]).await;
        let (status, _) = s.call("GET", &format!("{base}/echo"), &reader, None).await;
        assert_eq!(status, 403);

        // Within nodes:proxy the policy decides (the tunnel service asks the policy
        // service): bob, in no group, is refused by default, let in on this port by
        // a policy, refused again by a forbid, and the task queue asks the same.
        let bob = s
            .user_token(
                &format!("bob-{backend:?}").to_lowercase(),
                &["nodes:proxy", "tasks:write"],
            )
            .await;
        let bob_name = format!("bob-{backend:?}").to_lowercase();
        let (status, err) = s.call("GET", &format!("{base}/echo"), &bob, None).await;
        assert_eq!(status, 403, "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains("policy denies AccessNode"), "{message}");
        assert!(!message.contains("permit("), "never the policy text");
        let permit = format!(
            "permit(principal == Lattice::User::\"{bob_name}\", action == Lattice::Action::\"AccessNode\", resource) when {{ context.port == {port} && context.protocol == \"http\" }};"
        );
        let (status, body) = s
            .call(
                "PUT",
                "/api/v1/policies/bob-web",
                &admin,
                Some(json!({"policies": permit})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = s.call("GET", &format!("{base}/echo"), &bob, None).await;
        assert_eq!(status, 200, "{backend:?}: the permit lets bob in: {body}");
        let (status, _) = s
            .call("GET", &format!("/api/v1/nodes/{id}/proxy/22/"), &bob, None)
            .await;
        assert_eq!(status, 403, "another port stays closed");
        // Explain says why, reading the node from the tunnel service.
        let (status, why) = s
            .call(
                "POST",
                "/api/v1/policies/explain",
                &admin,
                Some(json!({
                    "principal": format!("Lattice::User::\"{bob_name}\""),
                    "action": "Lattice::Action::\"AccessNode\"",
                    "resource": format!("Lattice::Node::\"{id}\""),
                    "context": {"port": port},
                })),
            )
            .await;
        assert_eq!(status, 200, "{why}");
        assert_eq!(why["decision"], "allow", "{why}");
        assert_eq!(why["determining"], json!(["bob-web"]), "{why}");
        let (_, why) = s
            .call(
                "POST",
                "/api/v1/policies/explain",
                &admin,
                Some(json!({
                    "principal": format!("Lattice::User::\"{bob_name}\""),
                    "action": "AccessNode",
                    "resource": format!("Lattice::Node::\"{id}\""),
                    "context": {"port": 22},
                })),
            )
            .await;
        assert_eq!(
            (
                why["decision"].as_str(),
                why["determining"].as_array().map(Vec::len)
            ),
            (Some("deny"), Some(0)),
            "{why}"
        );
        assert!(
            why["considered"]
                .as_array()
                .unwrap()
                .contains(&json!("bob-web")),
            "{why}"
        );
        let (status, body) = s
            .call(
                "POST",
                "/api/v1/tasks",
                &bob,
                Some(json!({"node": id, "kind": "facts.refresh"})),
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("policy denies RunTask"),
            "{body}"
        );
        let forbid = format!(
            "forbid(principal == Lattice::User::\"{bob_name}\", action, resource == Lattice::Node::\"{id}\");"
        );
        let (status, body) = s
            .call(
                "POST",
                "/api/v1/policies",
                &admin,
                Some(json!({"name": "bob-out", "policies": forbid, "priority": 10})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        // The tunnel forgets the allow it remembered as soon as the change is
        // announced (at the latest one second later).
        let mut refused = false;
        for _ in 0..40 {
            let (status, _) = s.call("GET", &format!("{base}/echo"), &bob, None).await;
            if status == 403 {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "{backend:?}: the forbid wins");
        let audit = wait_for(
            &s,
            &admin,
            "/api/v1/audit?limit=1000",
            "policy refusals are audited",
            |b| {
                b["entries"].as_array().is_some_and(|a| {
                    a.iter().any(|e| {
                        e["action"] == "policy.decide.AccessNode"
                            && e["detail"]["policies"] == json!(["bob-out"])
                    })
                })
            },
        )
        .await;
        assert!(
            audit.to_string().contains("policy.decide.RunTask"),
            "{audit}"
        );
        // A dry run of deleting the forbid: bob's recorded refusals would flip to
        // allows (the permit is still there); nothing is stored.
        let (status, report) = s
            .call(
                "POST",
                "/api/v1/policies/dry-run",
                &admin,
                Some(json!({"delete": ["bob-out"]})),
            )
            .await;
        assert_eq!(status, 200, "{report}");
        assert!(report["deny_to_allow"].as_u64().unwrap() >= 1, "{report}");
        assert!(
            report["flips"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["after_policies"] == json!(["bob-web"])),
            "{report}"
        );
        let (status, _) = s
            .call("GET", "/api/v1/policies/bob-out", &admin, None)
            .await;
        assert_eq!(status, 200, "the dry run stored nothing");
        for name in ["bob-web", "bob-out"] {
            let (status, _) = s
                .call("DELETE", &format!("/api/v1/policies/{name}"), &admin, None)
                .await;
            assert_eq!(status, 204);
        }

        // A streamed response flows as produced; leaving cancels it on the node.
        let mut resp = s
            .http
            .get(s.url(&format!("{base}/stream")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = String::new();
        while got.matches('\n').count() < 3 {
            let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(got.starts_with("event 0\nevent 1\n"), "{got}");
        drop(resp);
        for _ in 0..100 {
            if gone.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            gone.load(Ordering::SeqCst),
            1,
            "{backend:?}: the node-side request was cancelled"
        );

        // Per-stream flow control: a client that does not read a 16 MiB answer fills
        // only its own window; another request through the same agent still answers.
        let mut big = s
            .http
            .get(s.url(&format!("{base}/big")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(big.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            s.http
                .get(s.url(&format!("{base}/echo?while=stalled")))
                .bearer_auth(&admin)
                .send(),
        )
        .await
        .expect("a stalled stream does not hold up the agent's others")
        .unwrap();
        assert_eq!(resp.status(), 200);
        // And the stalled answer arrives whole once read (window granted back as it goes).
        let mut total = 0;
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), big.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            total += chunk.len();
        }
        assert_eq!(total, 16 * 1024 * 1024, "{backend:?}");

        // The agent goes away: the node shows disconnected, with why.
        drop(agent);
        let n = wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}"),
            "node disconnects",
            |b| b["status"] == "disconnected",
        )
        .await;
        assert!(n["status_reason"].as_str().is_some(), "{n}");
        let (status, _) = s.call("GET", &format!("{base}/echo"), &admin, None).await;
        assert_eq!(status, 503);

        // The agent's local config alone cannot grant: without exec there, refused.
        let _agent = run_agent(dir.path(), "exec_allow = [\"/bin/echo\"]\n");
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}"),
            "agent reconnects",
            |b| b["status"] == "connected",
        )
        .await;
        let t = run_task(
            &s,
            &admin,
            &id,
            "exec",
            json!({"argv": ["/bin/echo", "hi"]}),
        )
        .await;
        assert_eq!(t["error_code"], "capability_denied", "{t}");
        assert!(
            t["error"].as_str().unwrap().starts_with("agent refused"),
            "{t}"
        );
        db.close().await;
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_entering_the_wrong_tunnel_replica_is_forwarded() {
    let Ok(redis) = std::env::var("LATTICE_TEST_REDIS_URL") else {
        eprintln!(
            "LATTICE_TEST_REDIS_URL unset: two tunnel replicas need Redis; scripts/test.sh provides it"
        );
        return;
    };
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let mut env = FAST.to_vec();
        env.push(("REDIS_URL", redis.as_str()));
        env.push((
            "LATTICE_MASTER_KEY",
            "replicas-share-this-master-key-passphrase",
        ));
        let a = TestServer::start_on(&url, guard, &env).await;
        let b = TestServer::start_on(&url, None, &env).await;
        let admin = a.admin_token(&["*"]).await;
        let dir = tempfile::tempdir().unwrap();
        let port = upstream(Arc::new(AtomicUsize::new(0))).await;
        let config = format!("proxy_ports = [{port}]\n");
        let (_agent, id) = connected_agent(&a, &admin, dir.path(), &config).await;
        // The agent's stream is held by replica A; ask replica B.
        let resp = b
            .http
            .get(b.url(&format!("/api/v1/nodes/{id}/proxy/{port}/echo?via=b")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{backend:?}");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["uri"], "/echo?via=b");
        // A port forward entering replica B is carried by A too (HTTP/1.1 spoken by
        // hand over the forwarded connection; the write side stays open, as the
        // node's HTTP server drops a connection whose client half-closes).
        let resp = port_forward(&b, &h1_client(&b), &admin, &id, port, true).await;
        assert_eq!(resp.status(), 101, "{backend:?}");
        let mut io = resp.upgrade().await.unwrap();
        let raw = b"GET /echo?via=forward HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut io, raw)
            .await
            .unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut io, &mut back),
        )
        .await
        .expect("the node's server closes after its answer")
        .unwrap();
        let text = String::from_utf8_lossy(&back);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("/echo?via=forward"), "{text}");
        b.stop().await;
        a.stop().await;
    }
}

/// A local TCP service that is not HTTP: answers each byte upper-cased, then `BYE\n`
/// once its client closes its side, and closes. A client that starts with `QUIT`
/// is hung up on at once. Connections that ended are counted in `closed`.
async fn shouting_service(closed: Arc<AtomicUsize>) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => {
                            let _ = tcp.write_all(b"BYE\n").await;
                            break;
                        }
                        Ok(_) if buf.starts_with(b"QUIT") => break,
                        Ok(n) => {
                            buf[..n].make_ascii_uppercase();
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    port
}

/// An HTTP/1.1-only client trusting `s`'s CA (upgrades do not exist in HTTP/2).
fn h1_client(s: &TestServer) -> reqwest::Client {
    let ca = std::fs::read(s.data_dir.path.join("tls/ca.pem")).unwrap();
    reqwest::Client::builder()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

/// Ask `s` for a port forward to `port` on `node` (with the upgrade headers when
/// `upgrade`).
async fn port_forward(
    s: &TestServer,
    h1: &reqwest::Client,
    token: &str,
    node: &str,
    port: u16,
    upgrade: bool,
) -> reqwest::Response {
    let mut req = h1
        .get(s.url(&format!("/api/v1/nodes/{node}/portforward/{port}")))
        .bearer_auth(token);
    if upgrade {
        req = req
            .header("connection", "upgrade")
            .header("upgrade", "connect-tcp");
    }
    req.send().await.unwrap()
}

/// Whether `done` holds within 15 s (checked every 50 ms).
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..300 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Whether `counter` grows past `before` within 15 s.
async fn grew(counter: &AtomicUsize, before: usize) -> bool {
    eventually(|| counter.load(Ordering::SeqCst) > before).await
}

/// Write `out` and close the write side, reading everything that comes back until
/// the other side closes.
async fn exchange<S>(io: S, out: Vec<u8>) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut rd, mut wr) = tokio::io::split(io);
    let writer = tokio::spawn(async move {
        wr.write_all(&out).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut back))
        .await
        .expect("the forward ends")
        .unwrap();
    drop(writer.await.unwrap());
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_forward_carries_tcp_both_ways_and_lattice_proxy_uses_it() {
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let s = TestServer::start_on(&url, guard, FAST).await;
        let admin = s.admin_token(&["*"]).await;
        let dir = tempfile::tempdir().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let port = shouting_service(closed.clone()).await;
        let config = format!("proxy_ports = [{port}]\n");
        let (_agent, id) = connected_agent(&s, &admin, dir.path(), &config).await;
        let ca = s.data_dir.path.join("tls/ca.pem");
        let h1 = h1_client(&s);

        // Bytes both ways, more than a stream's window each way, and a half-close:
        // the client's end reaches the service, whose last words still come back.
        let resp = port_forward(&s, &h1, &admin, &id, port, true).await;
        assert_eq!(resp.status(), 101, "{backend:?}");
        assert_eq!(resp.headers()["upgrade"], "connect-tcp");
        let payload: Vec<u8> = (0..1024 * 1024).map(|i| b"abcdefgh\n"[i % 9]).collect();
        let back = exchange(resp.upgrade().await.unwrap(), payload.clone()).await;
        let mut want = payload.to_ascii_uppercase();
        want.extend_from_slice(b"BYE\n");
        assert_eq!(back.len(), want.len(), "{backend:?}");
        assert!(
            back == want,
            "{backend:?}: the bytes came back whole and in order"
        );

        // The client going away closes the connection on the node.
        let before = closed.load(Ordering::SeqCst);
        let resp = port_forward(&s, &h1, &admin, &id, port, true).await;
        assert_eq!(resp.status(), 101);
        let mut up = resp.upgrade().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut up, b"x")
            .await
            .unwrap();
        let mut one = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut up, &mut one)
            .await
            .unwrap();
        assert_eq!(&one, b"X");
        drop(up);
        assert!(
            grew(&closed, before).await,
            "{backend:?}: the node-side connection closed"
        );

        // Refusals, each before any byte is carried: no upgrade asked, a port the
        // agent does not allow, a caller without nodes:proxy, a closed port.
        let resp = port_forward(&s, &h1, &admin, &id, port, false).await;
        assert_eq!(resp.status(), 400);
        assert!(resp.text().await.unwrap().contains("connect-tcp"));
        let resp = port_forward(&s, &h1, &admin, &id, 22, true).await;
        assert_eq!(resp.status(), 403);
        let reader = s.admin_token(&["nodes:read"]).await;
        let resp = port_forward(&s, &h1, &reader, &id, port, true).await;
        assert_eq!(resp.status(), 403);
        assert!(resp.text().await.unwrap().contains("nodes:proxy"));
        let resp = port_forward(&s, &h1, "lat_not-a-token", &id, port, true).await;
        assert_eq!(resp.status(), 401);
        // A policy that lets a user reach the port over HTTP does not open it for a
        // port forward (protocol "tcp"); one for tcp does.
        let carol_name = format!("carol-{backend:?}").to_lowercase();
        let carol = s.user_token(&carol_name, &["nodes:proxy"]).await;
        let http_only = format!(
            "permit(principal == Lattice::User::\"{carol_name}\", action == Lattice::Action::\"AccessNode\", resource) when {{ context.port == {port} && context.protocol == \"http\" }};"
        );
        let (status, body) = s
            .call(
                "PUT",
                "/api/v1/policies/carol",
                &admin,
                Some(json!({"policies": http_only})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let resp = port_forward(&s, &h1, &carol, &id, port, true).await;
        assert_eq!(resp.status(), 403);
        assert!(
            resp.text()
                .await
                .unwrap()
                .contains("policy denies AccessNode")
        );
        let tcp = http_only.replace("\"http\"", "\"tcp\"");
        let (status, body) = s
            .call(
                "PUT",
                "/api/v1/policies/carol",
                &admin,
                Some(json!({"policies": tcp})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let resp = port_forward(&s, &h1, &carol, &id, port, true).await;
        assert_eq!(
            resp.status(),
            101,
            "{backend:?}: the tcp permit opens the forward"
        );
        drop(resp);

        // Each forward opened (or refused by the agent's ports) is audited.
        let audit = wait_for(
            &s,
            &admin,
            "/api/v1/audit?limit=1000",
            "port forwards are audited",
            |b| {
                b["entries"].as_array().is_some_and(|a| {
                    a.iter()
                        .filter(|e| e["action"] == "node.port_forward")
                        .count()
                        >= 3
                })
            },
        )
        .await;
        let forwards: Vec<_> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "node.port_forward")
            .map(|e| (e["outcome"].clone(), e["detail"]["port"].clone()))
            .collect();
        assert!(
            forwards.contains(&(json!("success"), json!(port))),
            "{forwards:?}"
        );
        assert!(
            forwards.contains(&(json!("failure"), json!(22))),
            "{forwards:?}"
        );

        // `lattice proxy NODE PORT`: a local port whose connections are forwarded.
        let cli = bin("lattice");
        let config = dir.path().join("cli.toml");
        let refused = Command::new(&cli)
            .args(["--server", &s.base, "--ca-file"])
            .arg(&ca)
            .args(["proxy", &id, "22"])
            .env("LATTICE_CONFIG", &config)
            .env("LATTICE_TOKEN", &admin)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("does not allow port 22"), "{err}");
        let mut proxy = Command::new(&cli)
            .args(["--server", &s.base, "--ca-file"])
            .arg(&ca)
            .args(["proxy", &id, &port.to_string(), "--listen", "127.0.0.1:0"])
            .env("LATTICE_CONFIG", &config)
            .env("LATTICE_TOKEN", &admin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = proxy.stderr.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let local = line
            .strip_prefix("forwarding ")
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("lattice proxy said: {line}"))
            .to_owned();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(&local).await.unwrap();
            let back = exchange(tcp, b"through the cli".to_vec()).await;
            assert_eq!(back, b"THROUGH THE CLIBYE\n", "{backend:?}");
        }
        // A local connection that breaks (a reset, not a close) is aborted on the
        // node too: the service's connection ends without waiting for more.
        let before = closed.load(Ordering::SeqCst);
        let mut tcp = tokio::net::TcpStream::connect(&local).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"x")
            .await
            .unwrap();
        let mut one = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut one)
            .await
            .unwrap();
        tcp.set_zero_linger().unwrap();
        drop(tcp);
        assert!(
            grew(&closed, before).await,
            "{backend:?}: the node-side connection was aborted"
        );
        // A service that hangs up mid-upload ends the forward: the client's read
        // ends (cleanly or with a reset) instead of waiting on.
        let tcp = tokio::net::TcpStream::connect(&local).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let writer = tokio::spawn(async move {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut wr, b"QUIT").await;
            let junk = vec![b'j'; 64 * 1024];
            for _ in 0..64 {
                if tokio::io::AsyncWriteExt::write_all(&mut wr, &junk)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            wr
        });
        let mut back = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut back),
        )
        .await;
        assert!(
            read.is_ok(),
            "{backend:?}: the forward ended with its service"
        );
        writer.abort();
        let _ = proxy.kill();
        let _ = proxy.wait();
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_streams_to_a_node_are_limited() {
    // The limit is per node and the same on every backend: one backend shows it.
    let backend = testing::backends()[0];
    let (url, guard) = testing::fresh_url(backend).await;
    let mut env = FAST.to_vec();
    env.push(("LATTICE_TUNNEL__MAX_PROXY_STREAMS", "2"));
    let s = TestServer::start_on(&url, guard, &env).await;
    let admin = s.admin_token(&["*"]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = shouting_service(Arc::new(AtomicUsize::new(0))).await;
    let config = format!("proxy_ports = [{port}]\n");
    let (_agent, id) = connected_agent(&s, &admin, dir.path(), &config).await;
    let h1 = h1_client(&s);
    let mut open = Vec::new();
    for _ in 0..2 {
        let resp = port_forward(&s, &h1, &admin, &id, port, true).await;
        assert_eq!(resp.status(), 101);
        open.push(resp.upgrade().await.unwrap());
    }
    // A third stream to the node, a forward or a proxied request, waits its turn.
    let resp = port_forward(&s, &h1, &admin, &id, port, true).await;
    assert_eq!(resp.status(), 429);
    assert!(
        resp.text().await.unwrap().contains("max_proxy_streams"),
        "the answer names the setting"
    );
    let (status, _) = s
        .call(
            "GET",
            &format!("/api/v1/nodes/{id}/proxy/{port}/"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 429);
    // When one ends, there is room again.
    drop(open.pop());
    let mut status = 0;
    for _ in 0..100 {
        let resp = port_forward(&s, &h1, &admin, &id, port, true).await;
        status = resp.status().as_u16();
        if status == 101 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 101);
    s.stop().await;
}

/// The server binary on a fixed port and data dir (so it can be restarted in place).
fn spawn_server(port: u16, data: &Path, db_url: &str) -> common::process::Proc {
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("DATABASE_URL", db_url),
        ("LATTICE_MIGRATE_ON_START", "true"),
        ("LATTICE_BOOTSTRAP_ADMIN_PASSWORD", common::ADMIN_PASSWORD),
        ("LATTICE_IDENTITY__ARGON2_MEMORY_KIB", "64"),
        ("LATTICE_IDENTITY__ARGON2_ITERATIONS", "1"),
        ("LATTICE_TUNNEL__HEARTBEAT_INTERVAL_S", "1"),
        ("LATTICE_TUNNEL__METRICS_INTERVAL_S", "1"),
        ("LATTICE_TASKS__LEASE_S", "2"),
    ];
    let (proc, _) = common::process::spawn(
        &[
            "--listen",
            &listen,
            "--identity-listen",
            "127.0.0.1:0",
            "--storage-listen",
            "127.0.0.1:0",
            "--tasks-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--policy-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--tls",
            "self-signed",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &env,
        "Lattice is listening on ",
    );
    proc
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnect_after_restart_and_a_stalled_run_is_rescued_and_fenced() {
    common::install_crypto();
    for backend in testing::backends() {
        let (url, _guard) = testing::fresh_url(backend).await;
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = spawn_server(port, data.path(), &url);
        let ca = std::fs::read(data.path().join("tls/ca.pem")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let s = TestServer::external(&format!("https://localhost:{port}"), http);
        let admin = s.admin_token(&["*"]).await;
        let dir = tempfile::tempdir().unwrap();
        let out = enroll(&join_token(&s, &admin).await, dir.path()).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let agent = run_agent(
            dir.path(),
            "capabilities = [\"exec\"]\nexec_allow = [\"/bin/sleep\"]\n",
        );
        let nodes = wait_for(&s, &admin, "/api/v1/nodes", "agent connects", |b| {
            b["nodes"][0]["status"] == "connected"
        })
        .await;
        let id = nodes["nodes"][0]["id"].as_str().unwrap().to_owned();
        let first = nodes["nodes"][0]["connected_since_ms"].as_i64().unwrap();
        let (status, _) = set_capabilities(&s, &admin, &id, json!(["exec"])).await;
        assert_eq!(status, 200);

        // The server restarts; the agent comes back by itself.
        drop(server);
        let _server = spawn_server(port, data.path(), &url);
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/nodes/{id}"),
            "agent reconnects after the restart",
            |b| b["status"] == "connected" && b["connected_since_ms"].as_i64().unwrap_or(0) > first,
        )
        .await;

        // A run stalls (the agent is frozen): its lease runs out and the task is
        // rescued; when the agent thaws, its late result is refused by the fence and
        // the second run's result is the one recorded.
        let (status, t) = s
            .call(
                "POST",
                "/api/v1/tasks",
                &admin,
                Some(json!({"node": id, "kind": "exec", "payload": {"argv": ["/bin/sleep", "2"]}})),
            )
            .await;
        assert_eq!(status, 201, "{t}");
        let task = t["id"].as_str().unwrap().to_owned();
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/tasks/{task}"),
            "task starts",
            |t| t["state"] == "running",
        )
        .await;
        signal(agent.child.id(), "-STOP");
        wait_for(
            &s,
            &admin,
            &format!("/api/v1/tasks/{task}"),
            "lease expires and the task is rescued",
            |t| t["error_code"] == "lease_expired",
        )
        .await;
        signal(agent.child.id(), "-CONT");
        let done = wait_for(
            &s,
            &admin,
            &format!("/api/v1/tasks/{task}"),
            "second run succeeds",
            |t| t["state"] == "succeeded",
        )
        .await;
        assert_eq!(
            (done["epoch"].as_i64(), done["attempts"].as_i64()),
            (Some(2), Some(2)),
            "{backend:?}: {done}"
        );
        let audit =
            wait_for(
                &s,
                &admin,
                "/api/v1/audit?limit=1000",
                "the late result is audited",
                |b| {
                    b["entries"].as_array().unwrap().iter().any(|e| {
                        e["action"] == "task.result_rejected" && e["target"] == task.as_str()
                    })
                },
            )
            .await;
        let rejected = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "task.result_rejected")
            .unwrap()
            .clone();
        assert_eq!(rejected["detail"]["epoch"], 1, "{rejected}");
        drop(agent);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_reaches_a_remote_tunnel_over_the_network() {
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let mut env = FAST.to_vec();
        env.push((
            "LATTICE_MASTER_KEY",
            "split-processes-share-this-master-key",
        ));
        let core = TestServer::start_on(&url, guard, &env).await;
        let r = core.running();
        let (identity, tasks, tunnel) = (
            format!("http://{}", r.identity_addr.unwrap()),
            format!("http://{}", r.tasks_addr.unwrap()),
            format!("http://{}", r.tunnel_addr.unwrap()),
        );
        // A gateway alone, as in a split deployment: agent streams and proxied
        // requests reach the tunnel service over internal gRPC.
        let mut edge_env = env.clone();
        edge_env.extend([
            ("LATTICE_SERVICES", "gateway"),
            ("LATTICE_GATEWAY__IDENTITY_URL", identity.as_str()),
            ("LATTICE_TASKS__URL", tasks.as_str()),
            ("LATTICE_TUNNEL__URL", tunnel.as_str()),
        ]);
        let edge = TestServer::start_on(&url, None, &edge_env).await;
        let admin = edge.admin_token(&["*"]).await;
        let dir = tempfile::tempdir().unwrap();
        let port = upstream(Arc::new(AtomicUsize::new(0))).await;
        let config = format!("proxy_ports = [{port}]\n");
        let (_agent, id) = connected_agent(&edge, &admin, dir.path(), &config).await;
        let resp = edge
            .http
            .post(edge.url(&format!("/api/v1/nodes/{id}/proxy/{port}/echo?via=edge")))
            .bearer_auth(&admin)
            .body("over the network")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{backend:?}");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(
            (echo["uri"].as_str(), echo["body"].as_str()),
            (Some("/echo?via=edge"), Some("over the network"))
        );
        edge.stop().await;
        core.stop().await;
    }
}
