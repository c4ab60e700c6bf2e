//! `/api/v1/sso/providers`: the org's single sign-on (OpenID Connect) providers.
//! The identity service validates, fetches the provider's discovery document and
//! seals the client secret; this layer adds the redirect URL to register.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use lattice_proto::identity::v1 as pb;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::json::ApiJson;
use crate::routes::nodes::public_base;

/// A provider to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSsoProvider {
    /// 1-40 of `a-z`, `0-9` and `-`, unique in your org: in the login URLs.
    pub name: String,
    /// What the login button says (default: the name).
    #[serde(default)]
    pub display_name: String,
    /// The issuer URL, exactly as the provider names itself (`https://`; `http://`
    /// only on loopback).
    pub issuer: String,
    pub client_id: String,
    /// Sealed at rest; never returned.
    pub client_secret: String,
    /// Asked for besides `openid` (default `["email"]`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// The claim that is the Lattice username (default `email`).
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Refuse a login whose `email_verified` is not true (default true).
    #[serde(default)]
    pub require_verified_email: Option<bool>,
    /// Create the user on first login (default false: only pre-created users).
    #[serde(default)]
    pub create_users: bool,
    /// With `create_users`: the scopes of the users it creates (within yours).
    #[serde(default)]
    pub new_user_scopes: Vec<String>,
    /// With `create_users`: groups of your org (not `admins`) they join.
    #[serde(default)]
    pub new_user_groups: Vec<String>,
}

/// A provider, with the redirect URL to register at it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoProvider {
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub require_verified_email: bool,
    pub create_users: bool,
    /// Scopes of the users it creates.
    pub new_user_scopes: Vec<String>,
    /// Groups the users it creates join.
    pub new_user_groups: Vec<String>,
    /// Register this exact URL as the client's redirect URI at the provider.
    pub redirect_url: String,
    pub created_at_ms: i64,
    /// Username.
    pub created_by: String,
}

/// The org's providers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SsoProviderList {
    pub providers: Vec<SsoProvider>,
}

fn provider(p: pb::SsoProvider, base: &str) -> SsoProvider {
    SsoProvider {
        redirect_url: format!("{base}/api/v1/auth/sso/{}/callback", p.name),
        id: p.id,
        name: p.name,
        display_name: p.display_name,
        issuer: p.issuer,
        client_id: p.client_id,
        scopes: p.scopes,
        username_claim: p.username_claim,
        require_verified_email: p.require_verified_email,
        create_users: p.create_users,
        new_user_scopes: p.new_user_scopes,
        new_user_groups: p.new_user_groups,
        created_at_ms: p.created_at_ms,
        created_by: p.created_by,
    }
}

/// Add a provider (`users:admin`). Its discovery document is fetched and checked
/// first: a wrong issuer is 422 saying what was fetched and what failed.
#[utoipa::path(post, path = "/api/v1/sso/providers", tag = "sso", request_body = CreateSsoProvider,
    responses((status = 201, body = SsoProvider),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON or an invalid field"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "Your org has a provider of that name"),
        (status = 422, body = crate::error::ErrorBody, description = "The provider's discovery document could not be fetched or is not valid for that issuer")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: http::Uri,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<CreateSsoProvider>,
) -> Result<(StatusCode, Json<SsoProvider>), ApiError> {
    caller.require("users:admin")?;
    let display_name = if body.display_name.is_empty() {
        body.name.clone()
    } else {
        body.display_name
    };
    let p = state
        .identity
        .clone()
        .create_sso_provider(caller.request(
            &state,
            pb::CreateSsoProviderRequest {
                name: body.name,
                display_name,
                issuer: body.issuer,
                client_id: body.client_id,
                client_secret: body.client_secret,
                scopes: body.scopes.unwrap_or_else(|| vec!["email".into()]),
                username_claim: body.username_claim.unwrap_or_default(),
                require_verified_email: body.require_verified_email.unwrap_or(true),
                create_users: body.create_users,
                new_user_scopes: body.new_user_scopes,
                new_user_groups: body.new_user_groups,
            },
        ))
        .await?
        .into_inner();
    let base = public_base(&state, &uri, &headers);
    Ok((StatusCode::CREATED, Json(provider(p, &base))))
}

/// The org's providers (`users:read`).
#[utoipa::path(get, path = "/api/v1/sso/providers", tag = "sso",
    responses((status = 200, body = SsoProviderList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: http::Uri,
    headers: http::HeaderMap,
) -> Result<Json<SsoProviderList>, ApiError> {
    caller.require("users:read")?;
    let r = state
        .identity
        .clone()
        .list_sso_providers(caller.request(&state, pb::ListSsoProvidersRequest {}))
        .await?
        .into_inner();
    let base = public_base(&state, &uri, &headers);
    Ok(Json(SsoProviderList {
        providers: r
            .providers
            .into_iter()
            .map(|p| provider(p, &base))
            .collect(),
    }))
}

/// One provider (`users:read`).
#[utoipa::path(get, path = "/api/v1/sso/providers/{name}", tag = "sso",
    responses((status = 200, body = SsoProvider),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such provider in your org")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: http::Uri,
    headers: http::HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<SsoProvider>, ApiError> {
    caller.require("users:read")?;
    let p = state
        .identity
        .clone()
        .get_sso_provider(caller.request(&state, pb::SsoProviderRequest { name }))
        .await?
        .into_inner();
    let base = public_base(&state, &uri, &headers);
    Ok(Json(provider(p, &base)))
}

/// Remove a provider (`users:admin`); users it bound keep their accounts.
#[utoipa::path(delete, path = "/api/v1/sso/providers/{name}", tag = "sso",
    responses((status = 204, description = "Removed"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such provider in your org")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .delete_sso_provider(caller.request(&state, pb::SsoProviderRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The cookie that ties a login started in this browser to its callback.
const STATE_COOKIE: &str = "lattice_sso_state";

/// `s` with every byte but the unreserved ones (RFC 3986) percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Which org's sign-in page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SignInQuery {
    /// The org's name (absent: `default`).
    #[serde(default)]
    pub org: String,
}

/// A provider a sign-in page offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInProvider {
    /// Its name (in the start URL).
    pub name: String,
    /// What the button says.
    pub display_name: String,
    /// Where the button goes: the start of the login, back to the dashboard after.
    pub start_url: String,
}

/// The providers a sign-in page offers.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignInProviders {
    pub providers: Vec<SignInProvider>,
}

/// The single sign-on providers a sign-in page offers, for anyone: names and
/// display names only (the identity service decides what is public). An org that
/// does not exist has none.
#[utoipa::path(get, path = "/api/v1/auth/sso/providers", tag = "auth", params(SignInQuery), security(()),
    responses((status = 200, body = SignInProviders),
        (status = 400, body = crate::error::ErrorBody, description = "An unknown query parameter, or an org that is not a valid name")))]
pub async fn sign_in_providers(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::caller::PeerAddr>>,
    headers: http::HeaderMap,
    crate::extract::Query(q): crate::extract::Query<SignInQuery>,
) -> Result<Json<SignInProviders>, ApiError> {
    let ip = crate::routes::auth::anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::SsoSignInProvidersRequest { org: q.org.clone() },
    );
    let r = state
        .identity
        .clone()
        .sso_sign_in_providers(req)
        .await?
        .into_inner();
    let org = if q.org.is_empty() {
        String::new()
    } else {
        format!("&org={}", q.org)
    };
    Ok(Json(SignInProviders {
        providers: r
            .providers
            .into_iter()
            .map(|p| SignInProvider {
                start_url: format!("/api/v1/auth/sso/{}/start?return_to=/ui/{org}", p.name),
                name: p.name,
                display_name: p.display_name,
            })
            .collect(),
    }))
}

/// Where a login goes after it.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StartQuery {
    /// A path on this site to land on (default `/`).
    #[serde(default)]
    pub return_to: String,
    /// The org whose provider this is (default: the default org).
    #[serde(default)]
    pub org: String,
    /// A CLI login (`lattice login --sso`): its loopback port on 127.0.0.1...
    #[serde(default)]
    pub cli_port: u16,
    /// ...and its PKCE S256 challenge.
    #[serde(default)]
    pub cli_challenge: String,
}

fn redirect_url(
    state: &AppState,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    provider: &str,
) -> String {
    format!(
        "{}/api/v1/auth/sso/{provider}/callback",
        public_base(state, uri, headers)
    )
}

fn cookie(state: &AppState, value: &str, max_age: i64) -> Result<http::HeaderValue, ApiError> {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    http::HeaderValue::from_str(&format!(
        "{STATE_COOKIE}={value}; Path=/api/v1/auth/sso; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "cannot build the state cookie"))
}

/// Start a login through provider `provider`: 302 to the provider, with a state
/// cookie the callback checks. The dashboard's SSO buttons link here.
#[utoipa::path(get, path = "/api/v1/auth/sso/{provider}/start", tag = "auth", params(StartQuery), security(()),
    responses((status = 302, description = "To the provider's login"),
        (status = 400, body = crate::error::ErrorBody, description = "A return_to that is not a path on this site"),
        (status = 404, body = crate::error::ErrorBody, description = "No such provider (or org)"),
        (status = 422, body = crate::error::ErrorBody, description = "The provider's discovery failed")))]
pub async fn start(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::caller::PeerAddr>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    Path(provider): Path<String>,
    axum::extract::Query(q): axum::extract::Query<StartQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let ip = crate::routes::auth::anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::SsoStartRequest {
            org: q.org,
            redirect_url: redirect_url(&state, &uri, &headers, &provider),
            provider,
            return_to: q.return_to,
            cli_port: u32::from(q.cli_port),
            cli_challenge: q.cli_challenge,
        },
    );
    let s = state.identity.clone().sso_start(req).await?.into_inner();
    let mut resp = StatusCode::FOUND.into_response();
    let location = http::HeaderValue::from_str(&s.authorize_url)
        .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "bad authorization URL"))?;
    resp.headers_mut().insert(http::header::LOCATION, location);
    resp.headers_mut()
        .append(http::header::SET_COOKIE, cookie(&state, &s.state, 600)?);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// What the provider sends back.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CallbackQuery {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub state: String,
    /// RFC 9207: the issuer that answered.
    #[serde(default)]
    pub iss: String,
    /// The provider refused or failed (`access_denied`, ...).
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// The provider's answer: sets the session cookies and redirects to `return_to`
/// (or `/`); with TOTP on, answers the TOTP step (`mfa_required`, `mfa_token` for
/// `POST /api/v1/auth/login/totp`). Every refusal is 403 saying why, and audited.
#[utoipa::path(get, path = "/api/v1/auth/sso/{provider}/callback", tag = "auth", params(CallbackQuery), security(()),
    responses((status = 303, description = "Logged in: to return_to, with the session cookies"),
        (status = 200, body = crate::routes::auth::LoginAnswer, description = "TOTP is on: the second step"),
        (status = 400, body = crate::error::ErrorBody, description = "A malformed query"),
        (status = 403, body = crate::error::ErrorBody, description = "Refused: wrong or used state, a refused code, an ID token that does not verify, an unverified email, no such user"),
        (status = 404, body = crate::error::ErrorBody, description = "No such provider")))]
pub async fn callback(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::caller::PeerAddr>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    Path(provider): Path<String>,
    axum::extract::Query(q): axum::extract::Query<CallbackQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    if !q.error.is_empty() {
        return Err(ApiError::new(
            lattice_core::ErrorCode::PermissionDenied,
            format!(
                "single sign-on refused by the provider: {} {}",
                q.error.chars().take(100).collect::<String>(),
                q.error_description.chars().take(300).collect::<String>()
            ),
        ));
    }
    let cookie_state = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            c.trim()
                .strip_prefix(&format!("{STATE_COOKIE}="))
                .map(str::to_owned)
        })
        .next()
        .unwrap_or_default();
    let ip = crate::routes::auth::anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::SsoCallbackRequest {
            redirect_url: redirect_url(&state, &uri, &headers, &provider),
            provider,
            cookie_state,
            state: q.state,
            code: q.code,
            iss: q.iss,
            user_agent: crate::routes::auth::user_agent(&headers),
        },
    );
    let r = state.identity.clone().sso_callback(req).await?.into_inner();
    if !r.cli_redirect.is_empty() {
        // A CLI login: on to its loopback listener with the one-time code.
        let mut resp = StatusCode::SEE_OTHER.into_response();
        let location = http::HeaderValue::from_str(&r.cli_redirect)
            .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "bad CLI redirect"))?;
        resp.headers_mut().insert(http::header::LOCATION, location);
        resp.headers_mut()
            .append(http::header::SET_COOKIE, cookie(&state, "", 0)?);
        return Ok(resp);
    }
    let login = r.login.unwrap_or_default();
    if let Some(pb::login_response::Outcome::Mfa(m)) = &login.outcome
        && r.return_to.starts_with("/ui")
    {
        // The dashboard's TOTP step: the challenge rides in the fragment, which the
        // browser never sends anywhere; the sign-in page asks for the code.
        let to = format!(
            "/ui/login#mfa={}&next={}",
            m.mfa_token,
            percent_encode(&r.return_to)
        );
        let mut resp = StatusCode::SEE_OTHER.into_response();
        let location = http::HeaderValue::from_str(&to)
            .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "bad return_to"))?;
        resp.headers_mut().insert(http::header::LOCATION, location);
        resp.headers_mut()
            .append(http::header::SET_COOKIE, cookie(&state, "", 0)?);
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        return Ok(resp);
    }
    let session = matches!(login.outcome, Some(pb::login_response::Outcome::Session(_)));
    let mut resp = crate::routes::auth::login_response(&state, login)?;
    resp.headers_mut()
        .append(http::header::SET_COOKIE, cookie(&state, "", 0)?);
    if session {
        *resp.status_mut() = StatusCode::SEE_OTHER;
        let to = if r.return_to.is_empty() {
            "/".to_owned()
        } else {
            r.return_to
        };
        let location = http::HeaderValue::from_str(&to)
            .map_err(|_| ApiError::new(lattice_core::ErrorCode::Internal, "bad return_to"))?;
        resp.headers_mut().insert(http::header::LOCATION, location);
    }
    Ok(resp)
}

/// The CLI's one-time code and PKCE verifier.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CliExchange {
    /// From the redirect to the CLI's loopback listener.
    pub code: String,
    /// The PKCE verifier whose S256 challenge started the login.
    pub verifier: String,
}

/// The CLI's end of a single sign-on login (`lattice login --sso`): its one-time
/// code and PKCE verifier for a session, or the TOTP step, as after a password.
#[utoipa::path(post, path = "/api/v1/auth/sso/cli/exchange", tag = "auth", request_body = CliExchange, security(()),
    responses((status = 200, body = crate::routes::auth::LoginAnswer, description = "A session (cookies), or `mfa_required`"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or a code or verifier over 256 characters"),
        (status = 413, body = crate::error::ErrorBody, description = "The body is larger than `gateway.body_limit_bytes`"),
        (status = 422, body = crate::error::ErrorBody, description = "A field of the wrong type"),
        (status = 403, body = crate::error::ErrorBody, description = "An unknown, used or expired code, or a verifier that does not match")))]
pub async fn cli_exchange(
    State(state): State<Arc<AppState>>,
    peer: Option<axum::Extension<crate::caller::PeerAddr>>,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<CliExchange>,
) -> Result<axum::response::Response, ApiError> {
    if body.code.len() > 256 || body.verifier.len() > 256 {
        return Err(ApiError::bad_request("code or verifier is too long"));
    }
    let ip = crate::routes::auth::anonymous_ip(&state, &headers, peer.as_ref().map(|p| &p.0));
    let req = lattice_core::grpc::request(
        &state.internal,
        &state.service_principal,
        Some(&ip),
        pb::SsoCliExchangeRequest {
            code: body.code,
            verifier: body.verifier,
            user_agent: crate::routes::auth::user_agent(&headers),
        },
    );
    let login = state
        .identity
        .clone()
        .sso_cli_exchange(req)
        .await?
        .into_inner();
    crate::routes::auth::login_response(&state, login)
}
