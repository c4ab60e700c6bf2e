//! HTTP client for the Lattice REST API: TLS setup, authentication headers and
//! decoding of `{"error":{"code","message"}}` answers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::Value;

/// Session cookie set by a successful login.
pub const SESSION_COOKIE: &str = "lattice_session";

/// How to trust the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (testing only).
    pub insecure: bool,
}

/// Credential sent with each request.
#[derive(Clone)]
pub enum Auth {
    /// No credential (login).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// Session cookie; state-changing calls also send `X-CSRF-Token`.
    Session {
        /// Value of the `lattice_session` cookie.
        secret: String,
        /// CSRF token from the login answer.
        csrf: String,
    },
}

/// An error answer from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`unauthenticated`, `not_found`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` seconds, when the server sent one.
    pub retry_after_s: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status)
    }
}

impl std::error::Error for ApiError {}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// The error a non-2xx answer carries (with its `Retry-After`).
pub fn answer_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let retry = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
    decode_error(status.as_u16(), retry, body)
}

/// Decode an error answer. Bodies that are not the API's error shape (a proxy's HTML
/// page, say) become a message from their first line or the status text.
pub fn decode_error(status: u16, retry_after: Option<&str>, body: &[u8]) -> ApiError {
    let retry_after_s = retry_after.and_then(|v| v.trim().parse().ok());
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        return ApiError {
            status,
            code: b.error.code,
            message: b.error.message,
            retry_after_s,
        };
    }
    let text = String::from_utf8_lossy(body);
    let first_line: String = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let message = if first_line.is_empty() {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("request failed")
            .to_owned()
    } else {
        first_line
    };
    ApiError {
        status,
        code: "http_error".to_owned(),
        message,
        retry_after_s,
    }
}

/// Check and normalise a server URL: http(s), a host, no query; no trailing slash.
pub fn normalize_server(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url.trim())
        .with_context(|| format!("invalid server URL {url:?} (expected https://host:port)"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("invalid server URL {url:?}: the scheme must be https or http");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        bail!("invalid server URL {url:?}: no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("invalid server URL {url:?}: remove the query or fragment");
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

fn builder(tls: &TlsOptions) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("lattice-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if tls.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    } else if let Some(path) = &tls.ca_file {
        builder = builder.tls_certs_only(read_ca_file(path)?);
    }
    Ok(builder)
}

/// A decoded success answer.
#[derive(Debug)]
pub struct Reply {
    /// Response headers (login reads `Set-Cookie`).
    pub headers: HeaderMap,
    /// JSON body; `Null` when the body was empty.
    pub body: Value,
}

/// A client bound to one server and credential.
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    tls: TlsOptions,
}

impl Api {
    /// Build a client for `server` (already normalised) with the given trust settings.
    pub fn new(server: &str, tls: &TlsOptions, auth: Auth) -> anyhow::Result<Self> {
        let http = builder(tls)?
            .timeout(Duration::from_secs(60))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Self {
            http,
            base: server.to_owned(),
            auth,
            tls: tls.clone(),
        })
    }

    /// A client for connections upgraded to another protocol (`lattice proxy`):
    /// HTTP/1.1 only, and no overall deadline.
    pub fn upgrade_client(&self) -> anyhow::Result<reqwest::Client> {
        builder(&self.tls)?
            .http1_only()
            .build()
            .context("cannot set up the HTTP client")
    }

    /// The bearer token, when the client uses one.
    pub fn bearer(&self) -> Option<&str> {
        match &self.auth {
            Auth::Bearer(t) => Some(t),
            _ => None,
        }
    }

    /// The server base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Replace the credential (after login).
    pub fn set_auth(&mut self, auth: Auth) {
        self.auth = auth;
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(Method::GET, path, None).await?.body)
    }

    /// `POST path` with an optional JSON body.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        Ok(self.send(Method::POST, path, body).await?.body)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(Method::DELETE, path, None).await.map(drop)
    }

    /// Send one request; non-2xx answers become [`ApiError`]s.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        self.send_with(method, path, |req| match body {
            Some(b) => req.json(b),
            None => req,
        })
        .await
    }

    /// Send one request that `build` completes (extra headers, a raw body, a longer
    /// timeout); non-2xx answers become [`ApiError`]s.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> anyhow::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(token) => req = req.bearer_auth(token),
            Auth::Session { secret, csrf } => {
                req = req.header(
                    reqwest::header::COOKIE,
                    format!("{SESSION_COOKIE}={secret}"),
                );
                if method != Method::GET {
                    req = req.header("x-csrf-token", csrf);
                }
            }
        }
        let resp = build(req)
            .send()
            .await
            .map_err(|e| transport_error(&url, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| transport_error(&url, &e))?;
        if status.is_redirection() {
            let to = headers
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            bail!(
                "{url} answered HTTP {} redirecting to {to}; pass the server's real address with --server",
                status.as_u16()
            );
        }
        if !status.is_success() {
            return Err(answer_error(status, &headers, &bytes).into());
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from {url}: not JSON"))?
        };
        Ok(Reply { headers, body })
    }
}

/// The value of `name` among a response's `Set-Cookie` headers.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

fn read_ca_file(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read CA file {}", path.display()))?;
    let mut certs = Vec::new();
    for der in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = der.with_context(|| format!("invalid PEM in CA file {}", path.display()))?;
        certs.push(
            reqwest::Certificate::from_der(&der)
                .with_context(|| format!("invalid certificate in {}", path.display()))?,
        );
    }
    if certs.is_empty() {
        bail!("no certificates in CA file {}", path.display());
    }
    Ok(certs)
}

fn transport_error(url: &str, err: &reqwest::Error) -> anyhow::Error {
    if err.is_timeout() {
        return anyhow!("cannot reach {url}: timed out");
    }
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let text = e.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = e.source();
    }
    let detail = if causes.is_empty() {
        err.to_string()
    } else {
        causes.join(": ")
    };
    let hint = if detail.contains("certificate") || detail.contains("UnknownIssuer") {
        "\nhint: pass --ca-file with the server's CA (<data-dir>/tls/ca.pem), or --insecure for a test server"
    } else {
        ""
    };
    anyhow!("cannot reach {url}: {detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_decoded() {
        let body = br#"{"error":{"code":"not_found","message":"token \"x\" not found"}}"#;
        let e = decode_error(404, None, body);
        assert_eq!(e.code, "not_found");
        assert_eq!(e.message, "token \"x\" not found");
        assert_eq!(e.to_string(), "token \"x\" not found (not_found, HTTP 404)");
    }

    #[test]
    fn retry_after_is_kept() {
        let body = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let e = decode_error(429, Some("17"), body);
        assert_eq!(e.retry_after_s, Some(17));
        assert_eq!(decode_error(429, Some("soon"), body).retry_after_s, None);
    }

    #[test]
    fn foreign_bodies_still_say_something() {
        let e = decode_error(502, None, b"\n<html>Bad Gateway</html>\n");
        assert_eq!(e.code, "http_error");
        assert_eq!(e.message, "<html>Bad Gateway</html>");
        let e = decode_error(503, None, b"");
        assert_eq!(e.message, "Service Unavailable");
        assert_eq!(e.to_string(), "Service Unavailable (http_error, HTTP 503)");
        let e = decode_error(500, None, br#"{"error":"flat"}"#);
        assert_eq!(e.code, "http_error");
    }

    #[test]
    fn server_urls_are_normalised() {
        assert_eq!(
            normalize_server("https://h:8443/").unwrap(),
            "https://h:8443"
        );
        assert_eq!(
            normalize_server(" http://h/prefix/ ").unwrap(),
            "http://h/prefix"
        );
        for bad in ["h:8443", "ftp://h", "https://h/?q=1", "not a url"] {
            assert!(normalize_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_cookie_is_found() {
        let mut h = HeaderMap::new();
        for v in [
            "lattice_session=abc; Path=/; HttpOnly",
            "lattice_csrf=def; Path=/",
        ] {
            h.append(reqwest::header::SET_COOKIE, v.parse().unwrap());
        }
        assert_eq!(set_cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(set_cookie(&h, "lattice_csrf").as_deref(), Some("def"));
        assert_eq!(set_cookie(&h, "other"), None);
    }
}
