//! An agent's connection: the hello that opens it, the messages it sends
//! (heartbeats, facts, metrics, logs, results, proxy frames), and its end.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt as _};
use lattice_core::audit::Actor;
use lattice_proto::agent::v1 as agent;
use tokio::sync::{Notify, mpsc};
use tonic::{Status, Streaming};

use super::proxy::Event;
use super::{CachedCaps, Hub, INLINE_BODY, Session, TCP, Wanted, registry_key};
use crate::error::TunnelError;
use crate::store::{Connected, NodeRow};

/// A connected node's `last_seen_ms` is written at most this often (a connected
/// node is seen now; the value matters once it disconnects, which writes it).
const SEEN_WRITE_EVERY: Duration = Duration::from_secs(60);

impl Hub {
    /// Serve one agent stream: `node` is authenticated, `inbound` its messages.
    pub async fn attach(
        self: &Arc<Self>,
        node: NodeRow,
        client_ip: String,
        mut inbound: Streaming<agent::AgentMessage>,
    ) -> Result<
        impl Stream<Item = Result<agent::ServerMessage, Status>> + Send + 'static,
        TunnelError,
    > {
        let hello = match tokio::time::timeout(Duration::from_secs(15), inbound.message()).await {
            Ok(Ok(Some(agent::AgentMessage {
                msg: Some(agent::agent_message::Msg::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(TunnelError::Invalid(
                    "the first message must be hello".into(),
                ));
            }
            Ok(Err(status)) => {
                return Err(TunnelError::Invalid(format!(
                    "agent stream: {}",
                    status.message()
                )));
            }
            Err(_) => return Err(TunnelError::Invalid("no hello within 15 s".into())),
        };
        let facts = hello.facts.unwrap_or_default();
        let mut ports = hello.proxy_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let connected = Connected {
            facts: facts.clone(),
            agent_capabilities: hello.capabilities.clone(),
            proxy_ports: ports.clone(),
            agent_version: if hello.agent_version.is_empty() {
                facts.agent_version.clone()
            } else {
                hello.agent_version.clone()
            },
        };
        // The session is reachable (proxy requests, task pushes) from the moment it
        // is in the map, so the welcome is queued first: it is always the agent's
        // first message. The node shows `connected` only once the session is there.
        let since = lattice_core::time::now_ms();
        let (out, out_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            node_id: node.id.clone(),
            org_id: node.org_id.clone(),
            since,
            out,
            wake: Notify::new(),
            wanted: Mutex::new(Wanted::default()),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            proxy_ports: ports,
            inline_body: hello.features.iter().any(|f| f == INLINE_BODY),
            tcp: hello.features.iter().any(|f| f == TCP),
            close: self.shutdown.child_token(),
            close_reason: Mutex::new(None),
            seen_written: Mutex::new(Instant::now()),
            inflight: Mutex::new(HashMap::new()),
            caps: Mutex::new(CachedCaps {
                generation: 0,
                value: Some((Instant::now(), Arc::new(node.capabilities.clone()))),
            }),
        });
        session.send(agent::server_message::Msg::Welcome(agent::Welcome {
            node_id: node.id.clone(),
            heartbeat_interval_ms: self.nodes.settings.heartbeat_interval_ms,
            metrics_interval_ms: self.nodes.settings.metrics_interval_ms,
            capabilities: node.capabilities.clone(),
            features: vec![INLINE_BODY.into()],
        }));
        if let Some(old) = self
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(node.id.clone(), session.clone())
        {
            old.close("replaced by a newer connection from the agent");
        }
        self.claim_registry(&node.id).await;
        if let Err(err) = self
            .nodes
            .store()
            .connected(&node.id, &connected, since)
            .await
        {
            session.close("could not record the connection");
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if sessions
                .get(&node.id)
                .is_some_and(|x| Arc::ptr_eq(x, &session))
            {
                sessions.remove(&node.id);
            }
            return Err(err);
        }
        self.nodes
            .record(Actor { org_id: &node.org_id, id: &format!("node:{}", node.id), client_ip: &client_ip }, "node.connect", &node.id, true, serde_json::json!({"agent_version": connected.agent_version, "capabilities": connected.agent_capabilities}))
            .await;
        // Leases of tasks still running from a previous connection stay current.
        if !hello.running.is_empty() {
            self.extend_leases(&session, &hello.running).await;
        }
        let hub = self.clone();
        let s = session.clone();
        tokio::spawn(async move { hub.read_loop(s, inbound, client_ip).await });
        let hub = self.clone();
        let s = session.clone();
        tokio::spawn(async move { hub.dispatch_loop(s).await });
        session.wake_any();
        let close = session.close.clone();
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx)
            .map(|m| Ok(*m))
            .take_until(close.cancelled_owned()))
    }

    async fn read_loop(
        self: Arc<Self>,
        s: Arc<Session>,
        mut inbound: Streaming<agent::AgentMessage>,
        client_ip: String,
    ) {
        let hb = Duration::from_millis(self.nodes.settings.heartbeat_interval_ms as u64);
        let mut last = Instant::now();
        let mut check = tokio::time::interval(hb);
        let reason = loop {
            tokio::select! {
                _ = s.close.cancelled() => {
                    break s.close_reason.lock().expect("close reason lock").clone().unwrap_or_else(|| "closed".into());
                }
                _ = check.tick() => {
                    if last.elapsed() > hb * 3 {
                        break format!("no heartbeat for {} s", last.elapsed().as_secs());
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => {
                        last = Instant::now();
                        if let Some(m) = m.msg
                            && let Err(err) = Box::pin(self.handle(&s, m)).await
                        {
                            tracing::warn!(node = %s.node_id, error = %lattice_core::error::DisplayChain(&err), "agent message failed");
                        }
                    }
                    Ok(None) => break "the agent closed the stream".to_owned(),
                    Err(status) => break format!("stream broken: {}", status.message()),
                },
            }
        };
        s.close(&reason);
        // Every open proxy stream ends with the connection.
        for (_, slot) in s.streams().drain() {
            slot.credit.close();
            let _ = slot.to_client.send(Event::Reset(agent::ProxyReset {
                code: "agent_disconnected".into(),
                message: format!("the node's agent disconnected: {reason}"),
            }));
        }
        let current = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let ours = sessions.get(&s.node_id).is_some_and(|x| Arc::ptr_eq(x, &s));
            if ours {
                sessions.remove(&s.node_id);
            }
            ours
        };
        if current {
            self.cache.delete(&registry_key(&s.node_id)).await;
        }
        if let Err(err) = self
            .nodes
            .store()
            .disconnected(&s.node_id, s.since, &reason)
            .await
        {
            tracing::warn!(node = %s.node_id, error = %lattice_core::error::DisplayChain(&err), "could not record the disconnect");
        }
        self.nodes
            .record(
                Actor {
                    org_id: &s.org_id,
                    id: &format!("node:{}", s.node_id),
                    client_ip: &client_ip,
                },
                "node.disconnect",
                &s.node_id,
                true,
                serde_json::json!({"reason": reason}),
            )
            .await;
        tracing::info!(node = %s.node_id, %reason, "agent disconnected");
    }

    async fn handle(
        &self,
        s: &Arc<Session>,
        msg: agent::agent_message::Msg,
    ) -> Result<(), TunnelError> {
        use agent::agent_message::Msg;
        match msg {
            Msg::Hello(_) => return Err(TunnelError::Invalid("hello may only come first".into())),
            Msg::Heartbeat(h) => {
                let due = {
                    let mut at = s.seen_written.lock().expect("seen lock");
                    let due = at.elapsed() >= SEEN_WRITE_EVERY;
                    if due {
                        *at = Instant::now();
                    }
                    due
                };
                if due {
                    self.nodes.store().seen(&s.node_id).await?;
                }
                self.claim_registry(&s.node_id).await;
                if !h.running.is_empty() {
                    self.extend_leases(s, &h.running).await;
                }
                s.send(agent::server_message::Msg::Heartbeat(agent::Heartbeat {
                    sent_at_ms: lattice_core::time::now_ms(),
                    running: Vec::new(),
                }));
            }
            Msg::Facts(f) => self.nodes.store().set_facts(&s.node_id, &f).await?,
            Msg::Metrics(m) => self.nodes.store().add_metrics(&s.node_id, &m).await?,
            Msg::Logs(batch) => {
                if batch.entries.len() > 10_000 {
                    return Err(TunnelError::Invalid(
                        "logs: at most 10000 lines per batch".into(),
                    ));
                }
                self.nodes
                    .store()
                    .add_logs(&s.node_id, &batch.entries)
                    .await?;
            }
            Msg::Result(r) => self.complete(s, r, true).await,
            Msg::Proxy(frame) => s.agent_frame(frame),
        }
        Ok(())
    }
}
