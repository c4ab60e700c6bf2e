//! Early refusals over HTTP/2.
//!
//! A handler may answer before it reads a request's body (401 without a token, 403
//! for a read-only storage token, 413 past the body limit, 429). Over HTTP/1.1 hyper
//! then closes the connection and every client reads the answer. Over HTTP/2 two
//! things go wrong if the answer leaves while the client is still uploading:
//!
//! - the stream is reset (`RST_STREAM(NO_ERROR)`, RFC 9113 §8.1), and clients built
//!   on nghttp2 before curl 8 (Debian 12's curl 7.88 among them) treat that reset of
//!   an upload as a failure and never show the status;
//! - curl stops its upload as soon as it sees an error status, with an empty
//!   `END_STREAM` frame short of its `content-length`; the server must answer that
//!   with `RST_STREAM(PROTOCOL_ERROR)` (RFC 9113 §8.1.1), and when the reset
//!   overtakes the answer's body (the headers were already out), the client sees
//!   the protocol error instead of the answer.
//!
//! So when the handler drops a request body unread and refuses the request (4xx or
//! 5xx), the body is read to its end before the answer is sent, bounded in bytes and
//! time ([`MAX_DRAIN_BYTES`], [`MAX_DRAIN_TIME`]): the client finishes its upload
//! cleanly, then reads the answer. A body left unread by a successful answer (a
//! gRPC call that stopped reading, a streamed response) or dropped after its answer
//! left is drained in the background instead, so that answer is never held.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// At most this much of an unread body is read and discarded.
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;
/// A client that sends slower than this has its stream reset.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

/// Where a body dropped unread waits for the answer's sender to drain it.
#[derive(Debug, Default)]
struct Slot {
    /// The answer has left: a body dropped now is drained in the background.
    answered: bool,
    body: Option<Incoming>,
}

/// The sender's side of a [`DrainOnDrop`]: drains what the handler left unread
/// before the answer goes out.
#[derive(Debug)]
pub struct Unread(Arc<Mutex<Slot>>);

impl Unread {
    /// Before `answer` leaves: if it refuses the request (4xx/5xx), read whatever the
    /// handler dropped unread (bounded) first; any other answer leaves at once and an
    /// unread body is drained in the background. From now on a dropped body is
    /// drained in the background.
    pub async fn settle(self, answer: http::StatusCode) {
        let body = {
            let mut slot = lock(&self.0);
            slot.answered = true;
            slot.body.take()
        };
        let Some(body) = body else { return };
        if answer.is_client_error() || answer.is_server_error() {
            let _ = tokio::time::timeout(MAX_DRAIN_TIME, drain(body)).await;
        } else {
            background(body);
        }
    }
}

/// Drain `body` in a task of its own.
fn background(body: Incoming) {
    // Outside a runtime (a test dropping a body) there is nothing to drain with.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Owned by nothing but its bounds: it ends at the body's end, after
    // MAX_DRAIN_BYTES or MAX_DRAIN_TIME, or when the connection goes away; errors
    // only end it (the answer has been sent).
    runtime.spawn(async move {
        let _ = tokio::time::timeout(MAX_DRAIN_TIME, drain(body)).await;
    });
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An HTTP/2 request body that is drained when dropped before its end.
#[derive(Debug)]
pub struct DrainOnDrop {
    inner: Option<Incoming>,
    slot: Arc<Mutex<Slot>>,
}

impl DrainOnDrop {
    /// Wrap `body`; the [`Unread`] half drains it before the answer if it is
    /// dropped unread.
    pub fn new(body: Incoming) -> (Self, Unread) {
        let slot = Arc::new(Mutex::new(Slot::default()));
        (
            Self {
                inner: Some(body),
                slot: slot.clone(),
            },
            Unread(slot),
        )
    }
}

impl Body for DrainOnDrop {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() || body.size_hint().lower() > MAX_DRAIN_BYTES {
            // Nothing left, or more than we would read: reset now.
            return;
        }
        {
            let mut slot = lock(&self.slot);
            if !slot.answered {
                // The answer has not left: its sender drains this first.
                slot.body = Some(body);
                return;
            }
        }
        background(body);
    }
}

async fn drain(mut body: Incoming) {
    use http_body_util::BodyExt as _;
    let mut read = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > MAX_DRAIN_BYTES {
                return;
            }
        }
    }
}
