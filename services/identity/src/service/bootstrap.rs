//! First start: the `default` org and its `admin` user (a member of its `admins`
//! group), when no user exists.

use lattice_core::audit::{Actor, Outcome};
use lattice_core::crypto::random_secret;

use super::{Identity, Result, validate_password};
use crate::input::ADMINS_GROUP;

/// The bootstrap admin, for the one-time start-up message.
#[derive(Debug)]
pub struct BootstrapAdmin {
    /// Always `admin`.
    pub username: String,
    /// The generated password (None when it came from configuration).
    pub password: Option<String>,
}

impl Identity {
    /// First start: when no user exists, create org `default` and user `admin` with
    /// scopes `*` and `orgs:admin` (the platform admin), a member of the org's `admins` group. Returns the password when it
    /// was generated here (to print once).
    pub async fn bootstrap(&self, password: Option<String>) -> Result<Option<BootstrapAdmin>> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let org_id = self.store.ensure_org("default").await?;
        let (password, generated) = match password {
            Some(p) => (p, false),
            None => (random_secret("").chars().take(24).collect(), true),
        };
        validate_password(&password)?;
        let hash = self.passwords.hash(password.clone()).await?;
        match self
            .store
            .insert_user_in_groups(
                &org_id,
                "admin",
                &hash,
                &["*".to_owned(), "orgs:admin".to_owned()],
                &[ADMINS_GROUP],
            )
            .await
        {
            Ok(user) => {
                self.audit(
                    Actor {
                        org_id: &org_id,
                        id: "service:bootstrap",
                        client_ip: "",
                    },
                    "user.create",
                    &user.id,
                    Outcome::Success,
                    serde_json::json!({"username": "admin", "bootstrap": true, "groups": [ADMINS_GROUP]}),
                )
                .await;
                Ok(Some(BootstrapAdmin {
                    username: "admin".into(),
                    password: generated.then_some(password),
                }))
            }
            // Another replica bootstrapped at the same moment.
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
