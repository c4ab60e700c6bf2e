//! Groups of an org and their members. A membership joins a group and a user of the
//! same org; deleting either removes it (`ON DELETE CASCADE`).

use lattice_core::time::now_ms;
use sqlx::{Any, Transaction};

use super::Store;
use crate::input::{ADMINS_DESCRIPTION, ADMINS_GROUP};

/// A group, with how many members it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// Id.
    pub id: String,
    /// Org.
    pub org_id: String,
    /// Name, unique in the org.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Members.
    pub member_count: i64,
    /// Created.
    pub created_at_ms: i64,
    /// Last change of the group or its members.
    pub updated_at_ms: i64,
}

type GroupTuple = (String, String, String, String, i64, i64, i64);

/// Column list shared by the queries below (a literal, so queries stay `&'static str`).
macro_rules! group_cols {
    () => {
        "g.id, g.org_id, g.name, g.description, \
         (SELECT COUNT(*) FROM identity_group_members m WHERE m.group_id = g.id), \
         g.created_at_ms, g.updated_at_ms"
    };
}

fn group_from(t: GroupTuple) -> GroupRow {
    GroupRow {
        id: t.0,
        org_id: t.1,
        name: t.2,
        description: t.3,
        member_count: t.4,
        created_at_ms: t.5,
        updated_at_ms: t.6,
    }
}

/// Give an org its `admins` group, unless it has one.
pub(super) async fn ensure_admins_group(
    tx: &mut Transaction<'static, Any>,
    org_id: &str,
) -> sqlx::Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO identity_groups (id, org_id, name, description, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (org_id, name) DO NOTHING",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(org_id)
    .bind(ADMINS_GROUP)
    .bind(ADMINS_DESCRIPTION)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Make `user_id` a member of the org's group named `group`, if it exists.
pub(super) async fn join_by_name(
    tx: &mut Transaction<'static, Any>,
    org_id: &str,
    group: &str,
    user_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO identity_group_members (group_id, user_id, added_at_ms) \
         SELECT id, $3, $4 FROM identity_groups WHERE org_id = $1 AND name = $2 \
         ON CONFLICT (group_id, user_id) DO NOTHING",
    )
    .bind(org_id)
    .bind(group)
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Create a group. A name taken in the org is a unique violation.
    pub async fn insert_group(
        &self,
        org_id: &str,
        name: &str,
        description: &str,
    ) -> sqlx::Result<GroupRow> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        sqlx::query(
            "INSERT INTO identity_groups (id, org_id, name, description, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(org_id)
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(GroupRow {
            id,
            org_id: org_id.into(),
            name: name.into(),
            description: description.into(),
            member_count: 0,
            created_at_ms: now,
            updated_at_ms: now,
        })
    }

    /// Every group of an org, by name.
    pub async fn list_groups(&self, org_id: &str) -> sqlx::Result<Vec<GroupRow>> {
        let rows: Vec<GroupTuple> = sqlx::query_as(concat!(
            "SELECT ",
            group_cols!(),
            " FROM identity_groups g WHERE g.org_id = $1 ORDER BY g.name"
        ))
        .bind(org_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(group_from).collect())
    }

    /// A group of an org by name.
    pub async fn group_by_name(&self, org_id: &str, name: &str) -> sqlx::Result<Option<GroupRow>> {
        let row: Option<GroupTuple> = sqlx::query_as(concat!(
            "SELECT ",
            group_cols!(),
            " FROM identity_groups g WHERE g.org_id = $1 AND g.name = $2"
        ))
        .bind(org_id)
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(group_from))
    }

    /// The usernames of a group's members, sorted.
    pub async fn group_members(&self, org_id: &str, group_id: &str) -> sqlx::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT u.username FROM identity_group_members m JOIN identity_users u ON u.id = m.user_id \
             WHERE m.group_id = $2 AND u.org_id = $1 ORDER BY u.username",
        )
        .bind(org_id)
        .bind(group_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Delete a group of an org and its memberships; false when there was none.
    pub async fn delete_group(&self, org_id: &str, group_id: &str) -> sqlx::Result<bool> {
        let res = sqlx::query("DELETE FROM identity_groups WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(group_id)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Add a user to a group (both of `org_id`); false when they already were a member.
    pub async fn add_member(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
    ) -> sqlx::Result<bool> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let res = sqlx::query(
            "INSERT INTO identity_group_members (group_id, user_id, added_at_ms) \
             SELECT g.id, u.id, $4 FROM identity_groups g JOIN identity_users u ON u.org_id = g.org_id \
             WHERE g.org_id = $1 AND g.id = $2 AND u.id = $3 \
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(org_id)
        .bind(group_id)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let added = res.rows_affected() == 1;
        if added {
            touch_group(&mut tx, org_id, group_id, now).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Remove a user from a group of `org_id`; false when they were not a member.
    pub async fn remove_member(
        &self,
        org_id: &str,
        group_id: &str,
        user_id: &str,
    ) -> sqlx::Result<bool> {
        let mut tx = self.db.begin().await?;
        let res = sqlx::query(
            "DELETE FROM identity_group_members WHERE user_id = $3 AND group_id IN \
             (SELECT id FROM identity_groups WHERE org_id = $1 AND id = $2)",
        )
        .bind(org_id)
        .bind(group_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let removed = res.rows_affected() == 1;
        if removed {
            touch_group(&mut tx, org_id, group_id, now_ms()).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// The names of the groups a user of `org_id` belongs to, sorted.
    pub async fn group_names_of(&self, org_id: &str, user_id: &str) -> sqlx::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT g.name FROM identity_group_members m JOIN identity_groups g ON g.id = m.group_id \
             WHERE g.org_id = $1 AND m.user_id = $2 ORDER BY g.name",
        )
        .bind(org_id)
        .bind(user_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// Move a group's `updated_at_ms` to `now` (its members changed).
async fn touch_group(
    tx: &mut Transaction<'static, Any>,
    org_id: &str,
    group_id: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE identity_groups SET updated_at_ms = $3 WHERE org_id = $1 AND id = $2")
        .bind(org_id)
        .bind(group_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
