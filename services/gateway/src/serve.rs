//! The accept loop: TLS (optional), then HTTP/1.1 or HTTP/2 (h2 by ALPN, h2c by
//! preface) on one port, REST and gRPC alike; graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::caller::PeerAddr;

/// Where and how [`serve`] listens, and when it stops.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// TLS on accepted connections (None: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Fires when shutdown starts.
    pub shutdown: CancellationToken,
    /// Fired by [`serve`] when it stops accepting and starts draining.
    pub draining: CancellationToken,
    /// How long to keep accepting, not ready, after `shutdown` fires.
    pub grace: Duration,
    /// How long open connections may take to finish after that.
    pub drain: Duration,
}

/// Serve `app` on `listen.socket` until `listen.shutdown` fires, then (after the
/// grace period) stop accepting and drain open connections for at most
/// `listen.drain` (`listen.draining` fires when that starts).
pub async fn serve(listen: Listener, app: crate::edge::Edge) -> anyhow::Result<()> {
    let Listener {
        socket: listener,
        tls,
        shutdown,
        draining,
        grace,
        drain,
    } = listen;
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled(), if deadline.is_none() => {
                if grace.is_zero() {
                    break;
                }
                // Not ready any more (readiness reads the same token); keep serving
                // while load balancers notice.
                tracing::info!(?grace, "shutting down: not ready; still accepting during the grace period");
                deadline = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded by is_some")).await }, if deadline.is_some() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            let app = app.clone();
            async move {
                // An HTTP/2 body refused before it is read is drained (see `drain`).
                if req.version() != http::Version::HTTP_2
                    || hyper::body::Body::is_end_stream(req.body())
                {
                    let req = req.map(axum::body::Body::new);
                    return Ok::<_, Infallible>(
                        app.oneshot(req).await.unwrap_or_else(|e| match e {}),
                    );
                }
                let (parts, body) = req.into_parts();
                let (body, unread) = crate::drain::DrainOnDrop::new(body);
                let req = http::Request::from_parts(parts, axum::body::Body::new(body));
                let answer = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                unread.settle(answer.status()).await;
                Ok(answer)
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        // One task per connection; it ends with the connection or the drain deadline.
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%err, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(err) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%err, %peer, "connection ended with an error");
                    }
                }
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(err) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%err, %peer, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    draining.cancel();
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain deadline; closing them"
        );
    }
    Ok(())
}
