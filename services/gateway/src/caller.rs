//! Who is calling: the `Caller` extractor authenticates a request once (bearer token
//! or session cookie + CSRF), with verified credentials cached in-process so the hot
//! path makes no database or gRPC round trip. Revocations arrive on the event bus and
//! evict at once; the cache TTL bounds staleness when the bus is local-only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use lattice_core::auth::{AuthMethod, Principal};
use lattice_core::cache::Cache;
use lattice_core::time::now_ms;
use lattice_proto::identity::v1 as pb;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::ApiError;

/// Session cookie name.
pub const SESSION_COOKIE: &str = "lattice_session";
/// CSRF cookie name (readable by scripts; echoed in the header).
pub const CSRF_COOKIE: &str = "lattice_csrf";
/// CSRF header a cookie-authenticated state-changing request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The TCP peer of a connection, inserted by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A verified credential, as cached: shared by every request that presents it.
#[derive(Debug)]
pub struct Verified {
    /// Verified principal (what internal calls carry).
    pub principal: Principal,
    /// Org name.
    pub org_name: String,
    /// TOTP on.
    pub totp_enabled: bool,
    /// Credential expiry (0 = none).
    pub expires_at_ms: i64,
    /// The `/api/v1/auth/me` answer, rendered once per verification.
    pub me_json: bytes::Bytes,
}

/// An authenticated caller: the shared verified credential plus this request's address.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified credential.
    pub verified: Arc<Verified>,
    /// Client address.
    pub client_ip: String,
    /// A `static` storage token the caller presented (site routes): internal calls
    /// relay it with the gateway's own principal, and the storage service decides
    /// what it allows; `verified` then holds only the gateway's early view of it.
    pub storage_token: Option<Arc<str>>,
}

impl std::ops::Deref for Caller {
    type Target = Verified;
    fn deref(&self) -> &Verified {
        &self.verified
    }
}

/// Cache key of a presented credential: SHA-256 of its kind and secret.
fn cache_key(kind: u8, secret: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update([kind])
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

/// The CSRF token bound to a session secret: only someone who can read the cookie
/// (the page on our origin, not a cross-site form) can compute it.
pub fn csrf_token_for(session_secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"lattice-csrf\0")
        .chain_update(session_secret.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

/// Value of one cookie from the `Cookie` headers.
pub fn cookie<'a>(parts: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    parts
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The client's address: the TCP peer, or (when the gateway is configured to trust
/// its reverse proxy) the last `X-Forwarded-For` hop, the one that proxy appended.
pub fn client_ip_from(
    headers: &http::HeaderMap,
    peer: Option<&PeerAddr>,
    trust_forwarded_for: bool,
) -> String {
    if trust_forwarded_for
        && let Some(last) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
    {
        return last.to_owned();
    }
    peer.map(|p| p.0.ip().to_string()).unwrap_or_default()
}

pub(crate) fn client_ip(parts: &Parts, trust_forwarded_for: bool) -> String {
    client_ip_from(
        &parts.headers,
        parts.extensions.get::<PeerAddr>(),
        trust_forwarded_for,
    )
}

enum Presented<'a> {
    Bearer(&'a str),
    Session(&'a str),
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive,
/// surrounding spaces trimmed), if the request has one.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn presented(parts: &Parts) -> Result<Presented<'_>, ApiError> {
    if parts.headers.contains_key(http::header::AUTHORIZATION) {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::unauthenticated("Authorization must be \"Bearer <token>\""))?;
        if token.is_empty() || token.len() > 512 {
            return Err(ApiError::unauthenticated("invalid or expired credential"));
        }
        return Ok(Presented::Bearer(token));
    }
    match cookie(&parts.headers, SESSION_COOKIE) {
        Some(s) if !s.is_empty() && s.len() <= 512 => Ok(Presented::Session(s)),
        _ => Err(ApiError::unauthenticated(
            "authentication required: send a bearer token or log in",
        )),
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts, state.cfg.trust_forwarded_for);
        let credential = presented(parts)?;
        let (cache_key, request) = match credential {
            Presented::Bearer(token) => (
                cache_key(b't', token),
                pb::AuthenticateRequest {
                    credential: Some(pb::authenticate_request::Credential::BearerToken(
                        token.to_owned(),
                    )),
                },
            ),
            Presented::Session(secret) => {
                let safe = matches!(
                    parts.method,
                    http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
                );
                if !safe {
                    let sent = parts
                        .headers
                        .get(CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let expected = csrf_token_for(secret);
                    if sent.is_empty() || !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
                        return Err(ApiError::new(
                            lattice_core::ErrorCode::PermissionDenied,
                            "missing or wrong X-CSRF-Token header for a cookie-authenticated request",
                        ));
                    }
                }
                (
                    cache_key(b's', secret),
                    pb::AuthenticateRequest {
                        credential: Some(pb::authenticate_request::Credential::SessionSecret(
                            secret.to_owned(),
                        )),
                    },
                )
            }
        };
        if let Some(hit) = state.auth_cache.get(&cache_key) {
            if hit.expires_at_ms == 0 || now_ms() < hit.expires_at_ms {
                return Ok(Caller {
                    storage_token: None,
                    verified: hit,
                    client_ip: ip,
                });
            }
            state.auth_cache.invalidate(&cache_key);
        }
        let generation = state
            .auth_generation
            .load(std::sync::atomic::Ordering::SeqCst);
        let req = lattice_core::grpc::request(
            &state.internal,
            &state.service_principal,
            Some(&ip),
            request,
        );
        let resp = state
            .identity
            .clone()
            .authenticate(req)
            .await
            .map_err(ApiError::from)?;
        let p = resp.into_inner().principal.ok_or_else(|| {
            ApiError::new(
                lattice_core::ErrorCode::Internal,
                "identity returned no principal",
            )
        })?;
        let auth = match p.auth_method.as_str() {
            "session" => AuthMethod::Session,
            _ => AuthMethod::Token,
        };
        let principal = Principal {
            sub: p.user_id,
            username: p.username,
            org_id: p.org_id,
            scopes: p.scopes,
            auth,
            credential_id: p.credential_id,
        };
        let me_json = serde_json::to_vec(&crate::routes::auth::Me::new(
            &principal,
            &p.org_name,
            p.totp_enabled,
        ))
        .map_err(|e| {
            ApiError::new(
                lattice_core::ErrorCode::Internal,
                format!("render principal: {e}"),
            )
        })?;
        let verified = Arc::new(Verified {
            principal,
            org_name: p.org_name,
            totp_enabled: p.totp_enabled,
            expires_at_ms: p.expires_at_ms,
            me_json: me_json.into(),
        });
        if state
            .auth_generation
            .load(std::sync::atomic::Ordering::SeqCst)
            == generation
        {
            state.auth_cache.insert(cache_key, verified.clone());
        }
        let caller = Caller {
            verified,
            client_ip: ip,
            storage_token: None,
        };
        Ok(caller)
    }
}

impl Caller {
    /// Refuse unless the caller has `scope` (403 naming it).
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.principal.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                lattice_core::ErrorCode::PermissionDenied,
                format!("missing scope {scope}"),
            ))
        }
    }

    /// An outgoing internal request acting as this caller.
    pub fn request<T>(&self, state: &AppState, message: T) -> tonic::Request<T> {
        let Some(secret) = &self.storage_token else {
            return lattice_core::grpc::request(
                &state.internal,
                &self.principal,
                Some(&self.client_ip),
                message,
            );
        };
        let mut req = lattice_core::grpc::request(
            &state.internal,
            &state.service_principal,
            Some(&self.client_ip),
            message,
        );
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(secret.as_ref()) {
            req.metadata_mut()
                .insert(lattice_core::grpc::STORAGE_TOKEN_METADATA, v);
        }
        req
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Drop every cached credential of `user_id` in this replica (after a change that
/// identity also announces on the bus; this covers a replica without a shared bus).
pub fn evict_user(state: &AppState, user_id: &str) {
    state
        .auth_generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let user_id = user_id.to_owned();
    if state
        .auth_cache
        .invalidate_entries_if(move |_, c| c.principal.sub == user_id)
        .is_err()
    {
        state.auth_cache.invalidate_all();
    }
}

fn bump(state: &AppState) {
    state
        .auth_generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Evict cached credentials when identity announces a revocation. Runs until
/// `shutdown`; a lagging receiver drops the whole cache (safe, costs one lookup each).
pub async fn run_revocation_listener(
    state: Arc<AppState>,
    cache: Cache,
    shutdown: CancellationToken,
) {
    use lattice_proto::events::v1::{CredentialRevoked, credential_revoked::Subject};
    let mut rx = cache.listen::<CredentialRevoked>();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => match msg.inspect_err(|_| bump(&state)).inspect(|_| bump(&state)) {
                Ok(CredentialRevoked { subject }) => {
                    let result = match subject {
                        Some(Subject::UserId(user_id)) => state
                            .auth_cache
                            .invalidate_entries_if(move |_, c| c.principal.sub == user_id)
                            .map(drop),
                        Some(Subject::CredentialId(id)) => state
                            .auth_cache
                            .invalidate_entries_if(move |_, c| c.principal.credential_id == id)
                            .map(drop),
                        None => {
                            state.auth_cache.invalidate_all();
                            Ok(())
                        }
                    };
                    if let Err(err) = result {
                        tracing::warn!(%err, "cannot evict revoked credential; dropping the auth cache");
                        state.auth_cache.invalidate_all();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.auth_cache.invalidate_all(),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_bound_to_the_session() {
        assert_eq!(csrf_token_for("a"), csrf_token_for("a"));
        assert_ne!(csrf_token_for("a"), csrf_token_for("b"));
        assert_eq!(csrf_token_for("a").len(), 32);
    }

    #[test]
    fn forwarded_for_is_trusted_only_when_configured_and_only_the_last_hop() {
        let peer = PeerAddr("10.0.0.9:5555".parse().unwrap());
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "1.1.1.1, 203.0.113.7".parse().unwrap());
        assert_eq!(client_ip_from(&h, Some(&peer), false), "10.0.0.9");
        assert_eq!(client_ip_from(&h, Some(&peer), true), "203.0.113.7");
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(client_ip_from(&h, Some(&peer), true), "10.0.0.9");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; lattice_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
