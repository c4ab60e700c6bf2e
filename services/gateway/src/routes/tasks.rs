//! `/api/v1/tasks` (the task queue) and `/api/v1/audit` (the hash-chained log).
//! Scope checks are the tasks service's; this layer converts HTTP to gRPC.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use lattice_proto::tasks::v1 as pb;
use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::json::ApiJson;

/// A `state` filter: empty for every state, else a state's name (400 otherwise).
fn task_state(name: &str) -> Result<pb::TaskState, ApiError> {
    if name.is_empty() {
        return Ok(pb::TaskState::Unspecified);
    }
    pb::TaskState::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = pb::TaskState::ALL.iter().map(|s| s.name()).collect();
        ApiError::bad_request(format!(
            "state: {name:?} is not one of {}",
            names.join(", ")
        ))
    })
}

/// The tasks service, or 503 naming the missing setting.
pub fn client(state: &AppState) -> Result<TaskServiceClient<crate::InternalService>, ApiError> {
    state.tasks.clone().ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Unavailable,
            "the tasks service is not configured on this gateway (run it here or set tasks.url)",
        )
    })
}

/// A task to enqueue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// Node id.
    pub node: String,
    /// `facts.refresh` or `exec`.
    pub kind: String,
    /// Kind-specific payload (`exec`: `{"argv": [...], "timeout_s": 60}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Enqueueing the same key again returns the first task.
    #[serde(default)]
    pub idempotency_key: String,
    /// Attempts before the task is `dead` (default per kind).
    #[serde(default)]
    pub max_attempts: i64,
}

/// A task.
#[derive(Debug, Serialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub node: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// queued | running | succeeded | failed | cancelled | dead
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    /// Fencing epoch of the current (or last) run.
    pub epoch: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<i64>,
    /// The agent's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_by: String,
}

fn nonzero(v: i64) -> Option<i64> {
    (v != 0).then_some(v)
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Message to JSON.
pub fn task(t: pb::Task) -> Task {
    let state = t.state().name().to_owned();
    Task {
        payload: serde_json::from_str(&t.payload_json).unwrap_or(serde_json::Value::Null),
        result: (!t.result_json.is_empty())
            .then(|| serde_json::from_str(&t.result_json).unwrap_or(serde_json::Value::Null)),
        id: t.id,
        node: t.node_id,
        kind: t.kind,
        idempotency_key: nonempty(t.idempotency_key),
        state,
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        epoch: t.epoch,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        started_at_ms: nonzero(t.started_at_ms),
        finished_at_ms: nonzero(t.finished_at_ms),
        lease_until_ms: nonzero(t.lease_until_ms),
        error_code: nonempty(t.error_code),
        error: nonempty(t.error),
        created_by: t.created_by,
    }
}

/// Enqueue a task (`tasks:write`) for a node of the caller's org (the tasks service
/// checks the node with the tunnel service). 201 when created, 200 when the
/// idempotency key matched an existing task.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = CreateTask,
    responses((status = 201, body = Task, description = "Queued"),
        (status = 200, body = Task, description = "The task the idempotency key names"),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or an invalid node id, kind, payload, idempotency key or max_attempts"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `tasks:write`, or no `X-CSRF-Token`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The tasks or tunnel service is unreachable or not configured, or the request took too long")))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTask>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let payload = if body.payload.is_null() {
        "{}".to_owned()
    } else {
        body.payload.to_string()
    };
    let r = client(&state)?
        .enqueue(caller.request(
            &state,
            pb::EnqueueRequest {
                node_id: body.node,
                kind: body.kind,
                payload_json: payload,
                idempotency_key: body.idempotency_key,
                max_attempts: body.max_attempts,
            },
        ))
        .await?
        .into_inner();
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let t = r.task.ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Internal,
            "tasks service answered without a task",
        )
    })?;
    Ok((status, Json(task(t))))
}

/// Task filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// Node id.
    #[serde(default)]
    pub node: String,
    /// State.
    #[serde(default)]
    pub state: String,
    /// Page: tasks older than this id.
    #[serde(default)]
    pub before: String,
    /// At most this many (default 100, max 1000).
    #[serde(default)]
    pub limit: i64,
}

/// Tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<Task>,
}

/// List tasks (`tasks:read`).
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = TaskList),
        (status = 400, body = crate::error::ErrorBody, description = "An unknown query parameter, or an invalid node, state, before or limit"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `tasks:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<TaskQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let r = client(&state)?
        .list_tasks(caller.request(
            &state,
            pb::ListTasksRequest {
                node_id: q.node,
                state: task_state(&q.state)?.into(),
                before: q.before,
                limit: q.limit,
            },
        ))
        .await?
        .into_inner();
    Ok(Json(TaskList {
        tasks: r.tasks.into_iter().map(task).collect(),
    }))
}

/// One task (`tasks:read`).
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    responses((status = 200, body = Task),
        (status = 400, body = crate::error::ErrorBody, description = "Not a task id"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `tasks:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such task in your org")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let t = client(&state)?
        .get_task(caller.request(&state, pb::GetTaskRequest { id }))
        .await?
        .into_inner();
    Ok(Json(task(t)))
}

/// Cancel a queued or running task (`tasks:write`); a running agent is told to stop.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    responses((status = 200, body = Task),
        (status = 400, body = crate::error::ErrorBody, description = "Not a task id"),
        (status = 404, body = crate::error::ErrorBody, description = "No such task in your org"),
        (status = 409, body = crate::error::ErrorBody, description = "The task has already finished")))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Task>, ApiError> {
    let t = client(&state)?
        .cancel_task(caller.request(&state, pb::CancelTaskRequest { id }))
        .await?
        .into_inner();
    Ok(Json(task(t)))
}

/// Audit paging.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    #[serde(default)]
    pub after: i64,
    /// At most this many (default 100, max 1000).
    #[serde(default)]
    pub limit: i64,
    /// The newest `limit` entries, newest first (`after` and `target` unused).
    #[serde(default)]
    pub newest: bool,
    /// Only entries about this target: a plan id (its story), a task id, a
    /// username, ...
    #[serde(default)]
    pub target: Option<String>,
}

/// One audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub id: String,
    pub at_ms: i64,
    pub org_id: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// success | failure
    pub outcome: String,
    pub client_ip: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// A page of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page.
    pub next_after: i64,
}

/// Read the audit log in order (`audit:read`).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 403, body = crate::error::ErrorBody, description = "Missing `audit:read`")))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let r = client(&state)?
        .list_audit(caller.request(
            &state,
            pb::ListAuditRequest {
                after: q.after,
                limit: q.limit,
                target: q.target.unwrap_or_default(),
                newest: q.newest,
            },
        ))
        .await?
        .into_inner();
    let entries: Vec<AuditEntry> = r
        .entries
        .into_iter()
        .map(|e| {
            let ev = e.event.unwrap_or_default();
            AuditEntry {
                seq: e.seq,
                id: ev.event_id,
                at_ms: ev.at_ms,
                org_id: ev.org_id,
                actor: ev.actor,
                action: ev.action,
                target: ev.target,
                outcome: ev.outcome,
                client_ip: ev.client_ip,
                detail: serde_json::from_str(&ev.detail).unwrap_or(serde_json::Value::Null),
                prev_hash: e.prev_hash,
                hash: e.hash,
            }
        })
        .collect();
    let next_after = if q.newest {
        entries.first().map_or(q.after, |e| e.seq)
    } else {
        entries.last().map_or(q.after, |e| e.seq)
    };
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

/// The result of walking the chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    /// Every entry links to the one before and matches its hash.
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// The first broken entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_seq: Option<i64>,
    /// Why it is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hash of the last good entry.
    pub head_hash: String,
}

/// Walk the chain and report the first break (`audit:read`).
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerification), (status = 403, body = crate::error::ErrorBody, description = "Missing `audit:read`")))]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<AuditVerification>, ApiError> {
    let r = client(&state)?
        .verify_audit(caller.request(&state, pb::VerifyAuditRequest {}))
        .await?
        .into_inner();
    Ok(Json(AuditVerification {
        ok: r.ok,
        entries: r.entries,
        broken_seq: nonzero(r.broken_seq),
        reason: nonempty(r.reason),
        head_hash: r.head_hash,
    }))
}
