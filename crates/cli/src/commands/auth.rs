//! `login`, `logout`, `whoami` and `totp`.

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, Me, parse, segment};
use crate::args::{LoginArgs, TotpCommand};
use crate::client::{Api, ApiError, Auth, SESSION_COOKIE, TlsOptions, set_cookie};
use crate::config::{self, StoredConfig};
use crate::output::{Table, scopes_cell};
use crate::prompt;

/// Lifetime of the token `login` stores.
const LOGIN_TOKEN_LIFETIME_S: i64 = 30 * 86_400;
/// Longest token name the server accepts.
const MAX_TOKEN_NAME: usize = 64;

#[derive(Debug, Deserialize)]
struct LoginAnswer {
    mfa_required: bool,
    #[serde(default)]
    mfa_token: Option<String>,
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    user: Option<Me>,
}

#[derive(Debug, Deserialize)]
struct CreatedToken {
    token: Option<String>,
}

/// `lattice login`: password (+ TOTP) → session → long-lived token → stored.
pub async fn login(ctx: &Ctx, args: &LoginArgs) -> anyhow::Result<()> {
    let previous = match config::load(&ctx.config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: ignoring the existing config: {e:#}");
            None
        }
    };
    let server = match (&ctx.server, &previous) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.server.clone(),
        (None, None) => bail!("login needs --server URL"),
    };
    let same_server = previous.as_ref().filter(|c| c.server == server);
    let tls = ctx.tls(same_server);
    warn_about_transport(&server, &tls);

    let (api, user) = match &args.sso {
        Some(provider) => open_sso_session(&server, &tls, provider, args.no_browser).await?,
        None => {
            let (api, user, _) =
                open_session_in(&server, &tls, args.username.as_deref(), args.org.as_deref())
                    .await?;
            (api, user)
        }
    };
    let username = user.username.clone();

    // Whatever happens to the token, end the session: it is only a stepping stone.
    let created = create_login_token(&api, &user).await;
    if let Err(e) = api.post("/api/v1/auth/logout", None).await {
        eprintln!("warning: could not end the login session: {e:#}");
    }
    let token = created?;

    let stored = StoredConfig {
        server: server.clone(),
        token,
        ca_file: tls.ca_file.clone(),
        insecure: tls.insecure,
    };
    config::save(&ctx.config_path, &stored)?;
    if let Some(old) = previous.filter(|c| c.token != stored.token) {
        revoke_previous(&old).await;
    }
    eprintln!("logged in to {server} as {username}");
    Ok(())
}

/// Log in with a password (and a TOTP code when the account has one): an API client
/// holding the new session's cookie and CSRF token, the user it belongs to, and the
/// password used (for a following password change).
async fn open_session(
    server: &str,
    tls: &TlsOptions,
    username: Option<&str>,
) -> anyhow::Result<(Api, Me, String)> {
    open_session_in(server, tls, username, None).await
}

/// [`open_session`] acting in `org` (None: the account's home org).
async fn open_session_in(
    server: &str,
    tls: &TlsOptions,
    username: Option<&str>,
    org: Option<&str>,
) -> anyhow::Result<(Api, Me, String)> {
    let username = prompt::username(username)?;
    let password = prompt::secret("Password: ", "password", "LATTICE_PASSWORD")?;
    let mut api = Api::new(server, tls, Auth::None)?;
    let mut body = json!({ "username": username, "password": password });
    if let Some(org) = org {
        body["org"] = json!(org);
    }
    let reply = api
        .send(Method::POST, "/api/v1/auth/login", Some(&body))
        .await?;
    let user = finish_session(&mut api, reply, &username).await?;
    Ok((api, user, password))
}

/// The second factor when the answer asks for it, then the session's cookie and
/// CSRF token set on `api`: the user it belongs to.
async fn finish_session(
    api: &mut Api,
    mut reply: crate::client::Reply,
    username: &str,
) -> anyhow::Result<Me> {
    let mut answer: LoginAnswer = parse(&reply.body)?;
    if answer.mfa_required {
        let mfa_token = answer
            .mfa_token
            .context("the server asked for a TOTP code but sent no mfa_token")?;
        let code = prompt::code("TOTP code: ", "LATTICE_TOTP_CODE")?;
        let body = json!({ "mfa_token": mfa_token, "code": code });
        reply = api
            .send(Method::POST, "/api/v1/auth/login/totp", Some(&body))
            .await?;
        answer = parse(&reply.body)?;
        if answer.mfa_required {
            bail!("the server asked for a second factor twice");
        }
    }
    let secret = set_cookie(&reply.headers, SESSION_COOKIE)
        .context("the server did not set a session cookie")?;
    let csrf = answer
        .csrf_token
        .or_else(|| set_cookie(&reply.headers, "lattice_csrf"))
        .context("the server sent no CSRF token")?;
    let mut user = answer.user.context("the login answer names no user")?;
    if user.username.is_empty() {
        user.username = username.to_owned();
    }
    api.set_auth(Auth::Session { secret, csrf });
    Ok(user)
}

/// Log in through a single sign-on provider in a browser: this process listens on
/// 127.0.0.1, the login starts with its PKCE challenge, the server sends the
/// browser back here with a one-time code, and the code and the verifier buy a
/// session (then the TOTP step, when the account has it).
async fn open_sso_session(
    server: &str,
    tls: &TlsOptions,
    provider: &str,
    no_browser: bool,
) -> anyhow::Result<(Api, Me)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::Digest as _;
    let raw: [u8; 32] = rand::random();
    let verifier = URL_SAFE_NO_PAD.encode(raw);
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1 for the login's redirect")?;
    let port = listener.local_addr()?.port();
    let url = format!(
        "{}/api/v1/auth/sso/{}/start?cli_port={port}&cli_challenge={challenge}",
        server.trim_end_matches('/'),
        segment(provider)?
    );
    eprintln!("Log in with {provider} in your browser: {url}");
    if !no_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let code = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        wait_for_code(&listener),
    )
    .await
    .context("no login within 5 minutes")??;
    let mut api = Api::new(server, tls, Auth::None)?;
    let body = json!({ "code": code, "verifier": verifier });
    let reply = api
        .send(Method::POST, "/api/v1/auth/sso/cli/exchange", Some(&body))
        .await?;
    let user = finish_session(&mut api, reply, "").await?;
    Ok((api, user))
}

/// The browser's request to `/callback?code=...` on the loopback listener.
async fn wait_for_code(listener: &tokio::net::TcpListener) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; 8192];
        let mut len = 0;
        while len < buf.len() {
            let n = sock.read(&mut buf[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..len]);
        let target = head
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let code = target
            .strip_prefix("/callback?")
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("code=")))
            .map(str::to_owned);
        let (status, text) = match &code {
            Some(_) => (
                "200 OK",
                "Logged in to Lattice: you can close this window.\n",
            ),
            None => ("404 Not Found", "Not the login's callback.\n"),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = sock.write_all(answer.as_bytes()).await;
        if let Some(code) = code {
            return Ok(code);
        }
    }
}

/// A name for a token the CLI stores: `cli@<host>`.
pub(super) fn cli_token_name() -> String {
    let name = format!("cli@{}", prompt::hostname());
    name.chars().take(MAX_TOKEN_NAME).collect()
}

/// How long the token the CLI stores lives.
pub(super) const CLI_TOKEN_LIFETIME_S: i64 = LOGIN_TOKEN_LIFETIME_S;

async fn create_login_token(api: &Api, user: &Me) -> anyhow::Result<String> {
    if user.scopes.is_empty() {
        bail!(
            "user {} has no scopes, and an operator token needs at least one",
            user.username
        );
    }
    let mut name = format!("cli@{}", prompt::hostname());
    if name.chars().count() > MAX_TOKEN_NAME {
        name = name.chars().take(MAX_TOKEN_NAME).collect();
    }
    let body = json!({
        "name": name,
        "scopes": user.scopes,
        "expires_in_s": LOGIN_TOKEN_LIFETIME_S,
    });
    let answer = api.post("/api/v1/tokens", Some(&body)).await?;
    let created: CreatedToken = parse(&answer)?;
    created
        .token
        .filter(|t| !t.is_empty())
        .context("the server created a token but did not return its secret")
}

/// Best effort: the token a re-login replaces should not linger on the server.
pub(super) async fn revoke_previous(old: &StoredConfig) {
    let tls = TlsOptions {
        ca_file: old.ca_file.clone(),
        insecure: old.insecure,
    };
    let result = async {
        let api = Api::new(&old.server, &tls, Auth::Bearer(old.token.clone()))?;
        revoke_own_token(&api).await
    }
    .await;
    match result {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(401) => {} // already expired or revoked
        Err(e) => eprintln!(
            "note: could not revoke the previously stored token for {}: {e:#}",
            old.server
        ),
    }
}

/// Revoke the token `api` authenticates with.
async fn revoke_own_token(api: &Api) -> anyhow::Result<()> {
    let me: Me = parse(&api.get("/api/v1/auth/me").await?)?;
    if me.auth_method != "token" {
        bail!("the stored credential is a {}, not a token", me.auth_method);
    }
    api.delete(&format!("/api/v1/tokens/{}", segment(&me.credential_id)?))
        .await
}

fn status_of(err: &anyhow::Error) -> Option<u16> {
    err.downcast_ref::<ApiError>().map(|e| e.status)
}

fn warn_about_transport(server: &str, tls: &TlsOptions) {
    if tls.insecure {
        eprintln!("warning: TLS certificate verification is off (--insecure)");
    }
    let Ok(url) = reqwest::Url::parse(server) else {
        return;
    };
    if url.scheme() != "http" {
        return;
    }
    let host = url.host_str().unwrap_or("");
    let local = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !local {
        eprintln!("warning: {server} is plain http: the password travels unencrypted");
    }
}

/// `lattice logout`: revoke the stored token, delete the config file.
pub async fn logout(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(stored) = config::load(&ctx.config_path)? else {
        bail!("not logged in; run lattice login --server URL");
    };
    let server = ctx.server.clone().unwrap_or_else(|| stored.server.clone());
    let api = Api::new(
        &server,
        &ctx.tls(Some(&stored)),
        Auth::Bearer(stored.token.clone()),
    )?;
    match revoke_own_token(&api).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(401) => {
            eprintln!("note: the stored token was already expired or revoked");
        }
        Err(e) => {
            eprintln!(
                "the token was not revoked; to forget it anyway, delete {}",
                ctx.config_path.display()
            );
            return Err(e);
        }
    }
    config::remove(&ctx.config_path)?;
    eprintln!("logged out of {server}");
    Ok(())
}

/// `lattice whoami`.
pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let body = api.get("/api/v1/auth/me").await?;
    ctx.show(&body, |me: Me| {
        let mut t = Table::new(&["FIELD", "VALUE"]);
        let rows = [
            ("server", api.server().to_owned()),
            ("username", me.username),
            ("user id", me.user_id),
            ("org", format!("{} ({})", me.org_name, me.org_id)),
            ("scopes", scopes_cell(&me.scopes)),
            ("auth", format!("{} {}", me.auth_method, me.credential_id)),
            (
                "totp",
                if me.totp_enabled { "on" } else { "off" }.to_owned(),
            ),
        ];
        for (k, v) in rows {
            t.row(vec![k.to_owned(), v]);
        }
        t
    })
}

#[derive(Debug, Deserialize)]
struct Enrollment {
    secret: String,
    otpauth_uri: String,
}

#[derive(Debug, Deserialize)]
struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// The server of `--server` or of the stored configuration, with its TLS options.
fn target_server(ctx: &Ctx) -> anyhow::Result<(String, TlsOptions)> {
    let stored = config::load(&ctx.config_path)?;
    let server = match (&ctx.server, &stored) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => c.server.clone(),
        (None, None) => bail!("not logged in; run lattice login --server URL (or pass --server)"),
    };
    let tls = ctx.tls(stored.as_ref().filter(|c| c.server == server));
    Ok((server, tls))
}

/// `lattice password`: log in with the current password, set a new one, end the session.
pub async fn password(ctx: &Ctx, username: Option<&str>) -> anyhow::Result<()> {
    let (server, tls) = target_server(ctx)?;
    let (api, user, current) = open_session(&server, &tls, username).await?;
    let result = async {
        let new = prompt::new_password(&user.username)?;
        api.post(
            "/api/v1/auth/password",
            Some(&json!({ "current_password": current, "new_password": new })),
        )
        .await
    }
    .await;
    if let Err(e) = api.post("/api/v1/auth/logout", None).await {
        eprintln!("warning: could not end the session: {e:#}");
    }
    result?;
    eprintln!(
        "password changed for {}; your other sessions have ended",
        user.username
    );
    Ok(())
}

/// `lattice totp enable|disable`. Second-factor settings change only from a password
/// session (the server refuses API tokens), so both log in first and log out after.
pub async fn totp(ctx: &Ctx, cmd: TotpCommand) -> anyhow::Result<()> {
    let (server, tls) = target_server(ctx)?;
    let username = match &cmd {
        TotpCommand::Enable { username } | TotpCommand::Disable { username } => username.clone(),
    };
    let (api, _user, _) = open_session(&server, &tls, username.as_deref()).await?;
    let result = match cmd {
        TotpCommand::Enable { .. } => totp_enable(ctx, &api).await,
        TotpCommand::Disable { .. } => {
            let code = prompt::code(
                "Current TOTP or recovery code: ",
                "LATTICE_TOTP_DISABLE_CODE",
            )?;
            api.post("/api/v1/auth/totp/disable", Some(&json!({ "code": code })))
                .await
                .map(|_| eprintln!("TOTP is off"))
        }
    };
    if let Err(e) = api.post("/api/v1/auth/logout", None).await {
        eprintln!("warning: could not end the session: {e:#}");
    }
    result
}

async fn totp_enable(ctx: &Ctx, api: &Api) -> anyhow::Result<()> {
    let body = api.post("/api/v1/auth/totp/enroll", None).await?;
    let enrollment: Enrollment = parse(&body)?;
    eprintln!("add this to your authenticator app (or scan the URI as a QR code):");
    eprintln!("  secret: {}", enrollment.secret);
    eprintln!("  uri:    {}", enrollment.otpauth_uri);
    let code = prompt::code("Code shown by the app: ", "LATTICE_TOTP_CODE")?;
    let body = api
        .post("/api/v1/auth/totp/confirm", Some(&json!({ "code": code })))
        .await?;
    ctx.show(&body, |r: RecoveryCodes| {
        let mut t = Table::new(&["RECOVERY CODE"]);
        for c in r.recovery_codes {
            t.row(vec![c]);
        }
        t
    })?;
    eprintln!(
        "TOTP is on. Keep the recovery codes safe: each works once, and they will not be shown again"
    );
    Ok(())
}
