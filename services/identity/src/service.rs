//! The identity domain: logins, sessions, TOTP, tokens and users. Transport-free: the
//! gRPC adapter converts messages and errors, this module decides.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use lattice_core::audit::{AuditEvent, AuditSink, Outcome};
use lattice_core::auth::{AuthMethod, Principal, REVOCATION_CHANNEL};
use lattice_core::cache::Cache;
use lattice_core::config::IdentityConfig;
use lattice_core::crypto::{Sealer, hash_secret, random_secret};
use lattice_core::scope;
use lattice_core::time::now_ms;
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::password::Passwords;
use crate::store::{CredentialRow, NewSession, Store, TokenRow, UserRow};
use crate::totp;

/// Prefix of operator API tokens.
pub const TOKEN_PREFIX: &str = "lat_";
/// Prefix of session secrets.
pub const SESSION_PREFIX: &str = "lats_";
const MFA_TOKEN_TTL_S: u64 = 300;
/// Last-seen timestamps are written at most this often per credential.
const TOUCH_EVERY_MS: i64 = 60_000;

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

/// What a password check led to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in: the session secret for the cookie, once.
    Session {
        /// Cookie value.
        secret: String,
        /// The new session's principal.
        who: Authenticated,
    },
    /// TOTP is on: complete with this token and a code.
    MfaRequired {
        /// Signed, short-lived.
        mfa_token: String,
        /// When it stops working.
        expires_at_ms: i64,
    },
}

/// A token just created, with its secret (shown once).
#[derive(Debug)]
pub struct CreatedToken {
    /// Stored row.
    pub token: TokenRow,
    /// The secret.
    pub secret: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct MfaClaims {
    sub: String,
    purpose: String,
    exp: u64,
}

/// Where a request came from, for throttling and audit.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Address as seen by the gateway.
    pub ip: String,
    /// Browser or client.
    pub user_agent: String,
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
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

fn validate_username(raw: &str) -> Result<String> {
    let name = raw.trim().to_lowercase();
    if name.is_empty() || name.len() > 64 {
        return Err(IdentityError::invalid(
            "username",
            "must be 1 to 64 characters",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err(IdentityError::invalid(
            "username",
            "may contain only letters, digits and . _ @ -",
        ));
    }
    Ok(name)
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

/// An admin may act on another account only if that account's scopes are within the
/// admin's own: `users:admin` alone must not lead to the `*` account.
fn require_outranks(caller: &Principal, target: &UserRow) -> Result<()> {
    if scope::all_covered(&caller.scopes, &target.scopes) {
        Ok(())
    } else {
        Err(IdentityError::Forbidden(format!(
            "user {:?} has scopes beyond yours; only an administrator who holds them may do this",
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

    // One positional call per audited action reads better at the call sites than a builder.
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        org_id: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: Outcome,
        ip: &str,
        detail: serde_json::Value,
    ) {
        let event = AuditEvent {
            org_id: org_id.into(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            client_ip: ip.into(),
            detail: detail.to_string(),
        };
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "recording audit event failed");
        }
    }

    /// First start: when no user exists, create org `default` and user `admin` with
    /// scope `*`. Returns the password when it was generated here (to print once).
    pub async fn bootstrap(&self, password: Option<String>) -> Result<Option<BootstrapAdmin>> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let org_id = self.store.ensure_org("default").await?;
        let (password, generated) = match password {
            Some(p) => (p, false),
            None => (random_secret("").chars().take(24).collect(), true),
        };
        validate_password(&password)?;
        let hash = self.passwords.hash(password.clone()).await?;
        match self
            .store
            .insert_user(&org_id, "admin", &hash, &["*".to_owned()])
            .await
        {
            Ok(user) => {
                self.audit(
                    &org_id,
                    "service:bootstrap",
                    "user.create",
                    &user.id,
                    Outcome::Success,
                    "",
                    serde_json::json!({"username": "admin", "bootstrap": true}),
                )
                .await;
                Ok(Some(BootstrapAdmin {
                    username: "admin".into(),
                    password: generated.then_some(password),
                }))
            }
            // Another replica bootstrapped at the same moment.
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn check_ip_throttle(&self, ip: &str) -> Result<()> {
        if ip.is_empty() {
            return Ok(());
        }
        // Count the attempt before checking anything, so parallel attempts cannot all
        // slip under the limit; a successful one is given back (release_ip_attempt).
        let attempts = self
            .cache
            .incr(
                &format!("login-fail-ip:{ip}"),
                Duration::from_secs(self.cfg.ip_failure_window_s),
            )
            .await;
        if attempts > u64::from(self.cfg.ip_failure_limit) {
            return Err(IdentityError::Throttled {
                retry_after_s: self.cfg.ip_failure_window_s,
            });
        }
        Ok(())
    }

    async fn release_ip_attempt(&self, ip: &str) {
        if !ip.is_empty() {
            self.cache.decr(&format!("login-fail-ip:{ip}")).await;
        }
    }

    /// Count an attempt on `user` before checking the secret (atomically, so parallel
    /// attempts cannot all pass the lock check); refuse when locked or when attempts in
    /// flight already reached the threshold. Returns the attempt's number.
    async fn reserve_attempt(&self, user: &UserRow) -> Result<i64> {
        let locked = || IdentityError::Locked {
            retry_after_s: self.cfg.lockout_duration_s,
        };
        let Some(n) = self.store.reserve_attempt(&user.id, now_ms()).await? else {
            return Err(locked());
        };
        if n > i64::from(self.cfg.lockout_threshold) {
            let lock_ms = i64::try_from(self.cfg.lockout_duration_s * 1000).unwrap_or(i64::MAX / 2);
            self.store.lock_user(&user.id, now_ms() + lock_ms).await?;
            return Err(locked());
        }
        Ok(n)
    }

    fn lock_remaining_s(user: &UserRow) -> Option<u64> {
        let now = now_ms();
        (user.locked_until_ms > now)
            .then(|| u64::try_from((user.locked_until_ms - now + 999) / 1000).unwrap_or(1))
    }

    /// A failed password or code for a known user: count it, maybe lock, audit.
    async fn fail_login(
        &self,
        user: &UserRow,
        client: &ClientInfo,
        action: &str,
        attempt: i64,
    ) -> IdentityError {
        let lock_ms = i64::try_from(self.cfg.lockout_duration_s * 1000).unwrap_or(i64::MAX / 2);
        let lock = if attempt >= i64::from(self.cfg.lockout_threshold) {
            self.store
                .lock_user(&user.id, now_ms() + lock_ms)
                .await
                .map(Some)
        } else {
            Ok(None)
        };
        match lock {
            Ok(Some(())) => {
                self.audit(
                    &user.org_id,
                    &user.id,
                    "auth.lockout",
                    &user.id,
                    Outcome::Success,
                    &client.ip,
                    serde_json::json!({"duration_s": self.cfg.lockout_duration_s}),
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => return e.into(),
        }
        self.audit(
            &user.org_id,
            &user.id,
            action,
            &user.id,
            Outcome::Failure,
            &client.ip,
            serde_json::json!({}),
        )
        .await;
        if action == "auth.login" {
            IdentityError::InvalidCredentials
        } else {
            IdentityError::InvalidCode
        }
    }

    /// Step one of a login. Same error for unknown user and wrong password.
    pub async fn login(
        &self,
        caller: &Principal,
        username: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<LoginOutcome> {
        require_service(caller)?;
        self.check_ip_throttle(&client.ip).await?;
        let name = username.trim().to_lowercase();
        let user = if name.is_empty() || name.len() > 64 {
            None
        } else {
            self.store.user_by_username(&name).await?
        };
        if let Some(u) = &user
            && let Some(retry_after_s) = Self::lock_remaining_s(u)
        {
            self.audit(
                &u.org_id,
                &u.id,
                "auth.login",
                &u.id,
                Outcome::Failure,
                &client.ip,
                serde_json::json!({"reason": "locked"}),
            )
            .await;
            return Err(IdentityError::Locked { retry_after_s });
        }
        let attempt = match &user {
            Some(u) => self.reserve_attempt(u).await?,
            None => 0,
        };
        let ok = self
            .passwords
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let user = match user {
            Some(u) if ok => u,
            other => {
                return Err(match &other {
                    Some(u) => self.fail_login(u, client, "auth.login", attempt).await,
                    None => {
                        let shown: String = name.chars().take(64).collect();
                        self.audit(
                            "",
                            &shown,
                            "auth.login",
                            "",
                            Outcome::Failure,
                            &client.ip,
                            serde_json::json!({"reason": "unknown user"}),
                        )
                        .await;
                        IdentityError::InvalidCredentials
                    }
                });
            }
        };
        if user.totp_enabled {
            let exp = jsonwebtoken::get_current_timestamp() + MFA_TOKEN_TTL_S;
            let claims = MfaClaims {
                sub: user.id.clone(),
                purpose: "mfa".into(),
                exp,
            };
            let mfa_token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.mfa_encoding)
                    .expect("HS256 signing of a serialisable struct cannot fail");
            self.audit(
                &user.org_id,
                &user.id,
                "auth.login.password",
                &user.id,
                Outcome::Success,
                &client.ip,
                serde_json::json!({"mfa_required": true}),
            )
            .await;
            // The password was right: give the address its attempt back. The account's
            // counter stays up until the second factor succeeds.
            self.release_ip_attempt(&client.ip).await;
            return Ok(LoginOutcome::MfaRequired {
                mfa_token,
                expires_at_ms: i64::try_from(exp * 1000).unwrap_or(i64::MAX),
            });
        }
        self.start_session(&user, client, "password").await
    }

    /// Step two of a login with TOTP: a current code or a recovery code.
    pub async fn login_totp(
        &self,
        caller: &Principal,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
    ) -> Result<LoginOutcome> {
        require_service(caller)?;
        self.check_ip_throttle(&client.ip).await?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<MfaClaims>(mfa_token, &self.mfa_decoding, &validation)
            .map_err(|_| IdentityError::InvalidMfaToken)?
            .claims;
        if claims.purpose != "mfa" {
            return Err(IdentityError::InvalidMfaToken);
        }
        let user = self
            .store
            .user_any_org(&claims.sub)
            .await?
            .ok_or(IdentityError::InvalidMfaToken)?;
        if let Some(retry_after_s) = Self::lock_remaining_s(&user) {
            return Err(IdentityError::Locked { retry_after_s });
        }
        if !user.totp_enabled {
            return Err(IdentityError::InvalidMfaToken);
        }
        let attempt = self.reserve_attempt(&user).await?;
        if !self.check_code(&user, code).await? {
            return Err(self
                .fail_login(&user, client, "auth.login.totp", attempt)
                .await);
        }
        self.start_session(&user, client, "totp").await
    }

    /// Whether `code` is a valid, unused TOTP code or recovery code of `user`.
    async fn check_code(&self, user: &UserRow, code: &str) -> Result<bool> {
        let sealed = user
            .totp_sealed
            .as_deref()
            .ok_or(IdentityError::InvalidCode)?;
        let seed = self.sealer.open_sealed(sealed, &totp_aad(&user.id))?;
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or_default();
        if let Some(step) = totp::check(&seed, code, now_s) {
            return Ok(self
                .store
                .consume_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
                .await?);
        }
        let normalised = totp::normalise_recovery_code(code);
        if normalised.len() == 11 {
            return Ok(self
                .store
                .consume_recovery_code(&user.id, &hash_secret(&normalised))
                .await?);
        }
        Ok(false)
    }

    async fn start_session(
        &self,
        user: &UserRow,
        client: &ClientInfo,
        how: &str,
    ) -> Result<LoginOutcome> {
        self.store.clear_failures(&user.id).await?;
        self.release_ip_attempt(&client.ip).await;
        let secret = random_secret(SESSION_PREFIX);
        let id = uuid::Uuid::now_v7().to_string();
        let expires_at_ms =
            now_ms() + i64::try_from(self.cfg.session_max_age_s * 1000).unwrap_or(i64::MAX / 2);
        let ua: String = client.user_agent.chars().take(256).collect();
        self.store
            .insert_session(&NewSession {
                id: &id,
                secret_hash: &hash_secret(&secret),
                user,
                expires_at_ms,
                user_agent: &ua,
                client_ip: &client.ip,
            })
            .await?;
        self.audit(
            &user.org_id,
            &user.id,
            "auth.login",
            &id,
            Outcome::Success,
            &client.ip,
            serde_json::json!({"method": how}),
        )
        .await;
        let org_name = self.store.org_name(&user.org_id).await?;
        Ok(LoginOutcome::Session {
            secret,
            who: Authenticated {
                principal: Principal {
                    sub: user.id.clone(),
                    username: user.username.clone(),
                    org_id: user.org_id.clone(),
                    scopes: user.scopes.clone(),
                    auth: AuthMethod::Session,
                    credential_id: id,
                },
                org_name,
                totp_enabled: user.totp_enabled,
                expires_at_ms,
            },
        })
    }

    /// Resolve a session secret or bearer token.
    pub async fn authenticate(
        &self,
        caller: &Principal,
        credential: Credential<'_>,
    ) -> Result<Authenticated> {
        require_service(caller)?;
        let now = now_ms();
        let (row, method): (CredentialRow, AuthMethod) = match credential {
            Credential::Session(secret) => {
                if !secret.starts_with(SESSION_PREFIX) {
                    return Err(IdentityError::InvalidCredential);
                }
                let row = self
                    .store
                    .session_by_hash(&hash_secret(secret))
                    .await?
                    .ok_or(IdentityError::InvalidCredential)?;
                let idle_ms =
                    i64::try_from(self.cfg.session_idle_timeout_s * 1000).unwrap_or(i64::MAX / 2);
                if row.revoked || now >= row.expires_at_ms || now >= row.last_seen_at_ms + idle_ms {
                    return Err(IdentityError::InvalidCredential);
                }
                if now - row.last_seen_at_ms > TOUCH_EVERY_MS {
                    self.store.touch_session(&row.id, now).await?;
                }
                (row, AuthMethod::Session)
            }
            Credential::Token(secret) => {
                if !secret.starts_with(TOKEN_PREFIX) {
                    return Err(IdentityError::InvalidCredential);
                }
                let row = self
                    .store
                    .token_by_hash(&hash_secret(secret))
                    .await?
                    .ok_or(IdentityError::InvalidCredential)?;
                if row.revoked || (row.expires_at_ms != 0 && now >= row.expires_at_ms) {
                    return Err(IdentityError::InvalidCredential);
                }
                if now - row.last_seen_at_ms > TOUCH_EVERY_MS {
                    self.store.touch_token(&row.id, now).await?;
                }
                (row, AuthMethod::Token)
            }
        };
        // A token never carries more than its user currently has.
        let scopes = match method {
            AuthMethod::Token => row
                .token_scopes
                .iter()
                .filter(|s| scope::all_covered(&row.user_scopes, std::slice::from_ref(s)))
                .cloned()
                .collect(),
            _ => row.user_scopes.clone(),
        };
        Ok(Authenticated {
            principal: Principal {
                sub: row.user_id,
                username: row.username,
                org_id: row.org_id,
                scopes,
                auth: method,
                credential_id: row.id,
            },
            org_name: row.org_name,
            totp_enabled: row.totp_enabled,
            expires_at_ms: row.expires_at_ms,
        })
    }

    /// End the caller's credential: the session, or (for a bearer token) the token.
    pub async fn logout(&self, caller: &Principal, ip: &str) -> Result<()> {
        require_user(caller)?;
        match caller.auth {
            AuthMethod::Session => {
                self.store
                    .revoke_session(&caller.org_id, &caller.credential_id)
                    .await?;
            }
            AuthMethod::Token => {
                self.store
                    .revoke_token(&caller.org_id, &caller.credential_id, Some(&caller.sub))
                    .await?;
            }
            AuthMethod::Internal => {
                return Err(IdentityError::WrongCaller(
                    "services have nothing to log out",
                ));
            }
        }
        self.cache
            .publish(REVOCATION_CHANNEL, &caller.credential_id)
            .await;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "auth.logout",
            &caller.credential_id,
            Outcome::Success,
            ip,
            serde_json::json!({"method": caller.auth.as_str()}),
        )
        .await;
        Ok(())
    }

    /// The caller's current view of themselves.
    pub async fn whoami(&self, caller: &Principal) -> Result<Authenticated> {
        require_user(caller)?;
        let user = self
            .store
            .user(&caller.org_id, &caller.sub)
            .await?
            .ok_or(IdentityError::InvalidCredential)?;
        Ok(Authenticated {
            principal: caller.clone(),
            org_name: self.store.org_name(&caller.org_id).await?,
            totp_enabled: user.totp_enabled,
            expires_at_ms: 0,
        })
    }

    /// Start TOTP enrollment: a new seed, sealed, not yet required.
    pub async fn enroll_totp(&self, caller: &Principal) -> Result<(String, String)> {
        require_session(caller, "TOTP settings")?;
        let user = self
            .store
            .user(&caller.org_id, &caller.sub)
            .await?
            .ok_or(IdentityError::InvalidCredential)?;
        if user.totp_enabled {
            return Err(IdentityError::Conflict(
                "TOTP is already enabled; disable it first".into(),
            ));
        }
        let seed = totp::new_seed();
        let (secret, uri) = totp::provisioning(&seed, &self.cfg.mfa_issuer, &user.username)
            .ok_or_else(|| IdentityError::invalid("mfa_issuer", "cannot build an otpauth URI"))?;
        let sealed = self.sealer.seal(&seed, &totp_aad(&user.id));
        self.store
            .set_totp(&user.org_id, &user.id, Some(&sealed), false)
            .await?;
        Ok((secret, uri))
    }

    /// Finish enrollment with a current code; returns the recovery codes (once).
    pub async fn confirm_totp(
        &self,
        caller: &Principal,
        code: &str,
        ip: &str,
    ) -> Result<Vec<String>> {
        require_session(caller, "TOTP settings")?;
        let user = self
            .store
            .user(&caller.org_id, &caller.sub)
            .await?
            .ok_or(IdentityError::InvalidCredential)?;
        if user.totp_enabled {
            return Err(IdentityError::Conflict("TOTP is already enabled".into()));
        }
        let sealed = user.totp_sealed.as_deref().ok_or_else(|| {
            IdentityError::Conflict("no TOTP enrollment in progress; call enroll first".into())
        })?;
        let seed = self.sealer.open_sealed(sealed, &totp_aad(&user.id))?;
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or_default();
        let Some(step) = totp::check(&seed, code, now_s) else {
            return Err(IdentityError::InvalidCode);
        };
        self.store
            .set_totp(&user.org_id, &user.id, Some(sealed), true)
            .await?;
        self.store
            .consume_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
            .await?;
        let codes = totp::recovery_codes();
        let hashes: Vec<String> = codes.iter().map(|c| hash_secret(c)).collect();
        self.store.replace_recovery_codes(&user.id, &hashes).await?;
        self.cache
            .publish(REVOCATION_CHANNEL, &format!("user:{}", user.id))
            .await;
        self.audit(
            &user.org_id,
            &user.id,
            "auth.totp.enable",
            &user.id,
            Outcome::Success,
            ip,
            serde_json::json!({}),
        )
        .await;
        Ok(codes)
    }

    /// Turn TOTP off: the user with a current code, or an admin (`users:admin`) for
    /// another user of the org.
    pub async fn disable_totp(
        &self,
        caller: &Principal,
        code: &str,
        user_id: &str,
        ip: &str,
    ) -> Result<()> {
        require_user(caller)?;
        let target_id = if user_id.is_empty() {
            caller.sub.as_str()
        } else {
            user_id
        };
        let target = self
            .store
            .user(&caller.org_id, target_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {target_id:?}")))?;
        if target.id == caller.sub {
            require_session(caller, "TOTP settings")?;
            if target.totp_enabled && !self.check_code(&target, code).await? {
                return Err(IdentityError::InvalidCode);
            }
        } else {
            require_scope(caller, "users:admin")?;
            require_outranks(caller, &target)?;
        }
        self.store
            .set_totp(&target.org_id, &target.id, None, false)
            .await?;
        self.store.replace_recovery_codes(&target.id, &[]).await?;
        self.cache
            .publish(REVOCATION_CHANNEL, &format!("user:{}", target.id))
            .await;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "auth.totp.disable",
            &target.id,
            Outcome::Success,
            ip,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// Create an operator token whose scopes never exceed the caller's.
    pub async fn create_token(
        &self,
        caller: &Principal,
        name: &str,
        scopes: &[String],
        expires_in_s: i64,
        ip: &str,
    ) -> Result<CreatedToken> {
        require_scope(caller, "tokens:write")?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(IdentityError::invalid(
                "name",
                "must be 1 to 64 printable characters",
            ));
        }
        if scopes.is_empty() {
            return Err(IdentityError::invalid(
                "scopes",
                "must name at least one scope",
            ));
        }
        let scopes = validate_scopes(scopes)?;
        if !scope::all_covered(&caller.scopes, &scopes) {
            let over: Vec<&String> = scopes
                .iter()
                .filter(|s| !scope::all_covered(&caller.scopes, std::slice::from_ref(s)))
                .collect();
            return Err(IdentityError::Forbidden(format!(
                "a token's scopes cannot exceed its creator's: not allowed {over:?}"
            )));
        }
        const TEN_YEARS_S: i64 = 10 * 366 * 24 * 3600;
        if !(0..=TEN_YEARS_S).contains(&expires_in_s) {
            return Err(IdentityError::invalid(
                "expires_in_s",
                "must be between 0 (no expiry) and 10 years",
            ));
        }
        let now = now_ms();
        let expires_at_ms = if expires_in_s == 0 {
            0
        } else {
            now + expires_in_s * 1000
        };
        let id = uuid::Uuid::now_v7().to_string();
        let secret = random_secret(TOKEN_PREFIX);
        self.store
            .insert_token(
                &id,
                &hash_secret(&secret),
                &caller.org_id,
                &caller.sub,
                name,
                &scopes,
                now,
                expires_at_ms,
            )
            .await?;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "token.create",
            &id,
            Outcome::Success,
            ip,
            serde_json::json!({"name": name, "scopes": scopes}),
        )
        .await;
        Ok(CreatedToken {
            token: TokenRow {
                id,
                user_id: caller.sub.clone(),
                name: name.into(),
                scopes,
                created_at_ms: now,
                expires_at_ms,
                last_used_at_ms: 0,
            },
            secret,
        })
    }

    /// The caller's live tokens (every token of the org for `users:admin`).
    pub async fn list_tokens(&self, caller: &Principal) -> Result<Vec<TokenRow>> {
        require_user(caller)?;
        let only = (!caller.allows("users:admin")).then_some(caller.sub.as_str());
        Ok(self.store.list_tokens(&caller.org_id, only).await?)
    }

    /// Revoke one of the caller's own tokens (always allowed: shrinking one's own
    /// exposure needs no scope), or any token of the org with `users:admin`.
    pub async fn revoke_token(&self, caller: &Principal, id: &str, ip: &str) -> Result<()> {
        require_user(caller)?;
        let only = (!caller.allows("users:admin")).then_some(caller.sub.as_str());
        if !self.store.revoke_token(&caller.org_id, id, only).await? {
            return Err(IdentityError::NotFound(format!("token {id:?}")));
        }
        self.cache.publish(REVOCATION_CHANNEL, id).await;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "token.revoke",
            id,
            Outcome::Success,
            ip,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// Create a user in the caller's org (`users:admin`; scopes within the caller's).
    pub async fn create_user(
        &self,
        caller: &Principal,
        username: &str,
        password: String,
        scopes: &[String],
        ip: &str,
    ) -> Result<UserRow> {
        require_scope(caller, "users:admin")?;
        let username = validate_username(username)?;
        validate_password(&password)?;
        let scopes = validate_scopes(scopes)?;
        if !scope::all_covered(&caller.scopes, &scopes) {
            return Err(IdentityError::Forbidden(
                "a new user's scopes cannot exceed the creator's".into(),
            ));
        }
        let hash = self.passwords.hash(password).await?;
        let user = match self
            .store
            .insert_user(&caller.org_id, &username, &hash, &scopes)
            .await
        {
            Ok(u) => u,
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(IdentityError::AlreadyExists(format!("user {username:?}")));
            }
            Err(e) => return Err(e.into()),
        };
        self.audit(
            &caller.org_id,
            &caller.sub,
            "user.create",
            &user.id,
            Outcome::Success,
            ip,
            serde_json::json!({"username": username, "scopes": scopes}),
        )
        .await;
        Ok(user)
    }

    /// Users of the caller's org (`users:read`).
    pub async fn list_users(&self, caller: &Principal) -> Result<Vec<UserRow>> {
        require_scope(caller, "users:read")?;
        Ok(self.store.list_users(&caller.org_id).await?)
    }

    /// Change the caller's own password (password session + current password), or set
    /// another user's (`users:admin`). The user's other sessions end.
    pub async fn set_password(
        &self,
        caller: &Principal,
        user_id: &str,
        current: String,
        new: String,
        client: &ClientInfo,
    ) -> Result<()> {
        require_user(caller)?;
        // Changing one's own password proves the current one; the admin route (a user
        // id, even one's own) needs users:admin instead.
        let own = user_id.is_empty();
        let target_id = if own { caller.sub.as_str() } else { user_id };
        if own {
            require_session(caller, "your password")?;
            self.check_ip_throttle(&client.ip).await?;
        } else {
            require_scope(caller, "users:admin")?;
            if user_id == caller.sub {
                return Err(IdentityError::Conflict(
                    "change your own password with POST /api/v1/auth/password (it needs the current one)".into(),
                ));
            }
        }
        validate_password(&new)?;
        let user = self
            .store
            .user(&caller.org_id, target_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {target_id:?}")))?;
        if !own {
            require_outranks(caller, &user)?;
        }
        if own {
            if let Some(retry_after_s) = Self::lock_remaining_s(&user) {
                return Err(IdentityError::Locked { retry_after_s });
            }
            let attempt = self.reserve_attempt(&user).await?;
            if !self
                .passwords
                .verify(current, Some(user.password_hash.clone()))
                .await?
            {
                self.fail_login(&user, client, "auth.password.change", attempt)
                    .await;
                return Err(IdentityError::invalid("current_password", "does not match"));
            }
        }
        let hash = self.passwords.hash(new).await?;
        self.store
            .set_password_hash(&user.org_id, &user.id, &hash)
            .await?;
        let keep = if own {
            caller.credential_id.as_str()
        } else {
            ""
        };
        self.store
            .revoke_sessions_of(&user.org_id, &user.id, keep)
            .await?;
        if own {
            self.store.clear_failures(&user.id).await?;
            self.release_ip_attempt(&client.ip).await;
        }
        self.cache
            .publish(REVOCATION_CHANNEL, &format!("user:{}", user.id))
            .await;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "auth.password.change",
            &user.id,
            Outcome::Success,
            &client.ip,
            serde_json::json!({"by_admin": !own}),
        )
        .await;
        Ok(())
    }

    /// Lift a lockout (`users:admin`).
    pub async fn unlock_user(
        &self,
        caller: &Principal,
        user_id: &str,
        ip: &str,
    ) -> Result<UserRow> {
        require_scope(caller, "users:admin")?;
        let user = self
            .store
            .user(&caller.org_id, user_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {user_id:?}")))?;
        self.store.clear_failures(&user.id).await?;
        self.audit(
            &caller.org_id,
            &caller.sub,
            "user.unlock",
            &user.id,
            Outcome::Success,
            ip,
            serde_json::json!({}),
        )
        .await;
        Ok(UserRow {
            failed_logins: 0,
            locked_until_ms: 0,
            ..user
        })
    }
}

/// The bootstrap admin, for the one-time start-up message.
#[derive(Debug)]
pub struct BootstrapAdmin {
    /// Always `admin`.
    pub username: String,
    /// The generated password (None when it came from configuration).
    pub password: Option<String>,
}

/// A credential presented to the gateway.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// `lattice_session` cookie value.
    Session(&'a str),
    /// `Authorization: Bearer` value.
    Token(&'a str),
}

fn totp_aad(user_id: &str) -> String {
    format!("identity.users.totp:{user_id}")
}
