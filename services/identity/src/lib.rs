//! The identity service (`lattice.identity.v1`): organisations, users with argon2id
//! passwords, groups of users, two-step login with TOTP, server-side sessions,
//! operator API tokens, throttling and lockout, and the audit trail of every auth
//! event.
//!
//! The service owns its tables (`identity_*`) and their migrations; it is reached
//! only over gRPC with an internal principal (see `lattice_core::auth`).

pub mod error;
pub mod grpc;
pub mod input;
pub mod password;
pub mod service;
pub mod store;
pub mod totp;

use std::sync::Arc;

use lattice_core::cache::Cache;
use lattice_core::config::IdentityConfig;
use lattice_core::crypto::{MasterKey, Sealer};
use lattice_core::db::{CORE_MIGRATIONS, Db, MigrationSet};

pub use error::IdentityError;
pub use service::{BootstrapAdmin, Identity};

/// Every migration set the identity database needs, in order.
pub fn migration_sets() -> Vec<MigrationSet> {
    vec![CORE_MIGRATIONS, store::migrations()]
}

/// Build the identity service over an already migrated database.
pub async fn build(
    db: Db,
    master_key: &MasterKey,
    cache: Cache,
    cfg: IdentityConfig,
    mfa_secret: &[u8],
) -> anyhow::Result<Identity> {
    let sealer = Sealer::open(&db, master_key).await?;
    let store = store::Store::new(db);
    let audit = Arc::new(lattice_core::audit::TableAudit::new(
        store.db().clone(),
        "identity_audit",
    ));
    Ok(Identity::new(store, sealer, cache, cfg, mfa_secret, audit)?)
}

impl Identity {
    /// Session idle timeout and max age, seconds (for cookie attributes).
    pub fn session_limits_s(&self) -> (i64, i64) {
        let cfg = self.config();
        (
            i64::try_from(cfg.session_idle_timeout_s).unwrap_or(i64::MAX),
            i64::try_from(cfg.session_max_age_s).unwrap_or(i64::MAX),
        )
    }
}
