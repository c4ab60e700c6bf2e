//! `lattice-server backup` and `restore` with the real binary: a filled server is
//! backed up while it takes writes, restored into a fresh data dir, and everything
//! is there: users and their TOTP (sealed), tokens, KV and secret values (sealed), a
//! static site on its host, nodes, tasks and a verifying audit chain. A restore with
//! the wrong master key, or from a damaged backup, fails and writes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::process::{BIN, spawn_all_in_one};
use common::{ADMIN_PASSWORD, TestServer, json};
use serde_json::json;

fn server_cmd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("LATTICE_MASTER_KEY")
        .env("LATTICE_LOG_LEVEL", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lattice-server")
}

/// `lattice-server --data-dir DATA restore --from FROM`.
fn restore(data: &Path, from: &Path, env: &[(&str, &str)]) -> Output {
    server_cmd(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "restore",
            "--from",
            from.to_str().unwrap(),
        ],
        env,
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn has_database(dir: &Path) -> bool {
    dir.join("lattice.db").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_everything() {
    common::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (a, bk, c) = (
        dir.path().join("a"),
        dir.path().join("backup"),
        dir.path().join("c"),
    );
    let (server, url) = spawn_all_in_one(&a, "off", &[]);
    let s = TestServer::external(&url, reqwest::Client::new());
    let admin = s.admin_token(&["*"]).await;

    // Fill it.
    let tina = s.user_token("tina", &["kv:read"]).await;
    let (seed, now) = s.enable_totp("tina", "user-password-1234").await;
    for (name, secret) in [("conf", false), ("vault", true)] {
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &admin,
                Some(json!({"name": name, "surface": "kv", "secret": secret})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
    }
    for (path, value) in [
        ("/api/v1/kv/conf/title", "Lattice"),
        ("/api/v1/kv/vault/db", "s3cret-value"),
    ] {
        let (status, b) = s
            .call("PUT", path, &admin, Some(json!({"value": value})))
            .await;
        assert_eq!(status, 200, "{b}");
    }
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/buckets",
            &admin,
            Some(json!({"name": "site", "surface": "static"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    s.deploy(
        &admin,
        "site",
        &[("index.html", b"<h1>restored</h1>")],
        true,
    )
    .await;
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            &admin,
            Some(json!({"host": "site.example.test", "bucket": "site"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let me = s.call("GET", "/api/v1/auth/me", &admin, None).await.1;
    let node = "0190c3f0-0000-7000-8000-0000000bac0f";
    common::insert_node(
        &format!("sqlite://{}", a.join("lattice.db").display()),
        node,
        me["org_id"].as_str().unwrap(),
    )
    .await;
    let (status, task) = s
        .call(
            "POST",
            "/api/v1/tasks",
            &admin,
            Some(json!({"node": node, "kind": "facts.refresh"})),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    let task = task["id"].as_str().unwrap().to_owned();

    // Back up while a writer keeps writing; what was acknowledged before the
    // backup began must be in it.
    let writer = common::KvWriter::start(&s, &admin, "conf");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = writer.acked();
    assert!(!before.is_empty(), "the writer is writing");
    let (a_dir, b_dir) = (a.display().to_string(), bk.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        server_cmd(&["--data-dir", &a_dir, "backup", "--to", &b_dir], &[])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("backed up"), "{}", text(&out));
    writer.stop().await;
    drop(server);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bk.join("lattice-backup.json")).unwrap()).unwrap();
    assert_eq!(manifest["master_key"], "included");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(bk.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key in a backup is private");
    }

    // The wrong master key: refused, saying why, nothing written.
    let wrong = dir.path().join("wrong");
    let out = restore(&wrong, &bk, &[("LATTICE_MASTER_KEY", &"ab".repeat(32))]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not the one this backup was made with"),
        "{}",
        text(&out)
    );
    assert!(!has_database(&wrong), "nothing restored");
    // A damaged file: refused, naming it.
    let damaged = dir.path().join("damaged");
    copy_dir(&bk, &damaged);
    let index = damaged.join("lattice.db");
    let mut bytes = std::fs::read(&index).unwrap();
    let n = bytes.len() / 2;
    bytes[n] ^= 0xff;
    std::fs::write(&index, bytes).unwrap();
    let out = restore(&wrong, &damaged, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("lattice.db is damaged"),
        "{}",
        text(&out)
    );
    assert!(!has_database(&wrong));

    // Restored into a fresh data dir, it is all there.
    let out = restore(&c, &bk, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = restore(&c, &bk, &[]);
    assert!(
        !out.status.success(),
        "a second restore over a database is refused"
    );
    assert!(text(&out).contains("fresh data dir"), "{}", text(&out));
    let (_server, url) = spawn_all_in_one(&c, "off", &[]);
    let r = TestServer::external(&url, reqwest::Client::new());
    let (status, _) = r.call("GET", "/api/v1/auth/me", &admin, None).await;
    assert_eq!(status, 200, "the admin's token");
    let (status, _) = r.call("GET", "/api/v1/kv/conf/title", &tina, None).await;
    assert_eq!(status, 200, "tina's token");
    r.login("admin", ADMIN_PASSWORD).await;
    // Tina's TOTP seed was sealed: her login needs a code from it.
    let resp = r
        .http
        .post(r.url("/api/v1/auth/login"))
        .json(&json!({"username": "tina", "password": "user-password-1234"}))
        .send()
        .await
        .unwrap();
    let (_, step) = json(resp).await;
    assert_eq!(step["mfa_required"], true, "{step}");
    let code = lattice_identity::totp::code_at(&seed, now + 30);
    let resp = r
        .http
        .post(r.url("/api/v1/auth/login/totp"))
        .json(&json!({"mfa_token": step["mfa_token"], "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the sealed TOTP seed opens");
    let (status, v) = r.call("GET", "/api/v1/kv/vault/db", &admin, None).await;
    assert_eq!(
        (status, v["value"].as_str()),
        (200, Some("s3cret-value")),
        "{v}"
    );
    for i in before {
        let (status, _) = r
            .call("GET", &format!("/api/v1/kv/conf/load-{i}"), &admin, None)
            .await;
        assert_eq!(status, 200, "acknowledged write load-{i}");
    }
    let page = r.host_get("site.example.test", "/").send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "<h1>restored</h1>");
    let (status, n) = r
        .call("GET", &format!("/api/v1/nodes/{node}"), &admin, None)
        .await;
    assert_eq!(status, 200, "{n}");
    let (status, t) = r
        .call("GET", &format!("/api/v1/tasks/{task}"), &admin, None)
        .await;
    assert_eq!(status, 200, "{t}");
    let (status, v) = r.call("GET", "/api/v1/audit/verify", &admin, None).await;
    assert_eq!((status, v["ok"].as_bool()), (200, Some(true)), "{v}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), dst).unwrap();
        }
    }
}
