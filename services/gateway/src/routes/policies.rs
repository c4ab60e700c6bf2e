//! `/api/v1/policies`: Cedar policies of the caller's org. Scope checks, validation
//! and decisions are the policy service's; this layer converts HTTP to gRPC.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use lattice_proto::policy::v1 as pb;
use lattice_proto::policy::v1::policy_service_client::PolicyServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::Path;
use crate::json::ApiJson;

/// The policy service, or 503 naming the missing setting.
pub fn client(state: &AppState) -> Result<PolicyServiceClient<crate::InternalService>, ApiError> {
    state.policy.clone().ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Unavailable,
            "the policy service is not configured on this gateway (run it here or set policy.url)",
        )
    })
}

/// A policy to create or replace (the fields of the seed's `CedarPolicy` spec).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Unique per org: 1-100 of `a-z`, `0-9`, `-`, `_`, `.`. On `PUT` it may be
    /// left out (the path names it) but must match when given.
    #[serde(default)]
    pub name: String,
    /// Cedar text: one or more `permit` / `forbid` statements.
    pub policies: String,
    /// Disabled policies take part in no decision (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Higher first: the order policies are evaluated and reported in (default 0).
    /// A satisfied `forbid` wins whatever the priorities.
    #[serde(default)]
    pub priority: i64,
    /// Free text (at most 1 KiB).
    #[serde(default)]
    pub description: String,
    /// RFC 3339 UTC instant (`2027-01-31T18:00:00Z`) after which the policy takes part
    /// in no decision; null or absent: never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

fn yes() -> bool {
    true
}

/// A stored policy.
#[derive(Debug, Serialize, ToSchema)]
pub struct Policy {
    pub name: String,
    /// Cedar text.
    pub policies: String,
    pub enabled: bool,
    pub priority: i64,
    pub description: String,
    /// RFC 3339 UTC, or null.
    pub expires_at: Option<String>,
    /// sha256 of the text, hex (what the audit log records).
    pub sha256: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Username (or `system` for the seeded policy).
    pub updated_by: String,
}

/// Policies of the caller's org.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyList {
    pub policies: Vec<Policy>,
}

/// Text to check.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateInput {
    /// Cedar text.
    pub policies: String,
}

/// One problem, with where it is (1-based; absent when Cedar names no place).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    pub message: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
}

/// Whether text parses and validates against the schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    pub valid: bool,
    pub problems: Vec<Problem>,
    /// Statements found (when valid).
    pub statements: u32,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_instant(s: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339(s).map_err(|e| {
        ApiError::bad_request(format!(
            "expires_at: {s:?} is not an RFC 3339 UTC instant like 2027-01-31T18:00:00Z ({e})"
        ))
    })?;
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ApiError::bad_request("expires_at: before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| ApiError::bad_request("expires_at: too far in the future"))
}

/// Message to JSON.
pub fn policy(p: pb::Policy) -> Policy {
    Policy {
        expires_at: p.expires_at_ms.map(rfc3339),
        name: p.name,
        policies: p.text,
        enabled: p.enabled,
        priority: p.priority,
        description: p.description,
        sha256: p.text_sha256,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
        updated_by: p.updated_by,
    }
}

fn to_pb(body: PolicyInput, name: String) -> Result<pb::Policy, ApiError> {
    Ok(pb::Policy {
        expires_at_ms: body.expires_at.as_deref().map(parse_instant).transpose()?,
        name,
        text: body.policies,
        enabled: body.enabled,
        priority: body.priority,
        description: body.description,
        ..Default::default()
    })
}

/// List the org's policies (`policy:read`). An org sees its seeded
/// `admins-allow-all` policy until it deletes it.
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies",
    responses((status = 200, body = PolicyList),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<PolicyList>, ApiError> {
    let r = client(&state)?
        .list_policies(caller.request(&state, pb::ListPoliciesRequest {}))
        .await?
        .into_inner();
    Ok(Json(PolicyList {
        policies: r.policies.into_iter().map(policy).collect(),
    }))
}

/// Create a policy (`policy:write`). Its text must parse and validate against the
/// schema (strict mode); otherwise 422 with Cedar's message, line and column, and
/// nothing is stored.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", request_body = PolicyInput,
    responses((status = 201, body = Policy, description = "Created"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid name, description or expires_at"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 409, body = crate::error::ErrorBody, description = "A policy of that name exists"),
        (status = 422, body = crate::error::ErrorBody, description = "The Cedar text does not parse or validate (message with line and column)"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PolicyInput>,
) -> Result<(StatusCode, Json<Policy>), ApiError> {
    let name = body.name.clone();
    store(&state, &caller, body, name, true).await
}

/// Put a policy through the policy service: 201 when created, 200 when replaced.
async fn store(
    state: &AppState,
    caller: &Caller,
    body: PolicyInput,
    name: String,
    create_only: bool,
) -> Result<(StatusCode, Json<Policy>), ApiError> {
    let r = client(state)?
        .put_policy(caller.request(
            state,
            pb::PutPolicyRequest {
                policy: Some(to_pb(body, name)?),
                create_only,
            },
        ))
        .await?
        .into_inner();
    let p = r.policy.ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Internal,
            "policy service answered without a policy",
        )
    })?;
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(policy(p))))
}

/// One policy (`policy:read`).
#[utoipa::path(get, path = "/api/v1/policies/{name}", tag = "policies",
    responses((status = 200, body = Policy),
        (status = 400, body = crate::error::ErrorBody, description = "Not a policy name"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such policy in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    let p = client(&state)?
        .get_policy(caller.request(&state, pb::GetPolicyRequest { name }))
        .await?
        .into_inner();
    Ok(Json(policy(p)))
}

/// Create or replace a policy (`policy:write`): 201 when created, 200 when replaced.
#[utoipa::path(put, path = "/api/v1/policies/{name}", tag = "policies", request_body = PolicyInput,
    responses((status = 200, body = Policy, description = "Replaced"),
        (status = 201, body = Policy, description = "Created"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid name (or one that differs from the path), description or expires_at"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 422, body = crate::error::ErrorBody, description = "The Cedar text does not parse or validate (message with line and column)"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn put(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PolicyInput>,
) -> Result<(StatusCode, Json<Policy>), ApiError> {
    if !body.name.is_empty() && body.name != name {
        return Err(ApiError::bad_request(format!(
            "name: {:?} differs from the path's {name:?}",
            body.name
        )));
    }
    store(&state, &caller, body, name, false).await
}

/// Delete a policy (`policy:write`).
#[utoipa::path(delete, path = "/api/v1/policies/{name}", tag = "policies",
    responses((status = 204, description = "Deleted"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a policy name"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such policy in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .delete_policy(caller.request(&state, pb::DeletePolicyRequest { name }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check Cedar text against the schema without storing it (`policy:read` or
/// `policy:write`).
#[utoipa::path(post, path = "/api/v1/policies/validate", tag = "policies", request_body = ValidateInput,
    responses((status = 200, body = Validation, description = "Whether it is valid, and every problem"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read`, or no `X-CSRF-Token`"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn validate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<ValidateInput>,
) -> Result<Json<Validation>, ApiError> {
    let r = client(&state)?
        .validate(caller.request(
            &state,
            pb::ValidateRequest {
                text: body.policies,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(Validation {
        valid: r.valid,
        problems: r
            .problems
            .into_iter()
            .map(|p| Problem {
                message: p.message,
                line: (p.line > 0).then_some(p.line),
                column: (p.column > 0).then_some(p.column),
            })
            .collect(),
        statements: r.statements,
    }))
}

/// A question written by hand.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainInput {
    /// `Lattice::User::"alice"` or `Lattice::Service::"token:deploy"`.
    pub principal: String,
    /// `Lattice::Action::"AccessNode"` (or `AccessNode`).
    pub action: String,
    /// `Lattice::Node::"<id>"`, `Lattice::SecretPath::"bucket/key"`, ...
    pub resource: String,
    /// The context: `{"port": 22, "protocol": "tcp"}` for `AccessNode` (protocol
    /// defaults to http), `{"kind": "exec"}` for `RunTask`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// The decision on a question, with its reasons.
#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The policies that decided: the satisfied forbids of a deny they caused, the
    /// satisfied permits of an allow; empty for a default deny.
    pub determining: Vec<String>,
    /// The policies whose scope matched the question and were evaluated.
    pub considered: Vec<String>,
}

/// Explain the decision on a question (`policy:read`): who, doing what, to what.
/// Nothing is enforced or audited.
#[utoipa::path(post, path = "/api/v1/policies/explain", tag = "policies", request_body = ExplainInput,
    responses((status = 200, body = Explanation),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an entity that is not a Lattice entity, an unknown action, or a context the action needs missing"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:read` (or `nodes:read` to read the node), or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy (or tunnel) service is unreachable or not configured")))]
pub async fn explain(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<ExplainInput>,
) -> Result<Json<Explanation>, ApiError> {
    let r = client(&state)?
        .explain(caller.request(
            &state,
            pb::ExplainRequest {
                principal: body.principal,
                action: body.action,
                resource: body.resource,
                context_json: serde_json::Value::Object(body.context).to_string(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(Explanation {
        decision: if r.allow { "allow" } else { "deny" },
        determining: r.determining,
        considered: r.considered,
    }))
}

/// A change to try: policies added or replaced, policies deleted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunInput {
    /// Policies added or replaced (each with its `name`).
    #[serde(default)]
    pub put: Vec<PolicyInput>,
    /// Names of policies deleted.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Replay at most this many of the newest recorded decisions (default and most:
    /// 10,000).
    #[serde(default)]
    pub last: u32,
}

/// One recorded decision the change would flip.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flip {
    pub principal: String,
    pub action: String,
    pub resource: String,
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    /// `allow` or `deny`, now.
    pub before: &'static str,
    /// `allow` or `deny`, with the change.
    pub after: &'static str,
    pub before_policies: Vec<String>,
    pub after_policies: Vec<String>,
}

/// What would change.
#[derive(Debug, Serialize, ToSchema)]
pub struct DryRunReport {
    /// Recorded decisions replayed.
    pub replayed: u32,
    pub allow_to_deny: u32,
    pub deny_to_allow: u32,
    /// At most 100 flips, newest first (the counts are complete).
    pub flips: Vec<Flip>,
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// Dry-run a change (`policy:write`): which of the newest recorded decisions (at
/// most 10,000, kept by the policy service per org) would flip, allow to deny and
/// deny to allow. Nothing is stored.
#[utoipa::path(post, path = "/api/v1/policies/dry-run", tag = "policies", request_body = DryRunInput,
    responses((status = 200, body = DryRunReport),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, an invalid name or expires_at, or more than 1000 policies"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `policy:write`, or no `X-CSRF-Token`"),
        (status = 422, body = crate::error::ErrorBody, description = "A policy's Cedar text does not parse or validate"),
        (status = 503, body = crate::error::ErrorBody, description = "The policy service is unreachable or not configured")))]
pub async fn dry_run(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<DryRunInput>,
) -> Result<Json<DryRunReport>, ApiError> {
    let put = body
        .put
        .into_iter()
        .map(|p| {
            let name = p.name.clone();
            to_pb(p, name)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let r = client(&state)?
        .dry_run(caller.request(
            &state,
            pb::DryRunRequest {
                put,
                delete: body.delete,
                last: body.last,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(DryRunReport {
        replayed: r.replayed,
        allow_to_deny: r.allow_to_deny,
        deny_to_allow: r.deny_to_allow,
        flips: r
            .flips
            .into_iter()
            .map(|f| Flip {
                context: serde_json::from_str(&f.context_json).unwrap_or_default(),
                principal: f.principal,
                action: f.action,
                resource: f.resource,
                before: word(f.before_allow),
                after: word(f.after_allow),
                before_policies: f.before_policies,
                after_policies: f.after_policies,
            })
            .collect(),
    }))
}
