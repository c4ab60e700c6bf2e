//! The tunnel service (`lattice.tunnel.v1`, and the agent protocol
//! `lattice.agent.v1`): node enrollment with single-use join tokens, the agents'
//! outbound streams (heartbeats, host facts, metrics, logs, task dispatch), and the
//! proxy that carries HTTP to a node's local ports over its agent's stream, across
//! replicas through a Redis registry.

pub mod access;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod releases;
pub mod service;
pub mod store;

use lattice_core::db::{CORE_MIGRATIONS, MigrationSet};

pub use error::TunnelError;
pub use hub::Hub;
pub use service::{Nodes, Settings};

/// Every migration set the tunnel database needs, in order.
pub fn migration_sets() -> Vec<MigrationSet> {
    vec![CORE_MIGRATIONS, store::migrations()]
}
