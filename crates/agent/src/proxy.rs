//! The agent's side of proxy streams: each opened stream is one HTTP/1.1 request to
//! `127.0.0.1:{port}` (only ports the local config allows), its body fed from the
//! server's frames and its response streamed back within the server's window; or,
//! for a port forward, one TCP connection to that port with its bytes carried the
//! same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::BodyExt;
use lattice_proto::agent::v1 as pb;
use pb::proxy_frame::Frame;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::run::Agent;

/// Window each way, as on the server.
const WINDOW: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;
/// Window is granted back in steps of this many consumed bytes, as on the server.
const GRANT_STEP: usize = WINDOW / 4;
/// Protocol feature: a proxy open or head may carry the whole body (used when the
/// server names it too).
pub const INLINE_BODY: &str = "proxy.inline_body";
/// Protocol feature: a proxy open may ask for a TCP connection (a port forward).
pub const TCP: &str = "proxy.tcp";
/// How long a port forward waits for the local service to accept.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest read from a forwarded connection (each becomes one data frame).
const TCP_READ: usize = 16 * 1024;

/// Keep-alive HTTP/1.1 connections to the node's local services.
type Upstream = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
>;

fn upstream() -> Upstream {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(connector)
}

struct Slot {
    body: Option<mpsc::UnboundedSender<Bytes>>,
    credit: Arc<Semaphore>,
    cancel: CancellationToken,
}

/// The streams of one connection.
pub struct Streams {
    agent: Arc<Agent>,
    upstream: Upstream,
    conn: CancellationToken,
    slots: Arc<Mutex<HashMap<u64, Slot>>>,
    /// The server takes a response head carrying the whole body.
    inline: bool,
}

async fn send(agent: &Agent, stream_id: u64, frame: Frame) {
    agent
        .send(pb::agent_message::Msg::Proxy(pb::ProxyFrame {
            stream_id,
            frame: Some(frame),
        }))
        .await;
}

fn reset(code: &str, message: String) -> Frame {
    Frame::Reset(pb::ProxyReset {
        code: code.into(),
        message,
    })
}

impl Streams {
    /// Streams of the connection `conn`.
    pub fn new(agent: Arc<Agent>, conn: CancellationToken, inline: bool) -> Self {
        Self {
            agent,
            upstream: upstream(),
            conn,
            slots: Arc::new(Mutex::new(HashMap::new())),
            inline,
        }
    }

    /// Handle one frame from the server.
    pub fn handle(&self, frame: pb::ProxyFrame) {
        let id = frame.stream_id;
        let Some(f) = frame.frame else { return };
        let mut slots = self.slots.lock().expect("slots lock");
        match f {
            Frame::Open(open) => {
                let credit = Arc::new(Semaphore::new(WINDOW));
                let cancel = self.conn.child_token();
                let (body_tx, body_rx) = mpsc::unbounded_channel();
                slots.insert(
                    id,
                    Slot {
                        // A request that came whole takes no body frames.
                        body: (!open.end).then_some(body_tx),
                        credit: credit.clone(),
                        cancel: cancel.clone(),
                    },
                );
                let (agent, table, upstream, inline) = (
                    self.agent.clone(),
                    self.slots.clone(),
                    self.upstream.clone(),
                    self.inline,
                );
                tokio::spawn(async move {
                    if open.tcp {
                        forward_tcp(&agent, id, open.port, credit, body_rx, cancel).await;
                    } else {
                        let exchange = Exchange {
                            agent: &agent,
                            upstream: &upstream,
                            id,
                            credit,
                            inline,
                        };
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            () = exchange.run(open, body_rx) => {}
                        }
                    }
                    table.lock().expect("slots lock").remove(&id);
                });
            }
            Frame::Data(d) => {
                if let Some(tx) = slots.get(&id).and_then(|s| s.body.as_ref()) {
                    let _ = tx.send(d);
                }
            }
            Frame::End(_) => {
                if let Some(s) = slots.get_mut(&id) {
                    s.body = None;
                }
            }
            Frame::Reset(_) => {
                if let Some(s) = slots.remove(&id) {
                    s.cancel.cancel();
                }
            }
            Frame::WindowUpdate(n) => {
                if let Some(s) = slots.get(&id) {
                    s.credit.add_permits(n as usize);
                }
            }
            Frame::Head(_) => {}
        }
    }
}

fn port_allowed(agent: &Agent, port: u32) -> Result<(), Frame> {
    if agent.config.proxy_ports.contains(&port) {
        Ok(())
    } else {
        let msg = format!("port {port} is not in the agent's proxy_ports");
        Err(reset("port_not_allowed", msg))
    }
}

/// One port forward: a TCP connection to `127.0.0.1:{port}`. The server's data
/// frames are written to it (granting the server more window as they are written;
/// the server's end closes the write half), and what the service sends comes back
/// within the server's window until the service closes, which ends the stream. A
/// reset from the server (the client's connection broke) aborts the connection.
async fn forward_tcp(
    agent: &Arc<Agent>,
    id: u64,
    port: u32,
    credit: Arc<Semaphore>,
    mut from_server: mpsc::UnboundedReceiver<Bytes>,
    cancel: CancellationToken,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if let Err(refused) = port_allowed(agent, port) {
        send(agent, id, refused).await;
        return;
    }
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr));
    let connected = tokio::select! {
        () = &mut cancelled => return,
        c = connect => c,
    };
    let tcp = match connected {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            send(agent, id, reset("connect_failed", format!("{addr}: {e}"))).await;
            return;
        }
        Err(_) => {
            let msg = format!("{addr}: no answer within {}s", CONNECT_TIMEOUT.as_secs());
            send(agent, id, reset("connect_failed", msg)).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (mut rd, mut wr) = tcp.into_split();
    let head = pb::ProxyHead {
        status: 200,
        ..Default::default()
    };
    send(agent, id, Frame::Head(head)).await;
    let up = async {
        let mut ungranted = 0usize;
        while let Some(d) = from_server.recv().await {
            wr.write_all(&d).await?;
            ungranted += d.len();
            if ungranted >= GRANT_STEP {
                let n = std::mem::take(&mut ungranted) as u32;
                send(agent, id, Frame::WindowUpdate(n)).await;
            }
        }
        // The client closed its side: so does the node's.
        wr.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; TCP_READ];
        loop {
            let piece = match rd.read(&mut buf).await {
                Ok(0) => return Frame::End(true),
                Ok(n) => Bytes::copy_from_slice(&buf[..n]),
                Err(e) => return reset("upstream_failed", e.to_string()),
            };
            let Ok(permit) = credit.acquire_many(piece.len() as u32).await else {
                return reset("cancelled", String::new());
            };
            permit.forget();
            send(agent, id, Frame::Data(piece)).await;
        }
    };
    // The node's side closing ends the stream. The client's side closing only
    // half-closes it, and a write the service refuses (it closed its reading side)
    // stops the writing: either way the service may still answer, and what it
    // sends is read to its end.
    let pumped = async {
        tokio::pin!(down);
        tokio::select! {
            last = &mut down => last,
            _ = up => (&mut down).await,
        }
    };
    let last = tokio::select! {
        () = &mut cancelled => None,
        last = pumped => Some(last),
    };
    match last {
        Some(last) => send(agent, id, last).await,
        // Not a clean close: the service sees a reset, not a complete stream.
        None => {
            let _ = rd.as_ref().set_zero_linger();
        }
    }
}

/// One proxied HTTP exchange.
struct Exchange<'a> {
    agent: &'a Arc<Agent>,
    upstream: &'a Upstream,
    id: u64,
    /// Response-body credit the server granted.
    credit: Arc<Semaphore>,
    /// The server takes a response head carrying the whole body.
    inline: bool,
}

/// Largest response body sent inside its head (when its length is known up front).
const INLINE_MAX: u64 = CHUNK as u64;

impl Exchange<'_> {
    async fn run(self, mut open: pb::ProxyOpen, body_rx: mpsc::UnboundedReceiver<Bytes>) {
        let Self {
            agent,
            upstream,
            id,
            credit,
            inline,
        } = self;
        if let Err(refused) = port_allowed(agent, open.port) {
            send(agent, id, refused).await;
            return;
        }
        // The request body: each chunk taken grants the server more window.
        let grant = agent.clone();
        let mut ungranted = 0usize;
        let body =
            tokio_stream::wrappers::UnboundedReceiverStream::new(body_rx).then(move |d: Bytes| {
                let grant = grant.clone();
                ungranted += d.len();
                let n = if ungranted >= GRANT_STEP {
                    std::mem::take(&mut ungranted)
                } else {
                    0
                };
                async move {
                    if n > 0 {
                        send(&grant, id, Frame::WindowUpdate(n as u32)).await;
                    }
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(d))
                }
            });
        let mut req = http::Request::builder()
            .method(open.method.as_str())
            .uri(format!(
                "http://127.0.0.1:{}{}",
                open.port, open.path_and_query
            ));
        for h in &open.headers {
            req = req.header(h.name.as_str(), h.value.as_ref());
        }
        req = req.header(http::header::HOST, format!("127.0.0.1:{}", open.port));
        let empty = open
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("content-length") && h.value.as_ref() == b"0");
        let body = if open.end && !open.body.is_empty() {
            BodyExt::boxed(http_body_util::Full::new(std::mem::take(&mut open.body)))
        } else if open.end || empty {
            // No body: nothing to wait for (the server's end-of-body frame is ignored).
            BodyExt::boxed(http_body_util::Empty::new())
        } else {
            BodyExt::boxed(http_body_util::StreamBody::new(body))
        };
        let req = match req.body(body) {
            Ok(r) => r,
            Err(e) => {
                send(agent, id, reset("bad_request", e.to_string())).await;
                return;
            }
        };
        let resp = match upstream.request(req).await {
            Ok(r) => r,
            Err(e) => {
                let (code, what) = if e.is_connect() {
                    ("connect_failed", format!("127.0.0.1:{}", open.port))
                } else {
                    ("upstream_failed", "request".into())
                };
                let detail =
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                send(agent, id, reset(code, format!("{what}: {detail}"))).await;
                return;
            }
        };
        let (parts, mut body) = resp.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(n, v)| pb::Header {
                name: n.as_str().to_owned(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect();
        let mut head = pb::ProxyHead {
            status: u32::from(parts.status.as_u16()),
            headers,
            body: Bytes::new(),
            end: false,
        };
        // A small answer of known length goes in one frame with its head. Anything
        // else (a stream, a watch) goes head first, then data as it is produced.
        if inline
            && hyper::body::Body::size_hint(&body)
                .exact()
                .is_some_and(|n| n <= INLINE_MAX)
        {
            match body.collect().await {
                Ok(all) => {
                    head.body = all.to_bytes();
                    head.end = true;
                    send(agent, id, Frame::Head(head)).await;
                }
                Err(e) => send(agent, id, reset("upstream_failed", e.to_string())).await,
            }
            return;
        }
        send(agent, id, Frame::Head(head)).await;
        loop {
            match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    send(agent, id, reset("upstream_failed", e.to_string())).await;
                    return;
                }
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    while !data.is_empty() {
                        let piece = data.split_to(data.len().min(CHUNK));
                        let Ok(permit) = credit.acquire_many(piece.len() as u32).await else {
                            return;
                        };
                        permit.forget();
                        send(agent, id, Frame::Data(piece)).await;
                    }
                }
            }
        }
        send(agent, id, Frame::End(true)).await;
    }
}
