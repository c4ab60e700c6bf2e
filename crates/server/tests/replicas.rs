//! Two replicas of one deployment (same database, same secrets) sharing Redis: a
//! revocation on one evicts the credential cached by the other at once.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, insert_node, json};
use lattice_core::db::testing;

fn redis_url() -> Option<String> {
    match std::env::var("LATTICE_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but LATTICE_TEST_REDIS_URL is not set"
            );
            None
        }
    }
}

#[tokio::test]
async fn revocation_reaches_every_replica_through_redis() {
    let Some(redis) = redis_url() else { return };
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let shared = [
            ("REDIS_URL", redis.as_str()),
            ("JWT_SECRET", "replicas-share-this-internal-secret-value"),
            (
                "LATTICE_MASTER_KEY",
                "replicas-share-this-master-key-passphrase",
            ),
            // Long enough that only an event (not expiry) can explain a quick eviction.
            ("LATTICE_GATEWAY__AUTH_CACHE_TTL_S", "300"),
        ];
        let a = TestServer::start_on(&url, None, &shared).await;
        let b = TestServer::start_on(&url, guard, &shared).await;
        let token = a.admin_token(&["*"]).await;
        // B verifies (and caches) the token.
        let me: serde_json::Value = b
            .http
            .get(b.url("/api/v1/auth/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = me["credential_id"].as_str().unwrap().to_owned();
        assert_eq!(
            b.http
                .get(b.url("/api/v1/auth/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        // A revokes it.
        let status = a
            .http
            .delete(a.url(&format!("/api/v1/tokens/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let status = b
                .http
                .get(b.url("/api/v1/auth/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status();
            if status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{backend:?}: replica B still accepts a revoked token"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn storage_changes_reach_every_replica_through_redis() {
    let Some(redis) = redis_url() else { return };
    let (url, guard) = testing::fresh_url(testing::backends().pop().unwrap()).await;
    let shared = [
        ("REDIS_URL", redis.as_str()),
        ("JWT_SECRET", "replicas-share-this-internal-secret-value"),
        (
            "LATTICE_MASTER_KEY",
            "replicas-share-this-master-key-passphrase",
        ),
    ];
    let a = TestServer::start_on(&url, None, &shared).await;
    let b = TestServer::start_on(&url, guard, &shared).await;
    let token = a.admin_token(&["*"]).await;
    let host = format!("kv-{}.example.com", uuid_like());
    // B looks the host up before it is bound (and remembers "not bound").
    assert_eq!(b.host_get(&host, "/k").send().await.unwrap().status(), 404);
    assert_eq!(
        a.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(serde_json::json!({"name": "conf", "surface": "kv"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        a.call(
            "POST",
            "/api/v1/bindings",
            &token,
            Some(serde_json::json!({"host": host, "bucket": "conf"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        a.call(
            "PUT",
            "/api/v1/kv/conf/k",
            &token,
            Some(serde_json::json!({"value": 1}))
        )
        .await
        .0,
        200
    );
    let (_, st) = a
        .call(
            "POST",
            "/api/v1/storage-tokens",
            &token,
            Some(serde_json::json!({"surface": "kv", "access": "read", "buckets": ["conf"]})),
        )
        .await;
    let st = st["token"].as_str().unwrap().to_owned();
    let read = |s: &TestServer| s.host_get(&host, "/k").bearer_auth(&st).send();
    // The binding reaches B by event, not by waiting out its cache.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let resp = read(&b).await.unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.text().await.unwrap(), "1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica B never saw the new binding"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A write on A is read on B at once (the shared cache entry was dropped).
    assert_eq!(
        a.call(
            "PUT",
            "/api/v1/kv/conf/k",
            &token,
            Some(serde_json::json!({"value": 2}))
        )
        .await
        .0,
        200
    );
    assert_eq!(read(&b).await.unwrap().text().await.unwrap(), "2");
    a.stop().await;
    b.stop().await;
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Redis is an accelerator: when it dies, reads and writes go on from the database.
#[tokio::test]
async fn losing_redis_costs_only_speed() {
    if redis_url().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test.sh installs it)");
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "private redis-server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = TestServer::start_with(testing::backends()[0], &[("REDIS_URL", url.as_str())]).await;
    let token = s.admin_token(&["*"]).await;
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(serde_json::json!({"name": "conf", "surface": "kv"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/bindings",
            &token,
            Some(serde_json::json!({"host": "kv.down.test", "bucket": "conf"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "PUT",
            "/api/v1/kv/conf/k",
            &token,
            Some(serde_json::json!({"value": "before"}))
        )
        .await
        .0,
        200
    );
    let (_, st) = s
        .call(
            "POST",
            "/api/v1/storage-tokens",
            &token,
            Some(serde_json::json!({"surface": "kv", "access": "write", "buckets": ["conf"]})),
        )
        .await;
    let st = st["token"].as_str().unwrap().to_owned();
    assert_eq!(
        s.host_get("kv.down.test", "/k")
            .bearer_auth(&st)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let _ = redis.kill();
    let _ = redis.wait();
    // Reads, writes and logins keep working.
    assert_eq!(
        s.call(
            "PUT",
            "/api/v1/kv/conf/k",
            &token,
            Some(serde_json::json!({"value": "after"}))
        )
        .await
        .0,
        200
    );
    let resp = s
        .host_get("kv.down.test", "/k")
        .bearer_auth(&st)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "\"after\"");
    assert_eq!(s.call("GET", "/api/v1/auth/me", &token, None).await.0, 200);
    s.login("admin", common::ADMIN_PASSWORD).await;
    let (status, ready) = json(s.http.get(s.url("/ready")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{ready}");
    s.stop().await;
}

/// A policy written on one replica decides on the other within a second: the change
/// is announced through Redis and the other replica rebuilds its decisions (its
/// engine for the org was built and cached by a refusal just before).
#[tokio::test]
async fn policy_changes_reach_every_replica_within_a_second() {
    let Some(redis) = redis_url() else { return };
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let shared = [
            ("REDIS_URL", redis.as_str()),
            ("JWT_SECRET", "replicas-share-this-internal-secret-value"),
            (
                "LATTICE_MASTER_KEY",
                "replicas-share-this-master-key-passphrase",
            ),
        ];
        let a = TestServer::start_on(&url, None, &shared).await;
        let b = TestServer::start_on(&url, guard, &shared).await;
        let admin = a.admin_token(&["*"]).await;
        let (_, me) = a.call("GET", "/api/v1/auth/me", &admin, None).await;
        let node = "0190c3f0-0000-7000-8000-0000000000b7";
        insert_node(&url, node, me["org_id"].as_str().unwrap()).await;
        let dana = a.user_token("dana", &["tasks:write"]).await;
        let task = serde_json::json!({"node": node, "kind": "facts.refresh"});
        let (status, body) = b
            .call("POST", "/api/v1/tasks", &dana, Some(task.clone()))
            .await;
        assert_eq!(status, 403, "{backend:?}: default deny on B: {body}");

        let (status, body) = a
            .call(
                "PUT",
                "/api/v1/policies/dana-facts",
                &admin,
                Some(serde_json::json!({"policies": "permit(principal == Lattice::User::\"dana\", action == Lattice::Action::\"RunTask\", resource) when { context.kind == \"facts.refresh\" };"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let changed = Instant::now();
        loop {
            let (status, body) = b
                .call("POST", "/api/v1/tasks", &dana, Some(task.clone()))
                .await;
            if status == 201 {
                break;
            }
            assert_eq!(status, 403, "{body}");
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "{backend:?}: replica B still refuses a second after the permit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.stop().await;
        b.stop().await;
    }
}
