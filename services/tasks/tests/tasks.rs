//! The task queue, audit chain and outbox, written once and run on SQLite always and
//! on Postgres when `LATTICE_TEST_DATABASE_URL` is set.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lattice_core::audit::{AuditEvent, Outcome};
use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::db::{self, Backend, Db, testing};
use lattice_proto::tasks::v1 as pb;
use lattice_tasks::input::{EnqueueInput, TaskFilter};
use lattice_tasks::store::{Completion, Store};
use lattice_tasks::{TaskError, Tasks};

struct Env {
    tasks: Tasks,
    db: Db,
    _guard: Option<testing::tempfile_guard::Guard>,
}

async fn env(backend: Backend, lease_ms: i64, outbox: bool) -> Env {
    let (db, guard) = testing::fresh(backend).await;
    db::migrate(&db, &lattice_tasks::migration_sets(), true)
        .await
        .unwrap();
    let tasks = Tasks::new(
        Store::new(db.clone(), outbox),
        Cache::local(),
        lease_ms,
        Arc::new(OrgOneNodes),
    );
    Env {
        tasks,
        db,
        _guard: guard,
    }
}

/// The tunnel service's answer as this crate's tests need it: nodes named
/// `node-*` are in org-1, nothing else exists. The real tunnel service answers in
/// crates/server/tests (a task for another org's node is refused there too).
struct OrgOneNodes;

#[async_trait::async_trait]
impl lattice_tasks::nodes::NodeDirectory for OrgOneNodes {
    async fn check_may_run(
        &self,
        ctx: &RequestContext,
        node_id: &str,
        _kind: &str,
    ) -> Result<(), TaskError> {
        if ctx.principal.org_id == "org-1" && node_id.starts_with("node-") {
            Ok(())
        } else {
            Err(TaskError::NotFound(format!("node {node_id:?}")))
        }
    }
}

fn ctx(p: &Principal, client_ip: &str) -> RequestContext {
    RequestContext {
        principal: p.clone(),
        client_ip: client_ip.to_owned(),
    }
}

fn op(scopes: &[&str]) -> Principal {
    Principal {
        sub: "user-1".into(),
        username: "alice".into(),
        org_id: "org-1".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        auth: AuthMethod::Token,
        credential_id: "t".into(),
    }
}

fn tunnel() -> Principal {
    Principal::service("tunnel")
}

/// An `exec` request for `node` with idempotency key `key`, as the adapter gets it.
fn exec_req(node: &str, key: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        node_id: node.into(),
        kind: "exec".into(),
        payload_json: r#"{"argv":["uptime"]}"#.into(),
        idempotency_key: key.into(),
        max_attempts: 0,
    }
}

/// `req`, validated as the gRPC adapter does.
fn input(req: pb::EnqueueRequest) -> EnqueueInput {
    EnqueueInput::try_from(req).expect("a valid enqueue request")
}

/// An `exec` task for `node` with idempotency key `key`.
fn exec(node: &str, key: &str) -> EnqueueInput {
    input(exec_req(node, key))
}

/// A `facts.refresh` task for `node`.
fn refresh(node: &str) -> EnqueueInput {
    input(pb::EnqueueRequest {
        kind: "facts.refresh".into(),
        payload_json: "{}".into(),
        ..exec_req(node, "")
    })
}

/// Tasks of the caller's org on `node` in `state` ("" for any), as listed.
fn filter(node: &str, state: &str) -> TaskFilter {
    TaskFilter::try_from(pb::ListTasksRequest {
        node_id: node.into(),
        state: pb::TaskState::from_name(state)
            .unwrap_or(pb::TaskState::Unspecified)
            .into(),
        before: String::new(),
        limit: 10,
    })
    .expect("a valid filter")
}

fn done(id: &str, epoch: i64, node: &str) -> Completion {
    Completion {
        task_id: id.into(),
        epoch,
        node_id: node.into(),
        ok: true,
        result: r#"{"exit_code":0}"#.into(),
        error_code: String::new(),
        error: String::new(),
    }
}

async fn enqueue_validates_and_deduplicates(backend: Backend) {
    let e = env(backend, 30_000, false).await;
    let w = op(&["tasks:write"]);
    let (t, created) = e
        .tasks
        .enqueue(&ctx(&w, "10.0.0.1"), exec("node-1", "k1"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(t.state, "queued");
    assert_eq!(t.max_attempts, 3);
    let (again, created) = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-1", "k1"))
        .await
        .unwrap();
    assert!(!created, "{backend:?}: same key, same task");
    assert_eq!(again.id, t.id);

    // Bad requests are refused where the adapter validates them.
    let mut bad = exec_req("node-1", "");
    bad.kind = "reboot".into();
    let err = EnqueueInput::try_from(bad).unwrap_err();
    assert!(err.to_string().starts_with("kind:"), "{err}");
    let mut bad = exec_req("node-1", "");
    bad.payload_json = r#"{"argv":[]}"#.into();
    assert!(
        matches!(EnqueueInput::try_from(bad), Err(TaskError::Invalid(m)) if m.contains("payload.argv"))
    );
    let mut bad = exec_req("node 1; drop", "");
    bad.payload_json = "{}".into();
    assert!(matches!(
        EnqueueInput::try_from(bad),
        Err(TaskError::Invalid(_))
    ));

    // Forbidden calls are refused.
    let r = op(&["tasks:read"]);
    assert!(
        matches!(e.tasks.enqueue(&ctx(&r, ""), exec("node-1", "")).await, Err(TaskError::MissingScope(s)) if s == "tasks:write")
    );
    assert!(matches!(
        e.tasks.claim(&w, "node-1", 1).await,
        Err(TaskError::Forbidden(_))
    ));
    assert!(matches!(
        e.tasks
            .claim(&Principal::service("storage"), "node-1", 1)
            .await,
        Err(TaskError::Forbidden(_))
    ));
    assert!(matches!(
        e.tasks.list_audit(&w, 0, 10, "").await,
        Err(TaskError::MissingScope(_))
    ));
    assert!(matches!(
        e.tasks.append_audit(&w, vec![]).await,
        Err(TaskError::Forbidden(_))
    ));

    // Other orgs see nothing.
    let mut other = op(&["*"]);
    other.org_id = "org-2".into();
    assert!(matches!(
        e.tasks.get(&other, &t.id).await,
        Err(TaskError::NotFound(_))
    ));
    assert!(
        e.tasks
            .list(&other, &filter("", ""))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        e.tasks
            .list(&r, &filter("node-1", "queued"))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn claims_are_exclusive_per_kind_and_fenced_by_epoch(backend: Backend) {
    let e = env(backend, 300, false).await;
    let w = op(&["tasks:write"]);
    let (t1, _) = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-a", ""))
        .await
        .unwrap();
    let facts = refresh("node-a");
    let (t2, _) = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-a", ""))
        .await
        .unwrap();
    let (t3, _) = e.tasks.enqueue(&ctx(&w, ""), facts).await.unwrap();

    // One exec at a time; the facts task runs alongside it.
    let claimed = e.tasks.claim(&tunnel(), "node-a", 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec![t1.id.as_str(), t3.id.as_str()], "{backend:?}");
    assert_eq!(claimed[0].epoch, 1);
    assert!(
        e.tasks
            .claim(&tunnel(), "node-a", 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Heartbeats keep the lease; a wrong epoch is reported stale.
    let stale = e
        .tasks
        .heartbeat(
            &tunnel(),
            "node-a",
            &[(t1.id.clone(), 1), (t3.id.clone(), 7)],
        )
        .await
        .unwrap();
    assert_eq!(stale, vec![(t3.id.clone(), 7)]);

    // The agent goes quiet: the lease runs out and the task is rescued.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let nodes = e.tasks.store().rescue_expired(1).await.unwrap();
    assert!(nodes.contains(&"node-a".to_owned()));
    let rescued = e.tasks.get(&w, &t1.id).await.unwrap();
    assert_eq!(
        (rescued.state.as_str(), rescued.error_code.as_str()),
        ("queued", "lease_expired")
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = e.tasks.claim(&tunnel(), "node-a", 10).await.unwrap();
    let rerun = again
        .iter()
        .find(|t| t.id == t1.id)
        .expect("rescued task runs again");
    assert_eq!(rerun.epoch, 2);

    // The first run's late result is refused by the fence; the second run's counts.
    let late = e
        .tasks
        .complete(&tunnel(), done(&t1.id, 1, "node-a"))
        .await
        .unwrap_err();
    assert!(
        matches!(&late, TaskError::Fenced(m) if m.contains("epoch 1")),
        "{late}"
    );
    let ok = e
        .tasks
        .complete(&tunnel(), done(&t1.id, 2, "node-a"))
        .await
        .unwrap();
    assert_eq!(
        (ok.state.as_str(), ok.epoch, ok.attempts),
        ("succeeded", 2, 2)
    );
    // A result for another node's task is not found.
    assert!(matches!(
        e.tasks.complete(&tunnel(), done(&t2.id, 1, "node-b")).await,
        Err(TaskError::NotFound(_))
    ));
    // Now the second exec may run.
    let next = e.tasks.claim(&tunnel(), "node-a", 10).await.unwrap();
    assert!(next.iter().any(|t| t.id == t2.id), "{backend:?}: {next:?}");

    // The audit log saw the rejection.
    let admin = op(&["*"]);
    let log = e.tasks.list_audit(&admin, 0, 100, "").await.unwrap();
    let actions: Vec<_> = log.iter().map(|x| x.event.action.as_str()).collect();
    for a in [
        "task.create",
        "task.rescued",
        "task.result_rejected",
        "task.succeeded",
    ] {
        assert!(
            actions.contains(&a),
            "{backend:?}: {a} missing from {actions:?}"
        );
    }
}

async fn last_attempt_goes_dead_and_cancel_stops_work(backend: Backend) {
    let e = env(backend, 100, false).await;
    let w = op(&["tasks:write", "tasks:read"]);
    let mut once = exec_req("node-d", "");
    once.max_attempts = 1;
    let (t, _) = e.tasks.enqueue(&ctx(&w, ""), input(once)).await.unwrap();
    assert_eq!(
        e.tasks.claim(&tunnel(), "node-d", 1).await.unwrap().len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.tasks.store().rescue_expired(1).await.unwrap();
    let dead = e.tasks.get(&w, &t.id).await.unwrap();
    assert_eq!(dead.state, "dead", "{backend:?}");
    assert!(dead.error.contains("giving up"), "{}", dead.error);

    let (c, _) = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-d", ""))
        .await
        .unwrap();
    let claimed = e.tasks.claim(&tunnel(), "node-d", 1).await.unwrap();
    let cancelled = e.tasks.cancel(&ctx(&w, ""), &c.id).await.unwrap();
    assert_eq!(cancelled.state, "cancelled");
    // The running agent learns on its next heartbeat, and its result is refused.
    let stale = e
        .tasks
        .heartbeat(&tunnel(), "node-d", &[(c.id.clone(), claimed[0].epoch)])
        .await
        .unwrap();
    assert_eq!(stale.len(), 1);
    assert!(matches!(
        e.tasks
            .complete(&tunnel(), done(&c.id, claimed[0].epoch, "node-d"))
            .await,
        Err(TaskError::Fenced(_))
    ));
    let err = e.tasks.cancel(&ctx(&w, ""), &c.id).await.unwrap_err();
    assert!(
        matches!(&err, TaskError::Conflict(m) if m.contains("already cancelled")),
        "{err}"
    );
}

async fn concurrent_claimers_never_share_a_task(backend: Backend) {
    let e = env(backend, 30_000, false).await;
    let w = op(&["tasks:write"]);
    let mut ids = Vec::new();
    for i in 0..40 {
        let f = refresh(&format!("node-{}", i % 4));
        // facts.refresh is exclusive per node: finish each claimed one.
        ids.push(e.tasks.enqueue(&ctx(&w, ""), f).await.unwrap().0.id);
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for worker in 0..8 {
        let tasks = e.tasks.clone();
        let seen = seen.clone();
        handles.push(tokio::spawn(async move {
            let node = format!("node-{}", worker % 4);
            for _ in 0..200 {
                let got = tasks.claim(&tunnel(), &node, 4).await.unwrap();
                if got.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                for t in got {
                    seen.lock().unwrap().push(t.id.clone());
                    tasks
                        .complete(&tunnel(), done(&t.id, t.epoch, &node))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "{backend:?}: a task was claimed twice");
    assert_eq!(seen.len(), ids.len(), "{backend:?}: every task ran");
}

async fn a_result_claims_the_next_task_in_the_same_statement(backend: Backend) {
    let e = env(backend, 30_000, false).await;
    let w = op(&["tasks:write", "tasks:read"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            e.tasks
                .enqueue(&ctx(&w, ""), exec("node-n", ""))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let first = e.tasks.claim(&tunnel(), "node-n", 16).await.unwrap();
    assert_eq!(first.len(), 1, "{backend:?}: one exec at a time");
    let facts = refresh("node-n");
    let (f, _) = e.tasks.enqueue(&ctx(&w, ""), facts).await.unwrap();

    // The result is recorded and the next exec starts with it, alongside the
    // facts task (its kind has nothing running).
    let (t, next) = e
        .tasks
        .complete_and_claim(&tunnel(), done(&ids[0], 1, "node-n"), 16)
        .await
        .unwrap();
    assert_eq!(
        (t.id.as_str(), t.state.as_str()),
        (ids[0].as_str(), "succeeded")
    );
    let next = next.expect("a claim was made");
    let got: Vec<_> = next
        .iter()
        .map(|t| (t.id.as_str(), t.state.as_str(), t.epoch))
        .collect();
    assert_eq!(
        got,
        vec![
            (ids[1].as_str(), "running", 1),
            (f.id.as_str(), "running", 1)
        ],
        "{backend:?}"
    );
    assert!(next.iter().all(|t| t.lease_until_ms > t.started_at_ms));

    // A stale result records nothing and starts nothing.
    let err = e
        .tasks
        .complete_and_claim(&tunnel(), done(&ids[0], 1, "node-n"), 16)
        .await
        .unwrap_err();
    assert!(matches!(err, TaskError::Fenced(_)), "{backend:?}: {err}");
    assert_eq!(e.tasks.get(&w, &ids[2]).await.unwrap().state, "queued");
    // Nothing to claim for: the result alone.
    let (_, none) = e
        .tasks
        .complete_and_claim(&tunnel(), done(&f.id, 1, "node-n"), 0)
        .await
        .unwrap();
    assert!(none.is_none(), "no claim asked for, none made");
    assert!(matches!(
        e.tasks
            .complete_and_claim(&tunnel(), done(&ids[1], 1, "node-n"), 65)
            .await,
        Err(TaskError::Invalid(_))
    ));
    // Only the tunnel service records results.
    assert!(matches!(
        e.tasks
            .complete_and_claim(&op(&["*"]), done(&ids[1], 1, "node-n"), 1)
            .await,
        Err(TaskError::Forbidden(_))
    ));
    let (_, last) = e
        .tasks
        .complete_and_claim(&tunnel(), done(&ids[1], 1, "node-n"), 16)
        .await
        .unwrap();
    assert_eq!(
        last.unwrap()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec![ids[2].as_str()]
    );
    // The queue is empty: a claim was made and found nothing.
    let (_, empty) = e
        .tasks
        .complete_and_claim(&tunnel(), done(&ids[2], 1, "node-n"), 16)
        .await
        .unwrap();
    assert_eq!(empty.map(|v| v.len()), Some(0), "{backend:?}");
    let log = e.tasks.list_audit(&op(&["*"]), 0, 100, "").await.unwrap();
    let succeeded = log
        .iter()
        .filter(|x| x.event.action == "task.succeeded")
        .count();
    assert_eq!(
        succeeded, 4,
        "{backend:?}: one audit event per recorded result"
    );
}

async fn results_that_claim_race_plain_claims_safely(backend: Backend) {
    let e = env(backend, 30_000, false).await;
    let w = op(&["tasks:write"]);
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(
            e.tasks
                .enqueue(&ctx(&w, ""), exec(&format!("node-{}", i % 3), ""))
                .await
                .unwrap()
                .0
                .id,
        );
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for worker in 0..6 {
        let tasks = e.tasks.clone();
        let seen = seen.clone();
        handles.push(tokio::spawn(async move {
            let node = format!("node-{}", worker % 3);
            let mut idle = 0;
            let mut held = Vec::new();
            while idle < 200 {
                if held.is_empty() {
                    held = tasks.claim(&tunnel(), &node, 4).await.unwrap();
                }
                let Some(t) = held.pop() else {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                };
                seen.lock().unwrap().push(t.id.clone());
                // Half the workers take their next task with the result.
                let max = if worker % 2 == 0 { 4 } else { 0 };
                let (_, more) = tasks
                    .complete_and_claim(&tunnel(), done(&t.id, t.epoch, &node), max)
                    .await
                    .unwrap();
                held.extend(more.into_iter().flatten());
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "{backend:?}: a task was claimed twice");
    assert_eq!(seen.len(), ids.len(), "{backend:?}: every task ran");
}

fn event(i: usize) -> (String, i64, AuditEvent) {
    (
        uuid::Uuid::now_v7().to_string(),
        1_700_000_000_000 + i as i64,
        AuditEvent {
            org_id: "org-1".into(),
            actor: "user-1".into(),
            action: "auth.login".into(),
            target: "user-1".into(),
            outcome: Outcome::Success,
            client_ip: "10.0.0.9".into(),
            detail: "{}".into(),
        },
    )
}

async fn audit_chain_verifies_and_detects_edits(backend: Backend) {
    let e = env(backend, 30_000, false).await;
    let svc = Principal::service("identity");
    let events: Vec<_> = (0..25).map(event).collect();
    assert_eq!(
        e.tasks.append_audit(&svc, events.clone()).await.unwrap(),
        25
    );
    // The same event ids again are recorded once.
    assert_eq!(
        e.tasks
            .append_audit(&svc, events[..5].to_vec())
            .await
            .unwrap(),
        0
    );
    let admin = op(&["audit:read"]);
    let v = e.tasks.verify_audit(&admin).await.unwrap();
    assert_eq!((v.entries, v.broken.clone()), (25, None), "{backend:?}");
    let page = e.tasks.list_audit(&admin, 10, 5, "").await.unwrap();
    assert_eq!(
        page.iter().map(|x| x.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(
        page[0].prev_hash,
        e.tasks.list_audit(&admin, 9, 1, "").await.unwrap()[0].hash
    );
    // The newest first (the dashboard's overview).
    let recent = e.tasks.recent_audit(&admin, 3).await.unwrap();
    assert_eq!(
        recent.iter().map(|x| x.seq).collect::<Vec<_>>(),
        vec![25, 24, 23]
    );
    assert!(e.tasks.recent_audit(&op(&["tasks:read"]), 3).await.is_err());

    // Someone with database access edits an entry: verify names it.
    sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 7")
        .execute(e.db.pool())
        .await
        .unwrap();
    let v = e.tasks.verify_audit(&admin).await.unwrap();
    let (seq, why) = v.broken.expect("edit detected");
    assert_eq!(seq, 7, "{backend:?}");
    assert!(why.contains("edited"), "{why}");
    // Recomputing that entry's hash moves the break to the next link.
    let entry = e
        .tasks
        .list_audit(&op(&["*"]), 6, 1, "")
        .await
        .unwrap()
        .remove(0);
    let forged = lattice_tasks::store::entry_hash(
        &entry.prev_hash,
        7,
        &entry.event_id,
        entry.at_ms,
        &entry.event,
    );
    sqlx::query("UPDATE audit_log SET hash = $1 WHERE seq = 7")
        .bind(&forged)
        .execute(e.db.pool())
        .await
        .unwrap();
    let v = e.tasks.verify_audit(&admin).await.unwrap();
    assert_eq!(v.broken.unwrap().0, 8, "{backend:?}");
    // Dropping the newest entries is caught by the head.
    let e2 = env(backend, 30_000, false).await;
    e2.tasks
        .append_audit(&svc, (0..3).map(event).collect())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(e2.db.pool())
        .await
        .unwrap();
    let v = e2.tasks.verify_audit(&admin).await.unwrap();
    assert!(v.broken.unwrap().1.contains("removed"), "{backend:?}");
}

async fn outbox_pushes_at_least_once_with_retries(backend: Backend) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let e = env(backend, 30_000, true).await;
    // A webhook that fails its first two calls.
    let calls = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(std::sync::Mutex::new(Vec::<(String, String, String)>::new()));
    let app = {
        let (calls, got) = (calls.clone(), got.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let (calls, got) = (calls.clone(), got.clone());
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        return http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    got.lock()
                        .unwrap()
                        .push((h("x-lattice-event-id"), h("x-api-key"), body));
                    http::StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let w = op(&["tasks:write"]);
    let (t, _) = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-o", ""))
        .await
        .unwrap();
    let target = lattice_tasks::outbox::PushTarget {
        url: format!("http://{addr}/hook"),
        auth: Some(lattice_tasks::outbox::parse_auth_header("X-Api-Key: s3cret").unwrap()),
        retention_ms: 86_400_000,
    };
    let client = reqwest::Client::builder().build().unwrap();
    for _ in 0..3 {
        lattice_tasks::outbox::push_once(e.tasks.store(), &target, &client)
            .await
            .unwrap();
        // Failed events come back due after their backoff (1-2 s at first).
        sqlx::query("UPDATE outbox SET next_attempt_ms = 0 WHERE delivered_at_ms = 0")
            .execute(e.db.pool())
            .await
            .unwrap();
    }
    let first = got.lock().unwrap().clone();
    assert_eq!(
        first.len(),
        1,
        "{backend:?}: one event, delivered once after two failures"
    );
    let (id, key, body) = &first[0];
    assert!(!id.is_empty());
    assert_eq!(key, "s3cret");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["type"], "task.create");
    assert_eq!(body["target"], t.id.as_str());
    assert_eq!(body["id"], id.as_str());
    let (attempts, err): (i64, String) =
        sqlx::query_as("SELECT attempts, last_error FROM outbox WHERE id = $1")
            .bind(id)
            .fetch_one(e.db.pool())
            .await
            .unwrap();
    assert_eq!((attempts, err.as_str()), (3, ""));
    assert_eq!(body["org_id"], "org-1");

    // The result's event carries the task's org too (on Postgres the result and
    // its events are one statement that reads the org from the task row).
    let c = e.tasks.claim(&tunnel(), "node-o", 1).await.unwrap();
    e.tasks
        .complete(&tunnel(), done(&c[0].id, c[0].epoch, "node-o"))
        .await
        .unwrap();
    lattice_tasks::outbox::push_once(e.tasks.store(), &target, &client)
        .await
        .unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{backend:?}: the result's event was pushed");
    let body: serde_json::Value = serde_json::from_str(&got[1].2).unwrap();
    assert_eq!(body["type"], "task.succeeded");
    assert_eq!(body["org_id"], "org-1");
    assert_eq!(body["target"], t.id.as_str());
    assert_eq!(body["actor"], "node:node-o");
}

#[test]
fn auth_header_forms() {
    let (n, v) = lattice_tasks::outbox::parse_auth_header("Bearer abc").unwrap();
    assert_eq!(
        (n.as_str(), v.to_str().unwrap()),
        ("authorization", "Bearer abc")
    );
    let (n, _) = lattice_tasks::outbox::parse_auth_header("X-Token: abc").unwrap();
    assert_eq!(n.as_str(), "x-token");
}

async fn concurrent_enqueues_each_keep_their_audit_and_outbox_events(backend: Backend) {
    let e = env(backend, 30_000, true).await;
    let w = op(&["tasks:write"]);
    // On Postgres, keyless enqueues that arrive together share statements.
    let mut handles = Vec::new();
    for i in 0..120 {
        let (tasks, w) = (e.tasks.clone(), w.clone());
        handles.push(tokio::spawn(async move {
            tasks
                .enqueue(&ctx(&w, "10.0.0.9"), exec(&format!("node-{}", i % 5), ""))
                .await
        }));
    }
    // A caller whose rows the database refuses (text cannot hold NUL) fails
    // alone, whatever statement it shared.
    let mut bad = w.clone();
    bad.sub = "user\0x".into();
    let refused = {
        let tasks = e.tasks.clone();
        tokio::spawn(async move {
            tasks
                .enqueue(&ctx(&bad, "10.0.0.9"), exec("node-0", ""))
                .await
        })
    };
    let mut ids = Vec::new();
    for h in handles {
        let (t, created) = h.await.unwrap().unwrap();
        assert!(created);
        assert_eq!(t.state, "queued");
        ids.push(t.id);
    }
    let refused = refused.await.unwrap();
    if backend == Backend::Postgres {
        assert!(matches!(refused, Err(TaskError::Db(_))), "{refused:?}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 120, "{backend:?}");
    let listed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE created_by = 'user-1'")
        .fetch_one(e.db.pool())
        .await
        .unwrap();
    assert_eq!(listed, 120, "{backend:?}");

    let admin = op(&["*"]);
    let log = e.tasks.list_audit(&admin, 0, 1000, "").await.unwrap();
    let mut targets: Vec<_> = log
        .iter()
        .filter(|x| x.event.action == "task.create" && x.event.actor == "user-1")
        .map(|x| {
            assert_eq!(x.event.client_ip, "10.0.0.9");
            assert_eq!(x.event.org_id, "org-1");
            x.event.target.clone()
        })
        .collect();
    targets.sort();
    assert_eq!(targets, ids, "{backend:?}: one audit event per task");
    let v = e.tasks.verify_audit(&admin).await.unwrap();
    assert_eq!(v.broken, None, "{backend:?}");

    let outbox: Vec<(String, String)> =
        sqlx::query_as("SELECT topic, payload FROM outbox WHERE topic = 'task.create'")
            .fetch_all(e.db.pool())
            .await
            .unwrap();
    let mut pushed: Vec<_> = outbox
        .iter()
        .filter_map(|(_, payload)| {
            let p: serde_json::Value = serde_json::from_str(payload).unwrap();
            (p["actor"] == "user-1").then(|| {
                assert_eq!(p["org_id"], "org-1", "{payload}");
                p["target"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    pushed.sort();
    assert_eq!(pushed, ids, "{backend:?}: one outbox event per task");
}

#[tokio::test]
async fn a_connection_the_database_ended_is_unavailable_then_replaced() {
    use lattice_core::error::CodedError as _;
    use sqlx::{Connection as _, Executor as _};
    if !testing::backends().contains(&Backend::Postgres) {
        return;
    }
    let e = env(Backend::Postgres, 30_000, false).await;
    let w = op(&["tasks:write"]);
    // Two connections: `a` goes back to the pool, `b` ends it from the server side
    // (as a database restart does) and leaves the pool.
    let mut a = e.db.pool().acquire().await.unwrap();
    let mut b = e.db.pool().acquire().await.unwrap();
    let pid: i64 = sqlx::query_scalar("SELECT CAST(pg_backend_pid() AS BIGINT)")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.execute(sqlx::AssertSqlSafe(format!(
        "SELECT pg_terminate_backend({pid})"
    )))
    .await
    .unwrap();
    b.detach().close().await.unwrap();
    // The dead connection was returned under a second ago, so it is used unpinged:
    // the call fails as unavailable (503, retry), not as an internal error.
    let err = e
        .tasks
        .enqueue(&ctx(&w, ""), exec("node-1", ""))
        .await
        .expect_err("the ended connection fails its statement");
    assert_eq!(err.code(), lattice_core::ErrorCode::Unavailable, "{err:?}");
    // The pool dropped it; the next call gets a new connection.
    e.tasks
        .enqueue(&ctx(&w, ""), exec("node-1", ""))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_enqueue_whose_caller_gave_up_while_queued_is_not_written() {
    use sqlx::Executor as _;
    if !testing::backends().contains(&Backend::Postgres) {
        return;
    }
    let e = env(Backend::Postgres, 30_000, false).await;
    let w = op(&["tasks:write"]);
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM tasks")
            .fetch_one(e.db.pool())
            .await
            .unwrap()
    };
    // Hold the table so the writer's statements stall.
    let mut lock = e.db.pool().begin().await.unwrap();
    lock.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let spawn = |node: &'static str| {
        let (tasks, w) = (e.tasks.clone(), w.clone());
        tokio::spawn(async move { tasks.enqueue(&ctx(&w, ""), exec(node, "")).await })
    };
    // These fill the writer's four statements (one at a time, so each has its own)...
    let mut stalled = Vec::new();
    for i in 1..=4_i64 {
        stalled.push(spawn("node-1"));
        // Until the database shows this statement waiting for the lock.
        let mut waiting = 0;
        for _ in 0..200 {
            waiting = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM pg_locks WHERE relation = 'tasks'::regclass AND NOT granted",
            )
            .fetch_one(e.db.pool())
            .await
            .unwrap();
            if waiting == i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(waiting, i, "statement {i} waits for the lock");
    }
    // ...so these wait in its queue, and their callers give up.
    for _ in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            e.tasks.enqueue(&ctx(&w, ""), exec("node-2", "")),
        )
        .await;
        assert!(r.is_err(), "the writer was stalled: {r:?}");
    }
    let waiting = spawn("node-3");
    lock.commit().await.unwrap();
    for h in stalled {
        h.await.unwrap().unwrap();
    }
    waiting.await.unwrap().unwrap();
    assert_eq!(
        count().await,
        5,
        "nothing was written for the callers that gave up"
    );
    let abandoned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE node_id = 'node-2'")
        .fetch_one(e.db.pool())
        .await
        .unwrap();
    assert_eq!(abandoned, 0);
}

lattice_core::store_test_suite!(
    enqueue_validates_and_deduplicates,
    claims_are_exclusive_per_kind_and_fenced_by_epoch,
    last_attempt_goes_dead_and_cancel_stops_work,
    concurrent_claimers_never_share_a_task,
    a_result_claims_the_next_task_in_the_same_statement,
    results_that_claim_race_plain_claims_safely,
    audit_chain_verifies_and_detects_edits,
    outbox_pushes_at_least_once_with_retries,
    concurrent_enqueues_each_keep_their_audit_and_outbox_events,
);
