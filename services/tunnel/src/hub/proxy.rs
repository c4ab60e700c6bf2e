//! The multiplexed proxy: HTTP exchanges and TCP connections carried to a node's
//! local ports as streams over its agent's connection.
//!
//! Flow control: each proxy stream has a window of [`WINDOW`] bytes in each
//! direction. A sender sends body bytes only within the window the receiver granted;
//! the receiver grants more (a `window_update`) as its consumer takes bytes. So one
//! slow HTTP client stops only its own stream, never the agent's other streams.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use lattice_core::audit::Actor;
use lattice_core::auth::RequestContext;
use lattice_proto::agent::v1 as agent;
use lattice_proto::tunnel::v1 as pb;
use tokio::sync::{Semaphore, mpsc};
use tonic::{Status, Streaming};

use super::{Hub, Session, registry_key};
use crate::error::TunnelError;

/// Per-stream flow-control window, bytes, each direction.
pub const WINDOW: u32 = 256 * 1024;
/// Largest body chunk in one frame.
pub const CHUNK: usize = 64 * 1024;
/// Window is granted back in steps of this many consumed bytes (like HTTP/2
/// implementations), not per chunk: a small answer costs no update at all.
pub const GRANT_STEP: u32 = WINDOW / 4;
/// Protocol feature: a proxy open or head may carry the whole body.
pub const INLINE_BODY: &str = "proxy.inline_body";
/// Protocol feature: the agent opens TCP connections (port forwards).
pub const TCP: &str = "proxy.tcp";

/// A stream of proxy answers (local, or from the owning replica).
pub type ProxyStream = Pin<Box<dyn Stream<Item = Result<pb::ProxyChunk, Status>> + Send>>;

pub(super) enum Event {
    Head(agent::ProxyHead),
    Data(Bytes),
    End,
    Reset(agent::ProxyReset),
}

pub(super) struct Slot {
    pub(super) to_client: mpsc::UnboundedSender<Event>,
    /// Request-body credit the agent granted.
    pub(super) credit: Arc<Semaphore>,
    /// Response bytes received and not yet taken by the client.
    buffered: Arc<AtomicI64>,
    /// The client takes a response head carrying the whole body.
    inline_ok: bool,
}

impl Hub {
    pub(super) fn agent_frame(&self, s: &Session, frame: agent::ProxyFrame) {
        use agent::proxy_frame::Frame;
        let id = frame.stream_id;
        let Some(f) = frame.frame else { return };
        let mut streams = s.streams();
        let Some(slot) = streams.get(&id) else { return };
        match f {
            Frame::Head(mut h) if h.end => {
                if !slot.inline_ok {
                    // A client that does not take the body in the head gets it the
                    // long way: head, data, end.
                    let body = std::mem::take(&mut h.body);
                    h.end = false;
                    let _ = slot.to_client.send(Event::Head(h));
                    if !body.is_empty() {
                        slot.buffered.fetch_add(body.len() as i64, Ordering::SeqCst);
                        let _ = slot.to_client.send(Event::Data(body));
                    }
                    let _ = slot.to_client.send(Event::End);
                } else {
                    let _ = slot.to_client.send(Event::Head(h));
                }
                Self::finished(&mut streams, id);
            }
            Frame::Head(h) => {
                let _ = slot.to_client.send(Event::Head(h));
            }
            Frame::Data(d) => {
                let buffered =
                    slot.buffered.fetch_add(d.len() as i64, Ordering::SeqCst) + d.len() as i64;
                if buffered > i64::from(WINDOW) + CHUNK as i64 {
                    // The agent ignored the window: end the stream rather than buffer.
                    let _ = slot.to_client.send(Event::Reset(agent::ProxyReset {
                        code: "flow_control".into(),
                        message: "the agent sent past its window".into(),
                    }));
                    Self::finished(&mut streams, id);
                    drop(streams);
                    s.frame(
                        id,
                        Frame::Reset(agent::ProxyReset {
                            code: "flow_control".into(),
                            message: String::new(),
                        }),
                    );
                    return;
                }
                let _ = slot.to_client.send(Event::Data(d));
            }
            Frame::End(_) => {
                let _ = slot.to_client.send(Event::End);
                Self::finished(&mut streams, id);
            }
            Frame::Reset(r) => {
                let _ = slot.to_client.send(Event::Reset(r));
                Self::finished(&mut streams, id);
            }
            Frame::WindowUpdate(n) => slot.credit.add_permits(n as usize),
            Frame::Open(_) => {}
        }
    }

    /// Stream `id` ended: forget it, and stop its request pump (which may be waiting
    /// for window the agent will no longer grant).
    fn finished(streams: &mut HashMap<u64, Slot>, id: u64) {
        if let Some(slot) = streams.remove(&id) {
            slot.credit.close();
        }
    }

    /// Carry one HTTP exchange (or, with `head.tcp`, one TCP connection) to
    /// `head.node_id`: through the stream held here, or forwarded once to the
    /// replica that holds it.
    pub async fn proxy(
        self: &Arc<Self>,
        ctx: &RequestContext,
        metadata: &tonic::metadata::MetadataMap,
        head: pb::ProxyRequestHead,
        body: Streaming<pb::ProxyChunk>,
    ) -> Result<ProxyStream, TunnelError> {
        let p = &ctx.principal;
        if !(p.allows("nodes:proxy")) {
            return Err(TunnelError::MissingScope("nodes:proxy".into()));
        }
        crate::service::check_id("node_id", &head.node_id)?;
        if head.port == 0 || head.port > 65_535 {
            return Err(TunnelError::Invalid("port: must be 1..65535".into()));
        }
        if head.tcp {
            if !head.method.is_empty()
                || !head.path_and_query.is_empty()
                || !head.headers.is_empty()
                || !head.body.is_empty()
                || head.end
            {
                return Err(TunnelError::Invalid(
                    "a TCP forward's head carries no method, path, headers or body (bytes follow as data)".into(),
                ));
            }
        } else if !head.path_and_query.starts_with('/') || head.path_and_query.len() > 8192 {
            return Err(TunnelError::Invalid(
                "path: must start with / (at most 8 KiB)".into(),
            ));
        }
        // The node must be the caller's. A stream held here knows its org; otherwise
        // the registry row is read (and the same check runs again on the owner).
        if let Some(s) = self.session(&head.node_id)
            && s.org_id == p.org_id
        {
            let refused = if !s.proxy_ports.contains(&head.port) {
                Some(TunnelError::Forbidden(format!(
                    "port {} is not allowed by the agent on node {} (its config allows: {:?})",
                    head.port, s.node_id, s.proxy_ports
                )))
            } else if s.streams().len() >= self.nodes.settings.max_proxy_streams {
                Some(TunnelError::Busy(format!(
                    "node {} already has {} proxied requests and port forwards open (tunnel.max_proxy_streams); retry when some end",
                    s.node_id, self.nodes.settings.max_proxy_streams
                )))
            } else if head.tcp && !s.tcp {
                Some(TunnelError::Invalid(format!(
                    "the agent on node {} does not forward TCP (it predates port forwards; upgrade it)",
                    s.node_id
                )))
            } else {
                None
            };
            // A port forward is a session into the node: each one is audited (single
            // proxied HTTP requests are not).
            if head.tcp {
                let detail = match &refused {
                    Some(e) => serde_json::json!({"port": head.port, "error": e.to_string()}),
                    None => serde_json::json!({"port": head.port}),
                };
                self.nodes
                    .record(
                        Actor::of(ctx),
                        "node.port_forward",
                        &s.node_id,
                        refused.is_none(),
                        detail,
                    )
                    .await;
            }
            if let Some(e) = refused {
                return Err(e);
            }
            return Ok(Box::pin(self.open_local(s, head, body)));
        }
        let node = self
            .nodes
            .store()
            .node(Some(&p.org_id), &head.node_id)
            .await?;
        let owner = self
            .cache
            .get(&registry_key(&node.id))
            .await
            .and_then(|v| String::from_utf8(v).ok());
        match owner {
            Some(url) if url != self.advertise && !head.forwarded => {
                let mut head = head;
                head.forwarded = true;
                self.forward(&url, metadata, head, body).await
            }
            _ => Err(TunnelError::NotConnected(format!(
                "node {} is not connected ({}{})",
                node.id,
                node.status,
                if node.status_reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", node.status_reason)
                }
            ))),
        }
    }

    fn open_local(
        self: &Arc<Self>,
        s: Arc<Session>,
        head: pb::ProxyRequestHead,
        mut body: Streaming<pb::ProxyChunk>,
    ) -> LocalStream {
        use agent::proxy_frame::Frame;
        let id = s.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        let buffered = Arc::new(AtomicI64::new(0));
        s.streams().insert(
            id,
            Slot {
                to_client: tx,
                credit: credit.clone(),
                buffered: buffered.clone(),
                inline_ok: head.accept_inline_body,
            },
        );
        let (inline, ended) = (s.inline_body && head.end, head.end);
        let mut first = head.body;
        s.frame(
            id,
            Frame::Open(agent::ProxyOpen {
                port: head.port,
                method: head.method,
                path_and_query: head.path_and_query,
                headers: head.headers,
                body: if inline {
                    std::mem::take(&mut first)
                } else {
                    Bytes::new()
                },
                end: inline,
                tcp: head.tcp,
            }),
        );
        // The request body, within the agent's window (nothing to pump when the
        // whole request went with the open).
        let pump = s.clone();
        let pump_body = async move {
            let mut first = (!first.is_empty() || ended).then_some(first);
            loop {
                let chunk = match first.take() {
                    Some(d) => Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Data(d)),
                    })),
                    None if ended => Ok(None),
                    None => tokio::select! {
                        _ = pump.close.cancelled() => return,
                        c = body.message() => c,
                    },
                };
                match chunk {
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Data(d)),
                    })) => {
                        let mut rest = d;
                        while !rest.is_empty() {
                            let piece = rest.split_to(rest.len().min(CHUNK));
                            let permit = tokio::select! {
                                _ = pump.close.cancelled() => return,
                                p = credit.acquire_many(piece.len() as u32) => p,
                            };
                            let Ok(permit) = permit else { return };
                            permit.forget();
                            pump.frame(id, Frame::Data(piece));
                        }
                    }
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::End(_)),
                    }))
                    | Ok(None) => {
                        pump.frame(id, Frame::End(true));
                        return;
                    }
                    Ok(Some(pb::ProxyChunk {
                        chunk: Some(pb::proxy_chunk::Chunk::Reset(r)),
                    })) => {
                        pump.frame(id, Frame::Reset(r));
                        return;
                    }
                    Ok(Some(_)) => {}
                    Err(_) => {
                        pump.frame(
                            id,
                            Frame::Reset(agent::ProxyReset {
                                code: "cancelled".into(),
                                message: "client went away".into(),
                            }),
                        );
                        return;
                    }
                }
            }
        };
        if !inline {
            tokio::spawn(pump_body);
        }
        LocalStream {
            rx,
            session: s,
            id,
            buffered,
            ungranted: 0,
            done: false,
        }
    }
}

/// Answers of one proxy stream held here. Taking a body chunk grants the agent more
/// window; dropping the stream before its end (the client went away) resets it on
/// the agent.
struct LocalStream {
    rx: mpsc::UnboundedReceiver<Event>,
    session: Arc<Session>,
    id: u64,
    buffered: Arc<AtomicI64>,
    /// Consumed bytes not yet granted back to the agent.
    ungranted: u32,
    done: bool,
}

impl Stream for LocalStream {
    type Item = Result<pb::ProxyChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use pb::proxy_chunk::Chunk;
        if self.done {
            return Poll::Ready(None);
        }
        let chunk = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Event::Head(h))) => {
                self.done = h.end;
                Chunk::Response(h)
            }
            Poll::Ready(Some(Event::Data(d))) => {
                self.buffered.fetch_sub(d.len() as i64, Ordering::SeqCst);
                self.ungranted += d.len() as u32;
                if self.ungranted >= GRANT_STEP {
                    let n = std::mem::take(&mut self.ungranted);
                    self.session
                        .frame(self.id, agent::proxy_frame::Frame::WindowUpdate(n));
                }
                Chunk::Data(d)
            }
            Poll::Ready(Some(Event::End)) => {
                self.done = true;
                Chunk::End(true)
            }
            Poll::Ready(Some(Event::Reset(r))) => {
                self.done = true;
                Chunk::Reset(r)
            }
            Poll::Ready(None) => {
                self.done = true;
                Chunk::Reset(agent::ProxyReset {
                    code: "agent_disconnected".into(),
                    message: "the node's agent disconnected".into(),
                })
            }
        };
        Poll::Ready(Some(Ok(pb::ProxyChunk { chunk: Some(chunk) })))
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        if !self.done {
            // The client went away: stop the agent's side too.
            Hub::finished(&mut self.session.streams(), self.id);
            self.session.frame(
                self.id,
                agent::proxy_frame::Frame::Reset(agent::ProxyReset {
                    code: "cancelled".into(),
                    message: "the client went away".into(),
                }),
            );
        }
    }
}
