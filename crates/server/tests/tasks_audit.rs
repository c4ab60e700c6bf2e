//! The task queue and the central audit log through the real gateway over HTTP, on
//! every database backend: auth events of the identity service and storage
//! mutations arrive in the tasks service's hash-chained log, and an edit made
//! behind the server's back is found by verify.

mod common;

use std::time::Duration;

use common::{ADMIN_PASSWORD, TestServer, insert_node};
use lattice_core::db::{Db, testing};
use serde_json::{Value, json};

async fn audit_actions(s: &TestServer, token: &str, want: &[&str]) -> Vec<Value> {
    // Other services' events reach the log within a forwarding interval.
    for _ in 0..100 {
        let (status, page) = s.call("GET", "/api/v1/audit?limit=1000", token, None).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap().clone();
        // `action` or `action!outcome`.
        let actions: Vec<String> = entries
            .iter()
            .flat_map(|e| {
                let a = e["action"].as_str().unwrap();
                [
                    a.to_owned(),
                    format!("{a}!{}", e["outcome"].as_str().unwrap()),
                ]
            })
            .collect();
        if want.iter().all(|w| actions.iter().any(|a| a == w)) {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("audit log never showed all of {want:?}");
}

#[tokio::test]
async fn tasks_over_rest_and_one_audit_chain_for_every_service() {
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let s = TestServer::start_on(&url, guard, &[]).await;
        let admin = s.admin_token(&["*"]).await;
        let reader = s.admin_token(&["tasks:read"]).await;

        // Work only goes to the org's own nodes.
        let (status, err) = s
            .call("POST", "/api/v1/tasks", &admin, Some(json!({"node": "0190c3f0-0000-7000-8000-00000000dead", "kind": "facts.refresh"})))
            .await;
        assert_eq!(status, 404, "{err}");
        // A node row as enrollment leaves it (the agent tests enroll for real).
        let me = s.call("GET", "/api/v1/auth/me", &admin, None).await.1;
        insert_node(
            &url,
            "0190c3f0-0000-7000-8000-000000000001",
            me["org_id"].as_str().unwrap(),
        )
        .await;

        // Enqueue, idempotently.
        let body = json!({"node": "0190c3f0-0000-7000-8000-000000000001", "kind": "exec",
            "payload": {"argv": ["uptime"]}, "idempotency_key": "k-1"});
        let (status, t) = s
            .call("POST", "/api/v1/tasks", &admin, Some(body.clone()))
            .await;
        assert_eq!(status, 201, "{backend:?}: {t}");
        assert_eq!(t["state"], "queued");
        assert_eq!(t["payload"]["argv"][0], "uptime");
        let (status, again) = s.call("POST", "/api/v1/tasks", &admin, Some(body)).await;
        assert_eq!((status, &again["id"]), (200, &t["id"]));
        let id = t["id"].as_str().unwrap();

        // Bad input names the field; a read-only token may not enqueue or cancel.
        let (status, err) = s
            .call(
                "POST",
                "/api/v1/tasks",
                &admin,
                Some(json!({"node": "0190c3f0-0000-7000-8000-000000000001", "kind": "exec", "payload": {"argv": "ls"}})),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("payload.argv"),
            "{err}"
        );
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/tasks",
                &reader,
                Some(json!({"node": "0190c3f0-0000-7000-8000-000000000001", "kind": "facts.refresh"})),
            )
            .await;
        assert_eq!(status, 403);
        let (status, _) = s
            .call("POST", &format!("/api/v1/tasks/{id}/cancel"), &reader, None)
            .await;
        assert_eq!(status, 403);
        let (status, _) = s.call("GET", "/api/v1/audit", &reader, None).await;
        assert_eq!(status, 403, "audit needs audit:read");
        let (status, _) = s.call("GET", "/api/v1/tasks", "lat_bogus", None).await;
        assert_eq!(status, 401);

        let (status, list) = s
            .call("GET", "/api/v1/tasks?state=queued", &reader, None)
            .await;
        assert_eq!((status, list["tasks"].as_array().unwrap().len()), (200, 1));
        let (status, got) = s
            .call("GET", &format!("/api/v1/tasks/{id}"), &reader, None)
            .await;
        assert_eq!((status, &got["id"]), (200, &t["id"]));
        let (status, cancelled) = s
            .call("POST", &format!("/api/v1/tasks/{id}/cancel"), &admin, None)
            .await;
        assert_eq!(
            (status, cancelled["state"].as_str()),
            (200, Some("cancelled"))
        );
        let (status, again) = s
            .call("POST", &format!("/api/v1/tasks/{id}/cancel"), &admin, None)
            .await;
        assert_eq!(status, 409, "{again}");

        // A failed login, a bucket and a task: three services, one chain.
        let resp = s
            .http
            .post(s.url("/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": "wrong-password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let (status, _) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &admin,
                Some(json!({"name": "audited", "surface": "kv"})),
            )
            .await;
        assert_eq!(status, 201);
        let entries = audit_actions(
            &s,
            &admin,
            &[
                "auth.login!failure",
                "token.create",
                "bucket.create",
                "task.create",
                "task.cancel",
            ],
        )
        .await;
        let failed = entries
            .iter()
            .find(|e| e["action"] == "auth.login" && e["outcome"] == "failure")
            .expect("the failed login is audited");
        assert_eq!(failed["client_ip"], "127.0.0.1");
        for pair in entries.windows(2) {
            assert_eq!(
                pair[1]["prev_hash"], pair[0]["hash"],
                "{backend:?}: entries link"
            );
        }
        let (status, v) = s.call("GET", "/api/v1/audit/verify", &admin, None).await;
        assert_eq!(status, 200);
        assert_eq!(v["ok"], true, "{backend:?}: {v}");
        let total = v["entries"].as_i64().unwrap();
        assert!(total >= entries.len() as i64);

        // Someone edits a row directly in the database: verify names the entry.
        let victim = entries
            .iter()
            .find(|e| e["action"] == "bucket.create")
            .unwrap()["seq"]
            .as_i64()
            .unwrap();
        let db = Db::connect(&url, 1).await.unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'failure' WHERE seq = $1")
            .bind(victim)
            .execute(db.pool())
            .await
            .unwrap();
        db.close().await;
        let (status, v) = s.call("GET", "/api/v1/audit/verify", &admin, None).await;
        assert_eq!(status, 200);
        assert_eq!(v["ok"], false, "{backend:?}: {v}");
        assert_eq!(v["broken_seq"].as_i64(), Some(victim));
        assert!(v["reason"].as_str().unwrap().contains("edited"), "{v}");

        // The audit log pages by sequence.
        let (_, page) = s
            .call("GET", "/api/v1/audit?after=1&limit=2", &admin, None)
            .await;
        let seqs: Vec<i64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(page["next_after"], 3);
        let _ = ADMIN_PASSWORD;
        s.stop().await;
    }
}

/// The tasks service checks a task's node against the caller's org itself: a
/// request signed for another org, sent straight to its gRPC port (what a correct
/// gateway would never send), is refused as if the node did not exist.
#[tokio::test]
async fn the_tasks_service_refuses_work_for_another_orgs_node() {
    use lattice_core::auth::{AuthMethod, InternalAuth, Principal};
    use lattice_proto::tasks::v1::EnqueueRequest;
    use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
    const SECRET: &str = "tasks-ownership-test-internal-secret";
    for backend in testing::backends() {
        let (url, guard) = testing::fresh_url(backend).await;
        let s = TestServer::start_on(&url, guard, &[("JWT_SECRET", SECRET)]).await;
        let admin = s.admin_token(&["*"]).await;
        let me = s.call("GET", "/api/v1/auth/me", &admin, None).await.1;
        let org = me["org_id"].as_str().unwrap().to_owned();
        insert_node(&url, "0190c3f0-0000-7000-8000-0000000000a1", &org).await;

        let internal = InternalAuth::new(SECRET.as_bytes());
        let addr = s.running().tasks_addr.expect("tasks runs in this process");
        let mut tasks = TaskServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let as_user = |org_id: &str, username: &str| Principal {
            sub: "user-forged".into(),
            username: username.into(),
            org_id: org_id.into(),
            scopes: vec!["tasks:write".into()],
            auth: AuthMethod::Token,
            credential_id: "t".into(),
        };
        let enqueue = |p: &Principal| {
            lattice_core::grpc::request(
                &internal,
                p,
                None,
                EnqueueRequest {
                    node_id: "0190c3f0-0000-7000-8000-0000000000a1".into(),
                    kind: "facts.refresh".into(),
                    ..Default::default()
                },
            )
        };
        let as_org = |org_id: &str| as_user(org_id, "admin");
        let refused = tasks
            .enqueue(enqueue(&as_org("another-org")))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::NotFound,
            "{backend:?}: {refused:?}"
        );
        assert!(refused.message().contains("node"), "{refused:?}");
        // In the node's own org the policy decides: a user no policy permits is
        // refused by the policy service (default deny), the admin (in the admins
        // group, which the seeded policy permits) is served.
        let refused = tasks
            .enqueue(enqueue(&as_user(&org, "mallory")))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("policy denies RunTask"),
            "{refused:?}"
        );
        let made = tasks.enqueue(enqueue(&as_org(&org))).await.unwrap();
        assert!(made.into_inner().created);
        // Nothing was queued for the other org.
        let (status, page) = s.call("GET", "/api/v1/tasks?limit=100", &admin, None).await;
        assert_eq!(status, 200);
        assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
        // The state filter is a task state or nothing.
        let (status, page) = s
            .call("GET", "/api/v1/tasks?state=queued", &admin, None)
            .await;
        assert_eq!((status, page["tasks"].as_array().unwrap().len()), (200, 1));
        let (status, err) = s
            .call("GET", "/api/v1/tasks?state=stuck", &admin, None)
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("state: \"stuck\""),
            "{err}"
        );
        s.stop().await;
    }
}
