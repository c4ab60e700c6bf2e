//! `lattice-agent run`: hold one outbound stream to the control plane, forever.
//! Reconnects with exponential backoff and full jitter; never exits because the
//! server is down. Carries heartbeats, facts, metrics, logs, task results and the
//! proxy streams.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lattice_proto::agent::v1 as pb;
use lattice_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Credentials};
use crate::{proxy, tasks};

/// How long a server has to open the stream and welcome the agent.
const WELCOME_WITHIN: Duration = Duration::from_secs(30);

/// How often managed artifacts are looked at for changes.
const ARTIFACTS_EVERY: Duration = Duration::from_secs(3);

/// The agent's version, reported with its facts.
pub const VERSION: &str = match option_env!("LATTICE_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// What outlives one connection.
pub struct Agent {
    pub creds: Credentials,
    pub config: AgentConfig,
    /// Where `creds` are kept (the server URL changes there when the agent moves).
    pub state_dir: PathBuf,
    /// The server URL in use: the enrolled one, or the last one moved to.
    pub server: Mutex<String>,
    /// A server URL the connected server sent this agent to, with the failed tries
    /// so far: used until it welcomes the agent (then kept) or fails three times.
    pub moving: Mutex<Option<(String, u32)>>,
    /// The last connection ended because the server asked: reconnect at once.
    pub asked: std::sync::atomic::AtomicBool,
    /// Tasks running now: id → (epoch, cancel).
    pub running: Mutex<HashMap<String, (i64, CancellationToken)>>,
    /// Results the server has not acknowledged (sent again after a reconnect).
    pub unacked: Mutex<Vec<pb::TaskResult>>,
    /// Where messages go now (None between connections).
    pub out: Mutex<Option<mpsc::Sender<pb::AgentMessage>>>,
}

impl Agent {
    /// A fresh agent for `creds` kept in `state_dir`.
    pub fn new(creds: Credentials, config: AgentConfig, state_dir: PathBuf) -> Self {
        Self {
            server: Mutex::new(creds.server.clone()),
            creds,
            config,
            state_dir,
            moving: Mutex::new(None),
            asked: std::sync::atomic::AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
            unacked: Mutex::new(Vec::new()),
            out: Mutex::new(None),
        }
    }

    /// Where to connect now.
    fn target(&self) -> String {
        match &*self.moving.lock().expect("moving lock") {
            Some((url, _)) => url.clone(),
            None => self.server.lock().expect("server lock").clone(),
        }
    }

    /// The server asked this agent to move to `url`. Only an agent that pins the
    /// server's CA moves, and only to HTTPS: its node token goes only to a server
    /// that proves it holds a certificate from that CA.
    fn move_to(&self, url: &str) {
        let now = self.server.lock().expect("server lock").clone();
        if url.is_empty() || url == now {
            return;
        }
        if self.creds.ca_sha256.is_none() || !url.starts_with("https://") {
            tracing::warn!(%url, "the server asked to move, but this agent moves only to an HTTPS URL and only with a pinned CA; staying");
            return;
        }
        if crate::tls::channel(url, self.creds.ca_sha256.as_deref()).is_err() {
            tracing::warn!(%url, "the server asked to move to an unusable URL; staying");
            return;
        }
        tracing::info!(from = %now, to = %url, "moving to another server URL");
        *self.moving.lock().expect("moving lock") = Some((url.to_owned(), 0));
    }

    /// A connection to `url` was welcomed: a move there is done and kept.
    fn welcomed(&self, url: &str) {
        let mut moving = self.moving.lock().expect("moving lock");
        if !matches!(&*moving, Some((u, _)) if u == url) {
            return;
        }
        *moving = None;
        drop(moving);
        *self.server.lock().expect("server lock") = url.to_owned();
        let mut creds = self.creds.clone();
        creds.server = url.to_owned();
        match creds.replace(&self.state_dir) {
            Ok(()) => tracing::info!(server = %url, "moved; the new server URL is saved"),
            Err(err) => {
                tracing::warn!(server = %url, error = %format!("{err:#}"), "moved, but could not save the new server URL")
            }
        }
    }

    /// A connection to `url` failed: after three failures a move there is given up.
    fn failed(&self, url: &str) {
        let mut moving = self.moving.lock().expect("moving lock");
        if let Some((u, tries)) = &mut *moving
            && u == url
        {
            *tries += 1;
            if *tries >= 3 {
                tracing::warn!(server = %url, "could not reach the server URL this agent was sent to; going back");
                *moving = None;
            }
        }
    }

    /// Send on the current connection (dropped if there is none: results are kept
    /// in `unacked` and resent).
    pub async fn send(&self, msg: pb::agent_message::Msg) {
        let tx = self.out.lock().expect("out lock").clone();
        if let Some(tx) = tx {
            let _ = tx.send(pb::AgentMessage { msg: Some(msg) }).await;
        }
    }

    /// Record a result and send it.
    pub async fn finish(&self, r: pb::TaskResult) {
        self.running
            .lock()
            .expect("running lock")
            .remove(&r.task_id);
        self.unacked.lock().expect("unacked lock").push(r.clone());
        self.send(pb::agent_message::Msg::Result(r)).await;
    }
}

/// Every managed artifact this node reports.
pub fn managed(config: &AgentConfig) -> Vec<pb::ManagedArtifact> {
    let mut all: Vec<pb::ManagedArtifact> = crate::firewall::artifact(config).into_iter().collect();
    all.extend(crate::files::artifacts(config));
    all.extend(crate::update::artifact(config));
    all
}

/// What changing artifacts look like: name, hash, error.
fn seen(artifacts: &[pb::ManagedArtifact]) -> Vec<(String, String, String)> {
    artifacts
        .iter()
        .map(|a| (a.name.clone(), a.hash.clone(), a.error.clone()))
        .collect()
}

/// Host facts in protocol form, with the managed artifacts this node reports.
pub fn facts(config: &AgentConfig) -> pb::HostFacts {
    let f = crate::host::facts();
    pb::HostFacts {
        hostname: f.hostname,
        os: f.os,
        kernel: f.kernel,
        arch: f.arch,
        cpu_model: f.cpu_model,
        cpus: f.cpus,
        memory_bytes: f.memory_bytes,
        disks: f
            .disks
            .into_iter()
            .map(|d| pb::Disk {
                mount: d.mount,
                fs_type: d.fs_type,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
            .collect(),
        addresses: f.addresses,
        agent_version: VERSION.into(),
        boot_time_s: f.boot_time_s,
        artifacts: managed(config),
    }
}

fn sample(s: crate::host::Sample) -> pb::MetricsSample {
    pb::MetricsSample {
        at_ms: s.at_ms,
        cpu_percent: s.cpu_percent,
        load1: s.load1,
        load5: s.load5,
        load15: s.load15,
        memory_total_bytes: s.memory_total_bytes,
        memory_available_bytes: s.memory_available_bytes,
        disks: s
            .disks
            .into_iter()
            .map(|d| pb::DiskUsage {
                mount: d.mount,
                used_bytes: d.used_bytes,
                total_bytes: d.total_bytes,
            })
            .collect(),
        net: s
            .net
            .into_iter()
            .map(|n| pb::NetCounters {
                interface: n.interface,
                rx_bytes: n.rx_bytes,
                tx_bytes: n.tx_bytes,
            })
            .collect(),
    }
}

/// Run until `shutdown`.
pub async fn run(agent: Arc<Agent>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (log_tx, log_rx) = mpsc::channel(10_000);
    let _followers = crate::logs::spawn_followers(&agent.config.logs, log_tx, shutdown.clone());
    let log_rx = Arc::new(tokio::sync::Mutex::new(log_rx));
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = session(&agent, log_rx.clone(), &shutdown) => r,
        };
        *agent.out.lock().expect("out lock") = None;
        match outcome {
            Ok(reason) => tracing::info!(%reason, "disconnected; reconnecting"),
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "connection failed; retrying"),
        }
        // A connection that lasted a while resets the backoff.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let cap = (500u64 << failures.min(6)).min(30_000);
        // Asked by the server: again at once, spread over a second so a fleet told
        // together does not arrive together.
        let pause = if agent.asked.swap(false, Ordering::SeqCst) {
            failures = 0;
            Duration::from_millis(rand::random_range(0..=1_000))
        } else {
            Duration::from_millis(rand::random_range(cap / 2..=cap))
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One connection, until it ends; returns why.
async fn session(
    agent: &Arc<Agent>,
    logs: Arc<tokio::sync::Mutex<mpsc::Receiver<crate::logs::LogLine>>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    let server = agent.target();
    let result = connected(agent, &server, logs, shutdown).await;
    if result.is_err() {
        agent.failed(&server);
    }
    result
}

/// One connection to `server`, until it ends; returns why.
async fn connected(
    agent: &Arc<Agent>,
    server: &str,
    logs: Arc<tokio::sync::Mutex<mpsc::Receiver<crate::logs::LogLine>>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    let channel = crate::tls::channel(server, agent.creds.ca_sha256.as_deref())?;
    let mut client = AgentServiceClient::new(channel).max_decoding_message_size(8 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(512);
    let running: Vec<pb::RunningTask> = agent
        .running
        .lock()
        .expect("running lock")
        .iter()
        .map(|(id, (epoch, _))| pb::RunningTask {
            task_id: id.clone(),
            epoch: *epoch,
        })
        .collect();
    let hello_facts = {
        let config = agent.config.clone();
        tokio::task::spawn_blocking(move || facts(&config)).await?
    };
    // What the server knows of the managed artifacts: changes from here are sent.
    let reported = seen(&hello_facts.artifacts);
    let hello = pb::Hello {
        agent_version: VERSION.into(),
        facts: Some(hello_facts),
        capabilities: agent.config.capabilities.clone(),
        proxy_ports: agent.config.proxy_ports.clone(),
        running,
        features: vec![proxy::INLINE_BODY.into(), proxy::TCP.into()],
    };
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(hello)),
    })
    .await?;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", agent.creds.node_token).parse()?,
    );
    // A server that accepts the connection but never answers counts as a failure
    // (and a move to it is given up), not as a connection.
    let (mut inbound, first) = tokio::time::timeout(WELCOME_WITHIN, async {
        let mut inbound = client.session(req).await?.into_inner();
        let first = inbound.message().await?;
        anyhow::Ok((inbound, first))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no welcome from {server} within {WELCOME_WITHIN:?}"))??;
    let welcome = match first {
        Some(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Welcome(w)),
        }) => w,
        _ => anyhow::bail!("the server did not welcome this agent"),
    };
    tracing::info!(node = %welcome.node_id, %server, "connected");
    agent.welcomed(server);
    *agent.out.lock().expect("out lock") = Some(tx.clone());
    let resend: Vec<_> = agent.unacked.lock().expect("unacked lock").clone();
    for r in resend {
        agent.send(pb::agent_message::Msg::Result(r)).await;
    }
    // Connected: an update that brought this binary is confirmed (or one that
    // was rolled back is reported).
    crate::update::welcomed(agent).await;
    let conn = shutdown.child_token();
    let _stop = conn.clone().drop_guard();
    // Heartbeats (with the leases of running tasks), metrics and logs.
    {
        let (agent, conn) = (agent.clone(), conn.clone());
        let hb = Duration::from_millis(welcome.heartbeat_interval_ms.max(200) as u64);
        let every = Duration::from_millis(welcome.metrics_interval_ms.max(200) as u64);
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(hb);
            let mut metrics = tokio::time::interval(every);
            let mut flush = tokio::time::interval(Duration::from_millis(500));
            let mut sampler = crate::host::Sampler::new();
            let mut reported_drops = 0;
            loop {
                tokio::select! {
                    _ = conn.cancelled() => return,
                    _ = beat.tick() => {
                        let running = agent.running.lock().expect("running lock").iter()
                            .map(|(id, (epoch, _))| pb::RunningTask { task_id: id.clone(), epoch: *epoch })
                            .collect();
                        agent.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                            sent_at_ms: lattice_core::time::now_ms(),
                            running,
                        })).await;
                    }
                    _ = metrics.tick() => {
                        let s = sampler.sample();
                        agent.send(pb::agent_message::Msg::Metrics(sample(s))).await;
                    }
                    _ = flush.tick() => {
                        let mut batch = Vec::new();
                        {
                            let mut rx = logs.lock().await;
                            while batch.len() < 1000 {
                                match rx.try_recv() {
                                    Ok(l) => batch.push(pb::LogEntry { at_ms: l.at_ms, source: l.source, message: l.message, priority: l.priority }),
                                    Err(_) => break,
                                }
                            }
                        }
                        let dropped = crate::logs::dropped_lines();
                        if dropped > reported_drops {
                            tracing::warn!(dropped = dropped - reported_drops, "log lines dropped: the server is not keeping up");
                            reported_drops = dropped;
                        }
                        if !batch.is_empty() {
                            agent.send(pb::agent_message::Msg::Logs(pb::LogBatch { entries: batch })).await;
                        }
                    }
                }
            }
        });
    }
    // Managed artifacts: looked at every few seconds, reported when one changed, so
    // a hand edit on the node shows as drift in the next plan.
    if !agent.config.capabilities.is_empty() {
        let (agent, conn) = (agent.clone(), conn.clone());
        tokio::spawn(async move {
            let mut look = tokio::time::interval(ARTIFACTS_EVERY);
            look.tick().await;
            let mut last = reported;
            loop {
                tokio::select! {
                    _ = conn.cancelled() => return,
                    _ = look.tick() => {
                        let config = agent.config.clone();
                        let Ok(now) = tokio::task::spawn_blocking(move || managed(&config)).await else {
                            continue;
                        };
                        let now = seen(&now);
                        if now != last {
                            let config = agent.config.clone();
                            if let Ok(f) = tokio::task::spawn_blocking(move || facts(&config)).await {
                                agent.send(pb::agent_message::Msg::Facts(f)).await;
                            }
                        }
                        last = now;
                    }
                }
            }
        });
    }
    let inline = welcome.features.iter().any(|f| f == proxy::INLINE_BODY);
    let proxies = proxy::Streams::new(agent.clone(), conn.clone(), inline);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok("agent shutting down".into()),
            m = inbound.message() => m,
        };
        let Some(msg) = msg? else {
            return Ok("the server closed the stream".into());
        };
        let Some(msg) = msg.msg else { continue };
        use pb::server_message::Msg;
        match msg {
            Msg::Task(t) => tasks::start(agent.clone(), t),
            Msg::Cancel(c) => {
                let running = agent
                    .running
                    .lock()
                    .expect("running lock")
                    .get(&c.task_id)
                    .cloned();
                if let Some((epoch, cancel)) = running
                    && epoch == c.epoch
                {
                    tracing::info!(task = %c.task_id, "cancelled by the server");
                    cancel.cancel();
                }
            }
            Msg::Ack(a) => {
                agent
                    .unacked
                    .lock()
                    .expect("unacked lock")
                    .retain(|r| !(r.task_id == a.task_id && r.epoch == a.epoch));
                if !a.accepted {
                    tracing::warn!(task = %a.task_id, reason = %a.reason, "the server refused a result");
                }
            }
            Msg::Reconnect(r) => {
                agent.move_to(&r.url);
                agent.asked.store(true, Ordering::SeqCst);
                return Ok(format!("the server asked to reconnect: {}", r.reason));
            }
            Msg::Proxy(frame) => proxies.handle(frame),
            Msg::RefreshFacts(_) => {
                let config = agent.config.clone();
                let f = tokio::task::spawn_blocking(move || facts(&config)).await?;
                agent.send(pb::agent_message::Msg::Facts(f)).await;
            }
            Msg::Welcome(_) | Msg::Heartbeat(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(server: &str, state_dir: &std::path::Path) -> Agent {
        pinned(server, state_dir, Some("ab".repeat(32)))
    }

    fn pinned(server: &str, state_dir: &std::path::Path, ca: Option<String>) -> Agent {
        let creds = Credentials {
            server: server.into(),
            ca_sha256: ca,
            node_id: "n".into(),
            node_token: "t".into(),
            release_key: None,
        };
        creds.save(state_dir).unwrap();
        Agent::new(creds, AgentConfig::default(), state_dir.to_owned())
    }

    #[tokio::test]
    async fn a_move_is_kept_once_welcomed_and_given_up_after_three_failures() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent("https://one.example:8443", dir.path());
        // Never from HTTPS to plain HTTP, and not to the same URL.
        a.move_to("http://two.example:8080");
        a.move_to("https://one.example:8443");
        assert_eq!(a.target(), "https://one.example:8443");

        a.move_to("https://two.example:8443");
        assert_eq!(a.target(), "https://two.example:8443");
        a.failed("https://two.example:8443");
        a.failed("https://two.example:8443");
        assert_eq!(a.target(), "https://two.example:8443");
        a.failed("https://two.example:8443");
        assert_eq!(a.target(), "https://one.example:8443", "given up");

        a.move_to("https://three.example:8443");
        a.welcomed("https://three.example:8443");
        assert_eq!(a.target(), "https://three.example:8443");
        let saved = Credentials::load(dir.path()).unwrap();
        assert_eq!(saved.server, "https://three.example:8443");
        assert_eq!(saved.node_token, "t");
        let mode = std::fs::metadata(Credentials::path(dir.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );

        // Without a pinned CA the node token would go to whoever answers: no move.
        let plain = tempfile::tempdir().unwrap();
        let a = pinned("http://one.internal:8080", plain.path(), None);
        a.move_to("https://two.example:8443");
        a.move_to("http://two.internal:8080");
        assert_eq!(a.target(), "http://one.internal:8080");
    }
}
