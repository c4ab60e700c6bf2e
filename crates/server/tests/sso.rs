//! Single sign-on providers against a real OpenID provider (panva's
//! `oidc-provider`): saved only when the provider's discovery document is fetched
//! and valid for the issuer, with the redirect URL to register; the client secret
//! sealed at rest and never returned; scopes checked on every route.

mod common;

use common::TestServer;
use common::oidc::{OpenIdProvider, available};
use lattice_core::db::Backend;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_checked_against_their_discovery_document() {
    if !available() {
        eprintln!(
            "skipped here: node or the oidc-provider packages are missing (CI requires them)"
        );
        return;
    }
    let s = TestServer::start(Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    let redirect = s.url("/api/v1/auth/sso/corp/callback");
    let op = OpenIdProvider::start(
        &json!([{"client_id": "lattice", "client_secret": "a-client-secret-of-some-length",
            "redirect_uris": [redirect]}]),
        &json!({"alice": {"email": "alice@example.com", "email_verified": true}}),
    );
    let body = |issuer: &str| {
        json!({"name": "corp", "display_name": "Corp SSO", "issuer": issuer,
            "client_id": "lattice", "client_secret": "a-client-secret-of-some-length"})
    };

    // A wrong issuer: 422 saying what was fetched and what failed; nothing saved.
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(body(&format!("{}/wrong", op.issuer))),
        )
        .await;
    assert_eq!(status, 422, "{b}");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "fetched {}/wrong/.well-known/openid-configuration",
            op.issuer
        )),
        "{b}"
    );
    let other_name = op.issuer.replace("127.0.0.1", "localhost");
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(body(&other_name)),
        )
        .await;
    assert_eq!(status, 422, "the document names another issuer: {b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("issuer"),
        "{b}"
    );
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(body("ftp://example.com")),
        )
        .await;
    assert_eq!(status, 400, "{b}");

    // The right one: saved, with the redirect URL to register; never the secret.
    let reader = s.user_token("reader", &["users:read"]).await;
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &reader,
            Some(body(&op.issuer)),
        )
        .await;
    assert_eq!(status, 403, "{b}");
    let (status, p) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(body(&op.issuer)),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["redirect_url"], json!(redirect), "{p}");
    assert_eq!(p["scopes"], json!(["email"]));
    assert_eq!(p["username_claim"], "email");
    assert_eq!(p["require_verified_email"], true);
    assert!(p.get("client_secret").is_none(), "{p}");
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(body(&op.issuer)),
        )
        .await;
    assert_eq!(status, 409, "{b}");
    let (status, list) = s.call("GET", "/api/v1/sso/providers", &reader, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["providers"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("a-client-secret"), "{list}");

    // Sealed at rest.
    let db = lattice_core::db::Db::connect(&s.database_url, 1)
        .await
        .unwrap();
    let (sealed,): (String,) =
        sqlx::query_as("SELECT client_secret_sealed FROM identity_sso_providers")
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert!(!sealed.contains("a-client-secret"), "{sealed}");
    db.close().await;

    let (status, _) = s
        .call("DELETE", "/api/v1/sso/providers/corp", &reader, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call("DELETE", "/api/v1/sso/providers/corp", &admin, None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .call("GET", "/api/v1/sso/providers/corp", &admin, None)
        .await;
    assert_eq!(status, 404);
    s.stop().await;
}
