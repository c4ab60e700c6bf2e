//! `/api/v1/static/{bucket}/...`: publish a site (an archive upload), list and
//! activate deployments (rollback), put and delete single objects.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use http::{HeaderMap, StatusCode};
use lattice_proto::storage::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::archive::{ArchiveError, unpack};
use super::client;
use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query, RawBody};

/// The caller of a site route: an operator (session or API token), or a `static`
/// storage token whose bucket list covers the route's bucket — what CI and deploy
/// scripts use. For a storage token the gateway refuses early from its cached grant,
/// then relays the token itself (with the gateway's own principal): the storage
/// service verifies it and acts with only the `static:<access>` scope of its level,
/// on the buckets it covers.
#[derive(Debug, Clone)]
pub struct SiteCaller(pub Caller);

impl axum::extract::FromRequestParts<Arc<AppState>> for SiteCaller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse as _;
        let bearer = crate::caller::bearer(&parts.headers)
            .filter(|t| t.starts_with("lst_"))
            .map(str::to_owned);
        let Some(secret) = bearer else {
            return Caller::from_request_parts(parts, state)
                .await
                .map(SiteCaller)
                .map_err(|e| e.into_response());
        };
        let grant = super::host::authorize(state, &secret).await?;
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                crate::extract::refused(e.status(), "path", &e.body_text()).into_response()
            })?;
        let bucket = params
            .iter()
            .find(|(k, _)| *k == "bucket")
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let forbidden =
            |m: &str| ApiError::new(lattice_core::ErrorCode::PermissionDenied, m).into_response();
        // Coverage of the bucket (in the token's own org); the level is checked as
        // the scope below.
        grant
            .check(
                &grant.org_id,
                &bucket,
                pb::Surface::Static,
                pb::Access::Read,
                lattice_core::time::now_ms(),
            )
            .map_err(|refusal| forbidden(&refusal.to_string()))?;
        let principal = lattice_core::auth::Principal {
            sub: format!("storage_token:{}", grant.id),
            username: String::new(),
            org_id: grant.org_id.clone(),
            scopes: vec![format!("static:{}", grant.access().name())],
            auth: lattice_core::auth::AuthMethod::Token,
            credential_id: grant.id.clone(),
        };
        let client_ip = crate::caller::client_ip_from(
            &parts.headers,
            parts.extensions.get::<crate::caller::PeerAddr>(),
            state.cfg.trust_forwarded_for,
        );
        Ok(SiteCaller(Caller {
            verified: Arc::new(crate::caller::Verified {
                principal,
                org_name: String::new(),
                totp_enabled: false,
                expires_at_ms: grant.expires_at_ms,
                me_json: bytes::Bytes::new(),
            }),
            client_ip,
            storage_token: Some(Arc::from(secret.as_str())),
        }))
    }
}

/// Upload chunk size on the internal stream.
const CHUNK: usize = 1024 * 1024;

/// A deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deployment {
    /// Id.
    pub id: String,
    /// Bucket.
    pub bucket: String,
    /// Created.
    pub created_at_ms: i64,
    /// Files.
    pub file_count: i64,
    /// Bytes.
    pub total_bytes: i64,
    /// Being served.
    pub active: bool,
    /// Who published it.
    pub created_by: String,
}

/// Deployment list.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeploymentList {
    /// Newest first.
    pub deployments: Vec<Deployment>,
}

/// A file of a deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct StaticObject {
    /// Path inside the site.
    pub path: String,
    /// Content hash (the ETag).
    pub sha256: String,
    /// Bytes.
    pub size: i64,
    /// Media type.
    pub content_type: String,
}

/// Files of a deployment.
#[derive(Debug, Serialize, ToSchema)]
pub struct ObjectList {
    /// The deployment listed (null: nothing deployed yet).
    pub deployment_id: Option<String>,
    /// By path.
    pub objects: Vec<StaticObject>,
}

fn deployment(d: pb::Deployment) -> Deployment {
    Deployment {
        id: d.id,
        bucket: d.bucket,
        created_at_ms: d.created_at_ms,
        file_count: d.file_count,
        total_bytes: d.total_bytes,
        active: d.active,
        created_by: d.created_by,
    }
}

fn archive_error(e: ArchiveError) -> ApiError {
    match e {
        ArchiveError::TooLarge(m) => ApiError::new(
            lattice_core::ErrorCode::PayloadTooLarge,
            format!("archive: {m}"),
        ),
        other => ApiError::bad_request(other.to_string()),
    }
}

/// The internal upload stream: a header, then each file's start and data chunks.
fn upload_stream(
    header: pb::UploadHeader,
    files: Vec<(String, String, Bytes)>,
) -> impl futures::Stream<Item = pb::UploadChunk> + Send {
    use pb::upload_chunk::Part;
    let mut parts = vec![pb::UploadChunk {
        part: Some(Part::Header(header)),
    }];
    for (path, content_type, data) in files {
        parts.push(pb::UploadChunk {
            part: Some(Part::File(pb::FileStart { path, content_type })),
        });
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + CHUNK).min(data.len());
            parts.push(pb::UploadChunk {
                part: Some(Part::Data(data.slice(offset..end))),
            });
            offset = end;
        }
    }
    futures::stream::iter(parts)
}

/// Query of a deploy.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Activate at once (default true).
    #[serde(default = "yes")]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

/// Publish a site: the body is a tar, tar.gz or zip archive of its files. Stored
/// content-addressed and, unless `activate=false`, activated atomically (`static:write`).
#[utoipa::path(post, path = "/api/v1/static/{bucket}/deployments", tag = "static",
    params(("bucket" = String, Path), DeployQuery),
    request_body(content = inline(RawBody), content_type = "application/octet-stream", description = "A tar, tar.gz or zip archive (recognised by its content; any Content-Type)"),
    responses((status = 201, body = Deployment),
        (status = 400, body = crate::error::ErrorBody, description = "Not a tar, tar.gz or zip archive, a bad file path in it, no file, an invalid bucket name or query"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"), (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, not a static one"),
        (status = 413, body = crate::error::ErrorBody, description = "The body is over `gateway.upload_limit_bytes`, or the files over a storage limit")))]
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path(bucket): Path<String>,
    Query(q): Query<DeployQuery>,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    // Refuse before spending CPU on unpacking for a caller who may not publish.
    caller.require("static:write")?;
    let mut storage = client(&state)?;
    let max_bytes = state.cfg.upload_limit_bytes as u64 * 4;
    let files = tokio::task::spawn_blocking(move || {
        unpack(
            &body,
            lattice_proto::storage::MAX_DEPLOYMENT_FILES,
            max_bytes,
        )
    })
    .await
    .map_err(|e| ApiError::new(lattice_core::ErrorCode::Internal, format!("unpack: {e}")))?
    .map_err(archive_error)?;
    let files = files
        .into_iter()
        .map(|f| (f.path, String::new(), f.data))
        .collect();
    let header = pb::UploadHeader {
        bucket,
        activate: q.activate,
        derive_from_active: false,
    };
    let d = storage
        .upload_deployment(caller.request(&state, upload_stream(header, files)))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(deployment(d))))
}

/// Deployments of a bucket, newest first (`static:read`).
#[utoipa::path(get, path = "/api/v1/static/{bucket}/deployments", tag = "static", params(("bucket" = String, Path)),
    responses((status = 200, body = DeploymentList),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `static:read`, or a storage token that does not cover the bucket"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"), (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, not a static one")))]
pub async fn list_deployments(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path(bucket): Path<String>,
) -> Result<Json<DeploymentList>, ApiError> {
    let r = client(&state)?
        .list_deployments(caller.request(&state, pb::ListDeploymentsRequest { bucket }))
        .await?
        .into_inner();
    Ok(Json(DeploymentList {
        deployments: r.deployments.into_iter().map(deployment).collect(),
    }))
}

/// Activate a deployment: publish it, or roll back to it (`static:write`).
#[utoipa::path(post, path = "/api/v1/static/{bucket}/deployments/{id}/activate", tag = "static",
    params(("bucket" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Deployment),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org, or no such deployment of it"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, not a static one")))]
pub async fn activate(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path((bucket, id)): Path<(String, String)>,
) -> Result<Json<Deployment>, ApiError> {
    let d = client(&state)?
        .activate_deployment(caller.request(
            &state,
            pb::ActivateDeploymentRequest {
                bucket,
                deployment_id: id,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(deployment(d)))
}

/// Put one object (raw body; `Content-Type` kept): a new deployment with it, activated (`static:write`).
#[utoipa::path(put, path = "/api/v1/static/{bucket}/objects/{path}", tag = "static",
    params(("bucket" = String, Path), ("path" = String, Path)),
    request_body(content = inline(RawBody), content_type = "application/octet-stream", description = "The file; its `Content-Type` is kept"),
    responses((status = 200, body = Deployment),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name, an invalid path or Content-Type"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, or the site changed during the edit (retry)"),
        (status = 413, body = crate::error::ErrorBody, description = "The body is over `gateway.upload_limit_bytes`, or the file or the site over a storage limit")))]
pub async fn put_object(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path((bucket, path)): Path<(String, String)>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Deployment>, ApiError> {
    caller.require("static:write")?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != "application/octet-stream")
        .unwrap_or("")
        .to_owned();
    let header = pb::UploadHeader {
        bucket,
        activate: true,
        derive_from_active: true,
    };
    let d = client(&state)?
        .put_object(caller.request(
            &state,
            upload_stream(header, vec![(path, content_type, body)]),
        ))
        .await?
        .into_inner();
    Ok(Json(deployment(d)))
}

/// Delete one object: a new deployment without it, activated (`static:write`).
#[utoipa::path(delete, path = "/api/v1/static/{bucket}/objects/{path}", tag = "static",
    params(("bucket" = String, Path), ("path" = String, Path)),
    responses((status = 200, body = Deployment),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name, or an invalid path"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org, or no such file in its active deployment"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, or the site changed during the edit (retry)")))]
pub async fn delete_object(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path((bucket, path)): Path<(String, String)>,
) -> Result<Json<Deployment>, ApiError> {
    let d = client(&state)?
        .delete_object(caller.request(&state, pb::DeleteObjectRequest { bucket, path }))
        .await?
        .into_inner();
    Ok(Json(deployment(d)))
}

/// Which deployment to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ObjectsQuery {
    /// Default: the active one.
    #[serde(default)]
    pub deployment: String,
}

/// Files of the active (or a named) deployment (`static:read`).
#[utoipa::path(get, path = "/api/v1/static/{bucket}/objects", tag = "static", params(("bucket" = String, Path), ObjectsQuery),
    responses((status = 200, body = ObjectList),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name, or an unknown query parameter"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `static:read`, or a storage token that does not cover the bucket"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org, or no such deployment of it"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a KV bucket, not a static one")))]
pub async fn list_objects(
    State(state): State<Arc<AppState>>,
    SiteCaller(caller): SiteCaller,
    Path(bucket): Path<String>,
    Query(q): Query<ObjectsQuery>,
) -> Result<Json<ObjectList>, ApiError> {
    let r = client(&state)?
        .list_objects(caller.request(
            &state,
            pb::ListObjectsRequest {
                bucket,
                deployment_id: q.deployment,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(ObjectList {
        deployment_id: (!r.deployment_id.is_empty()).then_some(r.deployment_id),
        objects: r
            .objects
            .into_iter()
            .map(|o| StaticObject {
                path: o.path,
                sha256: o.sha256,
                size: o.size,
                content_type: o.content_type,
            })
            .collect(),
    }))
}
