//! The identity domain: logins, sessions, TOTP, tokens and users. Transport-free: the
//! gRPC adapter converts messages and errors, this module decides.
//!
//! Split by area: `bootstrap` (the first admin), `login` (two-step login,
//! throttling and lockout), `sessions` (starting, resolving and ending
//! credentials), `mfa` (TOTP enrollment and codes), `tokens`, `users`, `groups`. This file
//! holds the service, the types its areas share and the caller checks.

mod bootstrap;
mod groups;
mod login;
mod mfa;
mod orgs;
mod sessions;
pub mod sso;
pub mod sso_login;
mod tokens;
mod users;

use std::sync::Arc;

use jsonwebtoken::{DecodingKey, EncodingKey};
use lattice_core::audit::{Actor, AuditSink, Outcome};
use lattice_core::auth::{AuthMethod, Principal};
use lattice_core::cache::Cache;
use lattice_core::config::IdentityConfig;
use lattice_core::crypto::Sealer;
use lattice_core::scope;

pub use self::bootstrap::BootstrapAdmin;
pub use self::groups::GroupDetail;
pub use self::login::LoginOutcome;
pub use self::orgs::{CreatedInvitation, INVITATION_PREFIX, MyMembership};
pub use self::sessions::Credential;
pub use self::tokens::CreatedToken;
use crate::error::IdentityError;
use crate::password::Passwords;
use crate::store::{Store, UserRow};

/// Prefix of operator API tokens.
pub const TOKEN_PREFIX: &str = "lat_";
/// Prefix of session secrets.
pub const SESSION_PREFIX: &str = "lats_";

type Result<T> = std::result::Result<T, IdentityError>;

/// A verified caller with the details `whoami` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who.
    pub principal: Principal,
    /// Org name.
    pub org_name: String,
    /// Whether TOTP is on for the user.
    pub totp_enabled: bool,
    /// Absolute expiry of the credential (0 = none).
    pub expires_at_ms: i64,
}

/// Where a request came from, for throttling and audit.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Address as seen by the gateway.
    pub ip: String,
    /// Browser or client.
    pub user_agent: String,
}

impl ClientInfo {
    /// `user`, acting from this client, as an audit actor.
    fn actor<'a>(&'a self, user: &'a UserRow) -> Actor<'a> {
        Actor {
            org_id: &user.org_id,
            id: &user.id,
            client_ip: &self.ip,
        }
    }
}

/// The identity service.
#[derive(Clone)]
pub struct Identity {
    store: Store,
    sealer: Sealer,
    cache: Cache,
    passwords: Passwords,
    cfg: IdentityConfig,
    mfa_encoding: EncodingKey,
    mfa_decoding: DecodingKey,
    audit: Arc<dyn AuditSink>,
    /// Talks to single sign-on providers (no redirects followed); made on first
    /// use (the process installs the TLS crypto provider at start).
    http: std::sync::OnceLock<reqwest::Client>,
    /// Providers' discovery documents and keys, by provider id, with when fetched.
    sso_metadata: Arc<
        std::sync::Mutex<
            std::collections::HashMap<
                String,
                (
                    std::time::Instant,
                    openidconnect::core::CoreProviderMetadata,
                ),
            >,
        >,
    >,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn validate_password(password: &str) -> Result<()> {
    let n = password.chars().count();
    if !(12..=1024).contains(&n) {
        return Err(IdentityError::invalid(
            "password",
            "must be 12 to 1024 characters",
        ));
    }
    Ok(())
}

fn validate_scopes(scopes: &[String]) -> Result<Vec<String>> {
    scope::validate(scopes).map_err(|e| IdentityError::invalid("scopes", e.to_string()))
}

fn require_user(p: &Principal) -> Result<()> {
    if p.is_service() {
        return Err(IdentityError::WrongCaller(
            "this call needs an end-user principal",
        ));
    }
    Ok(())
}

fn require_scope(p: &Principal, scope: &str) -> Result<()> {
    require_user(p)?;
    if p.allows(scope) {
        Ok(())
    } else {
        Err(IdentityError::MissingScope(scope.into()))
    }
}

/// Second-factor settings change only from an interactive session: a leaked API
/// token must not be able to put an attacker's authenticator on the account.
fn require_session(p: &Principal, what: &str) -> Result<()> {
    require_user(p)?;
    if p.auth == AuthMethod::Session {
        Ok(())
    } else {
        Err(IdentityError::Forbidden(format!(
            "{what} can be changed only from a password login session, not with an API token"
        )))
    }
}

/// An admin may act on another account only if the account belongs to the admin's
/// org (a member from another org is administered there) and its scopes are within
/// the admin's own: `users:admin` alone must not lead to the `*` account.
fn require_outranks(caller: &Principal, target: &UserRow) -> Result<()> {
    require_home(caller, target)?;
    if scope::all_covered(&caller.scopes, &target.scopes) {
        Ok(())
    } else {
        Err(IdentityError::Forbidden(format!(
            "user {:?} has scopes beyond yours; only an administrator who holds them may do this",
            target.username
        )))
    }
}

/// Account settings (password, TOTP, lockout) are administered by the account's
/// home org only: an admin of an org the user was invited into may not touch them.
fn require_home(caller: &Principal, target: &UserRow) -> Result<()> {
    if target.home_org_id == caller.org_id {
        Ok(())
    } else {
        Err(IdentityError::Forbidden(format!(
            "user {:?} belongs to another org, which administers the account",
            target.username
        )))
    }
}

fn require_service(p: &Principal) -> Result<()> {
    if p.is_service() {
        Ok(())
    } else {
        Err(IdentityError::WrongCaller(
            "only internal services may call this",
        ))
    }
}

impl Identity {
    /// Tell every gateway (through the bus) to forget the revoked credential(s).
    async fn announce_revoked(
        &self,
        subject: lattice_proto::events::v1::credential_revoked::Subject,
    ) {
        self.cache
            .announce(&lattice_proto::events::v1::CredentialRevoked {
                subject: Some(subject),
            })
            .await;
    }

    /// Build the service over a migrated store.
    pub fn new(
        store: Store,
        sealer: Sealer,
        cache: Cache,
        cfg: IdentityConfig,
        mfa_secret: &[u8],
        audit: Arc<dyn AuditSink>,
    ) -> Result<Self> {
        let passwords = Passwords::new(
            cfg.argon2_memory_kib,
            cfg.argon2_iterations,
            cfg.argon2_parallelism,
            cfg.argon2_max_concurrent,
        )?;
        Ok(Self {
            store,
            sealer,
            cache,
            passwords,
            cfg,
            mfa_encoding: EncodingKey::from_secret(mfa_secret),
            mfa_decoding: DecodingKey::from_secret(mfa_secret),
            audit,
            http: std::sync::OnceLock::new(),
            sso_metadata: Arc::default(),
        })
    }

    /// The configuration in effect.
    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// The store (readiness checks, tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Record that `actor` did `action` to `target`, with `outcome`.
    async fn audit(
        &self,
        actor: Actor<'_>,
        action: &str,
        target: &str,
        outcome: Outcome,
        detail: serde_json::Value,
    ) {
        let event = actor.event(action, target, outcome, &detail);
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "recording audit event failed");
        }
    }
}
