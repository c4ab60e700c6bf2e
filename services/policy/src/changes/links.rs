//! The real [`NodeStates`], [`TaskQueue`] and [`Admins`]: the tunnel, tasks and
//! identity services, asked over gRPC as this service acting in the caller's org
//! (an internal principal of that org with only the scope each call needs).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use lattice_core::auth::{AuthMethod, InternalAuth, Principal, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::identity::v1::{FreshMfaRequest, GetGroupRequest};
use lattice_proto::tasks::v1 as tasks;
use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
use lattice_proto::tunnel::v1::{GetNodeRequest, GetReleaseRequest, ListNodesRequest, Node};
use serde_json::Value;

use super::service::{Admins, FreshMfa, NodeState, NodeStates, Releases, TaskOutcome, TaskQueue};
use super::{Base, Selector};
use crate::error::PolicyError;
use crate::groups::IdentityGroups;
use crate::nodes::TunnelNodes;

/// This service acting in `org` with `scopes`.
pub(super) fn acting_in(org: &str, scopes: &[&str]) -> Principal {
    Principal {
        sub: "service:policy".into(),
        username: String::new(),
        org_id: org.to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        auth: AuthMethod::Internal,
        credential_id: String::new(),
    }
}

fn unavailable(service: &str, s: &tonic::Status) -> PolicyError {
    PolicyError::Unavailable(format!("{service} service: {}", s.message()))
}

/// What a node's agent reported of its managed artifacts. An artifact the agent
/// could not read refuses the plan (rendering against a state nobody knows would
/// make the diff a guess).
fn state_of(n: Node) -> Result<NodeState, PolicyError> {
    let mut artifacts = BTreeMap::new();
    let arch = n.facts.as_ref().map(|f| f.arch.clone()).unwrap_or_default();
    for a in n.facts.map(|f| f.artifacts).unwrap_or_default() {
        if !a.error.is_empty() {
            return Err(PolicyError::Unavailable(format!(
                "node {}: its agent cannot read its {} artifact: {}",
                n.id, a.name, a.error
            )));
        }
        let base = if a.hash == "none" {
            Base::absent()
        } else {
            Base::of(&a.content)
        };
        artifacts.insert(a.name, base);
    }
    Ok(NodeState {
        id: n.id,
        artifacts,
        arch,
    })
}

#[async_trait::async_trait]
impl Releases for TunnelNodes {
    async fn manifest(
        &self,
        ctx: &RequestContext,
        version: &str,
        arch: &str,
    ) -> Result<lattice_proto::release::Manifest, PolicyError> {
        let mut tunnel = self.link().get().cloned().ok_or_else(|| {
            PolicyError::Unavailable("tunnel.url is not configured: releases cannot be read".into())
        })?;
        let me = acting_in(&ctx.principal.org_id, &["nodes:read"]);
        let request = lattice_core::grpc::request(
            self.internal(),
            &me,
            Some(&ctx.client_ip),
            GetReleaseRequest {
                version: version.to_owned(),
                arch: arch.to_owned(),
            },
        );
        match tunnel.get_release(request).await {
            Ok(r) => {
                let r = r.into_inner();
                Ok(lattice_proto::release::Manifest {
                    version: r.version,
                    arch: r.arch,
                    sha256: r.sha256,
                    size: u64::try_from(r.size).unwrap_or(0),
                    signature: r.signature,
                })
            }
            Err(s) => Err(match lattice_core::error::code_of(&s) {
                lattice_core::ErrorCode::NotFound | lattice_core::ErrorCode::BadRequest => {
                    PolicyError::Invalid(format!("spec.version: {}", s.message()))
                }
                _ => unavailable("tunnel", &s),
            }),
        }
    }
}

#[async_trait::async_trait]
impl NodeStates for TunnelNodes {
    async fn select(
        &self,
        ctx: &RequestContext,
        selector: &Selector,
    ) -> Result<Vec<NodeState>, PolicyError> {
        let mut tunnel = self.link().get().cloned().ok_or_else(|| {
            PolicyError::Unavailable("tunnel.url is not configured: nodes cannot be read".into())
        })?;
        let me = acting_in(&ctx.principal.org_id, &["nodes:read"]);
        let internal = self.internal();
        match selector {
            Selector::Node(id) => {
                let request = lattice_core::grpc::request(
                    internal,
                    &me,
                    Some(&ctx.client_ip),
                    GetNodeRequest { id: id.clone() },
                );
                match tunnel.get_node(request).await {
                    Ok(n) => Ok(vec![state_of(n.into_inner())?]),
                    Err(s) => Err(match lattice_core::error::code_of(&s) {
                        lattice_core::ErrorCode::NotFound | lattice_core::ErrorCode::BadRequest => {
                            PolicyError::NotFound(format!("node {id:?}"))
                        }
                        _ => unavailable("tunnel", &s),
                    }),
                }
            }
            Selector::Labels(want) => {
                let request = lattice_core::grpc::request(
                    internal,
                    &me,
                    Some(&ctx.client_ip),
                    ListNodesRequest {},
                );
                let nodes = tunnel
                    .list_nodes(request)
                    .await
                    .map_err(|s| unavailable("tunnel", &s))?
                    .into_inner()
                    .nodes;
                nodes
                    .into_iter()
                    .filter(|n| want.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                    .map(state_of)
                    .collect()
            }
        }
    }
}

/// The tasks service as the queue of apply tasks.
pub struct TasksQueue {
    tasks: Arc<OnceLock<TaskServiceClient<InternalService>>>,
    internal: InternalAuth,
}

impl TasksQueue {
    /// A queue whose client is set later with [`TasksQueue::link`].
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            tasks: Arc::new(OnceLock::new()),
            internal,
        }
    }

    /// Where the tasks service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<TaskServiceClient<InternalService>>> {
        self.tasks.clone()
    }

    fn client(&self) -> Result<TaskServiceClient<InternalService>, PolicyError> {
        self.tasks.get().cloned().ok_or_else(|| {
            PolicyError::Unavailable(
                "tasks.url is not configured: approved plans cannot be applied".into(),
            )
        })
    }
}

#[async_trait::async_trait]
impl TaskQueue for TasksQueue {
    async fn enqueue(
        &self,
        org: &str,
        node: &str,
        kind: &str,
        payload: Value,
        key: &str,
    ) -> Result<String, PolicyError> {
        let request = lattice_core::grpc::request(
            &self.internal,
            &acting_in(org, &["tasks:write", "nodes:read"]),
            None,
            tasks::EnqueueRequest {
                node_id: node.to_owned(),
                kind: kind.to_owned(),
                payload_json: payload.to_string(),
                idempotency_key: key.to_owned(),
                // An apply is not retried: a failure halts the rollout for review.
                max_attempts: 1,
            },
        );
        let task = self
            .client()?
            .enqueue(request)
            .await
            .map_err(|s| match lattice_core::error::code_of(&s) {
                lattice_core::ErrorCode::Unavailable | lattice_core::ErrorCode::Internal => {
                    unavailable("tasks", &s)
                }
                _ => PolicyError::Conflict(format!(
                    "node {node}: the apply task was refused: {}",
                    s.message()
                )),
            })?
            .into_inner()
            .task
            .ok_or_else(|| {
                PolicyError::Unavailable("tasks service: no task in the answer".into())
            })?;
        Ok(task.id)
    }

    async fn outcome(&self, org: &str, id: &str) -> Result<TaskOutcome, PolicyError> {
        let request = lattice_core::grpc::request(
            &self.internal,
            &acting_in(org, &["tasks:read"]),
            None,
            tasks::GetTaskRequest { id: id.to_owned() },
        );
        let task = self
            .client()?
            .get_task(request)
            .await
            .map_err(|s| unavailable("tasks", &s))?
            .into_inner();
        Ok(match task.state() {
            tasks::TaskState::Succeeded => TaskOutcome::Succeeded(task.result_json),
            tasks::TaskState::Failed | tasks::TaskState::Dead | tasks::TaskState::Cancelled => {
                let error = if task.error.is_empty() {
                    format!("task {}", task.state().as_str_name())
                } else {
                    task.error
                };
                TaskOutcome::Failed(error, task.result_json)
            }
            _ => TaskOutcome::Pending,
        })
    }
}

#[async_trait::async_trait]
impl Admins for IdentityGroups {
    async fn count(&self, ctx: &RequestContext) -> Result<usize, PolicyError> {
        let mut identity = self.link().get().cloned().ok_or_else(|| {
            PolicyError::Unavailable(
                "gateway.identity_url is not configured: the admins cannot be counted".into(),
            )
        })?;
        let request = lattice_core::grpc::request(
            self.internal(),
            &acting_in(&ctx.principal.org_id, &["users:read"]),
            Some(&ctx.client_ip),
            GetGroupRequest {
                name: "admins".into(),
            },
        );
        match identity.get_group(request).await {
            Ok(g) => Ok(usize::try_from(g.into_inner().member_count).unwrap_or(0)),
            Err(s) if lattice_core::error::code_of(&s) == lattice_core::ErrorCode::NotFound => {
                Ok(0)
            }
            Err(s) => Err(unavailable("identity", &s)),
        }
    }
}

#[async_trait::async_trait]
impl FreshMfa for IdentityGroups {
    async fn fresh(&self, ctx: &RequestContext, code: &str) -> Result<bool, PolicyError> {
        let mut identity = self.link().get().cloned().ok_or_else(|| {
            PolicyError::Unavailable(
                "gateway.identity_url is not configured: the approver's TOTP cannot be checked"
                    .into(),
            )
        })?;
        // Asked as the approver: their session's TOTP, their code.
        let request = lattice_core::grpc::request(
            self.internal(),
            &ctx.principal,
            Some(&ctx.client_ip),
            FreshMfaRequest {
                totp_code: code.to_owned(),
            },
        );
        match identity.fresh_mfa(request).await {
            Ok(r) => Ok(r.into_inner().fresh),
            Err(s)
                if lattice_core::error::code_of(&s) == lattice_core::ErrorCode::Unauthenticated =>
            {
                Err(PolicyError::BadCode(format!("totp_code: {}", s.message())))
            }
            Err(s) => Err(unavailable("identity", &s)),
        }
    }
}
