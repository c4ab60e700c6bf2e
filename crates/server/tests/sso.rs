//! Single sign-on providers against a real OpenID provider (panva's
//! `oidc-provider`): saved only when the provider's discovery document is fetched
//! and valid for the issuer, with the redirect URL to register; the client secret
//! sealed at rest and never returned; scopes checked on every route.

mod common;

use common::TestServer;
use common::oidc::{Browser, OpenIdProvider, available};
use lattice_core::db::{Backend, testing};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_checked_against_their_discovery_document() {
    if !available() {
        return;
    }
    let s = TestServer::start(Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    let redirect = s.url("/api/v1/auth/sso/corp/callback");
    let op = OpenIdProvider::start(
        &client(&redirect),
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

/// Logging in through the provider: the first login binds the provider's subject
/// to the user whose username is the verified email, later ones match on the
/// subject; an unverified email, an unknown user, a wrong state and a replayed
/// callback are refused (and audited); a user with TOTP gets the TOTP step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_log_in_through_the_provider() {
    if !available() {
        return;
    }
    for backend in testing::backends() {
        users_log_in_on(backend).await;
    }
}

async fn users_log_in_on(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token(&["*"]).await;
    let callback = s.url("/api/v1/auth/sso/corp/callback");
    let op = OpenIdProvider::start(
        &client(&callback),
        &json!({
            "alice": {"email": "alice@example.com", "email_verified": true},
            "bob": {"email": "bob@example.com", "email_verified": false},
            "carol": {"email": "carol@example.com", "email_verified": true},
            "dave": {"email": "dave@example.com", "email_verified": true}
        }),
    );
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(json!({"name": "corp", "issuer": op.issuer,
            "client_id": "lattice", "client_secret": "a-client-secret-of-some-length"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    for user in ["alice@example.com", "bob@example.com", "dave@example.com"] {
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/users",
                &admin,
                Some(json!({"username": user,
                "password": "user-password-1234", "scopes": ["nodes:read"]})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
    }
    let ca = s.data_dir.path.join("tls/ca.pem");
    let start = s.url("/api/v1/auth/sso/corp/start?return_to=/ui/nodes");

    // First login: bound, logged in, sent to return_to.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "alice").await;
    assert!(
        back.contains("code=") && back.contains(&format!("iss={}", urlencode(&op.issuer))),
        "{back}"
    );
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(s.url("/ui/nodes").as_str()));
    let me = browser
        .send(reqwest::Method::GET, &s.url("/api/v1/auth/me"), None)
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(me.body.contains("\"alice@example.com\""), "{}", me.body);
    // The same callback again: refused (the login is single use).
    let again = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(again.status, 403, "{}", again.body);

    // Second login: matched by subject (no second binding).
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "alice").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 303, "{}", page.body);

    // A callback carried to another browser (no state cookie): refused.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "alice").await;
    let mut other = Browser::new(&ca);
    other.set_cookie(&back, "lattice_sso_state", "not-the-state");
    let page = other.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("state"), "{}", page.body);

    // Unverified email, unknown user: refused, saying why.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "bob").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("verified"), "{}", page.body);
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "carol").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("no user"), "{}", page.body);

    // SSO, then local TOTP.
    let (seed, now) = s
        .enable_totp("dave@example.com", "user-password-1234")
        .await;
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "dave").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    // Back to the dashboard's sign-in page, the challenge in the fragment.
    assert_eq!(page.status, 303, "{}", page.body);
    let location = page.location.clone().unwrap();
    let fragment = location
        .strip_prefix(&s.url("/ui/login#mfa="))
        .unwrap_or_else(|| panic!("{location}"));
    let (mfa_token, next) = fragment.split_once("&next=").unwrap();
    assert_eq!(next, "/ui/nodes");
    let step = json!({"mfa_token": mfa_token});
    assert!(
        !page
            .set_cookies
            .iter()
            .any(|c| c.starts_with("lattice_session=")),
        "no session before TOTP"
    );
    let resp = s
        .http
        .post(s.url("/api/v1/auth/login/totp"))
        .json(&json!({"mfa_token": step["mfa_token"], "code": lattice_identity::totp::code_at(&seed, now + 30)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The story in the audit log (forwarded there shortly): one binding each,
    // every login and refusal.
    let mut audit = serde_json::Value::Null;
    for _ in 0..50 {
        audit = s
            .call("GET", "/api/v1/audit?limit=1000", &admin, None)
            .await
            .1;
        let binds = audit["entries"].as_array().map_or(0, |e| {
            e.iter().filter(|e| e["action"] == "auth.sso.bind").count()
        });
        if binds >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let entries = audit["entries"].as_array().unwrap();
    let count = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(count("auth.sso.bind"), 2, "alice and dave: {audit}");
    assert!(count("auth.sso.login") >= 6, "{audit}");
    s.stop().await;
}

/// The one client registered at the provider: Lattice, with its callback.
fn client(callback: &str) -> serde_json::Value {
    json!([{"client_id": "lattice", "client_secret": SECRET, "redirect_uris": [callback]}])
}

const SECRET: &str = "a-client-secret-of-some-length";

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('/', "%2F")
}

/// The provider rotates its signing key: the next login verifies after one fresh
/// look at its keys, no restart. A token signed by a key the provider does not
/// publish is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_needs_no_restart_and_unknown_keys_are_refused() {
    if !available() {
        return;
    }
    let s = TestServer::start(Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    let callback = s.url("/api/v1/auth/sso/corp/callback");
    let clients = client(&callback);
    let accounts = json!({"alice": {"email": "alice@example.com", "email_verified": true}});
    let keys = tempfile::tempdir().unwrap();
    let key = |n: &str| keys.path().join(format!("{n}.json")).display().to_string();
    let op = OpenIdProvider::start(&clients, &accounts);
    let port = op.port();
    drop(op);
    let op = OpenIdProvider::start_on(port, &clients, &accounts, &[("OIDC_KEYS_FILE", &key("a"))]);
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(json!({"name": "corp", "issuer": op.issuer,
            "client_id": "lattice", "client_secret": "a-client-secret-of-some-length"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/users",
            &admin,
            Some(json!({"username": "alice@example.com",
            "password": "user-password-1234", "scopes": []})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let ca = s.data_dir.path.join("tls/ca.pem");
    let start = s.url("/api/v1/auth/sso/corp/start");
    let login = || async {
        let mut browser = Browser::new(&ca);
        let back = browser.log_in_at_provider(&start, "alice").await;
        browser.send(reqwest::Method::GET, &back, None).await
    };
    assert_eq!(login().await.status, 303, "key a");
    // Rotated: the provider now signs with key b only.
    drop(op);
    let op = OpenIdProvider::start_on(port, &clients, &accounts, &[("OIDC_KEYS_FILE", &key("b"))]);
    let page = login().await;
    assert_eq!(page.status, 303, "key b after rotation: {}", page.body);
    // Signed with key c while the provider publishes only key a: refused.
    drop(op);
    let _c = OpenIdProvider::start_on(port, &clients, &accounts, &[("OIDC_KEYS_FILE", &key("c"))]);
    drop(_c);
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(key("a")).unwrap()).unwrap();
    let public: Vec<serde_json::Value> = published["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| json!({"kty": k["kty"], "n": k["n"], "e": k["e"], "kid": k["kid"], "use": "sig", "alg": "RS256"}))
        .collect();
    std::fs::write(key("published"), json!({"keys": public}).to_string()).unwrap();
    let _op = OpenIdProvider::start_on(
        port,
        &clients,
        &accounts,
        &[
            ("OIDC_KEYS_FILE", &key("c")),
            ("OIDC_PUBLISH_FILE", &key("published")),
        ],
    );
    let page = login().await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("does not verify"), "{}", page.body);
    s.stop().await;
}

/// A provider that creates users: the first login makes the account with the
/// provider's scopes and groups. A disabled account is refused, and so is an ID
/// token whose nonce is not the one the login asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_login_creates_users_and_refusals_name_why() {
    if !available() {
        return;
    }
    for backend in testing::backends() {
        first_login_on(backend).await;
    }
}

async fn first_login_on(backend: Backend) {
    let s = TestServer::start(backend).await;
    let admin = s.admin_token(&["*"]).await;
    let callback = s.url("/api/v1/auth/sso/corp/callback");
    let op = OpenIdProvider::start(
        &client(&callback),
        &json!({
            "erin": {"email": "erin@example.com", "email_verified": true},
            "frank": {"email": "frank@example.com", "email_verified": true}
        }),
    );
    let (status, _) = s
        .call(
            "POST",
            "/api/v1/groups",
            &admin,
            Some(json!({"name": "ops"})),
        )
        .await;
    assert_eq!(status, 201);
    let provider = |extra: serde_json::Value| {
        let mut p = json!({"name": "corp", "issuer": op.issuer, "client_id": "lattice", "client_secret": SECRET});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    // What created users get is checked when the provider is saved.
    for (extra, status, says) in [
        (
            json!({"new_user_scopes": ["nodes:read"]}),
            400,
            "create_users",
        ),
        (
            json!({"create_users": true, "new_user_groups": ["admins"]}),
            400,
            "admins",
        ),
        (
            json!({"create_users": true, "new_user_groups": ["nope"]}),
            400,
            "no group",
        ),
        (
            json!({"create_users": true, "new_user_scopes": ["orgs:admin"]}),
            403,
            "exceed",
        ),
    ] {
        let (got, b) = s
            .call(
                "POST",
                "/api/v1/sso/providers",
                &admin,
                Some(provider(extra)),
            )
            .await;
        assert_eq!(got, status, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(says),
            "{b}"
        );
    }
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(provider(json!({"create_users": true, "new_user_scopes": ["nodes:read"], "new_user_groups": ["ops"]}))),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["new_user_groups"], json!(["ops"]));

    let ca = s.data_dir.path.join("tls/ca.pem");
    let start = s.url("/api/v1/auth/sso/corp/start");
    // Erin has no account: the first login makes it.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "erin").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let me = browser
        .send(reqwest::Method::GET, &s.url("/api/v1/auth/me"), None)
        .await;
    let me: serde_json::Value = serde_json::from_str(&me.body).unwrap();
    assert_eq!(me["username"], "erin@example.com");
    assert_eq!(me["scopes"], json!(["nodes:read"]));
    let (_, ops) = s.call("GET", "/api/v1/groups/ops", &admin, None).await;
    assert_eq!(ops["members"], json!(["erin@example.com"]));
    // A second login finds the account by subject; no second account.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "erin").await;
    assert_eq!(
        browser.send(reqwest::Method::GET, &back, None).await.status,
        303
    );

    // Disabled: refused, saying so; enabled again: in.
    let erin = me["user_id"].as_str().unwrap().to_owned();
    let (status, b) = s
        .call(
            "POST",
            &format!("/api/v1/users/{erin}/disable"),
            &admin,
            None,
        )
        .await;
    assert_eq!((status, b["disabled"].as_bool()), (200, Some(true)), "{b}");
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "erin").await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("disabled"), "{}", page.body);
    let (status, _) = s
        .call(
            "POST",
            &format!("/api/v1/users/{erin}/enable"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "erin").await;
    assert_eq!(
        browser.send(reqwest::Method::GET, &back, None).await.status,
        303
    );

    // An ID token carrying another nonce than the login's: refused.
    let mut browser = Browser::new(&ca);
    let back = browser.log_in_at_provider(&start, "frank").await;
    let db = lattice_core::db::Db::connect(&s.database_url, 1)
        .await
        .unwrap();
    sqlx::query("UPDATE identity_sso_logins SET nonce = 'not-the-nonce-the-provider-saw'")
        .execute(db.pool())
        .await
        .unwrap();
    db.close().await;
    let page = browser.send(reqwest::Method::GET, &back, None).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.to_lowercase().contains("nonce"), "{}", page.body);
    let (_, users) = s.call("GET", "/api/v1/users", &admin, None).await;
    assert!(
        !users.to_string().contains("frank"),
        "no account from a refused login"
    );
    s.stop().await;
}
