//! Process shutdown: one [`CancellationToken`] fired by SIGINT or SIGTERM.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled when the process receives SIGINT or SIGTERM.
/// The signal listener is a named task owned by the token: it ends when the token fires.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fired = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        // SIGHUP must never kill the server (its default action); where something can
        // be reloaded (TLS files) its own listener acts on it.
        #[cfg(unix)]
        let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tokio::select! {
            _ = ctrl_c => tracing::info!("received SIGINT, shutting down"),
            _ = term => tracing::info!("received SIGTERM, shutting down"),
            _ = fired.cancelled() => {}
        }
        fired.cancel();
    });
    token
}
