//! `fleet-sim`: simulated node agents for the benchmarks in `loadtest/`. Each one
//! enrolls with its own join token and holds its own TLS connection and agent
//! stream (the same connector as `lattice-agent`), heartbeats at the interval the
//! server asks for, and answers every task at once.
//!
//! - `fleet-sim connect --count 1000 --hold-s 60`: connect, report, hold, exit.
//! - `fleet-sim tasks --count 100 --tasks 20000 --concurrency 64`: enqueue `exec`
//!   tasks over REST while the simulated agents run them; reports tasks/s (enqueue
//!   of the first to the last result recorded) and enqueue-to-start percentiles.
//! - `fleet-sim rollout --count 100 --rounds 5`: reviewed firewall changes over the
//!   simulated agents (which report their `firewall` artifact and apply plans at
//!   once): per round, a new intent version, the plan, the approval, and the times
//!   from approval to each node's result and to the plan's `applied`.

#[path = "../../../crates/agent/src/tls.rs"]
#[allow(dead_code)]
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use lattice_proto::agent::v1 as pb;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Cli {
    /// Gateway URL (https://localhost:8088).
    #[arg(long)]
    server: String,
    /// CA certificate (PEM) of the gateway, for the REST calls.
    #[arg(long)]
    ca_file: std::path::PathBuf,
    /// Operator token with `*`.
    #[arg(long, env = "LATTICE_TOKEN")]
    token: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Connect agents and hold them.
    Connect {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 60)]
        hold_s: u64,
    },
    /// Reviewed firewall changes rolled out over simulated agents.
    Rollout {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 5)]
        rounds: u64,
    },
    /// Run tasks through agents.
    Tasks {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 20_000)]
        tasks: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

struct Shared {
    /// Task sequence number → when its enqueue was sent.
    sent: Mutex<HashMap<u64, Instant>>,
    /// Enqueue-to-start latencies, µs.
    starts: Mutex<Vec<u64>>,
    acked: AtomicU64,
    connected: AtomicU64,
    /// When each `firewall.apply` result was sent.
    applied: Mutex<Vec<Instant>>,
}

fn rest(ca_file: &std::path::Path) -> anyhow::Result<reqwest::Client> {
    let pem = std::fs::read(ca_file)?;
    Ok(reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem)?])
        .pool_max_idle_per_host(256)
        .build()?)
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let resp = http.post(url).bearer_auth(token).json(&body).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "HTTP {status}: {v}");
    Ok(v)
}

/// Enroll `count` nodes; returns (node id, node token, ca pin).
async fn enroll(
    cli: &Cli,
    http: &reqwest::Client,
    count: usize,
) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    let mut out = Vec::with_capacity(count);
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..count {
        let (http, server, token, sem) = (
            http.clone(),
            cli.server.clone(),
            cli.token.clone(),
            sem.clone(),
        );
        set.spawn(async move {
            let _p = sem.acquire().await?;
            let t = post(
                &http,
                format!("{server}/api/v1/nodes/join-tokens"),
                &token,
                json!({"labels": {"sim": "1"}}),
            )
            .await?;
            let join = lattice_proto::join_token::JoinToken::parse(
                t["token"].as_str().unwrap_or_default(),
            )
            .map_err(anyhow::Error::msg)?;
            let channel = tls::channel(&server, join.ca_sha256.as_deref())?;
            let resp = pb::agent_service_client::AgentServiceClient::new(channel)
                .enroll(pb::EnrollRequest {
                    join_secret: join.secret,
                    facts: Some(pb::HostFacts {
                        hostname: format!("sim-{i:05}"),
                        agent_version: "sim".into(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            anyhow::Ok((resp.node_id, resp.node_token, join.ca_sha256))
        });
    }
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

/// One simulated agent, until the process ends.
async fn agent(
    server: String,
    node_token: String,
    pin: Option<String>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let channel = tls::channel(&server, pin.as_deref())?;
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AgentMessage>(64);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: "sim".into(),
            facts: Some(facts(None)),
            capabilities: vec!["exec".into(), "firewall".into()],
            ..Default::default()
        })),
    })
    .await?;
    // The firewall table this simulated node has (None: no table).
    let mut table: Option<String> = None;
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {node_token}").parse()?);
    let mut inbound = client.session(req).await?.into_inner();
    let Some(pb::ServerMessage {
        msg: Some(pb::server_message::Msg::Welcome(w)),
    }) = inbound.message().await?
    else {
        anyhow::bail!("no welcome");
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let beat = tx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(
            w.heartbeat_interval_ms.max(100) as u64,
        ));
        loop {
            every.tick().await;
            let hb = pb::Heartbeat {
                sent_at_ms: lattice_core::time::now_ms(),
                running: Vec::new(),
            };
            if beat
                .send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Heartbeat(hb)),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    while let Some(msg) = inbound.message().await? {
        match msg.msg {
            Some(pb::server_message::Msg::Task(t)) if t.kind == "firewall.apply" => {
                let p: Value = serde_json::from_str(&t.payload_json).unwrap_or(Value::Null);
                let have = table.as_deref().map_or_else(|| "none".to_owned(), hash);
                let ok = p["base_hash"].as_str() == Some(have.as_str());
                if ok {
                    table = p["artifact"].as_str().map(str::to_owned);
                    // The server sees the new state before the result.
                    tx.send(pb::AgentMessage {
                        msg: Some(pb::agent_message::Msg::Facts(facts(table.as_deref()))),
                    })
                    .await?;
                }
                let result = pb::TaskResult {
                    task_id: t.task_id,
                    epoch: t.epoch,
                    ok,
                    result_json: json!({"before": have}).to_string(),
                    error_code: if ok {
                        String::new()
                    } else {
                        "plan_stale".into()
                    },
                    error: if ok {
                        String::new()
                    } else {
                        "base mismatch".into()
                    },
                };
                shared.applied.lock().expect("applied").push(Instant::now());
                tx.send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Result(result)),
                })
                .await?;
            }
            Some(pb::server_message::Msg::Task(t)) => {
                let seq = serde_json::from_str::<Value>(&t.payload_json)
                    .ok()
                    .and_then(|p| p["argv"][1].as_str().and_then(|s| s.parse::<u64>().ok()));
                if let Some(seq) = seq
                    && let Some(t0) = shared.sent.lock().expect("sent").get(&seq).copied()
                {
                    shared
                        .starts
                        .lock()
                        .expect("starts")
                        .push(t0.elapsed().as_micros() as u64);
                }
                let result = pb::TaskResult {
                    task_id: t.task_id,
                    epoch: t.epoch,
                    ok: true,
                    result_json: r#"{"exit_code":0}"#.into(),
                    ..Default::default()
                };
                tx.send(pb::AgentMessage {
                    msg: Some(pb::agent_message::Msg::Result(result)),
                })
                .await?;
            }
            Some(pb::server_message::Msg::Ack(_)) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(())
}

fn hash(content: &str) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(content.as_bytes()))
    )
}

/// Host facts reporting `table` as the firewall artifact.
fn facts(table: Option<&str>) -> pb::HostFacts {
    pb::HostFacts {
        hostname: "sim".into(),
        arch: "x86_64".into(),
        artifacts: vec![pb::ManagedArtifact {
            name: "firewall".into(),
            hash: table.map_or_else(|| "none".to_owned(), hash),
            content: table.unwrap_or_default().to_owned(),
            error: String::new(),
        }],
        ..Default::default()
    }
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "HTTP {status}: {v}");
    Ok(v)
}

/// Reviewed firewall changes over `count` simulated agents, `rounds` times.
async fn rollout(
    cli: &Cli,
    http: &reqwest::Client,
    count: usize,
    rounds: u64,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let ids = connect_all(cli, http, count, shared).await?;
    let (server, token) = (&cli.server, &cli.token);
    for id in &ids {
        send(
            http,
            reqwest::Method::PATCH,
            format!("{server}/api/v1/nodes/{id}"),
            token,
            Some(json!({"capabilities": ["firewall"]})),
        )
        .await?;
    }
    // Four eyes is off with one admin; the token's user approves its own plans.
    let (mut render, mut to_results, mut to_applied) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let intent = json!({"name": "sim-fw", "kind": "firewall", "selector": {"labels": {"sim": "1"}},
            "spec": {"default": "drop", "rules": [
                {"action": "accept", "protocol": "tcp", "ports": format!("22,{}", 8000 + round), "from": "10.0.0.0/8", "comment": "ssh"},
                {"action": "accept", "protocol": "udp", "ports": "51820"}]}});
        send(
            http,
            reqwest::Method::PUT,
            format!("{server}/api/v1/intents/sim-fw"),
            token,
            Some(intent),
        )
        .await?;
        // The nodes report the previous round's table: wait until the plan's
        // base is it everywhere (no drift, nothing stale).
        let t0 = Instant::now();
        let plan = send(
            http,
            reqwest::Method::POST,
            format!("{server}/api/v1/plans"),
            token,
            Some(json!({"intent": "sim-fw"})),
        )
        .await?;
        render.push(t0.elapsed().as_micros() as u64);
        let id = plan["id"].as_str().unwrap_or_default().to_owned();
        shared.applied.lock().expect("applied").clear();
        let approved = Instant::now();
        send(
            http,
            reqwest::Method::POST,
            format!("{server}/api/v1/plans/{id}/approve"),
            token,
            Some(json!({"hash": plan["hash"]})),
        )
        .await?;
        // Watch the plan without advancing it faster than the server does by
        // itself (GET advances the rollout, so poll the list, which does not).
        let deadline = Instant::now() + Duration::from_secs(120);
        let state = loop {
            let list = send(
                http,
                reqwest::Method::GET,
                format!("{server}/api/v1/plans?limit=1"),
                token,
                None,
            )
            .await?;
            let s = list["plans"][0]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if s != "applying" {
                break s;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "round {round}: not applied within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let applied_after = approved.elapsed();
        anyhow::ensure!(state == "applied", "round {round}: the plan ended {state}");
        let results: Vec<u64> = shared
            .applied
            .lock()
            .expect("applied")
            .iter()
            .map(|t| t.duration_since(approved).as_micros() as u64)
            .collect();
        anyhow::ensure!(
            results.len() == count,
            "round {round}: {} results of {count}",
            results.len()
        );
        let last = results.iter().copied().max().unwrap_or(0);
        println!(
            "round {round}: plan rendered in {:.1} ms; approval to the last node's result {:.1} ms, to the plan applied {:.1} ms",
            render[render.len() - 1] as f64 / 1000.0,
            last as f64 / 1000.0,
            applied_after.as_secs_f64() * 1000.0
        );
        to_results.extend(results);
        to_applied.push(applied_after.as_micros() as u64);
        // Let the nodes' reports settle before the next round's plan.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    to_results.sort_unstable();
    to_applied.sort_unstable();
    render.sort_unstable();
    println!(
        "rollout over {count} agents, {rounds} rounds: approval to a node's result p50 {:.1} ms p99 {:.1} ms max {:.1} ms; approval to applied median {:.1} ms max {:.1} ms; plan render median {:.1} ms",
        percentile(&to_results, 0.5),
        percentile(&to_results, 0.99),
        percentile(&to_results, 1.0),
        percentile(&to_applied, 0.5),
        percentile(&to_applied, 1.0),
        percentile(&render, 0.5),
    );
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn connect_all(
    cli: &Cli,
    http: &reqwest::Client,
    count: usize,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let nodes = enroll(cli, http, count).await?;
    eprintln!(
        "enrolled {count} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ids = nodes.iter().map(|n| n.0.clone()).collect();
    for (_, token, pin) in nodes {
        let (server, shared) = (cli.server.clone(), shared.clone());
        tokio::spawn(async move {
            if let Err(e) = agent(server, token, pin, shared).await {
                eprintln!("simulated agent ended: {e:#}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (shared.connected.load(Ordering::Relaxed) as usize) < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {count} agents connected",
            shared.connected.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("connected {count} agents");
    Ok(ids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let http = rest(&cli.ca_file)?;
    let shared = Arc::new(Shared {
        sent: Mutex::new(HashMap::new()),
        starts: Mutex::new(Vec::new()),
        acked: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        applied: Mutex::new(Vec::new()),
    });
    match cli.cmd {
        Cmd::Connect { count, hold_s } => {
            connect_all(&cli, &http, count, &shared).await?;
            tokio::time::sleep(Duration::from_secs(hold_s)).await;
        }
        Cmd::Rollout { count, rounds } => rollout(&cli, &http, count, rounds, &shared).await?,
        Cmd::Tasks {
            count,
            tasks,
            concurrency,
        } => {
            let ids = connect_all(&cli, &http, count, &shared).await?;
            for id in &ids {
                let resp = http
                    .patch(format!("{}/api/v1/nodes/{id}", cli.server))
                    .bearer_auth(&cli.token)
                    .json(&json!({"capabilities": ["exec"]}))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status().is_success(), "enable exec: {}", resp.status());
            }
            let next = Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..concurrency {
                let (http, server, token, ids, next, shared) = (
                    http.clone(),
                    cli.server.clone(),
                    cli.token.clone(),
                    ids.clone(),
                    next.clone(),
                    shared.clone(),
                );
                set.spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= tasks {
                            return anyhow::Ok(());
                        }
                        let node = &ids[(seq as usize) % ids.len()];
                        shared.sent.lock().expect("sent").insert(seq, Instant::now());
                        post(&http, format!("{server}/api/v1/tasks"), &token,
                            json!({"node": node, "kind": "exec", "payload": {"argv": ["bench", seq.to_string()]}})).await?;
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            let enqueued = started.elapsed();
            let deadline = Instant::now() + Duration::from_secs(300);
            while shared.acked.load(Ordering::Relaxed) < tasks && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let total = started.elapsed();
            let done = shared.acked.load(Ordering::Relaxed);
            let mut starts = shared.starts.lock().expect("starts").clone();
            starts.sort_unstable();
            println!(
                "tasks: {done}/{tasks} recorded in {:.2} s = {:.0} tasks/s (enqueue alone {:.2} s = {:.0}/s); enqueue-to-start p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                total.as_secs_f64(),
                done as f64 / total.as_secs_f64(),
                enqueued.as_secs_f64(),
                tasks as f64 / enqueued.as_secs_f64(),
                percentile(&starts, 0.5),
                percentile(&starts, 0.99),
                percentile(&starts, 1.0),
            );
        }
    }
    Ok(())
}
