//! `lattice-agent run`: hold one outbound stream to the control plane, forever.
//! Reconnects with exponential backoff and full jitter; never exits because the
//! server is down. Carries heartbeats, facts, metrics, logs, task results and the
//! proxy streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lattice_proto::agent::v1 as pb;
use lattice_proto::agent::v1::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, Credentials};
use crate::{proxy, tasks};

/// The agent's version, reported with its facts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What outlives one connection.
pub struct Agent {
    pub creds: Credentials,
    pub config: AgentConfig,
    /// Tasks running now: id → (epoch, cancel).
    pub running: Mutex<HashMap<String, (i64, CancellationToken)>>,
    /// Results the server has not acknowledged (sent again after a reconnect).
    pub unacked: Mutex<Vec<pb::TaskResult>>,
    /// Where messages go now (None between connections).
    pub out: Mutex<Option<mpsc::Sender<pb::AgentMessage>>>,
}

impl Agent {
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

/// Host facts in protocol form.
pub fn facts() -> pb::HostFacts {
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
        let pause = Duration::from_millis(rand::random_range(cap / 2..=cap));
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
    let channel = crate::tls::channel(&agent.creds.server, agent.creds.ca_sha256.as_deref())?;
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
    let hello = pb::Hello {
        agent_version: VERSION.into(),
        facts: Some(tokio::task::spawn_blocking(facts).await?),
        capabilities: agent.config.capabilities.clone(),
        proxy_ports: agent.config.proxy_ports.clone(),
        running,
        features: vec![proxy::INLINE_BODY.into()],
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
    let mut inbound = client.session(req).await?.into_inner();
    let welcome = match inbound.message().await? {
        Some(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Welcome(w)),
        }) => w,
        _ => anyhow::bail!("the server did not welcome this agent"),
    };
    tracing::info!(node = %welcome.node_id, "connected");
    *agent.out.lock().expect("out lock") = Some(tx.clone());
    let resend: Vec<_> = agent.unacked.lock().expect("unacked lock").clone();
    for r in resend {
        agent.send(pb::agent_message::Msg::Result(r)).await;
    }
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
                return Ok(format!("the server asked to reconnect: {}", r.reason));
            }
            Msg::Proxy(frame) => proxies.handle(frame),
            Msg::RefreshFacts(_) => {
                let f = tokio::task::spawn_blocking(facts).await?;
                agent.send(pb::agent_message::Msg::Facts(f)).await;
            }
            Msg::Welcome(_) | Msg::Heartbeat(_) => {}
        }
    }
}
