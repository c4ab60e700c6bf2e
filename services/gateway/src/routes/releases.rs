//! `/api/v1/agent-releases`: agent binaries for `agent.update` plans. The tunnel
//! service stores and signs them; this layer streams the upload through.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use futures::StreamExt as _;
use http::StatusCode;
use lattice_proto::tunnel::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::{Path, RawBody};
use crate::routes::nodes::client;

/// An agent release: the binary's identity, signed with the server's release key.
#[derive(Debug, Serialize, ToSchema)]
pub struct Release {
    /// `1.4.0` or `1.4.0-rc.1`.
    pub version: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// `sha256:<hex>` of the binary.
    pub sha256: String,
    pub size: i64,
    /// base64 Ed25519 signature (see docs/changes.md).
    pub signature: String,
    pub uploaded_at_ms: i64,
    /// Username.
    pub uploaded_by: String,
}

fn release(r: pb::Release) -> Release {
    Release {
        version: r.version,
        arch: r.arch,
        sha256: r.sha256,
        size: r.size,
        signature: r.signature,
        uploaded_at_ms: r.uploaded_at_ms,
        uploaded_by: r.uploaded_by,
    }
}

/// The releases, and the key agents pin.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseList {
    pub releases: Vec<Release>,
    /// base64 of the 32-byte Ed25519 public key agents pin at enrollment.
    pub release_key: String,
}

/// Which release an upload is.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// What the binary's `lattice-agent version` prints.
    pub version: String,
    /// `x86_64` (default) or `aarch64`.
    #[serde(default = "x86_64")]
    pub arch: String,
}

fn x86_64() -> String {
    "x86_64".into()
}

/// Upload an agent release binary (`releases:admin`). Stored, signed with the
/// release key, immutable: the same version and arch again is 409.
#[utoipa::path(post, path = "/api/v1/agent-releases", tag = "nodes",
    params(UploadQuery),
    request_body(content = inline(RawBody), content_type = "application/octet-stream", description = "The lattice-agent binary"),
    responses((status = 201, body = Release),
        (status = 400, body = crate::error::ErrorBody, description = "Not a release version or a known arch, or an empty body"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `releases:admin`"),
        (status = 409, body = crate::error::ErrorBody, description = "That version and arch exist"),
        (status = 413, body = crate::error::ErrorBody, description = "Over 256 MiB")))]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Release>), ApiError> {
    // Refuse before reading a large body from a caller who may not upload.
    caller.require("releases:admin")?;
    let head = pb::UploadReleaseChunk {
        chunk: Some(pb::upload_release_chunk::Chunk::Head(
            pb::UploadReleaseHead {
                version: q.version,
                arch: q.arch,
            },
        )),
    };
    // A broken upload sends an empty message, which the service refuses: nothing
    // of a half-received binary is stored.
    let data = body.into_data_stream().map(|frame| pb::UploadReleaseChunk {
        chunk: frame.ok().map(pb::upload_release_chunk::Chunk::Data),
    });
    let chunks = futures::stream::iter([head]).chain(data);
    let r = client(&state)?
        .upload_release(caller.request(&state, chunks))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(release(r))))
}

/// The releases, newest first, and the release key (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/agent-releases", tag = "nodes",
    responses((status = 200, body = ReleaseList), (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<ReleaseList>, ApiError> {
    let r = client(&state)?
        .list_releases(caller.request(&state, pb::ListReleasesRequest {}))
        .await?
        .into_inner();
    Ok(Json(ReleaseList {
        releases: r.releases.into_iter().map(release).collect(),
        release_key: r.release_key,
    }))
}

/// One release (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/agent-releases/{version}/{arch}", tag = "nodes",
    responses((status = 200, body = Release),
        (status = 400, body = crate::error::ErrorBody, description = "Not a release version or a known arch"),
        (status = 404, body = crate::error::ErrorBody, description = "No such release")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((version, arch)): Path<(String, String)>,
) -> Result<Json<Release>, ApiError> {
    let r = client(&state)?
        .get_release(caller.request(&state, pb::GetReleaseRequest { version, arch }))
        .await?
        .into_inner();
    Ok(Json(release(r)))
}
