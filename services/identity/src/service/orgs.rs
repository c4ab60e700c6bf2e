//! Organisations: the platform admin's create/list/rename/limit/delete (scope
//! `orgs:admin`, which `*` does not include), memberships with scopes per org,
//! invitations by one-time code, and which orgs a caller belongs to.
//!
//! Deleting an org is two steps around the other services: `begin_delete_org`
//! stops every credential in it at once; the gateway then has each service drop the
//! org's data; `finish_delete_org` removes identity's part in one transaction. A
//! deletion cut short leaves an org that is `deleting` (unusable) and resumes when
//! asked again, never half an org that still works.

use std::collections::BTreeMap;

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::scope;
use lattice_core::time::now_ms;
use lattice_proto::events::v1::credential_revoked::Subject;

use super::{Identity, Result, require_scope, require_user, validate_scopes};
use crate::error::IdentityError;
use crate::input::{OrgName, Username};
use crate::store::{CreateOrgError, InvitationRow, Limits, MembershipRow, OrgRow, UserRow};

/// Prefix of invitation codes.
pub const INVITATION_PREFIX: &str = "lati_";
/// Default and longest lifetime of an invitation.
const INVITATION_DEFAULT_S: i64 = 7 * 86_400;
const INVITATION_MAX_S: i64 = 30 * 86_400;

/// A membership of the caller's, marked when it is the org the caller acts in.
#[derive(Debug, Clone)]
pub struct MyMembership {
    /// The membership.
    pub membership: MembershipRow,
    /// Whether the calling credential acts in it.
    pub current: bool,
}

/// A new invitation with its one-time code.
#[derive(Debug)]
pub struct CreatedInvitation {
    /// Id.
    pub id: String,
    /// The code (shown once).
    pub code: String,
    /// Expiry.
    pub expires_at_ms: i64,
}

fn check_limits(l: Limits) -> Result<Limits> {
    for (field, v) in [
        ("limits.max_buckets", l.max_buckets),
        ("limits.max_stored_bytes", l.max_stored_bytes),
        ("limits.max_nodes", l.max_nodes),
        ("limits.max_tokens", l.max_tokens),
    ] {
        if v < 0 {
            return Err(IdentityError::invalid(
                field,
                "must be 0 (no limit) or more",
            ));
        }
    }
    Ok(l)
}

impl Identity {
    async fn org_named(&self, name: &str) -> Result<OrgRow> {
        let name = OrgName::parse("name", name)?;
        self.store
            .org(name.as_str())
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("org {:?}", name.as_str())))
    }

    /// The org a membership-scoped request names, for `user_id`: the org and the
    /// user as a member there. Not a member, or the org is being deleted: refused
    /// with the same words (whether an org exists is not for non-members to learn).
    pub(super) async fn membership_in(&self, org: &str, user_id: &str) -> Result<UserRow> {
        let name = OrgName::parse("org", org)?;
        let not_member =
            || IdentityError::Forbidden(format!("you are not a member of org {:?}", name.as_str()));
        let org = self
            .store
            .org(name.as_str())
            .await?
            .filter(|o| o.deleting_at_ms == 0)
            .ok_or_else(not_member)?;
        self.store
            .user(&org.id, user_id)
            .await?
            .ok_or_else(not_member)
    }

    /// Create an org (`orgs:admin`); `admin` (default: the caller) becomes a member
    /// with `*` in its `admins` group.
    pub async fn create_org(
        &self,
        ctx: &RequestContext,
        name: &str,
        admin: &str,
        limits: Limits,
    ) -> Result<OrgRow> {
        let caller = &ctx.principal;
        require_scope(caller, "orgs:admin")?;
        let name = OrgName::parse("name", name)?;
        let limits = check_limits(limits)?;
        let admin_id = if admin.is_empty() {
            caller.sub.clone()
        } else {
            let username = Username::parse(admin)?;
            self.store
                .user_by_username(username.as_str())
                .await?
                .ok_or_else(|| IdentityError::NotFound(format!("user {:?}", username.as_str())))?
                .id
        };
        let id = match self
            .store
            .create_org(name.as_str(), &admin_id, limits)
            .await
        {
            Ok(id) => id,
            Err(CreateOrgError::NameTaken) => {
                return Err(IdentityError::AlreadyExists(format!(
                    "org {:?}",
                    name.as_str()
                )));
            }
            Err(CreateOrgError::Db(e)) => return Err(e.into()),
        };
        self.audit(
            Actor::of(ctx),
            "org.create",
            &id,
            Outcome::Success,
            serde_json::json!({"name": name.as_str(), "admin": admin_id}),
        )
        .await;
        self.store
            .org_by_id(&id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("org {:?}", name.as_str())))
    }

    /// Every org (`orgs:admin`).
    pub async fn list_orgs(&self, caller: &Principal) -> Result<Vec<OrgRow>> {
        require_scope(caller, "orgs:admin")?;
        Ok(self.store.orgs().await?)
    }

    /// One org (`orgs:admin`).
    pub async fn get_org(&self, caller: &Principal, name: &str) -> Result<OrgRow> {
        require_scope(caller, "orgs:admin")?;
        self.org_named(name).await
    }

    /// Rename an org and/or set its limits (`orgs:admin`).
    pub async fn update_org(
        &self,
        ctx: &RequestContext,
        name: &str,
        new_name: &str,
        limits: Option<Limits>,
    ) -> Result<OrgRow> {
        let caller = &ctx.principal;
        require_scope(caller, "orgs:admin")?;
        let org = self.org_named(name).await?;
        if org.deleting_at_ms != 0 {
            return Err(IdentityError::Conflict(format!(
                "org {:?} is being deleted",
                org.name
            )));
        }
        let limits = limits.map(check_limits).transpose()?;
        if !new_name.is_empty() && new_name != org.name {
            let new = OrgName::parse("new_name", new_name)?;
            if !self.store.rename_org(&org.id, new.as_str()).await? {
                return Err(IdentityError::AlreadyExists(format!(
                    "org {:?}",
                    new.as_str()
                )));
            }
        }
        if let Some(l) = limits {
            self.store.set_limits(&org.id, l).await?;
        }
        self.audit(
            Actor::of(ctx),
            "org.update",
            &org.id,
            Outcome::Success,
            serde_json::json!({"name": org.name, "new_name": new_name, "limits": limits.map(|l| [l.max_buckets, l.max_stored_bytes, l.max_nodes, l.max_tokens])}),
        )
        .await;
        self.store
            .org_by_id(&org.id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("org {name:?}")))
    }

    /// What an org holds in identity (`orgs:admin`).
    pub async fn org_usage(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<(OrgRow, BTreeMap<String, i64>)> {
        require_scope(caller, "orgs:admin")?;
        let org = self.org_named(name).await?;
        let usage = self.store.org_usage(&org.id).await?;
        Ok((org, usage))
    }

    /// Deleting, step one (`orgs:admin`): no credential works in the org from now
    /// on. The org the caller acts in cannot be deleted.
    pub async fn begin_delete_org(&self, ctx: &RequestContext, name: &str) -> Result<OrgRow> {
        let caller = &ctx.principal;
        require_scope(caller, "orgs:admin")?;
        let org = self.org_named(name).await?;
        if org.id == caller.org_id {
            return Err(IdentityError::Conflict(format!(
                "org {:?} is the one you are acting in; act from another org to delete it",
                org.name
            )));
        }
        self.store.begin_delete_org(&org.id).await?;
        // Gateways drop what they cached of these users' credentials.
        for user in self.store.list_users(&org.id).await? {
            self.announce_revoked(Subject::UserId(user.id)).await;
        }
        self.audit(
            Actor::of(ctx),
            "org.delete.begin",
            &org.id,
            Outcome::Success,
            serde_json::json!({"name": org.name}),
        )
        .await;
        self.org_named(name).await
    }

    /// Deleting, the last step (`orgs:admin`), after `begin_delete_org` and once
    /// every service has let go of the org.
    pub async fn finish_delete_org(
        &self,
        ctx: &RequestContext,
        name: &str,
    ) -> Result<BTreeMap<String, i64>> {
        let caller = &ctx.principal;
        require_scope(caller, "orgs:admin")?;
        let org = self.org_named(name).await?;
        if org.deleting_at_ms == 0 {
            return Err(IdentityError::Conflict(format!(
                "org {:?}: begin its deletion first",
                org.name
            )));
        }
        let removed = self.store.delete_org(&org.id).await?;
        self.audit(
            Actor::of(ctx),
            "org.delete",
            &org.id,
            Outcome::Success,
            serde_json::json!({"name": org.name, "removed": removed}),
        )
        .await;
        Ok(removed)
    }

    /// An org's limits: for internal services, or a user of that org.
    pub async fn org_limits(&self, caller: &Principal, org_id: &str) -> Result<Limits> {
        if !caller.is_service() && caller.org_id != org_id {
            return Err(IdentityError::NotFound(format!("org {org_id:?}")));
        }
        Ok(self
            .store
            .org_by_id(org_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("org {org_id:?}")))?
            .limits)
    }

    /// The orgs the caller belongs to.
    pub async fn my_orgs(&self, caller: &Principal) -> Result<Vec<MyMembership>> {
        require_user(caller)?;
        Ok(self
            .store
            .memberships_of(&caller.sub)
            .await?
            .into_iter()
            .map(|m| MyMembership {
                current: m.org_id == caller.org_id,
                membership: m,
            })
            .collect())
    }

    /// Invite an existing user into the caller's org (`users:admin`, scopes within
    /// the caller's).
    pub async fn create_invitation(
        &self,
        ctx: &RequestContext,
        username: &str,
        scopes: &[String],
        expires_in_s: i64,
    ) -> Result<CreatedInvitation> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        let username = Username::parse(username)?;
        if scopes.is_empty() {
            return Err(IdentityError::invalid(
                "scopes",
                "must name at least one scope",
            ));
        }
        let scopes = validate_scopes(scopes)?;
        if !scope::all_covered(&caller.scopes, &scopes) {
            return Err(IdentityError::Forbidden(
                "an invitation's scopes cannot exceed the inviter's".into(),
            ));
        }
        let ttl = match expires_in_s {
            0 => INVITATION_DEFAULT_S,
            s if (1..=INVITATION_MAX_S).contains(&s) => s,
            _ => {
                return Err(IdentityError::invalid(
                    "expires_in_s",
                    "must be between 1 s and 30 days (0: 7 days)",
                ));
            }
        };
        let user = self
            .store
            .user_by_username(username.as_str())
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {:?}", username.as_str())))?;
        if self.store.user(&caller.org_id, &user.id).await?.is_some() {
            return Err(IdentityError::Conflict(format!(
                "user {:?} is already a member of this org",
                username.as_str()
            )));
        }
        let code = random_secret(INVITATION_PREFIX);
        let inv = InvitationRow {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: caller.org_id.clone(),
            user_id: user.id.clone(),
            scopes,
            expires_at_ms: now_ms() + ttl * 1000,
        };
        self.store
            .insert_invitation(&inv, &hash_secret(&code), &caller.sub)
            .await?;
        self.audit(
            Actor::of(ctx),
            "org.invite",
            &user.id,
            Outcome::Success,
            serde_json::json!({"invitation": inv.id, "username": username.as_str(), "scopes": inv.scopes}),
        )
        .await;
        Ok(CreatedInvitation {
            id: inv.id,
            code,
            expires_at_ms: inv.expires_at_ms,
        })
    }

    /// The invited user accepts (from a credential in any org).
    pub async fn accept_invitation(
        &self,
        ctx: &RequestContext,
        code: &str,
    ) -> Result<MembershipRow> {
        let caller = &ctx.principal;
        require_user(caller)?;
        let gone = || {
            IdentityError::NotFound(
                "invitation (the code is unknown, used, expired, or for another user)".into(),
            )
        };
        if !code.starts_with(INVITATION_PREFIX) || code.len() > 128 {
            return Err(gone());
        }
        let inv = self
            .store
            .accept_invitation(&hash_secret(code), &caller.sub)
            .await?
            .ok_or_else(gone)?;
        self.audit(
            Actor::in_org(ctx, &inv.org_id),
            "org.join",
            &caller.sub,
            Outcome::Success,
            serde_json::json!({"invitation": inv.id, "scopes": inv.scopes}),
        )
        .await;
        Ok(MembershipRow {
            org_name: self.store.org_name(&inv.org_id).await?,
            org_id: inv.org_id,
            scopes: inv.scopes,
            home: false,
        })
    }

    /// A member of the caller's org whose scopes the caller may manage: not the
    /// caller, and holding nothing the caller lacks.
    async fn managed_member(&self, caller: &Principal, user_id: &str) -> Result<UserRow> {
        require_scope(caller, "users:admin")?;
        let user = self
            .store
            .user(&caller.org_id, user_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {user_id:?}")))?;
        if user.id == caller.sub {
            return Err(IdentityError::Conflict(
                "you cannot change your own membership; ask another administrator".into(),
            ));
        }
        if !scope::all_covered(&caller.scopes, &user.scopes) {
            return Err(IdentityError::Forbidden(format!(
                "user {:?} has scopes beyond yours here; only an administrator who holds them may do this",
                user.username
            )));
        }
        Ok(user)
    }

    /// Set a member's scopes in the caller's org (`users:admin`, within the caller's).
    pub async fn set_member_scopes(
        &self,
        ctx: &RequestContext,
        user_id: &str,
        scopes: &[String],
    ) -> Result<UserRow> {
        let caller = &ctx.principal;
        let user = self.managed_member(caller, user_id).await?;
        let scopes = validate_scopes(scopes)?;
        if !scope::all_covered(&caller.scopes, &scopes) {
            return Err(IdentityError::Forbidden(
                "a member's scopes cannot exceed yours".into(),
            ));
        }
        self.store
            .set_member_scopes(&caller.org_id, &user.id, &scopes)
            .await?;
        self.announce_revoked(Subject::UserId(user.id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            "member.scopes",
            &user.id,
            Outcome::Success,
            serde_json::json!({"before": user.scopes, "after": scopes}),
        )
        .await;
        Ok(UserRow { scopes, ..user })
    }

    /// End a membership in the caller's org (`users:admin`); not a home membership.
    pub async fn remove_member(&self, ctx: &RequestContext, user_id: &str) -> Result<()> {
        let caller = &ctx.principal;
        let user = self.managed_member(caller, user_id).await?;
        if user.home_org_id == caller.org_id {
            return Err(IdentityError::Conflict(format!(
                "this org is the home of user {:?}: the account cannot leave it",
                user.username
            )));
        }
        if !self
            .store
            .remove_membership(&caller.org_id, &user.id)
            .await?
        {
            return Err(IdentityError::NotFound(format!("user {user_id:?}")));
        }
        self.announce_revoked(Subject::UserId(user.id.clone()))
            .await;
        self.audit(
            Actor::of(ctx),
            "member.remove",
            &user.id,
            Outcome::Success,
            serde_json::json!({"username": user.username}),
        )
        .await;
        Ok(())
    }
}
