//! The outbox pusher (seed `003`'s async push): events written in the same
//! transaction as the change are POSTed to the webhook, at least once, each with a
//! stable `X-Lattice-Event-Id`, retried with backoff and jitter until accepted.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use lattice_core::time::now_ms;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, backoff_ms};

/// Where and how to push.
#[derive(Clone)]
pub struct PushTarget {
    /// Webhook URL.
    pub url: String,
    /// Extra header (`ASYNC_PUSH_AUTH_HEADER`); never logged.
    pub auth: Option<(HeaderName, HeaderValue)>,
    /// Delivered events are deleted after this long, ms.
    pub retention_ms: i64,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget")
            .field("url", &lattice_core::db::redact_url(&self.url))
            .field("auth", &self.auth.as_ref().map(|(n, _)| n.as_str()))
            .finish()
    }
}

/// Parse `ASYNC_PUSH_AUTH_HEADER`: `Name: value`, or a bare value for `Authorization`.
pub fn parse_auth_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let raw = raw.trim();
    let (name, value) = match raw.split_once(':') {
        Some((n, v))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            (n.trim(), v.trim())
        }
        _ => ("authorization", raw),
    };
    let name = HeaderName::try_from(name)
        .map_err(|_| "tasks.async_push_auth_header: not a valid header name".to_owned())?;
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| "tasks.async_push_auth_header: not a valid header value".to_owned())?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// Push due events until `shutdown`.
pub async fn run_pusher(
    store: Store,
    target: PushTarget,
    client: reqwest::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut last_prune = 0;
    loop {
        let sent = match push_once(&store, &target, &client).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "outbox: could not read due events");
                0
            }
        };
        let now = now_ms();
        if now - last_prune > 3_600_000 {
            last_prune = now;
            if let Err(err) = store.outbox_prune(now - target.retention_ms).await {
                tracing::warn!(error = %err, "outbox: prune failed");
            }
        }
        let pause = if sent > 0 {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Deliver one batch of due events; returns how many were attempted.
pub async fn push_once(
    store: &Store,
    target: &PushTarget,
    client: &reqwest::Client,
) -> anyhow::Result<usize> {
    let due = store.outbox_due(32, 60_000).await?;
    let n = due.len();
    for ev in due {
        let mut req = client
            .post(&target.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-lattice-event-id", &ev.id)
            .header("x-lattice-event-type", &ev.topic)
            .timeout(Duration::from_secs(10))
            .body(ev.payload.clone());
        if let Some((name, value)) = &target.auth {
            req = req.header(name.clone(), value.clone());
        }
        let outcome = match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("webhook answered {}", resp.status())),
            Err(err) => Err(format!(
                "webhook unreachable: {}",
                lattice_core::error::DisplayChain(&err)
            )),
        };
        match outcome {
            Ok(()) => store.outbox_delivered(&ev.id).await?,
            Err(error) => {
                let next = now_ms() + backoff_ms(1_000, ev.attempts + 1).min(3_600_000);
                tracing::warn!(event = %ev.id, attempts = ev.attempts + 1, %error, "outbox: delivery failed; will retry");
                store.outbox_failed(&ev.id, next, &error).await?;
            }
        }
    }
    Ok(n)
}
