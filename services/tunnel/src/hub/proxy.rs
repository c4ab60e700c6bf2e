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
use futures::{Stream, StreamExt as _};
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

impl Session {
    /// A proxy frame from the agent: answers go to the stream's client, window
    /// updates free request-body credit.
    pub(super) fn agent_frame(&self, frame: agent::ProxyFrame) {
        use agent::proxy_frame::Frame;
        let s = self;
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
                finished(&mut streams, id);
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
                    finished(&mut streams, id);
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
                finished(&mut streams, id);
            }
            Frame::Reset(r) => {
                let _ = slot.to_client.send(Event::Reset(r));
                finished(&mut streams, id);
            }
            Frame::WindowUpdate(n) => slot.credit.add_permits(n as usize),
            Frame::Open(_) => {}
        }
    }
}

impl Hub {
    /// The row of the node `s` is connected for (name and labels), read at most
    /// once per few seconds.
    async fn node_row(&self, s: &Session) -> Result<Arc<crate::store::NodeRow>, TunnelError> {
        if let Some(row) = self.access.cached_node(&s.node_id) {
            return Ok(row);
        }
        let row = Arc::new(self.nodes.store().node(Some(&s.org_id), &s.node_id).await?);
        self.access.remember_node(row.clone());
        Ok(row)
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
                // The policy decides within the scope (`AccessNode` with the port).
                match self.node_row(&s).await {
                    Ok(row) => self
                        .access
                        .check(ctx, &row, head.port, head.tcp)
                        .await
                        .err(),
                    Err(e) => Some(e),
                }
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
            return Ok(Box::pin(s.open_local(head, body)));
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
}

impl Session {
    /// Open stream `head` on this agent: the open frame now, the request body
    /// pumped within the agent's window, the answers as a stream.
    fn open_local<B>(self: &Arc<Self>, head: pb::ProxyRequestHead, mut body: B) -> LocalStream
    where
        B: Stream<Item = Result<pb::ProxyChunk, Status>> + Send + Unpin + 'static,
    {
        use agent::proxy_frame::Frame;
        let s = self.clone();
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
                        c = body.next() => c.transpose(),
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

/// Stream `id` ended: forget it, and stop its request pump (which may be waiting
/// for window the agent will no longer grant).
fn finished(streams: &mut HashMap<u64, Slot>, id: u64) {
    if let Some(slot) = streams.remove(&id) {
        slot.credit.close();
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
            finished(&mut self.session.streams(), self.id);
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

#[cfg(test)]
mod tests {
    //! The flow control of one stream, between a client (the request body it sends,
    //! the answers it takes) and a scripted agent (the frames it is sent, the frames
    //! it answers with).

    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use agent::proxy_frame::Frame;
    use tokio::sync::{Notify, mpsc};
    use tokio_util::sync::CancellationToken;

    use super::super::{CachedCaps, Wanted};
    use super::*;

    type Client = mpsc::UnboundedSender<Result<pb::ProxyChunk, Status>>;
    type AgentRx = mpsc::UnboundedReceiver<Box<agent::ServerMessage>>;

    /// A session whose agent speaks `inline_body`, with the channel of what it is sent.
    fn session(inline_body: bool) -> (Arc<Session>, AgentRx) {
        let (out, rx) = mpsc::unbounded_channel();
        let s = Session {
            node_id: "node-1".into(),
            org_id: "org-1".into(),
            since: 0,
            out,
            wake: Notify::new(),
            wanted: Mutex::new(Wanted::default()),
            streams: Mutex::new(HashMap::new()),
            next_stream: 1.into(),
            proxy_ports: vec![8080],
            inline_body,
            tcp: true,
            close: CancellationToken::new(),
            close_reason: Mutex::new(None),
            seen_written: Mutex::new(Instant::now()),
            inflight: Mutex::new(HashMap::new()),
            caps: Mutex::new(CachedCaps {
                generation: 0,
                value: None,
            }),
        };
        (Arc::new(s), rx)
    }

    fn head(end: bool, body: &[u8], accept_inline: bool) -> pb::ProxyRequestHead {
        pb::ProxyRequestHead {
            node_id: "node-1".into(),
            port: 8080,
            method: "POST".into(),
            path_and_query: "/upload".into(),
            body: Bytes::copy_from_slice(body),
            end,
            accept_inline_body: accept_inline,
            ..Default::default()
        }
    }

    /// Open a stream whose request body the test sends through the returned client.
    fn open(s: &Arc<Session>, h: pb::ProxyRequestHead) -> (LocalStream, Client) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        (s.open_local(h, body), tx)
    }

    fn data(n: usize) -> Result<pb::ProxyChunk, Status> {
        Ok(pb::ProxyChunk {
            chunk: Some(pb::proxy_chunk::Chunk::Data(Bytes::from(vec![7u8; n]))),
        })
    }

    fn from_agent(s: &Session, id: u64, f: Frame) {
        s.agent_frame(agent::ProxyFrame {
            stream_id: id,
            frame: Some(f),
        });
    }

    fn response_head(end: bool, body: &[u8]) -> Frame {
        Frame::Head(agent::ProxyHead {
            status: 200,
            end,
            body: Bytes::copy_from_slice(body),
            ..Default::default()
        })
    }

    /// The next proxy frame sent to the agent, waiting up to a second.
    async fn next_frame(rx: &mut AgentRx) -> Option<(u64, Frame)> {
        let msg = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .ok()??;
        match msg.msg {
            Some(agent::server_message::Msg::Proxy(f)) => Some((f.stream_id, f.frame?)),
            other => panic!("unexpected message to the agent: {other:?}"),
        }
    }

    /// Frames sent to the agent until none has come for 100 ms.
    async fn settled(rx: &mut AgentRx) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if let Some(agent::server_message::Msg::Proxy(f)) = m.msg {
                out.extend(f.frame);
            }
        }
        out
    }

    /// The frames the agent is sent next: waiting up to 5 s for the first.
    async fn next_frames(rx: &mut AgentRx) -> Vec<Frame> {
        let mut out = Vec::new();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await
            && let Some(agent::server_message::Msg::Proxy(f)) = m.msg
        {
            out.extend(f.frame);
        }
        out.extend(settled(rx).await);
        out
    }

    /// Frames sent to the agent until `bytes` of data (waiting up to 5 s), then any
    /// that follow within 100 ms.
    async fn data_frames(rx: &mut AgentRx, bytes: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while data_bytes(&out) < bytes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(m)) => {
                    if let Some(agent::server_message::Msg::Proxy(f)) = m.msg {
                        out.extend(f.frame);
                    }
                }
                _ => break,
            }
        }
        out.extend(settled(rx).await);
        out
    }

    fn data_bytes(frames: &[Frame]) -> usize {
        frames
            .iter()
            .map(|f| match f {
                Frame::Data(d) => {
                    assert!(d.len() <= CHUNK, "a data frame of {} bytes", d.len());
                    d.len()
                }
                _ => 0,
            })
            .sum()
    }

    async fn next_chunk(st: &mut LocalStream) -> pb::proxy_chunk::Chunk {
        tokio::time::timeout(Duration::from_secs(1), st.next())
            .await
            .expect("an answer within a second")
            .expect("the stream has not ended")
            .expect("no status error")
            .chunk
            .expect("a chunk")
    }

    #[tokio::test]
    async fn a_whole_small_request_goes_inline_with_the_open() {
        let (s, mut rx) = session(true);
        let (_st, _client) = open(&s, head(true, b"hello", true));
        let (id, f) = next_frame(&mut rx).await.unwrap();
        assert_eq!(id, 1);
        let Frame::Open(o) = f else { panic!("{f:?}") };
        assert!(o.end);
        assert_eq!(&o.body[..], b"hello");
        assert!(settled(&mut rx).await.is_empty(), "nothing after the open");
    }

    #[tokio::test]
    async fn an_agent_without_inline_bodies_gets_open_data_end() {
        let (s, mut rx) = session(false);
        let (_st, _client) = open(&s, head(true, b"hello", true));
        let Some((_, Frame::Open(o))) = next_frame(&mut rx).await else {
            panic!("open first")
        };
        assert!(!o.end && o.body.is_empty());
        let rest = next_frames(&mut rx).await;
        assert!(
            matches!(&rest[..], [Frame::Data(d), Frame::End(true)] if &d[..] == b"hello"),
            "{rest:?}"
        );
    }

    #[tokio::test]
    async fn the_request_body_stops_at_the_window_and_resumes_on_each_grant() {
        let (s, mut rx) = session(true);
        let (_st, client) = open(&s, head(false, b"", true));
        assert!(matches!(
            next_frame(&mut rx).await,
            Some((1, Frame::Open(_)))
        ));
        // The client offers twice the window, in pieces larger than a frame.
        let total = 2 * WINDOW as usize;
        let piece = CHUNK + CHUNK / 2;
        let mut offered = 0;
        while offered < total {
            let n = piece.min(total - offered);
            client.send(data(n)).unwrap();
            offered += n;
        }
        client
            .send(Ok(pb::ProxyChunk {
                chunk: Some(pb::proxy_chunk::Chunk::End(true)),
            }))
            .unwrap();
        // Exactly one window reaches the agent, in frames of at most CHUNK.
        let first = data_frames(&mut rx, WINDOW as usize).await;
        assert_eq!(data_bytes(&first), WINDOW as usize);
        assert!(!first.iter().any(|f| matches!(f, Frame::End(_))));
        // The next frame is the 32 KiB left of a 96 KiB piece: a smaller grant sends
        // nothing, the grant that covers it sends exactly it.
        from_agent(&s, 1, Frame::WindowUpdate(1000));
        assert_eq!(data_bytes(&settled(&mut rx).await), 0);
        from_agent(&s, 1, Frame::WindowUpdate(CHUNK as u32 / 2 - 1000));
        assert_eq!(
            data_bytes(&data_frames(&mut rx, CHUNK / 2).await),
            CHUNK / 2
        );
        // The rest of the window, then the end.
        from_agent(&s, 1, Frame::WindowUpdate(WINDOW - CHUNK as u32 / 2));
        let last = data_frames(&mut rx, WINDOW as usize - CHUNK / 2).await;
        assert_eq!(data_bytes(&last), WINDOW as usize - CHUNK / 2);
        assert!(matches!(last.last(), Some(Frame::End(true))), "{last:?}");
    }

    #[tokio::test]
    async fn a_stream_that_ends_stops_its_pump_waiting_for_window() {
        let (s, mut rx) = session(true);
        let (mut st, client) = open(&s, head(false, b"", true));
        next_frame(&mut rx).await.unwrap();
        client.send(data(WINDOW as usize + 10)).unwrap();
        assert_eq!(
            data_bytes(&data_frames(&mut rx, WINDOW as usize).await),
            WINDOW as usize
        );
        // The agent answers and ends without reading the rest: the pump, waiting
        // for window, stops instead of sending the last 10 bytes.
        from_agent(&s, 1, response_head(false, b""));
        from_agent(&s, 1, Frame::End(true));
        assert!(matches!(
            next_chunk(&mut st).await,
            pb::proxy_chunk::Chunk::Response(_)
        ));
        assert!(matches!(
            next_chunk(&mut st).await,
            pb::proxy_chunk::Chunk::End(true)
        ));
        assert!(s.streams().is_empty(), "the ended stream is forgotten");
        // A late grant for it changes nothing.
        from_agent(&s, 1, Frame::WindowUpdate(WINDOW));
        assert!(settled(&mut rx).await.is_empty());
        drop(client);
    }

    #[tokio::test]
    async fn taking_answers_grants_window_back_in_steps() {
        let (s, mut rx) = session(true);
        let (mut st, _client) = open(&s, head(true, b"", true));
        next_frame(&mut rx).await.unwrap();
        from_agent(&s, 1, response_head(false, b""));
        assert!(matches!(
            next_chunk(&mut st).await,
            pb::proxy_chunk::Chunk::Response(_)
        ));
        // A small answer costs no window update.
        from_agent(&s, 1, Frame::Data(Bytes::from(vec![1u8; 100])));
        assert!(matches!(
            next_chunk(&mut st).await,
            pb::proxy_chunk::Chunk::Data(_)
        ));
        assert!(settled(&mut rx).await.is_empty());
        // A whole window, sent before any is taken, is within the window.
        let step = GRANT_STEP as usize;
        for _ in 0..4 {
            from_agent(&s, 1, Frame::Data(Bytes::from(vec![1u8; step])));
        }
        let mut granted = 0u32;
        for _ in 0..4 {
            assert!(matches!(
                next_chunk(&mut st).await,
                pb::proxy_chunk::Chunk::Data(_)
            ));
            for f in settled(&mut rx).await {
                let Frame::WindowUpdate(n) = f else {
                    panic!("{f:?}")
                };
                granted += n;
            }
        }
        // One update per step crossed, each for everything taken since the last one:
        // the first carries the small answer's 100 bytes too.
        assert_eq!(granted as usize, 4 * step + 100);
        from_agent(&s, 1, Frame::End(true));
        assert!(matches!(
            next_chunk(&mut st).await,
            pb::proxy_chunk::Chunk::End(true)
        ));
        assert!(st.next().await.is_none());
    }

    #[tokio::test]
    async fn an_agent_past_its_window_resets_the_stream_on_both_sides() {
        let (s, mut rx) = session(true);
        let (mut st, _client) = open(&s, head(true, b"", true));
        next_frame(&mut rx).await.unwrap();
        from_agent(&s, 1, response_head(false, b""));
        // The client takes nothing; the agent sends a window and one chunk of slack
        // (allowed: a grant may cross a frame in flight), then one byte more.
        let mut sent = 0;
        while sent < WINDOW as usize + CHUNK {
            from_agent(&s, 1, Frame::Data(Bytes::from(vec![1u8; CHUNK])));
            sent += CHUNK;
        }
        assert_eq!(s.streams().len(), 1, "still within the window");
        from_agent(&s, 1, Frame::Data(Bytes::from_static(b"!")));
        assert!(s.streams().is_empty());
        let to_agent = settled(&mut rx).await;
        assert!(
            matches!(&to_agent[..], [Frame::Reset(r)] if r.code == "flow_control"),
            "{to_agent:?}"
        );
        // The client gets what was in the window, then the reset.
        let mut taken = 0;
        loop {
            match next_chunk(&mut st).await {
                pb::proxy_chunk::Chunk::Response(_) => {}
                pb::proxy_chunk::Chunk::Data(d) => taken += d.len(),
                pb::proxy_chunk::Chunk::Reset(r) => {
                    assert_eq!(r.code, "flow_control");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(taken, WINDOW as usize + CHUNK);
        assert!(st.next().await.is_none());
    }

    #[tokio::test]
    async fn a_whole_answer_in_the_head_is_split_for_a_client_that_wants_it_so() {
        for accept_inline in [true, false] {
            let (s, mut rx) = session(true);
            let (mut st, _client) = open(&s, head(true, b"", accept_inline));
            next_frame(&mut rx).await.unwrap();
            from_agent(&s, 1, response_head(true, b"body"));
            assert!(s.streams().is_empty());
            let pb::proxy_chunk::Chunk::Response(h) = next_chunk(&mut st).await else {
                panic!("head first")
            };
            if accept_inline {
                assert!(h.end);
                assert_eq!(&h.body[..], b"body");
            } else {
                assert!(!h.end && h.body.is_empty());
                assert!(
                    matches!(next_chunk(&mut st).await, pb::proxy_chunk::Chunk::Data(d) if &d[..] == b"body")
                );
                assert!(matches!(
                    next_chunk(&mut st).await,
                    pb::proxy_chunk::Chunk::End(true)
                ));
            }
            assert!(st.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn a_client_that_goes_away_resets_the_agent_side() {
        let (s, mut rx) = session(true);
        let (st, client) = open(&s, head(false, b"", true));
        next_frame(&mut rx).await.unwrap();
        client.send(data(10)).unwrap();
        assert_eq!(data_bytes(&data_frames(&mut rx, 10).await), 10);
        drop(st);
        assert!(s.streams().is_empty());
        let f = settled(&mut rx).await;
        assert!(
            matches!(&f[..], [Frame::Reset(r)] if r.code == "cancelled"),
            "{f:?}"
        );
        // A request body that fails (the caller's stream broke) resets it too.
        let (_st, client) = open(&s, head(false, b"", true));
        next_frame(&mut rx).await.unwrap();
        client.send(Err(Status::cancelled("gone"))).unwrap();
        let f = next_frames(&mut rx).await;
        assert!(
            matches!(&f[..], [Frame::Reset(r)] if r.code == "cancelled"),
            "{f:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_dropped_without_an_end_answers_a_reset() {
        let (s, mut rx) = session(true);
        let (mut st, _client) = open(&s, head(true, b"", true));
        next_frame(&mut rx).await.unwrap();
        // The slot goes without a word (the session's end sends its own reset
        // first; this is what the client sees if it ever does not).
        s.streams().clear();
        let pb::proxy_chunk::Chunk::Reset(r) = next_chunk(&mut st).await else {
            panic!("a reset")
        };
        assert_eq!(r.code, "agent_disconnected");
        assert!(st.next().await.is_none());
    }

    #[tokio::test]
    async fn frames_for_unknown_streams_are_ignored() {
        let (s, mut rx) = session(true);
        from_agent(&s, 42, Frame::Data(Bytes::from_static(b"x")));
        from_agent(&s, 42, Frame::WindowUpdate(10));
        from_agent(&s, 42, Frame::End(true));
        assert!(settled(&mut rx).await.is_empty());
        assert!(s.streams().is_empty());
    }
}
