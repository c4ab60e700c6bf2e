//! `/api/v1/orgs`: organisations (the platform scope `orgs:admin`), the caller's
//! memberships, invitations, and members' scopes in the caller's org.
//!
//! Deleting an org spans services: identity first stops every credential in it
//! (`deleting`), then each service that keeps data per org drops it, then identity
//! removes its own part in one transaction. A deletion cut short leaves an org that
//! is `deleting` and unusable; asking again resumes it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use http::{HeaderMap, StatusCode, Uri};
use lattice_proto::identity::v1 as pb;
use lattice_proto::orgs::v1 as orgs_pb;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::json::ApiJson;
use crate::routes::users::{User, user};

/// An org's limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// KV and static buckets.
    #[serde(default)]
    pub max_buckets: i64,
    /// Bytes stored in the org's buckets (KV values and site files).
    #[serde(default)]
    pub max_stored_bytes: i64,
    /// Enrolled nodes.
    #[serde(default)]
    pub max_nodes: i64,
    /// Live operator tokens.
    #[serde(default)]
    pub max_tokens: i64,
}

impl From<Limits> for pb::Limits {
    fn from(l: Limits) -> Self {
        Self {
            max_buckets: l.max_buckets,
            max_stored_bytes: l.max_stored_bytes,
            max_nodes: l.max_nodes,
            max_tokens: l.max_tokens,
        }
    }
}

impl From<pb::Limits> for Limits {
    fn from(l: pb::Limits) -> Self {
        Self {
            max_buckets: l.max_buckets,
            max_stored_bytes: l.max_stored_bytes,
            max_nodes: l.max_nodes,
            max_tokens: l.max_tokens,
        }
    }
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Created.
    pub created_at_ms: i64,
    /// `active`, or `deleting` (a deletion began and has not finished: nothing works
    /// in the org; `DELETE` it again to finish).
    pub state: String,
    /// Its limits.
    pub limits: Limits,
    /// Members.
    pub member_count: i64,
    /// What it holds, by kind (only in `GET /api/v1/orgs/{name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<BTreeMap<String, i64>>,
}

fn org(o: pb::Org) -> Org {
    Org {
        id: o.id,
        name: o.name,
        created_at_ms: o.created_at_ms,
        state: if o.deleting_at_ms == 0 {
            "active"
        } else {
            "deleting"
        }
        .into(),
        limits: o.limits.map(Limits::from).unwrap_or_default(),
        member_count: o.member_count,
        usage: None,
    }
}

/// Org list.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    /// By name.
    pub orgs: Vec<Org>,
}

/// New org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1 to 63 lowercase letters, digits or `-`, not starting or ending with `-`.
    pub name: String,
    /// The user who administers it (a member with `*` in its `admins` group);
    /// absent: you.
    #[serde(default)]
    pub admin: String,
    /// Absent: no limits.
    #[serde(default)]
    pub limits: Limits,
}

/// A change to an org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateOrg {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// New limits (all four; 0: none).
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// How to delete.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete even when the org holds buckets, nodes, tasks, policies or tokens,
    /// and remove all of it.
    #[serde(default)]
    pub force: bool,
}

/// What a deletion removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The org.
    pub name: String,
    /// What each service removed, by kind.
    pub removed: BTreeMap<String, BTreeMap<String, i64>>,
}

fn require_platform(caller: &Caller) -> Result<(), ApiError> {
    caller.require("orgs:admin")
}

/// Every org (`orgs:admin`).
#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs",
    responses((status = 200, body = OrgList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `orgs:admin`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<OrgList>, ApiError> {
    require_platform(&caller)?;
    let r = state
        .identity
        .clone()
        .list_orgs(caller.request(&state, pb::ListOrgsRequest {}))
        .await?
        .into_inner();
    Ok(Json(OrgList {
        orgs: r.orgs.into_iter().map(org).collect(),
    }))
}

/// Create an org (`orgs:admin`).
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 201, body = Org),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid name, or a negative limit"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `orgs:admin`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such admin user"),
        (status = 409, body = crate::error::ErrorBody, description = "An org of that name exists")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    require_platform(&caller)?;
    let o = state
        .identity
        .clone()
        .create_org(caller.request(
            &state,
            pb::CreateOrgRequest {
                name: body.name,
                admin_username: body.admin,
                limits: Some(body.limits.into()),
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(org(o))))
}

/// The org, and what every service holds of it, by kind.
async fn usage(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<(pb::Org, BTreeMap<String, i64>), ApiError> {
    let r = state
        .identity
        .clone()
        .org_usage(caller.request(
            state,
            pb::OrgRequest {
                name: name.to_owned(),
            },
        ))
        .await?
        .into_inner();
    let mut all: BTreeMap<String, i64> = r.counts.into_iter().collect();
    for (_, client) in &state.org_data {
        let c = client
            .clone()
            .usage(caller.request(
                state,
                orgs_pb::OrgDataRequest {
                    org_id: r.org_id.clone(),
                },
            ))
            .await?
            .into_inner();
        for (k, n) in c.counts {
            *all.entry(k).or_default() += n;
        }
    }
    let org = r.org.ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Internal,
            "identity returned no org",
        )
    })?;
    Ok((org, all))
}

/// An org and what it holds (`orgs:admin`).
#[utoipa::path(get, path = "/api/v1/orgs/{name}", tag = "orgs",
    params(("name" = String, Path, description = "org name")),
    responses((status = 200, body = Org),
        (status = 400, body = crate::error::ErrorBody, description = "Not an org name"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `orgs:admin`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such org")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Org>, ApiError> {
    require_platform(&caller)?;
    let (o, counts) = usage(&state, &caller, &name).await?;
    Ok(Json(Org {
        usage: Some(counts),
        ..org(o)
    }))
}

/// Rename an org or set its limits (`orgs:admin`).
#[utoipa::path(patch, path = "/api/v1/orgs/{name}", tag = "orgs", request_body = UpdateOrg,
    params(("name" = String, Path, description = "org name")),
    responses((status = 200, body = Org),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid name, or a negative limit"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `orgs:admin`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such org"),
        (status = 409, body = crate::error::ErrorBody, description = "The new name is taken, or the org is being deleted")))]
pub async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateOrg>,
) -> Result<Json<Org>, ApiError> {
    require_platform(&caller)?;
    let o = state
        .identity
        .clone()
        .update_org(caller.request(
            &state,
            pb::UpdateOrgRequest {
                name,
                new_name: body.name.unwrap_or_default(),
                limits: body.limits.map(Into::into),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(org(o)))
}

/// Delete an org (`orgs:admin`). Refused while it holds anything unless `force`;
/// with `force` everything it owns is removed (its audit trail stays). A deletion
/// cut short leaves the org `deleting`; delete it again to finish.
#[utoipa::path(delete, path = "/api/v1/orgs/{name}", tag = "orgs",
    params(("name" = String, Path, description = "org name"), DeleteQuery),
    responses((status = 200, body = Deleted),
        (status = 400, body = crate::error::ErrorBody, description = "Not an org name, or a bad query"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `orgs:admin`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such org"),
        (status = 409, body = crate::error::ErrorBody, description = "The org holds something (named) and `force` was not given, or it is the org you act in"),
        (status = 503, body = crate::error::ErrorBody, description = "A service could not drop its part; the org stays `deleting`, delete again")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Deleted>, ApiError> {
    require_platform(&caller)?;
    let (current, counts) = usage(&state, &caller, &name).await?;
    let org_id = current.id.clone();
    // A deletion that began already goes on whatever the org holds.
    if !q.force && current.deleting_at_ms == 0 && !counts.is_empty() {
        let held: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        return Err(ApiError::new(
            lattice_core::ErrorCode::Conflict,
            format!(
                "org {name:?} holds {}; delete with ?force=true to remove all of it",
                held.join(", ")
            ),
        ));
    }
    state
        .identity
        .clone()
        .begin_delete_org(caller.request(&state, pb::OrgRequest { name: name.clone() }))
        .await?;
    let mut removed = BTreeMap::new();
    for (service, client) in &state.org_data {
        let c = client
            .clone()
            .purge(caller.request(
                &state,
                orgs_pb::OrgDataRequest {
                    org_id: org_id.clone(),
                },
            ))
            .await
            .map_err(|status| {
                let e = ApiError::from(status);
                ApiError::new(
                    lattice_core::ErrorCode::Unavailable,
                    format!(
                        "org {name:?} is being deleted, but the {service} service could not drop its part ({}); delete it again to finish",
                        e.message
                    ),
                )
            })?
            .into_inner();
        if !c.counts.is_empty() {
            removed.insert((*service).to_owned(), c.counts.into_iter().collect());
        }
    }
    let r = state
        .identity
        .clone()
        .finish_delete_org(caller.request(&state, pb::OrgRequest { name: name.clone() }))
        .await?
        .into_inner();
    if !r.removed.is_empty() {
        removed.insert("identity".into(), r.removed.into_iter().collect());
    }
    Ok(Json(Deleted { name, removed }))
}

/// One of your memberships.
#[derive(Debug, Serialize, ToSchema)]
pub struct Membership {
    /// Org id.
    pub org_id: String,
    /// Org name.
    pub org: String,
    /// Your scopes there.
    pub scopes: Vec<String>,
    /// The org your account belongs to.
    pub home: bool,
    /// The org this credential acts in.
    pub current: bool,
}

fn membership(m: pb::Membership) -> Membership {
    Membership {
        org_id: m.org_id,
        org: m.org_name,
        scopes: m.scopes,
        home: m.home,
        current: m.current,
    }
}

/// Your memberships.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipList {
    /// Home org first, then by name.
    pub memberships: Vec<Membership>,
}

/// The orgs you belong to, with your scopes in each.
#[utoipa::path(get, path = "/api/v1/auth/orgs", tag = "auth",
    responses((status = 200, body = MembershipList)))]
pub async fn mine(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<MembershipList>, ApiError> {
    let r = state
        .identity
        .clone()
        .my_orgs(caller.request(&state, pb::MyOrgsRequest {}))
        .await?
        .into_inner();
    Ok(Json(MembershipList {
        memberships: r.memberships.into_iter().map(membership).collect(),
    }))
}

/// New invitation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// An existing user (of any org).
    pub username: String,
    /// Their scopes in your org; never more than yours.
    pub scopes: Vec<String>,
    /// Lifetime in seconds, at most 30 days; 0 or absent: 7 days.
    #[serde(default)]
    pub expires_in_s: i64,
}

/// An invitation, with its one-time code (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// Id.
    pub id: String,
    /// The one-time code.
    pub code: String,
    /// The link to hand to the user: the code rides in the fragment, which
    /// browsers never send to a server (so no log keeps it).
    pub link: String,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Invite an existing user into your org (`users:admin`).
#[utoipa::path(post, path = "/api/v1/invitations", tag = "orgs", request_body = CreateInvitation,
    responses((status = 201, body = Invitation),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid username, scope or lifetime"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such user"),
        (status = 409, body = crate::error::ErrorBody, description = "Already a member")))]
pub async fn invite(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateInvitation>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    caller.require("users:admin")?;
    let r = state
        .identity
        .clone()
        .create_invitation(caller.request(
            &state,
            pb::CreateInvitationRequest {
                username: body.username,
                scopes: body.scopes,
                expires_in_s: body.expires_in_s,
            },
        ))
        .await?
        .into_inner();
    let base = crate::routes::nodes::public_base(&state, &uri, &headers);
    Ok((
        StatusCode::CREATED,
        Json(Invitation {
            id: r.id,
            link: format!("{base}/ui/invitations#{}", r.code),
            code: r.code,
            expires_at_ms: r.expires_at_ms,
        }),
    ))
}

/// An invitation's code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The code (or the whole link).
    pub code: String,
}

/// Accept an invitation addressed to you: you become a member of its org.
#[utoipa::path(post, path = "/api/v1/invitations/accept", tag = "orgs", request_body = AcceptInvitation,
    responses((status = 200, body = Membership),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON"),
        (status = 403, body = crate::error::ErrorBody, description = "No `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "The code is unknown, used, expired, or for another user")))]
pub async fn accept(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<AcceptInvitation>,
) -> Result<Json<Membership>, ApiError> {
    let code = body
        .code
        .rsplit_once('#')
        .map_or(body.code.as_str(), |(_, c)| c)
        .trim()
        .to_owned();
    let m = state
        .identity
        .clone()
        .accept_invitation(caller.request(&state, pb::AcceptInvitationRequest { code }))
        .await?
        .into_inner();
    Ok(Json(membership(m)))
}

/// A member's scopes in your org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberScopes {
    /// Never more than yours.
    pub scopes: Vec<String>,
}

/// Set a member's scopes in your org (`users:admin`).
#[utoipa::path(put, path = "/api/v1/users/{id}/scopes", tag = "users", request_body = MemberScopes,
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = User),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an unknown scope"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such member"),
        (status = 409, body = crate::error::ErrorBody, description = "Your own membership")))]
pub async fn set_scopes(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<MemberScopes>,
) -> Result<Json<User>, ApiError> {
    caller.require("users:admin")?;
    let u = state
        .identity
        .clone()
        .set_member_scopes(caller.request(
            &state,
            pb::SetMemberScopesRequest {
                user_id: id,
                scopes: body.scopes,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(user(u)))
}

/// Remove a member from your org (`users:admin`): their sessions and tokens here
/// stop. Not for the org an account belongs to.
#[utoipa::path(delete, path = "/api/v1/users/{id}/membership", tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = super::Ok),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `users:admin`, a member with scopes beyond yours, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such member"),
        (status = 409, body = crate::error::ErrorBody, description = "Your own membership, or the member's home org")))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<super::Ok>, ApiError> {
    caller.require("users:admin")?;
    state
        .identity
        .clone()
        .remove_member(caller.request(&state, pb::RemoveMemberRequest { user_id: id }))
        .await?;
    Ok(Json(super::Ok { ok: true }))
}
