//! Orgs, memberships and invitations. A membership joins a user to an org with the
//! scopes they hold there; a user's home org is where the account itself lives.

use std::collections::BTreeMap;

use lattice_core::time::now_ms;

use super::{Store, UserRow, UserTuple, groups, parse_scopes, scopes_json, user_from};
use crate::input::ADMINS_GROUP;

/// Per-org limits (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Buckets (KV and static).
    pub max_buckets: i64,
    /// Bytes stored in the org's buckets.
    pub max_stored_bytes: i64,
    /// Enrolled nodes.
    pub max_nodes: i64,
    /// Live operator tokens.
    pub max_tokens: i64,
}

/// An org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    /// Id.
    pub id: String,
    /// Name, unique.
    pub name: String,
    /// Created.
    pub created_at_ms: i64,
    /// When its deletion began (0: it is not being deleted).
    pub deleting_at_ms: i64,
    /// Its limits.
    pub limits: Limits,
    /// How many members it has.
    pub member_count: i64,
}

type OrgTuple = (String, String, i64, i64, i64, i64, i64, i64, i64);

macro_rules! org_cols {
    () => {
        "o.id, o.name, o.created_at_ms, o.deleting_at_ms, o.max_buckets, o.max_stored_bytes, o.max_nodes, o.max_tokens, \
         (SELECT COUNT(*) FROM identity_memberships m WHERE m.org_id = o.id) FROM identity_orgs o"
    };
}

fn org_from(t: OrgTuple) -> OrgRow {
    OrgRow {
        id: t.0,
        name: t.1,
        created_at_ms: t.2,
        deleting_at_ms: t.3,
        limits: Limits {
            max_buckets: t.4,
            max_stored_bytes: t.5,
            max_nodes: t.6,
            max_tokens: t.7,
        },
        member_count: t.8,
    }
}

/// One of a user's memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRow {
    /// Org.
    pub org_id: String,
    /// Its name.
    pub org_name: String,
    /// The scopes held there.
    pub scopes: Vec<String>,
    /// Whether it is the account's home org.
    pub home: bool,
}

/// An invitation, as stored.
#[derive(Debug, Clone)]
pub struct InvitationRow {
    /// Id.
    pub id: String,
    /// The inviting org.
    pub org_id: String,
    /// The invited user.
    pub user_id: String,
    /// Scopes the membership will have.
    pub scopes: Vec<String>,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Why a new org could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateOrgError {
    /// The name is taken.
    #[error("name taken")]
    NameTaken,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Store {
    /// Every org, by name.
    pub async fn orgs(&self) -> sqlx::Result<Vec<OrgRow>> {
        let rows: Vec<OrgTuple> =
            sqlx::query_as(concat!("SELECT ", org_cols!(), " ORDER BY o.name"))
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.into_iter().map(org_from).collect())
    }

    /// An org by name.
    pub async fn org(&self, name: &str) -> sqlx::Result<Option<OrgRow>> {
        let row: Option<OrgTuple> =
            sqlx::query_as(concat!("SELECT ", org_cols!(), " WHERE o.name = $1"))
                .bind(name)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(org_from))
    }

    /// An org by id.
    pub async fn org_by_id(&self, id: &str) -> sqlx::Result<Option<OrgRow>> {
        let row: Option<OrgTuple> =
            sqlx::query_as(concat!("SELECT ", org_cols!(), " WHERE o.id = $1"))
                .bind(id)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(org_from))
    }

    /// Create an org with its `admins` group, and make `admin_id` a member with `*`
    /// in that group, in one transaction.
    pub async fn create_org(
        &self,
        name: &str,
        admin_id: &str,
        limits: Limits,
    ) -> Result<String, CreateOrgError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let res = sqlx::query(
            "INSERT INTO identity_orgs (id, name, created_at_ms, max_buckets, max_stored_bytes, max_nodes, max_tokens) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(now)
        .bind(limits.max_buckets)
        .bind(limits.max_stored_bytes)
        .bind(limits.max_nodes)
        .bind(limits.max_tokens)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(CreateOrgError::NameTaken);
        }
        groups::ensure_admins_group(&mut tx, &id).await?;
        sqlx::query(
            "INSERT INTO identity_memberships (org_id, user_id, scopes, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(admin_id)
        .bind(scopes_json(&["*".to_owned()]))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        groups::join_by_name(&mut tx, &id, ADMINS_GROUP, admin_id, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Rename an org; false when the new name is taken.
    pub async fn rename_org(&self, id: &str, name: &str) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE identity_orgs SET name = $2 WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM identity_orgs o WHERE o.name = $2)",
        )
        .bind(id)
        .bind(name)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replace an org's limits.
    pub async fn set_limits(&self, id: &str, l: Limits) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE identity_orgs SET max_buckets = $2, max_stored_bytes = $3, max_nodes = $4, max_tokens = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(l.max_buckets)
        .bind(l.max_stored_bytes)
        .bind(l.max_nodes)
        .bind(l.max_tokens)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Mark an org as being deleted (keeps the first time).
    pub async fn begin_delete_org(&self, id: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE identity_orgs SET deleting_at_ms = $2 WHERE id = $1 AND deleting_at_ms = 0",
        )
        .bind(id)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// What the org holds in identity besides its members and `admins` group.
    pub async fn org_usage(&self, id: &str) -> sqlx::Result<BTreeMap<String, i64>> {
        let (tokens, groups, providers): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT COUNT(*) FROM identity_tokens t WHERE t.org_id = $1 AND t.revoked_at_ms IS NULL \
                  AND (t.expires_at_ms = 0 OR t.expires_at_ms > $2)), \
               (SELECT COUNT(*) FROM identity_groups g WHERE g.org_id = $1 AND g.name <> 'admins'), \
               (SELECT COUNT(*) FROM identity_sso_providers p WHERE p.org_id = $1)",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok([
            ("tokens", tokens),
            ("groups", groups),
            ("sso_providers", providers),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect())
    }

    /// Remove an org and everything identity holds of it, in one transaction:
    /// invitations, single sign-on state, credentials, groups, memberships, the
    /// accounts whose home it is (with their memberships elsewhere), and the org.
    /// Its audit rows stay. Returns what was removed, by kind.
    pub async fn delete_org(&self, id: &str) -> sqlx::Result<BTreeMap<String, i64>> {
        const STEPS: [(&str, &str); 11] = [
            (
                "invitations",
                "DELETE FROM identity_invitations WHERE org_id = $1",
            ),
            (
                "sso_cli_codes",
                "DELETE FROM identity_sso_cli_codes WHERE org_id = $1",
            ),
            (
                "sso_logins",
                "DELETE FROM identity_sso_logins WHERE org_id = $1",
            ),
            (
                "sso_identities",
                "DELETE FROM identity_sso_identities WHERE org_id = $1",
            ),
            (
                "sso_providers",
                "DELETE FROM identity_sso_providers WHERE org_id = $1",
            ),
            ("tokens", "DELETE FROM identity_tokens WHERE org_id = $1"),
            (
                "sessions",
                "DELETE FROM identity_sessions WHERE org_id = $1",
            ),
            ("groups", "DELETE FROM identity_groups WHERE org_id = $1"),
            (
                "members",
                "DELETE FROM identity_memberships WHERE org_id = $1",
            ),
            ("users", "DELETE FROM identity_users WHERE org_id = $1"),
            ("orgs", "DELETE FROM identity_orgs WHERE id = $1"),
        ];
        let mut tx = self.db.begin().await?;
        let mut removed = BTreeMap::new();
        for (kind, sql) in STEPS {
            let n = sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            let n = i64::try_from(n.rows_affected()).unwrap_or(i64::MAX);
            if n > 0 && kind != "orgs" {
                removed.insert(kind.to_owned(), n);
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Every membership of a user, home first, then by org name.
    pub async fn memberships_of(&self, user_id: &str) -> sqlx::Result<Vec<MembershipRow>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT m.org_id, o.name, m.scopes, CASE WHEN u.org_id = m.org_id THEN 1 ELSE 0 END \
             FROM identity_memberships m JOIN identity_orgs o ON o.id = m.org_id \
             JOIN identity_users u ON u.id = m.user_id \
             WHERE m.user_id = $1 AND o.deleting_at_ms = 0 \
             ORDER BY CASE WHEN u.org_id = m.org_id THEN 0 ELSE 1 END, o.name",
        )
        .bind(user_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| MembershipRow {
                org_id: r.0,
                org_name: r.1,
                scopes: parse_scopes(&r.2),
                home: r.3 != 0,
            })
            .collect())
    }

    /// A member of an org by username.
    pub async fn member_by_username(
        &self,
        org_id: &str,
        username: &str,
    ) -> sqlx::Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(concat!(
            "SELECT ",
            user_cols!(),
            " WHERE m.org_id = $1 AND u.username = $2"
        ))
        .bind(org_id)
        .bind(username)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// Add (or, when it exists, keep) a membership.
    pub async fn add_membership(
        &self,
        org_id: &str,
        user_id: &str,
        scopes: &[String],
    ) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "INSERT INTO identity_memberships (org_id, user_id, scopes, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, user_id) DO NOTHING",
        )
        .bind(org_id)
        .bind(user_id)
        .bind(scopes_json(scopes))
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replace a member's scopes.
    pub async fn set_member_scopes(
        &self,
        org_id: &str,
        user_id: &str,
        scopes: &[String],
    ) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE identity_memberships SET scopes = $3 WHERE org_id = $1 AND user_id = $2",
        )
        .bind(org_id)
        .bind(user_id)
        .bind(scopes_json(scopes))
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// End a membership (not the home one) with its group memberships, sessions and
    /// tokens in the org, in one transaction. False when there was none.
    pub async fn remove_membership(&self, org_id: &str, user_id: &str) -> sqlx::Result<bool> {
        let mut tx = self.db.begin().await?;
        let res = sqlx::query(
            "DELETE FROM identity_memberships WHERE org_id = $1 AND user_id = $2 \
             AND NOT EXISTS (SELECT 1 FROM identity_users u WHERE u.id = $2 AND u.org_id = $1)",
        )
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        for sql in [
            "DELETE FROM identity_group_members WHERE user_id = $2 \
             AND group_id IN (SELECT id FROM identity_groups WHERE org_id = $1)",
            "DELETE FROM identity_sessions WHERE org_id = $1 AND user_id = $2",
            "DELETE FROM identity_tokens WHERE org_id = $1 AND user_id = $2",
        ] {
            sqlx::query(sql)
                .bind(org_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Store an invitation (the code's hash only).
    pub async fn insert_invitation(
        &self,
        inv: &InvitationRow,
        code_hash: &str,
        created_by: &str,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO identity_invitations (id, org_id, user_id, code_hash, scopes, created_by, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&inv.id)
        .bind(&inv.org_id)
        .bind(&inv.user_id)
        .bind(code_hash)
        .bind(scopes_json(&inv.scopes))
        .bind(created_by)
        .bind(now_ms())
        .bind(inv.expires_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Use an invitation: marks it used (once) and adds the membership, in one
    /// transaction. None when the code is unknown, used, expired, for another user,
    /// or its org is being deleted.
    pub async fn accept_invitation(
        &self,
        code_hash: &str,
        user_id: &str,
    ) -> sqlx::Result<Option<InvitationRow>> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let row: Option<(String, String, String, String, i64)> = sqlx::query_as(
            "UPDATE identity_invitations SET used_at_ms = $3 \
             WHERE code_hash = $1 AND user_id = $2 AND used_at_ms IS NULL AND expires_at_ms > $3 \
               AND org_id IN (SELECT id FROM identity_orgs WHERE deleting_at_ms = 0) \
             RETURNING id, org_id, user_id, scopes, expires_at_ms",
        )
        .bind(code_hash)
        .bind(user_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let inv = InvitationRow {
            id: r.0,
            org_id: r.1,
            user_id: r.2,
            scopes: parse_scopes(&r.3),
            expires_at_ms: r.4,
        };
        sqlx::query(
            "INSERT INTO identity_memberships (org_id, user_id, scopes, created_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, user_id) DO UPDATE SET scopes = excluded.scopes",
        )
        .bind(&inv.org_id)
        .bind(&inv.user_id)
        .bind(scopes_json(&inv.scopes))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(inv))
    }

    /// Live operator tokens of an org.
    pub async fn count_tokens(&self, org_id: &str) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM identity_tokens WHERE org_id = $1 AND revoked_at_ms IS NULL \
             AND (expires_at_ms = 0 OR expires_at_ms > $2)",
        )
        .bind(org_id)
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok(n)
    }
}
