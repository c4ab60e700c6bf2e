//! gRPC adapter: `lattice.policy.v1` messages to domain calls, errors to statuses.

use lattice_core::error::to_status;
use lattice_core::grpc::context_of;
use lattice_proto::policy::v1 as pb;
use tonic::{Request, Response, Status};

use crate::engine::{Action, Protocol, Resource};
use crate::error::PolicyError;
use crate::model::PolicyDoc;
use crate::service::{Policies, Subject};
use crate::store::PolicyRow;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct PolicyGrpc {
    policies: Policies,
}

impl PolicyGrpc {
    /// Serve `policies`.
    pub fn new(policies: Policies) -> Self {
        Self { policies }
    }
}

fn st(e: PolicyError) -> Status {
    to_status(&e)
}

/// A decision as a message.
fn answer(d: crate::engine::Decision) -> pb::AuthorizeResponse {
    pb::AuthorizeResponse {
        allow: d.allow,
        determining: d.determining,
        considered: d.considered,
    }
}

/// A stored policy as a message.
pub fn policy_pb(r: PolicyRow) -> pb::Policy {
    pb::Policy {
        name: r.doc.name,
        text: r.doc.text,
        enabled: r.doc.enabled,
        priority: r.doc.priority,
        description: r.doc.description,
        expires_at_ms: r.doc.expires_at_ms,
        text_sha256: r.text_sha256,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        updated_by: r.updated_by,
    }
}

impl From<pb::Policy> for PolicyDoc {
    fn from(p: pb::Policy) -> Self {
        Self {
            name: p.name,
            text: p.text,
            enabled: p.enabled,
            priority: p.priority,
            description: p.description,
            expires_at_ms: p.expires_at_ms,
        }
    }
}

/// A validated authorize request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeInput {
    /// Who.
    pub subject: Subject,
    /// What, with its context.
    pub action: Action,
    /// To what.
    pub resource: Resource,
}

impl TryFrom<pb::AuthorizeRequest> for AuthorizeInput {
    type Error = PolicyError;

    fn try_from(m: pb::AuthorizeRequest) -> Result<Self, PolicyError> {
        let bad = |s: &str| PolicyError::Invalid(s.to_owned());
        let subject = match m.service.clone() {
            None => Subject::Caller,
            Some(s) => {
                let kind = match s.kind() {
                    pb::service_principal::Kind::StorageToken => "storage_token",
                    pb::service_principal::Kind::Node => "node",
                    pb::service_principal::Kind::Unspecified => {
                        return Err(bad("service.kind: storage_token or node"));
                    }
                };
                if s.name.is_empty() || s.name.len() > 128 {
                    return Err(bad("service.name: 1-128 characters"));
                }
                if m.org_id.is_empty() {
                    return Err(bad("org_id: required with service"));
                }
                Subject::Service {
                    kind,
                    name: s.name,
                    org: m.org_id.clone(),
                }
            }
        };
        let action = match m.action() {
            pb::Action::AccessNode => {
                let port = u16::try_from(m.port)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("port: 1-65535"))?;
                let protocol = match m.protocol() {
                    pb::Protocol::Http => Protocol::Http,
                    pb::Protocol::Tcp => Protocol::Tcp,
                    pb::Protocol::Unspecified => return Err(bad("protocol: http or tcp")),
                };
                Action::AccessNode { port, protocol }
            }
            pb::Action::RunTask => {
                if m.task_kind.is_empty() || m.task_kind.len() > 64 {
                    return Err(bad("task_kind: 1-64 characters"));
                }
                Action::RunTask {
                    kind: m.task_kind.clone(),
                }
            }
            pb::Action::AccessSecret => Action::AccessSecret,
            pb::Action::ApprovePlan => Action::ApprovePlan,
            pb::Action::AccessCluster => Action::AccessCluster,
            pb::Action::Unspecified => return Err(bad("action: required")),
        };
        use pb::authorize_request::Resource as R;
        let resource = match m.resource {
            Some(R::Node(n)) if !n.id.is_empty() => Resource::Node {
                id: n.id,
                name: n.name,
                org: String::new(),
                labels: n.labels.into_iter().collect(),
            },
            Some(R::Secret(s)) if !s.bucket.is_empty() && !s.key.is_empty() => {
                Resource::SecretPath {
                    bucket: s.bucket,
                    key: s.key,
                }
            }
            Some(R::Plan(p)) if !p.id.is_empty() => Resource::Plan {
                id: p.id,
                kind: p.kind,
                node: p.node,
                author: p.author,
            },
            Some(R::Cluster(c)) if !c.name.is_empty() => Resource::Cluster { name: c.name },
            _ => {
                return Err(bad(
                    "resource: a node, secret, plan or cluster, with its id",
                ));
            }
        };
        if !action.applies_to(&resource) {
            return Err(bad("resource: not one this action applies to"));
        }
        if matches!(subject, Subject::Service { .. }) && action != Action::AccessSecret {
            return Err(bad(
                "service: only secret reads are asked on behalf of a service",
            ));
        }
        Ok(Self {
            subject,
            action,
            resource,
        })
    }
}

#[tonic::async_trait]
impl pb::policy_service_server::PolicyService for PolicyGrpc {
    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let ctx = context_of(&req)?;
        let rows = self.policies.list(&ctx).await.map_err(st)?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: rows.into_iter().map(policy_pb).collect(),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let ctx = context_of(&req)?;
        let row = self
            .policies
            .get(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(policy_pb(row)))
    }

    async fn put_policy(
        &self,
        req: Request<pb::PutPolicyRequest>,
    ) -> Result<Response<pb::PutPolicyResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let doc = PolicyDoc::from(
            m.policy
                .ok_or_else(|| st(PolicyError::Invalid("policy: required".into())))?,
        );
        let (row, created) = self
            .policies
            .put(&ctx, doc, m.create_only)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::PutPolicyResponse {
            policy: Some(policy_pb(row)),
            created,
        }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let ctx = context_of(&req)?;
        self.policies
            .delete(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let ctx = context_of(&req)?;
        let answer = self
            .policies
            .validate(&ctx, &req.get_ref().text)
            .map_err(st)?;
        Ok(Response::new(match answer {
            Ok(n) => pb::ValidateResponse {
                valid: true,
                problems: Vec::new(),
                statements: u32::try_from(n).unwrap_or(u32::MAX),
            },
            Err(problems) => pb::ValidateResponse {
                valid: false,
                problems: problems
                    .into_iter()
                    .map(|p| pb::Problem {
                        message: p.message,
                        line: p.line.unwrap_or(0),
                        column: p.column.unwrap_or(0),
                    })
                    .collect(),
                statements: 0,
            },
        }))
    }

    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let ctx = context_of(&req)?;
        let input = AuthorizeInput::try_from(req.into_inner()).map_err(st)?;
        let d = self
            .policies
            .authorize(&ctx, input.subject, input.action, input.resource)
            .await
            .map_err(st)?;
        Ok(Response::new(answer(d)))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let context = if m.context_json.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str::<serde_json::Value>(&m.context_json) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => {
                    return Err(st(PolicyError::Invalid(
                        "context: a JSON object like {\"port\": 22}".into(),
                    )));
                }
            }
        };
        let d = self
            .policies
            .explain(
                &ctx,
                crate::service::ExplainInput {
                    principal: m.principal,
                    action: m.action,
                    resource: m.resource,
                    context,
                },
            )
            .await
            .map_err(st)?;
        Ok(Response::new(answer(d)))
    }

    async fn dry_run(
        &self,
        req: Request<pb::DryRunRequest>,
    ) -> Result<Response<pb::DryRunResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        if m.put.len() + m.delete.len() > 1_000 {
            return Err(st(PolicyError::Invalid(
                "at most 1000 policies put or deleted in one dry run".into(),
            )));
        }
        let r = self
            .policies
            .dry_run(
                &ctx,
                m.put.into_iter().map(PolicyDoc::from).collect(),
                m.delete,
                m.last as usize,
            )
            .await
            .map_err(st)?;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(pb::DryRunResponse {
            replayed: n(r.replayed),
            allow_to_deny: n(r.allow_to_deny),
            deny_to_allow: n(r.deny_to_allow),
            flips: r
                .flips
                .into_iter()
                .map(|f| pb::Flip {
                    principal: f.query.principal.uid().to_string(),
                    action: f.query.action.name().to_owned(),
                    resource: f.query.resource.uid().to_string(),
                    context_json: crate::service::context_json(&f.query.action).to_string(),
                    before_allow: f.before.allow,
                    after_allow: f.after.allow,
                    before_policies: f.before.determining,
                    after_policies: f.after.determining,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl lattice_core::org_data::OrgData for PolicyGrpc {
    async fn usage(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.policies.org_usage(ctx, org_id).await.map_err(st)
    }

    async fn purge(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.policies.purge_org(ctx, org_id).await.map_err(st)
    }
}
