//! TOTP as a second factor: enrollment (a sealed seed, confirmed with a code, which
//! yields the recovery codes), turning it off, and checking a code or recovery code.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::hash_secret;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::credential_revoked::Subject;

use super::{Identity, Result, require_outranks, require_scope, require_session, require_user};
use crate::error::IdentityError;
use crate::store::UserRow;
use crate::totp;

/// How recent a TOTP completion counts as fresh.
pub const FRESH_MFA_MS: i64 = 5 * 60 * 1000;

impl Identity {
    /// Whether `code` is a valid, unused TOTP code or recovery code of `user`.
    pub(super) async fn check_code(&self, user: &UserRow, code: &str) -> Result<bool> {
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

    /// Whether the caller completed TOTP within the last [`FRESH_MFA_MS`] (a
    /// session that logged in with TOTP, or stepped up since), or does now with
    /// `code`: what approving a reviewed change asks. A user without TOTP is
    /// always fresh; an API token never is without a code. A correct code makes a
    /// session fresh again; a wrong one is audited and refused.
    pub async fn fresh_mfa(&self, ctx: &RequestContext, code: &str) -> Result<(bool, bool)> {
        let caller = &ctx.principal;
        require_user(caller)?;
        let user = self
            .store
            .user(&caller.org_id, &caller.sub)
            .await?
            .ok_or_else(|| IdentityError::NotFound("user".into()))?;
        if !user.totp_enabled {
            return Ok((true, false));
        }
        let now = now_ms();
        if !code.trim().is_empty() {
            if !self.check_code(&user, code.trim()).await? {
                self.audit(
                    Actor::of(ctx),
                    "auth.mfa.step_up",
                    &user.id,
                    Outcome::Failure,
                    serde_json::json!({"reason": "wrong or reused code"}),
                )
                .await;
                return Err(IdentityError::InvalidCode);
            }
            if caller.auth == lattice_core::auth::AuthMethod::Session {
                self.store
                    .set_session_mfa_at(&caller.credential_id, now)
                    .await?;
            }
            self.audit(
                Actor::of(ctx),
                "auth.mfa.step_up",
                &user.id,
                Outcome::Success,
                serde_json::json!({}),
            )
            .await;
            return Ok((true, true));
        }
        let fresh = caller.auth == lattice_core::auth::AuthMethod::Session
            && self
                .store
                .session_mfa_at(&user.id, &caller.credential_id)
                .await?
                .is_some_and(|at| at > 0 && now - at <= FRESH_MFA_MS);
        Ok((fresh, true))
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
        self.store.set_totp(&user.id, Some(&sealed), false).await?;
        Ok((secret, uri))
    }

    /// Finish enrollment with a current code; returns the recovery codes (once).
    pub async fn confirm_totp(&self, ctx: &RequestContext, code: &str) -> Result<Vec<String>> {
        let caller = &ctx.principal;
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
        self.store.set_totp(&user.id, Some(sealed), true).await?;
        self.store
            .consume_totp_step(&user.id, i64::try_from(step).unwrap_or(i64::MAX))
            .await?;
        let codes = totp::recovery_codes();
        let hashes: Vec<String> = codes.iter().map(|c| hash_secret(c)).collect();
        self.store.replace_recovery_codes(&user.id, &hashes).await?;
        self.announce_revoked(Subject::UserId(user.id.clone()))
            .await;
        self.audit(
            Actor {
                org_id: &user.org_id,
                id: &user.id,
                client_ip: &ctx.client_ip,
            },
            "auth.totp.enable",
            &user.id,
            Outcome::Success,
            serde_json::json!({}),
        )
        .await;
        Ok(codes)
    }

    /// Turn TOTP off: the user with a current code, or an admin (`users:admin`) for
    /// another user of the org.
    pub async fn disable_totp(
        &self,
        ctx: &RequestContext,
        code: &str,
        user_id: &str,
    ) -> Result<()> {
        let caller = &ctx.principal;
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
        self.store.set_totp(&target.id, None, false).await?;
        self.store.replace_recovery_codes(&target.id, &[]).await?;
        self.announce_revoked(Subject::UserId(target.id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            "auth.totp.disable",
            &target.id,
            Outcome::Success,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }
}

fn totp_aad(user_id: &str) -> String {
    format!("identity.users.totp:{user_id}")
}
