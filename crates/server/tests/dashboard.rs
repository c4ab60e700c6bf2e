//! The dashboard in a real browser: Debian's Chromium, driven through
//! `chromedriver`, against the real `lattice-server` binary. Screenshots of each
//! page land in `target/dashboard-screenshots/`; no page may log a console error.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

mod common;

use common::process::spawn_all_in_one;
use common::webdriver::{Browser, find_browser};

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots")
}

async fn no_console_errors(b: &Browser, page: &str) {
    let severe: Vec<_> = b
        .console()
        .await
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "console errors on {page}: {severe:?}");
    // Nor a missing value drawn as text.
    let text = b.run("return document.body.innerText", json!([])).await;
    let text = text.as_str().unwrap_or_default();
    assert!(
        !text.contains("undefined")
            && !text
                .lines()
                .any(|l| l.trim() == "null" || l.contains("NaN")),
        "{page} shows a missing value:\n{text}"
    );
}

/// Seed 000's first steps: sign in as the bootstrap admin, see the first-run notice,
/// enrol TOTP by reading the secret from the page, change the password, sign out and
/// back in with the new password and a TOTP code, create a node's join token; and a
/// form posted without the CSRF header is refused.
#[tokio::test]
async fn first_run_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        return;
    };
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = spawn_all_in_one(dir.path(), "off", &[]);
    let shots = screenshots();
    let b = Browser::start(&chromium, &driver).await;

    // Unauthenticated: the dashboard sends you to sign in.
    b.goto(&format!("{base}/")).await;
    b.wait("h1", "Sign in to Lattice").await;
    assert!(b.url().await.contains("/ui/login"), "{}", b.url().await);
    b.screenshot(&shots, "sign-in").await;
    // The browser logs the refused requests it made (the 401 of "who am I"); those
    // are answers, not script errors. From here on the console must stay clean.
    let _ = b.console().await;

    // A wrong password is shown next to the form, and the username is kept.
    b.fill("input[name=username]", "admin").await;
    b.fill("input[name=password]", "not-the-password").await;
    b.press("Sign in").await;
    b.wait(".error", "").await;
    let kept = b
        .run(
            "return document.querySelector('input[name=username]').value",
            json!([]),
        )
        .await;
    assert_eq!(kept, "admin");
    let _ = b.console().await; // the 401 of the wrong password

    b.fill("input[name=password]", common::ADMIN_PASSWORD).await;
    b.press("Sign in").await;
    b.wait("h1", "Overview").await;
    b.wait(".notice", "Secure your account").await;
    b.wait(".card", "nodes connected").await;
    // Recent activity, newest first: this sign-in (and the refused one) are there.
    b.wait("h2", "Recent activity").await;
    for _ in 0..40 {
        let found = b
            .run(
                "return [...document.querySelectorAll('td')].some(t => t.textContent === 'auth.login')",
                json!([]),
            )
            .await;
        if found == json!(true) {
            break;
        }
        // Events reach the audit log shortly after: look again.
        tokio::time::sleep(Duration::from_millis(250)).await;
        b.goto(&format!("{base}/ui/")).await;
        b.wait("h2", "Recent activity").await;
    }
    b.wait("td", "auth.login").await;
    b.screenshot(&shots, "overview").await;
    no_console_errors(&b, "overview").await;

    // TOTP: the secret is on the page; the code an app would show turns it on.
    let account = b.wait("nav a", "Account and security").await;
    b.click(&account).await;
    b.wait("h1", "Account and security").await;
    b.press("Set up TOTP").await;
    let secret = b.text(&b.wait("#totp-secret", "").await).await;
    b.wait(".qr svg", "").await;
    b.screenshot(&shots, "totp-enrolment").await;
    let seed = common::totp_seed(&secret);
    let now = u64::try_from(lattice_core::time::now_ms() / 1000).unwrap();
    b.fill(
        "input[name=code]",
        &lattice_identity::totp::code_at(&seed, now),
    )
    .await;
    b.press("Turn TOTP on").await;
    let codes = b.text(&b.wait("#recovery-codes", "").await).await;
    assert!(
        codes.lines().count() >= 8,
        "recovery codes shown once: {codes}"
    );
    b.press("I have saved them").await;
    b.wait("h1", "Overview").await;
    let notice = b
        .run("return !!document.querySelector('.notice')", json!([]))
        .await;
    assert_eq!(
        notice, false,
        "the first-run notice is gone once TOTP is on"
    );

    // Change the password.
    b.goto(&format!("{base}/ui/account")).await;
    b.wait("h1", "Account and security").await;
    b.fill("input[name=current_password]", common::ADMIN_PASSWORD)
        .await;
    b.fill("input[name=new_password]", "a-new-long-password-2")
        .await;
    b.press("Change password").await;
    b.wait(".success", "Password changed").await;
    b.screenshot(&shots, "account").await;

    // Sign out, then in again: the new password, then a TOTP code.
    b.press("Sign out").await;
    b.wait("h1", "Sign in to Lattice").await;
    b.fill("input[name=username]", "admin").await;
    b.fill("input[name=password]", "a-new-long-password-2")
        .await;
    b.press("Sign in").await;
    b.wait("label", "Code").await;
    b.screenshot(&shots, "sign-in-totp").await;
    // The code of the next 30 s step (the one that enrolled cannot be used twice).
    b.fill(
        "input[name=code]",
        &lattice_identity::totp::code_at(&seed, now + 30),
    )
    .await;
    b.press("Verify").await;
    b.wait("h1", "Overview").await;

    // Add a node: a join token and the install command, shown once.
    let nodes = b.wait("nav a", "Nodes").await;
    b.click(&nodes).await;
    b.wait("h1", "Nodes").await;
    b.wait(".empty", "No nodes yet").await;
    b.press("Add node").await;
    b.fill("input[name=labels]", "env=test").await;
    b.press("Create join token").await;
    let command = b.text(&b.wait("pre", "lattice-agent enroll").await).await;
    assert!(command.contains("--token"), "{command}");
    b.screenshot(&shots, "add-node").await;

    // Tasks page.
    let tasks = b.wait("nav a", "Tasks").await;
    b.click(&tasks).await;
    b.wait("h1", "Tasks").await;
    b.wait(".empty", "No tasks match").await;
    b.screenshot(&shots, "tasks").await;
    no_console_errors(&b, "nodes and tasks").await;

    // An agent release, uploaded from the changes page with its progress bar.
    let changes = b.wait("nav a", "Reviewed changes").await;
    b.click(&changes).await;
    b.wait("h1", "Reviewed changes").await;
    let binary = dir.path().join("lattice-agent");
    std::fs::write(&binary, vec![0x7f; 64 * 1024]).unwrap();
    b.fill("input[name=version]", "9.9.9").await;
    b.fill("input[name=binary]", binary.to_str().unwrap()).await;
    b.press("Upload release").await;
    b.wait(
        ".success",
        "Release 9.9.9 (x86_64, 64.0 KiB) stored and signed",
    )
    .await;
    no_console_errors(&b, "the changes page").await;

    // A state-changing form posted without the CSRF header is refused: the session
    // cookie alone is not enough.
    b.run(
        "const f = document.createElement('form');
         f.method = 'POST'; f.action = '/api/v1/nodes/join-tokens';
         document.body.append(f); f.submit();",
        json!([]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = b.run("return document.body.innerText", json!([])).await;
    assert!(body.as_str().unwrap().contains("X-CSRF-Token"), "{body}");
    // (The refusal page itself logs its 403; that is the expected answer.)
    let _ = b.console().await;

    // Assets are fingerprinted and immutable; the shell is never cached.
    let http = reqwest::Client::new();
    let shell = http.get(format!("{base}/ui/nodes")).send().await.unwrap();
    assert_eq!(shell.headers()["cache-control"], "no-cache");
    let csp = shell.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let html = shell.text().await.unwrap();
    let js = html
        .split('"')
        .find(|s| s.starts_with("/ui/assets/app.") && s.ends_with(".js"))
        .unwrap()
        .to_owned();
    let asset = http.get(format!("{base}{js}")).send().await.unwrap();
    assert_eq!(asset.status(), 200);
    assert!(
        asset.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    // JSON answers are gzip'd for a client that takes it, and only then.
    let gz = http
        .get(format!("{base}/api/v1/openapi.json"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let bytes = gz.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
        .unwrap();
    let plain = http
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(text, plain.text().await.unwrap());
    assert!(
        bytes.len() * 4 < text.len(),
        "{} -> {}",
        text.len(),
        bytes.len()
    );
    assert_eq!(
        http.get(format!("{base}/ui/assets/app.000000000000.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    b.quit().await;
}

/// Sign in through the form (no TOTP).
async fn sign_in(b: &Browser, base: &str, password: &str) {
    b.goto(&format!("{base}/ui/login")).await;
    b.fill("input[name=username]", "admin").await;
    b.fill("input[name=password]", password).await;
    b.press("Sign in").await;
    b.wait("h1", "Overview").await;
}

/// Answer the confirmation dialog.
async fn confirm(b: &Browser, action: &str) {
    let yes = b.wait("dialog button", action).await;
    b.click(&yes).await;
}

/// Seed 002's pages: a KV edit that meets somebody else's write shows the conflict
/// instead of overwriting it; a static site uploaded twice, bound to a host, rolled
/// back from the deployments list, and fetched from the bound host after each step.
#[tokio::test]
async fn kv_and_static_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        return;
    };
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = spawn_all_in_one(dir.path(), "off", &[]);
    let shots = screenshots();
    let b = Browser::start(&chromium, &driver).await;
    sign_in(&b, &base, common::ADMIN_PASSWORD).await;
    let _ = b.console().await;

    // KV: a bucket, a key, then somebody else writes it while it is open here.
    let kv = b.wait("nav a", "KV Store").await;
    b.click(&kv).await;
    b.wait("h1", "KV Store").await;
    b.wait(".empty", "No KV bucket yet").await;
    b.fill("#buckets input[name=name]", "config").await;
    b.press("Create bucket").await;
    b.wait(".empty", "No keys yet").await;
    b.press("New key").await;
    b.fill("#kv-entry input[name=key]", "site-title").await;
    b.fill("#kv-entry textarea[name=value]", "\"Lattice\"")
        .await;
    b.press("Create").await;
    b.wait(".success", "Saved version 1").await;

    let api = common::TestServer::external(&base, reqwest::Client::new());
    let (cookie, csrf) = api.login("admin", common::ADMIN_PASSWORD).await;
    let other = api
        .http
        .put(format!("{base}/api/v1/kv/config/site-title"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("if-match", "\"1\"")
        .json(&json!({"value": "written elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    b.fill("#kv-entry textarea[name=value]", "\"Mine\"").await;
    b.press("Save").await;
    let conflict = b.wait("#kv-conflict", "version 2").await;
    assert!(b.text(&conflict).await.contains("written elsewhere"));
    b.screenshot(&shots, "kv-conflict").await;
    let (status, stored) = common::json(
        api.http
            .get(format!("{base}/api/v1/kv/config/site-title"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &stored["value"]),
        (200, &json!("written elsewhere")),
        "nothing was overwritten"
    );
    b.press("Load the current value").await;
    b.wait("#kv-entry .hint", "Version 2").await;
    let _ = b.console().await; // the 412 is the expected answer
    b.screenshot(&shots, "kv").await;
    // A storage token, shown once, and listed after.
    b.fill("#tokens input[name=name]", "ci-reader").await;
    b.press("Create token").await;
    let token = b.text(&b.wait("#new-storage-token", "lst_").await).await;
    assert!(token.starts_with("lst_"), "{token}");
    b.wait("#tokens td", "ci-reader").await;

    // Static: a bucket, two uploads, a binding, a rollback.
    let st = b.wait("nav a", "Static").await;
    b.click(&st).await;
    b.wait("h1", "Static").await;
    b.fill("#buckets input[name=name]", "site").await;
    b.press("Create bucket").await;
    b.wait(".empty", "Nothing published yet").await;
    for (n, body) in [(1, "first version"), (2, "second version")] {
        let archive = dir.path().join(format!("site{n}.tgz"));
        std::fs::write(
            &archive,
            common::site_archive(&[("index.html", body.as_bytes())]),
        )
        .unwrap();
        b.fill("input[name=archive]", archive.to_str().unwrap())
            .await;
        b.press("Upload and activate").await;
        b.wait(".success", "Deployed 1 files").await;
        for _ in 0..50 {
            let rows = b
                .run(
                    "return document.querySelectorAll('#deployments tbody tr').length",
                    json!([]),
                )
                .await;
            if rows == json!(n) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    b.fill("#bindings input[name=host]", "site.test").await;
    b.press("Bind host").await;
    b.wait("#bindings td", "site.test").await;

    let fetch_site = || async {
        reqwest::Client::new()
            .get(format!("{base}/"))
            .header("host", "site.test")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let until = |want: &'static str| {
        let fetch_site = &fetch_site;
        async move {
            for _ in 0..50 {
                if fetch_site().await == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("site.test never served {want:?}");
        }
    };
    until("second version").await;
    b.screenshot(&shots, "static").await;

    // Roll back: activate the older deployment from the list.
    b.press("Activate").await;
    confirm(&b, "Activate").await;
    until("first version").await;
    no_console_errors(&b, "the static page").await;

    // Policies: an error shown at its line, then a valid policy previewed and saved.
    let pol = b.wait("nav a", "Policies").await;
    b.click(&pol).await;
    b.wait("h1", "Policies").await;
    let new = b.wait("a", "New policy").await;
    b.click(&new).await;
    b.wait("h1", "New policy").await;
    b.fill("input[name=name]", "ssh-for-admins").await;
    b.fill(
        "textarea[name=policies]",
        "permit(principal, action == Lattice::Action::\"AccessNode\", resource)\nwhen { context.port == };",
    )
    .await;
    b.press("Check").await;
    b.wait("#policy-problems .error", "Line 2").await;
    b.screenshot(&shots, "policy-error").await;
    b.fill(
        "textarea[name=policies]",
        "permit(principal in Lattice::Group::\"admins\", action == Lattice::Action::\"AccessNode\", resource)\nwhen { context.port == 22 };",
    )
    .await;
    b.press("Preview and save").await;
    b.wait("#policy-preview", "What would change").await;
    b.press("Save policy").await;
    b.wait("h1", "Policy ssh-for-admins").await;
    b.screenshot(&shots, "policy").await;
    no_console_errors(&b, "the policy pages").await;

    // An invitation link leads to the dashboard: bob signs in and accepts it.
    let call =
        |method: reqwest::Method, path: &str, cookie: &str, csrf: &str, body: serde_json::Value| {
            api.http
                .request(method, format!("{base}{path}"))
                .header("cookie", cookie)
                .header("x-csrf-token", csrf)
                .json(&body)
                .send()
        };
    let r = call(
        reqwest::Method::POST,
        "/api/v1/orgs",
        &cookie,
        &csrf,
        json!({"name": "acme"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = call(
        reqwest::Method::POST,
        "/api/v1/users",
        &cookie,
        &csrf,
        json!({"username": "bob", "password": "bob-password-1234", "scopes": ["nodes:read"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let (acme_cookie, acme_csrf) = api.login_in("admin", common::ADMIN_PASSWORD, "acme").await;
    let (status, invitation) = common::json(
        call(
            reqwest::Method::POST,
            "/api/v1/invitations",
            &acme_cookie,
            &acme_csrf,
            json!({"username": "bob", "scopes": ["kv:read"]}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{invitation}");
    let link = invitation["link"].as_str().unwrap();
    b.press("Sign out").await;
    b.wait("h1", "Sign in to Lattice").await;
    let path = link.split_once("/ui/").unwrap().1;
    b.goto(&format!("{base}/ui/{path}")).await;
    b.wait("h1", "Sign in to Lattice").await;
    b.fill("input[name=username]", "bob").await;
    b.fill("input[name=password]", "bob-password-1234").await;
    b.press("Sign in").await;
    b.press("Accept invitation").await;
    b.wait(".success", "You are a member of acme").await;
    b.quit().await;
}

/// Seed 000's first deployment to the end, and the product's core promise, from the
/// dashboard alone: sign in with TOTP, add a node and start the real `lattice-agent`
/// with the command the page shows, see it connected with facts, a chart with points
/// and its log lines, enable the firewall capability, write an intent, plan it,
/// review the diff and approve the hash with a fresh TOTP code, and see the rule
/// applied on the node (its nft runs in a network namespace of the test's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_node_and_a_reviewed_change_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        return;
    };
    let Some(ns) = common::netns::Netns::new() else {
        eprintln!("skipped here: `unshare -rn nft` is not available (CI requires it)");
        return;
    };
    common::install_crypto();
    let s = common::TestServer::start_with(lattice_core::db::Backend::Sqlite, common::agents::FAST)
        .await;
    let (seed, enrolled_at) = s.enable_totp("admin", common::ADMIN_PASSWORD).await;
    let shots = screenshots();
    let b = Browser::start(&chromium, &driver).await;

    // Sign in: password, then the code of the next step (the enrolling one is used).
    b.goto(&s.url("/ui/login")).await;
    b.fill("input[name=username]", "admin").await;
    b.fill("input[name=password]", common::ADMIN_PASSWORD).await;
    b.press("Sign in").await;
    b.wait("label", "Code").await;
    let login_step = (enrolled_at + 30) / 30;
    b.fill(
        "input[name=code]",
        &lattice_identity::totp::code_at(&seed, login_step * 30),
    )
    .await;
    b.press("Verify").await;
    b.wait("h1", "Overview").await;
    let _ = b.console().await;

    // Add a node; run the agent with the token from the shown command.
    let nodes = b.wait("nav a", "Nodes").await;
    b.click(&nodes).await;
    b.press("Add node").await;
    b.press("Create join token").await;
    let command = b.text(&b.wait("pre", "lattice-agent enroll").await).await;
    let token = command
        .split("--token '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let out = common::agents::enroll(&token, dir.path()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = format!(
        "capabilities = [\"firewall\"]\n[firewall]\nnft = {:?}\nconfirm_s = 5\n\n[[logs]]\ntype = \"file\"\npath = {:?}\n",
        ns.nft(),
        log.display().to_string()
    );
    let _agent = common::agents::run_agent(dir.path(), &config);
    // The list refreshes by itself when the node connects.
    let link = b.wait("#node-list td a", "").await;
    b.wait("#node-list .badge", "connected").await;
    b.click(&link).await;
    b.wait("h2", "Host facts").await;
    b.wait("dl.facts dt", "").await;
    std::fs::write(&log, "hello from the node\n").unwrap();
    // A chart with points (one sample a second here).
    b.wait("#charts figure[aria-label*='CPU']", "CPU").await;
    let latest = b
        .run(
            "return document.querySelector('#charts figure').getAttribute('aria-label')",
            json!([]),
        )
        .await;
    assert!(
        !latest.as_str().unwrap().contains('–'),
        "a chart with points: {latest}"
    );
    let follow = b.wait("label", "Follow").await;
    b.click(&follow).await;
    b.wait(".logs .line", "hello from the node").await;
    b.screenshot(&shots, "node").await;

    // Enable the firewall capability here (the agent's config allows it).
    let cap = b.wait("label", "firewall").await;
    b.click(&cap).await;
    b.press("Save capabilities").await;
    b.wait(".success", "Saved").await;
    let node = b.url().await.rsplit('/').next().unwrap().to_owned();

    // The intent, its plan, and the diff.
    let changes = b.wait("nav a", "Reviewed changes").await;
    b.click(&changes).await;
    let new = b.wait("a", "New intent").await;
    b.click(&new).await;
    b.wait("h1", "New intent").await;
    b.fill("input[name=name]", "web-fw").await;
    b.fill("input[name=selector]", &node).await;
    // A field the policy service refuses: its message, and the field marked.
    b.fill(
        "textarea[name=spec]",
        r#"{"default": "drop", "rules": [{"action": "accept", "protocol": "tcp", "ports": "0"}]}"#,
    )
    .await;
    b.press("Create intent").await;
    b.wait(".error", "spec.rules[0].ports").await;
    let marked = b
        .run(
            "return document.querySelector('textarea[name=spec]').getAttribute('aria-invalid')",
            json!([]),
        )
        .await;
    assert_eq!(marked, "true");
    let _ = b.console().await; // the 422 is the expected answer
    b.fill(
        "textarea[name=spec]",
        r#"{"default": "drop", "rules": [{"action": "accept", "protocol": "tcp", "ports": "22", "from": "10.0.0.0/8", "comment": "ssh"}]}"#,
    )
    .await;
    b.press("Create intent").await;
    b.wait("h1", "Intent web-fw").await;
    b.press("Plan this intent").await;
    b.wait("h1", "Plan for web-fw").await;
    b.wait(".diff .dl.add", "tcp dport 22 accept").await;
    b.screenshot(&shots, "plan").await;

    // Approve with a fresh code: the next step after the one the sign-in used.
    while lattice_core::time::now_ms() / 1000 / 30 < i64::try_from(login_step).unwrap() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.fill(
        "input[name=totp_code]",
        &lattice_identity::totp::code_at(&seed, (login_step + 1) * 30),
    )
    .await;
    b.press("Approve and apply").await;
    b.wait(".sub .badge", "applied").await;
    b.wait("section .badge", "applied").await;
    b.screenshot(&shots, "plan-applied").await;
    let ruleset = ns.run(&["list", "table", "inet", "lattice"]);
    assert!(ruleset.contains("tcp dport 22 accept"), "{ruleset}");
    // The node page shows the table the agent now reports.
    b.goto(&s.url(&format!("/ui/nodes/{node}"))).await;
    let firewall = b.wait("details summary", "firewall").await;
    b.click(&firewall).await;
    b.wait("details pre", "tcp dport 22 accept").await;
    no_console_errors(&b, "the fleet and change pages").await;
    b.quit().await;
}

/// The sign-in page's button, then the provider's login form and consent.
async fn through_provider(b: &Browser, s: &common::TestServer, login: &str) {
    b.goto(&s.url("/ui/login")).await;
    let button = b.wait(".sso a", "Corp SSO").await;
    b.click(&button).await;
    b.fill("input[name=login]", login).await;
    b.fill("input[name=password]", "any").await;
    b.press("Sign-in").await;
    b.press("Continue").await;
}

/// Single sign-on from the sign-in page, against a real OpenID provider: the
/// provider's button, its login and consent, back to the dashboard signed in; and
/// with TOTP on, the code asked on the sign-in page after the provider.
#[tokio::test]
async fn single_sign_on_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        return;
    };
    if !common::oidc::available() {
        return;
    }
    common::install_crypto();
    let s = common::TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    let callback = s.url("/api/v1/auth/sso/corp/callback");
    let op = common::oidc::OpenIdProvider::start(
        &json!([{"client_id": "lattice", "client_secret": "a-client-secret-of-some-length",
                 "redirect_uris": [callback]}]),
        &json!({"alice": {"email": "alice@example.com", "email_verified": true},
                "dave": {"email": "dave@example.com", "email_verified": true}}),
    );
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/sso/providers",
            &admin,
            Some(
                json!({"name": "corp", "display_name": "Corp SSO", "issuer": op.issuer,
                "client_id": "lattice", "client_secret": "a-client-secret-of-some-length"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    for user in ["alice@example.com", "dave@example.com"] {
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/users",
                &admin,
                Some(json!({"username": user, "password": "user-password-1234",
                    "scopes": ["nodes:read", "tasks:read"]})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
    }
    let (seed, enrolled_at) = s
        .enable_totp("dave@example.com", "user-password-1234")
        .await;
    let shots = screenshots();
    let b = Browser::start(&chromium, &driver).await;

    b.goto(&s.url("/ui/login")).await;
    b.wait(".sso a", "Corp SSO").await;
    b.screenshot(&shots, "sign-in-sso").await;
    through_provider(&b, &s, "alice").await;
    b.wait("h1", "Overview").await;
    b.wait(".top a", "alice@example.com").await;
    b.press("Sign out").await;
    b.wait("h1", "Sign in to Lattice").await;
    b.quit().await;

    // TOTP on: after the provider, the sign-in page asks for the code. (A new
    // browser: the provider remembers alice in this one.)
    let b = Browser::start(&chromium, &driver).await;
    through_provider(&b, &s, "dave").await;
    b.wait("p", "Single sign-on succeeded").await;
    assert!(
        !b.url().await.contains("mfa="),
        "the challenge leaves the address bar"
    );
    b.fill(
        "input[name=code]",
        &lattice_identity::totp::code_at(&seed, enrolled_at + 30),
    )
    .await;
    b.press("Verify").await;
    b.wait("h1", "Overview").await;
    b.wait(".top a", "dave@example.com").await;
    // (The provider's own pages log what they log; only ours are checked.)
    let _ = b.console().await;
    b.goto(&s.url("/ui/nodes")).await;
    b.wait("h1", "Nodes").await;
    no_console_errors(&b, "nodes after single sign-on").await;
    b.quit().await;
    s.stop().await;
}
