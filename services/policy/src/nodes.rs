//! A node's name and labels, for explaining a decision about it: nodes are the
//! tunnel service's, so it is asked, as the caller (it answers only for nodes of the
//! caller's org).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use lattice_core::auth::{InternalAuth, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::tunnel::v1::GetNodeRequest;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;

use crate::error::PolicyError;

/// Where node attributes come from.
#[async_trait::async_trait]
pub trait NodeDirectory: Send + Sync + std::fmt::Debug {
    /// The node's name and labels, if it is a node of `ctx`'s org.
    async fn node(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(String, BTreeMap<String, String>), PolicyError>;
}

/// The tunnel service as the directory.
#[derive(Debug)]
pub struct TunnelNodes {
    tunnel: Arc<OnceLock<TunnelServiceClient<InternalService>>>,
    internal: InternalAuth,
}

impl TunnelNodes {
    /// A directory whose tunnel client is set later with [`TunnelNodes::link`].
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            tunnel: Arc::new(OnceLock::new()),
            internal,
        }
    }

    /// Where the tunnel service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<TunnelServiceClient<InternalService>>> {
        self.tunnel.clone()
    }

    /// The internal auth calls are signed with.
    pub fn internal(&self) -> &InternalAuth {
        &self.internal
    }
}

#[async_trait::async_trait]
impl NodeDirectory for TunnelNodes {
    async fn node(
        &self,
        ctx: &RequestContext,
        id: &str,
    ) -> Result<(String, BTreeMap<String, String>), PolicyError> {
        let mut tunnel = self.tunnel.get().cloned().ok_or_else(|| {
            PolicyError::Unavailable(
                "tunnel.url is not configured: the policy service cannot read the node's labels"
                    .into(),
            )
        })?;
        let request = lattice_core::grpc::request(
            &self.internal,
            &ctx.principal,
            Some(&ctx.client_ip),
            GetNodeRequest { id: id.to_owned() },
        );
        match tunnel.get_node(request).await {
            Ok(r) => {
                let n = r.into_inner();
                Ok((n.hostname, n.labels.into_iter().collect()))
            }
            Err(s) => Err(match lattice_core::error::code_of(&s) {
                lattice_core::ErrorCode::NotFound | lattice_core::ErrorCode::BadRequest => {
                    PolicyError::NotFound(format!("node {id:?}"))
                }
                lattice_core::ErrorCode::PermissionDenied => {
                    PolicyError::MissingScope("nodes:read".into())
                }
                _ => PolicyError::Unavailable(format!("tunnel service: {}", s.message())),
            }),
        }
    }
}

/// No node directory: explaining a node decision answers 503.
#[derive(Debug, Default)]
pub struct NoNodes;

#[async_trait::async_trait]
impl NodeDirectory for NoNodes {
    async fn node(
        &self,
        _ctx: &RequestContext,
        id: &str,
    ) -> Result<(String, BTreeMap<String, String>), PolicyError> {
        Err(PolicyError::Unavailable(format!(
            "no tunnel service: node {id:?} cannot be read"
        )))
    }
}
