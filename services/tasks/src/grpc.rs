//! gRPC adapter: `lattice.tasks.v1` messages to domain calls, errors to statuses.

use lattice_core::audit::{AuditEvent, Outcome};
use lattice_core::error::to_status;
use lattice_core::grpc::{context_of, principal_of};
use lattice_proto::tasks::v1 as pb;
use tonic::{Request, Response, Status};

use crate::error::TaskError;
use crate::input::{EnqueueInput, TaskFilter};
use crate::service::Tasks;
use crate::store::{AuditEntry, Completion, TaskRow};

/// The tonic service.
#[derive(Debug, Clone)]
pub struct TaskGrpc {
    tasks: Tasks,
}

impl TaskGrpc {
    /// Serve `tasks`.
    pub fn new(tasks: Tasks) -> Self {
        Self { tasks }
    }
}

fn st(e: TaskError) -> Status {
    to_status(&e)
}

/// Task row to message.
pub fn task_pb(t: TaskRow) -> pb::Task {
    pb::Task {
        id: t.id,
        org_id: t.org_id,
        node_id: t.node_id,
        kind: t.kind,
        payload_json: t.payload,
        idempotency_key: t.idempotency_key.unwrap_or_default(),
        state: pb::TaskState::from_name(&t.state)
            .unwrap_or(pb::TaskState::Unspecified)
            .into(),
        attempts: t.attempts,
        max_attempts: t.max_attempts,
        epoch: t.epoch,
        lease_until_ms: t.lease_until_ms,
        not_before_ms: t.not_before_ms,
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        started_at_ms: t.started_at_ms,
        finished_at_ms: t.finished_at_ms,
        result_json: t.result,
        error_code: t.error_code,
        error: t.error,
        created_by: t.created_by,
    }
}

fn entry_pb(e: AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        event: Some(pb::AuditEvent {
            event_id: e.event_id,
            at_ms: e.at_ms,
            org_id: e.event.org_id,
            actor: e.event.actor,
            action: e.event.action,
            target: e.event.target,
            outcome: e.event.outcome.as_str().into(),
            client_ip: e.event.client_ip,
            detail: e.event.detail,
        }),
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

#[tonic::async_trait]
impl pb::task_service_server::TaskService for TaskGrpc {
    async fn enqueue(
        &self,
        req: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::EnqueueResponse>, Status> {
        let ctx = context_of(&req)?;
        let input = EnqueueInput::try_from(req.into_inner()).map_err(st)?;
        let (task, created) = self.tasks.enqueue(&ctx, input).await.map_err(st)?;
        Ok(Response::new(pb::EnqueueResponse {
            task: Some(task_pb(task)),
            created,
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let p = principal_of(&req)?.clone();
        let t = self.tasks.get(&p, &req.get_ref().id).await.map_err(st)?;
        Ok(Response::new(task_pb(t)))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let filter = TaskFilter::try_from(req.into_inner()).map_err(st)?;
        let rows = self.tasks.list(&p, &filter).await.map_err(st)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: rows.into_iter().map(task_pb).collect(),
        }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let ctx = context_of(&req)?;
        let t = self
            .tasks
            .cancel(&ctx, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(task_pb(t)))
    }

    async fn claim(
        &self,
        req: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let rows = self.tasks.claim(&p, &r.node_id, r.max).await.map_err(st)?;
        Ok(Response::new(pb::ClaimResponse {
            tasks: rows.into_iter().map(claimed_pb).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let leases: Vec<(String, i64)> =
            r.leases.into_iter().map(|l| (l.task_id, l.epoch)).collect();
        let stale = self
            .tasks
            .heartbeat(&p, &r.node_id, &leases)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::HeartbeatResponse {
            stale: stale
                .into_iter()
                .map(|(task_id, epoch)| pb::Lease { task_id, epoch })
                .collect(),
        }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let p = principal_of(&req)?.clone();
        let t = self
            .tasks
            .complete(&p, completion(req.into_inner()))
            .await
            .map_err(st)?;
        Ok(Response::new(task_pb(t)))
    }

    async fn complete_and_claim(
        &self,
        req: Request<pb::CompleteAndClaimRequest>,
    ) -> Result<Response<pb::CompleteAndClaimResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let Some(result) = r.result else {
            return Err(Status::invalid_argument("result: missing"));
        };
        let (t, claimed) = self
            .tasks
            .complete_and_claim(&p, completion(result), r.claim_max)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::CompleteAndClaimResponse {
            task: Some(task_pb(t)),
            claim_made: claimed.is_some(),
            claimed: claimed.into_iter().flatten().map(claimed_pb).collect(),
        }))
    }

    async fn append_audit(
        &self,
        req: Request<pb::AppendAuditRequest>,
    ) -> Result<Response<pb::AppendAuditResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let mut events = Vec::new();
        for e in req.into_inner().events {
            let outcome = match e.outcome.as_str() {
                "success" => Outcome::Success,
                "failure" => Outcome::Failure,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "outcome: {other:?} is neither success nor failure"
                    )));
                }
            };
            events.push((
                e.event_id,
                e.at_ms,
                AuditEvent {
                    org_id: e.org_id,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    outcome,
                    client_ip: e.client_ip,
                    detail: e.detail,
                },
            ));
        }
        let appended = self.tasks.append_audit(&p, events).await.map_err(st)?;
        Ok(Response::new(pb::AppendAuditResponse {
            appended: appended as i64,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let rows = if r.newest {
            self.tasks.recent_audit(&p, r.limit).await
        } else {
            self.tasks.list_audit(&p, r.after, r.limit, &r.target).await
        }
        .map_err(st)?;
        Ok(Response::new(pb::ListAuditResponse {
            entries: rows.into_iter().map(entry_pb).collect(),
        }))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let v = self.tasks.verify_audit(&p).await.map_err(st)?;
        let (broken_seq, reason) = v.broken.unwrap_or((0, String::new()));
        Ok(Response::new(pb::VerifyAuditResponse {
            ok: broken_seq == 0,
            entries: v.entries,
            broken_seq,
            reason,
            head_hash: v.head_hash,
        }))
    }
}

fn claimed_pb(t: TaskRow) -> pb::ClaimedTask {
    pb::ClaimedTask {
        id: t.id,
        kind: t.kind,
        payload_json: t.payload,
        epoch: t.epoch,
        lease_until_ms: t.lease_until_ms,
        org_id: t.org_id,
    }
}

fn completion(r: pb::CompleteRequest) -> Completion {
    Completion {
        task_id: r.task_id,
        epoch: r.epoch,
        node_id: r.node_id,
        ok: r.ok,
        result: r.result_json,
        error_code: r.error_code,
        error: r.error,
    }
}

#[tonic::async_trait]
impl lattice_core::org_data::OrgData for TaskGrpc {
    async fn usage(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.tasks
            .org_usage(&ctx.principal, org_id)
            .await
            .map_err(st)
    }

    async fn purge(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.tasks.purge_org(ctx, org_id).await.map_err(st)
    }
}
