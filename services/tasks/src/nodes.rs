//! Whether the caller may queue a task of a kind on a node. Nodes are the tunnel
//! service's data, so the tasks service asks it, on the caller's behalf, whether the
//! node is in the caller's org (a task for a node outside it is refused here even
//! when the gateway checked first); then it asks the policy service whether the
//! caller may `RunTask` of that kind on the node (its name and labels are what
//! policies see).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lattice_core::auth::{InternalAuth, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::policy::v1 as policy;
use lattice_proto::policy::v1::policy_service_client::PolicyServiceClient;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use lattice_proto::tunnel::v1::{GetNodeRequest, Node};

use crate::error::TaskError;

/// Answers "may the caller run a task of this kind on this node?".
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync {
    /// Ok when `node_id` is a node of `ctx`'s org and the policy lets the caller run
    /// `kind` there; `NotFound` for a node of another org (reported exactly like a
    /// missing one), `Forbidden` when the policy refuses.
    async fn check_may_run(
        &self,
        ctx: &RequestContext,
        node_id: &str,
        kind: &str,
    ) -> Result<(), TaskError>;
}

/// The tunnel and policy services as the directory, with a short memory of the
/// nodes found (a node never changes org; a deleted node's leftovers only queue
/// tasks that nobody claims, and are forgotten within ten seconds, as are label
/// changes).
pub struct TunnelDirectory {
    tunnel: Arc<OnceLock<TunnelServiceClient<InternalService>>>,
    policy: Arc<OnceLock<PolicyServiceClient<InternalService>>>,
    internal: InternalAuth,
    known: moka::sync::Cache<(String, String), Arc<Node>>,
}

impl TunnelDirectory {
    /// A directory whose tunnel client is set later with [`TunnelDirectory::link`]
    /// (the tunnel service may start after the tasks service in one process).
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            tunnel: Arc::new(OnceLock::new()),
            policy: Arc::new(OnceLock::new()),
            internal,
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
        }
    }

    /// Where the tunnel service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<TunnelServiceClient<InternalService>>> {
        self.tunnel.clone()
    }

    /// Where the policy service is reached; set once.
    pub fn link_policy(&self) -> Arc<OnceLock<PolicyServiceClient<InternalService>>> {
        self.policy.clone()
    }

    /// The node, if it is in the caller's org.
    async fn node(&self, ctx: &RequestContext, node_id: &str) -> Result<Arc<Node>, TaskError> {
        let key = (ctx.principal.org_id.clone(), node_id.to_owned());
        if let Some(node) = self.known.get(&key) {
            return Ok(node);
        }

        let mut tunnel = self.tunnel.get().cloned().ok_or_else(|| {
            TaskError::Unavailable(
                "tunnel.url is not configured: the tasks service cannot check that the node is in your org".into(),
            )
        })?;
        // Asked as the caller: the tunnel service answers only for nodes of the
        // caller's org.
        let request = lattice_core::grpc::request(
            &self.internal,
            &ctx.principal,
            Some(&ctx.client_ip),
            GetNodeRequest {
                id: node_id.to_owned(),
            },
        );
        match tunnel.get_node(request).await {
            Ok(r) => {
                let node = Arc::new(r.into_inner());
                self.known.insert(key, node.clone());
                Ok(node)
            }
            Err(status) => Err(match lattice_core::error::code_of(&status) {
                lattice_core::ErrorCode::NotFound => {
                    TaskError::NotFound(format!("node {node_id:?}"))
                }
                lattice_core::ErrorCode::BadRequest => {
                    TaskError::Invalid(format!("node: {}", status.message()))
                }
                lattice_core::ErrorCode::PermissionDenied => {
                    TaskError::MissingScope("tasks:write".into())
                }
                _ => TaskError::Unavailable(format!("tunnel service: {}", status.message())),
            }),
        }
    }
}

#[async_trait::async_trait]
impl NodeDirectory for TunnelDirectory {
    async fn check_may_run(
        &self,
        ctx: &RequestContext,
        node_id: &str,
        kind: &str,
    ) -> Result<(), TaskError> {
        let node = self.node(ctx, node_id).await?;
        // Services queue their own work (fact refreshes after a connect); policies
        // are about people and their tokens.
        if ctx.principal.is_service() {
            return Ok(());
        }
        let mut policy = self.policy.get().cloned().ok_or_else(|| {
            TaskError::Unavailable(
                "policy.url is not configured: the tasks service cannot check who may run tasks"
                    .into(),
            )
        })?;
        let request = lattice_core::grpc::request(
            &self.internal,
            &ctx.principal,
            Some(&ctx.client_ip),
            policy::AuthorizeRequest {
                action: policy::Action::RunTask.into(),
                resource: Some(policy::authorize_request::Resource::Node(
                    policy::NodeResource {
                        id: node.id.clone(),
                        name: node.hostname.clone(),
                        labels: node.labels.clone(),
                    },
                )),
                task_kind: kind.to_owned(),
                ..Default::default()
            },
        );
        let answer = policy
            .authorize(request)
            .await
            .map_err(|s| TaskError::Unavailable(format!("policy service: {}", s.message())))?
            .into_inner();
        if answer.allow {
            Ok(())
        } else {
            Err(TaskError::Forbidden(format!(
                "policy denies RunTask of kind {kind:?} on node {node_id}"
            )))
        }
    }
}
