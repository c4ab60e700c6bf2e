//! The identity service's behaviour, written once and run on SQLite always and on
//! Postgres when `LATTICE_TEST_DATABASE_URL` is set.

use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::cache::Cache;
use lattice_core::config::IdentityConfig;
use lattice_core::crypto::MasterKey;
use lattice_core::db::{self, Backend, testing};
use lattice_identity::input::{GroupName, Membership, NewGroup, UserGroupsQuery, Username};
use lattice_identity::service::{ClientInfo, Credential, LoginOutcome};
use lattice_identity::{Identity, IdentityError, totp};
use lattice_proto::events::v1::GroupsChanged;
use lattice_proto::identity::v1 as pb;

fn config() -> IdentityConfig {
    IdentityConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        session_idle_timeout_s: 1800,
        session_max_age_s: 3600,
        lockout_threshold: 3,
        lockout_duration_s: 60,
        ip_failure_limit: 100,
        ip_failure_window_s: 60,
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        argon2_parallelism: 1,
        argon2_max_concurrent: 4,
        mfa_issuer: "Lattice".into(),
    }
}

struct Env {
    identity: Identity,
    gateway: Principal,
    db: db::Db,
    cache: Cache,
    _guard: Option<testing::tempfile_guard::Guard>,
}

async fn env(backend: Backend, cfg: IdentityConfig) -> Env {
    let (db, guard) = testing::fresh(backend).await;
    db::migrate(&db, &lattice_identity::migration_sets(), true)
        .await
        .unwrap();
    let cache = Cache::local();
    let identity = lattice_identity::build(
        db.clone(),
        &MasterKey::generate(),
        cache.clone(),
        cfg,
        b"mfa-secret-for-tests-0123456789ab",
    )
    .await
    .unwrap();
    let admin = identity
        .bootstrap(Some("admin-password-1".into()))
        .await
        .unwrap();
    assert!(admin.is_some_and(|a| a.password.is_none()));
    Env {
        identity,
        gateway: Principal::service("gateway"),
        db,
        cache,
        _guard: guard,
    }
}

fn client() -> ClientInfo {
    ClientInfo {
        ip: "192.0.2.1".into(),
        user_agent: "test".into(),
    }
}

/// A request from `p`, with no client IP.
fn ctx(p: &Principal) -> RequestContext {
    RequestContext::internal(p.clone())
}

/// A request from `p`, from `client`'s address.
fn ctx_from(p: &Principal, client: &ClientInfo) -> RequestContext {
    RequestContext {
        principal: p.clone(),
        client_ip: client.ip.clone(),
    }
}

async fn session(e: &Env, user: &str, password: &str) -> (String, Principal) {
    match e
        .identity
        .login(&e.gateway, user, password.into(), "", &client())
        .await
        .unwrap()
    {
        LoginOutcome::Session { secret, who } => (secret, who.principal),
        LoginOutcome::MfaRequired { .. } => panic!("unexpected MFA"),
    }
}

async fn bootstrap_runs_once_and_admin_logs_in(backend: Backend) {
    let e = env(backend, config()).await;
    assert!(
        e.identity.bootstrap(None).await.unwrap().is_none(),
        "{backend:?}"
    );
    let (secret, p) = session(&e, "Admin", "admin-password-1").await;
    assert_eq!(p.username, "admin");
    // Everything in its org, and the platform scope `*` does not include.
    assert_eq!(p.scopes, vec!["*".to_owned(), "orgs:admin".to_owned()]);
    assert_eq!(p.auth, AuthMethod::Session);
    let who = e
        .identity
        .authenticate(&e.gateway, Credential::Session(&secret))
        .await
        .unwrap();
    assert_eq!(who.principal.sub, p.sub);
    assert_eq!(who.org_name, "default");
}

async fn unknown_user_and_wrong_password_look_the_same_and_lock_after_threshold(backend: Backend) {
    let e = env(backend, config()).await;
    let unknown = e
        .identity
        .login(
            &e.gateway,
            "nobody",
            "whatever-password".into(),
            "",
            &client(),
        )
        .await
        .unwrap_err();
    let wrong = e
        .identity
        .login(
            &e.gateway,
            "admin",
            "wrong-password!!".into(),
            "",
            &client(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.to_string(), wrong.to_string());
    for _ in 0..2 {
        let _ = e
            .identity
            .login(
                &e.gateway,
                "admin",
                "wrong-password!!".into(),
                "",
                &client(),
            )
            .await;
    }
    // Third failure locked the account: even the right password is refused, with a retry hint.
    let locked = e
        .identity
        .login(
            &e.gateway,
            "admin",
            "admin-password-1".into(),
            "",
            &client(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(locked, IdentityError::Locked { retry_after_s } if retry_after_s > 0 && retry_after_s <= 60),
        "{locked:?}"
    );
    // An admin unlock (by a second admin created before) lifts it: create one via store path.
    let users = e
        .identity
        .store()
        .list_users(
            &e.identity
                .store()
                .org_by_name("default")
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    let admin_id = users[0].id.clone();
    e.identity.store().clear_failures(&admin_id).await.unwrap();
    session(&e, "admin", "admin-password-1").await;
}

async fn per_ip_throttle_answers_429(backend: Backend) {
    let mut cfg = config();
    cfg.ip_failure_limit = 2;
    cfg.lockout_threshold = 100;
    let e = env(backend, cfg).await;
    for _ in 0..2 {
        let _ = e
            .identity
            .login(
                &e.gateway,
                "ghost",
                "whatever-password".into(),
                "",
                &client(),
            )
            .await;
    }
    let err = e
        .identity
        .login(
            &e.gateway,
            "admin",
            "admin-password-1".into(),
            "",
            &client(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Throttled { .. }), "{err:?}");
    // Another address is unaffected.
    let other = ClientInfo {
        ip: "192.0.2.2".into(),
        user_agent: String::new(),
    };
    assert!(
        e.identity
            .login(&e.gateway, "admin", "admin-password-1".into(), "", &other)
            .await
            .is_ok()
    );
}

async fn totp_enrollment_two_step_login_replay_and_recovery_codes(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    let (secret_b32, uri) = e.identity.enroll_totp(&admin).await.unwrap();
    assert!(uri.starts_with("otpauth://totp/"));
    let seed = totp_rs::Secret::try_from_base32(&secret_b32)
        .unwrap()
        .as_bytes()
        .to_vec();
    let now = u64::try_from(lattice_core::time::now_ms() / 1000).unwrap();
    assert!(
        matches!(
            e.identity.confirm_totp(&ctx(&admin), "000000").await,
            Err(IdentityError::InvalidCode)
        ) || totp::code_at(&seed, now) == "000000"
    );
    let codes = e
        .identity
        .confirm_totp(&ctx(&admin), &totp::code_at(&seed, now))
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);

    // Password alone is no longer enough.
    let LoginOutcome::MfaRequired { mfa_token, .. } = e
        .identity
        .login(
            &e.gateway,
            "admin",
            "admin-password-1".into(),
            "",
            &client(),
        )
        .await
        .unwrap()
    else {
        panic!("expected MFA");
    };
    // The code used to confirm was for this step: replay is refused.
    let replay = e
        .identity
        .login_totp(
            &e.gateway,
            &mfa_token,
            &totp::code_at(&seed, now),
            &client(),
        )
        .await;
    assert!(
        matches!(replay, Err(IdentityError::InvalidCode)),
        "{replay:?}"
    );
    // The next step's code works once.
    let next = totp::code_at(&seed, now + 30);
    assert!(matches!(
        e.identity
            .login_totp(&e.gateway, &mfa_token, &next, &client())
            .await
            .unwrap(),
        LoginOutcome::Session { .. }
    ));
    assert!(
        e.identity
            .login_totp(&e.gateway, &mfa_token, &next, &client())
            .await
            .is_err()
    );
    // A recovery code works exactly once.
    assert!(
        e.identity
            .login_totp(&e.gateway, &mfa_token, &codes[0].to_uppercase(), &client())
            .await
            .is_ok()
    );
    assert!(
        e.identity
            .login_totp(&e.gateway, &mfa_token, &codes[0], &client())
            .await
            .is_err()
    );
    // A forged MFA token is refused.
    assert!(matches!(
        e.identity
            .login_totp(&e.gateway, "x.y.z", &codes[1], &client())
            .await,
        Err(IdentityError::InvalidMfaToken)
    ));
    // The seed is sealed at rest: the stored column is not the seed.
    let user = e
        .identity
        .store()
        .user_by_username("admin")
        .await
        .unwrap()
        .unwrap();
    let sealed = user.totp_sealed.unwrap();
    assert!(!sealed.windows(seed.len()).any(|w| w == seed.as_slice()));
}

async fn tokens_never_exceed_their_creator_and_revocation_is_immediate(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    let bob = e
        .identity
        .create_user(
            &ctx(&admin),
            "bob",
            "bob-password-123".into(),
            &["kv:write".into(), "tokens:write".into()],
        )
        .await
        .unwrap();
    assert_eq!(bob.username, "bob");
    let dup = e
        .identity
        .create_user(&ctx(&admin), "BOB", "bob-password-123".into(), &[])
        .await
        .unwrap_err();
    assert!(matches!(dup, IdentityError::AlreadyExists(_)), "{dup:?}");
    let (_, bob_p) = session(&e, "bob", "bob-password-123").await;
    // Within bob's scopes: fine (kv:write covers kv:read).
    let t = e
        .identity
        .create_token(&ctx(&bob_p), "ci", &["kv:read".into()], 3600, "")
        .await
        .unwrap();
    assert!(t.secret.starts_with("lat_"));
    // Beyond: refused.
    for over in [
        vec!["kv:admin".to_owned()],
        vec!["*".to_owned()],
        vec!["users:admin".to_owned()],
    ] {
        let err = e
            .identity
            .create_token(&ctx(&bob_p), "x", &over, 0, "")
            .await
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::Forbidden(_)),
            "{over:?}: {err:?}"
        );
    }
    // Unknown scope and bad expiry are named.
    let err = e
        .identity
        .create_token(&ctx(&bob_p), "x", &["kv:raed".into()], 0, "")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "scopes: unknown scope \"kv:raed\"");
    let err = e
        .identity
        .create_token(&ctx(&bob_p), "x", &["kv:read".into()], -5, "")
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("expires_in_s:"));
    // Bob cannot manage users.
    assert!(matches!(
        e.identity.list_users(&bob_p).await,
        Err(IdentityError::MissingScope(_))
    ));

    let who = e
        .identity
        .authenticate(&e.gateway, Credential::Token(&t.secret))
        .await
        .unwrap();
    assert_eq!(who.principal.scopes, vec!["kv:read".to_owned()]);
    assert_eq!(who.principal.auth, AuthMethod::Token);
    // Admin sees bob's token; bob sees only his.
    assert_eq!(e.identity.list_tokens(&bob_p).await.unwrap().len(), 1);
    assert_eq!(e.identity.list_tokens(&admin).await.unwrap().len(), 1);
    e.identity
        .revoke_token(&ctx(&bob_p), &t.token.id)
        .await
        .unwrap();
    assert!(matches!(
        e.identity
            .authenticate(&e.gateway, Credential::Token(&t.secret))
            .await,
        Err(IdentityError::InvalidCredential)
    ));
    assert!(matches!(
        e.identity.revoke_token(&ctx(&bob_p), &t.token.id).await,
        Err(IdentityError::NotFound(_))
    ));
    // Revoking one's own token needs no scope; logging out with a token revokes it.
    let t2 = e
        .identity
        .create_token(&ctx(&bob_p), "ci2", &["kv:read".into()], 0, "")
        .await
        .unwrap();
    let who = e
        .identity
        .authenticate(&e.gateway, Credential::Token(&t2.secret))
        .await
        .unwrap();
    assert!(
        matches!(
            e.identity.enroll_totp(&who.principal).await,
            Err(IdentityError::Forbidden(_))
        ),
        "tokens cannot enroll TOTP"
    );
    e.identity.logout(&ctx(&who.principal)).await.unwrap();
    assert!(
        e.identity
            .authenticate(&e.gateway, Credential::Token(&t2.secret))
            .await
            .is_err()
    );
    // Only a hash is stored.
    let stored = e.identity.store().token_by_hash(&t.secret).await.unwrap();
    assert!(stored.is_none());
}

async fn orgs_are_isolated(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    let other_org = e.identity.store().ensure_org("other").await.unwrap();
    let hash = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$3+ff2kGyoNnRcr6FSw6BzQ";
    let carol = e
        .identity
        .store()
        .insert_user(&other_org, "carol", hash, &["*".into()])
        .await
        .unwrap();
    let users = e.identity.list_users(&admin).await.unwrap();
    assert!(users.iter().all(|u| u.username != "carol"));
    assert!(matches!(
        e.identity.unlock_user(&ctx(&admin), &carol.id).await,
        Err(IdentityError::NotFound(_))
    ));
    assert!(matches!(
        e.identity.disable_totp(&ctx(&admin), "", &carol.id).await,
        Err(IdentityError::NotFound(_))
    ));
}

async fn sessions_end_at_logout_and_service_calls_need_service_principals(backend: Backend) {
    let e = env(backend, config()).await;
    let (secret, admin) = session(&e, "admin", "admin-password-1").await;
    // An end user cannot call the gateway-only RPCs, and the gateway cannot act as a user.
    assert!(matches!(
        e.identity
            .authenticate(&admin, Credential::Session(&secret))
            .await,
        Err(IdentityError::WrongCaller(_))
    ));
    assert!(matches!(
        e.identity.list_tokens(&e.gateway).await,
        Err(IdentityError::WrongCaller(_))
    ));
    e.identity.logout(&ctx(&admin)).await.unwrap();
    assert!(matches!(
        e.identity
            .authenticate(&e.gateway, Credential::Session(&secret))
            .await,
        Err(IdentityError::InvalidCredential)
    ));
    // Audit trail has the auth events.
    let actions: Vec<String> = e
        .identity
        .store()
        .audit_actions(&admin.org_id)
        .await
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    for expected in ["user.create", "auth.login", "auth.logout"] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected} missing from {actions:?}"
        );
    }
}

/// A login with no username at all is audited like any unknown user, with an event
/// the central log takes (an event it refuses would hold up every later one).
async fn failed_logins_without_a_username_are_audited_with_an_actor(backend: Backend) {
    let e = env(backend, config()).await;
    for name in ["", "   ", "nobody"] {
        assert!(matches!(
            e.identity
                .login(&e.gateway, name, "wrong-password".into(), "", &client())
                .await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    let pending = lattice_core::audit::TableAudit::new(e.db.clone(), "identity_audit")
        .pending(1000)
        .await
        .unwrap();
    let actors: Vec<&str> = pending
        .iter()
        .filter(|(_, _, ev)| ev.action == "auth.login" && ev.org_id.is_empty())
        .map(|(_, _, ev)| ev.actor.as_str())
        .collect();
    assert_eq!(actors, ["(empty)", "(empty)", "nobody"]);
    for (_, _, ev) in &pending {
        assert_eq!(ev.refusal(), None, "{ev:?}");
    }
}

async fn a_users_admin_cannot_take_over_a_more_privileged_account(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    e.identity
        .create_user(
            &ctx(&admin),
            "helpdesk",
            "helpdesk-password".into(),
            &["users:admin".into()],
        )
        .await
        .unwrap();
    let bob = e
        .identity
        .create_user(&ctx(&admin), "bob", "bob-password-123".into(), &[])
        .await
        .unwrap();
    let (_, helpdesk) = session(&e, "helpdesk", "helpdesk-password").await;
    let c = client();
    // The `*` admin is out of reach: no password reset, no TOTP removal.
    let err = e
        .identity
        .set_password(
            &ctx_from(&helpdesk, &c),
            &admin.sub,
            String::new(),
            "taken-over-password".into(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Forbidden(_)), "{err:?}");
    let err = e
        .identity
        .disable_totp(&ctx(&helpdesk), "", &admin.sub)
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Forbidden(_)), "{err:?}");
    // A less privileged user is fine.
    e.identity
        .set_password(
            &ctx_from(&helpdesk, &c),
            &bob.id,
            String::new(),
            "bob-new-password".into(),
        )
        .await
        .unwrap();
    // The admin route with one's own id is refused (it would skip the current password).
    let err = e
        .identity
        .set_password(
            &ctx_from(&helpdesk, &c),
            &helpdesk.sub,
            String::new(),
            "new-password-12".into(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Conflict(_)), "{err:?}");
    session(&e, "admin", "admin-password-1").await;
}

async fn parallel_guesses_cannot_slip_past_the_lockout(backend: Backend) {
    let e = env(backend, config()).await; // lockout_threshold = 3
    let guesses = (0..12).map(|i| {
        let identity = e.identity.clone();
        let gateway = e.gateway.clone();
        tokio::spawn(async move {
            identity
                .login(
                    &gateway,
                    "admin",
                    format!("wrong-password-{i}"),
                    "",
                    &client(),
                )
                .await
        })
    });
    let results = futures::future::join_all(guesses).await;
    let checked = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(IdentityError::InvalidCredentials))))
        .count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(IdentityError::Locked { .. }))))
        .count();
    assert!(
        checked <= 3,
        "{backend:?}: {checked} guesses were checked against the password"
    );
    assert_eq!(checked + refused, 12);
    // Locked now, even for the right password.
    assert!(matches!(
        e.identity
            .login(
                &e.gateway,
                "admin",
                "admin-password-1".into(),
                "",
                &client()
            )
            .await,
        Err(IdentityError::Locked { .. })
    ));
}

fn group_name(name: &str) -> GroupName {
    GroupName::parse(name).unwrap()
}

fn new_group(name: &str, description: &str) -> NewGroup {
    NewGroup::try_from(pb::CreateGroupRequest {
        name: name.into(),
        description: description.into(),
    })
    .unwrap()
}

fn membership(group: &str, username: &str) -> Membership {
    Membership {
        group: group_name(group),
        username: Username::parse(username).unwrap(),
    }
}

fn query(username: &str, org_id: Option<&str>) -> UserGroupsQuery {
    UserGroupsQuery {
        username: Username::parse(username).unwrap(),
        org_id: org_id.map(str::to_owned),
    }
}

async fn every_org_has_an_admins_group_that_cannot_be_deleted(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    let groups = e.identity.list_groups(&admin).await.unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        (groups[0].name.as_str(), groups[0].member_count),
        ("admins", 1)
    );
    let admins = e
        .identity
        .group(&admin, &group_name("admins"))
        .await
        .unwrap();
    assert_eq!(admins.members, ["admin"]);
    assert_eq!(admins.group.description, "Administrators of the org");
    let err = e
        .identity
        .delete_group(&ctx(&admin), &group_name("admins"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IdentityError::Conflict(m) if m.contains("\"admins\" group cannot be deleted")),
        "{err:?}"
    );
    assert_eq!(
        e.identity
            .groups_of(&admin.org_id, &Username::parse("admin").unwrap())
            .await
            .unwrap(),
        ["admins"]
    );
    // A new org gets its own admins group, empty.
    let other = e.identity.store().ensure_org("other").await.unwrap();
    let theirs = e.identity.store().list_groups(&other).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(
        (theirs[0].name.as_str(), theirs[0].member_count),
        ("admins", 0)
    );
    assert_ne!(theirs[0].id, groups[0].id);
    // Asking again changes nothing.
    assert_eq!(e.identity.store().ensure_org("other").await.unwrap(), other);
    assert_eq!(
        e.identity.store().list_groups(&other).await.unwrap(),
        theirs
    );
}

async fn groups_are_created_filled_emptied_deleted_announced_and_audited(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    let mut events = e.cache.listen::<GroupsChanged>();
    for name in ["bob", "carol"] {
        e.identity
            .create_user(&ctx(&admin), name, "user-password-123".into(), &[])
            .await
            .unwrap();
    }
    let ops = e
        .identity
        .create_group(&ctx(&admin), new_group("ops", "Runs the fleet"))
        .await
        .unwrap();
    assert_eq!(
        (ops.group.name.as_str(), ops.group.description.as_str()),
        ("ops", "Runs the fleet")
    );
    assert!(ops.members.is_empty());
    let dup = e
        .identity
        .create_group(&ctx(&admin), new_group("ops", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(&dup, IdentityError::AlreadyExists(m) if m == "group \"ops\""),
        "{dup:?}"
    );
    e.identity
        .create_group(&ctx(&admin), new_group("dev", ""))
        .await
        .unwrap();

    // Members by username (any case); adding twice changes nothing.
    assert!(
        e.identity
            .add_group_member(&ctx(&admin), &membership("ops", "Bob"))
            .await
            .unwrap()
    );
    assert!(
        !e.identity
            .add_group_member(&ctx(&admin), &membership("ops", "bob"))
            .await
            .unwrap()
    );
    for (group, user) in [("ops", "carol"), ("dev", "bob")] {
        assert!(
            e.identity
                .add_group_member(&ctx(&admin), &membership(group, user))
                .await
                .unwrap()
        );
    }
    for (group, user, missing) in [
        ("ops", "nobody", "user \"nobody\""),
        ("nope", "bob", "group \"nope\""),
    ] {
        let err = e
            .identity
            .add_group_member(&ctx(&admin), &membership(group, user))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IdentityError::NotFound(m) if m == missing),
            "{err:?}"
        );
    }
    let listed: Vec<(String, i64)> = e
        .identity
        .list_groups(&admin)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.name, g.member_count))
        .collect();
    assert_eq!(
        listed,
        [("admins".into(), 1), ("dev".into(), 1), ("ops".into(), 2)]
    );
    let got = e.identity.group(&admin, &group_name("ops")).await.unwrap();
    assert_eq!(got.members, ["bob", "carol"]);
    assert!(got.group.updated_at_ms >= got.group.created_at_ms);
    let bob_groups = e
        .identity
        .groups_of(&admin.org_id, &Username::parse("bob").unwrap())
        .await
        .unwrap();
    assert_eq!(bob_groups, ["dev", "ops"]);

    // Removing: once; a second time the membership is not found.
    e.identity
        .remove_group_member(&ctx(&admin), &membership("ops", "bob"))
        .await
        .unwrap();
    let err = e
        .identity
        .remove_group_member(&ctx(&admin), &membership("ops", "bob"))
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::NotFound(_)), "{err:?}");
    // Deleting a group removes its memberships.
    e.identity
        .delete_group(&ctx(&admin), &group_name("dev"))
        .await
        .unwrap();
    let err = e
        .identity
        .delete_group(&ctx(&admin), &group_name("dev"))
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::NotFound(_)), "{err:?}");
    assert!(
        e.identity
            .groups_of(&admin.org_id, &Username::parse("bob").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        e.identity.group(&admin, &group_name("dev")).await,
        Err(IdentityError::NotFound(_))
    ));

    // Every change was announced for the org: create x2, add x3, remove, delete
    // (not the add that changed nothing, nor the refusals).
    for _ in 0..7 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("a GroupsChanged event")
            .unwrap();
        assert_eq!(event.org_id, admin.org_id);
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), events.recv())
            .await
            .is_err(),
        "one event per change"
    );

    let actions: Vec<(String, String)> = e
        .identity
        .store()
        .audit_actions(&admin.org_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|(a, _)| a.starts_with("group."))
        .collect();
    let count = |action: &str| actions.iter().filter(|(a, _)| a == action).count();
    assert_eq!(
        (
            count("group.create"),
            count("group.member.add"),
            count("group.member.remove"),
            count("group.delete")
        ),
        (2, 3, 1, 1),
        "{actions:?}"
    );
    assert!(actions.iter().all(|(_, outcome)| outcome == "success"));
}

async fn groups_need_user_scopes_stay_in_their_org_and_admins_needs_star(backend: Backend) {
    let e = env(backend, config()).await;
    let (_, admin) = session(&e, "admin", "admin-password-1").await;
    for (name, scopes) in [
        ("reader", vec!["users:read".to_owned()]),
        ("helpdesk", vec!["users:admin".to_owned()]),
        ("bob", vec![]),
    ] {
        e.identity
            .create_user(&ctx(&admin), name, "user-password-123".into(), &scopes)
            .await
            .unwrap();
    }
    let (_, reader) = session(&e, "reader", "user-password-123").await;
    let (_, helpdesk) = session(&e, "helpdesk", "user-password-123").await;
    let (_, bob) = session(&e, "bob", "user-password-123").await;
    e.identity
        .create_group(&ctx(&admin), new_group("ops", ""))
        .await
        .unwrap();

    // Reading needs users:read, writing users:admin.
    assert_eq!(e.identity.list_groups(&reader).await.unwrap().len(), 2);
    assert!(matches!(
        e.identity.list_groups(&bob).await,
        Err(IdentityError::MissingScope(s)) if s == "users:read"
    ));
    assert!(matches!(
        e.identity.group(&bob, &group_name("ops")).await,
        Err(IdentityError::MissingScope(_))
    ));
    assert!(matches!(
        e.identity.create_group(&ctx(&reader), new_group("qa", "")).await,
        Err(IdentityError::MissingScope(s)) if s == "users:admin"
    ));
    assert!(matches!(
        e.identity
            .add_group_member(&ctx(&reader), &membership("ops", "bob"))
            .await,
        Err(IdentityError::MissingScope(_))
    ));
    assert!(matches!(
        e.identity
            .delete_group(&ctx(&reader), &group_name("ops"))
            .await,
        Err(IdentityError::MissingScope(_))
    ));
    assert!(matches!(
        e.identity.list_groups(&e.gateway).await,
        Err(IdentityError::WrongCaller(_))
    ));

    // users:admin manages ordinary groups, but not who administers the org.
    assert!(
        e.identity
            .add_group_member(&ctx(&helpdesk), &membership("ops", "bob"))
            .await
            .unwrap()
    );
    for attempt in [
        e.identity
            .add_group_member(&ctx(&helpdesk), &membership("admins", "helpdesk"))
            .await
            .map(|_| ()),
        e.identity
            .remove_group_member(&ctx(&helpdesk), &membership("admins", "admin"))
            .await,
    ] {
        let err = attempt.unwrap_err();
        assert!(
            matches!(&err, IdentityError::Forbidden(m) if m.contains("\"admins\"")),
            "{err:?}"
        );
    }
    // The `*` admin may: the admins group can be emptied, and filled again.
    e.identity
        .remove_group_member(&ctx(&admin), &membership("admins", "admin"))
        .await
        .unwrap();
    assert!(
        e.identity
            .add_group_member(&ctx(&admin), &membership("admins", "admin"))
            .await
            .unwrap()
    );

    // A user's groups: themself, users:read, or an internal service.
    assert_eq!(
        e.identity
            .user_groups(&bob, &query("bob", None))
            .await
            .unwrap(),
        ["ops"]
    );
    assert!(matches!(
        e.identity.user_groups(&bob, &query("admin", None)).await,
        Err(IdentityError::MissingScope(_))
    ));
    assert_eq!(
        e.identity
            .user_groups(&reader, &query("admin", None))
            .await
            .unwrap(),
        ["admins"]
    );
    assert_eq!(
        e.identity
            .user_groups(&e.gateway, &query("bob", None))
            .await
            .unwrap(),
        ["ops"]
    );
    assert_eq!(
        e.identity
            .user_groups(&e.gateway, &query("bob", Some(&admin.org_id)))
            .await
            .unwrap(),
        ["ops"]
    );

    // Another org: its users and groups are out of sight.
    let other_org = e.identity.store().ensure_org("other").await.unwrap();
    let hash = "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$3+ff2kGyoNnRcr6FSw6BzQ";
    e.identity
        .store()
        .insert_user(&other_org, "carol", hash, &["*".into()])
        .await
        .unwrap();
    for attempt in [
        e.identity
            .add_group_member(&ctx(&admin), &membership("ops", "carol"))
            .await
            .map(|_| ()),
        e.identity
            .user_groups(&admin, &query("carol", None))
            .await
            .map(|_| ()),
        e.identity
            .user_groups(&e.gateway, &query("bob", Some(&other_org)))
            .await
            .map(|_| ()),
    ] {
        let err = attempt.unwrap_err();
        assert!(
            matches!(&err, IdentityError::NotFound(m) if m.starts_with("user ")),
            "{err:?}"
        );
    }
    assert!(matches!(
        e.identity
            .user_groups(&bob, &query("bob", Some(&other_org)))
            .await,
        Err(IdentityError::Forbidden(_))
    ));
    assert!(
        e.identity
            .user_groups(&e.gateway, &query("carol", None))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        e.identity
            .store()
            .list_groups(&other_org)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn the_groups_migration_gives_existing_orgs_their_admins(backend: Backend) {
    let (db, _guard) = testing::fresh(backend).await;
    let identity_v1 = db::MigrationSet {
        component: "identity",
        migrations: &lattice_identity::store::migrations().migrations[..1],
    };
    db::migrate(&db, &[db::CORE_MIGRATIONS, identity_v1], true)
        .await
        .unwrap();
    // Two orgs as version 1 left them: `*` holders (whatever else they hold) become
    // admins of their own org, nobody else does.
    for (id, name) in [("org-a", "a"), ("org-b", "b")] {
        sqlx::query("INSERT INTO identity_orgs (id, name, created_at_ms) VALUES ($1, $2, 1)")
            .bind(id)
            .bind(name)
            .execute(db.pool())
            .await
            .unwrap();
    }
    for (id, org, username, scopes) in [
        ("u1", "org-a", "root", r#"["*"]"#),
        ("u2", "org-a", "ops", r#"["kv:read","nodes:write"]"#),
        ("u3", "org-a", "both", r#"["*","kv:read"]"#),
        ("u4", "org-b", "boss", r#"["*"]"#),
        ("u5", "org-b", "none", "[]"),
    ] {
        sqlx::query(
            "INSERT INTO identity_users (id, org_id, username, password_hash, scopes, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'x', $4, 1, 1)",
        )
        .bind(id)
        .bind(org)
        .bind(username)
        .bind(scopes)
        .execute(db.pool())
        .await
        .unwrap();
    }
    let report = db::migrate(&db, &lattice_identity::migration_sets(), true)
        .await
        .unwrap();
    // Version 2 (groups) and every later one.
    assert_eq!(report.applied[0].1, 2, "{:?}", report.applied);
    assert_eq!(
        report.applied.len(),
        lattice_identity::store::migrations().migrations.len() - 1,
        "{:?}",
        report.applied
    );
    let store = lattice_identity::store::Store::new(db.clone());
    let before = lattice_core::time::now_ms() - 60_000;
    let mut ids = Vec::new();
    for (org, members) in [("org-a", vec!["both", "root"]), ("org-b", vec!["boss"])] {
        let groups = store.list_groups(org).await.unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        let admins = &groups[0];
        assert_eq!(admins.name, "admins");
        assert_eq!(admins.id.len(), 36, "a UUID: {}", admins.id);
        assert!(admins.created_at_ms > before, "{}", admins.created_at_ms);
        assert_eq!(store.group_members(org, &admins.id).await.unwrap(), members);
        ids.push(admins.id.clone());
    }
    assert_ne!(ids[0], ids[1]);
    // Running it again finds nothing to do.
    let again = db::migrate(&db, &lattice_identity::migration_sets(), true)
        .await
        .unwrap();
    assert!(again.applied.is_empty());
}

lattice_core::store_test_suite!(
    bootstrap_runs_once_and_admin_logs_in,
    unknown_user_and_wrong_password_look_the_same_and_lock_after_threshold,
    per_ip_throttle_answers_429,
    totp_enrollment_two_step_login_replay_and_recovery_codes,
    tokens_never_exceed_their_creator_and_revocation_is_immediate,
    orgs_are_isolated,
    sessions_end_at_logout_and_service_calls_need_service_principals,
    failed_logins_without_a_username_are_audited_with_an_actor,
    a_users_admin_cannot_take_over_a_more_privileged_account,
    parallel_guesses_cannot_slip_past_the_lockout,
    every_org_has_an_admins_group_that_cannot_be_deleted,
    groups_are_created_filled_emptied_deleted_announced_and_audited,
    groups_need_user_scopes_stay_in_their_org_and_admins_needs_star,
    the_groups_migration_gives_existing_orgs_their_admins,
);
