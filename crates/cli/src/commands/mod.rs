//! Command implementations, one module per area, and what they share: locating the
//! stored credentials and building an authenticated client.

mod archive;
mod auth;
mod changes;
mod fleet;
mod groups;
mod kv;
mod orgs;
mod policy;
mod sso;
mod static_site;
mod storage;
mod tokens;
mod upload;
mod users;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::args::{Cli, Command};
use crate::client::{Api, ApiError, Auth, TlsOptions, normalize_server};
use crate::config::{self, StoredConfig};
use crate::output::{self, Format, Table};

/// Environment variable that overrides the stored token.
pub const TOKEN_ENV: &str = "LATTICE_TOKEN";

/// What every command needs from the global flags.
pub struct Ctx {
    /// Output format.
    pub format: Format,
    /// The config file.
    pub config_path: PathBuf,
    /// `--server`, normalised.
    pub server: Option<String>,
    /// `--ca-file`, made absolute.
    pub ca_file: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
}

impl Ctx {
    /// Trust settings: the flags when given, else the stored ones.
    pub fn tls(&self, stored: Option<&StoredConfig>) -> TlsOptions {
        if self.ca_file.is_some() || self.insecure {
            return TlsOptions {
                ca_file: self.ca_file.clone(),
                insecure: self.insecure,
            };
        }
        stored.map_or_else(TlsOptions::default, |c| TlsOptions {
            ca_file: c.ca_file.clone(),
            insecure: c.insecure,
        })
    }

    /// A client with the caller's credential: `$LATTICE_TOKEN` or the stored token.
    pub fn authed(&self) -> anyhow::Result<Api> {
        let stored = config::load(&self.config_path)?;
        let token = std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_owned())
            .or_else(|| stored.as_ref().map(|c| c.token.clone()));
        let Some(token) = token else {
            bail!("not logged in; run lattice login --server URL");
        };
        let server = match (&self.server, &stored) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => c.server.clone(),
            (None, None) => {
                bail!("no server: pass --server URL (or run lattice login --server URL)")
            }
        };
        Api::new(&server, &self.tls(stored.as_ref()), Auth::Bearer(token))
    }

    /// Print an answer: the server's JSON, or the table `table` builds from it.
    pub fn show<T: DeserializeOwned>(
        &self,
        body: &Value,
        table: impl FnOnce(T) -> Table,
    ) -> anyhow::Result<()> {
        match self.format {
            Format::Json => output::print_json(body),
            Format::Table => output::print_table(&table(parse(body)?)),
        }
    }
}

/// Decode an answer into the type a command expects.
pub fn parse<T: DeserializeOwned>(body: &Value) -> anyhow::Result<T> {
    T::deserialize(body).context("unexpected answer from the server")
}

/// The caller, as `GET /api/v1/auth/me` (and a login answer's `user`) describe them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Me {
    /// User id.
    pub user_id: String,
    /// Username.
    pub username: String,
    /// Org id.
    pub org_id: String,
    /// Org name.
    pub org_name: String,
    /// Effective scopes.
    pub scopes: Vec<String>,
    /// `session` or `token`.
    pub auth_method: String,
    /// Session or token id.
    pub credential_id: String,
    /// Whether TOTP is on.
    pub totp_enabled: bool,
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config_path = config::config_path(cli.config.as_deref(), |k| std::env::var_os(k))?;
    let server = cli.server.as_deref().map(normalize_server).transpose()?;
    let ca_file = cli
        .ca_file
        .as_deref()
        .map(|p| {
            std::fs::canonicalize(p).with_context(|| format!("cannot read CA file {}", p.display()))
        })
        .transpose()?;
    let ctx = Ctx {
        format: cli.output,
        config_path,
        server,
        ca_file,
        insecure: cli.insecure,
    };
    match cli.command {
        Command::Login(args) => auth::login(&ctx, &args).await,
        Command::Logout => auth::logout(&ctx).await,
        Command::Whoami => auth::whoami(&ctx).await,
        Command::Totp(cmd) => auth::totp(&ctx, cmd).await,
        Command::Password { username } => auth::password(&ctx, username.as_deref()).await,
        Command::Token(cmd) => tokens::run(&ctx, cmd).await,
        Command::Users(cmd) => users::run(&ctx, cmd).await,
        Command::Groups(cmd) => groups::run(&ctx, cmd).await,
        Command::Sso(cmd) => sso::run(&ctx, cmd).await,
        Command::Org(cmd) => orgs::run_org(&ctx, cmd).await,
        Command::Orgs(cmd) => orgs::run_orgs(&ctx, cmd).await,
        Command::Policy(cmd) => policy::run(&ctx, cmd).await,
        Command::Intent(cmd) => changes::intents(&ctx, cmd).await,
        Command::Plan(cmd) => changes::plans(&ctx, cmd).await,
        Command::AgentRelease(cmd) => changes::releases(&ctx, cmd).await,
        Command::Buckets(cmd) => storage::buckets(&ctx, cmd).await,
        Command::Bindings(cmd) => storage::bindings(&ctx, cmd).await,
        Command::StorageTokens(cmd) => storage::tokens(&ctx, cmd).await,
        Command::Kv(cmd) => kv::run(&ctx, cmd).await,
        Command::Static(cmd) => static_site::run(&ctx, cmd).await,
        Command::Get(cmd) => fleet::get(&ctx, cmd).await,
        Command::Nodes(cmd) => fleet::nodes(&ctx, cmd).await,
        Command::Tasks(cmd) => fleet::tasks(&ctx, cmd).await,
        Command::Audit(cmd) => fleet::audit(&ctx, cmd).await,
        Command::Proxy { node, port, listen } => fleet::proxy(&ctx, &node, port, &listen).await,
    }
}

/// Percent-encode one path segment (ids come from the user).
pub fn segment(text: &str) -> anyhow::Result<String> {
    if matches!(text, "" | "." | "..") {
        bail!("invalid id {text:?}");
    }
    Ok(encode_component(text))
}

/// Percent-encode everything but RFC 3986's unreserved characters (for a path
/// segment or a query value).
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `/`-separated name (a KV key, a file in a static site) as URL path segments:
/// each segment percent-encoded, the separators kept. `what` names it in errors.
/// `.` and `..` segments are refused (URLs resolve them, even percent-encoded), and
/// so are empty segments unless `allow_empty_segments`.
pub fn slash_path(text: &str, what: &str, allow_empty_segments: bool) -> anyhow::Result<String> {
    if text.is_empty() {
        bail!("empty {what}");
    }
    let mut out = Vec::new();
    for part in text.split('/') {
        if matches!(part, "." | "..") {
            bail!("invalid {what} {text:?}: \".\" and \"..\" segments cannot be sent in a URL");
        }
        if part.is_empty() && !allow_empty_segments {
            bail!("invalid {what} {text:?}: empty path segment");
        }
        out.push(encode_component(part));
    }
    Ok(out.join("/"))
}

/// Whether an error is the server's answer with this HTTP status.
pub fn is_status(err: &anyhow::Error, status: u16) -> bool {
    err.downcast_ref::<ApiError>()
        .is_some_and(|e| e.status == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(
            segment("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").unwrap(),
            "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(segment("../x y").unwrap(), "..%2Fx%20y");
        assert!(segment("..").is_err());
        assert!(segment("").is_err());
    }

    #[test]
    fn keys_keep_their_slashes() {
        assert_eq!(slash_path("a/b c", "key", true).unwrap(), "a/b%20c");
        assert_eq!(
            slash_path("dir/é?#%.txt", "key", true).unwrap(),
            "dir/%C3%A9%3F%23%25.txt"
        );
        assert_eq!(slash_path("a//b", "key", true).unwrap(), "a//b");
        assert!(slash_path("a//b", "path", false).is_err());
        assert!(slash_path("a/../b", "key", true).is_err());
        assert!(slash_path("./a", "key", true).is_err());
        assert!(slash_path("", "key", true).is_err());
        assert_eq!(encode_component("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn status_errors_are_recognised() {
        let api = ApiError {
            status: 412,
            code: "precondition_failed".into(),
            message: "x".into(),
            retry_after_s: None,
        };
        let err = anyhow::Error::from(api).context("while writing");
        assert!(is_status(&err, 412));
        assert!(!is_status(&err, 404));
        assert!(!is_status(&anyhow::anyhow!("plain"), 412));
    }

    #[test]
    fn me_tolerates_missing_fields() {
        let me: Me = parse(&serde_json::json!({"username": "admin", "scopes": ["*"]})).unwrap();
        assert_eq!(me.username, "admin");
        assert_eq!(me.scopes, ["*"]);
    }
}
