//! Shared cache and event bus.
//!
//! With `REDIS_URL` both go through Redis so every replica sees the same counters and
//! every replica hears every invalidation; without it they are in-process. Redis is
//! an accelerator, never the system of record: when it fails, reads fall back (a miss),
//! counters fall back to this process, and events still reach local subscribers.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lattice_proto::events::Event;
use redis::AsyncCommands as _;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

const BUS_PREFIX: &str = "lattice:bus:";
const KEY_PREFIX: &str = "lattice:";

/// The receiving end of one event type's channel.
#[derive(Debug)]
pub struct Listener<E> {
    rx: broadcast::Receiver<Bytes>,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> Listener<E> {
    /// The next event. A message that does not decode as `E` (a replica of another
    /// version) is logged and skipped.
    pub async fn recv(&mut self) -> Result<E, broadcast::error::RecvError> {
        loop {
            let bytes = self.rx.recv().await?;
            match E::decode(bytes) {
                Ok(event) => return Ok(event),
                Err(err) => {
                    tracing::warn!(%err, channel = E::CHANNEL, "undecodable event on the bus; skipped");
                }
            }
        }
    }
}

/// Cache and bus handle; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Option<redis::aio::ConnectionManager>,
    local: moka::sync::Cache<String, (Arc<Vec<u8>>, Instant)>,
    counters: moka::sync::Cache<String, Arc<Mutex<(u64, Instant)>>>,
    channels: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    /// Identifies this process's own messages coming back from Redis.
    origin: String,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("redis", &self.inner.redis.is_some())
            .finish()
    }
}

impl Cache {
    /// An in-process cache and bus (embedded mode).
    pub fn local() -> Self {
        Self::build(None)
    }

    fn build(redis: Option<redis::aio::ConnectionManager>) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis,
                local: moka::sync::Cache::builder().max_capacity(100_000).build(),
                counters: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_idle(Duration::from_secs(3600))
                    .build(),
                channels: Mutex::new(HashMap::new()),
                origin: uuid::Uuid::now_v7().simple().to_string(),
            }),
        }
    }

    /// Connect to Redis at `url` and start the bus listener (a named task that runs
    /// until `shutdown`, reconnecting with backoff). `ca_pem`: the CA certificates
    /// (PEM) a `rediss://` server's certificate must chain to, instead of the
    /// system's trusted roots.
    pub async fn redis(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = match ca_pem {
            None => redis::Client::open(url),
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            ),
        }
        .map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connect to redis: timed out"))?
        .map_err(|e| anyhow::anyhow!("connect to redis: {e}"))?;
        let cache = Self::build(Some(manager));
        let listener = cache.clone();
        tokio::spawn(async move { listener.listen_redis(client, shutdown).await });
        Ok(cache)
    }

    /// Whether Redis is configured.
    pub fn is_shared(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// Check Redis answers (for readiness). Always fine when Redis is not configured.
    pub async fn ping(&self) -> Result<(), String> {
        match &self.inner.redis {
            None => Ok(()),
            Some(conn) => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Read a cached value. A Redis failure reads as a miss.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.inner.redis {
            Some(conn) => {
                let mut conn = conn.clone();
                match conn
                    .get::<_, Option<Vec<u8>>>(format!("{KEY_PREFIX}{key}"))
                    .await
                {
                    Ok(v) => v,
                    Err(err) => {
                        tracing::debug!(%err, "redis get failed; treating as a miss");
                        None
                    }
                }
            }
            None => {
                let (value, expires) = self.inner.local.get(key)?;
                (Instant::now() < expires).then(|| value.as_ref().clone())
            }
        }
    }

    /// Store a value for `ttl`. A Redis failure is logged and ignored.
    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        match &self.inner.redis {
            Some(conn) => {
                let mut conn = conn.clone();
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                if let Err(err) = conn
                    .pset_ex::<_, _, ()>(format!("{KEY_PREFIX}{key}"), value, ms)
                    .await
                {
                    tracing::debug!(%err, "redis set failed; ignoring");
                }
            }
            None => {
                self.inner.local.insert(
                    key.to_owned(),
                    (Arc::new(value.to_vec()), Instant::now() + ttl),
                );
            }
        }
    }

    /// Remove a value.
    pub async fn delete(&self, key: &str) {
        self.inner.local.invalidate(key);
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            if let Err(err) = conn.del::<_, ()>(format!("{KEY_PREFIX}{key}")).await {
                tracing::debug!(%err, "redis del failed; ignoring");
            }
        }
    }

    /// Increment a counter that expires `window` after its first increment; returns the
    /// new count. Used for throttling. Falls back to a local counter when Redis fails.
    pub async fn incr(&self, key: &str, window: Duration) -> u64 {
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            let full = format!("{KEY_PREFIX}ctr:{key}");
            let ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX).max(1);
            // One script (any Redis version): the first increment of a window sets its expiry.
            let res: redis::RedisResult<u64> = redis::cmd("EVAL")
                .arg("local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return n")
                .arg(1)
                .arg(&full)
                .arg(ms)
                .query_async(&mut conn)
                .await;
            match res {
                Ok(count) => return count,
                Err(err) => tracing::debug!(%err, "redis incr failed; counting locally"),
            }
        }
        let now = Instant::now();
        let slot = self
            .inner
            .counters
            .get_with(key.to_owned(), || Arc::new(Mutex::new((0, now + window))));
        let mut guard = slot
            .lock()
            .expect("counter mutex is never poisoned: no panics while held");
        if now >= guard.1 {
            *guard = (0, now + window);
        }
        guard.0 += 1;
        guard.0
    }

    /// Give back one count of a counter (never below zero).
    pub async fn decr(&self, key: &str) {
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            let full = format!("{KEY_PREFIX}ctr:{key}");
            // DECR only an existing counter, and not below zero.
            let res: redis::RedisResult<i64> = redis::cmd("EVAL")
                .arg("local v = redis.call('GET', KEYS[1]) if v and tonumber(v) > 0 then return redis.call('DECR', KEYS[1]) end return 0")
                .arg(1)
                .arg(&full)
                .query_async(&mut conn)
                .await;
            match res {
                Ok(_) => return,
                Err(err) => tracing::debug!(%err, "redis decr failed; adjusting the local counter"),
            }
        }
        if let Some(slot) = self.inner.counters.get(key) {
            let mut guard = slot
                .lock()
                .expect("counter mutex is never poisoned: no panics while held");
            guard.0 = guard.0.saturating_sub(1);
        }
    }

    /// The current value of a counter (0 when absent or expired).
    pub async fn count(&self, key: &str) -> u64 {
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            match conn
                .get::<_, Option<u64>>(format!("{KEY_PREFIX}ctr:{key}"))
                .await
            {
                Ok(v) => return v.unwrap_or(0),
                Err(err) => tracing::debug!(%err, "redis get failed; reading local counter"),
            }
        }
        match self.inner.counters.get(key) {
            Some(slot) => {
                let guard = slot
                    .lock()
                    .expect("counter mutex is never poisoned: no panics while held");
                if Instant::now() < guard.1 { guard.0 } else { 0 }
            }
            None => 0,
        }
    }

    /// Reset a counter.
    pub async fn reset(&self, key: &str) {
        self.inner.counters.invalidate(key);
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            let _ = conn.del::<_, ()>(format!("{KEY_PREFIX}ctr:{key}")).await;
        }
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Bytes> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .expect("bus mutex is never poisoned");
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(1024).0)
            .clone()
    }

    /// Listen for `E` events. A lagging listener sees `RecvError::Lagged` and should
    /// treat it as "anything may have changed".
    pub fn listen<E: Event>(&self) -> Listener<E> {
        Listener {
            rx: self.sender(E::CHANNEL).subscribe(),
            _event: PhantomData,
        }
    }

    /// Announce `event` to every listener in this process and, with Redis, in every
    /// other replica.
    pub async fn announce<E: Event>(&self, event: &E) {
        let message = Bytes::from(event.encode_to_vec());
        let _ = self.sender(E::CHANNEL).send(message.clone());
        if let Some(conn) = &self.inner.redis {
            let mut conn = conn.clone();
            let mut payload = Vec::with_capacity(self.inner.origin.len() + 1 + message.len());
            payload.extend_from_slice(self.inner.origin.as_bytes());
            payload.push(b'|');
            payload.extend_from_slice(&message);
            if let Err(err) = conn
                .publish::<_, _, ()>(format!("{BUS_PREFIX}{}", E::CHANNEL), payload)
                .await
            {
                tracing::warn!(%err, channel = E::CHANNEL, "redis publish failed; other replicas rely on cache expiry");
            }
        }
    }

    async fn listen_redis(self, client: redis::Client, shutdown: CancellationToken) {
        use futures::StreamExt as _;
        let mut backoff = Duration::from_millis(200);
        loop {
            let attempt = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(format!("{BUS_PREFIX}*")).await?;
                tracing::debug!("event bus subscribed to redis");
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    let channel = msg
                        .get_channel_name()
                        .trim_start_matches(BUS_PREFIX)
                        .to_owned();
                    let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                        continue;
                    };
                    let Some(split) = payload.iter().position(|b| *b == b'|') else {
                        continue;
                    };
                    if &payload[..split] != self.inner.origin.as_bytes() {
                        let message = Bytes::copy_from_slice(&payload[split + 1..]);
                        let _ = self.sender(&channel).send(message);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                res = attempt => {
                    match res {
                        Ok(()) => tracing::warn!("redis event bus connection closed; reconnecting"),
                        Err(err) => tracing::warn!(%err, "redis event bus failed; reconnecting"),
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn caches() -> Vec<(Cache, Option<Cache>, CancellationToken)> {
        let mut out = vec![(Cache::local(), None, CancellationToken::new())];
        match std::env::var("LATTICE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => {
                let token = CancellationToken::new();
                let a = Cache::redis(&url, None, token.clone())
                    .await
                    .expect("connect LATTICE_TEST_REDIS_URL");
                let b = Cache::redis(&url, None, token.clone())
                    .await
                    .expect("connect LATTICE_TEST_REDIS_URL");
                out.push((a, Some(b), token));
            }
            _ => assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but LATTICE_TEST_REDIS_URL is not set"
            ),
        }
        out
    }

    #[tokio::test]
    async fn values_expire_and_counters_count() {
        for (cache, _, _) in caches().await {
            let key = format!("k-{}", uuid::Uuid::now_v7());
            assert_eq!(cache.get(&key).await, None);
            cache.set(&key, b"v", Duration::from_millis(300)).await;
            assert_eq!(cache.get(&key).await.as_deref(), Some(&b"v"[..]));
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(cache.get(&key).await, None, "shared={}", cache.is_shared());
            assert_eq!(cache.incr(&key, Duration::from_secs(5)).await, 1);
            assert_eq!(cache.incr(&key, Duration::from_secs(5)).await, 2);
            cache.reset(&key).await;
            assert_eq!(cache.incr(&key, Duration::from_secs(5)).await, 1);
        }
    }

    #[tokio::test]
    async fn events_reach_local_and_remote_listeners() {
        use lattice_proto::events::v1::TasksRunnable;
        for (a, b, token) in caches().await {
            let mut local = a.listen::<TasksRunnable>();
            let mut remote = b.as_ref().map(|b| b.listen::<TasksRunnable>());
            // Give the Redis listeners time to subscribe.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let event = TasksRunnable {
                node_id: "node-1".into(),
                kind: Some("exec".into()),
            };
            a.announce(&event).await;
            assert_eq!(local.recv().await.unwrap(), event);
            if let Some(rx) = remote.as_mut() {
                let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
                assert_eq!(got.expect("remote event within 5s").unwrap(), event);
            }
            token.cancel();
        }
    }

    /// A private CA (as Memorystore's): `rediss://` with `redis_ca_file` connects to a
    /// real Redis serving TLS, and without it the certificate is refused.
    #[tokio::test]
    async fn rediss_with_a_private_ca() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let Ok(server) = which("redis-server") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but redis-server is not installed"
            );
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::new(ca_params, &ca_key))
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_file = write("ca.pem", ca.pem());
        let cert_file = write("server.pem", cert.pem());
        let key_file = write("server.key", key.serialize_pem());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = tokio::process::Command::new(server)
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_file)
            .arg("--tls-key-file")
            .arg(&key_file)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("rediss://127.0.0.1:{port}/");
        let ca_pem = std::fs::read(&ca_file).unwrap();
        let token = CancellationToken::new();
        let mut connected = None;
        for _ in 0..50 {
            match Cache::redis(&url, Some(ca_pem.clone()), token.clone()).await {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let cache = connected.expect("connect with the private CA");
        cache.ping().await.unwrap();
        cache.set("k", b"v", Duration::from_secs(5)).await;
        let other = Cache::redis(&url, Some(ca_pem), token.clone())
            .await
            .unwrap();
        assert_eq!(other.get("k").await.as_deref(), Some(&b"v"[..]));
        let refused = Cache::redis(&url, None, token.clone()).await;
        assert!(
            refused.is_err(),
            "the system roots must not trust a private CA"
        );
        token.cancel();
        child.kill().await.unwrap();
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/bin".into(), "/usr/sbin".into()])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or(())
    }
}
