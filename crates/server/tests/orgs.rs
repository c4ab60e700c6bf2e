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

/// What a caller of another org must get from one operation on org B's objects.
enum Probe {
    /// 404, exactly as for an object that does not exist.
    NotFound(Req),
    /// The route creates or replaces an object of the caller's own org under the
    /// name: B's object (read back at `check` with B's token) is unchanged.
    OwnOrg { req: Req, check: String },
    /// Not tenant data (the reason is for the reader).
    Exempt(#[allow(dead_code)] &'static str),
}

/// One request of a probe: a path, and what a valid request there carries.
#[derive(Default)]
struct Req {
    path: String,
    json: Option<Value>,
    raw: Option<(&'static str, Vec<u8>)>,
    headers: Vec<(&'static str, &'static str)>,
}

impl Req {
    fn to(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    fn json(mut self, v: Value) -> Self {
        self.json = Some(v);
        self
    }

    async fn send(&self, s: &TestServer, method: &str, token: &str) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut r = s.http.request(method, s.url(&self.path)).bearer_auth(token);
        for (k, v) in &self.headers {
            r = r.header(*k, *v);
        }
        if let Some(j) = &self.json {
            r = r.json(j);
        }
        if let Some((ct, body)) = &self.raw {
            r = r.header("content-type", *ct).body(body.clone());
        }
        json(r.send().await.unwrap()).await
    }
}

/// `method path` as `token` must succeed (2xx): its answer.
async fn created(
    s: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
    what: &str,
) -> Value {
    let (status, b) = s.call(method, path, token, body).await;
    assert!((200..300).contains(&status), "{what}: {status} {b}");
    b
}

/// Isolation, for every route of the OpenAPI document: a caller of org A (with `*`
/// there) asking for org B's objects by name or id gets 404, never the object and
/// never 403; every list A reads names nothing of B's; and a route added without a
/// line in the table below fails this test.
#[tokio::test]
async fn every_route_hides_another_orgs_objects() {
    let backend = *testing::backends().last().unwrap();
    let (url, guard) = testing::fresh_url(backend).await;
    let s = TestServer::start_on(&url, guard, &[]).await;
    let platform = s.admin_token(&["*", "orgs:admin"]).await;
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/orgs",
            &platform,
            Some(json!({"name": "zqb"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let b_org = b["id"].as_str().unwrap().to_owned();
    let (_, b) = s
        .call(
            "POST",
            "/api/v1/tokens",
            &platform,
            Some(json!({"name": "zqb", "scopes": ["*"], "org": "zqb"})),
        )
        .await;
    let tb = b["token"].as_str().unwrap().to_owned();
    // Org A's caller: everything in the default org, a member of nothing else.
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/users",
            &platform,
            Some(json!({"username": "alpha", "password": "alpha-password-1", "scopes": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let a_session = login_in(&s, "alpha", "alpha-password-1", None)
        .await
        .unwrap();
    let ta = session_token(&s, &a_session, &["*"]).await;

    // Org B's objects, one of each kind, all named or numbered so they can be found
    // in any answer.
    created(
        &s,
        "POST",
        "/api/v1/buckets",
        &tb,
        Some(json!({"name": "zqb-kv", "surface": "kv"})),
        "kv bucket",
    )
    .await;
    created(
        &s,
        "PUT",
        "/api/v1/kv/zqb-kv/zqb-key",
        &tb,
        Some(json!({"value": "zqb-value"})),
        "kv put",
    )
    .await;
    created(
        &s,
        "POST",
        "/api/v1/buckets",
        &tb,
        Some(json!({"name": "zqb-site", "surface": "static"})),
        "static bucket",
    )
    .await;
    let deployment = s
        .deploy(&tb, "zqb-site", &[("index.html", b"zqb-page")], true)
        .await;
    let deployment = deployment["id"].as_str().unwrap().to_owned();
    created(
        &s,
        "POST",
        "/api/v1/bindings",
        &tb,
        Some(json!({"host": "zqb.example.test", "bucket": "zqb-site"})),
        "binding",
    )
    .await;
    let b = created(
        &s,
        "POST",
        "/api/v1/storage-tokens",
        &tb,
        Some(json!({"name": "zqb-st", "surface": "kv", "access": "read", "buckets": ["zqb-kv"]})),
        "storage token",
    )
    .await;
    let storage_token = b["id"].as_str().unwrap().to_owned();
    created(
        &s,
        "POST",
        "/api/v1/groups",
        &tb,
        Some(json!({"name": "zqb-group"})),
        "group",
    )
    .await;
    let b = created(
        &s,
        "POST",
        "/api/v1/users",
        &tb,
        Some(
            json!({"username": "zqb-user", "password": "zqb-password-123", "scopes": ["kv:read"]}),
        ),
        "user",
    )
    .await;
    let b_user = b["id"].as_str().unwrap().to_owned();
    created(
        &s,
        "PUT",
        "/api/v1/groups/zqb-group/members/zqb-user",
        &tb,
        None,
        "member",
    )
    .await;
    let b = created(
        &s,
        "POST",
        "/api/v1/tokens",
        &tb,
        Some(json!({"name": "zqb-tok", "scopes": ["kv:read"]})),
        "token",
    )
    .await;
    let b_token = b["id"].as_str().unwrap().to_owned();
    let node = "0190c3f0-0000-7000-8000-00000000b0b0";
    common::insert_node(&url, node, &b_org).await;
    let b = created(
        &s,
        "POST",
        "/api/v1/tasks",
        &tb,
        Some(json!({"node": node, "kind": "facts.refresh"})),
        "task",
    )
    .await;
    let task = b["id"].as_str().unwrap().to_owned();
    created(&s, "POST", "/api/v1/policies", &tb, Some(json!({"name": "zqb-pol", "policies": "permit(principal in Lattice::Group::\"zqb-group\", action, resource);"})), "policy").await;
    created(&s, "POST", "/api/v1/intents", &tb, Some(json!({"name": "zqb-intent", "kind": "firewall", "selector": {"node": node}, "spec": {"default": "drop", "rules": [{"action": "accept", "protocol": "tcp", "ports": "22", "from": "10.0.0.0/8", "comment": "zqb"}]}})), "intent").await;
    let plan = "0190c3f0-0000-7000-8000-00000000b1a0";
    let provider_id = "0190c3f0-0000-7000-8000-00000000b550";
    {
        let db = lattice_core::db::Db::connect(&url, 1).await.unwrap();
        sqlx::query(
            "INSERT INTO policy_plans (id, org_id, intent, intent_version, kind, hash, state, author, created_at_ms, expires_at_ms, decided_by, decided_at_ms, reason) \
             VALUES ($1, $2, 'zqb-intent', 1, 'firewall', 'zqbhash', 'pending', 'x', 1, 9999999999999, '', 0, '')",
        )
        .bind(plan)
        .bind(&b_org)
        .execute(db.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO identity_sso_providers (id, org_id, name, display_name, issuer, client_id, client_secret_sealed, scopes, username_claim, require_verified_email, create_users, created_at_ms, created_by) \
             VALUES ($1, $2, 'zqb-sso', 'zqb', 'https://zqb.example.test', 'zqb', 'x', '[]', 'email', 1, 0, 1, 'x')",
        )
        .bind(provider_id)
        .bind(&b_org)
        .execute(db.pool())
        .await
        .unwrap();
        db.close().await;
    }
    // (The org's own name and id appear in A's audit log: the platform admin created
    // it from org A. Its objects' names and ids must appear nowhere.)
    let markers = [
        "zqb-",
        &deployment,
        &storage_token,
        &b_user,
        &b_token,
        node,
        &task,
        plan,
        provider_id,
    ];

    let nf = |p: &str| Probe::NotFound(Req::to(p));
    let nfb = |p: &str, b: Value| Probe::NotFound(Req::to(p).json(b));
    let probe = |method: &str, template: &str| -> Probe {
        match (method, template) {
            ("get", "/api/v1/agent-releases/{version}/{arch}") => Probe::Exempt(
                "agent releases are platform-wide: any org's nodes may download any release",
            ),
            (
                "get",
                "/api/v1/auth/sso/{provider}/start" | "/api/v1/auth/sso/{provider}/callback",
            ) => Probe::Exempt(
                "the public login entry: the org is named in the URL, and only the provider's login page is disclosed",
            ),
            (_, "/api/v1/orgs/{name}") => Probe::Exempt(
                "platform routes (orgs:admin): every org's admin is refused with 403 (see orgs_are_tenants_...)",
            ),
            ("delete" | "patch", "/api/v1/bindings/{host}") => {
                if method == "patch" {
                    nfb(
                        "/api/v1/bindings/zqb.example.test",
                        json!({"enabled": false}),
                    )
                } else {
                    nf("/api/v1/bindings/zqb.example.test")
                }
            }
            ("delete", "/api/v1/buckets/{name}") => nf("/api/v1/buckets/zqb-kv"),
            ("get" | "delete", "/api/v1/groups/{name}") => nf("/api/v1/groups/zqb-group"),
            ("put" | "delete", "/api/v1/groups/{name}/members/{username}") => {
                nf("/api/v1/groups/zqb-group/members/zqb-user")
            }
            ("get" | "delete", "/api/v1/intents/{name}") => nf("/api/v1/intents/zqb-intent"),
            ("put", "/api/v1/intents/{name}") => Probe::OwnOrg {
                req: Req::to("/api/v1/intents/zqb-intent").json(json!({"kind": "firewall",
                    "selector": {"node": node}, "spec": {"default": "accept", "rules": []}})),
                check: "/api/v1/intents/zqb-intent/history".into(),
            },
            ("get", "/api/v1/intents/{name}/history") => nf("/api/v1/intents/zqb-intent/history"),
            ("get", "/api/v1/kv/{bucket}") => nf("/api/v1/kv/zqb-kv"),
            ("get" | "delete", "/api/v1/kv/{bucket}/{key}") => nf("/api/v1/kv/zqb-kv/zqb-key"),
            ("put", "/api/v1/kv/{bucket}/{key}") => {
                nfb("/api/v1/kv/zqb-kv/zqb-key", json!({"value": "x"}))
            }
            ("get" | "delete", "/api/v1/nodes/{id}") => nf(&format!("/api/v1/nodes/{node}")),
            ("patch", "/api/v1/nodes/{id}") => nfb(
                &format!("/api/v1/nodes/{node}"),
                json!({"labels": {"a": "b"}}),
            ),
            ("get", "/api/v1/nodes/{id}/logs") => nf(&format!("/api/v1/nodes/{node}/logs")),
            ("get", "/api/v1/nodes/{id}/metrics") => nf(&format!("/api/v1/nodes/{node}/metrics")),
            ("post", "/api/v1/nodes/{id}/reconnect") => {
                nfb(&format!("/api/v1/nodes/{node}/reconnect"), json!({}))
            }
            ("get", "/api/v1/nodes/{node}/portforward/{port}") => Probe::NotFound(Req {
                headers: vec![("connection", "upgrade"), ("upgrade", "connect-tcp")],
                ..Req::to(format!("/api/v1/nodes/{node}/portforward/22"))
            }),
            ("get", "/api/v1/nodes/{node}/proxy/{port}/{path}") => {
                nf(&format!("/api/v1/nodes/{node}/proxy/80/index.html"))
            }
            ("get", "/api/v1/plans/{id}") => nf(&format!("/api/v1/plans/{plan}")),
            ("post", "/api/v1/plans/{id}/approve") => nfb(
                &format!("/api/v1/plans/{plan}/approve"),
                json!({"hash": "zqbhash"}),
            ),
            ("post", "/api/v1/plans/{id}/cancel") => {
                nfb(&format!("/api/v1/plans/{plan}/cancel"), json!({}))
            }
            ("post", "/api/v1/plans/{id}/reject") => nfb(
                &format!("/api/v1/plans/{plan}/reject"),
                json!({"reason": "x"}),
            ),
            ("get" | "delete", "/api/v1/policies/{name}") => nf("/api/v1/policies/zqb-pol"),
            ("put", "/api/v1/policies/{name}") => Probe::OwnOrg {
                req: Req::to("/api/v1/policies/zqb-pol")
                    .json(json!({"policies": "forbid(principal, action, resource);"})),
                check: "/api/v1/policies/zqb-pol".into(),
            },
            ("get" | "delete", "/api/v1/sso/providers/{name}") => {
                nf("/api/v1/sso/providers/zqb-sso")
            }
            ("get", "/api/v1/static/{bucket}/deployments") => {
                nf("/api/v1/static/zqb-site/deployments")
            }
            ("post", "/api/v1/static/{bucket}/deployments") => Probe::NotFound(Req {
                raw: Some((
                    "application/gzip",
                    common::site_archive(&[("index.html", b"mine")]),
                )),
                ..Req::to("/api/v1/static/zqb-site/deployments")
            }),
            ("post", "/api/v1/static/{bucket}/deployments/{id}/activate") => nf(&format!(
                "/api/v1/static/zqb-site/deployments/{deployment}/activate"
            )),
            ("get", "/api/v1/static/{bucket}/objects") => nf("/api/v1/static/zqb-site/objects"),
            ("put" | "delete", "/api/v1/static/{bucket}/objects/{path}") => {
                nf("/api/v1/static/zqb-site/objects/index.html")
            }
            ("delete", "/api/v1/storage-tokens/{id}") => {
                nf(&format!("/api/v1/storage-tokens/{storage_token}"))
            }
            ("get", "/api/v1/tasks/{id}") => nf(&format!("/api/v1/tasks/{task}")),
            ("post", "/api/v1/tasks/{id}/cancel") => nf(&format!("/api/v1/tasks/{task}/cancel")),
            ("delete", "/api/v1/tokens/{id}") => nf(&format!("/api/v1/tokens/{b_token}")),
            ("delete", "/api/v1/users/{id}/membership") => {
                nf(&format!("/api/v1/users/{b_user}/membership"))
            }
            ("post", "/api/v1/users/{id}/password") => nfb(
                &format!("/api/v1/users/{b_user}/password"),
                json!({"new_password": "taken-over-password"}),
            ),
            ("put", "/api/v1/users/{id}/scopes") => nfb(
                &format!("/api/v1/users/{b_user}/scopes"),
                json!({"scopes": ["*"]}),
            ),
            ("post", "/api/v1/users/{id}/unlock") => nf(&format!("/api/v1/users/{b_user}/unlock")),
            ("post", "/api/v1/users/{id}/disable") => {
                nf(&format!("/api/v1/users/{b_user}/disable"))
            }
            ("post", "/api/v1/users/{id}/enable") => nf(&format!("/api/v1/users/{b_user}/enable")),
            _ => panic!(
                "{} {template}: a route with no isolation probe; add one to this table",
                method.to_uppercase()
            ),
        }
    };

    let (_, doc) = json(
        s.http
            .get(s.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut failures = Vec::new();
    let mut probed = 0;
    // Routes that create in the caller's own org run last: what they create under
    // B's names must not stand in for B's objects in the other probes.
    let mut own_org = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let public = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            if !template.contains('{') {
                // A list (or an action without an object): A's answer names nothing of B's.
                if method != "get" || public || !template.starts_with("/api/v1/") {
                    continue;
                }
                let (status, body) = s.call("GET", template, &ta, None).await;
                let text = body.to_string();
                if let Some(m) = markers.iter().find(|m| text.contains(**m)) {
                    failures.push(format!(
                        "GET {template}: {status} names org B's {m:?}: {text}"
                    ));
                }
                probed += 1;
                continue;
            }
            match probe(method, template) {
                Probe::Exempt(_) => {}
                Probe::NotFound(req) => {
                    let (status, answer) = req.send(&s, method, &ta).await;
                    if status != 404 {
                        failures.push(format!(
                            "{} {}: {status} {answer}",
                            method.to_uppercase(),
                            req.path
                        ));
                    }
                    // The path names a real object of B's: B itself finds it.
                    if method == "get" {
                        let (status, answer) = req.send(&s, method, &tb).await;
                        if status == 404 {
                            failures.push(format!(
                                "GET {} as org B: {status} {answer} (the probe names nothing)",
                                req.path
                            ));
                        }
                    }
                    probed += 1;
                }
                Probe::OwnOrg { req, check } => own_org.push((method.clone(), req, check)),
            }
        }
    }
    for (method, req, check) in own_org {
        let before = s.call("GET", &check, &tb, None).await;
        let (status, answer) = req.send(&s, &method, &ta).await;
        let after = s.call("GET", &check, &tb, None).await;
        if status == 403 || before != after {
            failures.push(format!(
                "{} {}: {status} {answer}; org B's object before {before:?} after {after:?}",
                method.to_uppercase(),
                req.path
            ));
        }
        probed += 1;
    }
    assert!(
        failures.is_empty(),
        "{} of {probed} probes leaked or refused:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Host bindings stay unique across orgs: A cannot take B's host.
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/buckets",
            &ta,
            Some(json!({"name": "a-site", "surface": "static"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            &ta,
            Some(json!({"host": "zqb.example.test", "bucket": "a-site"})),
        )
        .await;
    assert_eq!(status, 409, "{b}");
    // B's objects are all still there for B.
    let (status, b) = s.call("GET", "/api/v1/kv/zqb-kv/zqb-key", &tb, None).await;
    assert_eq!((status, b["value"].as_str()), (200, Some("zqb-value")));
    let (status, _) = s
        .call("GET", &format!("/api/v1/tasks/{task}"), &tb, None)
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

/// Every limit is enforced by the service that holds what it counts, and a refusal
/// names the limit.
#[tokio::test]
async fn org_limits_are_enforced_and_named() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let platform = s.admin_token(&["*", "orgs:admin"]).await;
        let limits =
            json!({"max_buckets": 1, "max_stored_bytes": 40, "max_nodes": 1, "max_tokens": 0});
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/orgs",
                &platform,
                Some(json!({"name": "small", "limits": limits})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let (_, b) = s
            .call(
                "POST",
                "/api/v1/tokens",
                &platform,
                Some(json!({"name": "t", "scopes": ["*"], "org": "small"})),
            )
            .await;
        let t = b["token"].as_str().unwrap().to_owned();
        let refused = |b: &Value, limit: &str| {
            assert_eq!(b["error"]["code"], "limit_exceeded", "{b}");
            assert!(
                b["error"]["message"].as_str().unwrap().contains(limit),
                "{b}"
            );
        };

        // Buckets.
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &t,
                Some(json!({"name": "one", "surface": "kv"})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &t,
                Some(json!({"name": "two", "surface": "kv"})),
            )
            .await;
        assert_eq!(status, 403);
        refused(&b, "max_buckets (1)");

        // Stored bytes: 30 fit, 30 more do not; what was stored stays.
        let thirty = "x".repeat(28);
        let (status, b) = s
            .call(
                "PUT",
                "/api/v1/kv/one/a",
                &t,
                Some(json!({"value": thirty})),
            )
            .await;
        assert_eq!(status, 200, "{b}");
        let (status, b) = s
            .call(
                "PUT",
                "/api/v1/kv/one/b",
                &t,
                Some(json!({"value": thirty})),
            )
            .await;
        assert_eq!(status, 403);
        refused(&b, "max_stored_bytes (40)");
        let (status, _) = s.call("GET", "/api/v1/kv/one/a", &t, None).await;
        assert_eq!(status, 200);
        let (status, _) = s.call("GET", "/api/v1/kv/one/b", &t, None).await;
        assert_eq!(status, 404);

        // Nodes: two join tokens while there are none; the second enrollment is
        // refused by the tunnel service, and so is a third join token.
        let first = common::agents::join_token(&s, &t).await;
        let second = common::agents::join_token(&s, &t).await;
        let dir = tempfile::tempdir().unwrap();
        let out = common::agents::enroll(&first, &dir.path().join("a")).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = common::agents::enroll(&second, &dir.path().join("b")).await;
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("max_nodes (1)"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/nodes/join-tokens",
                &t,
                Some(json!({"expires_in_s": 600})),
            )
            .await;
        assert_eq!(status, 403);
        refused(&b, "max_nodes (1)");

        // The platform admin lifts them (services see it within 30 s).
        let (status, _) = s
            .call("PATCH", "/api/v1/orgs/small", &platform, Some(json!({"limits": {"max_buckets": 0, "max_stored_bytes": 0, "max_nodes": 0, "max_tokens": 0}})))
            .await;
        assert_eq!(status, 200);
        s.stop().await;
    }
}
