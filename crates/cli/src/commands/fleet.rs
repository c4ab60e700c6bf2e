//! `lattice get nodes|node`, `lattice nodes ...`, `lattice tasks ...`,
//! `lattice audit tail|verify` and `lattice proxy NODE PORT`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{Ctx, segment};
use crate::args::{AuditCommand, GetCommand, NodesCommand, TasksCommand};
use crate::output::{Table, format_ms};

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> String {
    let items: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn nodes_table(body: &Value) -> Table {
    let mut t = Table::new(&[
        "ID",
        "HOSTNAME",
        "STATUS",
        "LAST SEEN",
        "CAPABILITIES",
        "AGENT ALLOWS",
        "VERSION",
    ]);
    for n in body["nodes"].as_array().into_iter().flatten() {
        t.row(vec![
            s(&n["id"]),
            s(&n["hostname"]),
            match n["status_reason"].as_str() {
                Some(r) if n["status"] != "connected" => format!("{} ({r})", s(&n["status"])),
                _ => s(&n["status"]),
            },
            n["last_seen_ms"]
                .as_i64()
                .filter(|m| *m > 0)
                .map_or("-".into(), format_ms),
            list(&n["capabilities"]),
            list(&n["agent_capabilities"]),
            s(&n["agent_version"]),
        ]);
    }
    t
}

fn print(ctx: &Ctx, body: &Value, table: impl FnOnce(&Value) -> Table) -> anyhow::Result<()> {
    match ctx.format {
        crate::output::Format::Json => crate::output::print_json(body),
        crate::output::Format::Table => crate::output::print_table(&table(body)),
    }
}

/// `lattice get ...`.
pub async fn get(ctx: &Ctx, cmd: GetCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        GetCommand::Nodes => {
            let body = api.get("/api/v1/nodes").await?;
            print(ctx, &body, nodes_table)
        }
        GetCommand::Node { id } => {
            let n = api.get(&format!("/api/v1/nodes/{}", segment(&id)?)).await?;
            print(ctx, &n, |n| {
                let mut t = Table::new(&["FIELD", "VALUE"]);
                let f = &n["facts"];
                for (k, v) in [
                    ("id", s(&n["id"])),
                    ("hostname", s(&n["hostname"])),
                    ("status", s(&n["status"])),
                    ("status reason", s(&n["status_reason"])),
                    ("os", s(&f["os"])),
                    ("kernel", s(&f["kernel"])),
                    ("arch", s(&f["arch"])),
                    ("cpu", format!("{} x {}", s(&f["cpus"]), s(&f["cpu_model"]))),
                    ("memory bytes", s(&f["memory_bytes"])),
                    ("addresses", list(&f["addresses"])),
                    ("capabilities (server)", list(&n["capabilities"])),
                    ("capabilities (agent)", list(&n["agent_capabilities"])),
                    ("proxy ports", list(&n["proxy_ports"])),
                    ("labels", n["labels"].to_string()),
                    ("agent version", s(&n["agent_version"])),
                ] {
                    t.row(vec![k.into(), v]);
                }
                t
            })
        }
    }
}

/// `lattice nodes ...`.
pub async fn nodes(ctx: &Ctx, cmd: NodesCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        NodesCommand::JoinToken {
            labels,
            expires_in_s,
        } => {
            let mut map = serde_json::Map::new();
            for l in labels {
                let Some((k, v)) = l.split_once('=') else {
                    bail!("--label {l:?}: expected key=value");
                };
                map.insert(k.into(), Value::String(v.into()));
            }
            let body = api
                .post(
                    "/api/v1/nodes/join-tokens",
                    Some(&json!({"labels": map, "expires_in_s": expires_in_s})),
                )
                .await?;
            print(ctx, &body, |b| {
                let mut t = Table::new(&["TOKEN (shown once)", "EXPIRES"]);
                t.row(vec![
                    s(&b["token"]),
                    b["expires_at_ms"].as_i64().map_or("-".into(), format_ms),
                ]);
                eprintln!("on the node: {}", s(&b["install_command"]));
                t
            })
        }
        NodesCommand::Enable { id, capability } | NodesCommand::Disable { id, capability }
            if capability.is_empty() =>
        {
            bail!("node {id}: name a capability")
        }
        NodesCommand::Enable { id, capability } => {
            set_capability(ctx, &api, &id, &capability, true).await
        }
        NodesCommand::Disable { id, capability } => {
            set_capability(ctx, &api, &id, &capability, false).await
        }
        NodesCommand::Delete { id } => {
            api.delete(&format!("/api/v1/nodes/{}", segment(&id)?))
                .await?;
            eprintln!("node {id} deleted; its credential no longer works");
            Ok(())
        }
        NodesCommand::Reconnect { id, url, reason } => {
            api.post(
                &format!("/api/v1/nodes/{}/reconnect", segment(&id)?),
                Some(&json!({"url": url, "reason": reason})),
            )
            .await?;
            if url.is_empty() {
                eprintln!("node {id}: asked its agent to reconnect");
            } else {
                eprintln!("node {id}: asked its agent to move to {url}");
            }
            Ok(())
        }
    }
}

async fn set_capability(
    ctx: &Ctx,
    api: &crate::client::Api,
    id: &str,
    cap: &str,
    on: bool,
) -> anyhow::Result<()> {
    let path = format!("/api/v1/nodes/{}", segment(id)?);
    let n = api.get(&path).await?;
    let mut caps: Vec<String> = n["capabilities"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    caps.retain(|c| c != cap);
    if on {
        caps.push(cap.to_owned());
    }
    let body = api
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&json!({"capabilities": caps})),
        )
        .await?
        .body;
    print(ctx, &json!({"nodes": [body]}), nodes_table)
}

fn tasks_table(tasks: &[Value]) -> Table {
    let mut t = Table::new(&[
        "ID", "NODE", "KIND", "STATE", "ATTEMPTS", "CREATED", "ERROR",
    ]);
    for x in tasks {
        t.row(vec![
            s(&x["id"]),
            s(&x["node"]),
            s(&x["kind"]),
            s(&x["state"]),
            format!("{}/{}", s(&x["attempts"]), s(&x["max_attempts"])),
            x["created_at_ms"].as_i64().map_or("-".into(), format_ms),
            x["error"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    t
}

/// `lattice tasks ...`.
pub async fn tasks(ctx: &Ctx, cmd: TasksCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        TasksCommand::Create {
            node,
            kind,
            payload,
            idempotency_key,
        } => {
            let payload: Value = serde_json::from_str(&payload).context("--payload: not JSON")?;
            let body = api
                .post(
                    "/api/v1/tasks",
                    Some(&json!({"node": node, "kind": kind, "payload": payload, "idempotency_key": idempotency_key})),
                )
                .await?;
            print(ctx, &body, |b| tasks_table(std::slice::from_ref(b)))
        }
        TasksCommand::List { node, state } => {
            let body = api
                .get(&format!("/api/v1/tasks?node={}&state={}", node, state))
                .await?;
            print(ctx, &body, |b| {
                tasks_table(b["tasks"].as_array().map_or(&[], Vec::as_slice))
            })
        }
        TasksCommand::Get { id } => {
            let body = api.get(&format!("/api/v1/tasks/{}", segment(&id)?)).await?;
            match ctx.format {
                crate::output::Format::Json => crate::output::print_json(&body),
                crate::output::Format::Table => {
                    crate::output::print_table(&tasks_table(std::slice::from_ref(&body)))?;
                    if let Some(r) = body.get("result") {
                        if let Some(out) = r["stdout"].as_str() {
                            crate::output::print_stdout(out)?;
                        } else {
                            crate::output::print_json(r)?;
                        }
                    }
                    Ok(())
                }
            }
        }
        TasksCommand::Cancel { id } => {
            let body = api
                .post(&format!("/api/v1/tasks/{}/cancel", segment(&id)?), None)
                .await?;
            print(ctx, &body, |b| tasks_table(std::slice::from_ref(b)))
        }
    }
}

/// `lattice audit ...`.
pub async fn audit(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    match cmd {
        AuditCommand::Tail { mut after, follow } => loop {
            let page = api
                .get(&format!("/api/v1/audit?after={after}&limit=1000"))
                .await?;
            let entries = page["entries"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                let line = match ctx.format {
                    crate::output::Format::Json => e.to_string(),
                    crate::output::Format::Table => format!(
                        "{:>6} {} {} {} {} {} {}",
                        s(&e["seq"]),
                        e["at_ms"].as_i64().map_or("-".into(), format_ms),
                        s(&e["actor"]),
                        s(&e["action"]),
                        s(&e["target"]),
                        s(&e["outcome"]),
                        s(&e["client_ip"]),
                    ),
                };
                crate::output::print_stdout(&format!("{line}\n"))?;
            }
            after = page["next_after"].as_i64().unwrap_or(after);
            if !follow {
                return Ok(());
            }
            if entries.is_empty() {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        },
        AuditCommand::Plan { id } => {
            let plan = api
                .get(&format!("/api/v1/plans/{}", super::segment(&id)?))
                .await?;
            let mut targets = vec![id.clone()];
            for t in plan["targets"].as_array().into_iter().flatten() {
                if let Some(task) = t["task_id"].as_str() {
                    targets.push(task.to_owned());
                }
            }
            let mut entries = Vec::new();
            for target in &targets {
                let page = api
                    .get(&format!(
                        "/api/v1/audit?limit=1000&target={}",
                        super::encode_component(target)
                    ))
                    .await?;
                entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
            }
            entries.sort_by_key(|e| e["seq"].as_i64().unwrap_or(0));
            match ctx.format {
                crate::output::Format::Json => {
                    crate::output::print_json(&serde_json::json!({ "entries": entries }))?;
                }
                crate::output::Format::Table => {
                    let mut t = crate::output::Table::new(&[
                        "SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME", "DETAIL",
                    ]);
                    for e in &entries {
                        t.row(vec![
                            s(&e["seq"]),
                            e["at_ms"].as_i64().map_or("-".into(), format_ms),
                            s(&e["actor"]),
                            s(&e["action"]),
                            s(&e["target"]),
                            s(&e["outcome"]),
                            e["detail"].to_string(),
                        ]);
                    }
                    crate::output::print_table(&t)?;
                }
            }
            Ok(())
        }
        AuditCommand::Verify => {
            let v = api.get("/api/v1/audit/verify").await?;
            if v["ok"] == true {
                crate::output::print_stdout(&format!(
                    "audit chain intact: {} entries, head {}\n",
                    s(&v["entries"]),
                    s(&v["head_hash"])
                ))?;
                Ok(())
            } else {
                bail!(
                    "audit chain broken at entry {}: {} ({} entries before it verify)",
                    s(&v["broken_seq"]),
                    s(&v["reason"]),
                    s(&v["entries"])
                )
            }
        }
    }
}

/// `lattice proxy NODE PORT`: a local listener; each connection to it is one TCP
/// connection to `127.0.0.1:PORT` on the node, carried through the node's tunnel
/// (like `kubectl port-forward`: any protocol, bytes both ways).
pub async fn proxy(ctx: &Ctx, node: &str, port: u16, listen: &str) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let token = api
        .bearer()
        .context("lattice proxy needs a token (LATTICE_TOKEN or lattice login)")?
        .to_owned();
    // Fail at once, not on the first connection, when the node cannot be reached
    // on that port.
    let node_path = format!("/api/v1/nodes/{}", segment(node)?);
    let n = api.get(&node_path).await?;
    let allowed = n["proxy_ports"]
        .as_array()
        .is_some_and(|ports| ports.iter().any(|p| p.as_u64() == Some(u64::from(port))));
    if !allowed {
        bail!(
            "node {node}'s agent does not allow port {port} (its proxy_ports: {}); add it to the agent's config",
            list(&n["proxy_ports"])
        );
    }
    if n["status"] != "connected" {
        eprintln!(
            "warning: node {node} is {}; connections fail until its agent reconnects",
            s(&n["status"])
        );
    }
    let http = api.upgrade_client()?;
    let url = format!("{}{node_path}/portforward/{port}", api.server());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let local = listener.local_addr()?;
    eprintln!("forwarding {local} -> node {node} port {port} (Ctrl-C to stop)");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            a = listener.accept() => a?,
        };
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(e) = forward(&http, &url, &token, tcp).await {
                eprintln!("connection from {peer}: {e:#}");
            }
        });
    }
}

/// Carry one local connection: upgrade a request to the port forward route, then
/// copy bytes both ways until both sides are done.
async fn forward(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    mut local: tokio::net::TcpStream,
) -> anyhow::Result<()> {
    let _ = local.set_nodelay(true);
    let resp = http
        .get(url)
        .bearer_auth(token)
        .header(reqwest::header::CONNECTION, "upgrade")
        .header(reqwest::header::UPGRADE, "connect-tcp")
        .send()
        .await
        .context("cannot reach the server")?;
    let status = resp.status();
    if status != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        let e = crate::client::answer_error(status, &headers, &body);
        bail!("port forward refused: {e}");
    }
    let mut remote = resp.upgrade().await.context("port forward upgrade")?;
    // Either side going away ends the connection; that is not an error to report.
    // But a forward that broke (the node's side reset, the server went away) must
    // not look complete to the local program: it gets a reset, not a clean end.
    if tokio::io::copy_bidirectional(&mut local, &mut remote)
        .await
        .is_err()
    {
        let _ = local.set_zero_linger();
    }
    Ok(())
}
