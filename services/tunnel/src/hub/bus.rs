//! What replicas announce to each other on the bus: runnable tasks (which wake a
//! session's dispatcher), node changes (which drop cached capabilities), and
//! reconnect requests; the loop that listens also runs the retention sweep.

use std::sync::Arc;
use std::time::Duration;

use lattice_proto::agent::v1 as agent;
use lattice_proto::events::v1::{
    GroupsChanged, NodeChanged, NodeReconnect, PoliciesChanged, TasksRunnable,
};

use super::Hub;

impl Hub {
    /// Wake the sessions whose nodes have runnable tasks, until shutdown.
    pub async fn run_dispatcher(self: Arc<Self>) {
        let mut rx = self.cache.listen::<TasksRunnable>();
        let mut changed = self.cache.listen::<NodeChanged>();
        let mut reconnect = self.cache.listen::<NodeReconnect>();
        let mut policies = self.cache.listen::<PoliciesChanged>();
        let mut groups = self.cache.listen::<GroupsChanged>();
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
                    Ok(ask) => self.reconnect_local(ask),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "tunnel: reconnect requests missed (the bus lagged)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                // Remembered node-access allows end with any policy or group change.
                msg = policies.recv() => match msg {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.access.forget(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                msg = groups.recv() => match msg {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.access.forget(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                msg = changed.recv() => match msg {
                    Ok(NodeChanged { node_id }) => {
                        self.access.forget_node(&node_id);
                        if let Some(s) = self.session(&node_id) {
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
                    Ok(TasksRunnable { node_id, kind }) => {
                        if let Some(s) = self.session(&node_id) {
                            match kind {
                                Some(kind) => s.wake_for(&kind),
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

    /// Ask `node`'s agent to reconnect (to `url` when not empty), through the
    /// replica that holds its stream.
    pub async fn reconnect(&self, node: &str, url: &str, reason: &str) {
        self.cache
            .announce(&NodeReconnect {
                node_id: node.to_owned(),
                url: url.to_owned(),
                reason: reason.to_owned(),
            })
            .await;
    }

    fn reconnect_local(&self, ask: NodeReconnect) {
        if let Some(s) = self.session(&ask.node_id) {
            tracing::info!(node = %ask.node_id, url = %ask.url, reason = %ask.reason, "asking the agent to reconnect");
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
        self.cache
            .announce(&NodeChanged {
                node_id: node.to_owned(),
            })
            .await;
    }
}
