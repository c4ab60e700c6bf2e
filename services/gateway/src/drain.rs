//! Early refusals over HTTP/2.
//!
//! A handler may answer before it reads a request's body (401 without a token, 403
//! for a read-only storage token, 413 past the body limit, 429). Over HTTP/1.1 hyper
//! then closes the connection and every client reads the answer. Over HTTP/2 the
//! stream is reset instead (`RST_STREAM(NO_ERROR)`, RFC 9113 §8.1) while the client
//! may still be sending; clients built on nghttp2 before curl 8 (Debian 12's curl
//! 7.88 among them) treat that reset of an upload as a failure and never show the
//! status. So a request body that is dropped unread is read to its end here, in the
//! background, bounded in bytes and time: the client finishes its upload, reads the
//! answer that was already sent, and the stream closes cleanly.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// At most this much of an unread body is read and discarded.
pub const MAX_DRAIN_BYTES: u64 = 64 * 1024 * 1024;
/// A client that sends slower than this has its stream reset.
pub const MAX_DRAIN_TIME: Duration = Duration::from_secs(10);

/// An HTTP/2 request body that is drained when dropped before its end.
#[derive(Debug)]
pub struct DrainOnDrop {
    inner: Option<Incoming>,
}

impl DrainOnDrop {
    /// Wrap `body`.
    pub fn new(body: Incoming) -> Self {
        Self { inner: Some(body) }
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
