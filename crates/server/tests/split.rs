//! The split deployment as compose and the Helm chart run it: `lattice-server
//! migrate` first, then every role as its own process of the real binary, on
//! Postgres and Redis. Through the gateway: a login, KV, a static deploy served on
//! its host, an agent enrollment, a task the agent runs, and a proxied request to
//! the node. Then the storage process is killed with SIGKILL while a client keeps
//! writing, started again, and every write it acknowledged is there.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use common::process::{BIN, Proc, spawn};
use lattice_core::db::{Backend, testing};
use serde_json::json;

const JWT_SECRET: &str = "split-deployment-shared-internal-secret";
const MASTER_KEY: &str = "split-deployment-master-key-passphrase-0123";

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One role of the deployment: its process and the address it serves.
struct Role {
    proc: Option<Proc>,
    addr: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    banner: String,
}

impl Role {
    fn start(
        role: &str,
        data: &Path,
        listen: &str,
        urls: &[(&str, &str)],
        env: &[(String, String)],
    ) -> Self {
        let mut args: Vec<String> = vec![
            "--services".into(),
            role.into(),
            "--data-dir".into(),
            data.join(role).display().to_string(),
        ];
        if role == "gateway" {
            args.extend([
                "--listen".into(),
                listen.into(),
                "--tls".into(),
                "off".into(),
            ]);
        } else {
            args.extend([format!("--{role}-listen"), listen.into()]);
            args.extend(["--ops-listen".into(), free_addr()]);
        }
        for (flag, url) in urls {
            args.extend([format!("--{flag}"), format!("http://{url}")]);
        }
        let banner = if role == "gateway" {
            "Lattice is listening on".to_owned()
        } else {
            format!("{role} service (internal gRPC) on")
        };
        let mut r = Self {
            proc: None,
            addr: String::new(),
            args,
            env: env.to_vec(),
            banner,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (proc, addr) = spawn(&args, &env, &self.banner);
        self.proc = Some(proc);
        self.addr = addr;
    }

    /// SIGKILL: no drain, no flush, no goodbye.
    fn kill_9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_in_its_own_process_on_postgres_and_redis() {
    common::install_crypto();
    let redis = std::env::var("LATTICE_TEST_REDIS_URL").unwrap_or_default();
    if !testing::backends().contains(&Backend::Postgres) || redis.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true needs Postgres and Redis (scripts/test.sh provides them)"
        );
        eprintln!("skipped here: the split deployment needs Postgres and Redis");
        return;
    }
    let (database_url, _guard) = testing::fresh_url(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();

    // The release step first, as the compose file's `migrate` and the chart's Job.
    let out = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", &database_url)
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let env = |sealing: bool| {
        let mut e: Vec<(String, String)> = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis.as_str()),
            ("JWT_SECRET", JWT_SECRET),
            ("LATTICE_IDENTITY__ARGON2_MEMORY_KIB", "64"),
            ("LATTICE_IDENTITY__ARGON2_ITERATIONS", "1"),
            ("LATTICE_BOOTSTRAP_ADMIN_PASSWORD", "admin-password-1"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        if sealing {
            e.push(("LATTICE_MASTER_KEY".into(), MASTER_KEY.into()));
        }
        e
    };
    let data = dir.path();
    // Every role knows where every other one listens, as compose's service names
    // and the chart's Services give them (the roles call each other both ways).
    let addr: std::collections::BTreeMap<&str, String> =
        ["identity", "storage", "tasks", "tunnel", "policy"]
            .into_iter()
            .map(|r| (r, free_addr()))
            .collect();
    let urls: Vec<(String, &str)> = addr
        .iter()
        .map(|(r, a)| (format!("{r}-url"), a.as_str()))
        .collect();
    let urls: Vec<(&str, &str)> = urls.iter().map(|(f, a)| (f.as_str(), *a)).collect();
    let start = |role: &str, sealing: bool| {
        let listen = addr
            .get(role)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:0".into());
        Role::start(role, data, &listen, &urls, &env(sealing))
    };
    let tasks = start("tasks", false);
    let identity = start("identity", true);
    let policy = start("policy", false);
    let mut storage = start("storage", true);
    let storage_listen = addr["storage"].clone();
    let tunnel = start("tunnel", true);
    let gateway = start("gateway", false);
    let s = TestServer::external(&gateway.addr, reqwest::Client::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .http
        .get(s.url("/ready"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            Instant::now() < deadline,
            "the split deployment never became ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Login, KV, a static site on its host.
    let admin = s.admin_token(&["*"]).await;
    for (name, surface) in [("conf", "kv"), ("site", "static")] {
        let (status, b) = s
            .call(
                "POST",
                "/api/v1/buckets",
                &admin,
                Some(json!({"name": name, "surface": surface})),
            )
            .await;
        assert_eq!(status, 201, "{b}");
    }
    let (status, _) = s
        .call(
            "PUT",
            "/api/v1/kv/conf/greeting",
            &admin,
            Some(json!({"value": "hello"})),
        )
        .await;
    assert_eq!(status, 200);
    s.deploy(&admin, "site", &[("index.html", b"<h1>split</h1>")], true)
        .await;
    let (status, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            &admin,
            Some(json!({"host": "split.example.test", "bucket": "site"})),
        )
        .await;
    assert_eq!(status, 201, "{b}");
    let page = s.host_get("split.example.test", "/").send().await.unwrap();
    assert_eq!(page.text().await.unwrap(), "<h1>split</h1>");

    // An agent enrolls through the gateway, runs a task, and carries a proxied
    // request to a service on its node.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let app =
            axum::Router::new().route("/hello", axum::routing::get(|| async { "from the node" }));
        axum::serve(upstream, app).await.unwrap();
    });
    let agent_dir = tempfile::tempdir().unwrap();
    let (_agent, node) = common::agents::connected_agent(
        &s,
        &admin,
        agent_dir.path(),
        &format!("proxy_ports = [{port}]\n"),
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
    let id = task["id"].as_str().unwrap();
    common::wait_for(
        &s,
        &admin,
        &format!("/api/v1/tasks/{id}"),
        "the task succeeds",
        |t| t["state"] == "succeeded",
    )
    .await;
    let resp = s
        .http
        .get(s.url(&format!("/api/v1/nodes/{node}/proxy/{port}/hello")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "from the node");

    // kill -9 of the storage process under load: every acknowledged write survives.
    let writer = common::KvWriter::start(&s, &admin, "conf");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = writer.acked().len();
    assert!(before_kill > 0, "the writer is writing");
    storage.kill_9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    storage.restart();
    assert_eq!(
        storage.addr,
        storage_listen.as_str(),
        "storage is back where it was"
    );
    // Writes succeed again through the same gateway.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = writer.acked().len();
        if n > before_kill + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = writer.stop().await;
    for i in &acked {
        let (status, v) = s
            .call("GET", &format!("/api/v1/kv/conf/load-{i}"), &admin, None)
            .await;
        assert_eq!(status, 200, "acknowledged write load-{i} was lost");
        assert_eq!(v["value"], json!(i));
    }
    let (_, v) = s.call("GET", "/api/v1/audit/verify", &admin, None).await;
    assert_eq!(v["ok"], true, "{v}");
    drop((gateway, tunnel, policy, identity, tasks));
}
