//! Secret KV buckets end to end, with the real policy service deciding: values
//! sealed at rest and never cached, every read an `AccessSecret` decision (default
//! deny) for an operator through the API and for a storage token through a host
//! binding, refusals that name the action and the path, and every decision in the
//! audit chain with the policies that made it.

mod common;

use common::{TestServer, wait_for};
use lattice_core::db::testing;
use serde_json::{Value, json};

/// Every value in Redis (the shared cache), as text.
async fn redis_values(url: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut values = Vec::new();
    for key in keys {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        if let Some(v) = v {
            values.push(String::from_utf8_lossy(&v).into_owned());
        }
    }
    values
}

async fn storage_token(s: &TestServer, admin: &str, name: &str, bucket: &str) -> String {
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/storage-tokens",
            admin,
            Some(json!({"name": name, "surface": "kv", "access": "read", "buckets": [bucket]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// GET `key` through the host binding `host` with storage token `token`.
async fn host_read(s: &TestServer, host: &str, token: &str, key: &str) -> (u16, Value) {
    common::json(
        s.host_get(host, &format!("/{key}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_reads_are_policy_decisions_sealed_and_never_cached() {
    let redis = std::env::var("LATTICE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty());
    for backend in testing::backends() {
        let extra: Vec<(&str, &str)> = redis.iter().map(|u| ("REDIS_URL", u.as_str())).collect();
        let (url, guard) = testing::fresh_url(backend).await;
        let s = TestServer::start_on(&url, guard, &extra).await;
        let admin = s.admin_token(&["*"]).await;
        // Each bucket's value, unique to this run.
        let value_of = |bucket: &str| format!("correct-horse-{backend:?}-{bucket}");
        let secret = value_of("vault");
        for (path, body) in [
            (
                "/api/v1/buckets",
                json!({"name": "vault", "surface": "kv", "secret": true}),
            ),
            ("/api/v1/buckets", json!({"name": "plain", "surface": "kv"})),
            (
                "/api/v1/bindings",
                json!({"host": "vault.secrets.test", "bucket": "vault"}),
            ),
            (
                "/api/v1/bindings",
                json!({"host": "plain.secrets.test", "bucket": "plain"}),
            ),
        ] {
            let (status, b) = s.call("POST", path, &admin, Some(body)).await;
            assert_eq!(status, 201, "{backend:?} POST {path}: {b}");
            if b["name"] == "vault" {
                assert_eq!(b["secret"], true, "{b}");
            }
        }
        // Only kv buckets hold secrets.
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &admin,
                Some(json!({"name": "site", "surface": "static", "secret": true})),
            )
            .await;
        assert_eq!(status, 400, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("secret"),
            "{b}"
        );
        for bucket in ["vault", "plain"] {
            let (status, b) = s
                .call(
                    "PUT",
                    &format!("/api/v1/kv/{bucket}/db"),
                    &admin,
                    Some(json!({"value": {"password": value_of(bucket)}})),
                )
                .await;
            assert_eq!(status, 200, "{b}");
        }

        // The admin reads it: the seeded policy permits the admins group everything.
        let (status, b) = s.call("GET", "/api/v1/kv/vault/db", &admin, None).await;
        assert_eq!(
            (status, &b["value"]["password"]),
            (200, &json!(secret)),
            "{b}"
        );
        // Listings withhold secret values.
        let (status, b) = s
            .call("GET", "/api/v1/kv/vault?values=true", &admin, None)
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["entries"][0]["withheld"], true, "{b}");
        assert!(b["entries"][0].get("value").is_none(), "{b}");

        // An operator with kv:read but no policy: refused, naming action and path.
        let reader = s.user_token("carol", &["kv:read"]).await;
        let (status, b) = s.call("GET", "/api/v1/kv/vault/db", &reader, None).await;
        assert_eq!(status, 403, "{b}");
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("AccessSecret") && message.contains("vault/db"),
            "{message}"
        );
        let (status, _) = s.call("GET", "/api/v1/kv/plain/db", &reader, None).await;
        assert_eq!(status, 200, "a bucket without secrets needs only the scope");

        // A storage token: default deny through the host binding, then a permit for
        // that token and that path, and a forbid that wins over it.
        let app = storage_token(&s, &admin, "app", "vault").await;
        let (status, b) = host_read(&s, "vault.secrets.test", &app, "db").await;
        assert_eq!(status, 403, "{backend:?}: default deny: {b}");
        assert!(!b.to_string().contains(&secret));
        let permit = "permit(principal == Lattice::Service::\"token:app\", action == Lattice::Action::\"AccessSecret\", resource)\nwhen { resource.bucket == \"vault\" && resource.key == \"db\" };";
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/policies",
                &admin,
                Some(json!({"name": "app-reads-db", "policies": permit})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let (status, b) = host_read(&s, "vault.secrets.test", &app, "db").await;
        assert_eq!((status, &b["password"]), (200, &json!(secret)), "{b}");
        let (status, _) = host_read(&s, "vault.secrets.test", &app, "other").await;
        assert_eq!(status, 403, "the permit names one key");
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/policies",
                &admin,
                Some(json!({"name": "app-out", "policies": "forbid(principal == Lattice::Service::\"token:app\", action, resource);"})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let (status, b) = host_read(&s, "vault.secrets.test", &app, "db").await;
        assert_eq!(status, 403, "{backend:?}: the forbid wins: {b}");

        // Every decision is audited with the policies that made it.
        let audit = wait_for(
            &s,
            &admin,
            "/api/v1/audit?limit=1000",
            "secret reads are audited",
            |b| {
                let entries = b["entries"].as_array().cloned().unwrap_or_default();
                let decided = |outcome: &str, policies: Value| {
                    entries.iter().any(|e| {
                        e["action"] == "policy.decide.AccessSecret"
                            && e["outcome"] == outcome
                            && e["detail"]["policies"] == policies
                    })
                };
                decided("success", json!(["app-reads-db"]))
                    && decided("success", json!(["admins-allow-all"]))
                    && decided("failure", json!(["app-out"]))
                    && decided("failure", json!([]))
            },
        )
        .await;
        assert!(
            !audit.to_string().contains(&secret),
            "values are never audited"
        );

        // At rest: sealed. Nothing of the value in the storage database (the plain
        // bucket's copy proves the check would see it).
        let db = lattice_core::db::Db::connect(&url, 1).await.unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT b.name, k.value FROM storage_kv k JOIN storage_buckets b ON b.id = k.bucket_id",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        db.close().await;
        for (bucket, value) in &rows {
            match bucket.as_str() {
                "vault" => assert!(
                    value.starts_with("sealed:") && !value.contains(&secret),
                    "{value}"
                ),
                other => assert!(value.contains(&value_of(other)), "{value}"),
            }
        }

        // Never cached: the plain value read through its binding is in Redis, the
        // secret one never is.
        if let Some(redis) = &redis {
            let plain = storage_token(&s, &admin, "plain-reader", "plain").await;
            let (status, _) = host_read(&s, "plain.secrets.test", &plain, "db").await;
            assert_eq!(status, 200);
            let values = redis_values(redis).await;
            assert!(
                values.iter().any(|v| v.contains(&value_of("plain"))),
                "the plain bucket's value is cached, so this check sees values"
            );
            assert!(
                !values.iter().any(|v| v.contains(&secret)),
                "a secret value is never in Redis"
            );
        }
        s.stop().await;
    }
}
