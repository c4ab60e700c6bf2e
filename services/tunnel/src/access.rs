//! Who may reach which port of which node: asked of the policy service (Cedar's
//! `AccessNode`, with the port and `http` or `tcp`) before every proxied request and
//! port forward opens. The operator scope `nodes:proxy` stays the coarse gate; the
//! policy decides within it.
//!
//! Allows are remembered for one second per (caller, node, port, protocol), so a
//! burst of proxied requests asks once; refusals are never remembered (the policy
//! service audits each one). Node names and labels are read once per five seconds.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lattice_core::auth::{InternalAuth, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::policy::v1 as pb;
use lattice_proto::policy::v1::policy_service_client::PolicyServiceClient;

use crate::error::TunnelError;
use crate::store::NodeRow;

/// The policy check of node access.
#[derive(Debug)]
pub struct NodeAccess {
    policy: Arc<OnceLock<PolicyServiceClient<InternalService>>>,
    internal: InternalAuth,
    /// (org, caller sub, credential, node, port, tcp) allowed recently.
    allowed: moka::sync::Cache<(String, String, String, String, u32, bool), ()>,
    /// Node id -> its row as last read (name and labels are what policies see).
    rows: moka::sync::Cache<String, Arc<NodeRow>>,
}

impl NodeAccess {
    /// A check whose policy client is set later with [`NodeAccess::link`].
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            policy: Arc::new(OnceLock::new()),
            internal,
            allowed: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            rows: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
        }
    }

    /// A node's row as recently read, if any.
    pub fn cached_node(&self, id: &str) -> Option<Arc<NodeRow>> {
        self.rows.get(id)
    }

    /// Remember a node's row for a few seconds.
    pub fn remember_node(&self, row: Arc<NodeRow>) {
        self.rows.insert(row.id.clone(), row);
    }

    /// Forget a node's row (its labels or name changed).
    pub fn forget_node(&self, id: &str) {
        self.rows.invalidate(id);
    }

    /// Where the policy service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<PolicyServiceClient<InternalService>>> {
        self.policy.clone()
    }

    /// Forget every remembered allow (a policy or a group changed).
    pub fn forget(&self) {
        self.allowed.invalidate_all();
    }

    /// Ok when the policy allows `ctx`'s caller to reach `port` of `node`.
    pub async fn check(
        &self,
        ctx: &RequestContext,
        node: &NodeRow,
        port: u32,
        tcp: bool,
    ) -> Result<(), TunnelError> {
        let p = &ctx.principal;
        let key = (
            p.org_id.clone(),
            p.sub.clone(),
            p.credential_id.clone(),
            node.id.clone(),
            port,
            tcp,
        );
        if self.allowed.contains_key(&key) {
            return Ok(());
        }
        let mut policy = self.policy.get().cloned().ok_or_else(|| {
            TunnelError::NotConnected(
                "policy.url is not configured: the tunnel service cannot check node access".into(),
            )
        })?;
        let protocol = if tcp {
            pb::Protocol::Tcp
        } else {
            pb::Protocol::Http
        };
        let request = lattice_core::grpc::request(
            &self.internal,
            p,
            Some(&ctx.client_ip),
            pb::AuthorizeRequest {
                action: pb::Action::AccessNode.into(),
                resource: Some(pb::authorize_request::Resource::Node(pb::NodeResource {
                    id: node.id.clone(),
                    name: node.hostname.clone(),
                    labels: node.labels.clone().into_iter().collect(),
                })),
                port,
                protocol: protocol.into(),
                ..Default::default()
            },
        );
        let answer = policy
            .authorize(request)
            .await
            .map_err(|s| TunnelError::NotConnected(format!("policy service: {}", s.message())))?
            .into_inner();
        if answer.allow {
            self.allowed.insert(key, ());
            Ok(())
        } else {
            Err(TunnelError::Forbidden(format!(
                "policy denies AccessNode to node {} port {port} ({})",
                node.id,
                if tcp { "tcp" } else { "http" }
            )))
        }
    }
}
