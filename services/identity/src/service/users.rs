//! Users of an org: created by an admin, listed, their passwords changed (by
//! themselves or an admin), lockouts lifted.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::scope;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::credential_revoked::Subject;

use super::{
    ClientInfo, Identity, Result, require_home, require_outranks, require_scope, require_session,
    require_user, validate_password, validate_scopes,
};
use crate::error::IdentityError;
use crate::input::Username;
use crate::store::UserRow;

fn validate_username(raw: &str) -> Result<String> {
    Ok(Username::parse(raw)?.as_str().to_owned())
}

impl Identity {
    /// Create a user in the caller's org (`users:admin`; scopes within the caller's).
    pub async fn create_user(
        &self,
        ctx: &RequestContext,
        username: &str,
        password: String,
        scopes: &[String],
    ) -> Result<UserRow> {
        let caller = &ctx.principal;
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
            Actor::of(ctx),
            "user.create",
            &user.id,
            Outcome::Success,
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
        ctx: &RequestContext,
        user_id: &str,
        current: String,
        new: String,
    ) -> Result<()> {
        let caller = &ctx.principal;
        let client = &ClientInfo {
            ip: ctx.client_ip.clone(),
            user_agent: String::new(),
        };
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
        self.store.set_password_hash(&user.id, &hash).await?;
        let keep = if own {
            caller.credential_id.as_str()
        } else {
            ""
        };
        self.store.revoke_sessions_of(&user.id, keep).await?;
        if own {
            self.store.clear_failures(&user.id).await?;
            self.release_ip_attempt(&client.ip).await;
        }
        self.announce_revoked(Subject::UserId(user.id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            "auth.password.change",
            &user.id,
            Outcome::Success,
            serde_json::json!({"by_admin": !own}),
        )
        .await;
        Ok(())
    }

    /// Disable an account or enable it again (`users:admin` of its home org,
    /// outranking it; not yourself). Disabling ends its sessions in every org; its
    /// tokens stop working until it is enabled.
    pub async fn set_user_disabled(
        &self,
        ctx: &RequestContext,
        user_id: &str,
        disabled: bool,
    ) -> Result<UserRow> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        if user_id == caller.sub {
            return Err(IdentityError::Conflict(
                "you cannot disable or enable yourself".into(),
            ));
        }
        let user = self
            .store
            .user(&caller.org_id, user_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {user_id:?}")))?;
        require_outranks(caller, &user)?;
        let at = if disabled { now_ms() } else { 0 };
        self.store.set_disabled(&user.id, at).await?;
        if disabled {
            self.store.revoke_sessions_of(&user.id, "").await?;
        }
        self.announce_revoked(Subject::UserId(user.id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            if disabled {
                "user.disable"
            } else {
                "user.enable"
            },
            &user.id,
            Outcome::Success,
            serde_json::json!({"username": user.username}),
        )
        .await;
        Ok(UserRow {
            disabled_at_ms: at,
            ..user
        })
    }

    /// Lift a lockout (`users:admin`).
    pub async fn unlock_user(&self, ctx: &RequestContext, user_id: &str) -> Result<UserRow> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        let user = self
            .store
            .user(&caller.org_id, user_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {user_id:?}")))?;
        require_home(caller, &user)?;
        self.store.clear_failures(&user.id).await?;
        self.audit(
            Actor::of(ctx),
            "user.unlock",
            &user.id,
            Outcome::Success,
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
