//! Sessions and credentials: a session started by a login, a session secret or
//! bearer token resolved to its principal, logout, and `whoami`.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{AuthMethod, Principal, RequestContext};
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::scope;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::credential_revoked::Subject;

use super::{
    Authenticated, ClientInfo, Identity, LoginOutcome, Result, SESSION_PREFIX, TOKEN_PREFIX,
    require_service, require_user,
};
use crate::error::IdentityError;
use crate::store::{CredentialRow, NewSession, UserRow};

/// Last-seen timestamps are written at most this often per credential.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A credential presented to the gateway.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// `lattice_session` cookie value.
    Session(&'a str),
    /// `Authorization: Bearer` value.
    Token(&'a str),
}

impl Identity {
    pub(super) async fn start_session(
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
                mfa_at_ms: if how == "totp" { now_ms() } else { 0 },
            })
            .await?;
        self.audit(
            client.actor(user),
            "auth.login",
            &id,
            Outcome::Success,
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
    pub async fn logout(&self, ctx: &RequestContext) -> Result<()> {
        let caller = &ctx.principal;
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
        self.announce_revoked(Subject::CredentialId(caller.credential_id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            "auth.logout",
            &caller.credential_id,
            Outcome::Success,
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
}
