//! Plumbing shared by every Lattice service: configuration, database access and
//! migrations, cache and event bus, sealing of secrets at rest, the internal
//! principal carried between services, error codes, telemetry and shutdown.
//!
//! Nothing in here knows about a particular service's domain.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod org_data;
pub mod scope;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use error::ErrorCode;
