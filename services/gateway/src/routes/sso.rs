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
