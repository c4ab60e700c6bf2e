//! Two-step login: the password, then (when TOTP is on) a code; with the
//! throttling per address and the lockout per account that every password or code
//! check goes through.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header, Validation};
use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::Principal;
use lattice_core::time::now_ms;
use serde::{Deserialize, Serialize};

use super::{Authenticated, ClientInfo, Identity, Result, require_service};
use crate::error::IdentityError;
use crate::store::UserRow;

const MFA_TOKEN_TTL_S: u64 = 300;

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

#[derive(Debug, Serialize, Deserialize)]
struct MfaClaims {
    sub: String,
    purpose: String,
    exp: u64,
    /// The org the login continues in (absent: the home org).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    org: String,
}

impl Identity {
    pub(super) async fn check_ip_throttle(&self, ip: &str) -> Result<()> {
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

    pub(super) async fn release_ip_attempt(&self, ip: &str) {
        if !ip.is_empty() {
            self.cache.decr(&format!("login-fail-ip:{ip}")).await;
        }
    }

    /// Count an attempt on `user` before checking the secret (atomically, so parallel
    /// attempts cannot all pass the lock check); refuse when locked or when attempts in
    /// flight already reached the threshold. Returns the attempt's number.
    pub(super) async fn reserve_attempt(&self, user: &UserRow) -> Result<i64> {
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

    pub(super) fn lock_remaining_s(user: &UserRow) -> Option<u64> {
        let now = now_ms();
        (user.locked_until_ms > now)
            .then(|| u64::try_from((user.locked_until_ms - now + 999) / 1000).unwrap_or(1))
    }

    /// A failed password or code for a known user: count it, maybe lock, audit.
    pub(super) async fn fail_login(
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
                    client.actor(user),
                    "auth.lockout",
                    &user.id,
                    Outcome::Success,
                    serde_json::json!({"duration_s": self.cfg.lockout_duration_s}),
                )
                .await;
            }
            Ok(None) => {}
            Err(e) => return e.into(),
        }
        self.audit(
            client.actor(user),
            action,
            &user.id,
            Outcome::Failure,
            serde_json::json!({}),
        )
        .await;
        if action == "auth.login" {
            IdentityError::InvalidCredentials
        } else {
            IdentityError::InvalidCode
        }
    }

    /// The TOTP step of a login whose first factor `user` passed.
    pub(super) fn mfa_step(&self, user: &UserRow) -> LoginOutcome {
        let exp = jsonwebtoken::get_current_timestamp() + MFA_TOKEN_TTL_S;
        let claims = MfaClaims {
            sub: user.id.clone(),
            purpose: "mfa".into(),
            exp,
            org: if user.org_id == user.home_org_id {
                String::new()
            } else {
                user.org_id.clone()
            },
        };
        let mfa_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.mfa_encoding)
                .expect("HS256 signing of a serialisable struct cannot fail");
        LoginOutcome::MfaRequired {
            mfa_token,
            expires_at_ms: i64::try_from(exp * 1000).unwrap_or(i64::MAX),
        }
    }

    /// Step one of a login, in the user's home org or in `org` (a name; the user
    /// must be a member there). Same error for unknown user and wrong password.
    pub async fn login(
        &self,
        caller: &Principal,
        username: &str,
        password: String,
        org: &str,
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
                client.actor(u),
                "auth.login",
                &u.id,
                Outcome::Failure,
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
                        // The attempted name is the actor (no username is
                        // "(empty)": it is not a valid one).
                        let shown: String = if name.is_empty() {
                            "(empty)".into()
                        } else {
                            name.chars().take(64).collect()
                        };
                        self.audit(
                            Actor {
                                org_id: "",
                                id: &shown,
                                client_ip: &client.ip,
                            },
                            "auth.login",
                            "",
                            Outcome::Failure,
                            serde_json::json!({"reason": "unknown user"}),
                        )
                        .await;
                        IdentityError::InvalidCredentials
                    }
                });
            }
        };
        // The password was right: only now may the answer say that the account is
        // disabled, or whether the user belongs to the org asked for.
        if user.disabled_at_ms != 0 {
            self.audit(
                client.actor(&user),
                "auth.login",
                &user.id,
                Outcome::Failure,
                serde_json::json!({"reason": "disabled"}),
            )
            .await;
            self.store.clear_failures(&user.id).await?;
            self.release_ip_attempt(&client.ip).await;
            return Err(IdentityError::Disabled);
        }
        let user = if org.is_empty() {
            user
        } else {
            match self.membership_in(org, &user.id).await {
                Ok(member) => member,
                Err(e) => {
                    self.store.clear_failures(&user.id).await?;
                    self.release_ip_attempt(&client.ip).await;
                    return Err(e);
                }
            }
        };
        if user.totp_enabled {
            let step = self.mfa_step(&user);
            self.audit(
                client.actor(&user),
                "auth.login.password",
                &user.id,
                Outcome::Success,
                serde_json::json!({"mfa_required": true}),
            )
            .await;
            // The password was right: give the address its attempt back. The account's
            // counter stays up until the second factor succeeds.
            self.release_ip_attempt(&client.ip).await;
            return Ok(step);
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
        let user = if claims.org.is_empty() {
            self.store.user_any_org(&claims.sub).await?
        } else {
            self.store.user(&claims.org, &claims.sub).await?
        }
        .ok_or(IdentityError::InvalidMfaToken)?;
        if let Some(retry_after_s) = Self::lock_remaining_s(&user) {
            return Err(IdentityError::Locked { retry_after_s });
        }
        if !user.totp_enabled {
            return Err(IdentityError::InvalidMfaToken);
        }
        if user.disabled_at_ms != 0 {
            return Err(IdentityError::Disabled);
        }
        let attempt = self.reserve_attempt(&user).await?;
        if !self.check_code(&user, code).await? {
            return Err(self
                .fail_login(&user, client, "auth.login.totp", attempt)
                .await);
        }
        self.start_session(&user, client, "totp").await
    }
}
