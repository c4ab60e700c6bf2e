//! What replicas announce to each other on the bus: runnable tasks (which wake a
//! session's dispatcher), node changes (which drop cached capabilities), and
//! reconnect requests; the loop that listens also runs the retention sweep.

use std::sync::Arc;
use std::time::Duration;

use lattice_core::events::{
    NODES_CHANGED_CHANNEL, NODES_RECONNECT_CHANNEL, TASKS_RUNNABLE_CHANNEL,
};
use lattice_proto::agent::v1 as agent;

use super::Hub;

/// A reconnect request on the bus ([`NODES_RECONNECT_CHANNEL`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct ReconnectAsk {
    node: String,
    url: String,
    reason: String,
}

impl Hub {
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
}
