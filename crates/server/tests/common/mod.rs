//! Starts real servers for integration tests: the same `lattice_server::start` the
//! binary uses, on port 0, with a fresh database of the requested backend.

#![allow(dead_code)]

use std::collections::BTreeSet;

use lattice_core::config::{Config, Overrides};
use lattice_core::db::{Backend, testing};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub mod agents;
pub mod netns;
pub mod oidc;
pub mod process;
pub mod webdriver;

pub const ADMIN_PASSWORD: &str = "admin-password-1";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub data_dir: testing::tempfile_guard::Guard,
    /// The database every service of this server uses ("" for an external one).
    pub database_url: String,
    running: Option<lattice_server::Running>,
    _db_guard: Option<testing::tempfile_guard::Guard>,
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn test_env(
    data_dir: &std::path::Path,
    database_url: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("LATTICE_DATA_DIR", data_dir.display().to_string().as_str()),
        ("DATABASE_URL", database_url),
        ("LATTICE_MIGRATE_ON_START", "true"),
        ("LATTICE_GATEWAY__LISTEN", "127.0.0.1:0"),
        ("LATTICE_GATEWAY__TLS", "off"),
        ("LATTICE_IDENTITY__LISTEN", "127.0.0.1:0"),
        ("LATTICE_STORAGE__LISTEN", "127.0.0.1:0"),
        ("LATTICE_TASKS__LISTEN", "127.0.0.1:0"),
        ("LATTICE_TUNNEL__LISTEN", "127.0.0.1:0"),
        ("LATTICE_POLICY__LISTEN", "127.0.0.1:0"),
        ("LATTICE_IDENTITY__ARGON2_MEMORY_KIB", "64"),
        ("LATTICE_IDENTITY__ARGON2_ITERATIONS", "1"),
        ("LATTICE_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, extra: &[(&str, &str)]) -> Self {
        let (url, db_guard) = testing::fresh_url(backend).await;
        Self::start_on(&url, db_guard, extra).await
    }

    /// Start on an existing database (several replicas of one deployment).
    pub async fn start_on(
        url: &str,
        db_guard: Option<testing::tempfile_guard::Guard>,
        extra: &[(&str, &str)],
    ) -> Self {
        install_crypto();
        let url = url.to_owned();
        let data_dir = testing::tempfile_guard::Guard::new();
        let env = test_env(&data_dir.path, &url, extra);
        let config = Config::load(None, &env, &Overrides::default()).expect("test config is valid");
        let tls = config.gateway.tls != lattice_core::config::TlsMode::Off;
        let shutdown = CancellationToken::new();
        // `LATTICE_SERVICES` among the extras picks the roles (as the binary's flag does).
        let services = extra
            .iter()
            .find(|(k, _)| *k == "LATTICE_SERVICES")
            .map_or("all", |(_, v)| *v);
        let roles: BTreeSet<_> = lattice_server::parse_roles(services).unwrap();
        let running = lattice_server::start(config, &roles, shutdown.clone())
            .await
            .expect("server starts");
        let addr = running.gateway_addr.expect("gateway runs");
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(20));
        if tls {
            let ca = std::fs::read(data_dir.path.join("tls/ca.pem")).unwrap();
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        }
        Self {
            base: format!(
                "{}://localhost:{}",
                if tls { "https" } else { "http" },
                addr.port()
            ),
            http: builder.build().unwrap(),
            shutdown,
            data_dir,
            database_url: url.clone(),
            running: Some(running),
            _db_guard: db_guard,
        }
    }

    /// A handle on a server running elsewhere (a spawned binary) at `base`.
    pub fn external(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            shutdown: CancellationToken::new(),
            data_dir: testing::tempfile_guard::Guard::new(),
            database_url: String::new(),
            running: None,
            _db_guard: None,
        }
    }

    /// What the in-process server reported at start (its internal addresses).
    pub fn running(&self) -> &lattice_server::Running {
        self.running.as_ref().expect("an in-process server")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await.expect("clean shutdown");
        }
    }

    /// Log in; returns (cookie header value, csrf token).
    pub async fn login(&self, username: &str, password: &str) -> (String, String) {
        self.login_in(username, password, "").await
    }

    /// Log in to act in `org` ("": the home org); returns (cookie header value,
    /// csrf token).
    pub async fn login_in(&self, username: &str, password: &str, org: &str) -> (String, String) {
        let resp = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"username": username, "password": password, "org": org}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "login as {username}");
        let cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
            .collect();
        let body: Value = resp.json().await.unwrap();
        (
            cookies.join("; "),
            body["csrf_token"].as_str().unwrap().to_owned(),
        )
    }

    /// A new user `username` (not in any group) and an operator token of theirs
    /// with `scopes`.
    pub async fn user_token(&self, username: &str, scopes: &[&str]) -> String {
        let admin = self.admin_token(&["*"]).await;
        let password = "user-password-1234";
        let (status, body) = self
            .call(
                "POST",
                "/api/v1/users",
                &admin,
                Some(
                    serde_json::json!({"username": username, "password": password,
                    "scopes": scopes.iter().copied().chain(["tokens:write"]).collect::<Vec<_>>()}),
                ),
            )
            .await;
        assert_eq!(status, 201, "create user: {body}");
        let (cookie, csrf) = self.login(username, password).await;
        let resp = self
            .http
            .post(self.url("/api/v1/tokens"))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .json(&serde_json::json!({"name": "test", "scopes": scopes}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// Turn TOTP on for `username` through a session of theirs: the seed, and the
    /// time (Unix seconds) of the code that confirmed it (the next usable code is
    /// at `now + 30`).
    pub async fn enable_totp(&self, username: &str, password: &str) -> (Vec<u8>, u64) {
        let (cookie, csrf) = self.login(username, password).await;
        let session = |path: &str| {
            self.http
                .post(self.url(path))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
        };
        let (status, enroll) =
            json(session("/api/v1/auth/totp/enroll").send().await.unwrap()).await;
        assert_eq!(status, 200, "{enroll}");
        let seed = totp_seed(enroll["secret"].as_str().unwrap());
        let now = u64::try_from(lattice_core::time::now_ms() / 1000).unwrap();
        let (status, b) = json(
            session("/api/v1/auth/totp/confirm")
                .json(&serde_json::json!({"code": lattice_identity::totp::code_at(&seed, now)}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{b}");
        (seed, now)
    }

    /// An admin operator token with `scopes`.
    pub async fn admin_token(&self, scopes: &[&str]) -> String {
        let (cookie, csrf) = self.login("admin", ADMIN_PASSWORD).await;
        let resp = self
            .http
            .post(self.url("/api/v1/tokens"))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .json(&serde_json::json!({"name": "test", "scopes": scopes}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }
}

pub async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A gzip'd tar of `files` (path, contents).
pub fn site_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

impl TestServer {
    /// `method path` with a bearer token and an optional JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        json(req.send().await.unwrap()).await
    }

    /// Publish a site archive to `bucket`; returns the deployment.
    pub async fn deploy(
        &self,
        token: &str,
        bucket: &str,
        files: &[(&str, &[u8])],
        activate: bool,
    ) -> Value {
        let resp = self
            .http
            .post(self.url(&format!(
                "/api/v1/static/{bucket}/deployments?activate={activate}"
            )))
            .bearer_auth(token)
            .header("content-type", "application/gzip")
            .body(site_archive(files))
            .send()
            .await
            .unwrap();
        let (status, body) = json(resp).await;
        assert_eq!(status, 201, "deploy: {body}");
        body
    }

    /// GET `path` on a bound `host`.
    pub fn host_get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).header("host", host)
    }
}

/// A node row for a test (nodes are otherwise created by an agent enrolling).
pub async fn insert_node(url: &str, id: &str, org: &str) {
    let db = lattice_core::db::Db::connect(url, 1).await.unwrap();
    sqlx::query(
        "INSERT INTO tunnel_nodes (id, org_id, hostname, labels, capabilities, token_hash, status, enrolled_at_ms) \
         VALUES ($1, $2, 'n1', '{}', '[]', 'x', 'never_connected', 1)",
    )
    .bind(id)
    .bind(org)
    .execute(db.pool())
    .await
    .unwrap();
    db.close().await;
}

/// GET `path` with `token` until `ok` holds of its 200 answer (15 s at most);
/// that answer.
pub async fn wait_for<F: Fn(&Value) -> bool>(
    s: &TestServer,
    token: &str,
    path: &str,
    what: &str,
    ok: F,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        let (status, body) = s.call("GET", path, token, None).await;
        if status == 200 && ok(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{what}: never happened; last answer from {path}: {last}");
}

/// The bytes of a base32 TOTP secret (as enrollment shows it).
pub fn totp_seed(base32: &str) -> Vec<u8> {
    // RFC 4648 base32 without padding.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in base32.trim_end_matches('=').bytes() {
        let v = alphabet.iter().position(|a| *a == c).expect("base32") as u32;
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out
}

/// A client that writes `load-<i>` = i into a KV bucket, one write after the other,
/// until stopped, and remembers which writes were acknowledged (200): what a crash,
/// a restart or a backup must not lose.
pub struct KvWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KvWriter {
    /// Start writing into `bucket` as `token`.
    pub fn start(s: &TestServer, token: &str, bucket: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (http, url, token) = (
            s.http.clone(),
            s.url(&format!("/api/v1/kv/{bucket}")),
            token.to_owned(),
        );
        let task = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http
                        .put(format!("{url}/load-{i}"))
                        .bearer_auth(&token)
                        .timeout(std::time::Duration::from_secs(5))
                        .json(&serde_json::json!({"value": i}))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().push(i);
                    }
                    i += 1;
                }
            })
        };
        Self { stop, acked, task }
    }

    /// The writes acknowledged so far.
    pub fn acked(&self) -> Vec<usize> {
        self.acked.lock().unwrap().clone()
    }

    /// Stop after the write in flight: every acknowledged write.
    pub async fn stop(self) -> Vec<usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.acked.lock().unwrap().clone()
    }
}
