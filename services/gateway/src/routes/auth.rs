//! `/api/v1/auth/*`: login (with TOTP), logout, me, TOTP enrollment.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use http::header::SET_COOKIE;
use lattice_proto::identity::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::{CSRF_COOKIE, Caller, PeerAddr, SESSION_COOKIE, csrf_token_for};
use crate::error::ApiError;
use crate::json::ApiJson;

/// Login, step one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// The org to act in (one you are a member of); absent: your home org.
    #[serde(default)]
    pub org: String,
}

/// Login, step two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginTotpBody {
    /// From the first step's answer.
    pub mfa_token: String,
    /// Current 6-digit code, or a recovery code.
    pub code: String,
}

/// The caller as the server sees them.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// User id.
    pub user_id: String,
    /// Username.
    pub username: String,
    /// Org id.
    pub org_id: String,
    /// Org name.
    pub org_name: String,
    /// Effective scopes.
    pub scopes: Vec<String>,
    /// `session` or `token`.
    pub auth_method: String,
    /// Session or token id.
    pub credential_id: String,
    /// Whether TOTP is on.
    pub totp_enabled: bool,
}

/// Answer to a login step.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginAnswer {
    /// True: call `/auth/login/totp` with `mfa_token` and a code.
    pub mfa_required: bool,
    /// Present when `mfa_required`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// Present when `mfa_required`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_expires_at_ms: Option<i64>,
    /// Present when logged in: the session's CSRF token (also in the `lattice_csrf` cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// Present when logged in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<Me>,
}

/// TOTP enrollment.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrollment {
    /// Base32 secret for manual entry.
    pub secret: String,
    /// For a QR code.
    pub otpauth_uri: String,
}

/// A TOTP code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    /// 6-digit code (or a recovery code where accepted).
    pub code: String,
}

/// Disable TOTP.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableBody {
    /// Current code or recovery code (for your own account).
    #[serde(default)]
    pub code: String,
    /// Another user of your org (needs `users:admin`).
    #[serde(default)]
    pub user_id: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Single-use codes.
    pub recovery_codes: Vec<String>,
}

impl Me {
    /// The answer for a verified principal.
    pub fn new(p: &lattice_core::auth::Principal, org_name: &str, totp_enabled: bool) -> Self {
        Self {
            user_id: p.sub.clone(),
            username: p.username.clone(),
            org_id: p.org_id.clone(),
            org_name: org_name.to_owned(),
            scopes: p.scopes.clone(),
            auth_method: p.auth.as_str().to_owned(),
            credential_id: p.credential_id.clone(),
            totp_enabled,
        }
    }

    fn from_pb(p: pb::Principal) -> Self {
        Self {
            user_id: p.user_id,
            username: p.username,
            org_id: p.org_id,
            org_name: p.org_name,
            scopes: p.scopes,
            auth_method: p.auth_method,
            credential_id: p.credential_id,
            totp_enabled: p.totp_enabled,
        }
    }
}

pub(crate) fn anonymous_ip(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<&PeerAddr>,
) -> String {
    crate::caller::client_ip_from(headers, peer, state.cfg.trust_forwarded_for)
}

pub(crate) fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(256)
        .collect()
}

pub(crate) fn login_response(
    state: &AppState,
    resp: pb::LoginResponse,
) -> Result<Response, ApiError> {
    match resp.outcome {
        Some(pb::login_response::Outcome::Mfa(m)) => Ok(Json(LoginAnswer {
            mfa_required: true,
            mfa_token: Some(m.mfa_token),
            mfa_expires_at_ms: Some(m.expires_at_ms),
            csrf_token: None,
            user: None,
        })
        .into_response()),
        Some(pb::login_response::Outcome::Session(s)) => {
            let csrf = csrf_token_for(&s.session_secret);
            let secure = if state.secure_cookies { "; Secure" } else { "" };
            let session_cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                s.session_secret, s.max_age_s
            );
            let csrf_cookie = format!(
                "{CSRF_COOKIE}={csrf}; Path=/; Max-Age={}; SameSite=Lax{secure}",
                s.max_age_s
            );
            let mut resp = Json(LoginAnswer {
                mfa_required: false,
                mfa_token: None,
                mfa_expires_at_ms: None,
                csrf_token: Some(csrf),
                user: s.principal.map(Me::from_pb),
            })
            .into_response();
            for c in [session_cookie, csrf_cookie] {
                let v = http::HeaderValue::from_str(&c).map_err(|_| {
                    ApiError::new(
                        lattice_core::ErrorCode::Internal,
                        "cannot build session cookie",
                    )
                })?;
                resp.headers_mut().append(SET_COOKIE, v);
            }
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            Ok(resp)
        }
        None => Err(ApiError::new(
            lattice_core::ErrorCode::Internal,
            "identity returned no login outcome",
        )),
    }
}

/// Log in with a password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginBody, security(()),
    responses((status = 200, body = LoginAnswer, description = "session cookie set, or mfa_required"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or a username or password that is too long"),
        (status = 401, body = crate::error::ErrorBody, description = "Wrong username or password"),
        (status = 429, body = crate::error::ErrorBody, description = "The user is locked, or too many failures from this address (`Retry-After`)"),
        (status = 500, body = crate::error::ErrorBody, description = "Internal error"),
        (status = 503, body = crate::error::ErrorBody, description = "The identity service is unreachable")))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    if body.username.len() > 256 || body.password.len() > 4096 {
        return Err(ApiError::bad_request("username or password is too long"));
    }
    let ip = anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::LoginRequest {
            username: body.username,
            password: body.password,
            user_agent: user_agent(&headers),
            org: body.org,
        },
    );
    let resp = state.identity.clone().login(req).await?.into_inner();
    login_response(&state, resp)
}

/// Complete a login with a TOTP or recovery code.
#[utoipa::path(post, path = "/api/v1/auth/login/totp", tag = "auth", request_body = LoginTotpBody, security(()),
    responses((status = 200, body = LoginAnswer),
        (status = 401, body = crate::error::ErrorBody, description = "A bad or expired mfa_token, or a wrong or used code"),
        (status = 429, body = crate::error::ErrorBody, description = "The user is locked (`Retry-After`)"),
        (status = 500, body = crate::error::ErrorBody, description = "Internal error"),
        (status = 503, body = crate::error::ErrorBody, description = "The identity service is unreachable")))]
pub async fn login_totp(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginTotpBody>,
) -> Result<Response, ApiError> {
    let ip = anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::LoginTotpRequest {
            mfa_token: body.mfa_token,
            code: body.code,
            user_agent: user_agent(&headers),
        },
    );
    let resp = state.identity.clone().login_totp(req).await?.into_inner();
    login_response(&state, resp)
}

/// End the current credential: the session (cookies cleared), or the bearer token itself.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", responses((status = 200, body = super::Ok)))]
pub async fn logout(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    state
        .identity
        .clone()
        .logout(caller.request(&state, pb::LogoutRequest {}))
        .await?;
    state
        .auth_generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state
        .auth_cache
        .invalidate_entries_if({
            let id = caller.principal.credential_id.clone();
            move |_, c| c.principal.credential_id == id
        })
        .ok();
    let mut resp = Json(super::Ok::yes()).into_response();
    for c in [SESSION_COOKIE, CSRF_COOKIE] {
        let v = http::HeaderValue::from_str(&format!("{c}=; Path=/; Max-Age=0"))
            .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "cannot clear cookie"))?;
        resp.headers_mut().append(SET_COOKIE, v);
    }
    Ok(resp)
}

/// Who am I.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", responses((status = 200, body = Me)))]
pub async fn me(caller: Caller) -> Response {
    // Rendered once when the credential was verified; served from the cache after.
    (
        [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        caller.me_json.clone(),
    )
        .into_response()
}

/// Start TOTP enrollment (session login only, not API tokens).
#[utoipa::path(post, path = "/api/v1/auth/totp/enroll", tag = "auth",
    responses((status = 200, body = Enrollment),
        (status = 403, body = crate::error::ErrorBody, description = "Called with an API token (a session only), or without its `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "TOTP is already enabled")))]
pub async fn totp_enroll(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Enrollment>, ApiError> {
    let r = state
        .identity
        .clone()
        .enroll_totp(caller.request(&state, pb::EnrollTotpRequest {}))
        .await?
        .into_inner();
    Ok(Json(Enrollment {
        secret: r.secret,
        otpauth_uri: r.otpauth_uri,
    }))
}

/// Confirm TOTP enrollment with a current code; returns recovery codes once.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", request_body = CodeBody,
    responses((status = 200, body = RecoveryCodes),
        (status = 401, body = crate::error::ErrorBody, description = "No valid credential, or a wrong code"),
        (status = 403, body = crate::error::ErrorBody, description = "Called with an API token (a session only), or without its `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "TOTP is already enabled, or no enrollment is in progress")))]
pub async fn totp_confirm(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    let r = state
        .identity
        .clone()
        .confirm_totp(caller.request(&state, pb::ConfirmTotpRequest { code: body.code }))
        .await?
        .into_inner();
    Ok(Json(RecoveryCodes {
        recovery_codes: r.recovery_codes,
    }))
}

/// Turn TOTP off.
#[utoipa::path(post, path = "/api/v1/auth/totp/disable", tag = "auth", request_body = DisableBody,
    responses((status = 200, body = super::Ok),
        (status = 401, body = crate::error::ErrorBody, description = "No valid credential, or a wrong code"),
        (status = 403, body = crate::error::ErrorBody, description = "Your own TOTP with an API token (a session only), another user's without `users:admin` or with scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such user in your org")))]
pub async fn totp_disable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<DisableBody>,
) -> Result<Json<super::Ok>, ApiError> {
    state
        .identity
        .clone()
        .disable_totp(caller.request(
            &state,
            pb::DisableTotpRequest {
                code: body.code,
                user_id: body.user_id,
            },
        ))
        .await?;
    Ok(Json(super::Ok::yes()))
}

/// Change your own password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    /// Your current password.
    pub current_password: String,
    /// 12 to 1024 characters.
    pub new_password: String,
}

/// Change your own password (password session only); your other sessions end.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth", request_body = PasswordBody,
    responses((status = 200, body = super::Ok),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, a new password that is not 12 to 1024 characters, or a wrong current password"),
        (status = 403, body = crate::error::ErrorBody, description = "Called with an API token (a password session only), or without its `X-CSRF-Token`"),
        (status = 429, body = crate::error::ErrorBody, description = "The user is locked, or too many failures from this address (`Retry-After`)")))]
pub async fn change_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<Json<super::Ok>, ApiError> {
    state
        .identity
        .clone()
        .set_password(caller.request(
            &state,
            pb::SetPasswordRequest {
                user_id: String::new(),
                current_password: body.current_password,
                new_password: body.new_password,
            },
        ))
        .await?;
    crate::caller::evict_user(&state, &caller.principal.sub);
    Ok(Json(super::Ok::yes()))
}
