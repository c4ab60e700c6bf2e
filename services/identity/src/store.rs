//! The identity tables. Every query on tenant data filters by `org_id`; the few
//! lookups that cross orgs (login by username, credential by secret hash) are the
//! ones that establish which org the caller is in.

mod groups;

use lattice_core::db::{Backend, Db, Migration, MigrationSet};
use lattice_core::time::now_ms;

pub use self::groups::GroupRow;
pub use self::orgs::{CreateOrgError, InvitationRow, Limits, MembershipRow, OrgRow};

const SCHEMA: &str = include_str!("migrations/0001_identity.sql");
const GROUPS: &str = include_str!("migrations/0002_groups.sql");
const SESSION_MFA: &str = include_str!("migrations/0003_session_mfa.sql");
const SSO: &str = include_str!("migrations/0004_sso.sql");
const SSO_LOGINS: &str = include_str!("migrations/0005_sso_logins.sql");
const SSO_CLI: &str = include_str!("migrations/0006_sso_cli.sql");
const ORGS: &str = include_str!("migrations/0007_orgs.sql");
const USER_DISABLED: &str = include_str!("migrations/0008_user_disabled.sql");

/// The identity service's migrations (one script each for both backends; the
/// placeholders of `lattice_core::db::Migration` stand for what differs).
pub fn migrations() -> MigrationSet {
    static SET: [Migration; 8] = [
        Migration {
            version: 1,
            name: "orgs, users, sessions, tokens, audit",
            sqlite: SCHEMA,
            postgres: SCHEMA,
        },
        Migration {
            version: 2,
            name: "groups and their members, an admins group in every org",
            sqlite: GROUPS,
            postgres: GROUPS,
        },
        Migration {
            version: 3,
            name: "when a session last completed TOTP",
            sqlite: SESSION_MFA,
            postgres: SESSION_MFA,
        },
        Migration {
            version: 4,
            name: "single sign-on providers per org",
            sqlite: SSO,
            postgres: SSO,
        },
        Migration {
            version: 5,
            name: "single sign-on logins in flight and bound provider identities",
            sqlite: SSO_LOGINS,
            postgres: SSO_LOGINS,
        },
        Migration {
            version: 6,
            name: "single sign-on for the CLI: its loopback port, PKCE challenge and one-time codes",
            sqlite: SSO_CLI,
            postgres: SSO_CLI,
        },
        Migration {
            version: 7,
            name: "memberships with scopes per org, org deletion and limits, invitations",
            sqlite: ORGS,
            postgres: ORGS,
        },
        Migration {
            version: 8,
            name: "disabled accounts; scopes and groups of users a provider creates",
            sqlite: USER_DISABLED,
            postgres: USER_DISABLED,
        },
    ];
    MigrationSet {
        component: "identity",
        migrations: &SET,
    }
}

/// A user as seen in one org: the account joined with its membership there.
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Id.
    pub id: String,
    /// The org of the membership this row was read through.
    pub org_id: String,
    /// The org the account belongs to (where its password and TOTP are administered).
    pub home_org_id: String,
    /// Login name.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Scopes granted by the membership.
    pub scopes: Vec<String>,
    /// Sealed TOTP seed (pending or enabled).
    pub totp_sealed: Option<Vec<u8>>,
    /// Whether TOTP is required at login.
    pub totp_enabled: bool,
    /// Consecutive failed logins.
    pub failed_logins: i64,
    /// Locked until (0 = not locked).
    pub locked_until_ms: i64,
    /// Created.
    pub created_at_ms: i64,
    /// When the account was disabled (0: it is not).
    pub disabled_at_ms: i64,
}

type UserTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<Vec<u8>>,
    i64,
    i64,
    i64,
    i64,
    i64,
);
/// Column list shared by the queries below (a literal, so queries stay `&'static str`):
/// the account `u` joined with a membership `m`.
macro_rules! user_cols {
    () => {
        "u.id, m.org_id, u.org_id, u.username, u.password_hash, m.scopes, u.totp_sealed, u.totp_enabled, u.failed_logins, u.locked_until_ms, u.created_at_ms, u.disabled_at_ms \
         FROM identity_users u JOIN identity_memberships m ON m.user_id = u.id"
    };
}

// After `user_cols!`, which it uses.
mod orgs;

fn user_from(t: UserTuple) -> UserRow {
    UserRow {
        id: t.0,
        org_id: t.1,
        home_org_id: t.2,
        username: t.3,
        password_hash: t.4,
        scopes: parse_scopes(&t.5),
        totp_sealed: t.6,
        totp_enabled: t.7 != 0,
        failed_logins: t.8,
        locked_until_ms: t.9,
        created_at_ms: t.10,
        disabled_at_ms: t.11,
    }
}

fn parse_scopes(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn scopes_json(scopes: &[String]) -> String {
    serde_json::to_string(scopes).expect("a list of strings serialises")
}

/// A credential (session or token) joined with its user and org.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    /// Session or token id.
    pub id: String,
    /// Org.
    pub org_id: String,
    /// Org name.
    pub org_name: String,
    /// User id.
    pub user_id: String,
    /// Username.
    pub username: String,
    /// The user's scopes in the credential's org.
    pub user_scopes: Vec<String>,
    /// Token's own scopes (tokens only).
    pub token_scopes: Vec<String>,
    /// Whether the user has TOTP on.
    pub totp_enabled: bool,
    /// Absolute expiry (0 = none).
    pub expires_at_ms: i64,
    /// Last use.
    pub last_seen_at_ms: i64,
    /// Revoked.
    pub revoked: bool,
}

/// Session columns joined with user and org (see `session_by_hash`).
type SessionTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
);
/// Token columns joined with user and org (see `token_by_hash`).
type TokenTuple = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
);

/// A token row for listing.
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Label.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Created.
    pub created_at_ms: i64,
    /// Expiry (0 = none).
    pub expires_at_ms: i64,
    /// Last use.
    pub last_used_at_ms: i64,
}

/// New session values.
#[derive(Debug)]
pub struct NewSession<'a> {
    /// Id.
    pub id: &'a str,
    /// Hash of the cookie secret.
    pub secret_hash: &'a str,
    /// Owner.
    pub user: &'a UserRow,
    /// Absolute expiry.
    pub expires_at_ms: i64,
    /// Browser.
    pub user_agent: &'a str,
    /// Client address.
    pub client_ip: &'a str,
    /// When the login completed TOTP (0: it did not).
    pub mfa_at_ms: i64,
}

/// Identity's database access.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Wrap a migrated database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database, for readiness checks.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Org id by name.
    pub async fn org_by_name(&self, name: &str) -> sqlx::Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT id FROM identity_orgs WHERE name = $1")
            .bind(name)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|r| r.0))
    }

    /// Create an org with its `admins` group, or return the existing one of that
    /// name (giving it the group if it lacks it).
    pub async fn ensure_org(&self, name: &str) -> sqlx::Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO identity_orgs (id, name, created_at_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let (org_id,): (String,) = sqlx::query_as("SELECT id FROM identity_orgs WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        groups::ensure_admins_group(&mut tx, &org_id).await?;
        tx.commit().await?;
        Ok(org_id)
    }

    /// Org name by id.
    pub async fn org_name(&self, org_id: &str) -> sqlx::Result<String> {
        let row: Option<(String,)> = sqlx::query_as("SELECT name FROM identity_orgs WHERE id = $1")
            .bind(org_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|r| r.0).unwrap_or_default())
    }

    /// How many users exist in all orgs (bootstrap runs only at zero).
    pub async fn count_users(&self) -> sqlx::Result<i64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM identity_users")
            .fetch_one(self.db.pool())
            .await?;
        Ok(n)
    }

    /// Insert a user. A duplicate username is a unique violation.
    pub async fn insert_user(
        &self,
        org_id: &str,
        username: &str,
        password_hash: &str,
        scopes: &[String],
    ) -> sqlx::Result<UserRow> {
        self.insert_user_in_groups(org_id, username, password_hash, scopes, &[])
            .await
    }

    /// Insert a user and make them a member of the org's groups named `groups`
    /// (that exist), in one transaction. A duplicate username is a unique violation.
    pub async fn insert_user_in_groups(
        &self,
        org_id: &str,
        username: &str,
        password_hash: &str,
        scopes: &[String],
        groups: &[&str],
    ) -> sqlx::Result<UserRow> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO identity_users (id, org_id, username, password_hash, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(org_id)
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO identity_memberships (org_id, user_id, scopes, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(org_id)
        .bind(&id)
        .bind(scopes_json(scopes))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for group in groups {
            groups::join_by_name(&mut tx, org_id, group, &id, now).await?;
        }
        tx.commit().await?;
        Ok(UserRow {
            id,
            org_id: org_id.into(),
            home_org_id: org_id.into(),
            username: username.into(),
            password_hash: password_hash.into(),
            scopes: scopes.to_vec(),
            totp_sealed: None,
            totp_enabled: false,
            failed_logins: 0,
            locked_until_ms: 0,
            created_at_ms: now,
            disabled_at_ms: 0,
        })
    }

    /// A user by login name (any org: usernames are global), as seen in their home org.
    pub async fn user_by_username(&self, username: &str) -> sqlx::Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(concat!(
            "SELECT ",
            user_cols!(),
            " WHERE u.username = $1 AND m.org_id = u.org_id"
        ))
        .bind(username)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// A member of an org, by user id.
    pub async fn user(&self, org_id: &str, user_id: &str) -> sqlx::Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(concat!(
            "SELECT ",
            user_cols!(),
            " WHERE m.org_id = $1 AND u.id = $2"
        ))
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// A user by id as seen in their home org (for MFA tokens, which name only the user).
    pub async fn user_any_org(&self, user_id: &str) -> sqlx::Result<Option<UserRow>> {
        let row: Option<UserTuple> = sqlx::query_as(concat!(
            "SELECT ",
            user_cols!(),
            " WHERE u.id = $1 AND m.org_id = u.org_id"
        ))
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(user_from))
    }

    /// Every member of an org, by name.
    pub async fn list_users(&self, org_id: &str) -> sqlx::Result<Vec<UserRow>> {
        let rows: Vec<UserTuple> = sqlx::query_as(concat!(
            "SELECT ",
            user_cols!(),
            " WHERE m.org_id = $1 ORDER BY u.username"
        ))
        .bind(org_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(user_from).collect())
    }

    /// Count one attempt on a user that is not locked (atomically); returns the
    /// attempt's number, or None when the user is locked.
    pub async fn reserve_attempt(&self, user_id: &str, now: i64) -> sqlx::Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "UPDATE identity_users SET failed_logins = failed_logins + 1, updated_at_ms = $2 \
             WHERE id = $1 AND locked_until_ms <= $2 RETURNING failed_logins",
        )
        .bind(user_id)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Lock a user until `until_ms` and reset the attempt counter.
    pub async fn lock_user(&self, user_id: &str, until_ms: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE identity_users SET locked_until_ms = $2, failed_logins = 0, updated_at_ms = $3 WHERE id = $1")
            .bind(user_id)
            .bind(until_ms)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Clear failure counters after a good login or an admin unlock.
    pub async fn clear_failures(&self, user_id: &str) -> sqlx::Result<()> {
        sqlx::query("UPDATE identity_users SET failed_logins = 0, locked_until_ms = 0, updated_at_ms = $2 WHERE id = $1")
            .bind(user_id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Disable an account (at `at_ms`) or enable it (0).
    pub async fn set_disabled(&self, user_id: &str, at_ms: i64) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE identity_users SET disabled_at_ms = $2, updated_at_ms = $3 WHERE id = $1",
        )
        .bind(user_id)
        .bind(at_ms)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Replace a user's password hash.
    pub async fn set_password_hash(&self, user_id: &str, hash: &str) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE identity_users SET password_hash = $2, updated_at_ms = $3 WHERE id = $1",
        )
        .bind(user_id)
        .bind(hash)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// End every live session of a user (in every org) except `keep` (may be empty).
    pub async fn revoke_sessions_of(&self, user_id: &str, keep: &str) -> sqlx::Result<u64> {
        let res = sqlx::query(
            "UPDATE identity_sessions SET revoked_at_ms = $3 \
             WHERE user_id = $1 AND id <> $2 AND revoked_at_ms IS NULL",
        )
        .bind(user_id)
        .bind(keep)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected())
    }

    /// Store a (pending or enabled) sealed TOTP seed.
    pub async fn set_totp(
        &self,
        user_id: &str,
        sealed: Option<&[u8]>,
        enabled: bool,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE identity_users SET totp_sealed = $2, totp_enabled = $3, totp_last_step = 0, updated_at_ms = $4 \
             WHERE id = $1",
        )
        .bind(user_id)
        .bind(sealed.map(<[u8]>::to_vec))
        .bind(i64::from(enabled))
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Accept a TOTP time step once: true only for the first use of a step newer than
    /// any accepted before (atomic across replicas).
    pub async fn consume_totp_step(&self, user_id: &str, step: i64) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE identity_users SET totp_last_step = $2 WHERE id = $1 AND totp_last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Replace a user's recovery codes.
    pub async fn replace_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
    ) -> sqlx::Result<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM identity_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for h in hashes {
            sqlx::query("INSERT INTO identity_recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(user_id)
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Use a recovery code: true only the first time.
    pub async fn consume_recovery_code(&self, user_id: &str, hash: &str) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE identity_recovery_codes SET used_at_ms = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at_ms IS NULL",
        )
        .bind(user_id)
        .bind(hash)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Create a session.
    pub async fn insert_session(&self, s: &NewSession<'_>) -> sqlx::Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO identity_sessions (id, secret_hash, org_id, user_id, created_at_ms, last_seen_at_ms, expires_at_ms, user_agent, client_ip, mfa_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9)",
        )
        .bind(s.id)
        .bind(s.secret_hash)
        .bind(&s.user.org_id)
        .bind(&s.user.id)
        .bind(now)
        .bind(s.expires_at_ms)
        .bind(s.user_agent)
        .bind(s.client_ip)
        .bind(s.mfa_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// When session `id` of `user_id` last completed TOTP (None: no such live
    /// session; 0: never).
    pub async fn session_mfa_at(&self, user_id: &str, id: &str) -> sqlx::Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT mfa_at_ms FROM identity_sessions WHERE id = $1 AND user_id = $2 AND revoked_at_ms IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.0))
    }

    /// Record that session `id` completed TOTP now.
    pub async fn set_session_mfa_at(&self, id: &str, at_ms: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE identity_sessions SET mfa_at_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(at_ms)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// A session (with user and org) by the hash of its secret.
    pub async fn session_by_hash(&self, secret_hash: &str) -> sqlx::Result<Option<CredentialRow>> {
        let row: Option<SessionTuple> = sqlx::query_as(
            "SELECT s.id, s.org_id, o.name, u.id, u.username, m.scopes, u.totp_enabled, s.expires_at_ms, s.last_seen_at_ms, s.revoked_at_ms \
             FROM identity_sessions s JOIN identity_users u ON u.id = s.user_id \
             JOIN identity_memberships m ON m.org_id = s.org_id AND m.user_id = s.user_id \
             JOIN identity_orgs o ON o.id = s.org_id \
             WHERE s.secret_hash = $1 AND o.deleting_at_ms = 0 AND u.disabled_at_ms = 0",
        )
        .bind(secret_hash)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| CredentialRow {
            id: r.0,
            org_id: r.1,
            org_name: r.2,
            user_id: r.3,
            username: r.4,
            user_scopes: parse_scopes(&r.5),
            token_scopes: Vec::new(),
            totp_enabled: r.6 != 0,
            expires_at_ms: r.7,
            last_seen_at_ms: r.8,
            revoked: r.9.is_some(),
        }))
    }

    /// Move a session's idle clock forward.
    pub async fn touch_session(&self, id: &str, at_ms: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE identity_sessions SET last_seen_at_ms = $2 WHERE id = $1 AND last_seen_at_ms < $2")
            .bind(id)
            .bind(at_ms)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// End a session.
    pub async fn revoke_session(&self, org_id: &str, id: &str) -> sqlx::Result<bool> {
        let res = sqlx::query("UPDATE identity_sessions SET revoked_at_ms = $3 WHERE org_id = $1 AND id = $2 AND revoked_at_ms IS NULL")
            .bind(org_id)
            .bind(id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Create an operator token in `org_id` (its `last_used_at_ms` is not stored).
    pub async fn insert_token(
        &self,
        org_id: &str,
        secret_hash: &str,
        token: &TokenRow,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO identity_tokens (id, secret_hash, org_id, user_id, name, scopes, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(secret_hash)
        .bind(org_id)
        .bind(&token.user_id)
        .bind(&token.name)
        .bind(scopes_json(&token.scopes))
        .bind(token.created_at_ms)
        .bind(token.expires_at_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A token (with user and org) by the hash of its secret.
    pub async fn token_by_hash(&self, secret_hash: &str) -> sqlx::Result<Option<CredentialRow>> {
        let row: Option<TokenTuple> = sqlx::query_as(
            "SELECT t.id, t.org_id, o.name, u.id, u.username, m.scopes, t.scopes, u.totp_enabled, t.expires_at_ms, t.last_used_at_ms, t.revoked_at_ms \
             FROM identity_tokens t JOIN identity_users u ON u.id = t.user_id \
             JOIN identity_memberships m ON m.org_id = t.org_id AND m.user_id = t.user_id \
             JOIN identity_orgs o ON o.id = t.org_id \
             WHERE t.secret_hash = $1 AND o.deleting_at_ms = 0 AND u.disabled_at_ms = 0",
        )
        .bind(secret_hash)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| CredentialRow {
            id: r.0,
            org_id: r.1,
            org_name: r.2,
            user_id: r.3,
            username: r.4,
            user_scopes: parse_scopes(&r.5),
            token_scopes: parse_scopes(&r.6),
            totp_enabled: r.7 != 0,
            expires_at_ms: r.8,
            last_seen_at_ms: r.9,
            revoked: r.10.is_some(),
        }))
    }

    /// Record that a token was used.
    pub async fn touch_token(&self, id: &str, at_ms: i64) -> sqlx::Result<()> {
        sqlx::query("UPDATE identity_tokens SET last_used_at_ms = $2 WHERE id = $1 AND last_used_at_ms < $2")
            .bind(id)
            .bind(at_ms)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Live tokens of an org, optionally of one user, newest first.
    pub async fn list_tokens(
        &self,
        org_id: &str,
        user_id: Option<&str>,
    ) -> sqlx::Result<Vec<TokenRow>> {
        let rows: Vec<(String, String, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, user_id, name, scopes, created_at_ms, expires_at_ms, last_used_at_ms FROM identity_tokens \
             WHERE org_id = $1 AND revoked_at_ms IS NULL AND ($2 = '' OR user_id = $2) \
               AND (expires_at_ms = 0 OR expires_at_ms > $3) ORDER BY id DESC",
        )
        .bind(org_id)
        .bind(user_id.unwrap_or(""))
        .bind(now_ms())
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| TokenRow {
                id: r.0,
                user_id: r.1,
                name: r.2,
                scopes: parse_scopes(&r.3),
                created_at_ms: r.4,
                expires_at_ms: r.5,
                last_used_at_ms: r.6,
            })
            .collect())
    }

    /// Revoke a token of the org (optionally only if owned by `user_id`).
    pub async fn revoke_token(
        &self,
        org_id: &str,
        id: &str,
        user_id: Option<&str>,
    ) -> sqlx::Result<bool> {
        let res = sqlx::query(
            "UPDATE identity_tokens SET revoked_at_ms = $4 \
             WHERE org_id = $1 AND id = $2 AND ($3 = '' OR user_id = $3) AND revoked_at_ms IS NULL",
        )
        .bind(org_id)
        .bind(id)
        .bind(user_id.unwrap_or(""))
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Audit actions recorded for an org, oldest first (for tests and the later move).
    pub async fn audit_actions(&self, org_id: &str) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT action, outcome FROM identity_audit WHERE org_id = $1 OR org_id = '' ORDER BY id")
            .bind(org_id)
            .fetch_all(self.db.pool())
            .await
    }

    /// Which backend (for the rare backend-specific statement).
    pub fn backend(&self) -> Backend {
        self.db.backend()
    }
}
