//! `/api/v1/tokens`: operator API tokens.

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

/// New token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Label.
    pub name: String,
    /// Scopes; never more than the caller's.
    pub scopes: Vec<String>,
    /// Lifetime in seconds; 0 or absent: no expiry.
    #[serde(default)]
    pub expires_in_s: i64,
    /// The org the token acts in: another org you are a member of (with
    /// `tokens:write` there; your scopes there bound the token's). Absent: the org
    /// you act in now.
    #[serde(default)]
    pub org: String,
}

/// A token (never its secret, except once at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Owner.
    pub user_id: String,
    /// Created.
    pub created_at_ms: i64,
    /// Expiry (null: none).
    pub expires_at_ms: Option<i64>,
    /// Last use (null: never).
    pub last_used_at_ms: Option<i64>,
    /// The secret: only in the creation answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Token list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Live tokens, newest first.
    pub tokens: Vec<Token>,
}

fn token(t: pb::Token, secret: Option<String>) -> Token {
    Token {
        id: t.id,
        name: t.name,
        scopes: t.scopes,
        user_id: t.user_id,
        created_at_ms: t.created_at_ms,
        expires_at_ms: (t.expires_at_ms != 0).then_some(t.expires_at_ms),
        last_used_at_ms: (t.last_used_at_ms != 0).then_some(t.last_used_at_ms),
        token: secret,
    }
}

/// Create a token; the secret is in the answer, once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = Token),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid name, scope or expires_in_s"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `tokens:write`, scopes beyond yours, not a member of `org`, the org's `max_tokens` limit reached (`limit_exceeded`), or no `X-CSRF-Token`")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<Token>), ApiError> {
    caller.require("tokens:write")?;
    let r = state
        .identity
        .clone()
        .create_token(caller.request(
            &state,
            pb::CreateTokenRequest {
                name: body.name,
                scopes: body.scopes,
                expires_in_s: body.expires_in_s,
                org: body.org,
            },
        ))
        .await?
        .into_inner();
    let t = r.token.ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Internal,
            "identity returned no token",
        )
    })?;
    Ok((StatusCode::CREATED, Json(token(t, Some(r.secret)))))
}

/// List your tokens (every token of the org with `users:admin`).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", responses((status = 200, body = TokenList)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    let r = state
        .identity
        .clone()
        .list_tokens(caller.request(&state, pb::ListTokensRequest {}))
        .await?
        .into_inner();
    Ok(Json(TokenList {
        tokens: r.tokens.into_iter().map(|t| token(t, None)).collect(),
    }))
}

/// Revoke a token: your own (no scope needed), or any of the org's with `users:admin`.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "token id")),
    responses((status = 204, description = "Revoked"),
        (status = 404, body = crate::error::ErrorBody, description = "No such live token (of yours, without `users:admin`)")))]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .identity
        .clone()
        .revoke_token(caller.request(&state, pb::RevokeTokenRequest { id: id.clone() }))
        .await?;
    state
        .auth_generation
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state
        .auth_cache
        .invalidate_entries_if(move |_, c| c.principal.credential_id == id)
        .ok();
    Ok(StatusCode::NO_CONTENT)
}
