//! The operator CLI (`lattice`) against a real `lattice-server` over HTTPS with the
//! server's generated CA: login, whoami, tokens, users, groups, logout.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

const SERVER: &str = common::process::BIN;

/// The `lattice` binary sits beside `lattice-server` in the target directory
/// (`cargo test --workspace` builds both).
fn cli_bin() -> PathBuf {
    let path = Path::new(SERVER).with_file_name("lattice");
    assert!(
        path.exists(),
        "{} is missing: run the tests with --workspace (or cargo build -p lattice)",
        path.display()
    );
    path
}

fn lattice(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(cli_bin());
    cmd.args(args)
        .env("LATTICE_CONFIG", config)
        .env_remove("LATTICE_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lattice")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cli_login_tokens_users_logout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, url) = common::process::spawn_all_in_one(&data, "self-signed", &[]);
    let url = url.replace("127.0.0.1", "localhost");
    let ca = data.join("tls/ca.pem");
    let config = dir.path().join("cli/config.json");

    // Without trusting the CA, login fails and names the problem.
    let out = lattice(
        &config,
        &["login", "--server", &url, "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    );
    assert!(!out.status.success());

    ok(&lattice(
        &config,
        &[
            "login",
            "--server",
            &url,
            "--ca-file",
            ca.to_str().unwrap(),
            "-u",
            "admin",
        ],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let stored = std::fs::read_to_string(&config).unwrap();
    assert!(
        !stored.contains("admin-password-1"),
        "the password is never stored"
    );

    let me: serde_json::Value =
        serde_json::from_str(&ok(&lattice(&config, &["whoami", "-o", "json"], &[]))).unwrap();
    assert_eq!(
        (me["username"].as_str(), me["auth_method"].as_str()),
        (Some("admin"), Some("token"))
    );

    let secret = ok(&lattice(
        &config,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--scope",
            "kv:read",
            "--expires-in",
            "1d",
        ],
        &[],
    ));
    assert!(secret.trim().starts_with("lat_"), "{secret}");
    let list: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["token", "list", "-o", "json"],
        &[],
    )))
    .unwrap();
    assert!(
        list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "ci")
    );
    // The new token works on its own through LATTICE_TOKEN.
    let me: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["whoami", "-o", "json"],
        &[("LATTICE_TOKEN", secret.trim())],
    )))
    .unwrap();
    assert_eq!(me["scopes"], serde_json::json!(["kv:read"]));

    ok(&lattice(
        &config,
        &["users", "create", "bob", "--scope", "kv:read"],
        &[("LATTICE_NEW_PASSWORD", "bob-password-123")],
    ));
    let users = ok(&lattice(&config, &["users", "list"], &[]));
    assert!(
        users.lines().next().unwrap().contains("USERNAME"),
        "{users}"
    );
    assert!(users.contains("bob"));

    // An API error is one line naming the problem, exit 1.
    let out = lattice(
        &config,
        &["users", "create", "bob"],
        &[("LATTICE_NEW_PASSWORD", "bob-password-123")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("409"),
        "{err}"
    );

    // Groups: admins is there with the admin in it; ops is made, filled, emptied, deleted.
    let groups = ok(&lattice(&config, &["groups", "list"], &[]));
    assert!(
        groups.lines().next().unwrap().contains("MEMBERS"),
        "{groups}"
    );
    assert!(groups.contains("admins"), "{groups}");
    ok(&lattice(
        &config,
        &["group", "create", "ops", "--description", "Runs the fleet"],
        &[],
    ));
    ok(&lattice(
        &config,
        &["group", "add-member", "ops", "bob"],
        &[],
    ));
    let ops: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["group", "get", "ops", "-o", "json"],
        &[],
    )))
    .unwrap();
    assert_eq!(
        (&ops["members"], ops["description"].as_str()),
        (&serde_json::json!(["bob"]), Some("Runs the fleet"))
    );
    let admins = ok(&lattice(&config, &["group", "get", "admins"], &[]));
    assert!(admins.contains("members       admin"), "{admins}");
    let out = lattice(&config, &["group", "delete", "admins"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("409") && err.contains("admins"), "{err}");
    ok(&lattice(
        &config,
        &["group", "remove-member", "ops", "bob"],
        &[],
    ));
    ok(&lattice(&config, &["group", "delete", "ops"], &[]));
    assert!(!ok(&lattice(&config, &["groups", "list"], &[])).contains("ops"));

    // Policies: the seeded one is listed; the seed's YAML form and plain Cedar
    // apply; a file with a mistake is refused with file:line:column; delete.
    let policies = ok(&lattice(&config, &["policy", "list"], &[]));
    assert!(policies.contains("admins-allow-all"), "{policies}");
    let yaml = dir.path().join("deny-intern.yaml");
    std::fs::write(
        &yaml,
        "apiVersion: lattice.dev/v1alpha1\nkind: CedarPolicy\nmetadata:\n  name: deny-intern\n  namespace: lattice-system\nspec:\n  enabled: true\n  priority: 200\n  propagate: true\n  description: No intern on production\n  policies: |\n    forbid(\n      principal == Lattice::User::\"intern\",\n      action,\n      resource == Lattice::Node::\"production\"\n    );\n",
    )
    .unwrap();
    ok(&lattice(
        &config,
        &["policy", "apply", "-f", yaml.to_str().unwrap()],
        &[],
    ));
    let got: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["policy", "get", "deny-intern", "-o", "json"],
        &[],
    )))
    .unwrap();
    assert_eq!(
        (got["priority"].as_i64(), got["enabled"].as_bool()),
        (Some(200), Some(true))
    );
    let cedar = dir.path().join("web.cedar");
    std::fs::write(
        &cedar,
        "permit(principal in Lattice::Group::\"web\", action == Lattice::Action::\"AccessNode\", resource)\nwhen { context.port == 8080 };\n",
    )
    .unwrap();
    ok(&lattice(
        &config,
        &["policy", "validate", cedar.to_str().unwrap()],
        &[],
    ));
    let out = lattice(
        &config,
        &[
            "policy",
            "apply",
            "-f",
            cedar.to_str().unwrap(),
            "--dry-run",
        ],
        &[],
    );
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dry run:") && err.contains("nothing stored"),
        "{err}"
    );
    assert!(
        !ok(&lattice(&config, &["policy", "list"], &[])).contains("web"),
        "a dry run stores nothing"
    );
    ok(&lattice(
        &config,
        &["policy", "apply", "-f", cedar.to_str().unwrap()],
        &[],
    ));
    assert!(ok(&lattice(&config, &["policy", "list"], &[])).contains("web"));
    let bad = dir.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit(principal, action,\n  resource) when { resource.colour == \"red\" };\n",
    )
    .unwrap();
    let out = lattice(&config, &["policy", "validate", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.cedar:2:"), "{err}");
    let out = lattice(
        &config,
        &["policy", "apply", "-f", bad.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("422") && err.contains("line 2"), "{err}");
    let why = ok(&lattice(
        &config,
        &[
            "policy",
            "explain",
            "--principal",
            "token:ci",
            "--action",
            "AccessSecret",
            "--resource",
            "secret:app/db",
            "-o",
            "json",
        ],
        &[],
    ));
    let why: serde_json::Value = serde_json::from_str(&why).unwrap();
    assert_eq!(
        (why["decision"].as_str(), &why["determining"]),
        (Some("deny"), &serde_json::json!([])),
        "{why}"
    );
    ok(&lattice(&config, &["policy", "delete", "web"], &[]));
    ok(&lattice(&config, &["policy", "delete", "deny-intern"], &[]));
    assert!(!ok(&lattice(&config, &["policy", "list"], &[])).contains("deny-intern"));

    // Change the password: the old one stops working, the new one logs in.
    ok(&lattice(
        &config,
        &["password", "-u", "admin"],
        &[
            ("LATTICE_PASSWORD", "admin-password-1"),
            ("LATTICE_NEW_PASSWORD", "admin-password-2"),
        ],
    ));
    let out = lattice(
        &config,
        &["login", "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    );
    assert_eq!(out.status.code(), Some(1));
    ok(&lattice(
        &config,
        &["login", "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-2")],
    ));

    ok(&lattice(&config, &["logout"], &[]));
    assert!(!config.exists());
    let out = lattice(&config, &["whoami"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));
    drop(server);
}

#[test]
fn cli_storage_hosting_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, url) = common::process::spawn_all_in_one(&data, "off", &[]);
    let config = dir.path().join("cli/config.json");
    ok(&lattice(
        &config,
        &["login", "--server", &url, "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    ));

    // KV.
    ok(&lattice(
        &config,
        &["buckets", "create", "conf", "--surface", "kv"],
        &[],
    ));
    ok(&lattice(
        &config,
        &["kv", "put", "conf", "site/title", "\"Lattice\""],
        &[],
    ));
    assert_eq!(
        ok(&lattice(&config, &["kv", "get", "conf", "site/title"], &[])).trim(),
        "\"Lattice\""
    );
    let out = lattice(
        &config,
        &["kv", "put", "conf", "site/title", "1", "--if-absent"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("412"));
    let list = ok(&lattice(
        &config,
        &["kv", "list", "conf", "--prefix", "site/"],
        &[],
    ));
    assert!(list.contains("site/title"), "{list}");

    // A secret bucket: the admin reads through the seeded policy; listings
    // withhold values.
    let made = ok(&lattice(
        &config,
        &["buckets", "create", "vault", "--surface", "kv", "--secret"],
        &[],
    ));
    assert!(made.contains("kv (secret)"), "{made}");
    ok(&lattice(
        &config,
        &["kv", "put", "vault", "db", "\"hunter2\""],
        &[],
    ));
    assert_eq!(
        ok(&lattice(&config, &["kv", "get", "vault", "db"], &[])).trim(),
        "\"hunter2\""
    );
    let list = ok(&lattice(&config, &["kv", "list", "vault", "--values"], &[]));
    assert!(
        list.contains("(secret: read the key)") && !list.contains("hunter2"),
        "{list}"
    );

    // A static site: deploy a directory, bind a host, fetch it, roll back.
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>v1</h1>").unwrap();
    std::fs::write(site.join("css/app.css"), "body{}").unwrap();
    ok(&lattice(
        &config,
        &["buckets", "create", "site", "--surface", "static"],
        &[],
    ));
    ok(&lattice(
        &config,
        &["bindings", "create", "site.cli.test", "--bucket", "site"],
        &[],
    ));
    let out = lattice(
        &config,
        &[
            "static",
            "deploy",
            site.to_str().unwrap(),
            "--bucket",
            "site",
        ],
        &[],
    );
    let first = ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("site.cli.test"),
        "deploy names where the site is served"
    );
    assert!(!first.trim().is_empty());
    let fetch = |path: &str| -> String {
        let out = Command::new("curl")
            .args(["-fsS", "-H", "Host: site.cli.test", &format!("{url}{path}")])
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(fetch("/"), "<h1>v1</h1>");
    assert_eq!(fetch("/css/app.css"), "body{}");
    std::fs::write(site.join("index.html"), "<h1>v2</h1>").unwrap();
    ok(&lattice(
        &config,
        &[
            "static",
            "deploy",
            site.to_str().unwrap(),
            "--bucket",
            "site",
        ],
        &[],
    ));
    assert_eq!(fetch("/"), "<h1>v2</h1>");
    ok(&lattice(
        &config,
        &["static", "rollback", "--bucket", "site"],
        &[],
    ));
    assert_eq!(fetch("/"), "<h1>v1</h1>");
    let deployments = ok(&lattice(
        &config,
        &["static", "deployments", "--bucket", "site", "-o", "json"],
        &[],
    ));
    let deployments: serde_json::Value = serde_json::from_str(&deployments).unwrap();
    assert_eq!(deployments["deployments"].as_array().unwrap().len(), 2);

    // Storage tokens: the KV binding with curl, as in the seed's examples.
    ok(&lattice(
        &config,
        &["bindings", "create", "kv.cli.test", "--bucket", "conf"],
        &[],
    ));
    let secret = ok(&lattice(
        &config,
        &[
            "storage-tokens",
            "create",
            "--surface",
            "kv",
            "--access",
            "write",
            "--bucket",
            "conf",
        ],
        &[],
    ));
    let secret = secret.trim();
    assert!(secret.starts_with("lst_"), "{secret}");
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "PUT",
            "-H",
            "Host: kv.cli.test",
            "-H",
            &format!("Authorization: Bearer {secret}"),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"value\":\"from curl\"}",
            &format!("{url}/greeting"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Host: kv.cli.test",
            "-H",
            &format!("Authorization: Bearer {secret}"),
            &format!("{url}/greeting"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"from curl\"");
    let tokens: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["storage-tokens", "list", "-o", "json"],
        &[],
    )))
    .unwrap();
    let id = tokens["tokens"][0]["id"].as_str().unwrap().to_owned();
    ok(&lattice(&config, &["storage-tokens", "revoke", &id], &[]));
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: kv.cli.test",
        ])
        .args([
            "-H",
            &format!("Authorization: Bearer {secret}"),
            &format!("{url}/greeting"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

/// Reviewed changes from the CLI: an intent from a YAML file, its diff (a pending
/// plan), history, the plan shown for review, a wrong hash refused, and reject.
#[test]
fn cli_reviewed_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_server, url) = common::process::spawn_all_in_one(&data, "off", &[]);
    let config = dir.path().join("cli/config.json");
    ok(&lattice(
        &config,
        &["login", "--server", &url, "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    ));
    let me: serde_json::Value =
        serde_json::from_str(&ok(&lattice(&config, &["whoami", "-o", "json"], &[]))).unwrap();
    let node = "0190c3f0-0000-7000-8000-00000000c11a";
    let db = format!("sqlite://{}", data.join("lattice.db").display());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::insert_node(
            &db,
            node,
            me["org_id"].as_str().unwrap(),
        ));

    // A bad intent: every bad field named, exit 1.
    let file = dir.path().join("web-fw.yaml");
    std::fs::write(
        &file,
        format!(
            "name: web-fw\nkind: firewall\nselector:\n  node: {node}\nspec:\n  default: drop\n  rules:\n    - action: accept\n      protocol: tcp\n      ports: \"0\"\n"
        ),
    )
    .unwrap();
    let out = lattice(
        &config,
        &["intent", "apply", "-f", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.rules[0].ports"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("ports: \"0\"", "ports: \"22,443\"\n      from: 10.0.0.0/8");
    std::fs::write(&file, text).unwrap();
    ok(&lattice(
        &config,
        &["intent", "apply", "-f", file.to_str().unwrap()],
        &[],
    ));
    let history = ok(&lattice(&config, &["intent", "history", "web-fw"], &[]));
    assert!(
        history.contains("web-fw") && history.contains("firewall"),
        "{history}"
    );

    // The diff renders a pending plan, printed for review (plain when piped).
    let shown = ok(&lattice(&config, &["intent", "diff", "web-fw"], &[]));
    assert!(
        shown.contains("+\t\tip saddr 10.0.0.0/8 tcp dport { 22, 443 } accept")
            && shown.contains("approve: lattice plan approve")
            && !shown.contains('\u{1b}'),
        "{shown}"
    );
    let id = shown
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("plan "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let json: serde_json::Value = serde_json::from_str(&ok(&lattice(
        &config,
        &["plan", "show", &id, "-o", "json"],
        &[],
    )))
    .unwrap();
    assert_eq!(json["state"], "pending");
    let out = lattice(
        &config,
        &["plan", "approve", &id, "--hash", "sha256:00"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hash mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&lattice(
        &config,
        &["plan", "reject", &id, "--reason", "not today"],
        &[],
    ));
    let list = ok(&lattice(&config, &["plan", "list"], &[]));
    assert!(list.contains(&id) && list.contains("rejected"), "{list}");
    // The plan's story in the audit log.
    let mut story = String::new();
    for _ in 0..50 {
        story = ok(&lattice(&config, &["audit", "plan", &id], &[]));
        if story.contains("plan.reject") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        story.contains("plan.create")
            && story.contains("plan.approve")
            && story.contains("plan.reject"),
        "{story}"
    );

    // Agent releases: uploaded, signed, listed; the same version again refused.
    let binary = dir.path().join("lattice-agent-9.9.9");
    std::fs::write(&binary, b"not really an agent, but bytes to sign").unwrap();
    let upload = [
        "agent-release",
        "upload",
        binary.to_str().unwrap(),
        "--version",
        "9.9.9",
        "-o",
        "json",
    ];
    let rel: serde_json::Value =
        serde_json::from_str(&ok(&lattice(&config, &upload, &[]))).unwrap();
    assert_eq!(rel["size"], 38, "{rel}");
    assert_eq!(rel["signature"].as_str().map(str::len), Some(88), "{rel}");
    let out = lattice(&config, &upload, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("immutable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = ok(&lattice(&config, &["agent-release", "list"], &[]));
    assert!(
        list.contains("9.9.9") && list.contains(rel["sha256"].as_str().unwrap()),
        "{list}"
    );
}

#[test]
fn cli_sso_providers() {
    if !common::oidc::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = common::process::spawn_all_in_one(&dir.path().join("data"), "off", &[]);
    let config = dir.path().join("cli/config.json");
    ok(&lattice(
        &config,
        &["login", "--server", &url, "-u", "admin"],
        &[("LATTICE_PASSWORD", "admin-password-1")],
    ));
    let op = common::oidc::OpenIdProvider::start(
        &serde_json::json!([{"client_id": "lattice", "client_secret": "a-client-secret-of-some-length",
            "redirect_uris": [format!("{url}/api/v1/auth/sso/corp/callback")]}]),
        &serde_json::json!({"alice": {"email": "alice@example.com", "email_verified": true}}),
    );
    let secret = [(
        "LATTICE_SSO_CLIENT_SECRET",
        "a-client-secret-of-some-length",
    )];
    let out = lattice(
        &config,
        &[
            "sso",
            "add",
            "corp",
            "--issuer",
            &format!("{}/nope", op.issuer),
            "--client-id",
            "lattice",
        ],
        &secret,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nope/.well-known/openid-configuration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lattice(
        &config,
        &[
            "sso",
            "add",
            "corp",
            "--issuer",
            &op.issuer,
            "--client-id",
            "lattice",
            "--display-name",
            "Corp",
        ],
        &secret,
    );
    let shown = ok(&out);
    let redirect = format!("{url}/api/v1/auth/sso/corp/callback");
    assert!(shown.contains(&redirect), "{shown}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("register this redirect URL"));
    let list = ok(&lattice(&config, &["sso", "list"], &[]));
    assert!(list.contains("corp") && list.contains(&op.issuer), "{list}");
    assert!(!list.contains("a-client-secret"), "{list}");
    ok(&lattice(
        &config,
        &[
            "users",
            "create",
            "alice@example.com",
            "--scope",
            "nodes:read,tokens:write",
        ],
        &[("LATTICE_NEW_PASSWORD", "alice-password-1234")],
    ));

    // `lattice login --sso`: the browser logs in at the provider and lands on the
    // CLI's loopback listener; the CLI stores a token of alice's.
    let alice_config = dir.path().join("alice/config.json");
    let mut login = Command::new(cli_bin())
        .args(["login", "--server", &url, "--sso", "corp", "--no-browser"])
        .env("LATTICE_CONFIG", &alice_config)
        .env_remove("LATTICE_TOKEN")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(login.stderr.take().unwrap());
    let mut line = String::new();
    let start = loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "no URL printed"
        );
        if let Some(u) = line.trim().split("in your browser: ").nth(1) {
            break u.to_owned();
        }
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut browser = common::oidc::Browser::new(&dir.path().join("none.pem"));
        let back = browser.log_in_at_provider(&start, "alice").await;
        let to_cli = browser.send(reqwest::Method::GET, &back, None).await;
        assert_eq!(to_cli.status, 303, "{}", to_cli.body);
        let cli = to_cli.location.unwrap();
        assert!(cli.starts_with("http://127.0.0.1:"), "{cli}");
        let page = browser.send(reqwest::Method::GET, &cli, None).await;
        assert_eq!(page.status, 200, "{}", page.body);
    });
    let status = login.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    assert!(status.success(), "{rest}");
    assert!(rest.contains("as alice@example.com"), "{rest}");
    let me = ok(&lattice(&alice_config, &["whoami"], &[]));
    assert!(me.contains("alice@example.com"), "{me}");

    ok(&lattice(&config, &["sso", "remove", "corp"], &[]));
    let out = lattice(&config, &["sso", "show", "corp"], &[]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cli_orgs_and_switching() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = common::process::spawn_all_in_one(&dir.path().join("data"), "off", &[]);
    let config = dir.path().join("cli/config.json");
    let pw = [("LATTICE_PASSWORD", "admin-password-1")];
    ok(&lattice(
        &config,
        &["login", "--server", &url, "-u", "admin"],
        &pw,
    ));

    ok(&lattice(
        &config,
        &["orgs", "create", "beta", "--max-tokens", "5"],
        &[],
    ));
    let list = ok(&lattice(&config, &["orgs", "list"], &[]));
    assert!(list.contains("beta") && list.contains("default"), "{list}");
    let shown = ok(&lattice(&config, &["orgs", "show", "beta"], &[]));
    assert!(
        shown.contains("max tokens") && shown.contains("nothing"),
        "{shown}"
    );

    // Switch the stored token to beta and back.
    ok(&lattice(&config, &["org", "use", "beta"], &[]));
    let me = ok(&lattice(&config, &["whoami", "-o", "json"], &[]));
    assert!(me.contains("beta"), "{me}");
    let mine = ok(&lattice(&config, &["org", "list"], &[]));
    assert!(mine.contains("beta"), "{mine}");
    let out = lattice(&config, &["org", "use", "gamma"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member of org \"gamma\""));
    ok(&lattice(&config, &["org", "use", "default"], &[]));

    // Accounts: disabled and enabled again by name.
    ok(&lattice(
        &config,
        &["users", "create", "gina", "--scope", "kv:read,tokens:write"],
        &[("LATTICE_NEW_PASSWORD", "gina-password-123")],
    ));
    ok(&lattice(&config, &["users", "disable", "gina"], &[]));
    let list = ok(&lattice(&config, &["users", "list"], &[]));
    let gina = list.lines().find(|l| l.contains("gina")).unwrap();
    assert!(gina.trim_end().ends_with("yes"), "{list}");
    ok(&lattice(&config, &["users", "enable", "gina"], &[]));

    // Gina is invited into beta by link, joins from her own login, acts there.
    ok(&lattice(&config, &["org", "use", "beta"], &[]));
    let link = ok(&lattice(
        &config,
        &[
            "org",
            "invite",
            "gina",
            "--scope",
            "kv:read",
            "--scope",
            "tokens:write",
        ],
        &[],
    ))
    .trim()
    .to_owned();
    assert!(link.contains("#lati_"), "{link}");
    ok(&lattice(&config, &["org", "use", "default"], &[]));
    let gina = dir.path().join("gina/config.json");
    ok(&lattice(
        &gina,
        &["login", "--server", &url, "-u", "gina"],
        &[("LATTICE_PASSWORD", "gina-password-123")],
    ));
    ok(&lattice(&gina, &["org", "join", &link], &[]));
    ok(&lattice(&gina, &["org", "use", "beta"], &[]));
    let me = ok(&lattice(&gina, &["whoami", "-o", "json"], &[]));
    assert!(me.contains("beta"), "{me}");
    ok(&lattice(&gina, &["org", "use", "default"], &[]));

    // An org in use by nothing is deleted without --force.
    ok(&lattice(&config, &["orgs", "delete", "beta"], &[]));
    let list = ok(&lattice(&config, &["orgs", "list"], &[]));
    assert!(!list.contains("beta"), "{list}");
    // Login straight into an org the user is not a member of names the org.
    let out = lattice(
        &config,
        &["login", "--server", &url, "-u", "admin", "--org", "nowhere"],
        &pw,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member of org"));
}
