//! Operator API tokens: created within the creator's scopes, listed, revoked.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::scope;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::credential_revoked::Subject;

use super::{Identity, Result, TOKEN_PREFIX, require_scope, require_user, validate_scopes};
use crate::error::IdentityError;
use crate::store::TokenRow;

/// A token just created, with its secret (shown once).
#[derive(Debug)]
pub struct CreatedToken {
    /// Stored row.
    pub token: TokenRow,
    /// The secret.
    pub secret: String,
}

impl Identity {
    /// Create an operator token whose scopes never exceed the caller's. With `org`
    /// (another org the caller belongs to) the token acts there, and the caller's
    /// scopes in that org bound it (they must include `tokens:write` too).
    pub async fn create_token(
        &self,
        ctx: &RequestContext,
        name: &str,
        scopes: &[String],
        expires_in_s: i64,
        org: &str,
    ) -> Result<CreatedToken> {
        let caller = &ctx.principal;
        require_scope(caller, "tokens:write")?;
        // The org the token acts in, and what the caller holds there.
        let (org_id, granted) = if org.is_empty() {
            (caller.org_id.clone(), caller.scopes.clone())
        } else {
            let member = self.membership_in(org, &caller.sub).await?;
            if !scope::allows(&member.scopes, "tokens:write") {
                return Err(IdentityError::MissingScope(format!(
                    "tokens:write (in org {org:?})"
                )));
            }
            (member.org_id, member.scopes)
        };
        let caller_scopes = &granted;
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
        if !scope::all_covered(caller_scopes, &scopes) {
            let over: Vec<&String> = scopes
                .iter()
                .filter(|s| !scope::all_covered(caller_scopes, std::slice::from_ref(s)))
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
        let token = TokenRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: caller.sub.clone(),
            name: name.into(),
            scopes,
            created_at_ms: now,
            expires_at_ms,
            last_used_at_ms: 0,
        };
        let limit = self
            .store
            .org_by_id(&org_id)
            .await?
            .map(|o| o.limits)
            .unwrap_or_default();
        if limit.max_tokens > 0 && self.store.count_tokens(&org_id).await? >= limit.max_tokens {
            return Err(IdentityError::LimitExceeded(format!(
                "the org's limit max_tokens ({}) is reached: revoke a token, or ask a platform admin to raise the limit",
                limit.max_tokens
            )));
        }
        let secret = random_secret(TOKEN_PREFIX);
        self.store
            .insert_token(&org_id, &hash_secret(&secret), &token)
            .await?;
        self.audit(
            Actor::in_org(ctx, &org_id),
            "token.create",
            &token.id,
            Outcome::Success,
            serde_json::json!({"name": name, "scopes": token.scopes}),
        )
        .await;
        Ok(CreatedToken { token, secret })
    }

    /// The caller's live tokens (every token of the org for `users:admin`).
    pub async fn list_tokens(&self, caller: &Principal) -> Result<Vec<TokenRow>> {
        require_user(caller)?;
        let only = (!caller.allows("users:admin")).then_some(caller.sub.as_str());
        Ok(self.store.list_tokens(&caller.org_id, only).await?)
    }

    /// Revoke one of the caller's own tokens (always allowed: shrinking one's own
    /// exposure needs no scope), or any token of the org with `users:admin`.
    pub async fn revoke_token(&self, ctx: &RequestContext, id: &str) -> Result<()> {
        let caller = &ctx.principal;
        require_user(caller)?;
        let only = (!caller.allows("users:admin")).then_some(caller.sub.as_str());
        if !self.store.revoke_token(&caller.org_id, id, only).await? {
            return Err(IdentityError::NotFound(format!("token {id:?}")));
        }
        self.announce_revoked(Subject::CredentialId(id.to_owned()))
            .await;
        self.audit(
            Actor::of(ctx),
            "token.revoke",
            id,
            Outcome::Success,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }
}
