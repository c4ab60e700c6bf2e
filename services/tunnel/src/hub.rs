//! The agent streams this replica holds, and everything that rides on them: task
//! dispatch (pushed as soon as work is queued), results fenced by epoch, heartbeats,
//! and the multiplexed proxy streams with per-stream flow control.
//!
//! Flow control: each proxy stream has a window of [`WINDOW`] bytes in each
//! direction. A sender sends body bytes only within the window the receiver granted;
//! the receiver grants more (a `window_update`) as its consumer takes bytes. So one
//! slow HTTP client stops only its own stream, never the agent's other streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use lattice_core::auth::{InternalAuth, Principal};
use lattice_core::cache::Cache;
use lattice_core::events::{
    NODES_CHANGED_CHANNEL, NODES_RECONNECT_CHANNEL, TASKS_RUNNABLE_CHANNEL,
};
use lattice_core::grpc::InternalService;
use lattice_core::task_kinds;
use lattice_proto::agent::v1 as agent;
use lattice_proto::tasks::v1 as tpb;
use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
use lattice_proto::tunnel::v1 as pb;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::error::TunnelError;
use crate::service::Nodes;
use crate::store::{Connected, NodeRow};

/// Per-stream flow-control window, bytes, each direction.
pub const WINDOW: u32 = 256 * 1024;
/// Largest body chunk in one frame.
pub const CHUNK: usize = 64 * 1024;
/// Window is granted back in steps of this many consumed bytes (like HTTP/2
/// implementations), not per chunk: a small answer costs no update at all.
pub const GRANT_STEP: u32 = WINDOW / 4;
/// Protocol feature: a proxy open or head may carry the whole body.
pub const INLINE_BODY: &str = "proxy.inline_body";
/// Protocol feature: the agent opens TCP connections (port forwards).
pub const TCP: &str = "proxy.tcp";
/// A connected node's `last_seen_ms` is written at most this often (a connected
/// node is seen now; the value matters once it disconnects, which writes it).
const SEEN_WRITE_EVERY: Duration = Duration::from_secs(60);
/// Tasks claimed per dispatch round.
const CLAIM_BATCH: i64 = 16;
/// How long a session trusts the node's capabilities it read (a change is also
/// announced on the bus, which drops them at once).
const CAPS_TTL: Duration = Duration::from_secs(30);

/// A stream of proxy answers (local, or from the owning replica).
pub type ProxyStream = Pin<Box<dyn Stream<Item = Result<pb::ProxyChunk, Status>> + Send>>;

/// A reconnect request on the bus ([`NODES_RECONNECT_CHANNEL`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct ReconnectAsk {
    node: String,
    url: String,
    reason: String,
}

/// Registry key of the replica holding `node`'s stream.
fn registry_key(node: &str) -> String {
    format!("tunnel:node:{node}")
}

enum Event {
    Head(agent::ProxyHead),
    Data(Bytes),
    End,
    Reset(agent::ProxyReset),
}

struct Slot {
    to_client: mpsc::UnboundedSender<Event>,
    /// Request-body credit the agent granted.
    credit: Arc<Semaphore>,
    /// Response bytes received and not yet taken by the client.
    buffered: Arc<AtomicI64>,
    /// The client takes a response head carrying the whole body.
    inline_ok: bool,
}

/// One connected agent.
pub struct Session {
    /// Node id.
    pub node_id: String,
    /// Org of the node.
    pub org_id: String,
    /// When this connection started (the node row's `connected_since_ms`).
    pub since: i64,
    /// Boxed: the channel keeps blocks of 32 slots, and a slot of the message
    /// itself would cost every idle connection a few KiB.
    out: mpsc::UnboundedSender<Box<agent::ServerMessage>>,
    wake: Notify,
    /// Why the dispatcher was woken since its last claim.
    wanted: Mutex<Wanted>,
    streams: Mutex<HashMap<u64, Slot>>,
    next_stream: AtomicU64,
    proxy_ports: Vec<u32>,
    /// The agent speaks [`INLINE_BODY`].
    inline_body: bool,
    /// The agent speaks [`TCP`].
    tcp: bool,
    close: CancellationToken,
    close_reason: Mutex<Option<String>>,
    /// When `last_seen_ms` was last written (heartbeats write it at most once a
    /// minute; connect and disconnect always do).
    seen_written: Mutex<Instant>,
    /// Tasks pushed to the agent and not yet answered: id → kind.
    inflight: Mutex<HashMap<String, String>>,
    /// The node's server-side capabilities as last read.
    caps: Mutex<CachedCaps>,
}

/// What woke a session's dispatcher: anything (a result recorded, a connect, a
/// rescued task), or tasks of these kinds queued.
#[derive(Default)]
struct Wanted {
    any: bool,
    kinds: Vec<String>,
    /// Kinds queued while a task of that exclusive kind ran here: the running
    /// task's result claims them. Kept across claims until that result is sent.
    blocked: Vec<String>,
}

/// A node's capabilities as a session read them. `generation` counts changes
/// announced, so a read that overlapped a change is not kept.
#[derive(Default)]
struct CachedCaps {
    generation: u64,
    value: Option<(Instant, Arc<Vec<String>>)>,
}

impl CachedCaps {
    fn forget(&mut self) {
        self.generation += 1;
        self.value = None;
    }
}

impl Session {
    fn send(&self, msg: agent::server_message::Msg) {
        let _ = self
            .out
            .send(Box::new(agent::ServerMessage { msg: Some(msg) }));
    }

    fn frame(&self, stream_id: u64, frame: agent::proxy_frame::Frame) {
        self.send(agent::server_message::Msg::Proxy(agent::ProxyFrame {
            stream_id,
            frame: Some(frame),
        }));
    }

    /// End this connection, saying why.
    pub fn close(&self, reason: &str) {
        let mut r = self.close_reason.lock().expect("close reason lock");
        if r.is_none() {
            *r = Some(reason.to_owned());
        }
        drop(r);
        self.close.cancel();
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.streams.lock().expect("stream table lock")
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inflight.lock().expect("inflight lock")
    }

    /// Wake the dispatcher to claim whatever is runnable.
    fn wake_any(&self) {
        self.wanted.lock().expect("wanted lock").any = true;
        self.wake.notify_one();
    }

    /// Wake the dispatcher for a queued task of `kind`, unless a claim could not
    /// start it now.
    fn wake_for(&self, kind: &str) {
        // Decided under the `wanted` lock: a result removes its task from
        // `inflight` before it takes `blocked` under this lock, so a kind is either
        // seen startable here or found blocked there, never lost in between.
        let mut w = self.wanted.lock().expect("wanted lock");
        let start = self.could_start(kind);
        let list = if start { &mut w.kinds } else { &mut w.blocked };
        if !list.iter().any(|k| k == kind) {
            list.push(kind.to_owned());
        }
        drop(w);
        if start {
            self.wake.notify_one();
        }
    }

    /// Whether the wakes since the last claim call for a claim now. A task queued
    /// while the previous claim ran wakes it again; if that claim started a task of
    /// the same exclusive kind, another claim would find nothing.
    fn take_wanted(&self) -> bool {
        let mut w = self.wanted.lock().expect("wanted lock");
        let any = std::mem::take(&mut w.any);
        let kinds = std::mem::take(&mut w.kinds);
        drop(w);
        any || kinds.iter().any(|k| self.could_start(k))
    }

    /// Forget the blocked kinds, returning whether one of them could start now. A
    /// result's claim sees every task queued before it started (a wake follows its
    /// task's commit), so the kinds blocked until then need no other claim.
    fn take_blocked(&self) -> bool {
        let blocked = std::mem::take(&mut self.wanted.lock().expect("wanted lock").blocked);
        blocked.iter().any(|k| self.could_start(k))
    }

    /// Whether a claim could start a task of `kind` now: not while this agent runs
    /// one of an exclusive kind (its result claims the next one anyway).
    fn could_start(&self, kind: &str) -> bool {
        let exclusive = task_kinds::spec(kind).is_none_or(|k| k.exclusive);
        !exclusive || !self.inflight().values().any(|k| k == kind)
    }
}

/// Everything this replica holds.
pub struct Hub {
    nodes: Nodes,
    tasks: Option<TaskServiceClient<InternalService>>,
    internal: InternalAuth,
    cache: Cache,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    advertise: String,
    peers: Mutex<HashMap<String, TunnelServiceClient<Channel>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("advertise", &self.advertise)
            .field("sessions", &self.connected())
            .finish()
    }
}

fn tunnel_principal() -> Principal {
    Principal::service("tunnel")
}

impl Hub {
    /// A hub for this replica, reachable by other replicas at `advertise`.
    pub fn new(
        nodes: Nodes,
        tasks: Option<TaskServiceClient<InternalService>>,
        internal: InternalAuth,
        cache: Cache,
        advertise: String,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            nodes,
            tasks,
            internal,
            cache,
            sessions: Mutex::new(HashMap::new()),
            advertise,
            peers: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// The node registry.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// How many agents are connected here.
    pub fn connected(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }

    /// Close `node`'s stream if it is held here.
    pub fn disconnect(&self, node: &str, reason: &str) {
        if let Some(s) = self.session(node) {
            s.close(reason);
        }
    }

    fn session(&self, node: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(node)
            .cloned()
    }

    /// Record this replica as the holder of `node`'s stream, for three heartbeats.
    async fn claim_registry(&self, node: &str) {
        let ttl = Duration::from_millis((self.nodes.settings.heartbeat_interval_ms * 3) as u64);
        self.cache
            .set(&registry_key(node), self.advertise.as_bytes(), ttl)
            .await;
    }

    fn treq<T>(&self, msg: T) -> tonic::Request<T> {
        lattice_core::grpc::request(&self.internal, &tunnel_principal(), None, msg)
    }

    /// Wake the sessions whose nodes have runnable tasks, until shutdown.
    pub async fn run_dispatcher(self: Arc<Self>) {
        let mut rx = self.cache.subscribe(TASKS_RUNNABLE_CHANNEL);
        let mut changed = self.cache.subscribe(NODES_CHANGED_CHANNEL);
        let mut reconnect = self.cache.subscribe(NODES_RECONNECT_CHANNEL);
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    let now = lattice_core::time::now_ms();
                    let s = &self.nodes.settings;
                    if let Err(err) = self.nodes.store().sweep(now - s.metrics_retention_ms, now - s.logs_retention_ms).await {
                        tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "tunnel: retention sweep failed");
                    }
                }
                msg = reconnect.recv() => match msg {
                    Ok(msg) => self.reconnect_local(&msg),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "tunnel: reconnect requests missed (the bus lagged)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                msg = changed.recv() => match msg {
                    Ok(node) => {
                        if let Some(s) = self.session(&node) {
                            s.caps.lock().expect("caps lock").forget();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for s in self.sessions.lock().expect("sessions lock").values() {
                            s.caps.lock().expect("caps lock").forget();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                msg = rx.recv() => match msg {
                    Ok(msg) => {
                        let (node, kind) = match msg.split_once(' ') {
                            Some((node, kind)) => (node, Some(kind)),
                            None => (msg.as_str(), None),
                        };
                        if let Some(s) = self.session(node) {
                            match kind {
                                Some(kind) => s.wake_for(kind),
                                None => s.wake_any(),
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for s in self.sessions.lock().expect("sessions lock").values() {
                            s.wake_any();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
        }
        // Ask every agent to come back (to another replica, or this one restarted).
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .cloned()
            .collect();
        for s in sessions {
            s.send(agent::server_message::Msg::Reconnect(agent::Reconnect {
                url: String::new(),
                reason: "server shutting down".into(),
            }));
            s.close("server shutting down");
        }
    }

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
            .record(&node.org_id, &format!("node:{}", node.id), "node.connect", &node.id, true, &client_ip,
                serde_json::json!({"agent_version": connected.agent_version, "capabilities": connected.agent_capabilities}))
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
                &s.org_id,
                &format!("node:{}", s.node_id),
                "node.disconnect",
                &s.node_id,
                true,
                &client_ip,
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
            Msg::Proxy(frame) => self.agent_frame(s, frame),
        }
        Ok(())
    }

    async fn extend_leases(&self, s: &Session, running: &[agent::RunningTask]) {
        let Some(tasks) = &self.tasks else { return };
        let req = tpb::HeartbeatRequest {
            node_id: s.node_id.clone(),
            leases: running
                .iter()
                .map(|r| tpb::Lease {
                    task_id: r.task_id.clone(),
                    epoch: r.epoch,
                })
                .collect(),
        };
        match tasks.clone().heartbeat(self.treq(req)).await {
            Ok(resp) => {
                for stale in resp.into_inner().stale {
                    s.inflight().remove(&stale.task_id);
                    s.send(agent::server_message::Msg::Cancel(agent::CancelTask {
                        task_id: stale.task_id,
                        epoch: stale.epoch,
                    }));
                }
            }
            Err(status) => tracing::warn!(node = %s.node_id, %status, "lease heartbeat failed"),
        }
    }

    async fn complete(&self, s: &Session, r: agent::TaskResult, claim_next: bool) {
        let Some(tasks) = &self.tasks else { return };
        let req = tpb::CompleteAndClaimRequest {
            result: Some(tpb::CompleteRequest {
                task_id: r.task_id.clone(),
                epoch: r.epoch,
                node_id: s.node_id.clone(),
                ok: r.ok,
                result_json: r.result_json,
                error_code: r.error_code,
                error: r.error,
            }),
            claim_max: if claim_next { CLAIM_BATCH } else { 0 },
        };
        // Wakes from here on may be for tasks the claim below cannot see.
        s.take_blocked();
        let mut answer = Box::pin(tasks.clone().complete_and_claim(self.treq(req.clone())))
            .await
            .map(|resp| {
                let r = resp.into_inner();
                r.claim_made.then_some(r.claimed)
            });
        if matches!(&answer, Err(st) if st.code() == tonic::Code::Unimplemented) {
            // A tasks service of an earlier release (during a rolling upgrade).
            let result = req.result.unwrap_or_default();
            answer = Box::pin(tasks.clone().complete(self.treq(result)))
                .await
                .map(|_| None);
        }
        let (accepted, reason, claimed) = match answer {
            Ok(claimed) => (true, String::new(), claimed),
            // Fenced or gone: tell the agent to drop it.
            Err(st)
                if matches!(
                    st.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::NotFound
                ) =>
            {
                (false, st.message().to_owned(), None)
            }
            // The queue is unreachable: no ack, the agent sends it again later.
            Err(st) => {
                tracing::warn!(node = %s.node_id, status = %st, "could not record a task result; the agent will resend it");
                return;
            }
        };
        s.inflight().remove(&r.task_id);
        s.send(agent::server_message::Msg::Ack(agent::ResultAck {
            task_id: r.task_id,
            epoch: r.epoch,
            accepted,
            reason,
        }));
        // The next tasks came with the result. The dispatcher looks again when no
        // claim was made, after a full batch, or when a task of a kind that was
        // running here was queued after the claim started and could start now.
        let again = match claimed {
            None => true,
            Some(c) => {
                let full = self.deliver(s, c).await;
                // After delivery: a blocked kind the claim did not start again.
                s.take_blocked() || full
            }
        };
        if again {
            s.wake_any();
        }
    }

    /// The node's server-side capabilities: cached in the session for [`CAPS_TTL`],
    /// dropped at once when the node changes. Unreadable counts as none.
    async fn node_caps(&self, s: &Session) -> Arc<Vec<String>> {
        let generation = {
            let c = s.caps.lock().expect("caps lock");
            if let Some((at, caps)) = &c.value
                && at.elapsed() < CAPS_TTL
            {
                return caps.clone();
            }
            c.generation
        };
        match self.nodes.store().node(None, &s.node_id).await {
            Ok(n) => {
                let caps = Arc::new(n.capabilities);
                let mut c = s.caps.lock().expect("caps lock");
                if c.generation == generation {
                    c.value = Some((Instant::now(), caps.clone()));
                }
                caps
            }
            Err(_) => Arc::new(Vec::new()),
        }
    }

    /// Ask `node`'s agent to reconnect (to `url` when not empty), through the
    /// replica that holds its stream.
    pub async fn reconnect(&self, node: &str, url: &str, reason: &str) {
        let ask = ReconnectAsk {
            node: node.to_owned(),
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let msg = serde_json::to_string(&ask).expect("strings serialize");
        self.cache.publish(NODES_RECONNECT_CHANNEL, &msg).await;
    }

    fn reconnect_local(&self, msg: &str) {
        let Ok(ask) = serde_json::from_str::<ReconnectAsk>(msg) else {
            tracing::warn!("tunnel: unreadable reconnect request on the bus");
            return;
        };
        if let Some(s) = self.session(&ask.node) {
            tracing::info!(node = %ask.node, url = %ask.url, reason = %ask.reason, "asking the agent to reconnect");
            s.send(agent::server_message::Msg::Reconnect(agent::Reconnect {
                url: ask.url,
                reason: ask.reason,
            }));
        }
    }

    /// Announce that `node`'s settings changed, so every replica re-reads them.
    pub async fn node_changed(&self, node: &str) {
        if let Some(s) = self.session(node) {
            s.caps.lock().expect("caps lock").forget();
        }
        self.cache.publish(NODES_CHANGED_CHANNEL, node).await;
    }

    async fn dispatch_loop(self: Arc<Self>, s: Arc<Session>) {
        let Some(tasks) = self.tasks.clone() else {
            return;
        };
        loop {
            // Pushed by the bus; the poll covers pushes that cannot arrive (see
            // `Settings::task_poll_ms`), spread so sessions do not poll together.
            let every = self.nodes.settings.task_poll_ms.max(1_000) as u64;
            let poll = Duration::from_millis(every + rand::random_range(0..=every / 2));
            tokio::select! {
                _ = s.close.cancelled() => return,
                _ = s.wake.notified() => {
                    if !s.take_wanted() {
                        continue;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
            // The calls are boxed: this loop lives as long as the agent's connection,
            // and an idle one should not hold the space of a call in flight.
            let claimed = match Box::pin(tasks.clone().claim(self.treq(tpb::ClaimRequest {
                node_id: s.node_id.clone(),
                max: CLAIM_BATCH,
            })))
            .await
            {
                Ok(r) => r.into_inner().tasks,
                Err(status) => {
                    tracing::warn!(node = %s.node_id, %status, "claim failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    s.wake_any();
                    continue;
                }
            };
            if Box::pin(self.deliver(&s, claimed)).await {
                s.wake_any();
            }
        }
    }

    /// Push claimed tasks to the agent (a task needing a capability the node lacks
    /// on the server side is failed here instead). Returns whether the claim was a
    /// full batch, so there may be more.
    async fn deliver(&self, s: &Session, claimed: Vec<tpb::ClaimedTask>) -> bool {
        let full = claimed.len() as i64 == CLAIM_BATCH;
        for t in claimed {
            let needs = task_kinds::spec(&t.kind).and_then(|k| k.capability);
            if let Some(cap) = needs
                && !Box::pin(self.node_caps(s)).await.iter().any(|x| x == cap)
            {
                let error = format!(
                    "server refused: capability {cap:?} is not enabled for node {} (enable it with PATCH /api/v1/nodes/{} {{\"capabilities\":[\"{cap}\"]}})",
                    s.node_id, s.node_id
                );
                let r = agent::TaskResult {
                    task_id: t.id,
                    epoch: t.epoch,
                    ok: false,
                    result_json: serde_json::json!({"refused_by": "server", "capability": cap})
                        .to_string(),
                    error_code: "capability_denied".into(),
                    error,
                };
                Box::pin(self.complete(s, r, false)).await;
                continue;
            }
            s.inflight().insert(t.id.clone(), t.kind.clone());
            s.send(agent::server_message::Msg::Task(agent::TaskAssignment {
                task_id: t.id,
                epoch: t.epoch,
                kind: t.kind,
                payload_json: t.payload_json,
            }));
        }
        full
    }

    fn agent_frame(&self, s: &Session, frame: agent::ProxyFrame) {
        use agent::proxy_frame::Frame;
        let id = frame.stream_id;
        let Some(f) = frame.frame else { return };
        let mut streams = s.streams();
        let Some(slot) = streams.get(&id) else { return };
        match f {
            Frame::Head(mut h) if h.end => {
                if !slot.inline_ok {
                    // A client that does not take the body in the head gets it the
                    // long way: head, data, end.
                    let body = std::mem::take(&mut h.body);
                    h.end = false;
                    let _ = slot.to_client.send(Event::Head(h));
                    if !body.is_empty() {
                        slot.buffered.fetch_add(body.len() as i64, Ordering::SeqCst);
                        let _ = slot.to_client.send(Event::Data(body));
                    }
                    let _ = slot.to_client.send(Event::End);
                } else {
                    let _ = slot.to_client.send(Event::Head(h));
                }
                Self::finished(&mut streams, id);
            }
            Frame::Head(h) => {
                let _ = slot.to_client.send(Event::Head(h));
            }
            Frame::Data(d) => {
                let buffered =
                    slot.buffered.fetch_add(d.len() as i64, Ordering::SeqCst) + d.len() as i64;
                if buffered > i64::from(WINDOW) + CHUNK as i64 {
                    // The agent ignored the window: end the stream rather than buffer.
                    let _ = slot.to_client.send(Event::Reset(agent::ProxyReset {
                        code: "flow_control".into(),
                        message: "the agent sent past its window".into(),
                    }));
                    Self::finished(&mut streams, id);
                    drop(streams);
                    s.frame(
                        id,
                        Frame::Reset(agent::ProxyReset {
                            code: "flow_control".into(),
                            message: String::new(),
                        }),
                    );
                    return;
                }
                let _ = slot.to_client.send(Event::Data(d));
            }
            Frame::End(_) => {
                let _ = slot.to_client.send(Event::End);
                Self::finished(&mut streams, id);
            }
            Frame::Reset(r) => {
                let _ = slot.to_client.send(Event::Reset(r));
                Self::finished(&mut streams, id);
            }
            Frame::WindowUpdate(n) => slot.credit.add_permits(n as usize),
            Frame::Open(_) => {}
        }
    }

    /// Stream `id` ended: forget it, and stop its request pump (which may be waiting
    /// for window the agent will no longer grant).
    fn finished(streams: &mut HashMap<u64, Slot>, id: u64) {
        if let Some(slot) = streams.remove(&id) {
            slot.credit.close();
        }
    }

    /// Carry one HTTP exchange (or, with `head.tcp`, one TCP connection) to
    /// `head.node_id`: through the stream held here, or forwarded once to the
    /// replica that holds it.
    pub async fn proxy(
        self: &Arc<Self>,
        p: &Principal,
        ip: &str,
        metadata: &tonic::metadata::MetadataMap,
        head: pb::ProxyRequestHead,
        body: Streaming<pb::ProxyChunk>,
    ) -> Result<ProxyStream, TunnelError> {
        if !(p.allows("nodes:proxy")) {
            return Err(TunnelError::MissingScope("nodes:proxy".into()));
        }
        crate::service::check_id("node_id", &head.node_id)?;
        if head.port == 0 || head.port > 65_535 {
            return Err(TunnelError::Invalid("port: must be 1..65535".into()));
        }
        if head.tcp {
            if !head.method.is_empty()
                || !head.path_and_query.is_empty()
                || !head.headers.is_empty()
                || !head.body.is_empty()
                || head.end
            {
                return Err(TunnelError::Invalid(
                    "a TCP forward's head carries no method, path, headers or body (bytes follow as data)".into(),
                ));
            }
        } else if !head.path_and_query.starts_with('/') || head.path_and_query.len() > 8192 {
            return Err(TunnelError::Invalid(
                "path: must start with / (at most 8 KiB)".into(),
            ));
        }
        // The node must be the caller's. A stream held here knows its org; otherwise
        // the registry row is read (and the same check runs again on the owner).
        if let Some(s) = self.session(&head.node_id)
            && s.org_id == p.org_id
        {
            let refused = if !s.proxy_ports.contains(&head.port) {
                Some(TunnelError::Forbidden(format!(
                    "port {} is not allowed by the agent on node {} (its config allows: {:?})",
                    head.port, s.node_id, s.proxy_ports
                )))
            } else if s.streams().len() >= self.nodes.settings.max_proxy_streams {
                Some(TunnelError::Busy(format!(
                    "node {} already has {} proxied requests and port forwards open (tunnel.max_proxy_streams); retry when some end",
                    s.node_id, self.nodes.settings.max_proxy_streams
                )))
            } else if head.tcp && !s.tcp {
                Some(TunnelError::Invalid(format!(
                    "the agent on node {} does not forward TCP (it predates port forwards; upgrade it)",
                    s.node_id
                )))
            } else {
                None
            };
            // A port forward is a session into the node: each one is audited (single
            // proxied HTTP requests are not).
            if head.tcp {
                let detail = match &refused {
                    Some(e) => serde_json::json!({"port": head.port, "error": e.to_string()}),
                    None => serde_json::json!({"port": head.port}),
                };
                self.nodes
                    .record(
                        &p.org_id,
                        &p.sub,
                        "node.port_forward",
                        &s.node_id,
                        refused.is_none(),
                        ip,
                        detail,
                    )
                    .await;
            }
            if let Some(e) = refused {
                return Err(e);
            }
            return Ok(Box::pin(self.open_local(s, head, body)));
        }
        let node = self
            .nodes
            .store()
            .node(Some(&p.org_id), &head.node_id)
            .await?;
        let owner = self
            .cache
            .get(&registry_key(&node.id))
            .await
            .and_then(|v| String::from_utf8(v).ok());
        match owner {
            Some(url) if url != self.advertise && !head.forwarded => {
                let mut head = head;
                head.forwarded = true;
                self.forward(&url, metadata, head, body).await
            }
            _ => Err(TunnelError::NotConnected(format!(
                "node {} is not connected ({}{})",
                node.id,
                node.status,
                if node.status_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", node.status_reason)
                }
            ))),
        }
    }

    async fn forward(
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

    fn open_local(
        self: &Arc<Self>,
        s: Arc<Session>,
        head: pb::ProxyRequestHead,
        mut body: Streaming<pb::ProxyChunk>,
    ) -> LocalStream {
        use agent::proxy_frame::Frame;
        let id = s.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        let buffered = Arc::new(AtomicI64::new(0));
        s.streams().insert(
            id,
            Slot {
                to_client: tx,
                credit: credit.clone(),
                buffered: buffered.clone(),
                inline_ok: head.accept_inline_body,
            },
        );
        let (inline, ended) = (s.inline_body && head.end, head.end);
        let mut first = head.body;
        s.frame(
            id,
            Frame::Open(agent::ProxyOpen {
                port: head.port,
                method: head.method,
                path_and_query: head.path_and_query,
                headers: head.headers,
                body: if inline {
                    std::mem::take(&mut first)
                } else {
                    Bytes::new()
                },
                end: inline,
                tcp: head.tcp,
            }),
        );
        // The request body, within the agent's window (nothing to pump when the
        // whole request went with the open).
        let pump = s.clone();
        let pump_body = async move {
            let mut first = (!first.is_empty() || ended).then_some(first);
            loop {
                let chunk = match first.take() {
                    Some(d) => Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Data(d)),
                    })),
                    None if ended => Ok(None),
                    None => tokio::select! {
                        _ = pump.close.cancelled() => return,
                        c = body.message() => c,
                    },
                };
                match chunk {
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Data(d)),
                    })) => {
                        let mut rest = d;
                        while !rest.is_empty() {
                            let piece = rest.split_to(rest.len().min(CHUNK));
                            let permit = tokio::select! {
                                _ = pump.close.cancelled() => return,
                                p = credit.acquire_many(piece.len() as u32) => p,
                            };
                            let Ok(permit) = permit else { return };
                            permit.forget();
                            pump.frame(id, Frame::Data(piece));
                        }
                    }
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::End(_)),
                    }))
                    | Ok(None) => {
                        pump.frame(id, Frame::End(true));
                        return;
                    }
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Reset(r)),
                    })) => {
                        pump.frame(id, Frame::Reset(r));
                        return;
                    }
                    Ok(Some(_)) => {}
                    Err(_) => {
                        pump.frame(
                            id,
                            Frame::Reset(agent::ProxyReset {
                                code: "cancelled".into(),
                                message: "client went away".into(),
                            }),
                        );
                        return;
                    }
                }
            }
        };
        if !inline {
            tokio::spawn(pump_body);
        }
        LocalStream {
            rx,
            session: s,
            id,
            buffered,
            ungranted: 0,
            done: false,
        }
    }
}

/// Answers of one proxy stream held here. Taking a body chunk grants the agent more
/// window; dropping the stream before its end (the client went away) resets it on
/// the agent.
struct LocalStream {
    rx: mpsc::UnboundedReceiver<Event>,
    session: Arc<Session>,
    id: u64,
    buffered: Arc<AtomicI64>,
    /// Consumed bytes not yet granted back to the agent.
    ungranted: u32,
    done: bool,
}

impl Stream for LocalStream {
    type Item = Result<pb::ProxyChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use pb::proxy_chunk::Chunk;
        if self.done {
            return Poll::Ready(None);
        }
        let chunk = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Event::Head(h))) => {
                self.done = h.end;
                Chunk::Response(h)
            }
            Poll::Ready(Some(Event::Data(d))) => {
                self.buffered.fetch_sub(d.len() as i64, Ordering::SeqCst);
                self.ungranted += d.len() as u32;
                if self.ungranted >= GRANT_STEP {
                    let n = std::mem::take(&mut self.ungranted);
                    self.session
                        .frame(self.id, agent::proxy_frame::Frame::WindowUpdate(n));
                }
                Chunk::Data(d)
            }
            Poll::Ready(Some(Event::End)) => {
                self.done = true;
                Chunk::End(true)
            }
            Poll::Ready(Some(Event::Reset(r))) => {
                self.done = true;
                Chunk::Reset(r)
            }
            Poll::Ready(None) => {
                self.done = true;
                Chunk::Reset(agent::ProxyReset {
                    code: "agent_disconnected".into(),
                    message: "the node's agent disconnected".into(),
                })
            }
        };
        Poll::Ready(Some(Ok(pb::ProxyChunk { chunk: Some(chunk) })))
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        if !self.done {
            // The client went away: stop the agent's side too.
            Hub::finished(&mut self.session.streams(), self.id);
            self.session.frame(
                self.id,
                agent::proxy_frame::Frame::Reset(agent::ProxyReset {
                    code: "cancelled".into(),
                    message: "the client went away".into(),
                }),
            );
        }
    }
}
