//! The policy service (`lattice.policy.v1`): Cedar policies that decide who may reach
//! which port of which node, run which task, read which secret and approve which
//! plan. Default deny; a satisfied `forbid` always wins.
//!
//! `model` parses and validates policy text against the shipped schema (strict
//! mode), `engine` decides with an index over the statements' scopes, `store` keeps
//! the policies per org, `service` is the domain (scopes, audit, the bus), `grpc`
//! the adapter.

pub mod changes;
pub mod engine;
pub mod error;
pub mod groups;
pub mod grpc;
pub mod guard;
pub mod model;
pub mod nodes;
pub mod service;
pub mod store;

use lattice_core::db::{CORE_MIGRATIONS, MigrationSet};
use lattice_proto::events::v1::{GroupsChanged, PoliciesChanged};
use tokio_util::sync::CancellationToken;

pub use error::PolicyError;
pub use service::Policies;

/// Every migration set the policy database needs, in order.
pub fn migration_sets() -> Vec<MigrationSet> {
    vec![CORE_MIGRATIONS, store::migrations()]
}

/// Rebuild an org's decisions when any replica changes its policies, until
/// `shutdown`.
pub async fn run_event_listener(
    policies: Policies,
    cache: lattice_core::cache::Cache,
    shutdown: CancellationToken,
) {
    let mut changed = cache.listen::<PoliciesChanged>();
    let mut groups = cache.listen::<GroupsChanged>();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            m = groups.recv() => match m {
                Ok(GroupsChanged { org_id }) => policies.forget_groups(&org_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => policies.forget_all_groups(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            m = changed.recv() => match m {
                Ok(PoliciesChanged { org_id }) => policies.forget(&org_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => policies.forget_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
