//! `/api/v1/intents` and `/api/v1/plans`: reviewed changes (intent, plan, approve
//! the hash reviewed, apply on the node). Validation, scopes, approval rules and
//! the rollout are the policy service's; this layer converts HTTP to gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use http::StatusCode;
use lattice_proto::policy::v1 as pb;
use lattice_proto::policy::v1::change_service_client::ChangeServiceClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::json::ApiJson;

fn client(state: &AppState) -> Result<ChangeServiceClient<crate::InternalService>, ApiError> {
    state.changes.clone().ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Unavailable,
            "the policy service is not configured on this gateway (run it here or set policy.url)",
        )
    })
}

/// Which nodes an intent targets: exactly one of `node` or `labels`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// One node, by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Every node of the org with all these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// An intent: desired state for its nodes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntentInput {
    /// Unique per org: 1-100 of `a-z`, `0-9`, `-`, `_`, `.`. On `PUT` it may be
    /// left out (the path names it) but must match when given.
    #[serde(default)]
    pub name: String,
    /// `firewall` (`dns`, `proxy` and `agent.update` are not built yet).
    pub kind: String,
    pub selector: Selector,
    /// The kind's spec (see docs/changes.md), validated field by field.
    #[schema(value_type = Object)]
    pub spec: Value,
}

/// A stored version of an intent.
#[derive(Debug, Serialize, ToSchema)]
pub struct Intent {
    pub name: String,
    pub kind: String,
    pub selector: Selector,
    #[schema(value_type = Object)]
    pub spec: Value,
    /// 1, 2, ...: every change is a new version.
    pub version: i64,
    pub created_at_ms: i64,
    /// Username.
    pub created_by: String,
}

/// Intents, or the versions of one.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntentList {
    pub intents: Vec<Intent>,
}

fn selector_pb(s: Selector) -> Result<pb::Selector, ApiError> {
    let target = match (s.node, s.labels) {
        (Some(node), None) => pb::selector::Target::Node(node),
        (None, Some(labels)) => pb::selector::Target::Labels(pb::Labels {
            labels: labels.into_iter().collect(),
        }),
        _ => {
            return Err(ApiError::new(
                lattice_core::ErrorCode::Unprocessable,
                "selector: exactly one of {\"node\": \"<node id>\"} or {\"labels\": {...}}",
            ));
        }
    };
    Ok(pb::Selector {
        target: Some(target),
    })
}

fn intent(i: pb::Intent) -> Intent {
    let selector = match i.selector.and_then(|s| s.target) {
        Some(pb::selector::Target::Node(n)) => Selector {
            node: Some(n),
            labels: None,
        },
        Some(pb::selector::Target::Labels(l)) => Selector {
            node: None,
            labels: Some(l.labels.into_iter().collect()),
        },
        None => Selector::default(),
    };
    Intent {
        name: i.name,
        kind: i.kind,
        selector,
        spec: serde_json::from_str(&i.spec_json).unwrap_or(Value::Null),
        version: i.version,
        created_at_ms: i.created_at_ms,
        created_by: i.created_by,
    }
}

async fn store_intent(
    state: &AppState,
    caller: &Caller,
    body: IntentInput,
    name: String,
) -> Result<Intent, ApiError> {
    let r = client(state)?
        .put_intent(caller.request(
            state,
            pb::PutIntentRequest {
                name,
                kind: body.kind,
                selector: Some(selector_pb(body.selector)?),
                spec_json: body.spec.to_string(),
            },
        ))
        .await?
        .into_inner();
    Ok(intent(r))
}

/// List the org's intents, each at its newest version (`policy:read`).
#[utoipa::path(get, path = "/api/v1/intents", tag = "changes",
    responses((status = 200, body = IntentList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn list_intents(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<IntentList>, ApiError> {
    let r = client(&state)?
        .list_intents(caller.request(&state, pb::ListIntentsRequest {}))
        .await?
        .into_inner();
    Ok(Json(IntentList {
        intents: r.intents.into_iter().map(intent).collect(),
    }))
}

/// Create an intent, or store a new version of it (`policy:write`). A bad field
/// (a port, a network, a comment) is 422 naming it, and nothing is stored.
#[utoipa::path(post, path = "/api/v1/intents", tag = "changes", request_body = IntentInput,
    responses((status = 201, body = Intent, description = "Stored: the new version"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "The intent exists with another kind"),
        (status = 422, body = crate::error::ErrorBody, description = "A field is invalid (the message names each one)"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn put_intent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<IntentInput>,
) -> Result<(StatusCode, Json<Intent>), ApiError> {
    let name = body.name.clone();
    Ok((
        StatusCode::CREATED,
        Json(store_intent(&state, &caller, body, name).await?),
    ))
}

/// Store a new version of intent `name` (`policy:write`).
#[utoipa::path(put, path = "/api/v1/intents/{name}", tag = "changes", request_body = IntentInput,
    params(("name" = String, Path, description = "Intent name")),
    responses((status = 200, body = Intent, description = "Stored: the new version"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "The intent exists with another kind"),
        (status = 422, body = crate::error::ErrorBody, description = "A field is invalid, or the body names another intent"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn replace_intent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<IntentInput>,
) -> Result<Json<Intent>, ApiError> {
    if !body.name.is_empty() && body.name != name {
        return Err(ApiError::new(
            lattice_core::ErrorCode::Unprocessable,
            format!("name: the body names {:?}, the path {name:?}", body.name),
        ));
    }
    Ok(Json(store_intent(&state, &caller, body, name).await?))
}

/// The newest version of an intent (`policy:read`).
#[utoipa::path(get, path = "/api/v1/intents/{name}", tag = "changes",
    params(("name" = String, Path, description = "Intent name")),
    responses((status = 200, body = Intent),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such intent (or deleted)"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn get_intent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Intent>, ApiError> {
    let r = client(&state)?
        .get_intent(caller.request(&state, pb::IntentRequest { name }))
        .await?
        .into_inner();
    Ok(Json(intent(r)))
}

/// Every version of an intent, newest first, a deletion included (`policy:read`).
#[utoipa::path(get, path = "/api/v1/intents/{name}/history", tag = "changes",
    params(("name" = String, Path, description = "Intent name")),
    responses((status = 200, body = IntentList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such intent"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn intent_history(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<IntentList>, ApiError> {
    let r = client(&state)?
        .intent_history(caller.request(&state, pb::IntentRequest { name }))
        .await?
        .into_inner();
    Ok(Json(IntentList {
        intents: r.intents.into_iter().map(intent).collect(),
    }))
}

/// Delete an intent (`policy:write`); its history stays.
#[utoipa::path(delete, path = "/api/v1/intents/{name}", tag = "changes",
    params(("name" = String, Path, description = "Intent name")),
    responses((status = 204, description = "Deleted"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such intent"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn delete_intent(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .delete_intent(caller.request(&state, pb::IntentRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One node of a plan.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanTarget {
    pub node: String,
    /// 0 is the canary; later waves go out once it has applied.
    pub wave: i64,
    /// What the node had when the plan was rendered: `sha256:<hex>`, or `none`.
    pub base_hash: String,
    /// Exactly what the node will load.
    pub artifact: String,
    /// Unified diff from the node's state to the artifact (empty: no change).
    pub diff: String,
    /// The node's state is not what Lattice last applied: someone edited it.
    pub drift: bool,
    /// `waiting`, `queued`, `applied`, `failed` or `skipped`.
    pub state: String,
    /// The apply task, once queued.
    pub task_id: Option<String>,
    /// The agent's result (before and after hashes, the tools' output).
    #[schema(value_type = Object)]
    pub result: Option<Value>,
}

/// A plan: immutable once rendered; only its state moves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Plan {
    pub id: String,
    /// `sha256:<hex>` over the kind and, per node, the node, its base and the
    /// artifact: what an approver sends back.
    pub hash: String,
    /// `pending`, `applying`, `applied`, `halted`, `rejected`, `cancelled` or
    /// `expired`.
    pub state: String,
    pub intent: String,
    pub intent_version: i64,
    pub kind: String,
    /// Username.
    pub author: String,
    pub created_at_ms: i64,
    /// A pending plan is expired after this.
    pub expires_at_ms: i64,
    /// Who approved, rejected or cancelled it.
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    /// A rejection's reason, or why the rollout halted.
    pub reason: Option<String>,
    /// Empty in listings.
    pub targets: Vec<PlanTarget>,
}

/// The newest plans.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

fn state_name(s: pb::PlanState) -> &'static str {
    match s {
        pb::PlanState::Pending => "pending",
        pb::PlanState::Applying => "applying",
        pb::PlanState::Applied => "applied",
        pb::PlanState::Halted => "halted",
        pb::PlanState::Rejected => "rejected",
        pb::PlanState::Cancelled => "cancelled",
        pb::PlanState::Expired => "expired",
        pb::PlanState::Unspecified => "unknown",
    }
}

fn target_state(s: pb::TargetState) -> &'static str {
    match s {
        pb::TargetState::Waiting => "waiting",
        pb::TargetState::Queued => "queued",
        pb::TargetState::Applied => "applied",
        pb::TargetState::Failed => "failed",
        pb::TargetState::Skipped => "skipped",
        pb::TargetState::Unspecified => "unknown",
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn plan(p: pb::Plan) -> Plan {
    Plan {
        state: state_name(p.state()).into(),
        targets: p
            .targets
            .into_iter()
            .map(|t| PlanTarget {
                state: target_state(t.state()).into(),
                node: t.node,
                wave: t.wave,
                base_hash: t.base_hash,
                artifact: t.artifact,
                diff: t.diff,
                drift: t.drift,
                task_id: non_empty(t.task_id),
                result: serde_json::from_str(&t.result_json).ok(),
            })
            .collect(),
        id: p.id,
        hash: p.hash,
        intent: p.intent,
        intent_version: p.intent_version,
        kind: p.kind,
        author: p.author,
        created_at_ms: p.created_at_ms,
        expires_at_ms: p.expires_at_ms,
        decided_by: non_empty(p.decided_by),
        decided_at_ms: (p.decided_at_ms != 0).then_some(p.decided_at_ms),
        reason: non_empty(p.reason),
    }
}

/// A plan to render.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    /// The intent's name.
    pub intent: String,
    /// Only these of its nodes (absent: all of them).
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Render a plan (`policy:write`): per node, the exact artifact and a unified diff
/// against what the node's agent reports now.
#[utoipa::path(post, path = "/api/v1/plans", tag = "changes", request_body = PlanInput,
    responses((status = 201, body = Plan, description = "Rendered, pending approval"),
        (status = 400, body = crate::error::ErrorBody, description = "The intent selects no node, or a target it does not select"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such intent, or no such node"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy or tunnel service is unreachable, or a node's agent cannot read its state")))]
pub async fn create_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PlanInput>,
) -> Result<(StatusCode, Json<Plan>), ApiError> {
    let r = client(&state)?
        .create_plan(caller.request(
            &state,
            pb::CreatePlanRequest {
                intent: body.intent,
                targets: body.targets,
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(plan(r))))
}

/// Listing bounds.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// At most this many, newest first (1-500, default 50).
    pub limit: Option<i64>,
}

/// The newest plans, without their targets (`policy:read`).
#[utoipa::path(get, path = "/api/v1/plans", tag = "changes", params(PlanQuery),
    responses((status = 200, body = PlanList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn list_plans(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<PlanQuery>,
) -> Result<Json<PlanList>, ApiError> {
    let r = client(&state)?
        .list_plans(caller.request(
            &state,
            pb::ListPlansRequest {
                limit: q.limit.unwrap_or(0).max(0),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(PlanList {
        plans: r.plans.into_iter().map(plan).collect(),
    }))
}

/// A plan with its nodes and their rollout (`policy:read`).
#[utoipa::path(get, path = "/api/v1/plans/{id}", tag = "changes",
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 200, body = Plan),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such plan in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn get_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Plan>, ApiError> {
    let r = client(&state)?
        .get_plan(caller.request(&state, pb::PlanRequest { id }))
        .await?
        .into_inner();
    Ok(Json(plan(r)))
}

/// What the approver reviewed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveInput {
    /// The plan's hash, as reviewed.
    pub hash: String,
    /// Your TOTP code, when you have TOTP and last completed it more than 5
    /// minutes ago (else `403 mfa_required`).
    #[serde(default)]
    pub totp_code: Option<String>,
}

/// Approve a plan (`policy:approve` and a Cedar `ApprovePlan` permit; with four
/// eyes on, not its author): send the hash you reviewed. The rollout starts.
#[utoipa::path(post, path = "/api/v1/plans/{id}/approve", tag = "changes", request_body = ApproveInput,
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 200, body = Plan, description = "Approved: applying"),
        (status = 401, body = crate::error::ErrorBody, description = "A wrong or reused `totp_code`"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:approve`, no Cedar permit, four eyes, `mfa_required` (TOTP older than 5 minutes and no `totp_code`), or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such plan in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "Another hash than the plan's (`conflict`), a plan that is not pending, or `plan_stale`: a node or the intent changed since it was rendered"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy, tunnel or tasks service is unreachable")))]
pub async fn approve_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApproveInput>,
) -> Result<Json<Plan>, ApiError> {
    let r = client(&state)?
        .approve_plan(caller.request(
            &state,
            pb::ApprovePlanRequest {
                id,
                hash: body.hash,
                totp_code: body.totp_code.unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(plan(r)))
}

/// Why a plan is rejected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectInput {
    /// At most 1 KiB.
    pub reason: String,
}

/// Reject a pending plan (`policy:approve`).
#[utoipa::path(post, path = "/api/v1/plans/{id}/reject", tag = "changes", request_body = RejectInput,
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 200, body = Plan, description = "Rejected"),
        (status = 400, body = crate::error::ErrorBody, description = "No reason"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:approve`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such plan in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The plan is not pending"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn reject_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RejectInput>,
) -> Result<Json<Plan>, ApiError> {
    let r = client(&state)?
        .reject_plan(caller.request(
            &state,
            pb::RejectPlanRequest {
                id,
                reason: body.reason,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(plan(r)))
}

/// Cancel a pending plan (its author, or `policy:approve`).
#[utoipa::path(post, path = "/api/v1/plans/{id}/cancel", tag = "changes",
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 200, body = Plan, description = "Cancelled"),
        (status = 403, body = crate::error::ErrorBody, description = "Neither its author nor an approver, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such plan in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The plan is not pending"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn cancel_plan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Plan>, ApiError> {
    let r = client(&state)?
        .cancel_plan(caller.request(&state, pb::PlanRequest { id }))
        .await?
        .into_inner();
    Ok(Json(plan(r)))
}
