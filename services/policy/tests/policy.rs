//! The policy service's behaviour, written once and run on SQLite always and on
//! Postgres when `LATTICE_TEST_DATABASE_URL` is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::db::{self, Backend, Db, testing};
use lattice_core::time::now_ms;
use lattice_policy::engine::{Action, Protocol, Resource};
use lattice_policy::groups::StaticGroups;
use lattice_policy::grpc::AuthorizeInput;
use lattice_policy::model::PolicyDoc;
use lattice_policy::service::Subject;
use lattice_policy::store::{SEEDED_NAME, Store};
use lattice_policy::{Policies, PolicyError};
use lattice_proto::policy::v1 as pb;

struct Env {
    policies: Policies,
    db: Db,
    _guard: Option<testing::tempfile_guard::Guard>,
}

async fn env(backend: Backend) -> Env {
    let (db, guard) = testing::fresh(backend).await;
    db::migrate(&db, &lattice_policy::migration_sets(), true)
        .await
        .unwrap();
    let groups = StaticGroups(HashMap::from([
        ("root".to_owned(), vec!["admins".to_owned()]),
        ("alice".to_owned(), vec!["web".to_owned()]),
    ]));
    Env {
        policies: Policies::new(
            Store::new(db.clone()),
            Cache::local(),
            Arc::new(groups),
            Arc::new(lattice_policy::nodes::NoNodes),
        ),
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

fn doc(name: &str, text: &str) -> PolicyDoc {
    PolicyDoc {
        name: name.into(),
        text: text.into(),
        enabled: true,
        priority: 0,
        description: String::new(),
        expires_at_ms: None,
    }
}

fn node(id: &str, env: &str) -> Resource {
    Resource::Node {
        id: id.into(),
        name: format!("{id}.example"),
        org: String::new(),
        labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
    }
}

fn http(port: u16) -> Action {
    Action::AccessNode {
        port,
        protocol: Protocol::Http,
    }
}

/// Policy audit rows: (action, target, outcome, detail).
async fn audit(db: &Db) -> Vec<(String, String, String, serde_json::Value)> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT action, target, outcome, detail FROM policy_audit ORDER BY at_ms, id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, t, o, d)| (a, t, o, serde_json::from_str(&d).unwrap()))
        .collect()
}

async fn policies_are_validated_stored_and_audited(backend: Backend) {
    let e = env(backend).await;
    let admin = user("root", &["policy:read", "policy:write"]);
    // Every org starts with the seeded admins policy.
    let list = e.policies.list(&admin).await.unwrap();
    assert_eq!(list.len(), 1, "{backend:?}");
    assert_eq!(list[0].doc.name, SEEDED_NAME);

    // Text that does not parse or validate is refused with where, and not stored.
    for (text, needle, line) in [
        (
            "permit(principal, action,\n resource) when { context.port = 1 };",
            "",
            Some(2),
        ),
        (
            r#"permit(principal == Lattice::Person::"x", action, resource);"#,
            "Person",
            Some(1),
        ),
        (
            "permit(principal, action == Lattice::Action::\"AccessNode\", resource)\n when { resource.colour == \"red\" };",
            "colour",
            Some(2),
        ),
    ] {
        let err = e
            .policies
            .put(&admin, doc("bad", text), true)
            .await
            .unwrap_err();
        let PolicyError::Rejected(message) = &err else {
            panic!("{err:?}")
        };
        assert!(message.contains(needle), "{message}");
        if let Some(l) = line {
            assert!(message.contains(&format!("line {l}")), "{message}");
        }
        assert_eq!(
            lattice_core::error::CodedError::code(&err),
            lattice_core::ErrorCode::Unprocessable
        );
    }
    assert_eq!(e.policies.list(&admin).await.unwrap().len(), 1);
    let Ok(Err(problems)) = e.policies.validate(
        &admin,
        "forbid(principal, action, resource) when { context.nope };",
    ) else {
        panic!("validation problems")
    };
    assert!(!problems.is_empty());

    // Create, conflict on create, replace, delete.
    let text = r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"AccessNode", resource) when { context.port == 8080 };"#;
    let (row, created) = e
        .policies
        .put(&admin, doc("alice-web", text), true)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(row.text_sha256, lattice_policy::store::text_hash(text));
    let err = e
        .policies
        .put(&admin, doc("alice-web", text), true)
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::Conflict(_)), "{err:?}");
    let text2 = text.replace("8080", "8443");
    let (_, created) = e
        .policies
        .put(&admin, doc("alice-web", &text2), false)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(
        e.policies.get(&admin, "alice-web").await.unwrap().doc.text,
        text2
    );
    e.policies.delete(&admin, "alice-web").await.unwrap();
    assert!(matches!(
        e.policies.get(&admin, "alice-web").await.unwrap_err(),
        PolicyError::NotFound(_)
    ));
    assert!(matches!(
        e.policies
            .put(&admin, doc("Bad Name", text), true)
            .await
            .unwrap_err(),
        PolicyError::Invalid(_)
    ));

    // Scopes: reading and writing are separate, and another org sees nothing.
    let reader = user("bob", &["policy:read"]);
    assert!(matches!(
        e.policies
            .put(&reader, doc("x", text), true)
            .await
            .unwrap_err(),
        PolicyError::MissingScope(_)
    ));
    assert!(matches!(
        e.policies
            .list(&user("bob", &["nodes:read"]))
            .await
            .unwrap_err(),
        PolicyError::MissingScope(_)
    ));
    let mut other = user("carol", &["policy:read"]);
    other.principal.org_id = "org-2".into();
    let theirs = e.policies.list(&other).await.unwrap();
    assert_eq!(theirs.len(), 1, "org-2 has only its own seeded policy");

    // Every change is audited with the old and new text hashes; the refusals too.
    let log = audit(&e.db).await;
    let actions: Vec<&str> = log.iter().map(|(a, ..)| a.as_str()).collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "policy.seed").count(),
        2,
        "{actions:?}"
    );
    let update = log.iter().find(|(a, ..)| a == "policy.update").unwrap();
    assert_eq!(
        update.3["old_sha256"],
        lattice_policy::store::text_hash(text)
    );
    assert_eq!(
        update.3["new_sha256"],
        lattice_policy::store::text_hash(&text2)
    );
    assert!(
        log.iter()
            .any(|(a, _, o, _)| a == "policy.put" && o == "failure")
    );
    assert!(
        log.iter()
            .any(|(a, t, ..)| a == "policy.delete" && t == "alice-web")
    );
}

async fn decisions_follow_the_policies_and_refusals_are_audited(backend: Backend) {
    let e = env(backend).await;
    let admin = user("root", &["*"]);
    let alice = user("alice", &["nodes:proxy"]);
    let web = node("n1", "prod");
    // Default deny for alice; the seeded policy lets admins in.
    let d = e
        .policies
        .authorize(&alice, Subject::Caller, http(8080), web.clone())
        .await
        .unwrap();
    assert!(!d.allow && d.determining.is_empty(), "{backend:?}");
    let d = e
        .policies
        .authorize(&admin, Subject::Caller, http(22), web.clone())
        .await
        .unwrap();
    assert!(d.allow);
    assert_eq!(d.determining, [SEEDED_NAME]);

    // Group and label policies, and a forbid that wins over them.
    e.policies
        .put(&admin, doc("web-prod", r#"permit(principal in Lattice::Group::"web", action == Lattice::Action::"AccessNode", resource) when { resource.hasTag("env") && resource.getTag("env") == "prod" && context.port == 8080 };"#), true)
        .await
        .unwrap();
    let allow = |port| {
        let (e, alice, web) = (&e, &alice, web.clone());
        async move {
            e.policies
                .authorize(alice, Subject::Caller, http(port), web)
                .await
                .unwrap()
        }
    };
    assert!(allow(8080).await.allow);
    assert!(!allow(8081).await.allow);
    assert!(
        !e.policies
            .authorize(&alice, Subject::Caller, http(8080), node("n2", "dev"))
            .await
            .unwrap()
            .allow
    );
    let mut no_web = doc(
        "no-web-friday",
        r#"forbid(principal, action, resource == Lattice::Node::"n1");"#,
    );
    no_web.priority = 100;
    e.policies.put(&admin, no_web, true).await.unwrap();
    let d = allow(8080).await;
    assert!(!d.allow);
    assert_eq!(d.determining, ["no-web-friday"]);
    assert_eq!(
        d.considered,
        ["no-web-friday", "web-prod"],
        "priority orders evaluation"
    );
    // Disabled, it takes part in nothing.
    let mut off = doc(
        "no-web-friday",
        r#"forbid(principal, action, resource == Lattice::Node::"n1");"#,
    );
    off.enabled = false;
    e.policies.put(&admin, off, false).await.unwrap();
    assert!(allow(8080).await.allow);

    // A time-limited grant drops out by itself.
    let mut soon = doc(
        "alice-ssh",
        r#"permit(principal == Lattice::User::"alice", action, resource) when { context has port && context.port == 22 };"#,
    );
    soon.expires_at_ms = Some(now_ms() + 400);
    e.policies.put(&admin, soon, true).await.unwrap();
    assert!(allow(22).await.allow);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!allow(22).await.allow);

    // RunTask by kind.
    e.policies
        .put(&admin, doc("alice-facts", r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"RunTask", resource) when { context.kind == "facts.refresh" };"#), true)
        .await
        .unwrap();
    let run = |kind: &str| Action::RunTask { kind: kind.into() };
    assert!(
        e.policies
            .authorize(&alice, Subject::Caller, run("facts.refresh"), web.clone())
            .await
            .unwrap()
            .allow
    );
    assert!(
        !e.policies
            .authorize(&alice, Subject::Caller, run("exec"), web.clone())
            .await
            .unwrap()
            .allow
    );

    // Refusals are audited with the policies that decided.
    let log = audit(&e.db).await;
    let refused: Vec<_> = log
        .iter()
        .filter(|(a, _, o, _)| a == "policy.decide.AccessNode" && o == "failure")
        .collect();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .any(|(_, t, _, d)| t == "Lattice::Node::\"n1\""
                && d["policies"] == serde_json::json!(["no-web-friday"])
                && d["context"]["port"] == 8080)
    );
    assert!(
        log.iter()
            .all(|(_, _, _, d)| !d.to_string().contains("permit(")),
        "never the text"
    );
}

async fn secrets_are_default_deny_and_every_read_is_audited(backend: Backend) {
    let e = env(backend).await;
    let admin = user("root", &["*"]);
    let gateway = RequestContext::internal(Principal::service("storage"));
    let token = |name: &str| Subject::Service {
        kind: "storage_token",
        name: name.into(),
        org: "org-1".into(),
    };
    let secret = |key: &str| Resource::SecretPath {
        bucket: "app".into(),
        key: key.into(),
    };
    // No permit: denied, even for a token the admins policy cannot name.
    let d = e
        .policies
        .authorize(
            &gateway,
            token("deploy"),
            Action::AccessSecret,
            secret("db"),
        )
        .await
        .unwrap();
    assert!(!d.allow);
    e.policies
        .put(&admin, doc("deploy-secrets", r#"permit(principal == Lattice::Service::"token:deploy", action == Lattice::Action::"AccessSecret", resource) when { resource.bucket == "app" };"#), true)
        .await
        .unwrap();
    e.policies
        .put(&admin, doc("no-prod", r#"forbid(principal, action == Lattice::Action::"AccessSecret", resource) when { resource.path like "*/prod-*" };"#), true)
        .await
        .unwrap();
    assert!(
        e.policies
            .authorize(
                &gateway,
                token("deploy"),
                Action::AccessSecret,
                secret("db")
            )
            .await
            .unwrap()
            .allow
    );
    assert!(
        !e.policies
            .authorize(
                &gateway,
                token("deploy"),
                Action::AccessSecret,
                secret("prod-db")
            )
            .await
            .unwrap()
            .allow
    );
    assert!(
        !e.policies
            .authorize(&gateway, token("other"), Action::AccessSecret, secret("db"))
            .await
            .unwrap()
            .allow
    );
    let log = audit(&e.db).await;
    let reads: Vec<_> = log
        .iter()
        .filter(|(a, ..)| a == "policy.decide.AccessSecret")
        .collect();
    assert_eq!(
        reads.len(),
        4,
        "every secret decision, allowed or not: {reads:?}"
    );
    assert!(
        reads
            .iter()
            .any(|(_, t, o, d)| t == "Lattice::SecretPath::\"app/db\""
                && o == "success"
                && d["policies"] == serde_json::json!(["deploy-secrets"]))
    );

    // Forged requests: a user may not ask as a token; a service must name whom it
    // asks for; and the adapter refuses malformed questions.
    let err = e
        .policies
        .authorize(
            &user("alice", &["*"]),
            token("deploy"),
            Action::AccessSecret,
            secret("db"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::Forbidden(_)), "{err:?}");
    let err = e
        .policies
        .authorize(&gateway, Subject::Caller, http(80), node("n1", "prod"))
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::Invalid(_)), "{err:?}");
    for bad in [
        pb::AuthorizeRequest::default(),
        pb::AuthorizeRequest {
            action: pb::Action::AccessNode.into(),
            resource: Some(pb::authorize_request::Resource::Node(pb::NodeResource {
                id: "n1".into(),
                ..Default::default()
            })),
            port: 70_000,
            protocol: pb::Protocol::Http.into(),
            ..Default::default()
        },
        pb::AuthorizeRequest {
            action: pb::Action::AccessSecret.into(),
            resource: Some(pb::authorize_request::Resource::Node(pb::NodeResource {
                id: "n1".into(),
                ..Default::default()
            })),
            ..Default::default()
        },
        pb::AuthorizeRequest {
            service: Some(pb::ServicePrincipal {
                kind: pb::service_principal::Kind::StorageToken.into(),
                name: "t".into(),
            }),
            action: pb::Action::RunTask.into(),
            task_kind: "exec".into(),
            org_id: "org-1".into(),
            resource: Some(pb::authorize_request::Resource::Node(pb::NodeResource {
                id: "n1".into(),
                ..Default::default()
            })),
            ..Default::default()
        },
    ] {
        assert!(AuthorizeInput::try_from(bad.clone()).is_err(), "{bad:?}");
    }
}

async fn explain_answers_with_the_deciding_and_considered_policies(backend: Backend) {
    use lattice_policy::service::ExplainInput;
    let e = env(backend).await;
    let admin = user("root", &["*"]);
    e.policies
        .put(&admin, doc("alice-secrets", r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"AccessSecret", resource) when { resource.bucket == "app" };"#), true)
        .await
        .unwrap();
    e.policies
        .put(&admin, doc("no-prod", r#"forbid(principal, action == Lattice::Action::"AccessSecret", resource) when { resource.key like "prod-*" };"#), true)
        .await
        .unwrap();
    let ask = |principal: &str, resource: &str| ExplainInput {
        principal: principal.into(),
        action: "AccessSecret".into(),
        resource: resource.into(),
        context: serde_json::Map::new(),
    };
    let reader = user("auditor", &["policy:read"]);
    let d = e
        .policies
        .explain(
            &reader,
            ask(
                r#"Lattice::User::"alice""#,
                r#"Lattice::SecretPath::"app/db""#,
            ),
        )
        .await
        .unwrap();
    assert!(d.allow, "{backend:?}");
    assert_eq!(d.determining, ["alice-secrets"]);
    let d = e
        .policies
        .explain(
            &reader,
            ask(
                r#"Lattice::User::"alice""#,
                r#"Lattice::SecretPath::"app/prod-db""#,
            ),
        )
        .await
        .unwrap();
    assert!(!d.allow);
    assert_eq!(d.determining, ["no-prod"]);
    assert_eq!(d.considered, ["alice-secrets", "no-prod"]);
    // root is in admins (the directory says so): the seeded policy decides.
    let d = e
        .policies
        .explain(
            &reader,
            ask(
                r#"Lattice::User::"root""#,
                r#"Lattice::SecretPath::"app/db""#,
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (d.allow, d.determining.as_slice()),
        (true, [SEEDED_NAME.to_owned()].as_slice())
    );
    // A default deny names no policy.
    let d = e
        .policies
        .explain(
            &reader,
            ask(
                r#"Lattice::Service::"token:ci""#,
                r#"Lattice::SecretPath::"other/x""#,
            ),
        )
        .await
        .unwrap();
    assert!(!d.allow && d.determining.is_empty());
    // Bad questions are 400s that say what is wrong; no scope, 403.
    for (input, needle) in [
        (
            ask("alice", r#"Lattice::SecretPath::"app/db""#),
            "principal",
        ),
        (
            ask(
                r#"Lattice::Group::"web""#,
                r#"Lattice::SecretPath::"app/db""#,
            ),
            "principal",
        ),
        (
            ask(
                r#"Lattice::User::"alice""#,
                r#"Lattice::SecretPath::"nokey""#,
            ),
            "bucket/key",
        ),
        (
            ExplainInput {
                action: "Fly".into(),
                ..ask(
                    r#"Lattice::User::"alice""#,
                    r#"Lattice::SecretPath::"app/db""#,
                )
            },
            "action",
        ),
        (
            ExplainInput {
                action: "AccessNode".into(),
                ..ask(r#"Lattice::User::"alice""#, r#"Lattice::Node::"n1""#)
            },
            "context.port",
        ),
        // An action asked about a resource it does not apply to.
        (
            ExplainInput {
                action: "AccessNode".into(),
                context: serde_json::json!({"port": 22}).as_object().unwrap().clone(),
                ..ask(
                    r#"Lattice::User::"alice""#,
                    r#"Lattice::SecretPath::"app/db""#,
                )
            },
            "AccessNode applies to a Node, not to a SecretPath",
        ),
        // A service asked about anything but reading a secret.
        (
            ExplainInput {
                action: "AccessNode".into(),
                context: serde_json::json!({"port": 22}).as_object().unwrap().clone(),
                ..ask(r#"Lattice::Service::"token:app""#, r#"Lattice::Node::"n1""#)
            },
            "only reads secrets",
        ),
    ] {
        let err = e.policies.explain(&reader, input).await.unwrap_err();
        assert!(
            matches!(&err, PolicyError::Invalid(m) if m.contains(needle)),
            "{err:?}"
        );
    }
    let err = e
        .policies
        .explain(
            &user("x", &["nodes:read"]),
            ask(
                r#"Lattice::User::"alice""#,
                r#"Lattice::SecretPath::"app/db""#,
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::MissingScope(_)), "{err:?}");
}

async fn dry_runs_replay_recorded_decisions_and_store_nothing(backend: Backend) {
    let e = env(backend).await;
    let admin = user("root", &["*"]);
    let alice = user("alice", &["nodes:proxy"]);
    let text = r#"permit(principal == Lattice::User::"alice", action == Lattice::Action::"AccessNode", resource) when { context.port == 8080 };"#;
    e.policies
        .put(&admin, doc("alice-web", text), true)
        .await
        .unwrap();
    // Three decisions are recorded: alice allowed on 8080 and denied on 22, root
    // allowed on 22.
    for (who, port) in [(&alice, 8080), (&alice, 22), (&admin, 22)] {
        e.policies
            .authorize(who, Subject::Caller, http(port), node("n1", "prod"))
            .await
            .unwrap();
    }
    // Deleting alice's policy flips her 8080 allow; a permit for port 22 flips her deny.
    let r = e
        .policies
        .dry_run(&admin, Vec::new(), vec!["alice-web".into()], 0)
        .await
        .unwrap();
    assert_eq!(
        (r.replayed, r.allow_to_deny, r.deny_to_allow),
        (3, 1, 0),
        "{backend:?}: {r:?}"
    );
    assert_eq!(r.flips[0].before.determining, ["alice-web"]);
    let ssh = doc(
        "alice-ssh",
        r#"permit(principal == Lattice::User::"alice", action, resource) when { context has port && context.port == 22 };"#,
    );
    let r = e
        .policies
        .dry_run(&admin, vec![ssh.clone()], Vec::new(), 0)
        .await
        .unwrap();
    assert_eq!((r.allow_to_deny, r.deny_to_allow), (0, 1), "{r:?}");
    assert_eq!(r.flips[0].after.determining, ["alice-ssh"]);
    // `last` limits the replay to the newest decisions.
    let r = e
        .policies
        .dry_run(&admin, vec![ssh], Vec::new(), 1)
        .await
        .unwrap();
    assert_eq!((r.replayed, r.deny_to_allow), (1, 0), "{r:?}");
    // A forbid on the admins' group flips root's allow.
    let freeze = doc(
        "freeze",
        r#"forbid(principal in Lattice::Group::"admins", action, resource);"#,
    );
    let r = e
        .policies
        .dry_run(&admin, vec![freeze], Vec::new(), 0)
        .await
        .unwrap();
    assert_eq!(r.allow_to_deny, 1, "{r:?}");
    // Nothing was stored; invalid text and missing scopes are refused.
    assert_eq!(e.policies.list(&admin).await.unwrap().len(), 2);
    let err = e
        .policies
        .dry_run(
            &admin,
            vec![doc(
                "bad",
                "permit(principal, action, resource) when { nope };",
            )],
            Vec::new(),
            0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Rejected(m) if m.starts_with("bad:")),
        "{err:?}"
    );
    let err = e
        .policies
        .dry_run(&user("reader", &["policy:read"]), Vec::new(), Vec::new(), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, PolicyError::MissingScope(_)), "{err:?}");
}

lattice_core::store_test_suite!(
    dry_runs_replay_recorded_decisions_and_store_nothing,
    explain_answers_with_the_deciding_and_considered_policies,
    policies_are_validated_stored_and_audited,
    decisions_follow_the_policies_and_refusals_are_audited,
    secrets_are_default_deny_and_every_read_is_audited,
);
