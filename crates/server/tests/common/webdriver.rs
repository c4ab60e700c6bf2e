//! A small W3C WebDriver client for driving Debian's Chromium through its
//! `chromedriver`: only the commands the dashboard tests use, over JSON/HTTP on
//! loopback.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::process::Proc;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and its driver; None (saying so) where they are not installed. In
/// CI they must be (scripts/test.sh installs them).
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let first = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.is_file());
    let found = first(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]).zip(first(&[
        "/usr/bin/chromedriver",
        "/usr/lib/chromium/chromedriver",
    ]));
    assert!(
        found.is_some() || std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but chromium and chromium-driver are not installed"
    );
    if found.is_none() {
        eprintln!("skipped: no chromium/chromedriver here (scripts/test.sh installs them)");
    }
    found
}

pub struct Browser {
    http: reqwest::Client,
    base: String,
    _driver: Proc,
}

#[derive(Clone)]
pub struct Element(String);

impl Browser {
    /// Start `chromedriver` on a free loopback port and a headless Chromium session.
    pub async fn start(browser: &std::path::Path, driver: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{root}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("lattice-chromium-{port}"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            // The self-signed mode's CA is not in the browser's store.
            "acceptInsecureCerts": true,
        }}});
        let r: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Self {
            http,
            base: format!("{root}/session/{id}"),
            _driver: Proc(child),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = r["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn try_find(&self, css: &str, text: &str) -> Option<Element> {
        let found = self
            .run(
                "const [css, text] = arguments;
                 return [...document.querySelectorAll(css)]
                   .find(e => e.offsetParent !== null && e.textContent.includes(text)) || null;",
                json!([css, text]),
            )
            .await;
        found[ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// Wait (up to 15 s) for a visible element matching `css` whose text contains `text`.
    pub async fn wait(&self, css: &str, text: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.try_find(css, text).await {
                return e;
            }
            if Instant::now() > deadline {
                let body = self.run("return document.body.innerText", json!([])).await;
                panic!(
                    "no {css:?} with {text:?} on {}; the page says:\n{body}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn text(&self, e: &Element) -> String {
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{}/text", e.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    pub async fn click(&self, e: &Element) {
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            Some(json!({})),
        )
        .await;
    }

    /// Type into a field (found by CSS), replacing what it holds.
    pub async fn fill(&self, css: &str, value: &str) {
        let e = self.wait(css, "").await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.0),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": value})),
        )
        .await;
    }

    /// Click the visible button whose text contains `label`.
    pub async fn press(&self, label: &str) {
        let b = self.wait("button", label).await;
        self.click(&b).await;
    }

    /// Save a PNG of the page to `dir/name.png`.
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        use base64::Engine as _;
        let data = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The browser console's entries since the last call (chromedriver's log).
    pub async fn console(&self) -> Vec<(String, String)> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_owned(),
                            e["message"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}
