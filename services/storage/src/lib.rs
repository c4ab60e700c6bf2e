//! The storage service (`lattice.storage.v1`): KV buckets with conditional writes
//! and TTLs, static-site buckets published as content-addressed deployments that
//! activate atomically, host bindings, and scoped storage access tokens. The gateway
//! serves bound hosts from it.
//!
//! The service owns its tables (`storage_*`) and migrations; blobs live in an
//! `object_store` (local directory or S3 / Azure Blob / GCS).

pub mod blobs;
pub mod error;
pub mod grpc;
pub mod input;
pub mod model;
pub mod service;
pub mod store;

use std::time::Duration;

use lattice_core::db::{CORE_MIGRATIONS, MigrationSet};
use tokio_util::sync::CancellationToken;

pub use error::StorageError;
pub use service::{Limits, Storage};

/// Every migration set the storage database needs, in order.
pub fn migration_sets() -> Vec<MigrationSet> {
    vec![CORE_MIGRATIONS, store::migrations()]
}

/// Delete expired KV entries every minute, and evict cached storage-token grants
/// that any replica revoked, until `shutdown`. Sweep failures are logged and retried
/// on the next tick (reads already hide expired entries).
pub async fn run_sweeper(storage: Storage, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut revoked = storage
        .cache()
        .listen::<lattice_proto::events::v1::StorageTokenRevoked>();
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = revoked.recv() => match m {
                Ok(event) => storage.forget_grant(&event.token_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => storage.forget_all_grants(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sweep.tick() => match storage.sweep_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept expired KV entries"),
                Err(err) => {
                    tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "KV sweep failed")
                }
            },
        }
    }
}
