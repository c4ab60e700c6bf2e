//! Organisations as tenants, through the gateway on both backends: the platform
//! admin's org lifecycle, memberships by invitation, acting in one org per
//! credential, per-org limits, and a forced deletion that leaves nothing behind.

mod common;

use common::{ADMIN_PASSWORD, TestServer, json};
use lattice_core::db::testing;
use serde_json::{Value, json};

/// Log in as `username` in `org` (None: home org): (cookie, csrf) or the refusal.
async fn login_in(
    s: &TestServer,
    username: &str,
    password: &str,
    org: Option<&str>,
) -> Result<(String, String), (u16, Value)> {
    let mut body = json!({"username": username, "password": password});
    if let Some(o) = org {
        body["org"] = json!(o);
    }
    let resp = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    if resp.status() != 200 {
        return Err(json(resp).await);
    }
    let cookie: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect();
    let b: Value = resp.json().await.unwrap();
    Ok((
        cookie.join("; "),
        b["csrf_token"].as_str().unwrap().to_owned(),
    ))
}

/// A token of the session's user, in the org the session acts in.
async fn session_token(
    s: &TestServer,
    (cookie, csrf): &(String, String),
    scopes: &[&str],
) -> String {
    let resp = s
        .http
        .post(s.url("/api/v1/tokens"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .json(&json!({"name": "t", "scopes": scopes}))
        .send()
        .await
        .unwrap();
    let (status, b) = json(resp).await;
    assert_eq!(status, 201, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn orgs_are_tenants_from_creation_to_forced_deletion() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let platform = s.admin_token(&["*", "orgs:admin"]).await;
        let org_admin_only = s.admin_token(&["*"]).await;

        // `*` is everything in an org, not the platform.
        let (status, b) = s.call("GET", "/api/v1/orgs", &org_admin_only, None).await;
        assert_eq!(status, 403, "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("orgs:admin")
        );

        let (status, b) = s
            .call(
                "POST",
                "/api/v1/orgs",
                &platform,
                Some(json!({"name": "acme"})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(b["state"], "active");
        assert_eq!(b["member_count"], 1);
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/orgs",
                &platform,
                Some(json!({"name": "acme"})),
            )
            .await;
        assert_eq!(status, 409);
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/orgs",
                &platform,
                Some(json!({"name": "Not_A_Label"})),
            )
            .await;
        assert_eq!(status, 400, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("org name"));
        let (_, list) = s.call("GET", "/api/v1/orgs", &platform, None).await;
        let names: Vec<&str> = list["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["acme", "default"]);

        // The platform admin acts in acme with a token made for it.
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/tokens",
                &platform,
                Some(json!({"name": "acme", "scopes": ["*"], "org": "acme"})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let acme = b["token"].as_str().unwrap().to_owned();
        let (_, me) = s.call("GET", "/api/v1/auth/me", &acme, None).await;
        assert_eq!(me["org_name"], "acme");
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/tokens",
                &platform,
                Some(json!({"name": "x", "scopes": ["kv:read"], "org": "nowhere"})),
            )
            .await;
        assert_eq!(status, 403, "{b}");

        // Content in acme; the default org sees none of it.
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &acme,
                Some(json!({"name": "data", "surface": "kv"})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let (status, _) = s
            .call(
                "PUT",
                "/api/v1/kv/data/greeting",
                &acme,
                Some(json!({"value": "hello"})),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = s
            .call("GET", "/api/v1/kv/data/greeting", &org_admin_only, None)
            .await;
        assert_eq!(status, 404, "another org's bucket is not there");
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/users",
                &acme,
                Some(json!({"username": "bob", "password": "bob-password-123", "scopes": ["kv:read"]})),
            )
            .await;
        assert_eq!(status, 201, "{b}");

        // Alice (of the default org) is invited into acme and accepts the link.
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/users",
                &org_admin_only,
                Some(json!({"username": "alice", "password": "alice-password-1", "scopes": ["kv:admin", "tokens:write"]})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let alice_id = b["id"].as_str().unwrap().to_owned();
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/invitations",
                &acme,
                Some(json!({"username": "alice", "scopes": ["kv:read", "tokens:write"]})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let link = b["link"].as_str().unwrap().to_owned();
        assert!(link.contains("/ui/invitations#lati_"), "{link}");
        // Someone else cannot use it.
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/invitations/accept",
                &org_admin_only,
                Some(json!({"code": link})),
            )
            .await;
        assert_eq!(status, 404);
        let home = login_in(&s, "alice", "alice-password-1", None)
            .await
            .unwrap();
        let alice_home = session_token(&s, &home, &["kv:admin", "tokens:write"]).await;
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/invitations/accept",
                &alice_home,
                Some(json!({"code": link})),
            )
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["org"], "acme");
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/invitations/accept",
                &alice_home,
                Some(json!({"code": link})),
            )
            .await;
        assert_eq!(status, 404, "an invitation works once");
        let (_, mine) = s.call("GET", "/api/v1/auth/orgs", &alice_home, None).await;
        let orgs: Vec<(&str, bool, bool)> = mine["memberships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["org"].as_str().unwrap(),
                    m["home"].as_bool().unwrap(),
                    m["current"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(orgs, [("default", true, true), ("acme", false, false)]);

        // In acme Alice holds what the invitation gave: reading, not writing.
        let in_acme = login_in(&s, "alice", "alice-password-1", Some("acme"))
            .await
            .unwrap();
        let alice_acme = session_token(&s, &in_acme, &["kv:read"]).await;
        let (status, b) = s
            .call("GET", "/api/v1/kv/data/greeting", &alice_acme, None)
            .await;
        assert_eq!((status, b["value"].as_str()), (200, Some("hello")));
        let (status, _) = s
            .call(
                "PUT",
                "/api/v1/kv/data/greeting",
                &alice_acme,
                Some(json!({"value": "x"})),
            )
            .await;
        assert_eq!(status, 403);
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/tokens",
                &alice_home,
                Some(json!({"name": "x", "scopes": ["kv:write"], "org": "acme"})),
            )
            .await;
        assert_eq!(status, 403, "scopes in acme bound a token for acme: {b}");
        // Not a member of an org: the login says so after the password.
        let (status, b) = login_in(&s, "bob", "bob-password-123", Some("default"))
            .await
            .unwrap_err();
        assert_eq!(status, 403, "{b}");
        // Acme's admin may not touch Alice's account, which her home org administers.
        let (status, b) = s
            .call(
                "POST",
                &format!("/api/v1/users/{alice_id}/password"),
                &acme,
                Some(json!({"new_password": "taken-over-password"})),
            )
            .await;
        assert_eq!(status, 403, "{b}");
        // Her scopes in acme are acme's to change; then her membership ends.
        let (status, b) = s
            .call(
                "PUT",
                &format!("/api/v1/users/{alice_id}/scopes"),
                &acme,
                Some(json!({"scopes": ["kv:read"]})),
            )
            .await;
        assert_eq!(
            (status, b["scopes"].clone()),
            (200, json!(["kv:read"])),
            "{b}"
        );

        // Limits: tokens.
        let (status, b) = s
            .call(
                "PATCH",
                "/api/v1/orgs/acme",
                &platform,
                Some(json!({"limits": {"max_tokens": 2}})),
            )
            .await;
        assert_eq!(
            (status, b["limits"]["max_tokens"].as_i64()),
            (200, Some(2)),
            "{b}"
        );
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/tokens",
                &acme,
                Some(json!({"name": "3rd", "scopes": ["kv:read"]})),
            )
            .await;
        assert_eq!(status, 403, "{b}");
        assert_eq!(b["error"]["code"], "limit_exceeded");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_tokens (2)")
        );

        let (status, b) = s
            .call(
                "DELETE",
                &format!("/api/v1/users/{alice_id}/membership"),
                &acme,
                None,
            )
            .await;
        assert_eq!(status, 200, "{b}");
        let (status, _) = s
            .call("GET", "/api/v1/kv/data/greeting", &alice_acme, None)
            .await;
        assert_eq!(
            status, 401,
            "a removed member's credential in the org stops"
        );

        // Usage, then deletion: refused while acme holds things, forced after.
        let (status, b) = s.call("GET", "/api/v1/orgs/acme", &platform, None).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["usage"]["buckets"], 1, "{b}");
        let (status, b) = s
            .call("DELETE", "/api/v1/orgs/default", &platform, None)
            .await;
        assert_eq!(status, 409, "the org one acts in: {b}");
        let (status, b) = s.call("DELETE", "/api/v1/orgs/acme", &platform, None).await;
        assert_eq!(status, 409, "{b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains("1 buckets") && msg.contains("force"), "{msg}");
        let (status, b) = s
            .call("DELETE", "/api/v1/orgs/acme?force=true", &platform, None)
            .await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(b["removed"]["storage"]["buckets"], 1, "{b}");
        assert_eq!(
            b["removed"]["identity"]["users"], 1,
            "bob lived in acme: {b}"
        );
        let (status, _) = s.call("GET", "/api/v1/orgs/acme", &platform, None).await;
        assert_eq!(status, 404);
        let (status, _) = s.call("GET", "/api/v1/auth/me", &acme, None).await;
        assert_eq!(status, 401, "acme's credentials are gone");
        assert!(login_in(&s, "bob", "bob-password-123", None).await.is_err());
        let (_, mine) = s.call("GET", "/api/v1/auth/orgs", &alice_home, None).await;
        assert_eq!(mine["memberships"].as_array().unwrap().len(), 1);
        // A new org of the same name starts empty.
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/orgs",
                &platform,
                Some(json!({"name": "acme"})),
            )
            .await;
        assert_eq!(status, 201);
        let (status, b) = s.call("GET", "/api/v1/orgs/acme", &platform, None).await;
        assert_eq!((status, b["usage"].clone()), (200, json!({})), "{b}");
        let _ = ADMIN_PASSWORD;
        s.stop().await;
    }
}

/// Each service decides an org's purge itself: a principal without `orgs:admin`
/// (one a correct gateway would never send) is refused by every service.
#[tokio::test]
async fn every_service_refuses_a_purge_without_orgs_admin() {
    use lattice_core::auth::{AuthMethod, InternalAuth, Principal};
    use lattice_proto::orgs::v1::OrgDataRequest;
    use lattice_proto::orgs::v1::org_data_client::OrgDataClient;
    const SECRET: &str = "orgs-purge-test-internal-secret-0123456789";
    let s = TestServer::start_with(testing::backends()[0], &[("JWT_SECRET", SECRET)]).await;
    let internal = InternalAuth::new(SECRET.as_bytes());
    let forged = Principal {
        sub: "user-forged".into(),
        username: "admin".into(),
        org_id: "some-org".into(),
        scopes: vec!["*".into()],
        auth: AuthMethod::Token,
        credential_id: "t".into(),
    };
    let r = s.running();
    for (name, addr) in [
        ("storage", r.storage_addr),
        ("tasks", r.tasks_addr),
        ("tunnel", r.tunnel_addr),
        ("policy", r.policy_addr),
    ] {
        let addr = addr.unwrap_or_else(|| panic!("{name} runs in this process"));
        let mut client = OrgDataClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let req = || {
            lattice_core::grpc::request(
                &internal,
                &forged,
                None,
                OrgDataRequest {
                    org_id: "victim-org".into(),
                },
            )
        };
        let err = client.purge(req()).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{name}: {err:?}");
        let err = client.usage(req()).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{name}: {err:?}");
    }
    s.stop().await;
}
