//! `/api/v1/groups`: groups of the caller's org's users and their members.

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

/// New group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// 1 to 63 lowercase letters, digits or `-`, not starting or ending with `-`;
    /// unique in your org.
    pub name: String,
    /// What it is for: at most 256 characters, no control characters.
    #[serde(default)]
    pub description: String,
}

/// A group.
#[derive(Debug, Serialize, ToSchema)]
pub struct Group {
    /// Id.
    pub id: String,
    /// Name, unique in the org.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// How many members it has.
    pub member_count: i64,
    /// Usernames of its members, sorted (absent in listings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
    /// Created.
    pub created_at_ms: i64,
    /// Last change of the group or its members.
    pub updated_at_ms: i64,
}

/// Group list.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Groups by name.
    pub groups: Vec<Group>,
}

fn group(g: pb::Group, with_members: bool) -> Group {
    Group {
        id: g.id,
        name: g.name,
        description: g.description,
        member_count: g.member_count,
        members: with_members.then_some(g.members),
        created_at_ms: g.created_at_ms,
        updated_at_ms: g.updated_at_ms,
    }
}

/// List the groups of your org, with their member counts (`users:read`).
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = GroupList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<GroupList>, ApiError> {
    caller.require("users:read")?;
    let r = state
        .identity
        .clone()
        .list_groups(caller.request(&state, pb::ListGroupsRequest {}))
        .await?
        .into_inner();
    Ok(Json(GroupList {
        groups: r.groups.into_iter().map(|g| group(g, false)).collect(),
    }))
}

/// Create a group (`users:admin`).
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = Group),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid name or description"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "Your org has a group of that name")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    caller.require("users:admin")?;
    let g = state
        .identity
        .clone()
        .create_group(caller.request(
            &state,
            pb::CreateGroupRequest {
                name: body.name,
                description: body.description,
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(group(g, true))))
}

/// A group and its members (`users:read`).
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 200, body = Group),
        (status = 400, body = crate::error::ErrorBody, description = "Not a group name"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such group in your org")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Group>, ApiError> {
    caller.require("users:read")?;
    let g = state
        .identity
        .clone()
        .get_group(caller.request(&state, pb::GetGroupRequest { name }))
        .await?
        .into_inner();
    Ok(Json(group(g, true)))
}

/// Delete a group and its memberships (`users:admin`); `admins` cannot be deleted.
#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups",
    params(("name" = String, Path, description = "group name")),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a group name"),
        (status = 404, body = crate::error::ErrorBody, description = "No such group in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The `admins` group, which every org has")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .delete_group(caller.request(&state, pb::DeleteGroupRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Make a user a member of a group (`users:admin`; `*` for `admins`). Adding a member
/// again changes nothing.
#[utoipa::path(put, path = "/api/v1/groups/{name}/members/{username}", tag = "groups",
    params(("name" = String, Path, description = "group name"), ("username" = String, Path, description = "a user of your org")),
    responses((status = 204, description = "A member (now or already)"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a group name or not a username"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin` (or `*` for the `admins` group), or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such group or user in your org")))]
pub async fn add_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .add_group_member(caller.request(&state, pb::AddGroupMemberRequest { name, username }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a user from a group (`users:admin`; `*` for `admins`).
#[utoipa::path(delete, path = "/api/v1/groups/{name}/members/{username}", tag = "groups",
    params(("name" = String, Path, description = "group name"), ("username" = String, Path, description = "a member of the group")),
    responses((status = 204, description = "Removed"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a group name or not a username"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin` (or `*` for the `admins` group), or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such group or user in your org, or the user is not a member")))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((name, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .remove_group_member(
            caller.request(&state, pb::RemoveGroupMemberRequest { name, username }),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
