//! The reviewed-change workflow's decisions, on SQLite always and on Postgres when
//! `LATTICE_TEST_DATABASE_URL` is set. The nodes, the task queue and the admin
//! count are stand-ins here (the node states and task outcomes each test sets);
//! the real tunnel, tasks service and agent are in `crates/server/tests`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::db::{self, Backend, Db, testing};
use lattice_policy::changes::service::{
    AUTO, Admins, Changes, FreshMfa, NodeState, NodeStates, Releases, TaskOutcome, TaskQueue,
};
use lattice_policy::changes::store::ChangeStore;
use lattice_policy::changes::{Base, Selector};
use lattice_policy::groups::StaticGroups;
use lattice_policy::store::Store;
use lattice_policy::{Policies, PolicyError};
use serde_json::{Value, json};

#[derive(Default)]
struct World {
    /// Node id -> (labels, firewall content; None: absent).
    nodes: BTreeMap<String, (BTreeMap<String, String>, Option<String>)>,
    /// Task id -> (node, payload, outcome).
    tasks: Vec<(String, String, Value, TaskOutcome)>,
    admins: usize,
    /// Users with TOTP whose last TOTP is older than 5 minutes.
    stale_mfa: Vec<String>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<World>>);

#[async_trait::async_trait]
impl NodeStates for Shared {
    async fn select(
        &self,
        _ctx: &RequestContext,
        selector: &Selector,
    ) -> Result<Vec<NodeState>, PolicyError> {
        let w = self.0.lock().unwrap();
        let state = |id: &String, fw: &Option<String>| NodeState {
            id: id.clone(),
            artifacts: BTreeMap::from([(
                "firewall".to_owned(),
                fw.as_deref().map_or_else(Base::absent, Base::of),
            )]),
            arch: "x86_64".into(),
        };
        match selector {
            Selector::Node(id) => match w.nodes.get(id) {
                Some((_, fw)) => Ok(vec![state(id, fw)]),
                None => Err(PolicyError::NotFound(format!("node {id:?}"))),
            },
            Selector::Labels(want) => Ok(w
                .nodes
                .iter()
                .filter(|(_, (labels, _))| want.iter().all(|(k, v)| labels.get(k) == Some(v)))
                .map(|(id, (_, fw))| state(id, fw))
                .collect()),
        }
    }
}

#[async_trait::async_trait]
impl TaskQueue for Shared {
    async fn enqueue(
        &self,
        _org: &str,
        node: &str,
        kind: &str,
        payload: Value,
        key: &str,
    ) -> Result<String, PolicyError> {
        assert!(kind == "firewall.apply" || kind == "agent.update", "{kind}");
        let mut w = self.0.lock().unwrap();
        let id = format!("task-{key}");
        if !w.tasks.iter().any(|t| t.0 == id) {
            w.tasks
                .push((id.clone(), node.to_owned(), payload, TaskOutcome::Pending));
        }
        Ok(id)
    }

    async fn outcome(&self, _org: &str, id: &str) -> Result<TaskOutcome, PolicyError> {
        let w = self.0.lock().unwrap();
        Ok(w.tasks
            .iter()
            .find(|t| t.0 == id)
            .map(|t| t.3.clone())
            .unwrap())
    }
}

#[async_trait::async_trait]
impl Releases for Shared {
    async fn manifest(
        &self,
        _ctx: &RequestContext,
        version: &str,
        arch: &str,
    ) -> Result<lattice_proto::release::Manifest, PolicyError> {
        Ok(lattice_proto::release::Manifest {
            version: version.into(),
            arch: arch.into(),
            sha256: "sha256:ab".into(),
            size: 1,
            signature: "c2ln".into(),
        })
    }
}

#[async_trait::async_trait]
impl Admins for Shared {
    async fn count(&self, _ctx: &RequestContext) -> Result<usize, PolicyError> {
        Ok(self.0.lock().unwrap().admins)
    }
}

#[async_trait::async_trait]
impl FreshMfa for Shared {
    async fn fresh(&self, ctx: &RequestContext, code: &str) -> Result<bool, PolicyError> {
        let stale = self
            .0
            .lock()
            .unwrap()
            .stale_mfa
            .contains(&ctx.principal.username);
        match code {
            "" => Ok(!stale),
            "123456" => Ok(true),
            _ => Err(PolicyError::BadCode("totp_code: wrong".into())),
        }
    }
}

struct Env {
    changes: Changes,
    world: Shared,
    db: Db,
    _guard: Option<testing::tempfile_guard::Guard>,
}

async fn env(backend: Backend) -> Env {
    let (db, guard) = testing::fresh(backend).await;
    db::migrate(&db, &lattice_policy::migration_sets(), true)
        .await
        .unwrap();
    // ann and bob are admins (the seeded policy permits them ApprovePlan); carol
    // is not.
    let groups = StaticGroups(HashMap::from([
        ("ann".to_owned(), vec!["admins".to_owned()]),
        ("bob".to_owned(), vec!["admins".to_owned()]),
        ("carol".to_owned(), vec![]),
    ]));
    let policies = Policies::new(
        Store::new(db.clone()),
        Cache::local(),
        Arc::new(groups),
        Arc::new(lattice_policy::nodes::NoNodes),
    );
    let world = Shared::default();
    world.0.lock().unwrap().admins = 2;
    let changes = Changes::new(
        ChangeStore::new(db.clone()),
        policies,
        Arc::new(world.clone()),
        Arc::new(world.clone()),
        Arc::new(world.clone()),
        Arc::new(world.clone()),
        Arc::new(lattice_core::audit::TableAudit::new(
            db.clone(),
            "policy_audit",
        )),
    )
    .with_releases(Arc::new(world.clone()));
    Env {
        changes,
        world,
        db,
        _guard: guard,
    }
}

fn user(name: &str, scopes: &[&str]) -> RequestContext {
    RequestContext {
        principal: Principal {
            sub: format!("id-{name}"),
            username: name.into(),
            org_id: "org-1".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            auth: AuthMethod::Token,
            credential_id: "t".into(),
        },
        client_ip: "10.0.0.9".into(),
    }
}

fn web_fw(ports: &str, selector: Value) -> Value {
    json!({"name": "web-fw", "kind": "firewall", "selector": selector,
        "spec": {"default": "drop", "rules": [{"action": "accept", "protocol": "tcp",
            "ports": ports, "from": "10.0.0.0/8", "comment": "ssh"}]}})
}

fn set_node(e: &Env, id: &str, env: &str, fw: Option<&str>) {
    e.world.0.lock().unwrap().nodes.insert(
        id.into(),
        (
            BTreeMap::from([("env".to_owned(), env.to_owned())]),
            fw.map(str::to_owned),
        ),
    );
}

fn finish(e: &Env, node: &str, outcome: TaskOutcome) {
    let mut w = e.world.0.lock().unwrap();
    for t in w.tasks.iter_mut().filter(|t| t.1 == node) {
        t.3 = outcome.clone();
    }
}

async fn audit_actions(db: &Db) -> Vec<(String, String)> {
    sqlx::query_as("SELECT action, outcome FROM policy_audit ORDER BY at_ms, id")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

async fn intents_are_validated_versioned_and_audited(backend: Backend) {
    let e = env(backend).await;
    let ann = user("ann", &["policy:read", "policy:write"]);
    let v1 = e
        .changes
        .put_intent(&ann, &web_fw("22", json!({"node": "n1"})))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = e
        .changes
        .put_intent(&ann, &web_fw("22,443", json!({"node": "n1"})))
        .await
        .unwrap();
    assert_eq!(v2.version, 2, "{backend:?}");
    let history = e.changes.intent_history(&ann, "web-fw").await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    // A bad document: 422 naming the fields, and nothing stored.
    let mut bad = web_fw("0", json!({"node": "n1"}));
    bad["spec"]["rules"][0]["from"] = json!("10.0.0.1/8");
    let err = e.changes.put_intent(&ann, &bad).await.unwrap_err();
    let PolicyError::Rejected(m) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains("spec.rules[0].ports") && m.contains("spec.rules[0].from"),
        "{m}"
    );
    assert_eq!(
        e.changes
            .intent_history(&ann, "web-fw")
            .await
            .unwrap()
            .len(),
        2
    );
    // Scopes.
    let reader = user("carol", &["policy:read"]);
    assert!(matches!(
        e.changes.put_intent(&reader, &web_fw("22", json!({"node": "n1"}))).await,
        Err(PolicyError::MissingScope(s)) if s == "policy:write"
    ));
    assert_eq!(e.changes.list_intents(&reader).await.unwrap().len(), 1);
    // Delete keeps the history.
    e.changes.delete_intent(&ann, "web-fw").await.unwrap();
    assert!(matches!(
        e.changes.get_intent(&ann, "web-fw").await,
        Err(PolicyError::NotFound(_))
    ));
    assert_eq!(
        e.changes
            .intent_history(&ann, "web-fw")
            .await
            .unwrap()
            .len(),
        3
    );
    let actions = audit_actions(&e.db).await;
    assert_eq!(
        actions.iter().filter(|(a, _)| a == "intent.put").count(),
        2,
        "{actions:?}"
    );
    assert!(actions.iter().any(|(a, _)| a == "intent.delete"));
}

async fn a_plan_is_approved_by_its_hash_by_someone_else_and_rolls_out_canary_first(
    backend: Backend,
) {
    let e = env(backend).await;
    let ann = user("ann", &["policy:read", "policy:write", "policy:approve"]);
    let bob = user("bob", &["policy:read", "policy:approve"]);
    let carol = user("carol", &["policy:read", "policy:approve"]);
    for id in ["n1", "n2", "n3"] {
        set_node(&e, id, "prod", None);
    }
    set_node(&e, "n9", "dev", None);
    e.changes
        .put_intent(&ann, &web_fw("22", json!({"labels": {"env": "prod"}})))
        .await
        .unwrap();
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    assert_eq!(plan.plan.state, "pending");
    assert_eq!(
        plan.targets
            .iter()
            .map(|t| (t.node.as_str(), t.wave))
            .collect::<Vec<_>>(),
        vec![("n1", 0), ("n2", 1), ("n3", 1)],
        "the first node is the canary"
    );
    assert!(
        plan.targets
            .iter()
            .all(|t| t.base_hash == "none" && !t.drift)
    );
    assert!(
        plan.targets[0]
            .diff
            .contains("+\t\tip saddr 10.0.0.0/8 tcp dport 22 accept comment \"ssh\"\n")
    );
    let id = plan.plan.id.clone();
    let hash = plan.plan.hash.clone();

    // A hash the approver did not review, the author (four eyes), a user without
    // a Cedar permit: all refused, nothing dispatched.
    assert!(matches!(
        e.changes.approve(&bob, &id, "sha256:00", "").await,
        Err(PolicyError::Conflict(m)) if m.contains("hash mismatch")
    ));
    assert!(matches!(
        e.changes.approve(&ann, &id, &hash, "").await,
        Err(PolicyError::Forbidden(m)) if m.contains("four eyes")
    ));
    assert!(matches!(
        e.changes.approve(&carol, &id, &hash, "").await,
        Err(PolicyError::Forbidden(m)) if m.contains("ApprovePlan")
    ));
    assert!(matches!(
        e.changes.approve(&user("dan", &["policy:read"]), &id, &hash, "").await,
        Err(PolicyError::MissingScope(s)) if s == "policy:approve"
    ));
    assert!(e.world.0.lock().unwrap().tasks.is_empty());

    // Bob's TOTP is older than 5 minutes: his code is needed, a wrong one refused.
    e.world.0.lock().unwrap().stale_mfa.push("bob".into());
    assert!(matches!(
        e.changes.approve(&bob, &id, &hash, "").await,
        Err(PolicyError::MfaRequired(_))
    ));
    assert!(matches!(
        e.changes.approve(&bob, &id, &hash, "000000").await,
        Err(PolicyError::BadCode(_))
    ));
    assert!(e.world.0.lock().unwrap().tasks.is_empty());

    // Bob approves the hash with his code: the canary's task is queued.
    let approved = e.changes.approve(&bob, &id, &hash, "123456").await.unwrap();
    assert_eq!(approved.plan.state, "applying", "{backend:?}");
    assert_eq!(approved.plan.decided_by, "bob");
    {
        let w = e.world.0.lock().unwrap();
        assert_eq!(w.tasks.len(), 1);
        assert_eq!(w.tasks[0].1, "n1");
        assert_eq!(w.tasks[0].2["hash"], json!(hash));
        assert_eq!(w.tasks[0].2["artifact"], json!(plan.targets[0].artifact));
    }
    // Approving twice: refused (single use).
    assert!(matches!(
        e.changes.approve(&bob, &id, &hash, "").await,
        Err(PolicyError::Conflict(m)) if m.contains("applying")
    ));
    // The canary succeeds: the rest go out; one fails: the plan halts.
    finish(&e, "n1", TaskOutcome::Succeeded("{\"after\":\"x\"}".into()));
    let p = e.changes.get_plan(&bob, &id).await.unwrap();
    assert_eq!(
        p.targets
            .iter()
            .map(|t| t.state.as_str())
            .collect::<Vec<_>>(),
        vec!["applied", "queued", "queued"]
    );
    finish(
        &e,
        "n2",
        TaskOutcome::Failed("nft -c failed".into(), String::new()),
    );
    e.changes.drive().await.unwrap();
    let p = e.changes.get_plan(&bob, &id).await.unwrap();
    assert_eq!(p.plan.state, "halted");
    assert!(
        p.plan.reason.contains("node n2 failed: nft -c failed"),
        "{}",
        p.plan.reason
    );
    let actions = audit_actions(&e.db).await;
    for action in ["plan.create", "plan.approve", "plan.halt"] {
        assert!(
            actions.iter().any(|(a, _)| a == action),
            "{action}: {actions:?}"
        );
    }
    assert!(
        actions
            .iter()
            .any(|(a, o)| a == "plan.approve" && o == "failure"),
        "refused approvals are audited"
    );
}

async fn stale_plans_are_refused_and_drift_is_shown(backend: Backend) {
    let e = env(backend).await;
    let ann = user("ann", &["policy:read", "policy:write", "policy:approve"]);
    let bob = user("bob", &["policy:read", "policy:approve"]);
    set_node(&e, "n1", "prod", None);
    e.changes
        .put_intent(&ann, &web_fw("22", json!({"node": "n1"})))
        .await
        .unwrap();
    // The node changes after the plan is rendered: stale.
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    set_node(&e, "n1", "prod", Some("table inet lattice {}\n"));
    let err = e
        .changes
        .approve(&bob, &plan.plan.id, &plan.plan.hash, "")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Stale(m) if m.contains("node n1 now has sha256:")),
        "{err:?}"
    );
    // A newer intent: the old plan is stale too.
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    e.changes
        .put_intent(&ann, &web_fw("22,443", json!({"node": "n1"})))
        .await
        .unwrap();
    let err = e
        .changes
        .approve(&bob, &plan.plan.id, &plan.plan.hash, "")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Stale(m) if m.contains("intent web-fw is now at version 2")),
        "{err:?}"
    );
    // Applied, then edited by hand on the node: the next plan shows drift.
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    e.changes
        .approve(&bob, &plan.plan.id, &plan.plan.hash, "")
        .await
        .unwrap();
    finish(&e, "n1", TaskOutcome::Succeeded("{}".into()));
    e.changes.drive().await.unwrap();
    let applied = e.changes.get_plan(&bob, &plan.plan.id).await.unwrap();
    assert_eq!(applied.plan.state, "applied", "{backend:?}");
    let edited = plan.targets[0]
        .artifact
        .replace("dport { 22, 443 }", "dport 22");
    set_node(&e, "n1", "prod", Some(&edited));
    let next = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    assert!(next.targets[0].drift, "a hand edit is drift");
    assert!(
        next.targets[0]
            .diff
            .contains("+\t\tip saddr 10.0.0.0/8 tcp dport { 22, 443 }")
    );
    // No drift when the node has exactly what was applied.
    set_node(&e, "n1", "prod", Some(&plan.targets[0].artifact));
    let same = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    assert!(!same.targets[0].drift);
    assert_eq!(same.targets[0].diff, "");
    // Reject and cancel.
    let r = e
        .changes
        .reject(&bob, &same.plan.id, "nothing to change")
        .await
        .unwrap();
    assert_eq!(r.plan.state, "rejected");
    let c = e.changes.cancel(&ann, &next.plan.id).await.unwrap();
    assert_eq!(c.plan.state, "cancelled");
    assert!(matches!(
        e.changes.approve(&bob, &next.plan.id, &next.plan.hash, "").await,
        Err(PolicyError::Conflict(m)) if m.contains("cancelled")
    ));
}

async fn four_eyes_follows_the_org_setting(backend: Backend) {
    let e = env(backend).await;
    let ann = user("ann", &["*"]);
    set_node(&e, "n1", "prod", None);
    e.changes
        .put_intent(&ann, &web_fw("22", json!({"node": "n1"})))
        .await
        .unwrap();
    // One admin: auto means off, so the author may approve.
    e.world.0.lock().unwrap().admins = 1;
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    e.changes
        .approve(&ann, &plan.plan.id, &plan.plan.hash, "")
        .await
        .unwrap();
    // On: never the author.
    e.changes.set_four_eyes(&ann, "on").await.unwrap();
    finish(&e, "n1", TaskOutcome::Succeeded("{}".into()));
    e.changes.drive().await.unwrap();
    set_node(&e, "n1", "prod", Some(&plan.targets[0].artifact));
    let plan = e.changes.create_plan(&ann, "web-fw", &[]).await.unwrap();
    assert!(matches!(
        e.changes.approve(&ann, &plan.plan.id, &plan.plan.hash, "").await,
        Err(PolicyError::Forbidden(m)) if m.contains("four eyes")
    ));
    assert!(matches!(
        e.changes
            .set_four_eyes(&user("bob", &["policy:write"]), "off")
            .await,
        Err(PolicyError::MissingScope(_))
    ));
    assert!(e.changes.set_four_eyes(&ann, "sometimes").await.is_err());
}

/// An auto update policy plans and approves by itself inside its window only,
/// canary first, and never again after a rollout halted.
async fn auto_updates_act_inside_their_window_and_stop_after_a_failure(backend: Backend) {
    let e = env(backend).await;
    set_node(&e, "n1", "prod", None);
    set_node(&e, "n2", "prod", None);
    let policy = json!({"name": "agents", "kind": "agent.update", "selector": {"labels": {"env": "prod"}},
        "spec": {"version": "1.4.0", "mode": "auto", "canary": 1,
            "window": {"days": ["sat"], "start": "02:00", "end": "05:00"}}});
    // Setting an auto policy is approving: policy:write alone is not enough.
    assert!(matches!(
        e.changes.put_intent(&user("carol", &["policy:write"]), &policy).await,
        Err(PolicyError::MissingScope(s)) if s == "policy:approve"
    ));
    let ann = user("ann", &["policy:write", "policy:approve", "policy:read"]);
    e.changes.put_intent(&ann, &policy).await.unwrap();
    // 2026-12-05 was a Saturday.
    let saturday = 1_796_428_800_000_i64;
    let hour = 3_600_000;
    e.changes.auto_updates(saturday + hour).await.unwrap();
    e.changes.auto_updates(saturday + 5 * hour).await.unwrap();
    assert!(
        e.changes.list_plans(&ann, 10).await.unwrap().is_empty(),
        "outside the window"
    );
    e.changes.auto_updates(saturday + 3 * hour).await.unwrap();
    let plans = e.changes.list_plans(&ann, 10).await.unwrap();
    assert_eq!(plans.len(), 1);
    let plan = e.changes.get_plan(&ann, &plans[0].id).await.unwrap();
    assert_eq!(
        (
            plan.plan.state.as_str(),
            plan.plan.author.as_str(),
            plan.plan.decided_by.as_str()
        ),
        ("applying", AUTO, AUTO)
    );
    assert!(
        plan.targets[0]
            .artifact
            .starts_with("lattice-agent 1.4.0\narch x86_64\nsha256 sha256:ab\n"),
        "{:?}",
        plan.targets[0]
    );
    let states: Vec<(&str, &str)> = plan
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![("n1", "queued"), ("n2", "waiting")],
        "canary first"
    );
    // Rolling out: no second plan.
    e.changes.auto_updates(saturday + 3 * hour).await.unwrap();
    assert_eq!(e.changes.list_plans(&ann, 10).await.unwrap().len(), 1);
    // The canary fails: halted, and the policy does not try again by itself.
    finish(
        &e,
        "n1",
        TaskOutcome::Failed("rolled_back".into(), "{}".into()),
    );
    e.changes.drive().await.unwrap();
    let plan = e.changes.get_plan(&ann, &plans[0].id).await.unwrap();
    assert_eq!(plan.plan.state, "halted");
    e.changes.auto_updates(saturday + 3 * hour).await.unwrap();
    assert_eq!(e.changes.list_plans(&ann, 10).await.unwrap().len(), 1);
    let actions = audit_actions(&e.db).await;
    assert!(
        actions.iter().any(|(a, _)| a == "plan.approve"),
        "{actions:?}"
    );
}

lattice_core::store_test_suite!(
    auto_updates_act_inside_their_window_and_stop_after_a_failure,
    intents_are_validated_versioned_and_audited,
    a_plan_is_approved_by_its_hash_by_someone_else_and_rolls_out_canary_first,
    stale_plans_are_refused_and_drift_is_shown,
    four_eyes_follows_the_org_setting,
);
