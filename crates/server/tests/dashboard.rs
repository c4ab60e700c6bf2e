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
}

/// Seed 000's first steps: sign in as the bootstrap admin, see the first-run notice,
/// enrol TOTP by reading the secret from the page, change the password, sign out and
/// back in with the new password and a TOTP code, create a node's join token; and a
/// form posted without the CSRF header is refused.
#[tokio::test]
async fn first_run_in_a_real_browser() {
    let Some((chromium, driver)) = find_browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but chromium and chromium-driver are not installed"
        );
        eprintln!("skipped: no chromium/chromedriver here (scripts/test.sh installs them)");
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
