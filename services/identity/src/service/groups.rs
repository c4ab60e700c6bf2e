//! Groups of an org's users: created and deleted by an admin, members added and
//! removed by username, and the groups of one user for whoever decides what that
//! user may do. Every org has an `admins` group, which cannot be deleted; only a
//! holder of `*` may change its members.
//!
//! Every change is announced on the bus (`GroupsChanged`), so that services that
//! cache memberships drop the org's.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_proto::events::v1::GroupsChanged;

use super::{Identity, Result, require_scope, require_user};
use crate::error::IdentityError;
use crate::input::{ADMINS_GROUP, GroupName, Membership, NewGroup, UserGroupsQuery, Username};
use crate::store::{GroupRow, UserRow};

/// A group with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDetail {
    /// The group.
    pub group: GroupRow,
    /// Usernames of its members, sorted.
    pub members: Vec<String>,
}

/// The members of `admins` decide what everyone else may do: a `users:admin` alone
/// must not be enough to join it (or to push the org's administrators out of it).
fn require_admins_change(caller: &Principal, group: &GroupName) -> Result<()> {
    if !group.is_admins() || caller.allows("*") {
        Ok(())
    } else {
        Err(IdentityError::Forbidden(format!(
            "only a holder of the * scope may change the members of the {ADMINS_GROUP:?} group"
        )))
    }
}

impl Identity {
    /// Tell every service that caches memberships to forget the org's.
    async fn announce_groups_changed(&self, org_id: &str) {
        self.cache
            .announce(&GroupsChanged {
                org_id: org_id.to_owned(),
            })
            .await;
    }

    async fn group_named(&self, org_id: &str, name: &GroupName) -> Result<GroupRow> {
        self.store
            .group_by_name(org_id, name.as_str())
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("group {:?}", name.as_str())))
    }

    async fn user_named(&self, org_id: &str, username: &Username) -> Result<UserRow> {
        self.store
            .member_by_username(org_id, username.as_str())
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {:?}", username.as_str())))
    }

    /// Create a group in the caller's org (`users:admin`).
    pub async fn create_group(&self, ctx: &RequestContext, new: NewGroup) -> Result<GroupDetail> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        let group = match self
            .store
            .insert_group(&caller.org_id, new.name.as_str(), &new.description)
            .await
        {
            Ok(g) => g,
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(IdentityError::AlreadyExists(format!(
                    "group {:?}",
                    new.name.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.announce_groups_changed(&caller.org_id).await;
        self.audit(
            Actor::of(ctx),
            "group.create",
            &group.id,
            Outcome::Success,
            serde_json::json!({"name": group.name, "description": group.description}),
        )
        .await;
        Ok(GroupDetail {
            group,
            members: Vec::new(),
        })
    }

    /// Groups of the caller's org with their member counts, by name (`users:read`).
    pub async fn list_groups(&self, caller: &Principal) -> Result<Vec<GroupRow>> {
        require_scope(caller, "users:read")?;
        Ok(self.store.list_groups(&caller.org_id).await?)
    }

    /// One group of the caller's org with its members (`users:read`).
    pub async fn group(&self, caller: &Principal, name: &GroupName) -> Result<GroupDetail> {
        // The policy service counts an org's admins (four eyes).
        if !caller.is_service_in_org() {
            require_scope(caller, "users:read")?;
        }
        let group = self.group_named(&caller.org_id, name).await?;
        let members = self.store.group_members(&caller.org_id, &group.id).await?;
        Ok(GroupDetail { group, members })
    }

    /// Delete a group of the caller's org and its memberships (`users:admin`); never
    /// `admins`.
    pub async fn delete_group(&self, ctx: &RequestContext, name: &GroupName) -> Result<()> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        let group = self.group_named(&caller.org_id, name).await?;
        if name.is_admins() {
            return Err(IdentityError::Conflict(format!(
                "the {ADMINS_GROUP:?} group cannot be deleted: every org has it"
            )));
        }
        if !self.store.delete_group(&caller.org_id, &group.id).await? {
            return Err(IdentityError::NotFound(format!(
                "group {:?}",
                name.as_str()
            )));
        }
        self.announce_groups_changed(&caller.org_id).await;
        self.audit(
            Actor::of(ctx),
            "group.delete",
            &group.id,
            Outcome::Success,
            serde_json::json!({"name": group.name, "member_count": group.member_count}),
        )
        .await;
        Ok(())
    }

    /// Make a user of the caller's org a member of one of its groups (`users:admin`;
    /// `*` for `admins`). Returns false when they already were (nothing changes).
    pub async fn add_group_member(&self, ctx: &RequestContext, m: &Membership) -> Result<bool> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        require_admins_change(caller, &m.group)?;
        let group = self.group_named(&caller.org_id, &m.group).await?;
        let user = self.user_named(&caller.org_id, &m.username).await?;
        let added = self
            .store
            .add_member(&caller.org_id, &group.id, &user.id)
            .await?;
        if added {
            self.announce_groups_changed(&caller.org_id).await;
            self.audit(
                Actor::of(ctx),
                "group.member.add",
                &group.id,
                Outcome::Success,
                serde_json::json!({"name": group.name, "user_id": user.id, "username": user.username}),
            )
            .await;
        }
        Ok(added)
    }

    /// Remove a user of the caller's org from one of its groups (`users:admin`; `*`
    /// for `admins`).
    pub async fn remove_group_member(&self, ctx: &RequestContext, m: &Membership) -> Result<()> {
        let caller = &ctx.principal;
        require_scope(caller, "users:admin")?;
        require_admins_change(caller, &m.group)?;
        let group = self.group_named(&caller.org_id, &m.group).await?;
        let user = self.user_named(&caller.org_id, &m.username).await?;
        if !self
            .store
            .remove_member(&caller.org_id, &group.id, &user.id)
            .await?
        {
            return Err(IdentityError::NotFound(format!(
                "user {:?} in group {:?}",
                user.username, group.name
            )));
        }
        self.announce_groups_changed(&caller.org_id).await;
        self.audit(
            Actor::of(ctx),
            "group.member.remove",
            &group.id,
            Outcome::Success,
            serde_json::json!({"name": group.name, "user_id": user.id, "username": user.username}),
        )
        .await;
        Ok(())
    }

    /// The names of the groups `username` of `org_id` belongs to, sorted. No caller
    /// check: for callers that already decided they may ask (see [`Self::user_groups`]).
    pub async fn groups_of(&self, org_id: &str, username: &Username) -> Result<Vec<String>> {
        let user = self.user_named(org_id, username).await?;
        Ok(self.store.group_names_of(org_id, &user.id).await?)
    }

    /// A user's groups, for the user themself, a caller with `users:read` in the same
    /// org, or an internal service (any org; the user's own unless it names one).
    pub async fn user_groups(
        &self,
        caller: &Principal,
        q: &UserGroupsQuery,
    ) -> Result<Vec<String>> {
        if caller.is_service() {
            let org_id = match &q.org_id {
                Some(org_id) => org_id.clone(),
                None => self.user_named_anywhere(&q.username).await?.org_id,
            };
            return self.groups_of(&org_id, &q.username).await;
        }
        require_user(caller)?;
        if q.org_id.as_ref().is_some_and(|o| *o != caller.org_id) {
            return Err(IdentityError::Forbidden(
                "org_id: only an internal service may look in another org".into(),
            ));
        }
        if q.username.as_str() != caller.username {
            require_scope(caller, "users:read")?;
        }
        self.groups_of(&caller.org_id, &q.username).await
    }

    async fn user_named_anywhere(&self, username: &Username) -> Result<UserRow> {
        self.store
            .user_by_username(username.as_str())
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("user {:?}", username.as_str())))
    }
}
