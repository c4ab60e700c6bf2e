//! The `lattice.policy.v1.ChangeService` adapter: messages to the changes service's
//! calls and back. The service decides; this only converts.

use lattice_core::error::to_status;
use lattice_core::grpc::context_of;
use lattice_proto::policy::v1 as pb;
use lattice_proto::policy::v1::change_service_server::ChangeService;
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use super::service::{Changes, Plan};
use super::store::{IntentRow, PlanRow, TargetRow};
use crate::error::PolicyError;

/// The gRPC face of [`Changes`].
#[derive(Debug, Clone)]
pub struct ChangeGrpc {
    changes: Changes,
}

impl ChangeGrpc {
    /// Serve `changes`.
    pub fn new(changes: Changes) -> Self {
        Self { changes }
    }
}

fn st(e: PolicyError) -> Status {
    to_status(&e)
}

fn selector_pb(json_text: &str) -> Option<pb::Selector> {
    let v: Value = serde_json::from_str(json_text).ok()?;
    let target = if let Some(node) = v.get("node").and_then(Value::as_str) {
        pb::selector::Target::Node(node.to_owned())
    } else {
        let labels = v
            .get("labels")?
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        pb::selector::Target::Labels(pb::Labels { labels })
    };
    Some(pb::Selector {
        target: Some(target),
    })
}

fn selector_json(s: Option<pb::Selector>) -> Value {
    match s.and_then(|s| s.target) {
        Some(pb::selector::Target::Node(id)) => json!({ "node": id }),
        Some(pb::selector::Target::Labels(l)) => json!({ "labels": l.labels }),
        None => Value::Null,
    }
}

fn intent_pb(r: IntentRow) -> pb::Intent {
    pb::Intent {
        selector: selector_pb(&r.selector),
        name: r.name,
        kind: r.kind,
        spec_json: r.spec,
        version: r.version,
        created_at_ms: r.created_at_ms,
        created_by: r.created_by,
    }
}

fn plan_state(s: &str) -> pb::PlanState {
    match s {
        "pending" => pb::PlanState::Pending,
        "applying" => pb::PlanState::Applying,
        "applied" => pb::PlanState::Applied,
        "halted" => pb::PlanState::Halted,
        "rejected" => pb::PlanState::Rejected,
        "cancelled" => pb::PlanState::Cancelled,
        "expired" => pb::PlanState::Expired,
        _ => pb::PlanState::Unspecified,
    }
}

fn target_state(s: &str) -> pb::TargetState {
    match s {
        "waiting" => pb::TargetState::Waiting,
        "queued" => pb::TargetState::Queued,
        "applied" => pb::TargetState::Applied,
        "failed" => pb::TargetState::Failed,
        "skipped" => pb::TargetState::Skipped,
        _ => pb::TargetState::Unspecified,
    }
}

fn target_pb(t: TargetRow) -> pb::PlanTarget {
    pb::PlanTarget {
        state: target_state(&t.state).into(),
        node: t.node,
        wave: t.wave,
        base_hash: t.base_hash,
        artifact: t.artifact,
        diff: t.diff,
        drift: t.drift,
        task_id: t.task_id,
        result_json: t.result,
    }
}

fn plan_pb(p: PlanRow, targets: Vec<TargetRow>) -> pb::Plan {
    pb::Plan {
        state: plan_state(&p.state).into(),
        id: p.id,
        intent: p.intent,
        intent_version: p.intent_version,
        kind: p.kind,
        hash: p.hash,
        author: p.author,
        created_at_ms: p.created_at_ms,
        expires_at_ms: p.expires_at_ms,
        decided_by: p.decided_by,
        decided_at_ms: p.decided_at_ms,
        reason: p.reason,
        targets: targets.into_iter().map(target_pb).collect(),
    }
}

fn whole(p: Plan) -> pb::Plan {
    plan_pb(p.plan, p.targets)
}

#[tonic::async_trait]
impl ChangeService for ChangeGrpc {
    async fn put_intent(
        &self,
        req: Request<pb::PutIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let spec: Value = if m.spec_json.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&m.spec_json)
                .map_err(|e| st(PolicyError::Rejected(format!("spec: not JSON ({e})"))))?
        };
        let doc = json!({"name": m.name, "kind": m.kind,
            "selector": selector_json(m.selector), "spec": spec});
        let row = self.changes.put_intent(&ctx, &doc).await.map_err(st)?;
        Ok(Response::new(intent_pb(row)))
    }

    async fn get_intent(
        &self,
        req: Request<pb::IntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        let ctx = context_of(&req)?;
        let row = self
            .changes
            .get_intent(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(intent_pb(row)))
    }

    async fn list_intents(
        &self,
        req: Request<pb::ListIntentsRequest>,
    ) -> Result<Response<pb::ListIntentsResponse>, Status> {
        let ctx = context_of(&req)?;
        let rows = self.changes.list_intents(&ctx).await.map_err(st)?;
        Ok(Response::new(pb::ListIntentsResponse {
            intents: rows.into_iter().map(intent_pb).collect(),
        }))
    }

    async fn intent_history(
        &self,
        req: Request<pb::IntentRequest>,
    ) -> Result<Response<pb::ListIntentsResponse>, Status> {
        let ctx = context_of(&req)?;
        let rows = self
            .changes
            .intent_history(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ListIntentsResponse {
            intents: rows.into_iter().map(intent_pb).collect(),
        }))
    }

    async fn delete_intent(
        &self,
        req: Request<pb::IntentRequest>,
    ) -> Result<Response<pb::DeleteIntentResponse>, Status> {
        let ctx = context_of(&req)?;
        self.changes
            .delete_intent(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DeleteIntentResponse {}))
    }

    async fn create_plan(
        &self,
        req: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let plan = self
            .changes
            .create_plan(&ctx, &m.intent, &m.targets)
            .await
            .map_err(st)?;
        Ok(Response::new(whole(plan)))
    }

    async fn get_plan(&self, req: Request<pb::PlanRequest>) -> Result<Response<pb::Plan>, Status> {
        let ctx = context_of(&req)?;
        let plan = self
            .changes
            .get_plan(&ctx, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(whole(plan)))
    }

    async fn list_plans(
        &self,
        req: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let ctx = context_of(&req)?;
        let limit = match req.get_ref().limit {
            0 => 50,
            n => n,
        };
        let rows = self.changes.list_plans(&ctx, limit).await.map_err(st)?;
        Ok(Response::new(pb::ListPlansResponse {
            plans: rows.into_iter().map(|p| plan_pb(p, Vec::new())).collect(),
        }))
    }

    async fn approve_plan(
        &self,
        req: Request<pb::ApprovePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let plan = self
            .changes
            .approve(&ctx, &m.id, &m.hash, &m.totp_code)
            .await
            .map_err(st)?;
        Ok(Response::new(whole(plan)))
    }

    async fn reject_plan(
        &self,
        req: Request<pb::RejectPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let plan = self
            .changes
            .reject(&ctx, &m.id, &m.reason)
            .await
            .map_err(st)?;
        Ok(Response::new(whole(plan)))
    }

    async fn cancel_plan(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = context_of(&req)?;
        let plan = self
            .changes
            .cancel(&ctx, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(whole(plan)))
    }
}
