//! Black-box tests of the compiled `lattice-server`: the split deployment (identity
//! and gateway as two processes) behaves like the all-in-one process, and bad
//! configuration is refused with every bad field named.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

const JWT_SECRET: &str = "a-shared-internal-secret-of-enough-length";

use common::process::{BIN, spawn, spawn_all_in_one};

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn gateway_and_identity_as_two_processes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let identity_dir = dir.path().join("identity");
    let gateway_dir = dir.path().join("gateway");
    let common = [
        ("JWT_SECRET", JWT_SECRET),
        ("LATTICE_IDENTITY__ARGON2_MEMORY_KIB", "64"),
        ("LATTICE_IDENTITY__ARGON2_ITERATIONS", "1"),
        ("LATTICE_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-1"),
    ];
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ops_listen = format!("127.0.0.1:{ops_port}");
    let (identity, identity_addr) = spawn(
        &[
            "--services",
            "identity",
            "--identity-listen",
            "127.0.0.1:0",
            "--ops-listen",
            &ops_listen,
            "--data-dir",
            identity_dir.to_str().unwrap(),
        ],
        &common,
        "identity service (internal gRPC) on",
    );
    let (_gateway, gateway_url) = spawn(
        &[
            "--services",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "off",
            "--identity-url",
            &format!("http://{identity_addr}"),
            "--data-dir",
            gateway_dir.to_str().unwrap(),
        ],
        &common,
        "Lattice is listening on",
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ready(&http, &gateway_url).await;

    // The same flow as all-in-one: login, CSRF-protected token creation, bearer use.
    let resp = http
        .post(format!("{gateway_url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "admin-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let body: serde_json::Value = resp.json().await.unwrap();
    let resp = http
        .post(format!("{gateway_url}/api/v1/tokens"))
        .header("cookie", &cookie)
        .header("x-csrf-token", body["csrf_token"].as_str().unwrap())
        .json(&json!({"name": "split", "scopes": ["users:read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let token: serde_json::Value = resp.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let resp = http
        .get(format!("{gateway_url}/api/v1/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(format!("{gateway_url}/api/v1/users"))
        .bearer_auth(&token)
        .json(&json!({"username": "eve", "password": "eve-password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "users:read cannot create users");
    // The identity port does not accept calls without an internal principal.
    let raw = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = raw
        .post(format!(
            "http://{identity_addr}/lattice.identity.v1.IdentityService/ListUsers"
        ))
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref(),
        Some("16")
    );

    // The identity-only process answers probes and scrapes on its ops listener.
    let ops = format!("http://{ops_listen}");
    assert_eq!(
        http.get(format!("{ops}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: serde_json::Value = http
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let metrics = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("method=\"/lattice.identity.v1.IdentityService/Login\""),
        "{metrics}"
    );

    // Identity goes away: the gateway says not ready and answers 503, not a hang.
    drop(identity);
    let resp = http
        .get(format!("{gateway_url}/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = http
        .post(format!("{gateway_url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "admin-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
}

#[test]
fn bad_configuration_is_refused_naming_every_field() {
    let out = Command::new(BIN)
        .args(["check-config"])
        .env("LATTICE_GATEWAY__REQUEST_TIMEOUT_S", "soon")
        .env("LATTICE_IDENTITY__LOCKOUT_THRESHOLD", "-1")
        .env("DATABASE_URL", "mysql://root:hunter2@db/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.request_timeout_s"), "{err}");
    assert!(err.contains("LATTICE_GATEWAY__REQUEST_TIMEOUT_S"), "{err}");
    assert!(err.contains("identity.lockout_threshold"), "{err}");
    assert!(!err.contains("hunter2"), "secrets are never echoed: {err}");

    let out = Command::new(BIN)
        .args(["--services", "gateway,billing", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service \"billing\""));
}

#[test]
fn migrate_is_a_release_step() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(BIN)
            .args(["migrate", "--data-dir", dir.path().to_str().unwrap()])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied identity v1"));
    let second = run();
    assert!(String::from_utf8_lossy(&second.stdout).contains("database is up to date"));
}

/// A CA and a server certificate for localhost signed by it, made with openssl.
/// Returns (CA file, server certificate file, server key file).
fn make_cert(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |suffix: &str| dir.join(format!("{name}{suffix}"));
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl is installed (Debian package openssl)");
        assert!(status.success(), "openssl {args:?}");
    };
    let s = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    let (ca, ca_key, key, csr, cert, ext) = (
        p("-ca.pem"),
        p("-ca.key"),
        p(".key"),
        p(".csr"),
        p(".pem"),
        p(".ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} test CA"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    (ca, cert, key)
}

fn client_trusting(cert: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(cert).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn operator_certificate_files_reload_on_sighup() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = make_cert(dir.path(), "first");
    let (ca_b, cert_b, key_b) = make_cert(dir.path(), "second");
    let live_cert = dir.path().join("live.pem");
    let live_key = dir.path().join("live.key");
    std::fs::copy(&cert_a, &live_cert).unwrap();
    std::fs::copy(&key_a, &live_key).unwrap();
    let (server, url) = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--identity-listen",
            "127.0.0.1:0",
            "--storage-listen",
            "127.0.0.1:0",
            "--tasks-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--policy-listen",
            "127.0.0.1:0",
            "--tls",
            "files",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[
            (
                "LATTICE_GATEWAY__TLS_CERT_FILE",
                live_cert.to_str().unwrap(),
            ),
            ("LATTICE_GATEWAY__TLS_KEY_FILE", live_key.to_str().unwrap()),
        ],
        "Lattice is listening on",
    );
    let url = url.replace("127.0.0.1", "localhost");
    assert_eq!(
        client_trusting(&ca_a)
            .get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        client_trusting(&ca_b)
            .get(format!("{url}/health"))
            .send()
            .await
            .is_err()
    );

    std::fs::copy(&cert_b, &live_cert).unwrap();
    std::fs::copy(&key_b, &live_key).unwrap();
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client_trusting(&ca_b)
            .get(format!("{url}/health"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client_trusting(&ca_a)
            .get(format!("{url}/health"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn rest_and_grpc_share_the_public_port_over_h2c() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = spawn_all_in_one(dir.path(), "off", &[]);
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2c.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_2)
    );
    // grpc.health.v1.Health/Check with an empty request: a length-prefixed empty message.
    let resp = h2c
        .post(format!("{url}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let body = resp.bytes().await.unwrap();
    // One message: flag 0, length 2, field 1 (status) = 1 (SERVING).
    assert_eq!(&body[..], &[0, 0, 0, 0, 2, 8, 1]);
    // Plain HTTP/1.1 on the same port works too.
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    let resp = h1.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_11)
    );
}

#[tokio::test]
async fn shutdown_reports_not_ready_keeps_serving_for_the_grace_period_then_exits() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = spawn_all_in_one(
        dir.path(),
        "off",
        &[("LATTICE_GATEWAY__SHUTDOWN_GRACE_S", "2")],
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&http, &url).await;
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // During the grace period: not ready, but still serving, internal services included.
    assert_eq!(
        http.get(format!("{url}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        http.get(format!("{url}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let login = http
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": "admin-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    // Then it exits cleanly by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}
