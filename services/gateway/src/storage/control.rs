//! `/api/v1/buckets`, `/api/v1/kv/...`, `/api/v1/bindings`, `/api/v1/storage-tokens`.
//! Scope checks are the storage service's; this layer converts HTTP to gRPC.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use lattice_proto::storage::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{client, kv_etag, parse_if_match};
use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::json::ApiJson;

/// New bucket.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBucket {
    /// DNS label: 1-63 of a-z, 0-9, '-'.
    pub name: String,
    /// `kv` or `static`.
    pub surface: String,
    /// A kv bucket of secrets: values sealed at rest, never cached, and every read
    /// of a value an `AccessSecret` decision of the policies (default deny).
    #[serde(default)]
    pub secret: bool,
}

/// A bucket.
#[derive(Debug, Serialize, ToSchema)]
pub struct Bucket {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `kv` or `static`.
    pub surface: String,
    /// Created.
    pub created_at_ms: i64,
    /// Static: the active deployment.
    pub active_deployment_id: Option<String>,
    /// A kv bucket of secrets.
    pub secret: bool,
}

/// Bucket list.
#[derive(Debug, Serialize, ToSchema)]
pub struct BucketList {
    /// Buckets by name.
    pub buckets: Vec<Bucket>,
}

fn bucket(b: pb::Bucket) -> Bucket {
    Bucket {
        id: b.id,
        name: b.name,
        surface: b.surface,
        created_at_ms: b.created_at_ms,
        active_deployment_id: (!b.active_deployment_id.is_empty())
            .then_some(b.active_deployment_id),
        secret: b.secret,
    }
}

/// Create a bucket (`kv:admin` / `static:admin`).
#[utoipa::path(post, path = "/api/v1/buckets", tag = "storage", request_body = CreateBucket,
    responses((status = 201, body = Bucket),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid name or surface"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing the admin scope of the surface, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "The name is taken")))]
pub async fn create_bucket(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBucket>,
) -> Result<(StatusCode, Json<Bucket>), ApiError> {
    let b = client(&state)?
        .create_bucket(caller.request(
            &state,
            pb::CreateBucketRequest {
                name: body.name,
                surface: body.surface,
                secret: body.secret,
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(bucket(b))))
}

/// Filter for bucket listings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BucketQuery {
    /// `kv` or `static`.
    #[serde(default)]
    pub surface: String,
}

/// List buckets you may read.
#[utoipa::path(get, path = "/api/v1/buckets", tag = "storage", params(BucketQuery),
    responses((status = 200, body = BucketList),
        (status = 400, body = crate::error::ErrorBody, description = "An unknown query parameter, or a surface other than kv or static"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `kv:read` and `static:read` (or the one of the surface asked for)")))]
pub async fn list_buckets(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<BucketQuery>,
) -> Result<Json<BucketList>, ApiError> {
    let r = client(&state)?
        .list_buckets(caller.request(&state, pb::ListBucketsRequest { surface: q.surface }))
        .await?
        .into_inner();
    Ok(Json(BucketList {
        buckets: r.buckets.into_iter().map(bucket).collect(),
    }))
}

/// Delete a bucket and everything in it (admin of its surface).
#[utoipa::path(delete, path = "/api/v1/buckets/{name}", tag = "storage", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a bucket name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org")))]
pub async fn delete_bucket(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .delete_bucket(caller.request(&state, pb::DeleteBucketRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A KV entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct KvEntry {
    /// Key.
    pub key: String,
    /// The value (any JSON); absent in listings without `values=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Increases on every write; the ETag is `"<version>"`.
    pub version: i64,
    /// Last write.
    pub updated_at_ms: i64,
    /// Expiry (null: none).
    pub expires_at_ms: Option<i64>,
    /// In a listing of a secret bucket: the value is withheld (read the key).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
}

/// Convert a stored entry; the value is JSON the storage service validated.
pub fn kv_entry(e: pb::KvEntry, with_value: bool) -> KvEntry {
    KvEntry {
        key: e.key,
        value: (with_value && !e.withheld)
            .then(|| serde_json::from_str(&e.value_json).unwrap_or(serde_json::Value::Null)),
        version: e.version,
        updated_at_ms: e.updated_at_ms,
        expires_at_ms: (e.expires_at_ms != 0).then_some(e.expires_at_ms),
        withheld: e.withheld,
    }
}

fn with_etag(entry: KvEntry) -> Response {
    let etag = kv_etag(entry.version);
    let mut resp = Json(entry).into_response();
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(http::header::ETAG, v);
    }
    resp
}

/// A value to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutValue {
    /// Any JSON.
    pub value: serde_json::Value,
    /// Seconds until the entry expires (absent or 0: never).
    #[serde(default)]
    pub ttl_s: i64,
}

/// The write condition from `If-Match` / `If-None-Match: *`.
pub fn write_condition(headers: &HeaderMap) -> Result<Option<pb::WriteCondition>, ApiError> {
    if let Some(v) = headers.get(http::header::IF_NONE_MATCH) {
        let v = v.to_str().unwrap_or_default().trim();
        if v != "*" {
            return Err(ApiError::bad_request(
                "for writes, If-None-Match supports only \"*\" (create only)",
            ));
        }
        return Ok(Some(pb::WriteCondition {
            condition: Some(pb::write_condition::Condition::Absent(true)),
        }));
    }
    match headers.get(http::header::IF_MATCH) {
        Some(v) => Ok(Some(super::version_condition(parse_if_match(
            v.to_str().unwrap_or_default(),
        )?))),
        None => Ok(None),
    }
}

/// Write a value (`kv:write`). `If-Match: "<version>"` or `If-None-Match: *` make it conditional (412 when not met).
#[utoipa::path(put, path = "/api/v1/kv/{bucket}/{key}", tag = "kv", request_body = PutValue,
    params(("bucket" = String, Path), ("key" = String, Path, description = "may contain '/'")),
    responses((status = 200, body = KvEntry),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid bucket name, key or ttl_s, or an If-Match / If-None-Match it does not take"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"), (status = 409, body = crate::error::ErrorBody, description = "The bucket is a static bucket, not a KV one"),
        (status = 412, body = crate::error::ErrorBody, description = "The `If-Match` version is not current, or `If-None-Match: *` found the key"),
        (status = 413, body = crate::error::ErrorBody, description = "The body is over `gateway.body_limit_bytes`, or the value over 512 KiB")))]
pub async fn kv_put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PutValue>,
) -> Result<Response, ApiError> {
    let condition = write_condition(&headers)?;
    let e = client(&state)?
        .kv_put(caller.request(
            &state,
            pb::KvPutRequest {
                bucket,
                key,
                value_json: body.value.to_string(),
                condition,
                ttl_s: body.ttl_s,
            },
        ))
        .await?
        .into_inner();
    Ok(with_etag(kv_entry(e, true)))
}

/// Read a value (`kv:read`), with its `ETag`.
#[utoipa::path(get, path = "/api/v1/kv/{bucket}/{key}", tag = "kv", params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = KvEntry),
        (status = 400, body = crate::error::ErrorBody, description = "An invalid bucket name or key"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `kv:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org, or no such key"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a static bucket, not a KV one")))]
pub async fn kv_get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let e = client(&state)?
        .kv_get(caller.request(&state, pb::KvGetRequest { bucket, key }))
        .await?
        .into_inner();
    Ok(with_etag(kv_entry(e, true)))
}

/// Delete a value (`kv:write`); `If-Match` makes it conditional.
#[utoipa::path(delete, path = "/api/v1/kv/{bucket}/{key}", tag = "kv", params(("bucket" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = crate::error::ErrorBody, description = "An invalid bucket name or key, or an If-Match that is not an ETag of this API"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org, or no such key"),
        (status = 409, body = crate::error::ErrorBody, description = "The bucket is a static bucket, not a KV one"),
        (status = 412, body = crate::error::ErrorBody, description = "The `If-Match` version is not current")))]
pub async fn kv_delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let if_version = headers
        .get(http::header::IF_MATCH)
        .map(|v| parse_if_match(v.to_str().unwrap_or_default()))
        .transpose()?;
    client(&state)?
        .kv_delete(caller.request(
            &state,
            pb::KvDeleteRequest {
                bucket,
                key,
                if_version,
            },
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Listing parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KvListQuery {
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: String,
    /// From `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: String,
    /// Page size, 1 to 1000 (default 100).
    #[serde(default)]
    pub limit: i32,
    /// Include values.
    #[serde(default)]
    pub values: bool,
}

/// A page of entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct KvPage {
    /// In key order.
    pub entries: Vec<KvEntry>,
    /// Pass as `cursor` for the next page; null when done.
    pub next_cursor: Option<String>,
}

/// List keys in order (`kv:read`).
#[utoipa::path(get, path = "/api/v1/kv/{bucket}", tag = "kv", params(("bucket" = String, Path), KvListQuery),
    responses((status = 200, body = KvPage),
        (status = 400, body = crate::error::ErrorBody, description = "An invalid bucket name, an unknown or invalid query parameter (limit 1 to 1000, prefix and cursor at most 512 bytes)"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `kv:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"), (status = 409, body = crate::error::ErrorBody, description = "The bucket is a static bucket, not a KV one")))]
pub async fn kv_list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(bucket): Path<String>,
    Query(q): Query<KvListQuery>,
) -> Result<Json<KvPage>, ApiError> {
    let values = q.values;
    let r = client(&state)?
        .kv_list(caller.request(
            &state,
            pb::KvListRequest {
                bucket,
                prefix: q.prefix,
                cursor: q.cursor,
                limit: q.limit,
                values,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(KvPage {
        entries: r.entries.into_iter().map(|e| kv_entry(e, values)).collect(),
        next_cursor: (!r.next_cursor.is_empty()).then_some(r.next_cursor),
    }))
}

/// New binding.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBinding {
    /// Host name or IP the requests carry in `Host`.
    pub host: String,
    /// Bucket to serve.
    pub bucket: String,
}

/// A host binding.
#[derive(Debug, Serialize, ToSchema)]
pub struct Binding {
    /// Host.
    pub host: String,
    /// Bucket.
    pub bucket: String,
    /// `kv` or `static`.
    pub surface: String,
    /// Serving on.
    pub enabled: bool,
    /// Created.
    pub created_at_ms: i64,
}

/// Binding list.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindingList {
    /// By host.
    pub bindings: Vec<Binding>,
}

fn binding(b: pb::Binding) -> Binding {
    Binding {
        host: b.host,
        bucket: b.bucket,
        surface: b.surface,
        enabled: b.enabled,
        created_at_ms: b.created_at_ms,
    }
}

/// Bind a host to a bucket (admin of the bucket's surface). A host is bound at most once.
#[utoipa::path(post, path = "/api/v1/bindings", tag = "storage", request_body = CreateBinding,
    responses((status = 201, body = Binding),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid host or bucket name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such bucket in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The host is already bound, or serves the API")))]
pub async fn create_binding(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateBinding>,
) -> Result<(StatusCode, Json<Binding>), ApiError> {
    if super::host::is_reserved(&state.host_caches, &body.host) {
        return Err(ApiError::new(
            lattice_core::ErrorCode::Conflict,
            format!(
                "host {:?} serves the API and cannot be bound to a bucket",
                body.host
            ),
        ));
    }
    let b = client(&state)?
        .create_binding(caller.request(
            &state,
            pb::CreateBindingRequest {
                host: body.host,
                bucket: body.bucket,
            },
        ))
        .await?
        .into_inner();
    super::host::forget_host(&state, &b.host);
    Ok((StatusCode::CREATED, Json(binding(b))))
}

/// List bindings.
#[utoipa::path(get, path = "/api/v1/bindings", tag = "storage",
    responses((status = 200, body = BindingList), (status = 403, body = crate::error::ErrorBody, description = "Missing `kv:read` and `static:read`")))]
pub async fn list_bindings(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<BindingList>, ApiError> {
    let r = client(&state)?
        .list_bindings(caller.request(&state, pb::ListBindingsRequest {}))
        .await?
        .into_inner();
    Ok(Json(BindingList {
        bindings: r.bindings.into_iter().map(binding).collect(),
    }))
}

/// Remove a binding.
#[utoipa::path(delete, path = "/api/v1/bindings/{host}", tag = "storage", params(("host" = String, Path)),
    responses((status = 204, description = "Removed"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a host name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such binding in your org")))]
pub async fn delete_binding(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(host): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .delete_binding(caller.request(&state, pb::DeleteBindingRequest { host: host.clone() }))
        .await?;
    super::host::forget_host(&state, &host);
    Ok(StatusCode::NO_CONTENT)
}

/// Binding changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBinding {
    /// Serve (true) or not.
    pub enabled: bool,
}

/// Enable or disable a binding.
#[utoipa::path(patch, path = "/api/v1/bindings/{host}", tag = "storage", params(("host" = String, Path)), request_body = PatchBinding,
    responses((status = 200, body = Binding),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or not a host name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such binding in your org")))]
pub async fn patch_binding(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(host): Path<String>,
    ApiJson(body): ApiJson<PatchBinding>,
) -> Result<Json<Binding>, ApiError> {
    let b = client(&state)?
        .set_binding_enabled(caller.request(
            &state,
            pb::SetBindingEnabledRequest {
                host: host.clone(),
                enabled: body.enabled,
            },
        ))
        .await?
        .into_inner();
    super::host::forget_host(&state, &host);
    Ok(Json(binding(b)))
}

/// New storage token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStorageToken {
    /// `kv` or `static`.
    pub surface: String,
    /// `read`, `write` or `admin`.
    pub access: String,
    /// Bucket names, or `["*"]` for all buckets of the surface.
    pub buckets: Vec<String>,
    /// Label.
    #[serde(default)]
    pub name: String,
    /// Lifetime in seconds (absent or 0: none).
    #[serde(default)]
    pub expires_in_s: i64,
}

/// A storage token (its secret only once, at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageToken {
    /// Id.
    pub id: String,
    /// Surface.
    pub surface: String,
    /// Access level.
    pub access: String,
    /// Buckets.
    pub buckets: Vec<String>,
    /// Label.
    pub name: String,
    /// Created.
    pub created_at_ms: i64,
    /// Expiry (null: none).
    pub expires_at_ms: Option<i64>,
    /// The secret: only in the creation answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Storage token list.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageTokenList {
    /// Newest first.
    pub tokens: Vec<StorageToken>,
}

fn storage_token(t: pb::StorageToken, secret: Option<String>) -> StorageToken {
    StorageToken {
        id: t.id,
        surface: t.surface,
        access: t.access,
        buckets: t.buckets,
        name: t.name,
        created_at_ms: t.created_at_ms,
        expires_at_ms: (t.expires_at_ms != 0).then_some(t.expires_at_ms),
        token: secret,
    }
}

/// Create a storage token (admin of its surface); the secret is shown once.
#[utoipa::path(post, path = "/api/v1/storage-tokens", tag = "storage", request_body = CreateStorageToken,
    responses((status = 201, body = StorageToken),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid surface, access, bucket list, name or expires_in_s"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing the admin scope of the surface, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "A named bucket does not exist in your org")))]
pub async fn create_storage_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateStorageToken>,
) -> Result<(StatusCode, Json<StorageToken>), ApiError> {
    let r = client(&state)?
        .create_storage_token(caller.request(
            &state,
            pb::CreateStorageTokenRequest {
                surface: body.surface,
                access: body.access,
                buckets: body.buckets,
                name: body.name,
                expires_in_s: body.expires_in_s,
            },
        ))
        .await?
        .into_inner();
    let t = r.token.ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Internal,
            "storage returned no token",
        )
    })?;
    Ok((StatusCode::CREATED, Json(storage_token(t, Some(r.secret)))))
}

/// List storage tokens (admin of their surface).
#[utoipa::path(get, path = "/api/v1/storage-tokens", tag = "storage",
    responses((status = 200, body = StorageTokenList), (status = 403, body = crate::error::ErrorBody, description = "Missing `kv:admin` and `static:admin`")))]
pub async fn list_storage_tokens(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<StorageTokenList>, ApiError> {
    let r = client(&state)?
        .list_storage_tokens(caller.request(&state, pb::ListStorageTokensRequest {}))
        .await?
        .into_inner();
    Ok(Json(StorageTokenList {
        tokens: r
            .tokens
            .into_iter()
            .map(|t| storage_token(t, None))
            .collect(),
    }))
}

/// Revoke a storage token.
#[utoipa::path(delete, path = "/api/v1/storage-tokens/{id}", tag = "storage", params(("id" = String, Path)),
    responses((status = 204, description = "Revoked"),
        (status = 404, body = crate::error::ErrorBody, description = "No such live storage token in your org")))]
pub async fn revoke_storage_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .revoke_storage_token(
            caller.request(&state, pb::RevokeStorageTokenRequest { id: id.clone() }),
        )
        .await?;
    super::host::forget_token(&state, &id);
    Ok(StatusCode::NO_CONTENT)
}
