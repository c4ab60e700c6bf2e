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

impl OpenIdProvider {
    /// Its port.
    pub fn port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }
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
    if !ok {
        eprintln!(
            "skipped here: node or the oidc-provider packages are missing (CI requires them)"
        );
    }
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
        Self::start_on(port, clients, accounts, &[])
    }

    /// Start one on `port` with extra environment (`OIDC_KEYS_FILE`,
    /// `OIDC_PUBLISH_FILE`).
    pub fn start_on(port: u16, clients: &Value, accounts: &Value, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(fixture())
            .env("PORT", port.to_string())
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_ACCOUNTS", accounts.to_string())
            .envs(env.iter().copied())
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
        // It keeps logging to stdout: keep reading, or it dies of a closed pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Self {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// A browser for the login flows: no automatic redirects, a cookie jar per host
/// (paths ignored), the gateway's CA trusted.
pub struct Browser {
    pub http: reqwest::Client,
    jar: std::collections::HashMap<String, Vec<(String, String)>>,
}

/// One answer: status, the Location header, the body.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub set_cookies: Vec<String>,
}

impl Browser {
    /// `gateway_ca`: the gateway's CA, trusted when the file exists (TLS on).
    pub fn new(gateway_ca: &std::path::Path) -> Self {
        super::install_crypto();
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Ok(ca) = std::fs::read(gateway_ca) {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
        }
        Self {
            http: b.build().unwrap(),
            jar: std::collections::HashMap::new(),
        }
    }

    fn host(url: &str) -> String {
        let u = url::Url::parse(url).unwrap();
        format!(
            "{}:{}",
            u.host_str().unwrap(),
            u.port_or_known_default().unwrap()
        )
    }

    /// The cookies this browser holds for `url`'s host.
    pub fn cookies(&self, url: &str) -> String {
        self.jar
            .get(&Self::host(url))
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    pub fn set_cookie(&mut self, url: &str, name: &str, value: &str) {
        let jar = self.jar.entry(Self::host(url)).or_default();
        jar.retain(|(k, _)| k != name);
        if !value.is_empty() {
            jar.push((name.to_owned(), value.to_owned()));
        }
    }

    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(&str, &str)]>,
    ) -> Page {
        let mut req = self.http.request(method, url);
        let cookies = self.cookies(url);
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        if let Some(f) = form {
            let body: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.join("&"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| url::Url::parse(url).unwrap().join(l).unwrap().to_string());
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        for c in &set_cookies {
            let pair = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                let gone = c.to_ascii_lowercase().contains("max-age=0")
                    || c.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
                self.set_cookie(url, k.trim(), if gone { "" } else { v.trim() });
            }
        }
        let body = resp.text().await.unwrap_or_default();
        Page {
            status,
            location,
            body,
            set_cookies,
        }
    }

    /// From `start` (the gateway's SSO start URL), through the provider's login
    /// and consent forms as `login`, up to (not into) the gateway's callback: the
    /// callback URL the provider redirected to.
    pub async fn log_in_at_provider(&mut self, start: &str, login: &str) -> String {
        let mut page = self.send(reqwest::Method::GET, start, None).await;
        let mut url = start.to_owned();
        for _ in 0..20 {
            if let Some(next) = page.location.clone() {
                if next.contains("/api/v1/auth/sso/") && next.contains("/callback") {
                    return next;
                }
                url = next;
                page = self.send(reqwest::Method::GET, &url, None).await;
                continue;
            }
            assert_eq!(page.status, 200, "{url}: {}", page.body);
            let action = page
                .body
                .split("action=\"")
                .nth(1)
                .and_then(|a| a.split('"').next())
                .unwrap_or_else(|| panic!("no form at {url}: {}", page.body))
                .to_owned();
            let target = url::Url::parse(&url)
                .unwrap()
                .join(&action)
                .unwrap()
                .to_string();
            // oidc-provider's development forms: a login form (any password), then
            // a consent form; both post `prompt` back.
            let form: Vec<(&str, &str)> = if page.body.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", login), ("password", "any")]
            } else {
                vec![("prompt", "consent")]
            };
            page = self.send(reqwest::Method::POST, &target, Some(&form)).await;
            url = target;
        }
        panic!("the provider never redirected to the callback");
    }
}

/// Form encoding of one value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
