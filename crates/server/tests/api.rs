//! The REST API through the real gateway and identity service, over real HTTP, on
//! every database backend.

mod common;

use common::totp_seed;
use common::{ADMIN_PASSWORD, TestServer, json};
use lattice_core::db::testing;
use serde_json::json;

#[tokio::test]
async fn health_ready_metrics_and_openapi() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let (status, body) = json(s.http.get(s.url("/health")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = json(s.http.get(s.url("/ready")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][0]["name"], "identity");
    assert_eq!(body["checks"][1]["name"], "storage");
    assert_eq!(body["checks"][1]["status"], "ok");
    for name in ["tasks", "tunnel", "policy"] {
        let check = body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {body}"));
        assert_eq!(check["status"], "ok", "{body}");
    }

    let resp = s
        .http
        .get(s.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/login",
        "/api/v1/auth/login/totp",
        "/api/v1/auth/me",
        "/api/v1/auth/totp/enroll",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/users",
        "/api/v1/groups",
        "/api/v1/groups/{name}",
        "/api/v1/groups/{name}/members/{username}",
        "/api/v1/policies",
        "/api/v1/policies/{name}",
        "/api/v1/policies/validate",
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/tasks",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/audit",
        "/api/v1/audit/verify",
        "/api/v1/nodes",
        "/api/v1/nodes/join-tokens",
        "/api/v1/nodes/{id}",
        "/api/v1/nodes/{id}/metrics",
        "/api/v1/nodes/{id}/logs",
        "/api/v1/nodes/{node}/proxy/{port}/{path}",
        "/api/v1/fleet/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    let resp = s.http.get(s.url("/metrics")).send().await.unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(
            "lattice_gateway_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    // Security headers and request ids on every answer.
    let resp = s.http.get(s.url("/health")).send().await.unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert!(resp.headers().contains_key("x-request-id"));
    s.stop().await;
}

#[tokio::test]
async fn login_session_csrf_tokens_users_and_revocation() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let (cookie, csrf) = s.login("admin", ADMIN_PASSWORD).await;

        // The cookie works for reads.
        let (status, me) = json(
            s.http
                .get(s.url("/api/v1/auth/me"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            (me["username"].as_str(), me["auth_method"].as_str()),
            (Some("admin"), Some("session"))
        );
        assert_eq!(me["org_name"], "default");

        // A cookie-authenticated write without the CSRF header is refused.
        let (status, body) = json(
            s.http
                .post(s.url("/api/v1/tokens"))
                .header("cookie", &cookie)
                .json(&json!({"name": "ci", "scopes": ["kv:read"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("X-CSRF-Token")
        );

        // With it: created, secret shown once.
        let (status, created) = json(
            s.http
                .post(s.url("/api/v1/tokens"))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&json!({"name": "ci", "scopes": ["*"], "expires_in_s": 3600}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let admin_token = created["token"].as_str().unwrap().to_owned();
        let (_, list) = s.call("GET", "/api/v1/tokens", &admin_token, None).await;
        assert!(
            list["tokens"][0].get("token").is_none(),
            "secrets are never listed: {list}"
        );

        // Bearer: no CSRF needed.
        let (status, me) = s.call("GET", "/api/v1/auth/me", &admin_token, None).await;
        assert_eq!((status, me["auth_method"].as_str()), (200, Some("token")));

        // Users: create bob with narrow scopes.
        let (status, bob) = s.call("POST", "/api/v1/users", &admin_token, Some(json!({"username": "bob", "password": "bob-password-123", "scopes": ["kv:read", "tokens:write"]}))).await;
        assert_eq!(status, 201, "{bob}");
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/users",
                &admin_token,
                Some(json!({"username": "bob", "password": "bob-password-123"})),
            )
            .await;
        assert_eq!(status, 409);
        let (_, users) = s.call("GET", "/api/v1/users", &admin_token, None).await;
        assert_eq!(users["users"].as_array().unwrap().len(), 2);

        // Bob's session: cannot list users, cannot mint a token beyond his scopes.
        let (bob_cookie, bob_csrf) = s.login("bob", "bob-password-123").await;
        let status = s
            .http
            .get(s.url("/api/v1/users"))
            .header("cookie", &bob_cookie)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403);
        let (status, body) = json(
            s.http
                .post(s.url("/api/v1/tokens"))
                .header("cookie", &bob_cookie)
                .header("x-csrf-token", &bob_csrf)
                .json(&json!({"name": "x", "scopes": ["kv:admin"]}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        // Another session's CSRF token does not work for bob's cookie.
        let status = s
            .http
            .post(s.url("/api/v1/tokens"))
            .header("cookie", &bob_cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"name": "x", "scopes": ["kv:read"]}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403);

        // Revocation takes effect at once, even though the gateway caches credentials.
        let token_id = created["id"].as_str().unwrap();
        let status = s
            .http
            .delete(s.url(&format!("/api/v1/tokens/{token_id}")))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        let (status, body) = s.call("GET", "/api/v1/auth/me", &admin_token, None).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthenticated");

        // Logout ends the session.
        let status = s
            .http
            .post(s.url("/api/v1/auth/logout"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        let status = s
            .http
            .get(s.url("/api/v1/auth/me"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
        s.stop().await;
    }
}

/// The message of an error answer, after checking its status and code.
fn error_message(answer: &(u16, serde_json::Value), status: u16, code: &str) -> String {
    let (got, body) = answer;
    assert_eq!(
        (*got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn policies_over_rest_validate_store_and_refuse() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let admin = s.admin_token(&["*"]).await;
        // The seeded policy is there from the start.
        let (status, list) = s.call("GET", "/api/v1/policies", &admin, None).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["policies"][0]["name"], "admins-allow-all", "{list}");
        assert_eq!(list["policies"][0]["updated_by"], "system");

        // Invalid text: 422 naming the line, and nothing stored.
        let (status, err) = s
            .call(
                "POST",
                "/api/v1/policies",
                &admin,
                Some(serde_json::json!({"name": "bad", "policies": "permit(principal, action,\n resource) when { resource.colour == \"red\" };"})),
            )
            .await;
        assert_eq!(status, 422, "{backend:?}: {err}");
        assert_eq!(err["error"]["code"], "unprocessable", "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains("line 2"),
            "{err}"
        );
        let (status, _) = s.call("GET", "/api/v1/policies/bad", &admin, None).await;
        assert_eq!(status, 404);
        let (status, v) = s
            .call(
                "POST",
                "/api/v1/policies/validate",
                &admin,
                Some(serde_json::json!({"policies": "permit(principal == Lattice::Person::\"x\", action, resource);"})),
            )
            .await;
        assert_eq!((status, v["valid"].as_bool()), (200, Some(false)), "{v}");
        assert_eq!(v["problems"][0]["line"], 1, "{v}");

        // Create, conflict, replace (200), bad expiry, delete.
        let text = "permit(principal in Lattice::Group::\"web\", action == Lattice::Action::\"AccessNode\", resource) when { context.port == 80 };";
        let body = serde_json::json!({"name": "web", "policies": text, "priority": 5,
            "description": "web ports", "expires_at": "2099-01-01T00:00:00Z"});
        let (status, p) = s
            .call("POST", "/api/v1/policies", &admin, Some(body.clone()))
            .await;
        assert_eq!(status, 201, "{p}");
        assert_eq!(
            (
                p["priority"].as_i64(),
                p["expires_at"].as_str(),
                p["enabled"].as_bool()
            ),
            (Some(5), Some("2099-01-01T00:00:00Z"), Some(true)),
            "{p}"
        );
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        let (status, _) = s.call("POST", "/api/v1/policies", &admin, Some(body)).await;
        assert_eq!(status, 409);
        let (status, p) = s
            .call(
                "PUT",
                "/api/v1/policies/web",
                &admin,
                Some(serde_json::json!({"policies": text, "enabled": false})),
            )
            .await;
        assert_eq!(
            (status, p["enabled"].as_bool(), p["expires_at"].is_null()),
            (200, Some(false), true),
            "{p}"
        );
        let (status, err) = s
            .call(
                "PUT",
                "/api/v1/policies/web",
                &admin,
                Some(serde_json::json!({"policies": text, "expires_at": "tomorrow"})),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("expires_at:"),
            "{err}"
        );
        let (status, err) = s
            .call(
                "PUT",
                "/api/v1/policies/web",
                &admin,
                Some(serde_json::json!({"name": "other", "policies": text})),
            )
            .await;
        assert_eq!(status, 400, "{err}");

        // Scopes: a reader reads, cannot write; no scope, nothing.
        let reader = s.admin_token(&["policy:read"]).await;
        let (status, _) = s.call("GET", "/api/v1/policies/web", &reader, None).await;
        assert_eq!(status, 200);
        let (status, err) = s
            .call("DELETE", "/api/v1/policies/web", &reader, None)
            .await;
        assert_eq!(status, 403, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("policy:write"),
            "{err}"
        );
        let nobody = s.admin_token(&["nodes:read"]).await;
        let (status, _) = s.call("GET", "/api/v1/policies", &nobody, None).await;
        assert_eq!(status, 403);
        let (status, _) = s
            .call("GET", "/api/v1/policies", "lat_not-a-token", None)
            .await;
        assert_eq!(status, 401);

        let (status, _) = s.call("DELETE", "/api/v1/policies/web", &admin, None).await;
        assert_eq!(status, 204);
        let (status, _) = s.call("DELETE", "/api/v1/policies/web", &admin, None).await;
        assert_eq!(status, 404);

        // Every change is in the audit chain with the text's hashes.
        let (_, audit) = s
            .call("GET", "/api/v1/audit?limit=1000", &admin, None)
            .await;
        let actions: Vec<&str> = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for a in [
            "policy.seed",
            "policy.create",
            "policy.update",
            "policy.delete",
        ] {
            // Forwarded to the chain asynchronously: wait a little for the last ones.
            let mut seen = actions.contains(&a);
            for _ in 0..50 {
                if seen {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                let (_, audit) = s
                    .call("GET", "/api/v1/audit?limit=1000", &admin, None)
                    .await;
                seen = audit.to_string().contains(&format!("\"{a}\""));
            }
            assert!(seen, "{backend:?}: {a} is audited");
        }
        s.stop().await;
    }
}

#[tokio::test]
async fn groups_admins_members_scopes_and_errors() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let admin = s.admin_token(&["*"]).await;

        // Every org has `admins`, with the bootstrap admin in it.
        let (status, list) = s.call("GET", "/api/v1/groups", &admin, None).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["groups"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(
            (
                list["groups"][0]["name"].as_str(),
                list["groups"][0]["member_count"].as_i64()
            ),
            (Some("admins"), Some(1))
        );
        assert!(list["groups"][0].get("members").is_none(), "{list}");
        let (status, admins) = s.call("GET", "/api/v1/groups/admins", &admin, None).await;
        assert_eq!(
            (status, &admins["members"]),
            (200, &json!(["admin"])),
            "{admins}"
        );
        let answer = s
            .call("DELETE", "/api/v1/groups/admins", &admin, None)
            .await;
        assert!(
            error_message(&answer, 409, "conflict").contains("\"admins\" group cannot be deleted")
        );

        // Create: a DNS-label name, unique in the org.
        let (status, ops) = s
            .call(
                "POST",
                "/api/v1/groups",
                &admin,
                Some(json!({"name": "ops", "description": "Runs the fleet"})),
            )
            .await;
        assert_eq!(status, 201, "{ops}");
        assert_eq!(
            (
                ops["name"].as_str(),
                ops["description"].as_str(),
                &ops["members"]
            ),
            (Some("ops"), Some("Runs the fleet"), &json!([]))
        );
        let answer = s
            .call(
                "POST",
                "/api/v1/groups",
                &admin,
                Some(json!({"name": "ops"})),
            )
            .await;
        assert_eq!(
            error_message(&answer, 409, "conflict"),
            "group \"ops\" already exists"
        );
        for (body, field) in [
            (json!({"name": "Ops"}), "name: "),
            (json!({"name": "-ops"}), "name: "),
            (json!({"name": ""}), "name: "),
            (
                json!({"name": "qa", "description": "x".repeat(257)}),
                "description: ",
            ),
            (
                json!({"name": "qa", "description": "a\u{7}b"}),
                "description: ",
            ),
        ] {
            let answer = s.call("POST", "/api/v1/groups", &admin, Some(body)).await;
            let message = error_message(&answer, 400, "bad_request");
            assert!(message.starts_with(field), "{message}");
        }
        let (status, body) = s
            .call(
                "POST",
                "/api/v1/groups",
                &admin,
                Some(json!({"name": "qa", "owner": "me"})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let answer = s
            .call("GET", "/api/v1/groups/Not_A_Group", &admin, None)
            .await;
        assert!(error_message(&answer, 400, "bad_request").starts_with("name: "));

        // Members, by username: adding twice is fine; unknown names are 404s.
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/users",
                &admin,
                Some(json!({"username": "bob", "password": "bob-password-123"})),
            )
            .await;
        assert_eq!(status, 201);
        for _ in 0..2 {
            let (status, body) = s
                .call("PUT", "/api/v1/groups/ops/members/Bob", &admin, None)
                .await;
            assert_eq!(status, 204, "{body}");
        }
        let (_, ops) = s.call("GET", "/api/v1/groups/ops", &admin, None).await;
        assert_eq!(
            (&ops["members"], ops["member_count"].as_i64()),
            (&json!(["bob"]), Some(1))
        );
        for (path, missing) in [
            (
                "/api/v1/groups/ops/members/nobody",
                "user \"nobody\" not found",
            ),
            (
                "/api/v1/groups/nope/members/bob",
                "group \"nope\" not found",
            ),
        ] {
            let answer = s.call("PUT", path, &admin, None).await;
            assert_eq!(error_message(&answer, 404, "not_found"), missing);
        }
        let answer = s
            .call("PUT", "/api/v1/groups/ops/members/a%2Fb", &admin, None)
            .await;
        assert!(error_message(&answer, 400, "bad_request").starts_with("username: "));
        let answer = s.call("GET", "/api/v1/groups/nope", &admin, None).await;
        error_message(&answer, 404, "not_found");

        // Scopes: users:read reads, users:admin writes, `*` changes admins.
        let reader = s.admin_token(&["users:read"]).await;
        let (status, _) = s.call("GET", "/api/v1/groups/ops", &reader, None).await;
        assert_eq!(status, 200);
        for (method, path, body) in [
            ("POST", "/api/v1/groups", Some(json!({"name": "qa"}))),
            ("DELETE", "/api/v1/groups/ops", None),
            ("PUT", "/api/v1/groups/ops/members/bob", None),
            ("DELETE", "/api/v1/groups/ops/members/bob", None),
        ] {
            let answer = s.call(method, path, &reader, body).await;
            let message = error_message(&answer, 403, "permission_denied");
            assert!(
                message.contains("users:admin"),
                "{method} {path}: {message}"
            );
        }
        let nobody = s.admin_token(&["kv:read"]).await;
        let answer = s.call("GET", "/api/v1/groups", &nobody, None).await;
        assert!(error_message(&answer, 403, "permission_denied").contains("users:read"));
        let helpdesk = s.admin_token(&["users:admin"]).await;
        let (status, _) = s
            .call("PUT", "/api/v1/groups/ops/members/admin", &helpdesk, None)
            .await;
        assert_eq!(status, 204);
        let answer = s
            .call("PUT", "/api/v1/groups/admins/members/bob", &helpdesk, None)
            .await;
        assert!(error_message(&answer, 403, "permission_denied").contains("\"admins\""));
        let (_, admins) = s.call("GET", "/api/v1/groups/admins", &admin, None).await;
        assert_eq!(admins["members"], json!(["admin"]), "{admins}");

        // Remove once (then 404); delete the group (then 404).
        let (status, _) = s
            .call("DELETE", "/api/v1/groups/ops/members/bob", &admin, None)
            .await;
        assert_eq!(status, 204);
        let answer = s
            .call("DELETE", "/api/v1/groups/ops/members/bob", &admin, None)
            .await;
        error_message(&answer, 404, "not_found");
        let (status, _) = s.call("DELETE", "/api/v1/groups/ops", &admin, None).await;
        assert_eq!(status, 204);
        for method in ["GET", "DELETE"] {
            let answer = s.call(method, "/api/v1/groups/ops", &admin, None).await;
            error_message(&answer, 404, "not_found");
        }
        let (_, list) = s.call("GET", "/api/v1/groups", &admin, None).await;
        assert_eq!(list["groups"].as_array().unwrap().len(), 1, "{list}");
        s.stop().await;
    }
}

#[tokio::test]
async fn unauthenticated_and_forged_calls_are_refused() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    for (method, path) in [
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/x"),
        ("GET", "/api/v1/users"),
        ("POST", "/api/v1/users"),
        ("POST", "/api/v1/users/x/unlock"),
        ("GET", "/api/v1/groups"),
        ("POST", "/api/v1/groups"),
        ("GET", "/api/v1/groups/admins"),
        ("DELETE", "/api/v1/groups/admins"),
        ("PUT", "/api/v1/groups/admins/members/admin"),
        ("DELETE", "/api/v1/groups/admins/members/admin"),
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/auth/totp/enroll"),
        ("POST", "/api/v1/auth/totp/confirm"),
        ("POST", "/api/v1/auth/totp/disable"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for auth in [
            None,
            Some("Bearer lat_forged"),
            Some("Basic YWRtaW46eA=="),
            Some("Bearer "),
        ] {
            let mut req = s
                .http
                .request(m.clone(), s.url(path))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let (status, body) = json(req.send().await.unwrap()).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthenticated");
        }
        let status = s
            .http
            .request(m, s.url(path))
            .header("cookie", "lattice_session=lats_forged")
            .header(
                "x-csrf-token",
                lattice_gateway::caller::csrf_token_for("lats_forged"),
            )
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{path} with a forged session");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_precise_errors() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let token = s.admin_token(&["*"]).await;
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut req = s
            .http
            .post(s.url("/api/v1/users"))
            .bearer_auth(&token)
            .body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.send()
    };
    let (status, body) = json(
        post("{\"username\":", Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON")
    );
    let (status, body) = json(
        post(
            "{\"username\":5,\"password\":\"x\"}",
            Some("application/json"),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username"),
        "{body}"
    );
    let (status, body) = json(
        post(
            "{\"username\":\"a\",\"password\":\"p\",\"admin\":true}",
            Some("application/json"),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `admin`"),
        "{body}"
    );
    let (status, body) = json(post("{}", None).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content-Type")
    );
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/users",
            &token,
            Some(json!({"username": "x".repeat(2_000_000), "password": "p"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body) = json(
        post(
            "{\"username\":\"bad name!\",\"password\":\"long-enough-pass\"}",
            Some("application/json"),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("username:"),
        "{body}"
    );
    let (status, body) = json(s.http.get(s.url("/api/v1/nothing")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    s.stop().await;
}

#[tokio::test]
async fn totp_login_is_two_steps_over_http() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let token = s.admin_token(&["*"]).await;
        // An API token cannot change second-factor settings.
        let (status, body) = s
            .call("POST", "/api/v1/auth/totp/enroll", &token, None)
            .await;
        assert_eq!(status, 403, "{body}");
        let (cookie, csrf) = s.login("admin", ADMIN_PASSWORD).await;
        let session = |path: &str| {
            s.http
                .post(s.url(path))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
        };
        let (status, enroll) =
            json(session("/api/v1/auth/totp/enroll").send().await.unwrap()).await;
        assert_eq!(status, 200, "{enroll}");
        let seed = totp_seed(enroll["secret"].as_str().unwrap());
        let now = u64::try_from(lattice_core::time::now_ms() / 1000).unwrap();
        let (status, codes) = json(
            session("/api/v1/auth/totp/confirm")
                .json(&json!({"code": lattice_identity::totp::code_at(&seed, now)}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{codes}");
        assert_eq!(codes["recovery_codes"].as_array().unwrap().len(), 10);

        let (status, step1) = json(
            s.http
                .post(s.url("/api/v1/auth/login"))
                .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, step1["mfa_required"].as_bool()),
            (200, Some(true)),
            "{step1}"
        );
        let mfa_token = step1["mfa_token"].as_str().unwrap();
        let (status, _) = json(
            s.http
                .post(s.url("/api/v1/auth/login/totp"))
                .json(&json!({"mfa_token": mfa_token, "code": "000000"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401);
        let resp = s
            .http
            .post(s.url("/api/v1/auth/login/totp"))
            .json(&json!({"mfa_token": mfa_token, "code": lattice_identity::totp::code_at(&seed, now + 30)}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        assert!(cookie.iter().any(|c| c.starts_with("lattice_session=")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Lax")));
        let (_, me) = s.call("GET", "/api/v1/auth/me", &token, None).await;
        assert_eq!(me["totp_enabled"], true);
        s.stop().await;
    }
}

#[tokio::test]
async fn lockout_answers_429_with_retry_after_and_admin_unlocks() {
    let s = TestServer::start_with(
        lattice_core::db::Backend::Sqlite,
        &[("LATTICE_IDENTITY__LOCKOUT_THRESHOLD", "2")],
    )
    .await;
    let token = s.admin_token(&["*"]).await;
    let (_, bob) = s
        .call(
            "POST",
            "/api/v1/users",
            &token,
            Some(json!({"username": "bob", "password": "bob-password-123"})),
        )
        .await;
    let login = |password: &'static str| {
        s.http
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": "bob", "password": password}))
            .send()
    };
    for _ in 0..2 {
        let (status, body) = json(login("wrong-password!!").await.unwrap()).await;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["message"], "invalid username or password");
    }
    let resp = login("bob-password-123").await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    let (_, users) = s.call("GET", "/api/v1/users", &token, None).await;
    let listed = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "bob")
        .unwrap()
        .clone();
    assert!(listed["locked_until_ms"].is_i64());
    let status = s
        .http
        .post(s.url(&format!(
            "/api/v1/users/{}/unlock",
            bob["id"].as_str().unwrap()
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(login("bob-password-123").await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn self_signed_tls_serves_http2_with_the_generated_ca() {
    let s = TestServer::start_with(
        lattice_core::db::Backend::Sqlite,
        &[("LATTICE_GATEWAY__TLS", "self-signed")],
    )
    .await;
    assert!(s.base.starts_with("https://"));
    let resp = s.http.get(s.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(
        resp.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    // A client that does not trust the CA is refused.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(s.url("/health")).send().await.is_err());
    // Session cookies are Secure under TLS.
    let resp = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| c.to_str().unwrap().contains("Secure"))
    );
    s.stop().await;
}

#[tokio::test]
async fn password_change_ends_other_sessions_and_admin_can_reset() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let token = s.admin_token(&["*"]).await;
        let (_, bob) = s
            .call(
                "POST",
                "/api/v1/users",
                &token,
                Some(json!({"username": "bob", "password": "bob-password-123"})),
            )
            .await;
        let (first, _) = s.login("bob", "bob-password-123").await;
        let (second, second_csrf) = s.login("bob", "bob-password-123").await;
        let change = |current: &str, new: &str| {
            s.http
                .post(s.url("/api/v1/auth/password"))
                .header("cookie", &second)
                .header("x-csrf-token", &second_csrf)
                .json(&json!({"current_password": current, "new_password": new}))
                .send()
        };
        let (status, body) = json(
            change("not-the-password", "bob-new-password-1")
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("current_password")
        );
        let (status, body) = json(change("bob-password-123", "short").await.unwrap()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            change("bob-password-123", "bob-new-password-1")
                .await
                .unwrap()
                .status(),
            200
        );
        // The session that changed it lives on; the other one ended.
        assert_eq!(
            s.http
                .get(s.url("/api/v1/auth/me"))
                .header("cookie", &second)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(
            s.http
                .get(s.url("/api/v1/auth/me"))
                .header("cookie", &first)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        s.login("bob", "bob-new-password-1").await;
        // An API token cannot change its owner's password.
        let status = s
            .http
            .post(s.url("/api/v1/auth/password"))
            .bearer_auth(&token)
            .json(
                &json!({"current_password": ADMIN_PASSWORD, "new_password": "another-password-9"}),
            )
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403);
        // An admin resets bob's password.
        let status = s
            .http
            .post(s.url(&format!(
                "/api/v1/users/{}/password",
                bob["id"].as_str().unwrap()
            )))
            .bearer_auth(&token)
            .json(&json!({"new_password": "bob-reset-password-2"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        s.login("bob", "bob-reset-password-2").await;
        // Wrong method on a known route: 405 in the JSON error shape.
        let (status, body) = json(
            s.http
                .put(s.url("/api/v1/auth/password"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (405, Some("method_not_allowed"))
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn https_public_url_keeps_cookies_secure_behind_a_proxy() {
    let s = TestServer::start_with(
        lattice_core::db::Backend::Sqlite,
        &[
            ("LATTICE_GATEWAY__PUBLIC_URL", "https://lattice.example.com"),
            ("LATTICE_GATEWAY__TRUST_FORWARDED_FOR", "true"),
        ],
    )
    .await;
    let resp = s
        .http
        .post(s.url("/api/v1/auth/login"))
        .header("host", "lattice.example.com")
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| c.to_str().unwrap().contains("Secure"))
    );
    assert!(
        resp.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("31536000")
    );
    s.stop().await;
}

/// A disabled account cannot log in (it is told so only after its password), its
/// tokens stop working, its sessions end; enabled again, its tokens work again.
/// Only an administrator of its home org who outranks it may do this, not on
/// themself.
#[tokio::test]
async fn disabled_accounts_are_refused_everywhere() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let admin = s.admin_token(&["*"]).await;
        let dave = s.user_token("dave", &["kv:read"]).await;
        let (_, users) = s.call("GET", "/api/v1/users", &admin, None).await;
        let id = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == "dave")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, b) = s
            .call("POST", &format!("/api/v1/users/{id}/disable"), &dave, None)
            .await;
        assert_eq!(status, 403, "{b}");
        let me = s.call("GET", "/api/v1/auth/me", &admin, None).await.1;
        let (status, b) = s
            .call(
                "POST",
                &format!("/api/v1/users/{}/disable", me["user_id"].as_str().unwrap()),
                &admin,
                None,
            )
            .await;
        assert_eq!(status, 409, "{b}");

        let (status, b) = s
            .call("POST", &format!("/api/v1/users/{id}/disable"), &admin, None)
            .await;
        assert_eq!((status, b["disabled"].as_bool()), (200, Some(true)), "{b}");
        let (status, _) = s.call("GET", "/api/v1/auth/me", &dave, None).await;
        assert_eq!(status, 401, "a disabled account's token stops");
        let resp = s
            .http
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": "dave", "password": "user-password-1234"}))
            .send()
            .await
            .unwrap();
        let (status, b) = json(resp).await;
        assert_eq!(status, 403, "{b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains("disabled"),
            "{b}"
        );
        let resp = s
            .http
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": "dave", "password": "not-the-password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            401,
            "a wrong password does not learn that it is disabled"
        );

        let (status, b) = s
            .call("POST", &format!("/api/v1/users/{id}/enable"), &admin, None)
            .await;
        assert_eq!((status, b["disabled"].as_bool()), (200, Some(false)), "{b}");
        let (status, _) = s.call("GET", "/api/v1/auth/me", &dave, None).await;
        assert_eq!(status, 200, "enabled again, its token works");
        s.stop().await;
    }
}
