//! The agent streams this replica holds, and everything that rides on them: task
//! dispatch (pushed as soon as work is queued), results fenced by epoch, heartbeats,
//! and the multiplexed proxy streams with per-stream flow control (see `proxy`).
//!
//! Split by area: `sessions` (an agent's connection: its hello, its messages, its
//! end), `dispatch` (claims, pushed tasks, results, leases), `bus` (what replicas
//! announce to each other: runnable tasks, node changes, reconnect requests; and the
//! retention sweep), `proxy` (proxy streams and their flow control), `forward` (a
//! proxy stream sent on to the replica holding the node). This file holds the
//! session and hub types and the helpers they share.

mod bus;
mod dispatch;
mod forward;
mod proxy;
mod sessions;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lattice_core::auth::{InternalAuth, Principal};
use lattice_core::cache::Cache;
use lattice_core::grpc::InternalService;
use lattice_proto::agent::v1 as agent;
use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use self::proxy::Slot;
pub use self::proxy::{CHUNK, GRANT_STEP, INLINE_BODY, ProxyStream, TCP, WINDOW};
use crate::service::Nodes;

/// Registry key of the replica holding `node`'s stream.
fn registry_key(node: &str) -> String {
    format!("tunnel:node:{node}")
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
}

/// Everything this replica holds.
pub struct Hub {
    nodes: Nodes,
    access: Arc<crate::access::NodeAccess>,
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
        access: Arc<crate::access::NodeAccess>,
        tasks: Option<TaskServiceClient<InternalService>>,
        internal: InternalAuth,
        cache: Cache,
        advertise: String,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            nodes,
            access,
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
}
