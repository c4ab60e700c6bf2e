//! Storage hosting through the real gateway: static sites and KV served by Host, the
//! failure modes of seed 002_641012610fab9315.txt, scopes, traversal, atomic deploys.

mod common;

use common::{TestServer, json};
use lattice_core::db::testing;
use serde_json::json;

/// Send `GET path` exactly as given (no client-side normalisation); the status code.
async fn raw_get(base: &str, host: &str, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base
        .trim_start_matches("http://")
        .replace("localhost", "127.0.0.1");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn setup_site(s: &TestServer, token: &str) {
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            token,
            Some(json!({"name": "site", "surface": "static"}))
        )
        .await
        .0,
        201
    );
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.deploy(
        token,
        "site",
        &[
            ("index.html", b"<h1>home</h1>"),
            ("docs/index.html", b"docs"),
            ("404.html", b"not here"),
            ("app.js", b"console.log(1)"),
            ("big.bin", &big),
            ("caf\u{e9}.txt", b"unicode"),
        ],
        true,
    )
    .await;
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            token,
            Some(json!({"host": "Assets.Example.com", "bucket": "site"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    assert_eq!(b["host"], "assets.example.com");
}

#[tokio::test]
async fn static_sites_are_served_by_host() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let token = s.admin_token(&["*"]).await;
        setup_site(&s, &token).await;
        let h = "assets.example.com";

        let resp = s.host_get(h, "/").send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(resp.headers()["cache-control"], "public, no-cache");
        assert!(
            resp.headers().get("content-security-policy").is_none(),
            "API headers stay off sites"
        );
        assert!(
            resp.headers().contains_key("x-request-id"),
            "sites get request ids too"
        );
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(resp.text().await.unwrap(), "<h1>home</h1>");
        // The Host header's case and port do not matter.
        assert_eq!(
            s.host_get("ASSETS.example.com:443", "/index.html")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        // Revalidation.
        let resp = s
            .host_get(h, "/")
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304);
        // Directories: redirect to the slash form, then index.html.
        let no_redirects = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = no_redirects
            .get(s.url("/docs?x=1"))
            .header("host", h)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["location"].to_str().unwrap()
            ),
            (301, "/docs/?x=1")
        );
        assert_eq!(
            s.host_get(h, "/docs/")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "docs"
        );
        // Missing: the site's 404.html with status 404.
        let resp = s.host_get(h, "/missing.css").send().await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().await.unwrap(), "not here");
        // Content types, unicode paths.
        let resp = s.host_get(h, "/app.js").send().await.unwrap();
        assert_eq!(
            resp.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            s.host_get(h, "/caf%C3%A9.txt")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            "unicode"
        );
        // Ranges.
        let resp = s
            .host_get(h, "/big.bin")
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.headers()["content-range"], "bytes 10-19/100000");
        let body = resp.bytes().await.unwrap();
        assert_eq!(
            &body[..],
            &(10..20u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()[..]
        );
        let resp = s
            .host_get(h, "/big.bin")
            .header("range", "bytes=200000-")
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["content-range"].to_str().unwrap()
            ),
            (416, "bytes */100000")
        );
        assert_eq!(
            s.host_get(h, "/big.bin")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len(),
            100_000
        );
        // HEAD has the headers, no body.
        let resp = s
            .http
            .head(s.url("/big.bin"))
            .header("host", h)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["content-length"].to_str().unwrap()
            ),
            (200, "100000")
        );
        // Writes are refused on a public static host.
        let resp = s
            .http
            .post(s.url("/index.html"))
            .header("host", h)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["allow"].to_str().unwrap()
            ),
            (405, "GET, HEAD")
        );
        // Traversal and encoding tricks never escape: sent raw, as a client that does
        // not normalise paths would.
        for bad in [
            "/../index.html",
            "/docs/../../x",
            "/docs/..%2f..%2findex.html",
            "/%2e%2e/index.html",
            "/docs%2findex.html",
            "/a%5c..%5cindex.html",
            "/%00",
            "/a\\..\\b",
        ] {
            let status = raw_get(&s.base, h, bad).await;
            assert!(status == 400 || status == 404, "{bad}: {status}");
        }
        // Host-served requests are counted in the metrics.
        let metrics = s
            .http
            .get(s.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("route=\"host:static\",method=\"GET\",status=\"200\""),
            "{metrics}"
        );
        // The gateway's own local names cannot be taken by a binding, even with no API
        // host configured.
        for reserved in ["127.0.0.1", "localhost", "::1"] {
            let (status, body) = s
                .call(
                    "POST",
                    "/api/v1/bindings",
                    &token,
                    Some(json!({"host": reserved, "bucket": "site"})),
                )
                .await;
            assert_eq!(status, 409, "{reserved}: {body}");
        }
        // Disabled binding: the host no longer serves the site (here: falls back to the
        // API, whose `/` is the dashboard and which has no `/index.html`).
        assert_eq!(
            s.call(
                "PATCH",
                "/api/v1/bindings/assets.example.com",
                &token,
                Some(json!({"enabled": false}))
            )
            .await
            .0,
            200
        );
        let (status, body) = json(s.host_get(h, "/index.html").send().await.unwrap()).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "not_found");
        s.stop().await;
    }
}

#[tokio::test]
async fn unknown_hosts_are_404_when_api_hosts_are_configured() {
    let s = TestServer::start_with(
        lattice_core::db::Backend::Sqlite,
        &[("LATTICE_GATEWAY__API_HOSTS", "[\"localhost\"]")],
    )
    .await;
    let token = s.admin_token(&["*"]).await;
    setup_site(&s, &token).await;
    let resp = s.host_get("nobody.example.com", "/").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("no site is bound"));
    assert_eq!(
        s.host_get("assets.example.com", "/")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The API host still gets the API, and cannot be taken over by a binding.
    assert_eq!(s.call("GET", "/api/v1/buckets", &token, None).await.0, 200);
    let (status, body) = s
        .call(
            "POST",
            "/api/v1/bindings",
            &token,
            Some(json!({"host": "LocalHost", "bucket": "site"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // A bucket with nothing deployed, and one without 404.html.
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(json!({"name": "empty", "surface": "static"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/bindings",
            &token,
            Some(json!({"host": "empty.example.com", "bucket": "empty"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.host_get("empty.example.com", "/")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    s.deploy(&token, "empty", &[("a.txt", b"a")], true).await;
    let resp = s.host_get("empty.example.com", "/").send().await.unwrap();
    assert_eq!(resp.status(), 404, "no index.html and no 404.html");
    s.stop().await;
}

#[tokio::test]
async fn kv_bindings_need_a_storage_token_with_the_right_access() {
    for backend in testing::backends() {
        let s = TestServer::start(backend).await;
        let token = s.admin_token(&["*"]).await;
        for name in ["conf", "other"] {
            assert_eq!(
                s.call(
                    "POST",
                    "/api/v1/buckets",
                    &token,
                    Some(json!({"name": name, "surface": "kv"}))
                )
                .await
                .0,
                201
            );
        }
        assert_eq!(
            s.call(
                "POST",
                "/api/v1/bindings",
                &token,
                Some(json!({"host": "kv.example.com", "bucket": "conf"}))
            )
            .await
            .0,
            201
        );
        let (status, _) = s
            .call(
                "PUT",
                "/api/v1/kv/conf/site-title",
                &token,
                Some(json!({"value": "Lattice"})),
            )
            .await;
        assert_eq!(status, 200);
        let mint = |access: &'static str, buckets: serde_json::Value| {
            let s = &s;
            let token = token.clone();
            async move {
                let (status, body) = s
                    .call(
                        "POST",
                        "/api/v1/storage-tokens",
                        &token,
                        Some(json!({"surface": "kv", "access": access, "buckets": buckets})),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
                (
                    body["id"].as_str().unwrap().to_owned(),
                    body["token"].as_str().unwrap().to_owned(),
                )
            }
        };
        let (_, read) = mint("read", json!(["conf"])).await;
        let (write_id, write) = mint("write", json!(["*"])).await;
        let (_, elsewhere) = mint("admin", json!(["other"])).await;
        let kv = |method: &str, token: Option<&str>, body: Option<serde_json::Value>| {
            let mut req = s
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    s.url("/site-title"),
                )
                .header("host", "kv.example.com");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(&b);
            }
            req.send()
        };
        // 401 without a valid storage token (an operator token is not one).
        assert_eq!(kv("GET", None, None).await.unwrap().status(), 401);
        assert_eq!(
            kv("GET", Some("lst_forged"), None).await.unwrap().status(),
            401
        );
        assert_eq!(kv("GET", Some(&token), None).await.unwrap().status(), 401);
        // 403 for a bucket outside the token's list and for a too-low access level.
        assert_eq!(
            kv("GET", Some(&elsewhere), None).await.unwrap().status(),
            403
        );
        assert_eq!(
            kv("PUT", Some(&read), Some(json!({"value": "x"})))
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(kv("DELETE", Some(&read), None).await.unwrap().status(), 403);
        // Reads return the value; writes are visible at once (the cache is invalidated).
        let resp = kv("GET", Some(&read), None).await.unwrap();
        assert_eq!(
            (
                resp.status().as_u16(),
                resp.headers()["etag"].to_str().unwrap()
            ),
            (200, "\"1\"")
        );
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap(),
            json!("Lattice")
        );
        let (status, body) = json(
            kv("PUT", Some(&write), Some(json!({"value": {"text": "New"}})))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, body["version"].as_i64()), (200, Some(2)));
        assert_eq!(
            kv("GET", Some(&read), None)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap(),
            json!({"text": "New"})
        );
        // Conditional write through the host: stale If-Match loses.
        let resp = s
            .http
            .put(s.url("/site-title"))
            .header("host", "kv.example.com")
            .header("if-match", "\"1\"")
            .bearer_auth(&write)
            .json(&json!({"value": 0}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 412);
        // Bad bodies are named.
        let (status, body) = json(
            kv("PUT", Some(&write), Some(json!({"val": 1})))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            kv("DELETE", Some(&write), None).await.unwrap().status(),
            204
        );
        assert_eq!(kv("GET", Some(&read), None).await.unwrap().status(), 404);
        // Deleting a bucket revokes the tokens that name it (a new bucket of that name
        // must not inherit them).
        let (_, before) = s.call("GET", "/api/v1/storage-tokens", &token, None).await;
        assert_eq!(before["tokens"].as_array().unwrap().len(), 3);
        assert_eq!(
            s.call("DELETE", "/api/v1/buckets/other", &token, None)
                .await
                .0,
            204
        );
        let (_, after) = s.call("GET", "/api/v1/storage-tokens", &token, None).await;
        assert_eq!(after["tokens"].as_array().unwrap().len(), 2);
        // A revoked token stops working at once.
        assert_eq!(
            s.call(
                "DELETE",
                &format!("/api/v1/storage-tokens/{write_id}"),
                &token,
                None
            )
            .await
            .0,
            204
        );
        assert_eq!(
            kv("PUT", Some(&write), Some(json!({"value": 1})))
                .await
                .unwrap()
                .status(),
            401
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn a_reader_during_a_deploy_sees_the_old_site_or_the_new_one() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let token = s.admin_token(&["*"]).await;
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(json!({"name": "site", "surface": "static"}))
        )
        .await
        .0,
        201
    );
    let files = |v: &'static [u8]| vec![("index.html", v), ("a.css", v), ("b.js", v)];
    s.deploy(&token, "site", &files(b"v1"), true).await;
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/bindings",
            &token,
            Some(json!({"host": "site.example.com", "bucket": "site"}))
        )
        .await
        .0,
        201
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let http = s.http.clone();
            let url = s.url("");
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen_v2 = [false; 3];
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 30 {
                    for (i, path) in ["/", "/a.css", "/b.js"].iter().enumerate() {
                        let resp = http
                            .get(format!("{url}{path}"))
                            .header("host", "site.example.com")
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(resp.status(), 200, "{path} was missing during the deploy");
                        let body = resp.text().await.unwrap();
                        assert!(body == "v1" || body == "v2", "{path}: {body}");
                        if body == "v2" {
                            seen_v2[i] = true;
                        } else {
                            assert!(!seen_v2[i], "{path} went back to v1 after serving v2");
                        }
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    s.deploy(&token, "site", &files(b"v2"), true).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    // Rollback: the previous deployment is served again.
    let (_, list) = s
        .call("GET", "/api/v1/static/site/deployments", &token, None)
        .await;
    let older = list["deployments"][1]["id"].as_str().unwrap().to_owned();
    let (status, d) = s
        .call(
            "POST",
            &format!("/api/v1/static/site/deployments/{older}/activate"),
            &token,
            None,
        )
        .await;
    assert_eq!((status, d["active"].as_bool()), (200, Some(true)));
    assert_eq!(
        s.host_get("site.example.com", "/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "v1"
    );
    s.stop().await;
}

#[tokio::test]
async fn operator_scopes_matrix() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &admin,
            Some(json!({"name": "conf", "surface": "kv"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &admin,
            Some(json!({"name": "site", "surface": "static"}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "PUT",
            "/api/v1/kv/conf/k",
            &admin,
            Some(json!({"value": 1}))
        )
        .await
        .0,
        200
    );
    s.deploy(&admin, "site", &[("index.html", b"x")], true)
        .await;
    // (method, path, body) and, per scope, whether it is allowed.
    let kv_token = json!({"surface": "kv", "access": "read", "buckets": ["conf"]});
    let cases: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", "/api/v1/kv/conf/k".into(), None),
        ("GET", "/api/v1/kv/conf".into(), None),
        ("PUT", "/api/v1/kv/conf/k".into(), Some(json!({"value": 2}))),
        ("DELETE", "/api/v1/kv/conf/nope".into(), None),
        (
            "POST",
            "/api/v1/buckets".into(),
            Some(json!({"name": "k2", "surface": "kv"})),
        ),
        ("POST", "/api/v1/storage-tokens".into(), Some(kv_token)),
        ("GET", "/api/v1/static/site/deployments".into(), None),
        ("GET", "/api/v1/static/site/objects".into(), None),
        (
            "DELETE",
            "/api/v1/static/site/objects/nope.txt".into(),
            None,
        ),
        (
            "POST",
            "/api/v1/buckets".into(),
            Some(json!({"name": "s2", "surface": "static"})),
        ),
    ];
    // Expected: allowed (not 401/403) for each case, per scope.
    let matrix: &[(&str, [bool; 10])] = &[
        (
            "kv:read",
            [
                true, true, false, false, false, false, false, false, false, false,
            ],
        ),
        (
            "kv:write",
            [
                true, true, true, true, false, false, false, false, false, false,
            ],
        ),
        (
            "kv:admin",
            [
                true, true, true, true, true, true, false, false, false, false,
            ],
        ),
        (
            "static:read",
            [
                false, false, false, false, false, false, true, true, false, false,
            ],
        ),
        (
            "static:write",
            [
                false, false, false, false, false, false, true, true, true, false,
            ],
        ),
        (
            "static:admin",
            [
                false, false, false, false, false, false, true, true, true, true,
            ],
        ),
        ("users:admin", [false; 10]),
    ];
    for (scope, expected) in matrix {
        let token = s.admin_token(&[scope]).await;
        for ((method, path, body), allowed) in cases.iter().zip(expected) {
            let (status, resp) = s.call(method, path, &token, body.clone()).await;
            if *allowed {
                assert!(
                    status != 401 && status != 403,
                    "{scope} {method} {path}: {status} {resp}"
                );
            } else {
                assert_eq!(status, 403, "{scope} {method} {path}: {resp}");
            }
        }
        // Creating buckets succeeded for admins: remove them for the next scope.
        for name in ["k2", "s2"] {
            s.call("DELETE", &format!("/api/v1/buckets/{name}"), &admin, None)
                .await;
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn uploads_are_validated() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let token = s.admin_token(&["*"]).await;
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(json!({"name": "site", "surface": "static"}))
        )
        .await
        .0,
        201
    );
    let post = |body: Vec<u8>| {
        s.http
            .post(s.url("/api/v1/static/site/deployments"))
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };
    let (status, body) = json(post(b"definitely not an archive".to_vec()).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    // A bucket of the wrong surface, and one that does not exist.
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/buckets",
            &token,
            Some(json!({"name": "conf", "surface": "kv"}))
        )
        .await
        .0,
        201
    );
    let resp = s
        .http
        .post(s.url("/api/v1/static/conf/deployments"))
        .bearer_auth(&token)
        .body(common::site_archive(&[("a.txt", b"a")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let resp = s
        .http
        .post(s.url("/api/v1/static/ghost/deployments"))
        .bearer_auth(&token)
        .body(common::site_archive(&[("a.txt", b"a")]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Single-object put keeps the Content-Type it was given.
    let resp = s
        .http
        .put(s.url("/api/v1/static/site/objects/data/feed"))
        .bearer_auth(&token)
        .header("content-type", "application/rss+xml")
        .body("<rss/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, objects) = s
        .call("GET", "/api/v1/static/site/objects", &token, None)
        .await;
    assert_eq!(objects["objects"][0]["content_type"], "application/rss+xml");
    s.stop().await;
}

#[tokio::test]
async fn static_storage_tokens_publish_only_their_buckets() {
    let s = TestServer::start(lattice_core::db::Backend::Sqlite).await;
    let admin = s.admin_token(&["*"]).await;
    for (name, surface) in [("site", "static"), ("blog", "static"), ("conf", "kv")] {
        assert_eq!(
            s.call(
                "POST",
                "/api/v1/buckets",
                &admin,
                Some(json!({"name": name, "surface": surface}))
            )
            .await
            .0,
            201
        );
    }
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/bindings",
            &admin,
            Some(json!({"host": "ci.example.com", "bucket": "site"}))
        )
        .await
        .0,
        201
    );
    let mint = |surface: &'static str, access: &'static str, bucket: &'static str| {
        let s = &s;
        let admin = admin.clone();
        async move {
            let (status, body) = s
                .call(
                    "POST",
                    "/api/v1/storage-tokens",
                    &admin,
                    Some(json!({"surface": surface, "access": access, "buckets": [bucket]})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            (
                body["id"].as_str().unwrap().to_owned(),
                body["token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (write_id, write) = mint("static", "write", "site").await;
    let (_, read) = mint("static", "read", "site").await;
    let (_, kv) = mint("kv", "admin", "conf").await;
    let deploy = |token: String, bucket: &'static str| {
        s.http
            .post(s.url(&format!("/api/v1/static/{bucket}/deployments")))
            .bearer_auth(token)
            .body(common::site_archive(&[("index.html", b"from ci")]))
            .send()
    };
    // A CI job with a static write token publishes its bucket.
    let (status, d) = json(deploy(write.clone(), "site").await.unwrap()).await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(
        s.host_get("ci.example.com", "/")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "from ci"
    );
    // Not another bucket, not with read access, not with a kv token.
    assert_eq!(deploy(write.clone(), "blog").await.unwrap().status(), 403);
    assert_eq!(deploy(read.clone(), "site").await.unwrap().status(), 403);
    assert_eq!(deploy(kv, "site").await.unwrap().status(), 403);
    // Read access lists deployments; a storage token is not an operator elsewhere.
    let resp = s
        .http
        .get(s.url("/api/v1/static/site/deployments"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        s.http
            .get(s.url("/api/v1/buckets"))
            .bearer_auth(&write)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Revoked: 401.
    assert_eq!(
        s.call(
            "DELETE",
            &format!("/api/v1/storage-tokens/{write_id}"),
            &admin,
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(deploy(write, "site").await.unwrap().status(), 401);
    s.stop().await;
}
