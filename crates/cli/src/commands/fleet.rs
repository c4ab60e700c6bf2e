//! `lattice get nodes|node`, `lattice nodes ...`, `lattice tasks ...`,
//! `lattice audit tail|verify` and `lattice proxy NODE PORT`.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use http_body_util::BodyExt as _;
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

/// `lattice proxy NODE PORT`: a local listener whose HTTP requests are carried
/// through the node's tunnel to `127.0.0.1:PORT` on the node (streamed both ways).
pub async fn proxy(ctx: &Ctx, node: &str, port: u16, listen: &str) -> anyhow::Result<()> {
    let api = ctx.authed()?;
    let token = api
        .bearer()
        .context("lattice proxy needs a token (LATTICE_TOKEN or lattice login)")?
        .to_owned();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let local = listener.local_addr()?;
    eprintln!("forwarding http://{local} -> node {node} port {port} (Ctrl-C to stop)");
    let base = format!(
        "{}/api/v1/nodes/{}/proxy/{port}",
        api.server(),
        segment(node)?
    );
    let http = api.http().clone();
    loop {
        let (tcp, _) = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            a = listener.accept() => a?,
        };
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (http, base, token) = (http.clone(), base.clone(), token.clone());
                    async move { Ok::<_, Infallible>(forward(&http, &base, &token, req).await) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

type Out = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

async fn forward(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Out> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let (parts, body) = req.into_parts();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let mut out = http
        .request(parts.method.clone(), format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(24 * 3600))
        .body(body);
    for (n, v) in &parts.headers {
        if !matches!(
            n.as_str(),
            "host" | "authorization" | "connection" | "content-length" | "transfer-encoding"
        ) {
            out = out.header(n, v);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let mut builder = hyper::Response::builder().status(resp.status());
            for (n, v) in resp.headers() {
                if !matches!(
                    n.as_str(),
                    "connection" | "transfer-encoding" | "content-length"
                ) {
                    builder = builder.header(n, v);
                }
            }
            let stream = resp
                .bytes_stream()
                .map_ok(hyper::body::Frame::data)
                .map_err(std::io::Error::other);
            builder
                .body(http_body_util::StreamBody::new(stream).boxed())
                .unwrap_or_else(|_| bad_gateway("bad response head"))
        }
        Err(e) => bad_gateway(&format!("tunnel request failed: {e}")),
    }
}

fn bad_gateway(msg: &str) -> hyper::Response<Out> {
    let body = http_body_util::Full::new(bytes::Bytes::from(format!("{msg}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut r = hyper::Response::new(body);
    *r.status_mut() = hyper::StatusCode::BAD_GATEWAY;
    r
}
