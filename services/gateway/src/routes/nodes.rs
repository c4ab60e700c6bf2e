//! `/api/v1/nodes`: join tokens, the node registry, metrics and logs, the fleet's
//! Prometheus exposition, the proxy and port forwards into a node, and the relay
//! that carries agent streams (`lattice.agent.v1`) to the tunnel service.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::{HeaderName, HeaderValue, StatusCode};
use lattice_proto::agent::v1 as agent;
use lattice_proto::tunnel::v1 as pb;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::extract::{Path, Query};
use crate::json::ApiJson;

/// The tunnel service, or 503 naming the missing setting.
pub fn client(state: &AppState) -> Result<TunnelServiceClient<crate::InternalService>, ApiError> {
    state.tunnel.clone().ok_or_else(|| {
        ApiError::new(
            lattice_core::ErrorCode::Unavailable,
            "the tunnel service is not configured on this gateway (run it here or set tunnel.url)",
        )
    })
}

/// The URL clients reach this gateway at: `gateway.public_url`, else the scheme
/// and host of this request.
pub fn public_base(state: &AppState, uri: &http::Uri, headers: &http::HeaderMap) -> String {
    match &state.cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            // HTTP/2 carries the host in `:authority` (the URI), HTTP/1.1 in `Host`.
            let host = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "localhost".into());
            let scheme = if state.ca_sha256.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    }
}

/// New join token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Labels the enrolled node gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Lifetime (default 3600, at least 60).
    #[serde(default)]
    pub expires_in_s: i64,
}

/// A join token (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct JoinToken {
    pub id: String,
    /// Carries the server URL and the CA fingerprint the agent pins.
    pub token: String,
    pub expires_at_ms: i64,
    pub labels: BTreeMap<String, String>,
    /// Ready to paste on the node.
    pub install_command: String,
}

/// Create a single-use join token (`nodes:write`).
#[utoipa::path(post, path = "/api/v1/nodes/join-tokens", tag = "nodes", request_body = CreateJoinToken,
    responses((status = 201, body = JoinToken),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, or invalid labels or expires_in_s"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:write`, or no `X-CSRF-Token`")))]
pub async fn create_join_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    uri: http::Uri,
    headers: http::HeaderMap,
    ApiJson(body): ApiJson<CreateJoinToken>,
) -> Result<(StatusCode, Json<JoinToken>), ApiError> {
    let server_url = public_base(&state, &uri, &headers);
    let t = client(&state)?
        .create_join_token(caller.request(
            &state,
            pb::CreateJoinTokenRequest {
                labels: body.labels.into_iter().collect(),
                expires_in_s: body.expires_in_s,
                server_url,
                ca_sha256: state.ca_sha256.clone().unwrap_or_default(),
            },
        ))
        .await?
        .into_inner();
    let install_command = format!(
        "sudo lattice-agent enroll --token '{}' && sudo systemctl enable --now lattice-agent",
        t.token
    );
    Ok((
        StatusCode::CREATED,
        Json(JoinToken {
            id: t.id,
            token: t.token,
            expires_at_ms: t.expires_at_ms,
            labels: t.labels.into_iter().collect(),
            install_command,
        }),
    ))
}

/// A node.
#[derive(Debug, Serialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Enabled on the server.
    pub capabilities: Vec<String>,
    /// Enabled in the agent's own config.
    pub agent_capabilities: Vec<String>,
    /// Local ports the agent lets the proxy reach.
    pub proxy_ports: Vec<u32>,
    /// connected | disconnected | never_connected
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub last_seen_ms: i64,
    pub connected_since_ms: i64,
    pub enrolled_at_ms: i64,
    pub agent_version: String,
    /// Host facts (null before the agent sent any).
    #[schema(value_type = Option<Object>)]
    pub facts: serde_json::Value,
    /// `GET /api/v1/nodes/{id}` only: what the agent reports of each artifact
    /// Lattice manages there (reviewed changes), as it finds it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<NodeArtifact>>,
}

/// Host facts as JSON.
pub fn facts_json(f: &agent::HostFacts) -> serde_json::Value {
    serde_json::json!({
        "hostname": f.hostname, "os": f.os, "kernel": f.kernel, "arch": f.arch,
        "cpu_model": f.cpu_model, "cpus": f.cpus, "memory_bytes": f.memory_bytes,
        "disks": f.disks.iter().map(|d| serde_json::json!({"mount": d.mount, "fs_type": d.fs_type,
            "total_bytes": d.total_bytes, "available_bytes": d.available_bytes})).collect::<Vec<_>>(),
        "addresses": f.addresses, "agent_version": f.agent_version, "boot_time_s": f.boot_time_s,
    })
}

/// An artifact Lattice manages on a node, as the agent reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeArtifact {
    /// `firewall`, `dns:<zone>`, `proxy`, `agent`.
    pub name: String,
    /// `sha256:<hex>` of the content, `none` when absent, empty when unreadable.
    pub hash: String,
    pub content: String,
    /// Why the agent could not read it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

fn node(n: pb::Node) -> Node {
    Node {
        artifacts: None,
        facts: n.facts.as_ref().map_or(serde_json::Value::Null, facts_json),
        id: n.id,
        hostname: n.hostname,
        labels: n.labels.into_iter().collect(),
        capabilities: n.capabilities,
        agent_capabilities: n.agent_capabilities,
        proxy_ports: n.proxy_ports,
        status: n.status,
        status_reason: (!n.status_reason.is_empty()).then_some(n.status_reason),
        last_seen_ms: n.last_seen_ms,
        connected_since_ms: n.connected_since_ms,
        enrolled_at_ms: n.enrolled_at_ms,
        agent_version: n.agent_version,
    }
}

/// Nodes of the org.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// List nodes (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    responses((status = 200, body = NodeList), (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`")))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<NodeList>, ApiError> {
    let r = client(&state)?
        .list_nodes(caller.request(&state, pb::ListNodesRequest {}))
        .await?
        .into_inner();
    Ok(Json(NodeList {
        nodes: r.nodes.into_iter().map(node).collect(),
    }))
}

/// One node (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 200, body = Node),
        (status = 400, body = crate::error::ErrorBody, description = "Not a node id"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org")))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let n = client(&state)?
        .get_node(caller.request(&state, pb::GetNodeRequest { id }))
        .await?
        .into_inner();
    let artifacts = n.facts.as_ref().map(|f| {
        f.artifacts
            .iter()
            .map(|a| NodeArtifact {
                name: a.name.clone(),
                hash: a.hash.clone(),
                content: a.content.clone(),
                error: a.error.clone(),
            })
            .collect()
    });
    Ok(Json(Node {
        artifacts,
        ..node(n)
    }))
}

/// Node changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchNode {
    /// Privileged capabilities enabled on the server side (`exec`).
    pub capabilities: Option<Vec<String>>,
    /// Replaces the labels.
    pub labels: Option<BTreeMap<String, String>>,
}

/// Change a node's capabilities or labels (`nodes:write`).
#[utoipa::path(patch, path = "/api/v1/nodes/{id}", tag = "nodes", request_body = PatchNode,
    responses((status = 200, body = Node),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, not a node id, an unknown capability or invalid labels"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org")))]
pub async fn patch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchNode>,
) -> Result<Json<Node>, ApiError> {
    let n = client(&state)?
        .update_node(caller.request(
            &state,
            pb::UpdateNodeRequest {
                id,
                set_capabilities: body.capabilities.is_some(),
                capabilities: body.capabilities.unwrap_or_default(),
                set_labels: body.labels.is_some(),
                labels: body.labels.unwrap_or_default().into_iter().collect(),
            },
        ))
        .await?
        .into_inner();
    Ok(Json(node(n)))
}

/// Where a node's agent should connect next.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconnectNode {
    /// Another server URL (`https://host[:port]`) for the agent to move to; it keeps
    /// its CA pin and credential, and keeps the URL once welcomed there. Omitted:
    /// reconnect to the same server.
    #[serde(default)]
    pub url: String,
    /// Why (shown in the agent's log and the audit log; at most 200 characters).
    #[serde(default)]
    pub reason: String,
}

/// Ask a connected node's agent to reconnect, optionally to another server URL
/// (`nodes:write`). `503` when the node is not connected.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/reconnect", tag = "nodes", request_body = ReconnectNode,
    responses((status = 202, body = Node),
        (status = 400, body = crate::error::ErrorBody, description = "Malformed JSON, not a node id, or an invalid url or reason"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org"),
        (status = 503, body = crate::error::ErrorBody, description = "The node is not connected, or the tunnel service is unreachable or not configured")))]
pub async fn reconnect(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<ApiJson<ReconnectNode>>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    // No body: the same server.
    let body = body.map(|ApiJson(b)| b).unwrap_or_default();
    let n = client(&state)?
        .reconnect_node(caller.request(
            &state,
            pb::ReconnectNodeRequest {
                id,
                url: body.url,
                reason: body.reason,
            },
        ))
        .await?
        .into_inner();
    Ok((StatusCode::ACCEPTED, Json(node(n))))
}

/// Forget a node and revoke its credential (`nodes:write`).
#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    responses((status = 204, description = "Forgotten"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a node id"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org")))]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    client(&state)?
        .delete_node(caller.request(&state, pb::GetNodeRequest { id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Time-window query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SinceQuery {
    /// Unix ms (default: everything kept).
    #[serde(default)]
    pub since: i64,
    /// At most this many.
    #[serde(default)]
    pub limit: i64,
    /// Logs: the unit or file.
    #[serde(default)]
    pub unit: String,
    /// Logs: a substring of the message.
    #[serde(default)]
    pub q: String,
}

/// Metric samples of a node (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/nodes/{id}/metrics", tag = "nodes", params(SinceQuery),
    responses((status = 200, body = Object),
        (status = 400, body = crate::error::ErrorBody, description = "Not a node id, or an unknown or invalid query parameter"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org")))]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = client(&state)?
        .node_metrics(caller.request(
            &state,
            pb::NodeMetricsRequest {
                id,
                since_ms: q.since,
                limit: q.limit,
            },
        ))
        .await?
        .into_inner();
    let samples: Vec<_> = r
        .samples
        .iter()
        .map(|s| {
            serde_json::json!({
                "at_ms": s.at_ms, "cpu_percent": s.cpu_percent, "load1": s.load1, "load5": s.load5, "load15": s.load15,
                "memory_total_bytes": s.memory_total_bytes, "memory_available_bytes": s.memory_available_bytes,
                "disks": s.disks.iter().map(|d| serde_json::json!({"mount": d.mount, "used_bytes": d.used_bytes, "total_bytes": d.total_bytes})).collect::<Vec<_>>(),
                "net": s.net.iter().map(|n| serde_json::json!({"interface": n.interface, "rx_bytes": n.rx_bytes, "tx_bytes": n.tx_bytes})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "samples": samples })))
}

/// Log lines of a node (`nodes:read`).
#[utoipa::path(get, path = "/api/v1/nodes/{id}/logs", tag = "nodes", params(SinceQuery),
    responses((status = 200, body = Object),
        (status = 400, body = crate::error::ErrorBody, description = "Not a node id, or an unknown or invalid query parameter (unit and q: at most 256 characters)"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org")))]
pub async fn logs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<SinceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = client(&state)?
        .node_logs(caller.request(
            &state,
            pb::NodeLogsRequest {
                id,
                since_ms: q.since,
                unit: q.unit,
                q: q.q,
                limit: q.limit,
            },
        ))
        .await?
        .into_inner();
    let entries: Vec<_> = r
        .entries
        .iter()
        .map(|e| serde_json::json!({"at_ms": e.at_ms, "unit": e.source, "priority": e.priority, "message": e.message}))
        .collect();
    Ok(Json(serde_json::json!({ "entries": entries })))
}

/// The fleet's latest metric values in Prometheus text format (`nodes:read`), for
/// a Prometheus `bearer_token` scrape.
#[utoipa::path(get, path = "/api/v1/fleet/metrics", tag = "nodes",
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:read`")))]
pub async fn fleet_metrics(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let r = client(&state)?
        .fleet_metrics(caller.request(&state, pb::FleetMetricsRequest {}))
        .await?
        .into_inner();
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        r.text,
    )
        .into_response())
}

/// A port on a node, from the path.
fn node_port(text: &str) -> Result<u32, ApiError> {
    text.parse()
        .ok()
        .filter(|p| (1..=65_535).contains(p))
        .ok_or_else(|| {
            ApiError::new(
                lattice_core::ErrorCode::BadRequest,
                "port: must be 1..65535",
            )
        })
}

/// Headers that belong to one hop, or carry Lattice credentials: never sent on.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "cookie"
            | "x-csrf-token"
            | "x-lattice-principal"
            | "x-lattice-client-ip"
            | "content-length"
    )
}

/// Largest request body carried inside the request head.
const INLINE_MAX: u64 = 64 * 1024;

/// The proxy route as the OpenAPI document shows it (the handler's path extractor
/// takes both the `{port}` and `{port}/{path}` forms, which utoipa cannot read).
#[utoipa::path(get, path = "/api/v1/nodes/{node}/proxy/{port}/{path}", tag = "nodes",
    params(("node" = String, Path, description = "Node id"), ("port" = u16, Path, description = "Port on the node (the agent must allow it)"),
        ("path" = String, Path, description = "Path on the node; any method, the query string and body pass through")),
    responses((status = 200, description = "The node's answer, streamed (any status the node gives)"),
        (status = 400, body = crate::error::ErrorBody, description = "Not a node id, or a port outside 1..65535"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:proxy`, or a port the node's agent does not allow"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org"),
        (status = 429, body = crate::error::ErrorBody, description = "The node has `tunnel.max_proxy_streams` streams open"),
        (status = 502, body = crate::error::ErrorBody, description = "The node's side failed (nothing listening, a reset, a bad answer)"),
        (status = 503, body = crate::error::ErrorBody, description = "The node is not connected, or the tunnel service is unreachable or not configured")))]
#[allow(dead_code)]
fn proxy_doc() {}

/// `ANY /api/v1/nodes/{node}/proxy/{port}/{*path}` (`nodes:proxy`, every method):
/// carried over the node agent's stream to `127.0.0.1:{port}/{path}` on the node.
/// The response streams; the client going away cancels it on the node.
pub async fn proxy(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, ApiError> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let node_id = get("node");
    let port = node_port(&get("port"))?;
    let path = get("path");
    let mut path_and_query = format!("/{path}");
    if let Some(q) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    // A body of known length travels with its Content-Length (0 for a GET), so the
    // node's service gets a plain request rather than a chunked one.
    let body_len = axum::body::HttpBody::size_hint(req.body()).exact();
    let (parts, body) = req.into_parts();
    let mut headers: Vec<agent::Header> = parts
        .headers
        .iter()
        .filter(|(n, _)| forwardable(n))
        .map(|(n, v)| agent::Header {
            name: n.as_str().to_owned(),
            value: bytes::Bytes::copy_from_slice(v.as_bytes()),
        })
        .collect();
    if let Some(len) = body_len {
        headers.push(agent::Header {
            name: "content-length".into(),
            value: bytes::Bytes::from(len.to_string()),
        });
    }
    let mut head = pb::ProxyRequestHead {
        node_id,
        port,
        method: parts.method.as_str().to_owned(),
        path_and_query,
        headers,
        forwarded: false,
        body: bytes::Bytes::new(),
        end: false,
        accept_inline_body: true,
        tcp: false,
    };
    // A small body of known length (none, for a GET) travels inside the head: one
    // message for the whole request. Anything else streams.
    let outbound = if body_len.is_some_and(|n| n <= INLINE_MAX) {
        head.body = axum::body::to_bytes(body, INLINE_MAX as usize)
            .await
            .map_err(|e| {
                ApiError::new(
                    lattice_core::ErrorCode::BadRequest,
                    format!("request body: {e}"),
                )
            })?;
        head.end = true;
        futures::stream::once(std::future::ready(head_chunk(head))).left_stream()
    } else {
        // A body that breaks off (the client went away) resets the stream rather
        // than ending it: the node must not take a truncated body as whole.
        let body = body
            .into_data_stream()
            .scan(false, |broken, r| {
                if *broken {
                    return std::future::ready(None);
                }
                let chunk = match r {
                    Ok(data) => pb::proxy_chunk::Chunk::Data(data),
                    Err(e) => {
                        *broken = true;
                        pb::proxy_chunk::Chunk::Reset(agent::ProxyReset {
                            code: "cancelled".into(),
                            message: format!("request body: {e}"),
                        })
                    }
                };
                std::future::ready(Some(pb::ProxyChunk { chunk: Some(chunk) }))
            })
            .chain(futures::stream::once(std::future::ready(pb::ProxyChunk {
                chunk: Some(pb::proxy_chunk::Chunk::End(true)),
            })));
        futures::stream::once(std::future::ready(head_chunk(head)))
            .chain(body)
            .right_stream()
    };
    let mut answers = client(&state)?
        .proxy(caller.request(&state, outbound))
        .await?
        .into_inner();
    let first = answers
        .message()
        .await?
        .and_then(|c| c.chunk)
        .ok_or_else(|| {
            ApiError::new(
                lattice_core::ErrorCode::Unavailable,
                "the tunnel ended the stream before answering",
            )
        })?;
    let mut head = match first {
        pb::proxy_chunk::Chunk::Response(h) => h,
        pb::proxy_chunk::Chunk::Reset(r) => return Err(refused(&r)),
        _ => {
            return Err(ApiError::new(
                lattice_core::ErrorCode::BadGateway,
                "the tunnel answered out of order",
            ));
        }
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(head.status as u16).unwrap_or(StatusCode::BAD_GATEWAY))
        // The node's pages come from the API's origin: sandbox them, so a page on a
        // node cannot act with a logged-in operator's session.
        .header(http::header::CONTENT_SECURITY_POLICY, "sandbox")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    for h in std::mem::take(&mut head.headers) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(h.name.as_str()),
            HeaderValue::from_bytes(&h.value),
        ) && forwardable(&n)
            && !matches!(
                n.as_str(),
                "set-cookie" | "content-security-policy" | "x-content-type-options"
            )
        {
            resp = resp.header(n, v);
        }
    }
    if head.end {
        // The whole answer came in its head. Read the call to its end (trailers)
        // so it closes cleanly; the tunnel ends it right after the head.
        while let Ok(Some(_)) = answers.message().await {}
        return resp.body(Body::from(head.body)).map_err(bad_head);
    }
    let stream = futures::stream::unfold(answers, |mut answers| async move {
        match answers.message().await {
            Ok(Some(pb::ProxyChunk {
                chunk: Some(pb::proxy_chunk::Chunk::Data(d)),
            })) => Some((Ok(d), answers)),
            Ok(Some(pb::ProxyChunk {
                chunk: Some(pb::proxy_chunk::Chunk::Reset(r)),
            })) => Some((
                Err(std::io::Error::other(format!("{}: {}", r.code, r.message))),
                answers,
            )),
            Ok(Some(_)) => {
                // The answer is complete: read the call to its end (trailers), so it
                // closes cleanly instead of being reset (a stream of resets is what
                // HTTP/2 servers treat as an attack and answer with GOAWAY).
                while let Ok(Some(_)) = answers.message().await {}
                None
            }
            Ok(None) => None,
            Err(st) => Some((Err(std::io::Error::other(st.message().to_owned())), answers)),
        }
    })
    // After an error the body ends.
    .scan(
        false,
        |failed, item: Result<bytes::Bytes, std::io::Error>| {
            if *failed {
                return std::future::ready(None);
            }
            *failed = item.is_err();
            std::future::ready(Some(item))
        },
    );
    resp.body(Body::from_stream(stream)).map_err(bad_head)
}

/// The error for a stream the agent refused or could not open.
fn refused(r: &agent::ProxyReset) -> ApiError {
    let code = match r.code.as_str() {
        "port_not_allowed" => lattice_core::ErrorCode::PermissionDenied,
        _ => lattice_core::ErrorCode::BadGateway,
    };
    ApiError::new(code, format!("{}: {}", r.code, r.message))
}

/// The HTTP/1.1 upgrade token of a port forward, as in the IETF's template-driven
/// CONNECT for TCP (`draft-ietf-httpbis-connect-tcp`).
pub const CONNECT_TCP: &str = "connect-tcp";
/// Largest read from a port forward's client (each becomes one data chunk).
const FORWARD_READ: usize = 16 * 1024;

/// `GET /api/v1/nodes/{node}/portforward/{port}` (`nodes:proxy`), an HTTP/1.1
/// upgrade to `connect-tcp`: one TCP connection to `127.0.0.1:{port}` on the node,
/// carried over its agent's stream like `kubectl port-forward`. Answers `101` once
/// the node's service accepted (an error otherwise, before any byte is carried);
/// then the connection carries bytes both ways until the node's side closes.
/// The client closing its side half-closes the node's.
#[utoipa::path(get, path = "/api/v1/nodes/{node}/portforward/{port}", tag = "nodes",
    params(("node" = String, Path, description = "Node id"), ("port" = u16, Path, description = "Port on the node (the agent must allow it)"),
        ("Upgrade" = String, Header, description = "`connect-tcp` (with `Connection: Upgrade`, over HTTP/1.1)")),
    responses((status = 101, description = "Connected: from here the connection carries the TCP bytes both ways"),
        (status = 400, body = crate::error::ErrorBody, description = "Not an HTTP/1.1 `Upgrade: connect-tcp`, not a node id, a port outside 1..65535, or an agent that does not forward TCP"),
        (status = 403, body = crate::error::ErrorBody, description = "Missing `nodes:proxy`, or a port the node's agent does not allow"),
        (status = 404, body = crate::error::ErrorBody, description = "No such node in your org"),
        (status = 429, body = crate::error::ErrorBody, description = "The node has `tunnel.max_proxy_streams` streams open"),
        (status = 502, body = crate::error::ErrorBody, description = "The node's side refused or failed"),
        (status = 503, body = crate::error::ErrorBody, description = "The node is not connected, or the tunnel service is unreachable or not configured")))]
pub async fn port_forward(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((node_id, port)): Path<(String, String)>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(CONNECT_TCP))
        });
    if !upgrade || req.version() != http::Version::HTTP_11 {
        return Err(ApiError::new(
            lattice_core::ErrorCode::BadRequest,
            "a port forward is an HTTP/1.1 upgrade: send `Connection: Upgrade` and `Upgrade: connect-tcp` (`lattice proxy NODE PORT` does)",
        ));
    }
    let port = node_port(&port)?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    // The client's bytes, as the tunnel call's request stream (bounded: a client
    // faster than the node waits for the node's window).
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ProxyChunk>(4);
    let head = pb::ProxyRequestHead {
        node_id,
        port,
        tcp: true,
        ..Default::default()
    };
    let _ = tx.send(head_chunk(head)).await;
    let outbound = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut answers = client(&state)?
        .proxy(caller.request(&state, outbound))
        .await?
        .into_inner();
    match answers.message().await?.and_then(|c| c.chunk) {
        Some(pb::proxy_chunk::Chunk::Response(_)) => {}
        Some(pb::proxy_chunk::Chunk::Reset(r)) => return Err(refused(&r)),
        _ => {
            return Err(ApiError::new(
                lattice_core::ErrorCode::BadGateway,
                "the tunnel ended the port forward before it connected",
            ));
        }
    }
    tokio::spawn(splice(on_upgrade, tx, answers, state.draining.clone()));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, CONNECT_TCP)
        .body(Body::empty())
        .map_err(bad_head)
}

/// Carry a port forward's bytes between the upgraded client connection and the
/// tunnel until the node's side ends, the client goes away or the gateway drains.
async fn splice(
    on_upgrade: hyper::upgrade::OnUpgrade,
    tx: tokio::sync::mpsc::Sender<pb::ProxyChunk>,
    mut answers: tonic::Streaming<pb::ProxyChunk>,
    draining: tokio_util::sync::CancellationToken,
) {
    use pb::proxy_chunk::Chunk;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Dropping `answers` before the node's end resets the stream on the node.
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    let up = async move {
        let mut buf = vec![0u8; FORWARD_READ];
        loop {
            let chunk = match rd.read(&mut buf).await {
                Ok(0) => Chunk::End(true),
                Ok(n) => Chunk::Data(bytes::Bytes::copy_from_slice(&buf[..n])),
                Err(e) => {
                    // The client's connection broke: reset the node's side and end
                    // here (returning drops the stream, which resets it too).
                    let reset = Chunk::Reset(agent::ProxyReset {
                        code: "cancelled".into(),
                        message: format!("client connection: {e}"),
                    });
                    let _ = tx.send(pb::ProxyChunk { chunk: Some(reset) }).await;
                    return;
                }
            };
            let end = matches!(chunk, Chunk::End(_));
            if tx
                .send(pb::ProxyChunk { chunk: Some(chunk) })
                .await
                .is_err()
                || end
            {
                break;
            }
        }
        // The client closed its side (or the node stopped taking bytes): the node's
        // side may still answer.
        std::future::pending::<()>().await;
    };
    let down = async move {
        while let Ok(Some(pb::ProxyChunk { chunk: Some(chunk) })) = answers.message().await {
            match chunk {
                Chunk::Data(d) => {
                    if wr.write_all(&d).await.is_err() {
                        return;
                    }
                }
                Chunk::End(_) => {
                    let _ = wr.shutdown().await;
                    // Read the call to its end, so it closes rather than resets.
                    while let Ok(Some(_)) = answers.message().await {}
                    return;
                }
                // The node's side broke: the connection is dropped without an
                // orderly shutdown, so over TLS the client sees a truncation (no
                // close_notify), not a clean end.
                _ => return,
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        () = draining.cancelled() => {}
    }
}

fn bad_head(e: http::Error) -> ApiError {
    ApiError::new(
        lattice_core::ErrorCode::BadGateway,
        format!("bad response head from the node: {e}"),
    )
}

fn head_chunk(head: pb::ProxyRequestHead) -> pb::ProxyChunk {
    pb::ProxyChunk {
        chunk: Some(pb::proxy_chunk::Chunk::Head(head)),
    }
}

/// `/lattice.agent.v1.AgentService/*`: relay an agent's gRPC call (enrollment, or
/// its long-lived stream) to the tunnel service, as the gateway.
pub async fn relay_agent(State(state): State<Arc<AppState>>, req: Request) -> Response {
    use tower::ServiceExt as _;
    let Some(channel) = state.tunnel_channel.clone() else {
        return grpc_error(
            tonic::Code::Unavailable,
            "the tunnel service is not configured on this gateway",
        );
    };
    let (mut parts, body) = req.into_parts();
    let ip = crate::caller::client_ip(&parts, state.cfg.trust_forwarded_for);
    let principal = state.internal.mint(&state.service_principal);
    let h = &mut parts.headers;
    h.remove(lattice_core::auth::PRINCIPAL_METADATA);
    h.remove(lattice_core::auth::CLIENT_IP_METADATA);
    if let (Ok(p), Ok(ip)) = (HeaderValue::try_from(principal), HeaderValue::try_from(ip)) {
        h.insert(lattice_core::auth::PRINCIPAL_METADATA, p);
        h.insert(lattice_core::auth::CLIENT_IP_METADATA, ip);
    }
    let path = parts.uri.path().to_owned();
    parts.uri = match http::Uri::builder()
        .scheme("http")
        .authority("tunnel")
        .path_and_query(path)
        .build()
    {
        Ok(u) => u,
        Err(_) => return grpc_error(tonic::Code::InvalidArgument, "bad path"),
    };
    let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
    match channel.oneshot(req).await {
        Ok(resp) => resp.map(|body| until_draining(body, state.draining.clone())),
        Err(e) => grpc_error(
            tonic::Code::Unavailable,
            &format!("tunnel service unreachable: {e}"),
        ),
    }
}

/// A relayed response body that ends with `grpc-status: UNAVAILABLE` when the
/// gateway starts draining, so the agent reconnects at once instead of holding a
/// stream the drain deadline would cut.
fn until_draining<B>(body: B, draining: tokio_util::sync::CancellationToken) -> Body
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    use http_body_util::BodyExt as _;
    let frames = futures::stream::unfold(Some((body, draining)), |state| async move {
        let (mut body, draining) = state?;
        tokio::select! {
            frame = body.frame() => frame.map(|f| (f.map_err(Into::into), Some((body, draining)))),
            _ = draining.cancelled() => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("14"));
                trailers.insert("grpc-message", HeaderValue::from_static("gateway%20shutting%20down"));
                Some((Ok(hyper::body::Frame::trailers(trailers)), None))
            }
        }
    });
    Body::new(http_body_util::StreamBody::new(frames))
}

fn grpc_error(code: tonic::Code, message: &str) -> Response {
    let status = tonic::Status::new(code, message);
    status.into_http::<Body>().into_response()
}
