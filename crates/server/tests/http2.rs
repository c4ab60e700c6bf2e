//! Early refusals reach HTTP/2 clients: a request with a body that the gateway
//! refuses before reading it (401, 403, 404, 413) answers that status with its JSON
//! error, through the API and through a host binding, with the real `curl` over h2c
//! and over TLS (ALPN h2), for bodies from a few bytes to past the body limit.

mod common;

use std::process::Command;

use common::TestServer;
use lattice_core::db::Backend;
use serde_json::{Value, json};

/// The body sizes tried: a few bytes, past the initial HTTP/2 window, past the
/// body limit (1 MiB by default) and well past it.
const SIZES: [usize; 4] = [5, 70_000, 1024 * 1024 + 1, 4 * 1024 * 1024];

struct Curl<'a> {
    server: &'a TestServer,
    /// `--http2-prior-knowledge` (h2c) or `--http2` with the server's CA.
    args: Vec<String>,
}

impl Curl<'_> {
    /// PUT `size` bytes to `path` with `headers`; (status, JSON body).
    fn put(&self, path: &str, headers: &[String], size: usize) -> (u16, Value) {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body");
        // Valid JSON at every size, so a refusal is never about the JSON.
        let mut text = String::from("{\"value\":\"");
        text.push_str(&"a".repeat(size.saturating_sub(12)));
        text.push_str("\"}");
        std::fs::write(&body, &text).unwrap();
        let out_file = dir.path().join("out");
        let mut cmd = Command::new("curl");
        cmd.args(&self.args)
            .args(["-sS", "-X", "PUT", "-o"])
            .arg(&out_file)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(["-H", "content-type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()));
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(self.server.url(path))
            .output()
            .expect("curl is installed");
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl PUT {path} ({size} bytes): {} {written}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (status, version) = written.split_once(' ').expect("status and version");
        assert_eq!(version, "2", "PUT {path} went over HTTP/2");
        let answer = std::fs::read(&out_file).unwrap_or_default();
        let body: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        (status.parse().unwrap(), body)
    }
}

async fn storage_token(s: &TestServer, admin: &str, access: &str) -> String {
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/storage-tokens",
            admin,
            Some(json!({"surface": "kv", "access": access, "buckets": ["conf"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn refusals_reach_the_client(s: &TestServer, curl: Curl<'_>) {
    let admin = s.admin_token(&["*"]).await;
    let reader = s.admin_token(&["kv:read"]).await;
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/buckets",
            json!({"name": "conf", "surface": "kv"}),
        ),
        (
            "POST",
            "/api/v1/bindings",
            json!({"host": "kv.h2.test", "bucket": "conf"}),
        ),
    ] {
        let (status, b) = s.call(method, path, &admin, Some(body)).await;
        assert_eq!(status, 201, "{method} {path}: {b}");
    }
    let read_only = storage_token(s, &admin, "read").await;
    let writer = storage_token(s, &admin, "write").await;
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let host = "host: kv.h2.test".to_owned();
    let limit = 1024 * 1024;
    for size in SIZES {
        let past_limit = size > limit;
        // The API: no credential, a credential without the scope, no such route.
        let cases: Vec<(&str, Vec<String>, u16, &str)> = vec![
            ("/api/v1/kv/conf/k", vec![], 401, "unauthenticated"),
            // The JSON extractor refuses an oversized body before the scope check.
            if past_limit {
                (
                    "/api/v1/kv/conf/k",
                    vec![bearer(&reader)],
                    413,
                    "payload_too_large",
                )
            } else {
                (
                    "/api/v1/kv/conf/k",
                    vec![bearer(&reader)],
                    403,
                    "permission_denied",
                )
            },
            (
                "/api/v1/no/such/route",
                vec![bearer(&admin)],
                404,
                "not_found",
            ),
            // A host binding: no storage token, a read-only one.
            ("/k", vec![host.clone()], 401, "unauthenticated"),
            (
                "/k",
                vec![host.clone(), bearer(&read_only)],
                403,
                "permission_denied",
            ),
        ];
        for (path, headers, want, code) in cases {
            // Twice: the second time the grant comes from the gateway's cache.
            for _ in 0..2 {
                let (status, body) = curl.put(path, &headers, size);
                assert_eq!(
                    status, want,
                    "PUT {path} {headers:?} ({size} bytes): {body}"
                );
                assert_eq!(body["error"]["code"], code, "PUT {path} ({size} bytes)");
            }
        }
        // Past the body limit, with every right: 413; under it, the write lands.
        let (want, code) = if past_limit {
            (413, Some("payload_too_large"))
        } else {
            (200, None)
        };
        for (path, headers) in [
            ("/api/v1/kv/conf/k", vec![bearer(&admin)]),
            ("/k", vec![host.clone(), bearer(&writer)]),
        ] {
            let (status, body) = curl.put(path, &headers, size);
            assert_eq!(status, want, "PUT {path} ({size} bytes): {body}");
            if let Some(code) = code {
                assert_eq!(body["error"]["code"], code, "PUT {path} ({size} bytes)");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_h2c_clients() {
    let s = TestServer::start(Backend::Sqlite).await;
    let curl = Curl {
        server: &s,
        args: vec!["--http2-prior-knowledge".into()],
    };
    refusals_reach_the_client(&s, curl).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_h2_clients_over_tls() {
    let s =
        TestServer::start_with(Backend::Sqlite, &[("LATTICE_GATEWAY__TLS", "self-signed")]).await;
    let ca = s.data_dir.path.join("tls/ca.pem");
    let curl = Curl {
        server: &s,
        args: vec![
            "--http2".into(),
            "--cacert".into(),
            ca.display().to_string(),
        ],
    };
    refusals_reach_the_client(&s, curl).await;
    s.stop().await;
}
