//! A real OpenID provider (`oidc-provider`, started with Node from
//! `tests/oidc-provider/`) on loopback, for the single sign-on tests.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running provider (killed on drop).
pub struct OpenIdProvider {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// Whether Node and the provider's packages are here; in CI they must be
/// (scripts/test.sh runs `npm ci` in the fixture).
pub fn available() -> bool {
    let ok = fixture().join("node_modules/oidc-provider").is_dir()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but node or the oidc-provider packages are missing (scripts/test.sh installs them)"
    );
    ok
}

impl OpenIdProvider {
    /// Start one with these clients and accounts (see `provider.mjs`).
    pub fn start(clients: &Value, accounts: &Value) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(fixture())
            .env("PORT", port.to_string())
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_ACCOUNTS", accounts.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.starts_with("listening") {
            line.clear();
        }
        assert!(
            line.starts_with("listening"),
            "the OpenID provider did not start"
        );
        Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }
}
