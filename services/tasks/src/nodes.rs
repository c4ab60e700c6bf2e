//! Which org a node belongs to. Nodes are the tunnel service's data, so the tasks
//! service asks it, on the caller's behalf, before it queues work for a node: a task
//! for a node outside the caller's org is refused here even when the gateway checked
//! first.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lattice_core::auth::{InternalAuth, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::tunnel::v1::GetNodeRequest;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;

use crate::error::TaskError;

/// Answers "is this node in the caller's org?".
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync {
    /// Ok when `node_id` is a node of `ctx`'s org; `NotFound` otherwise (a node of
    /// another org is reported exactly like a missing one).
    async fn check_in_org(&self, ctx: &RequestContext, node_id: &str) -> Result<(), TaskError>;
}

/// The tunnel service as the directory, with a short memory of positive answers
/// (a node never changes org; a deleted node's leftovers only queue tasks that
/// nobody claims, and are forgotten within a minute).
pub struct TunnelDirectory {
    tunnel: Arc<OnceLock<TunnelServiceClient<InternalService>>>,
    internal: InternalAuth,
    known: moka::sync::Cache<(String, String), ()>,
}

impl TunnelDirectory {
    /// A directory whose tunnel client is set later with [`TunnelDirectory::link`]
    /// (the tunnel service may start after the tasks service in one process).
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            tunnel: Arc::new(OnceLock::new()),
            internal,
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }

    /// Where the tunnel service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<TunnelServiceClient<InternalService>>> {
        self.tunnel.clone()
    }
}

#[async_trait::async_trait]
impl NodeDirectory for TunnelDirectory {
    async fn check_in_org(&self, ctx: &RequestContext, node_id: &str) -> Result<(), TaskError> {
        let key = (ctx.principal.org_id.clone(), node_id.to_owned());
        if self.known.contains_key(&key) {
            return Ok(());
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
            Ok(_) => {
                self.known.insert(key, ());
                Ok(())
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
