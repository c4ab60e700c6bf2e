//! Two replicas of one deployment (same database, same secrets) sharing Redis: a
//! revocation on one evicts the credential cached by the other at once.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
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
