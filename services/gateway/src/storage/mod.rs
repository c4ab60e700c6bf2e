//! Storage hosting at the gateway: the control surface under `/api/v1` (buckets, KV,
//! static deployments, bindings, storage tokens) and serving bound hosts.

pub mod archive;
pub mod control;
pub mod host;
pub mod sites;

use lattice_proto::storage::v1::storage_service_client::StorageServiceClient;
use tonic::transport::Channel;

use crate::AppState;
use crate::error::ApiError;

/// The storage client, or 503 when this gateway has no storage service configured.
pub fn client(state: &AppState) -> Result<StorageServiceClient<Channel>, ApiError> {
    state.storage.clone().ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Unavailable,
            "storage is not configured on this gateway (run the storage service or set gateway.storage_url)",
        )
    })
}

/// `"<version>"`, the ETag of a KV entry.
pub fn kv_etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// The write condition "this version is current".
pub fn version_condition(version: i64) -> lattice_proto::storage::v1::WriteCondition {
    lattice_proto::storage::v1::WriteCondition {
        condition: Some(lattice_proto::storage::v1::write_condition::Condition::Version(version)),
    }
}

/// The version named by an `If-Match` value.
pub fn parse_if_match(value: &str) -> Result<i64, ApiError> {
    value
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map_err(|_| {
            ApiError::bad_request(format!(
                "If-Match {value:?} is not an ETag from this API (\"<version>\")"
            ))
        })
}
