//! The tasks service (`lattice.tasks.v1`): the durable task queue agents work from
//! (claims with leases and a fencing epoch, rescue after lease expiry, retries with
//! backoff, idempotent enqueues), the hash-chained audit log every service records
//! into, and the outbox that pushes events to a webhook.

pub mod error;
pub mod grpc;
pub mod input;
pub mod nodes;
pub mod outbox;
pub mod service;
pub mod store;

use std::time::Duration;

use lattice_core::db::{CORE_MIGRATIONS, MigrationSet};
use lattice_core::time::now_ms;
use tokio_util::sync::CancellationToken;

pub use error::TaskError;
pub use service::Tasks;

/// Every migration set the tasks database needs, in order.
pub fn migration_sets() -> Vec<MigrationSet> {
    vec![CORE_MIGRATIONS, store::migrations()]
}

/// The background work of one replica until `shutdown`: rescue tasks whose lease
/// expired, wake agents whose backoff ended, and move queued audit events onto the
/// chain. Failures are logged and retried on the next tick.
pub async fn run_background(tasks: Tasks, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut last_due_scan = now_ms();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            _ = tasks.chain_wake.notified() => {
                // Let a burst of events gather: one batch chains them all.
                tokio::time::sleep(Duration::from_millis(10)).await;
                if let Err(err) = tasks.store().chain_pending(10_000).await {
                    tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "audit: chaining failed");
                }
                continue;
            }
        }
        match tasks.store().rescue_expired(1_000).await {
            Ok(nodes) => {
                for node in nodes {
                    tasks.notify_runnable(&node, None).await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "tasks: lease rescue failed")
            }
        }
        let now = now_ms();
        match tasks.store().nodes_due_between(last_due_scan, now).await {
            Ok(nodes) => {
                last_due_scan = now;
                for node in nodes {
                    tasks.notify_runnable(&node, None).await;
                }
            }
            Err(err) => {
                tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "tasks: due scan failed")
            }
        }
        if let Err(err) = tasks.store().chain_pending(10_000).await {
            tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "audit: chaining failed");
        }
    }
}
