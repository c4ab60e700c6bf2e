//! Cross-replica forwarding: a proxy stream for a node whose agent is connected to
//! another replica is sent on, once, to that replica.

use std::time::Duration;

use futures::StreamExt as _;
use lattice_proto::tunnel::v1 as pb;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tonic::Streaming;

use super::{Hub, ProxyStream};
use crate::error::TunnelError;

impl Hub {
    pub(super) async fn forward(
        &self,
        url: &str,
        metadata: &tonic::metadata::MetadataMap,
        head: pb::ProxyRequestHead,
        body: Streaming<pb::ProxyChunk>,
    ) -> Result<ProxyStream, TunnelError> {
        let client = {
            let mut peers = self.peers.lock().expect("peers lock");
            match peers.get(url) {
                Some(c) => c.clone(),
                None => {
                    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
                        .map_err(|e| TunnelError::NotConnected(format!("replica {url}: {e}")))?
                        .connect_timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30));
                    let c = TunnelServiceClient::new(endpoint.connect_lazy());
                    peers.insert(url.to_owned(), c.clone());
                    c
                }
            }
        };
        let first = pb::ProxyChunk {
            chunk: Some(pb::proxy_chunk::Chunk::Head(head)),
        };
        let rest = body
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(|r| std::future::ready(r.ok()));
        let mut req =
            tonic::Request::new(futures::stream::once(std::future::ready(first)).chain(rest));
        lattice_core::grpc::forward_metadata(metadata, req.metadata_mut());
        let resp = client.clone().proxy(req).await.map_err(|st| {
            TunnelError::NotConnected(format!(
                "the replica holding the node ({url}) failed: {}",
                st.message()
            ))
        })?;
        Ok(Box::pin(resp.into_inner()))
    }
}
