//! `/api/v1/users`: users of the caller's org.

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

/// New user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Login name (letters, digits, `._@-`; stored lowercase).
    pub username: String,
    /// 12 to 1024 characters.
    pub password: String,
    /// Scopes; never more than the caller's.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A user.
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    /// Id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// Org.
    pub org_id: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// TOTP on.
    pub totp_enabled: bool,
    /// Created.
    pub created_at_ms: i64,
    /// Locked until (null: not locked).
    pub locked_until_ms: Option<i64>,
    /// Disabled: no login, and no credential of the account works.
    pub disabled: bool,
}

/// User list.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    /// Users by name.
    pub users: Vec<User>,
}

pub(crate) fn user(u: pb::User) -> User {
    let now = lattice_core::time::now_ms();
    User {
        id: u.id,
        username: u.username,
        org_id: u.org_id,
        scopes: u.scopes,
        totp_enabled: u.totp_enabled,
        created_at_ms: u.created_at_ms,
        locked_until_ms: (u.locked_until_ms > now).then_some(u.locked_until_ms),
        disabled: u.disabled_at_ms != 0,
    }
}

/// Create a user (`users:admin`).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid username, password or scope"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "The username is taken")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    caller.require("users:admin")?;
    let u = state
        .identity
        .clone()
        .create_user(caller.request(
            &state,
            pb::CreateUserRequest {
                username: body.username,
                password: body.password,
                scopes: body.scopes,
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(user(u))))
}

/// List users (`users:read`).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, body = UserList),
    (status = 403, body = crate::error::ErrorBody, description = "Missing `users:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<UserList>, ApiError> {
    caller.require("users:read")?;
    let r = state
        .identity
        .clone()
        .list_users(caller.request(&state, pb::ListUsersRequest {}))
        .await?
        .into_inner();
    Ok(Json(UserList {
        users: r.users.into_iter().map(user).collect(),
    }))
}

/// Lift a login lockout (`users:admin`).
#[utoipa::path(post, path = "/api/v1/users/{id}/unlock", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User), (status = 404, body = crate::error::ErrorBody, description = "No such user in your org")))]
pub async fn unlock(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    caller.require("users:admin")?;
    let u = state
        .identity
        .clone()
        .unlock_user(caller.request(&state, pb::UnlockUserRequest { user_id: id }))
        .await?
        .into_inner();
    Ok(Json(user(u)))
}

async fn set_disabled(
    state: &AppState,
    caller: &Caller,
    id: String,
    disabled: bool,
) -> Result<Json<User>, ApiError> {
    caller.require("users:admin")?;
    let u = state
        .identity
        .clone()
        .set_user_disabled(caller.request(
            state,
            pb::SetUserDisabledRequest {
                user_id: id.clone(),
                disabled,
            },
        ))
        .await?
        .into_inner();
    crate::caller::evict_user(state, &id);
    Ok(Json(user(u)))
}

/// Disable an account (`users:admin` of its home org, outranking it): no login,
/// no session or token of it works; its sessions end.
#[utoipa::path(post, path = "/api/v1/users/{id}/disable", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, a user with scopes beyond yours or of another org, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such user in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "Yourself")))]
pub async fn disable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    set_disabled(&state, &caller, id, true).await
}

/// Enable a disabled account again (`users:admin` of its home org).
#[utoipa::path(post, path = "/api/v1/users/{id}/enable", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, a user with scopes beyond yours or of another org, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such user in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "Yourself")))]
pub async fn enable(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    set_disabled(&state, &caller, id, false).await
}

/// Set another user's password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// 12 to 1024 characters.
    pub new_password: String,
}

/// Set a user's password (`users:admin`); their sessions end.
#[utoipa::path(post, path = "/api/v1/users/{id}/password", tag = "users", params(("id" = String, Path, description = "user id")),
    request_body = SetPassword, responses((status = 200, body = super::Ok),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or a password that is not 12 to 1024 characters"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, a user with scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such user in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "Your own id: change your password with /api/v1/auth/password")))]
pub async fn set_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SetPassword>,
) -> Result<Json<super::Ok>, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .set_password(caller.request(
            &state,
            pb::SetPasswordRequest {
                user_id: id.clone(),
                current_password: String::new(),
                new_password: body.new_password,
            },
        ))
        .await?;
    crate::caller::evict_user(&state, &id);
    Ok(Json(super::Ok::yes()))
}
