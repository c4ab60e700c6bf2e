//! Serving bound hosts. A request whose `Host` has an enabled binding is answered
//! from that bucket instead of the API: static buckets are public read (GET/HEAD),
//! KV buckets need a storage token.
//!
//! The hot path touches no database: the host's binding (short TTL, evicted by bus
//! events), the path's resolution within a deployment and the blob bytes are cached
//! here. Deployments never change once written and blobs are named by their hash, so
//! those two caches need no invalidation; a deploy or rollback changes only which
//! deployment the host points at, which is why a reader sees the old site or the new
//! one, never a mix.

use std::borrow::Cow;
use std::hash::BuildHasher as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use lattice_core::time::now_ms;
use lattice_proto::events::v1::{HostChanged, StorageTokenRevoked};
use lattice_proto::storage::v1 as pb;
use lattice_proto::storage::{host_cache_key, kv_cache_key};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::client;
use crate::AppState;
use crate::error::ApiError;

/// What a host is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// Owning org.
    pub org_id: String,
    /// Bucket id.
    pub bucket_id: String,
    /// Bucket name.
    pub bucket: String,
    /// Which surface the bucket serves.
    pub surface: pb::Surface,
    /// Static: active deployment ("" when none).
    pub deployment_id: String,
    /// KV: the bucket holds secrets (its values are never cached).
    pub secret: bool,
}

impl HostEntry {
    /// The binding a resolution names (None: no enabled binding).
    fn of(r: pb::ResolveHostResponse) -> Option<Self> {
        r.found.then(|| Self {
            surface: r.surface(),
            org_id: r.org_id,
            bucket_id: r.bucket_id,
            bucket: r.bucket,
            deployment_id: r.deployment_id,
            secret: r.secret,
        })
    }
}

/// How a path resolved inside one deployment (immutable, cached for good).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resolved {
    /// 200, 301 or 404.
    pub status: u16,
    /// Redirect target (301).
    pub redirect_to: String,
    /// The file to send (200, or the site's 404 page).
    pub sha256: String,
    /// Its size.
    pub size: i64,
    /// Its media type.
    pub content_type: String,
}

/// A resolution with the response headers it always gets, made once.
#[derive(Debug)]
pub struct PathEntry {
    /// The deployment and site path it resolves (checked on every hit: the cache is
    /// keyed by their hash).
    deployment_id: String,
    path: String,
    /// The file's bytes, kept here when small (one cache lookup per request instead
    /// of two). Blobs are named by their hash, so this never goes stale.
    body: OnceLock<Bytes>,
    /// The resolution.
    pub resolved: Resolved,
    /// `"<sha256>"`.
    pub etag: HeaderValue,
    /// The media type (one that is no valid header value becomes
    /// `application/octet-stream`).
    pub content_type: HeaderValue,
}

impl PathEntry {
    fn new(deployment_id: &str, path: &str, resolved: Resolved) -> Self {
        let etag = HeaderValue::from_str(&format!("\"{}\"", resolved.sha256))
            .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        let content_type = content_type_header(&resolved.content_type);
        Self {
            deployment_id: deployment_id.to_owned(),
            path: path.to_owned(),
            body: OnceLock::new(),
            resolved,
            etag,
            content_type,
        }
    }

    /// Whether this entry keeps its file's bytes.
    fn keeps_body(&self) -> bool {
        usize::try_from(self.resolved.size).is_ok_and(|n| n <= MAX_INLINE_BODY)
    }

    /// Bytes this entry holds in the cache, its body included once it is kept.
    fn weight(&self) -> u32 {
        let body = if self.keeps_body() {
            MAX_INLINE_BODY.min(usize::try_from(self.resolved.size).unwrap_or(0))
        } else {
            0
        };
        u32::try_from(self.deployment_id.len() + self.path.len() + body + 256).unwrap_or(u32::MAX)
    }
}

/// The gateway's storage caches.
pub struct HostCaches {
    /// Host -> binding (None: no enabled binding). Short TTL; bus events evict.
    pub hosts: moka::sync::Cache<String, Option<Arc<HostEntry>>>,
    /// hash(deployment, path) -> resolution (with small bodies). Immutable.
    pub paths: moka::sync::Cache<u64, Arc<PathEntry>>,
    /// The (randomly keyed) hash of `paths`' keys.
    path_hasher: std::collections::hash_map::RandomState,
    /// sha256 -> bytes. Immutable; bounded by bytes.
    pub blobs: moka::sync::Cache<String, Bytes>,
    /// sha256(secret) -> grant. Evicted on revocation.
    pub tokens: moka::sync::Cache<[u8; 32], Arc<pb::StorageGrant>>,
    /// Hosts that always get the API.
    pub api_hosts: std::collections::HashSet<String>,
    /// Hosts a binding may never take, even with no API host configured: the names and
    /// addresses this gateway is reached by locally.
    pub reserved_hosts: std::collections::HashSet<String>,
    /// Whether the shared cache sees the storage service's invalidations (Redis, or
    /// storage in this process). Without that, mutable entries (host bindings, KV
    /// values) are not put there: only this process's short-lived cache holds them.
    pub shared_cache_coherent: bool,
}

/// Largest blob kept in the memory cache.
const MAX_CACHED_BLOB: usize = 8 * 1024 * 1024;
/// Largest file a path's cache entry keeps beside its resolution.
const MAX_INLINE_BODY: usize = 16 * 1024;

impl HostCaches {
    /// Caches sized from the configuration.
    pub fn new(cfg: &lattice_core::config::GatewayConfig, shared_cache_coherent: bool) -> Self {
        let mut api_hosts: std::collections::HashSet<String> =
            cfg.api_hosts.iter().map(|h| normalise_host(h)).collect();
        if let Some(host) = cfg
            .public_url
            .as_deref()
            .and_then(|u| u.split("://").nth(1))
            .map(|rest| rest.split('/').next().unwrap_or(""))
        {
            api_hosts.insert(normalise_host(host));
        }
        api_hosts.remove("");
        Self {
            hosts: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
            // Weighed by size: any visitor can ask for new paths (404s included).
            paths: moka::sync::Cache::builder()
                .weigher(|_k: &u64, v: &Arc<PathEntry>| v.weight())
                .max_capacity(64 * 1024 * 1024)
                .build(),
            path_hasher: std::collections::hash_map::RandomState::new(),
            blobs: moka::sync::Cache::builder()
                .weigher(|_k: &String, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .max_capacity(cfg.static_cache_bytes)
                .build(),
            tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .support_invalidation_closures()
                .build(),
            reserved_hosts: ["localhost".to_owned(), cfg.listen.ip().to_string()]
                .into_iter()
                .chain(cfg.tls_san.iter().map(|h| normalise_host(h)))
                .collect(),
            api_hosts,
            shared_cache_coherent,
        }
    }
}

/// Lowercase, without port or trailing dot; IPv6 without brackets.
pub fn normalise_host(raw: &str) -> String {
    normalised_host(raw).into_owned()
}

/// [`normalise_host`], borrowing when the name already is (the usual case).
fn normalised_host(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    if let Ok(ip) = raw.parse::<std::net::IpAddr>() {
        return Cow::Owned(ip.to_string());
    }
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn request_host(req: &Request) -> Cow<'_, str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(normalised_host)
        .or_else(|| req.uri().authority().map(|a| normalised_host(a.as_str())))
        .unwrap_or_default()
}

/// Whether a binding may not take `host`: an API host, a name or address the gateway
/// is reached by locally, or any loopback or unspecified address.
pub fn is_reserved(caches: &HostCaches, host: &str) -> bool {
    let host = normalise_host(host);
    caches.api_hosts.contains(&host)
        || caches.reserved_hosts.contains(&host)
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// Forget a host's cached binding in this replica.
pub fn forget_host(state: &AppState, host: &str) {
    state.host_caches.hosts.invalidate(&normalise_host(host));
}

/// Forget a storage token in this replica.
pub fn forget_token(state: &AppState, id: &str) {
    let id = id.to_owned();
    if state
        .host_caches
        .tokens
        .invalidate_entries_if(move |_, g| g.id == id)
        .is_err()
    {
        state.host_caches.tokens.invalidate_all();
    }
}

/// Evict on storage events from any replica until `shutdown`.
pub async fn run_event_listener(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut hosts = state.cache.listen::<HostChanged>();
    let mut tokens = state.cache.listen::<StorageTokenRevoked>();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            m = hosts.recv() => match m {
                Ok(HostChanged { host }) if !host.is_empty() => forget_host(&state, &host),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.host_caches.hosts.invalidate_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            m = tokens.recv() => match m {
                Ok(StorageTokenRevoked { token_id }) => forget_token(&state, &token_id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.host_caches.tokens.invalidate_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn lookup_host(state: &AppState, host: &str) -> Result<Option<Arc<HostEntry>>, ApiError> {
    if let Some(hit) = state.host_caches.hosts.get(host) {
        return Ok(hit);
    }
    let shared_key = host_cache_key(host);
    let coherent = state.host_caches.shared_cache_coherent;
    let cached = if coherent {
        state.cache.get(&shared_key).await
    } else {
        None
    };
    // Shared between replicas as the storage service's own answer (protobuf).
    let resolution = match cached.and_then(|b| pb::ResolveHostResponse::decode(b.as_slice()).ok()) {
        Some(r) => r,
        None => {
            let r = client(state)?
                .resolve_host(lattice_core::grpc::request(
                    &state.internal,
                    &state.service_principal,
                    None,
                    pb::ResolveHostRequest {
                        host: host.to_owned(),
                    },
                ))
                .await?
                .into_inner();
            if coherent {
                state
                    .cache
                    .set(&shared_key, &r.encode_to_vec(), Duration::from_secs(60))
                    .await;
            }
            r
        }
    };
    let entry = HostEntry::of(resolution);
    let entry = entry.map(Arc::new);
    state
        .host_caches
        .hosts
        .insert(host.to_owned(), entry.clone());
    Ok(entry)
}

fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Where a request goes: answered for a bound host, or on to the API.
#[derive(Debug)]
pub enum Routed {
    /// Served from storage (or refused: no site is bound to this host).
    Host(Response),
    /// An API request.
    Api(Request),
}

/// Bound hosts are served from storage; every other request goes to the API. Called
/// by the gateway's edge before the API router and its layers.
pub async fn route(state: &AppState, req: Request) -> Routed {
    if state.storage.is_none() {
        return Routed::Api(req);
    }
    let host = request_host(&req);
    if host.is_empty() || state.host_caches.api_hosts.contains(host.as_ref()) {
        return Routed::Api(req);
    }
    match lookup_host(state, &host).await {
        Ok(Some(entry)) => {
            let started = std::time::Instant::now();
            let method = crate::metrics::method_label(req.method());
            let (route, resp) = if entry.surface == pb::Surface::Static {
                ("host:static", serve_static(state, &entry, req).await)
            } else {
                ("host:kv", serve_kv(state, &entry, req).await)
            };
            state.metrics.observe(
                route,
                method,
                resp.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            Routed::Host(resp)
        }
        Ok(None) if state.host_caches.api_hosts.is_empty() || is_probe(req.uri().path()) => {
            Routed::Api(req)
        }
        // Storage unreachable: the API and the probes still answer.
        Err(e) if state.host_caches.api_hosts.is_empty() || is_probe(req.uri().path()) => {
            tracing::warn!(host = %host, error = %e.message, "host lookup failed; serving the API");
            Routed::Api(req)
        }
        Ok(None) => Routed::Host(plain(
            StatusCode::NOT_FOUND,
            "404 Not Found: no site is bound to this host\n",
        )),
        Err(e) => Routed::Host(e.into_response()),
    }
}

/// Normalise a request path into a site path: percent-decoded, `.` and empty
/// segments dropped, a trailing `/` kept (directory), and refusals for `..`, encoded
/// slashes or backslashes, NUL and invalid UTF-8.
pub fn normalise_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    // Site paths are at most 1 KiB; percent-encoding triples that at most.
    if raw.len() > 3 * 1024 + 16 {
        return Err("the path is too long");
    }
    if let Some(plain) = plain_path(raw) {
        return Ok(Cow::Borrowed(plain));
    }
    normalise_path_decoded(raw).map(Cow::Owned)
}

/// A path that is already normal (no escapes, no empty, `.` or `..` segments), without
/// its leading `/`: the usual request, answered without copying.
fn plain_path(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix('/')?;
    if raw.bytes().any(|b| matches!(b, b'%' | b'\\' | 0)) {
        return None;
    }
    let dir = rest.strip_suffix('/').unwrap_or(rest);
    (rest.is_empty() || dir.split('/').all(|seg| !matches!(seg, "" | "." | ".."))).then_some(rest)
}

fn normalise_path_decoded(raw: &str) -> Result<String, &'static str> {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return Err("encoded slashes, backslashes and NUL are not allowed in paths");
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| "the path is not valid UTF-8")?;
    if decoded.contains('\\') || decoded.contains('\0') {
        return Err("backslashes and NUL are not allowed in paths");
    }
    let mut parts = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("'..' is not allowed in paths"),
            s => parts.push(s),
        }
    }
    let mut out = parts.join("/");
    if decoded.ends_with('/') && !out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

async fn resolve(
    state: &AppState,
    deployment_id: &str,
    path: &str,
) -> Result<Arc<PathEntry>, ApiError> {
    let key = state
        .host_caches
        .path_hasher
        .hash_one((deployment_id, path));
    if let Some(hit) = state.host_caches.paths.get(&key)
        && hit.deployment_id == deployment_id
        && hit.path == path
    {
        return Ok(hit);
    }
    let shared_key = format!("static:{deployment_id}:{path}");
    let resolved = match state
        .cache
        .get(&shared_key)
        .await
        .and_then(|b| serde_json::from_slice::<Resolved>(&b).ok())
    {
        Some(r) => r,
        None => {
            let r = client(state)?
                .resolve_static_path(lattice_core::grpc::request(
                    &state.internal,
                    &state.service_principal,
                    None,
                    pb::ResolveStaticPathRequest {
                        deployment_id: deployment_id.to_owned(),
                        path: path.to_owned(),
                    },
                ))
                .await?
                .into_inner();
            let object = r.object.unwrap_or_default();
            let resolved = Resolved {
                status: u16::try_from(r.status).unwrap_or(404),
                redirect_to: r.redirect_to,
                sha256: object.sha256,
                size: object.size,
                content_type: object.content_type,
            };
            // Misses are not shared: any visitor can ask for new paths.
            if resolved.status != 404
                && let Ok(bytes) = serde_json::to_vec(&resolved)
            {
                state
                    .cache
                    .set(&shared_key, &bytes, Duration::from_secs(3600))
                    .await;
            }
            resolved
        }
    };
    let entry = Arc::new(PathEntry::new(deployment_id, path, resolved));
    state.host_caches.paths.insert(key, entry.clone());
    Ok(entry)
}

async fn blob(state: &AppState, sha256: &str) -> Result<Bytes, ApiError> {
    if let Some(hit) = state.host_caches.blobs.get(sha256) {
        return Ok(hit);
    }
    use futures::StreamExt as _;
    let mut stream = client(state)?
        .get_blob(lattice_core::grpc::request(
            &state.internal,
            &state.service_principal,
            None,
            pb::GetBlobRequest {
                sha256: sha256.to_owned(),
            },
        ))
        .await?
        .into_inner();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?.data);
    }
    let data = buf.freeze();
    if data.len() <= MAX_CACHED_BLOB {
        state
            .host_caches
            .blobs
            .insert(sha256.to_owned(), data.clone());
    }
    Ok(data)
}

/// A single `bytes=` range within `len`: Some(Ok(start..end)) to serve, Some(Err)
/// when unsatisfiable, None to ignore (absent, multi-range or malformed).
pub fn parse_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len)
        }
        (start, "") => (start.parse().ok()?, len),
        (start, end) => {
            let s: u64 = start.parse().ok()?;
            let e: u64 = end.parse().ok()?;
            if e < s {
                return None;
            }
            (s, e.saturating_add(1).min(len))
        }
    };
    if start >= len {
        Some(Err(()))
    } else {
        Some(Ok((start, end)))
    }
}

fn etag_matches(header_value: &str, etag: &str) -> bool {
    header_value
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.trim_start_matches("W/") == etag)
}

async fn serve_static(state: &AppState, entry: &HostEntry, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = match normalise_path(req.uri().path()) {
        Ok(p) => p,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "400 Bad Request: invalid path\n"),
    };
    if entry.deployment_id.is_empty() {
        return plain(StatusCode::NOT_FOUND, "404 Not Found\n");
    }
    let cached = match resolve(state, &entry.deployment_id, &path).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let resolved = &cached.resolved;
    if resolved.status == 301 {
        const PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'<')
            .add(b'>')
            .add(b'?')
            .add(b'`')
            .add(b'{')
            .add(b'}')
            .add(b'%');
        let mut location =
            percent_encoding::utf8_percent_encode(&resolved.redirect_to, PATH).to_string();
        if let Some(q) = req.uri().query() {
            location = format!("{location}?{q}");
        }
        let mut r = plain(StatusCode::MOVED_PERMANENTLY, "301 Moved Permanently\n");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    if resolved.sha256.is_empty() {
        return plain(StatusCode::NOT_FOUND, "404 Not Found\n");
    }
    let status = if resolved.status == 200 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    let mut builder = Response::builder()
        .header(header::ETAG, cached.etag.clone())
        // Revalidate every time: cheap with the ETag, and a deploy is never served stale.
        .header(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, no-cache"),
        )
        .header(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )
        .header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"))
        .header(header::CONTENT_TYPE, cached.content_type.clone());
    if status == StatusCode::OK
        && let Some(inm) = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        && etag_matches(inm, cached.etag.to_str().unwrap_or_default())
    {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(built_badly);
    }
    let data = match cached.body.get() {
        Some(d) => d.clone(),
        None => match blob(state, &resolved.sha256).await {
            Ok(d) => {
                if cached.keeps_body() && d.len() as i64 == resolved.size {
                    let _ = cached.body.set(d.clone());
                }
                d
            }
            Err(e) => return e.into_response(),
        },
    };
    let len = data.len() as u64;
    let range = (status == StatusCode::OK)
        .then(|| {
            req.headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_range(v, len))
        })
        .flatten();
    let (status, body) = match range {
        Some(Ok((start, end))) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{len}", end - 1),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                data.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)),
            )
        }
        Some(Err(())) => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(built_badly);
        }
        None => (status, data),
    };
    builder = builder.header(header::CONTENT_LENGTH, body.len());
    let body = if head {
        Body::empty()
    } else {
        Body::from(body)
    };
    builder
        .status(status)
        .body(body)
        .unwrap_or_else(built_badly)
}

/// A stored media type as a header; one that is not a valid header value (stored
/// before uploads were validated) is served as bytes rather than not at all.
fn content_type_header(stored: &str) -> HeaderValue {
    HeaderValue::from_str(stored).unwrap_or_else(|_| {
        tracing::warn!(content_type = ?stored, "stored content type is not a valid header value; serving application/octet-stream");
        HeaderValue::from_static("application/octet-stream")
    })
}

/// A response that could not be built is a bug: answer 500 and log it, never an
/// empty 200.
fn built_badly(err: http::Error) -> Response {
    tracing::error!(error = %err, "building a host response failed");
    ApiError::new(lattice_core::ErrorCode::Internal, "internal error").into_response()
}

fn kv_error(status: StatusCode, code: lattice_core::ErrorCode, message: &str) -> Response {
    let mut r = ApiError::new(code, message).into_response();
    *r.status_mut() = status;
    r
}

/// Verify a storage token (cached; revocations evict).
pub(crate) async fn authorize(
    state: &AppState,
    secret: &str,
) -> Result<Arc<pb::StorageGrant>, Response> {
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if let Some(hit) = state.host_caches.tokens.get(&key)
        && (hit.expires_at_ms == 0 || now_ms() < hit.expires_at_ms)
    {
        return Ok(hit);
    }
    let storage = client(state).map_err(IntoResponse::into_response)?;
    let grant = storage
        .clone()
        .authorize_storage_token(lattice_core::grpc::request(
            &state.internal,
            &state.service_principal,
            None,
            pb::AuthorizeStorageTokenRequest {
                secret: secret.to_owned(),
            },
        ))
        .await
        .map_err(|s| match lattice_core::error::code_of(&s) {
            lattice_core::ErrorCode::PermissionDenied
            | lattice_core::ErrorCode::Unauthenticated => kv_error(
                StatusCode::UNAUTHORIZED,
                lattice_core::ErrorCode::Unauthenticated,
                "invalid or expired storage token",
            ),
            _ => ApiError::from(s).into_response(),
        })?
        .into_inner();
    let grant = Arc::new(grant);
    state.host_caches.tokens.insert(key, grant.clone());
    Ok(grant)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: serde_json::Value,
    #[serde(default)]
    ttl_s: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CachedKv {
    version: i64,
    value: String,
    expires_at_ms: i64,
}

async fn serve_kv(state: &AppState, entry: &HostEntry, req: Request) -> Response {
    use lattice_core::ErrorCode as C;
    let needs = match *req.method() {
        Method::GET | Method::HEAD => pb::Access::Read,
        Method::PUT | Method::DELETE => pb::Access::Write,
        _ => {
            return kv_error(
                StatusCode::METHOD_NOT_ALLOWED,
                C::MethodNotAllowed,
                "use GET, PUT or DELETE on /{key}",
            );
        }
    };
    let key = match normalise_path(req.uri().path()) {
        Ok(k) if !k.is_empty() => k.trim_end_matches('/').to_owned(),
        Ok(_) => return kv_error(StatusCode::BAD_REQUEST, C::BadRequest, "name a key: /{key}"),
        Err(m) => return kv_error(StatusCode::BAD_REQUEST, C::BadRequest, m),
    };
    let Some(secret) = crate::caller::bearer(req.headers())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
    else {
        return kv_error(
            StatusCode::UNAUTHORIZED,
            C::Unauthenticated,
            "a storage token is required: Authorization: Bearer <token>",
        );
    };
    let grant = match authorize(state, &secret).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    // Refused early from the cached grant; the storage service decides again.
    if let Err(refusal) = grant.check(
        &entry.org_id,
        &entry.bucket,
        pb::Surface::Kv,
        needs,
        now_ms(),
    ) {
        return kv_error(
            StatusCode::FORBIDDEN,
            C::PermissionDenied,
            &refusal.to_string(),
        );
    }
    let principal = &state.service_principal;
    let client_ip = crate::caller::client_ip_from(
        req.headers(),
        req.extensions().get::<crate::caller::PeerAddr>(),
        state.cfg.trust_forwarded_for,
    );
    let ip = Some(client_ip.as_str());
    let host = request_host(&req).into_owned();
    let host_req =
        |value_json: String, condition: Option<pb::WriteCondition>, ttl_s: i64| pb::HostKvRequest {
            host: host.clone(),
            token_secret: secret.clone(),
            key: key.clone(),
            value_json,
            condition,
            ttl_s,
        };
    let Ok(mut storage) = client(state) else {
        return kv_error(
            StatusCode::SERVICE_UNAVAILABLE,
            C::Unavailable,
            "storage is not configured",
        );
    };
    match *req.method() {
        Method::GET | Method::HEAD => {
            let head = req.method() == Method::HEAD;
            let cache_key = kv_cache_key(&entry.bucket_id, &key);
            // A secret value is never cached: every read is the storage service's
            // (and the policy's) decision.
            let coherent = state.host_caches.shared_cache_coherent && !entry.secret;
            let cached = if coherent {
                state.cache.get(&cache_key).await
            } else {
                None
            };
            let cached = cached
                .and_then(|b| serde_json::from_slice::<CachedKv>(&b).ok())
                .filter(|c| c.expires_at_ms == 0 || now_ms() < c.expires_at_ms);
            let kv = match cached {
                Some(c) => c,
                None => match storage
                    .host_kv_get(lattice_core::grpc::request(
                        &state.internal,
                        principal,
                        None,
                        host_req(String::new(), None, 0),
                    ))
                    .await
                {
                    Ok(r) => {
                        let e = r.into_inner();
                        let c = CachedKv {
                            version: e.version,
                            value: e.value_json,
                            expires_at_ms: e.expires_at_ms,
                        };
                        if coherent && let Ok(bytes) = serde_json::to_vec(&c) {
                            state
                                .cache
                                .set(&cache_key, &bytes, Duration::from_secs(60))
                                .await;
                        }
                        c
                    }
                    Err(s) => return ApiError::from(s).into_response(),
                },
            };
            let etag = super::kv_etag(kv.version);
            if let Some(inm) = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                && etag_matches(inm, &etag)
            {
                return Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header(header::ETAG, etag)
                    .body(Body::empty())
                    .unwrap_or_else(built_badly);
            }
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ETAG, etag)
                .header(header::CACHE_CONTROL, "no-cache")
                .body(if head {
                    Body::empty()
                } else {
                    Body::from(kv.value)
                })
                .unwrap_or_else(built_badly)
        }
        Method::PUT => {
            let condition = match super::control::write_condition(req.headers()) {
                Ok(c) => c,
                Err(e) => return e.into_response(),
            };
            let limit = state.cfg.body_limit_bytes;
            let body = match axum::body::to_bytes(req.into_body(), limit).await {
                Ok(b) => b,
                Err(_) => {
                    return kv_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        C::PayloadTooLarge,
                        "request body is larger than the limit",
                    );
                }
            };
            let put: PutBody = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => {
                    return kv_error(
                        StatusCode::BAD_REQUEST,
                        C::BadRequest,
                        &format!("expected {{\"value\": <any JSON>}}: {e}"),
                    );
                }
            };
            match storage
                .host_kv_put(lattice_core::grpc::request(
                    &state.internal,
                    principal,
                    ip,
                    host_req(put.value.to_string(), condition, put.ttl_s),
                ))
                .await
            {
                Ok(r) => {
                    let e = r.into_inner();
                    let etag = super::kv_etag(e.version);
                    let mut resp = axum::Json(super::control::kv_entry(e, true)).into_response();
                    if let Ok(v) = HeaderValue::from_str(&etag) {
                        resp.headers_mut().insert(header::ETAG, v);
                    }
                    resp
                }
                Err(s) => ApiError::from(s).into_response(),
            }
        }
        _ => {
            let condition = match req.headers().get(header::IF_MATCH) {
                Some(v) => match super::parse_if_match(v.to_str().unwrap_or_default()) {
                    Ok(version) => Some(super::version_condition(version)),
                    Err(e) => return e.into_response(),
                },
                None => None,
            };
            match storage
                .host_kv_delete(lattice_core::grpc::request(
                    &state.internal,
                    principal,
                    ip,
                    host_req(String::new(), condition, 0),
                ))
                .await
            {
                Ok(_) => StatusCode::NO_CONTENT.into_response(),
                Err(s) => ApiError::from(s).into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            normalise_host("Assets.Example.COM:8443"),
            "assets.example.com"
        );
        assert_eq!(normalise_host("example.com."), "example.com");
        assert_eq!(normalise_host("[::1]:8088"), "::1");
        assert_eq!(normalise_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(normalise_host("::1"), "::1");
        assert_eq!(normalise_host("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn paths_never_escape_the_site() {
        assert_eq!(normalise_path("/").unwrap(), "");
        assert_eq!(normalise_path("/docs/").unwrap(), "docs/");
        assert_eq!(normalise_path("/a/./b//c.html").unwrap(), "a/b/c.html");
        assert_eq!(normalise_path("/caf%C3%A9.html").unwrap(), "café.html");
        // The copy-free answer for plain paths is the full normalisation's.
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b.html",
            "/a//b",
            "//",
            "/./a",
            "/a/.",
            "/a/..",
            "/.a",
            "/a..b",
            "/a/b/",
            "/a/./",
            "/A B",
            "/%41",
            "/a\\b",
            "",
        ] {
            assert_eq!(
                normalise_path(p).map(Cow::into_owned),
                normalise_path_decoded(p),
                "{p}"
            );
        }
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/b",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "/%00",
            "/%ff",
        ] {
            assert!(normalise_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 100))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
    }
}
