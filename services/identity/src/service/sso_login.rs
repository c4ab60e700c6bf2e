//! Logging in through a single sign-on provider: the authorization code flow with
//! PKCE (S256), `state` and `nonce`, RFC 9207 `iss` checked when present, the ID
//! token verified against the provider's keys (rediscovered once when a token
//! names a key not seen yet, so key rotation needs no restart).
//!
//! Binding (seed `000_9210514a9a131af6.txt`): the first successful login binds the
//! provider's `(issuer, sub)` to the pre-created local user whose username is the
//! verified username claim (the email by default); later logins match on
//! `(issuer, sub)` only. Lattice still issues its own session, and still asks for
//! local TOTP when the user has it on.

use std::time::{Duration, Instant};

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::Principal;
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::time::now_ms;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse as _,
};
use sqlx::Row as _;

use super::login::LoginOutcome;
use super::{ClientInfo, Identity, Result, require_service};
use crate::error::IdentityError;

/// How long a login may take at the provider.
const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;

/// How long a provider's discovery document and keys are kept.
const METADATA_TTL: Duration = Duration::from_secs(600);

/// A login started: where to send the browser, and the state its cookie carries.
#[derive(Debug, Clone)]
pub struct SsoStart {
    /// The provider's authorization URL.
    pub authorize_url: String,
    /// The `state` (also the browser's `lattice_sso_state` cookie).
    pub state: String,
}

/// How a login through a provider ends.
#[derive(Debug)]
pub enum SsoDone {
    /// In the browser: the session (or the TOTP step), and where to go next.
    Browser(LoginOutcome, String),
    /// For the CLI: send the browser to its loopback listener with this URL (a
    /// one-time code the CLI exchanges with its PKCE verifier).
    Cli(String),
}

/// base64url (no padding) of SHA-256 of `verifier`: a PKCE S256 challenge.
fn s256(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// The provider's sealed configuration.
struct Configured {
    issuer: String,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
    username_claim: String,
    require_verified_email: bool,
    id: String,
    /// Create users on first login, with these scopes and groups.
    create_users: bool,
    new_user_scopes: Vec<String>,
    new_user_groups: Vec<String>,
}

fn refused(why: &str) -> IdentityError {
    IdentityError::Forbidden(format!("single sign-on refused: {why}"))
}

fn return_to_ok(r: &str) -> bool {
    r.is_empty()
        || (r.starts_with('/')
            && !r.starts_with("//")
            && !r.starts_with("/\\")
            && r.len() <= 1024
            && !r.chars().any(char::is_control))
}

impl Identity {
    async fn configured(&self, org_id: &str, name: &str) -> Result<Configured> {
        let row = sqlx::query(
            "SELECT id, issuer, client_id, client_secret_sealed, scopes, username_claim, require_verified_email, \
             create_users, new_user_scopes, new_user_groups \
             FROM identity_sso_providers WHERE org_id = $1 AND name = $2",
        )
        .bind(org_id)
        .bind(name)
        .fetch_optional(self.store.db().pool())
        .await?
        .ok_or_else(|| IdentityError::NotFound(format!("sso provider {name:?}")))?;
        let sealed: String = row.try_get("client_secret_sealed")?;
        let secret = self.sealer.open_text(
            &sealed,
            &format!("identity.sso_providers.client_secret:{org_id}/{name}"),
        )?;
        let scopes: String = row.try_get("scopes")?;
        Ok(Configured {
            id: row.try_get("id")?,
            issuer: row.try_get("issuer")?,
            client_id: row.try_get("client_id")?,
            client_secret: secret.to_string(),
            scopes: serde_json::from_str(&scopes).unwrap_or_default(),
            username_claim: row.try_get("username_claim")?,
            require_verified_email: row.try_get::<i64, _>("require_verified_email")? != 0,
            create_users: row.try_get::<i64, _>("create_users")? != 0,
            new_user_scopes: serde_json::from_str(&row.try_get::<String, _>("new_user_scopes")?)
                .unwrap_or_default(),
            new_user_groups: serde_json::from_str(&row.try_get::<String, _>("new_user_groups")?)
                .unwrap_or_default(),
        })
    }

    /// A provider that creates users made `username` log in for the first time:
    /// the account, in the provider's org, with the provider's scopes and groups and
    /// no usable password (it logs in through the provider). Err: why not.
    async fn create_sso_user(
        &self,
        org_id: &str,
        username: &str,
        c: &Configured,
        client: &ClientInfo,
        provider: &str,
    ) -> std::result::Result<crate::store::UserRow, String> {
        let name = crate::input::Username::parse(username)
            .map_err(|e| format!("{username:?} cannot be a username ({e})"))?;
        // A password nobody knows: the account logs in through the provider.
        let unusable = random_secret("");
        let hash = self
            .passwords
            .hash(unusable)
            .await
            .map_err(|e| format!("hashing: {e}"))?;
        let groups: Vec<&str> = c.new_user_groups.iter().map(String::as_str).collect();
        let user = match self
            .store
            .insert_user_in_groups(org_id, name.as_str(), &hash, &c.new_user_scopes, &groups)
            .await
        {
            Ok(u) => u,
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(format!(
                    "{username:?} is the username of an account in another org"
                ));
            }
            Err(e) => return Err(format!("creating the user: {e}")),
        };
        self.audit(
            client.actor(&user),
            "user.create",
            &user.id,
            Outcome::Success,
            serde_json::json!({"username": user.username, "scopes": user.scopes,
                "groups": c.new_user_groups, "via": "sso", "provider": provider}),
        )
        .await;
        Ok(user)
    }

    /// The provider's discovery document and keys: cached, or fetched (`fresh`:
    /// always fetched).
    async fn metadata(&self, c: &Configured, fresh: bool) -> Result<CoreProviderMetadata> {
        if !fresh
            && let Some((at, m)) = self.sso_metadata.lock().expect("metadata lock").get(&c.id)
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let m = super::sso::discover(self.http()?, &c.issuer)
            .await
            .map_err(|why| {
                IdentityError::Unprocessable(format!("the provider's discovery failed: {why}"))
            })?;
        self.sso_metadata
            .lock()
            .expect("metadata lock")
            .insert(c.id.clone(), (Instant::now(), m.clone()));
        Ok(m)
    }

    /// The providers a sign-in page offers for org `org` (gateway only, for anyone):
    /// (name, display name), nothing else. An org that does not exist has none, so
    /// the answer does not tell which orgs exist.
    pub async fn sso_sign_in_providers(
        &self,
        caller: &Principal,
        org: &str,
    ) -> Result<Vec<(String, String)>> {
        require_service(caller)?;
        let name = if org.is_empty() { "default" } else { org };
        crate::input::OrgName::parse("org", name)?;
        let Some(org_id) = self.store.org_by_name(name).await? else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT name, display_name FROM identity_sso_providers WHERE org_id = $1 ORDER BY name",
        )
        .bind(&org_id)
        .fetch_all(self.store.db().pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("display_name")?)))
            .collect()
    }

    /// Start a login with provider `name` of org `org` (gateway only): the URL to
    /// send the browser to.
    pub async fn sso_start(
        &self,
        caller: &Principal,
        org: &str,
        name: &str,
        redirect_url: &str,
        return_to: &str,
        cli: Option<(u16, &str)>,
    ) -> Result<SsoStart> {
        require_service(caller)?;
        if let Some((port, challenge)) = cli {
            if port < 1024 {
                return Err(IdentityError::invalid(
                    "cli_port",
                    "a port from 1024 on, on 127.0.0.1",
                ));
            }
            let ok = challenge.len() == 43
                && challenge
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(IdentityError::invalid(
                    "cli_challenge",
                    "a PKCE S256 challenge (43 characters of base64url)",
                ));
            }
        }
        if !return_to_ok(return_to) {
            return Err(IdentityError::invalid(
                "return_to",
                "a path on this site, such as /ui/nodes",
            ));
        }
        let org_id = self
            .store
            .org_by_name(if org.is_empty() { "default" } else { org })
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("org {org:?}")))?;
        let c = self.configured(&org_id, name).await?;
        let metadata = self.metadata(&c, false).await?;
        let redirect = RedirectUrl::new(redirect_url.to_owned())
            .map_err(|e| IdentityError::invalid("redirect_url", e.to_string()))?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(c.client_id.clone()),
            Some(ClientSecret::new(c.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                || CsrfToken::new(random_secret("")),
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &c.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO identity_sso_logins (state_hash, org_id, provider, nonce, pkce_verifier_sealed, return_to, created_at_ms, expires_at_ms, cli_port, cli_challenge) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(hash_secret(state.secret()))
        .bind(&org_id)
        .bind(name)
        .bind(nonce.secret())
        .bind(self.sealer.seal_text(verifier.secret(), "identity.sso_logins.pkce"))
        .bind(return_to)
        .bind(now)
        .bind(now + LOGIN_TTL_MS)
        .bind(i64::from(cli.map_or(0, |c| c.0)))
        .bind(cli.map_or("", |c| c.1))
        .execute(self.store.db().pool())
        .await?;
        // Forget logins never finished.
        let _ = sqlx::query("DELETE FROM identity_sso_logins WHERE expires_at_ms < $1")
            .bind(now)
            .execute(self.store.db().pool())
            .await;
        Ok(SsoStart {
            authorize_url: url.to_string(),
            state: state.secret().clone(),
        })
    }

    /// Finish a login at the callback (gateway only): `cookie_state` is the
    /// browser's state cookie, `state`, `code` and `iss` the provider's answer.
    /// The session (or the TOTP step), and where to go next.
    #[allow(clippy::too_many_arguments)]
    pub async fn sso_callback(
        &self,
        caller: &Principal,
        name: &str,
        cookie_state: &str,
        state: &str,
        code: &str,
        iss: &str,
        redirect_url: &str,
        client: &ClientInfo,
    ) -> Result<SsoDone> {
        require_service(caller)?;
        let fail = |org: String, why: String| async move {
            self.audit(
                Actor {
                    org_id: &org,
                    id: "anonymous",
                    client_ip: &client.ip,
                },
                "auth.sso.login",
                name,
                Outcome::Failure,
                serde_json::json!({"reason": why}),
            )
            .await;
            refused(&why)
        };
        if state.is_empty()
            || cookie_state.is_empty()
            || !bool::from(subtle::ConstantTimeEq::ct_eq(
                state.as_bytes(),
                cookie_state.as_bytes(),
            ))
        {
            return Err(fail(
                String::new(),
                "the state does not match this browser's login".into(),
            )
            .await);
        }
        // Single use: taken out, whatever happens next.
        let row = sqlx::query(
            "DELETE FROM identity_sso_logins WHERE state_hash = $1 RETURNING org_id, provider, nonce, pkce_verifier_sealed, return_to, expires_at_ms, cli_port, cli_challenge",
        )
        .bind(hash_secret(state))
        .fetch_optional(self.store.db().pool())
        .await?;
        let Some(row) = row else {
            return Err(fail(
                String::new(),
                "unknown or already used login (start again)".into(),
            )
            .await);
        };
        let org_id: String = row.try_get("org_id")?;
        let provider: String = row.try_get("provider")?;
        if provider != name {
            return Err(fail(
                org_id.clone(),
                "the login was started with another provider".into(),
            )
            .await);
        }
        if row.try_get::<i64, _>("expires_at_ms")? < now_ms() {
            return Err(fail(
                org_id.clone(),
                "the login took too long (start again)".into(),
            )
            .await);
        }
        let nonce = Nonce::new(row.try_get("nonce")?);
        let sealed: String = row.try_get("pkce_verifier_sealed")?;
        let verifier = PkceCodeVerifier::new(
            self.sealer
                .open_text(&sealed, "identity.sso_logins.pkce")?
                .to_string(),
        );
        let return_to: String = row.try_get("return_to")?;
        let cli_port: i64 = row.try_get("cli_port")?;
        let cli_challenge: String = row.try_get("cli_challenge")?;
        let c = self.configured(&org_id, name).await?;
        if !iss.is_empty() && iss != c.issuer {
            return Err(fail(
                org_id.clone(),
                format!(
                    "the answer came from {iss:?}, not {:?} (RFC 9207)",
                    c.issuer
                ),
            )
            .await);
        }
        if code.is_empty() {
            return Err(fail(org_id.clone(), "no authorization code".into()).await);
        }
        let metadata = self.metadata(&c, false).await?;
        let redirect = RedirectUrl::new(redirect_url.to_owned())
            .map_err(|e| IdentityError::invalid("redirect_url", e.to_string()))?;
        let oidc = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(c.client_id.clone()),
            Some(ClientSecret::new(c.client_secret.clone())),
        )
        .set_redirect_uri(redirect.clone());
        let http = self.http()?.clone();
        let fetch = |req| super::sso::send(http.clone(), req);
        let token = match oidc.exchange_code(AuthorizationCode::new(code.to_owned())) {
            Ok(req) => req.set_pkce_verifier(verifier).request_async(&fetch).await,
            Err(e) => {
                return Err(fail(
                    org_id.clone(),
                    format!("the provider has no token endpoint: {e}"),
                )
                .await);
            }
        };
        let token = match token {
            Ok(t) => t,
            Err(e) => return Err(fail(org_id.clone(), format!("the code was refused: {e}")).await),
        };
        let Some(id_token) = token.id_token() else {
            return Err(fail(org_id.clone(), "no ID token in the answer".into()).await);
        };
        let claims: CoreIdTokenClaims = match id_token.claims(&oidc.id_token_verifier(), &nonce) {
            Ok(c) => c.clone(),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // A key not seen yet: the provider may have rotated. Look again, once.
                let fresh = self.metadata(&c, true).await?;
                let again = CoreClient::from_provider_metadata(
                    fresh,
                    ClientId::new(c.client_id.clone()),
                    Some(ClientSecret::new(c.client_secret.clone())),
                )
                .set_redirect_uri(redirect);
                match id_token.claims(&again.id_token_verifier(), &nonce) {
                    Ok(c) => c.clone(),
                    Err(e) => {
                        return Err(fail(
                            org_id.clone(),
                            format!("the ID token does not verify: {e}"),
                        )
                        .await);
                    }
                }
            }
            Err(e) => {
                return Err(
                    fail(org_id.clone(), format!("the ID token does not verify: {e}")).await,
                );
            }
        };
        let subject = claims.subject().as_str().to_owned();
        let issuer = claims.issuer().as_str().to_owned();
        // Later logins: by (issuer, sub) only.
        let bound: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM identity_sso_identities WHERE issuer = $1 AND subject = $2 AND org_id = $3",
        )
        .bind(&issuer)
        .bind(&subject)
        .bind(&org_id)
        .fetch_optional(self.store.db().pool())
        .await?;
        let user = match bound {
            Some((user_id,)) => self
                .store
                .user(&org_id, &user_id)
                .await?
                .ok_or_else(|| refused("the bound user no longer exists"))?,
            None => {
                if c.require_verified_email && claims.email_verified() != Some(true) {
                    return Err(fail(
                        org_id.clone(),
                        "the provider does not say the email is verified".into(),
                    )
                    .await);
                }
                let wanted = match c.username_claim.as_str() {
                    "email" => claims.email().map(|e| e.as_str().to_owned()),
                    "preferred_username" => {
                        claims.preferred_username().map(|u| u.as_str().to_owned())
                    }
                    "sub" => Some(subject.clone()),
                    _ => None,
                };
                let Some(wanted) = wanted.map(|w| w.to_lowercase()) else {
                    return Err(fail(
                        org_id.clone(),
                        format!("the ID token has no {} claim", c.username_claim),
                    )
                    .await);
                };
                // A member of the provider's org (its home or an org it joined).
                let user = match self.store.member_by_username(&org_id, &wanted).await? {
                    Some(u) => u,
                    None if c.create_users => {
                        match self
                            .create_sso_user(&org_id, &wanted, &c, client, name)
                            .await
                        {
                            Ok(u) => u,
                            Err(why) => return Err(fail(org_id.clone(), why).await),
                        }
                    }
                    None => {
                        return Err(fail(
                            org_id.clone(),
                            format!("no user {wanted:?} here: an admin creates it first"),
                        )
                        .await);
                    }
                };
                if user.disabled_at_ms != 0 {
                    return Err(fail(
                        org_id.clone(),
                        format!("user {:?} is disabled", user.username),
                    )
                    .await);
                }
                let inserted = sqlx::query(
                    "INSERT INTO identity_sso_identities (issuer, subject, user_id, org_id, provider, bound_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&issuer)
                .bind(&subject)
                .bind(&user.id)
                .bind(&org_id)
                .bind(name)
                .bind(now_ms())
                .execute(self.store.db().pool())
                .await;
                if let Err(e) = inserted {
                    if lattice_core::db::Db::is_unique_violation(&e) {
                        return Err(fail(
                            org_id.clone(),
                            "this provider identity was bound at the same time: log in again"
                                .into(),
                        )
                        .await);
                    }
                    return Err(e.into());
                }
                self.audit(
                    client.actor(&user),
                    "auth.sso.bind",
                    &user.id,
                    Outcome::Success,
                    serde_json::json!({"provider": name, "issuer": issuer, "subject": subject}),
                )
                .await;
                user
            }
        };
        if user.disabled_at_ms != 0 {
            return Err(fail(
                org_id.clone(),
                format!("user {:?} is disabled", user.username),
            )
            .await);
        }
        if let Some(retry_after_s) = Self::lock_remaining_s(&user) {
            return Err(IdentityError::Locked { retry_after_s });
        }
        self.audit(
            client.actor(&user),
            "auth.sso.login",
            &user.id,
            Outcome::Success,
            serde_json::json!({"provider": name, "mfa_required": user.totp_enabled,
                "cli": cli_port != 0}),
        )
        .await;
        if cli_port != 0 {
            // The CLI exchanges this code with its PKCE verifier (and TOTP, when on).
            let code = random_secret("");
            sqlx::query(
                "INSERT INTO identity_sso_cli_codes (code_hash, user_id, org_id, challenge, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(hash_secret(&code))
            .bind(&user.id)
            .bind(&org_id)
            .bind(&cli_challenge)
            .bind(now_ms() + 120_000)
            .execute(self.store.db().pool())
            .await?;
            return Ok(SsoDone::Cli(format!(
                "http://127.0.0.1:{cli_port}/callback?code={code}"
            )));
        }
        let outcome = if user.totp_enabled {
            self.mfa_step(&user)
        } else {
            self.start_session(&user, client, "sso").await?
        };
        Ok(SsoDone::Browser(outcome, return_to))
    }

    /// The CLI's exchange of its one-time code and PKCE verifier (gateway only): a
    /// session (or the TOTP step), as after a password.
    pub async fn sso_cli_exchange(
        &self,
        caller: &Principal,
        code: &str,
        verifier: &str,
        client: &ClientInfo,
    ) -> Result<LoginOutcome> {
        require_service(caller)?;
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "DELETE FROM identity_sso_cli_codes WHERE code_hash = $1 RETURNING user_id, org_id, challenge, expires_at_ms",
        )
        .bind(hash_secret(code))
        .fetch_optional(self.store.db().pool())
        .await?;
        let Some((user_id, org_id, challenge, expires)) = row else {
            return Err(refused("unknown or already used code (log in again)"));
        };
        if expires < now_ms() {
            return Err(refused("the code expired (log in again)"));
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            s256(verifier).as_bytes(),
            challenge.as_bytes(),
        )) {
            self.audit(
                Actor {
                    org_id: &org_id,
                    id: &user_id,
                    client_ip: &client.ip,
                },
                "auth.sso.login",
                &user_id,
                Outcome::Failure,
                serde_json::json!({"reason": "the CLI's PKCE verifier does not match"}),
            )
            .await;
            return Err(refused(
                "the PKCE verifier does not match the login's challenge",
            ));
        }
        let user = self
            .store
            .user(&org_id, &user_id)
            .await?
            .ok_or_else(|| refused("the user no longer exists"))?;
        if user.totp_enabled {
            return Ok(self.mfa_step(&user));
        }
        self.start_session(&user, client, "sso").await
    }
}
