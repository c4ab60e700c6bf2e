//! The policy tables. Every query filters by `org_id`.

use lattice_core::db::{Db, Migration, MigrationSet};
use lattice_core::time::now_ms;
use sha2::{Digest as _, Sha256};

use crate::model::PolicyDoc;

const SCHEMA: &str = include_str!("migrations/0001_policies.sql");
const CHANGES: &str = include_str!("migrations/0002_changes.sql");
const ARTIFACT_NAMES: &str = include_str!("migrations/0003_artifact_names.sql");

/// The policy service's migrations.
pub fn migrations() -> MigrationSet {
    static SET: [Migration; 3] = [
        Migration {
            version: 1,
            name: "policies",
            sqlite: SCHEMA,
            postgres: SCHEMA,
        },
        Migration {
            version: 2,
            name: "reviewed changes: intents, plans, targets, org settings",
            sqlite: CHANGES,
            postgres: CHANGES,
        },
        Migration {
            version: 3,
            name: "plans name the managed artifact they change",
            sqlite: ARTIFACT_NAMES,
            postgres: ARTIFACT_NAMES,
        },
    ];
    MigrationSet {
        component: "policy",
        migrations: &SET,
    }
}

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRow {
    /// Id.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// The document.
    pub doc: PolicyDoc,
    /// sha256 of the text, hex.
    pub text_sha256: String,
    /// Created.
    pub created_at_ms: i64,
    /// Last changed.
    pub updated_at_ms: i64,
    /// Who changed it last (username, or `system`).
    pub updated_by: String,
}

type Tuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<i64>,
    i64,
    i64,
    String,
);

macro_rules! cols {
    () => {
        "id, org_id, name, text, text_sha256, enabled, priority, description, expires_at_ms, created_at_ms, updated_at_ms, updated_by"
    };
}

fn row(t: Tuple) -> PolicyRow {
    PolicyRow {
        id: t.0,
        org_id: t.1,
        doc: PolicyDoc {
            name: t.2,
            text: t.3,
            enabled: t.5 != 0,
            priority: t.6,
            description: t.7,
            expires_at_ms: t.8,
        },
        text_sha256: t.4,
        created_at_ms: t.9,
        updated_at_ms: t.10,
        updated_by: t.11,
    }
}

/// sha256 of a policy text, hex.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The name of the policy every org starts with.
pub const SEEDED_NAME: &str = "admins-allow-all";
/// Its text.
pub const SEEDED_TEXT: &str = "// Seeded: members of the admins group may do everything. Edit or delete it\n// once your own policies cover what admins need.\npermit(principal in Lattice::Group::\"admins\", action, resource);\n";

/// The policy tables.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Over `db` (migrated).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Every policy of `org`, by name.
    pub async fn list(&self, org: &str) -> Result<Vec<PolicyRow>, sqlx::Error> {
        let rows: Vec<Tuple> = sqlx::query_as(concat!(
            "SELECT ",
            cols!(),
            " FROM policy_policies WHERE org_id = $1 ORDER BY name"
        ))
        .bind(org)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    /// One policy.
    pub async fn get(&self, org: &str, name: &str) -> Result<Option<PolicyRow>, sqlx::Error> {
        let r: Option<Tuple> = sqlx::query_as(concat!(
            "SELECT ",
            cols!(),
            " FROM policy_policies WHERE org_id = $1 AND name = $2"
        ))
        .bind(org)
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(r.map(row))
    }

    /// Insert `doc`, or replace the policy of that name: the previous row, if any.
    /// With `create_only`, an existing name is a unique violation.
    pub async fn put(
        &self,
        org: &str,
        doc: &PolicyDoc,
        by: &str,
    ) -> Result<(PolicyRow, Option<PolicyRow>), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let old: Option<Tuple> = sqlx::query_as(concat!(
            "SELECT ",
            cols!(),
            " FROM policy_policies WHERE org_id = $1 AND name = $2"
        ))
        .bind(org)
        .bind(&doc.name)
        .fetch_optional(&mut *tx)
        .await?;
        let now = now_ms();
        let hash = text_hash(&doc.text);
        let old = old.map(row);
        let (id, created) = match &old {
            Some(o) => {
                sqlx::query(
                    "UPDATE policy_policies SET text = $1, text_sha256 = $2, enabled = $3, priority = $4, \
                     description = $5, expires_at_ms = $6, updated_at_ms = $7, updated_by = $8 WHERE id = $9",
                )
                .bind(&doc.text)
                .bind(&hash)
                .bind(i64::from(doc.enabled))
                .bind(doc.priority)
                .bind(&doc.description)
                .bind(doc.expires_at_ms)
                .bind(now)
                .bind(by)
                .bind(&o.id)
                .execute(&mut *tx)
                .await?;
                (o.id.clone(), o.created_at_ms)
            }
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                sqlx::query(
                    "INSERT INTO policy_policies (id, org_id, name, text, text_sha256, enabled, priority, \
                     description, expires_at_ms, created_at_ms, updated_at_ms, updated_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)",
                )
                .bind(&id)
                .bind(org)
                .bind(&doc.name)
                .bind(&doc.text)
                .bind(&hash)
                .bind(i64::from(doc.enabled))
                .bind(doc.priority)
                .bind(&doc.description)
                .bind(doc.expires_at_ms)
                .bind(now)
                .bind(by)
                .execute(&mut *tx)
                .await?;
                (id, now)
            }
        };
        tx.commit().await?;
        Ok((
            PolicyRow {
                id,
                org_id: org.to_owned(),
                doc: doc.clone(),
                text_sha256: hash,
                created_at_ms: created,
                updated_at_ms: now,
                updated_by: by.to_owned(),
            },
            old,
        ))
    }

    /// Delete a policy: the row deleted, if there was one.
    pub async fn delete(&self, org: &str, name: &str) -> Result<Option<PolicyRow>, sqlx::Error> {
        let Some(old) = self.get(org, name).await? else {
            return Ok(None);
        };
        let n = sqlx::query("DELETE FROM policy_policies WHERE id = $1")
            .bind(&old.id)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok((n > 0).then_some(old))
    }

    /// What an org holds: policies besides the seeded one (unchanged), intents
    /// (latest versions) and plans.
    pub async fn org_usage(
        &self,
        org: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, sqlx::Error> {
        let (policies, intents, plans): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               (SELECT COUNT(*) FROM policy_policies WHERE org_id = $1 AND updated_by <> 'system'), \
               (SELECT COUNT(DISTINCT name) FROM policy_intents WHERE org_id = $1), \
               (SELECT COUNT(*) FROM policy_plans WHERE org_id = $1)",
        )
        .bind(org)
        .fetch_one(self.db.pool())
        .await?;
        Ok([
            ("policies", policies),
            ("intents", intents),
            ("plans", plans),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect())
    }

    /// Delete everything of an org (its audit trail stays), in one transaction.
    /// Returns how many policies, intent versions and plans went.
    pub async fn purge_org(
        &self,
        org: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, sqlx::Error> {
        const STEPS: [(&str, &str); 6] = [
            (
                "",
                "DELETE FROM policy_plan_targets WHERE plan_id IN (SELECT id FROM policy_plans WHERE org_id = $1)",
            ),
            ("plans", "DELETE FROM policy_plans WHERE org_id = $1"),
            (
                "intent_versions",
                "DELETE FROM policy_intents WHERE org_id = $1",
            ),
            ("policies", "DELETE FROM policy_policies WHERE org_id = $1"),
            ("", "DELETE FROM policy_org_settings WHERE org_id = $1"),
            ("", "DELETE FROM policy_orgs WHERE org_id = $1"),
        ];
        let mut tx = self.db.begin().await?;
        let mut removed = std::collections::BTreeMap::new();
        for (kind, sql) in STEPS {
            let n = sqlx::query(sql)
                .bind(org)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if !kind.is_empty() && n > 0 {
                removed.insert(kind.to_owned(), i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Give `org` its seeded policy once, the first time the org is seen (new orgs
    /// and orgs from before policies alike). True when seeded now.
    pub async fn seed_once(&self, org: &str) -> Result<bool, sqlx::Error> {
        let seen: Option<(i64,)> =
            sqlx::query_as("SELECT seeded_at_ms FROM policy_orgs WHERE org_id = $1")
                .bind(org)
                .fetch_optional(self.db.pool())
                .await?;
        if seen.is_some() {
            return Ok(false);
        }
        let mut tx = self.db.begin().await?;
        let now = now_ms();
        let claimed = sqlx::query(
            "INSERT INTO policy_orgs (org_id, seeded_at_ms) VALUES ($1, $2) ON CONFLICT (org_id) DO NOTHING",
        )
        .bind(org)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO policy_policies (id, org_id, name, text, text_sha256, enabled, priority, \
             description, expires_at_ms, created_at_ms, updated_at_ms, updated_by) \
             VALUES ($1, $2, $3, $4, $5, 1, 0, $6, NULL, $7, $7, 'system') ON CONFLICT (org_id, name) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(org)
        .bind(SEEDED_NAME)
        .bind(SEEDED_TEXT)
        .bind(text_hash(SEEDED_TEXT))
        .bind("Members of the admins group may do everything (seeded so that turning policies on locks no admin out).")
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
