//! gRPC adapters: `lattice.tunnel.v1.TunnelService` (operator API and the proxy)
//! and `lattice.agent.v1.AgentService` (enrollment and the agent stream, relayed by
//! the gateway).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use lattice_core::error::to_status;
use lattice_core::grpc::{client_ip_of, context_of, principal_of};
use lattice_proto::agent::v1 as agent;
use lattice_proto::tunnel::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::error::TunnelError;
use crate::hub::{Hub, ProxyStream};
use crate::store::NodeRow;

fn st(e: TunnelError) -> Status {
    to_status(&e)
}

/// Node row to message.
pub fn node_pb(n: NodeRow) -> pb::Node {
    pb::Node {
        id: n.id,
        org_id: n.org_id,
        hostname: n.hostname,
        labels: n.labels.into_iter().collect(),
        capabilities: n.capabilities,
        agent_capabilities: n.agent_capabilities,
        proxy_ports: n.proxy_ports,
        status: n.status,
        status_reason: n.status_reason,
        last_seen_ms: n.last_seen_ms,
        connected_since_ms: n.connected_since_ms,
        facts: n.facts,
        enrolled_at_ms: n.enrolled_at_ms,
        agent_version: n.agent_version,
    }
}

/// The operator-facing service.
#[derive(Debug, Clone)]
pub struct TunnelGrpc {
    hub: Arc<Hub>,
}

impl TunnelGrpc {
    /// Serve `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

#[tonic::async_trait]
impl pb::tunnel_service_server::TunnelService for TunnelGrpc {
    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinToken>, Status> {
        let ctx = context_of(&req)?;
        let r = req.into_inner();
        let t = self
            .hub
            .nodes()
            .create_join_token(
                &ctx,
                r.labels.into_iter().collect(),
                r.expires_in_s,
                &r.server_url,
                &r.ca_sha256,
            )
            .await
            .map_err(st)?;
        Ok(Response::new(pb::JoinToken {
            id: t.id,
            token: t.token,
            expires_at_ms: t.expires_at_ms,
            labels: t.labels.into_iter().collect(),
        }))
    }

    async fn upload_release(
        &self,
        req: Request<Streaming<pb::UploadReleaseChunk>>,
    ) -> Result<Response<pb::Release>, Status> {
        let ctx = context_of(&req)?;
        let mut stream = req.into_inner();
        let head = match stream.message().await? {
            Some(pb::UploadReleaseChunk {
                chunk: Some(pb::upload_release_chunk::Chunk::Head(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the head",
                ));
            }
        };
        let chunks = stream.map(|m| match m {
            Ok(pb::UploadReleaseChunk {
                chunk: Some(pb::upload_release_chunk::Chunk::Data(d)),
            }) => Ok(d),
            Ok(_) => Err(TunnelError::Invalid(
                "after the head, only data chunks".into(),
            )),
            Err(e) => Err(TunnelError::Invalid(format!(
                "the upload broke off: {}",
                e.message()
            ))),
        });
        let release = self
            .hub
            .nodes()
            .upload_release(&ctx, &head.version, &head.arch, Box::pin(chunks))
            .await
            .map_err(st)?;
        Ok(Response::new(release))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let ctx = context_of(&req)?;
        let (releases, release_key) = self.hub.nodes().list_releases(&ctx).await.map_err(st)?;
        Ok(Response::new(pb::ListReleasesResponse {
            releases,
            release_key,
        }))
    }

    async fn get_release(
        &self,
        req: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let ctx = context_of(&req)?;
        let r = req.get_ref();
        let release = self
            .hub
            .nodes()
            .get_release(&ctx, &r.version, &r.arch)
            .await
            .map_err(st)?;
        Ok(Response::new(release))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let nodes = self.hub.nodes().list(&p).await.map_err(st)?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(node_pb).collect(),
        }))
    }

    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let p = principal_of(&req)?.clone();
        let n = self
            .hub
            .nodes()
            .get(&p, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(node_pb(n)))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let ctx = context_of(&req)?;
        let r = req.into_inner();
        let n = self
            .hub
            .nodes()
            .update(
                &ctx,
                &r.id,
                r.set_capabilities.then_some(r.capabilities),
                r.set_labels.then(|| r.labels.into_iter().collect()),
            )
            .await
            .map_err(st)?;
        self.hub.node_changed(&n.id).await;
        Ok(Response::new(node_pb(n)))
    }

    async fn delete_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let ctx = context_of(&req)?;
        let id = req.into_inner().id;
        self.hub.nodes().delete(&ctx, &id).await.map_err(st)?;
        self.hub.disconnect(&id, "the node was deleted");
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn reconnect_node(
        &self,
        req: Request<pb::ReconnectNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let ctx = context_of(&req)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() {
            "asked by an operator".to_owned()
        } else {
            r.reason
        };
        let n = self
            .hub
            .nodes()
            .reconnect(&ctx, &r.id, &r.url, &reason)
            .await
            .map_err(st)?;
        self.hub.reconnect(&n.id, &r.url, &reason).await;
        Ok(Response::new(node_pb(n)))
    }

    async fn node_metrics(
        &self,
        req: Request<pb::NodeMetricsRequest>,
    ) -> Result<Response<pb::NodeMetricsResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let samples = self
            .hub
            .nodes()
            .metrics(&p, &r.id, r.since_ms, r.limit)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::NodeMetricsResponse { samples }))
    }

    async fn node_logs(
        &self,
        req: Request<pb::NodeLogsRequest>,
    ) -> Result<Response<pb::NodeLogsResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let r = req.into_inner();
        let entries = self
            .hub
            .nodes()
            .logs(&p, &r.id, r.since_ms, &r.unit, &r.q, r.limit)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::NodeLogsResponse { entries }))
    }

    async fn fleet_metrics(
        &self,
        req: Request<pb::FleetMetricsRequest>,
    ) -> Result<Response<pb::FleetMetricsResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let text = self.hub.nodes().fleet_metrics(&p).await.map_err(st)?;
        Ok(Response::new(pb::FleetMetricsResponse { text }))
    }

    type ProxyStream = ProxyStream;

    async fn proxy(
        &self,
        req: Request<Streaming<pb::ProxyChunk>>,
    ) -> Result<Response<ProxyStream>, Status> {
        let ctx = context_of(&req)?;
        let metadata = req.metadata().clone();
        let mut body = req.into_inner();
        let head = match body.message().await? {
            Some(pb::ProxyChunk {
                chunk: Some(pb::proxy_chunk::Chunk::Head(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be the request head",
                ));
            }
        };
        let stream = self
            .hub
            .proxy(&ctx, &metadata, head, body)
            .await
            .map_err(st)?;
        Ok(Response::new(stream))
    }
}

/// The agent-facing service.
#[derive(Debug, Clone)]
pub struct AgentGrpc {
    hub: Arc<Hub>,
}

impl AgentGrpc {
    /// Serve `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<agent::ServerMessage, Status>> + Send>>;
type ReleaseStream = Pin<Box<dyn Stream<Item = Result<agent::ReleaseChunk, Status>> + Send>>;

/// The node token an agent call carries.
fn bearer<T>(req: &Request<T>) -> Result<String, Status> {
    Ok(req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("missing node token (authorization: Bearer lnt_...)")
        })?
        .to_owned())
}

#[tonic::async_trait]
impl agent::agent_service_server::AgentService for AgentGrpc {
    async fn enroll(
        &self,
        req: Request<agent::EnrollRequest>,
    ) -> Result<Response<agent::EnrollResponse>, Status> {
        let ip = client_ip_of(&req).unwrap_or_default();
        let r = req.into_inner();
        let (node, token) = self
            .hub
            .nodes()
            .enroll(&ip, &r.join_secret, r.facts.unwrap_or_default())
            .await
            .map_err(st)?;
        Ok(Response::new(agent::EnrollResponse {
            node_id: node.id,
            node_token: token,
            org_id: node.org_id,
            release_key: self.hub.nodes().release_public_key().await,
        }))
    }

    type FetchReleaseStream = ReleaseStream;

    async fn fetch_release(
        &self,
        req: Request<agent::FetchReleaseRequest>,
    ) -> Result<Response<ReleaseStream>, Status> {
        let token = bearer(&req)?;
        let node = self.hub.nodes().authenticate(&token).await.map_err(st)?;
        let r = req.into_inner();
        let chunks = self
            .hub
            .nodes()
            .fetch_release(&node, &r.version, &r.arch)
            .await
            .map_err(st)?;
        Ok(Response::new(Box::pin(chunks.map(|c| {
            c.map(|data| agent::ReleaseChunk { data }).map_err(st)
        }))))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<agent::AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let ip = client_ip_of(&req).unwrap_or_default();
        let token = bearer(&req)?;
        let node = self.hub.nodes().authenticate(&token).await.map_err(st)?;
        let stream = self
            .hub
            .attach(node, ip, req.into_inner())
            .await
            .map_err(st)?;
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl lattice_core::org_data::OrgData for TunnelGrpc {
    async fn usage(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.hub.nodes().org_usage(ctx, org_id).await.map_err(st)
    }

    async fn purge(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        let (counts, nodes) = self.hub.nodes().purge_org(ctx, org_id).await.map_err(st)?;
        for id in &nodes {
            self.hub.disconnect(id, "the node's org was deleted");
        }
        Ok(counts)
    }
}
