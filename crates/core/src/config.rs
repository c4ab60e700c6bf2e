//! Configuration: defaults, then `lattice.toml`, then `LATTICE_*` environment
//! variables (`__` nests: `LATTICE_GATEWAY__LISTEN`), then the conventional names
//! operators already set (`DATABASE_URL`, `REDIS_URL`, `PORT`, ...), then the command
//! line. One [`Config::validate`] reports every bad field by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where embedded state lives (SQLite files, objects, master.key, TLS material).
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `sqlite://<data_dir>/lattice.db`.
    pub database_url: Option<SecretString>,
    /// Max connections per pool.
    pub database_max_connections: u32,
    /// `redis://…`; without it cache and bus are in-process.
    pub redis_url: Option<SecretString>,
    /// PEM file of the CA that signs the Redis server's certificate (a private CA,
    /// such as Memorystore's); default: the system's trusted roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Apply pending migrations at start-up. Default: on for SQLite, off for Postgres
    /// (where `lattice-server migrate` is the release step).
    pub migrate_on_start: Option<bool>,
    /// `tracing` filter directive.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// OTLP/gRPC endpoint for traces.
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The master key (`LATTICE_MASTER_KEY` or `CUSTOMER_DATA_KEY`); default: the
    /// `master.key` file in the data dir.
    pub master_key: Option<SecretString>,
    /// Secret for internal principal JWTs (`JWT_SECRET`); default: derived from the master key.
    pub jwt_secret: Option<SecretString>,
    /// Secret for MFA challenge tokens (`MFA_TOKEN_SECRET`); default: derived from the master key.
    pub mfa_token_secret: Option<SecretString>,
    /// Password for the bootstrap `admin` user at first start; generated when unset.
    pub bootstrap_admin_password: Option<SecretString>,
    /// Where `/health`, `/ready` and `/metrics` are served in a process without the
    /// gateway (default `127.0.0.1:9464` there); with the gateway, an extra listener.
    pub ops_listen: Option<SocketAddr>,
    /// Gateway (public edge) settings.
    pub gateway: GatewayConfig,
    /// Identity service settings.
    pub identity: IdentityConfig,
    /// Storage service settings.
    pub storage: StorageConfig,
    /// Task queue, audit log and outbox settings.
    pub tasks: TasksConfig,
    /// Agent streams and proxy tunnel settings.
    pub tunnel: TunnelConfig,
    /// Policy service settings.
    pub policy: PolicyConfig,
}

/// Policy service settings (Cedar policies and decisions).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Internal gRPC listen address (never public).
    pub listen: SocketAddr,
    /// The policy service's address when it runs in another process
    /// (`http://host:port`); the gateway, tunnel, tasks and storage services ask it.
    pub url: Option<String>,
}

/// Tasks service settings (queue, audit log, outbox push).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Internal gRPC listen address (never public).
    pub listen: SocketAddr,
    /// The tasks service's address when it runs in another process
    /// (`http://host:port`); every other service sends its audit events there.
    pub url: Option<String>,
    /// A claimed task's lease; the agent's heartbeats extend it, seconds.
    pub lease_s: u64,
    /// Push outbox events to a webhook (`ASYNC_PUSH_ENABLED`).
    pub async_push_enabled: bool,
    /// Where events go (`ASYNC_PUSH_WEBHOOK_URL`).
    pub async_push_webhook_url: Option<String>,
    /// Sent with every push (`ASYNC_PUSH_AUTH_HEADER`): `Name: value`, or a bare
    /// value sent as `Authorization`.
    #[serde(skip_serializing)]
    pub async_push_auth_header: Option<SecretString>,
    /// Delivered outbox events are deleted after this long, seconds.
    pub outbox_retention_s: u64,
}

/// Tunnel service settings (agent streams, nodes, the proxy).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Internal gRPC listen address (never public).
    pub listen: SocketAddr,
    /// The tunnel service's address when it runs in another process (the gateway
    /// relays agent streams and proxied requests there).
    pub url: Option<String>,
    /// How other tunnel replicas reach this one (default `http://<listen>`).
    pub advertise_url: Option<String>,
    /// Agents heartbeat this often; three missed beats close the stream, seconds.
    pub heartbeat_interval_s: u64,
    /// Agents send a metrics sample this often, seconds.
    pub metrics_interval_s: u64,
    /// Metrics samples are kept this long, seconds.
    pub metrics_retention_s: u64,
    /// Log lines are kept this long, seconds.
    pub logs_retention_s: u64,
    /// Longest join token lifetime an operator may ask for, seconds.
    pub join_token_max_ttl_s: u64,
    /// Most proxied requests and port forwards open at once to one node (each holds
    /// a task and a connection on the node); more are refused with 429.
    pub max_proxy_streams: u32,
    /// Hosts an operator may send agents to (`POST /api/v1/nodes/{id}/reconnect`
    /// with a `url`): the deployment's own gateway names. Empty: agents can only be
    /// asked to reconnect to the server they use.
    #[serde(default)]
    pub agent_hosts: Vec<String>,
}

/// Storage service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Internal gRPC listen address (never public).
    pub listen: SocketAddr,
    /// Where blobs live: `s3://bucket/prefix`, `az://container/prefix`,
    /// `gs://bucket/prefix` or `file:///dir`; default: `<data_dir>/objects`.
    pub objects_url: Option<String>,
    /// Largest deployment (sum of its files), bytes.
    pub max_deployment_bytes: u64,
}

/// TLS mode of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Generate a CA and server certificate into the data dir.
    SelfSigned,
    /// The operator's PEM certificate and key, reloaded on SIGHUP.
    Files,
    /// Plain HTTP/1.1 and h2c, behind a TLS-terminating proxy.
    Off,
}

/// Gateway settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public listen address.
    pub listen: SocketAddr,
    /// TLS mode.
    pub tls: TlsMode,
    /// PEM certificate chain (tls = files).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (tls = files).
    pub tls_key_file: Option<PathBuf>,
    /// Extra DNS names / IPs for the self-signed certificate.
    pub tls_san: Vec<String>,
    /// Identity service address when it runs in another process (`http://host:port`).
    pub identity_url: Option<String>,
    /// The URL clients use to reach the gateway (behind a TLS-terminating proxy:
    /// `https://lattice.example.com`). An `https` URL makes cookies `Secure` and
    /// turns on HSTS even when `tls = "off"`.
    pub public_url: Option<String>,
    /// Request timeout, seconds.
    pub request_timeout_s: u64,
    /// Max request body, bytes.
    pub body_limit_bytes: usize,
    /// Trust `X-Forwarded-For` from the peer (set when behind a reverse proxy).
    pub trust_forwarded_for: bool,
    /// How long a verified credential is cached by the gateway, seconds.
    pub auth_cache_ttl_s: u64,
    /// Storage service address when it runs in another process (`http://host:port`).
    pub storage_url: Option<String>,
    /// Host names that serve the API and dashboard. When set (or `public_url` is),
    /// a request for any other host without an enabled binding answers 404; when
    /// empty, unbound hosts get the API.
    pub api_hosts: Vec<String>,
    /// Memory for static-site blobs cached by the gateway, bytes.
    pub static_cache_bytes: u64,
    /// Largest static-site upload (archive or single object), bytes.
    pub upload_limit_bytes: usize,
    /// On shutdown, keep accepting for this long while `/ready` answers 503, so load
    /// balancers take the instance out first, seconds.
    pub shutdown_grace_s: u64,
}

/// Identity service settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Internal gRPC listen address (never public).
    pub listen: SocketAddr,
    /// Session idle timeout, seconds.
    pub session_idle_timeout_s: u64,
    /// Session absolute lifetime, seconds.
    pub session_max_age_s: u64,
    /// Failed logins before a user is locked.
    pub lockout_threshold: u32,
    /// Lockout duration, seconds.
    pub lockout_duration_s: u64,
    /// Failed logins per client IP per window before 429.
    pub ip_failure_limit: u32,
    /// The per-IP window, seconds.
    pub ip_failure_window_s: u64,
    /// argon2id memory cost, KiB.
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// Concurrent password hashes (each takes `argon2_memory_kib`).
    pub argon2_max_concurrent: usize,
    /// Issuer name shown by authenticator apps.
    pub mfa_issuer: String,
}

#[derive(Serialize)]
struct Defaults {
    data_dir: PathBuf,
    database_max_connections: u32,
    log_level: String,
    log_format: String,
    gateway: GatewayConfig,
    identity: IdentityConfig,
    storage: StorageConfig,
    tasks: TasksConfig,
    tunnel: TunnelConfig,
    policy: PolicyConfig,
}

fn defaults() -> Defaults {
    Defaults {
        data_dir: PathBuf::from("./lattice-data"),
        database_max_connections: 16,
        log_level: "info".into(),
        log_format: "text".into(),
        gateway: GatewayConfig {
            listen: "127.0.0.1:8088".parse().expect("literal address"),
            tls: TlsMode::SelfSigned,
            tls_cert_file: None,
            tls_key_file: None,
            tls_san: Vec::new(),
            identity_url: None,
            public_url: None,
            request_timeout_s: 30,
            body_limit_bytes: 1024 * 1024,
            trust_forwarded_for: false,
            auth_cache_ttl_s: 30,
            storage_url: None,
            api_hosts: Vec::new(),
            static_cache_bytes: 128 * 1024 * 1024,
            upload_limit_bytes: 64 * 1024 * 1024,
            shutdown_grace_s: 0,
        },
        identity: IdentityConfig {
            listen: "127.0.0.1:8091".parse().expect("literal address"),
            session_idle_timeout_s: 30 * 60,
            session_max_age_s: 12 * 3600,
            lockout_threshold: 5,
            lockout_duration_s: 15 * 60,
            ip_failure_limit: 20,
            ip_failure_window_s: 15 * 60,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            argon2_max_concurrent: 4,
            mfa_issuer: "Lattice".into(),
        },
        storage: StorageConfig {
            listen: "127.0.0.1:8092".parse().expect("literal address"),
            objects_url: None,
            max_deployment_bytes: 256 * 1024 * 1024,
        },
        tasks: TasksConfig {
            listen: "127.0.0.1:8093".parse().expect("literal address"),
            url: None,
            lease_s: 30,
            async_push_enabled: false,
            async_push_webhook_url: None,
            async_push_auth_header: None,
            outbox_retention_s: 7 * 24 * 3600,
        },
        tunnel: TunnelConfig {
            listen: "127.0.0.1:8094".parse().expect("literal address"),
            url: None,
            advertise_url: None,
            heartbeat_interval_s: 10,
            metrics_interval_s: 15,
            metrics_retention_s: 24 * 3600,
            logs_retention_s: 7 * 24 * 3600,
            join_token_max_ttl_s: 7 * 24 * 3600,
            max_proxy_streams: 1024,
            agent_hosts: Vec::new(),
        },
        policy: PolicyConfig {
            listen: "127.0.0.1:8095".parse().expect("literal address"),
            url: None,
        },
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub gateway_listen: Option<String>,
    /// `--tls`.
    pub gateway_tls: Option<String>,
    /// `--identity-listen`.
    pub identity_listen: Option<String>,
    /// `--identity-url`.
    pub identity_url: Option<String>,
    /// `--storage-listen`.
    pub storage_listen: Option<String>,
    /// `--storage-url`.
    pub storage_url: Option<String>,
    /// `--tasks-listen`.
    pub tasks_listen: Option<String>,
    /// `--tasks-url`.
    pub tasks_url: Option<String>,
    /// `--tunnel-listen`.
    pub tunnel_listen: Option<String>,
    /// `--tunnel-url`.
    pub tunnel_url: Option<String>,
    /// `--policy-listen`.
    pub policy_listen: Option<String>,
    /// `--policy-url`.
    pub policy_url: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--ops-listen`.
    pub ops_listen: Option<String>,
}

impl Overrides {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.data_dir {
            out.push(("data_dir", v.display().to_string()));
        }
        for (key, value) in [
            ("gateway.listen", &self.gateway_listen),
            ("gateway.tls", &self.gateway_tls),
            ("identity.listen", &self.identity_listen),
            ("gateway.identity_url", &self.identity_url),
            ("storage.listen", &self.storage_listen),
            ("gateway.storage_url", &self.storage_url),
            ("tasks.listen", &self.tasks_listen),
            ("tasks.url", &self.tasks_url),
            ("tunnel.listen", &self.tunnel_listen),
            ("tunnel.url", &self.tunnel_url),
            ("policy.listen", &self.policy_listen),
            ("policy.url", &self.policy_url),
            ("log_level", &self.log_level),
            ("ops_listen", &self.ops_listen),
        ] {
            if let Some(v) = value {
                out.push((key, v.clone()));
            }
        }
        out
    }
}

/// Every bad field, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Load from every source. `env` is the process environment (a parameter so tests
    /// need not touch the real one); `file` is `--config`, or `lattice.toml` if present.
    pub fn load(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(defaults()));
        // Where each key was last set, for error messages.
        let mut origins: Vec<(String, String)> = Vec::new();
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError(vec![format!(
                    "config file {} does not exist",
                    path.display()
                )]));
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("lattice.toml").exists() => {
                figment = figment.merge(Toml::file_exact("lattice.toml"))
            }
            None => {}
        }
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("LATTICE_") else {
                continue;
            };
            if rest.starts_with("TEST_") || NOT_SERVER_CONFIG.contains(&rest) {
                continue;
            }
            let key = rest.to_lowercase().replace("__", ".");
            origins.push((key.clone(), format!("environment variable {var}")));
            figment = figment.merge((key.clone(), env_value(&key, value)));
        }
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let conventional = [
            ("DATABASE_URL", "database_url"),
            ("REDIS_URL", "redis_url"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint"),
            ("JWT_SECRET", "jwt_secret"),
            ("MFA_TOKEN_SECRET", "mfa_token_secret"),
            ("CUSTOMER_DATA_KEY", "master_key"),
            ("MFA_ISSUER", "identity.mfa_issuer"),
            ("ASYNC_PUSH_ENABLED", "tasks.async_push_enabled"),
            ("ASYNC_PUSH_WEBHOOK_URL", "tasks.async_push_webhook_url"),
            ("ASYNC_PUSH_AUTH_HEADER", "tasks.async_push_auth_header"),
        ];
        for (var, key) in conventional {
            let already = env
                .iter()
                .any(|(k, _)| k == &format!("LATTICE_{}", key.to_uppercase().replace('.', "__")));
            if let (Some(value), false) = (get(var), already)
                && !value.is_empty()
            {
                origins.push((key.to_owned(), format!("environment variable {var}")));
                let value = if key == "tasks.async_push_enabled" {
                    // Seed 003 style flags: 1/0, true/false, yes/no, on/off.
                    match value.to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" | "on" => figment::value::Value::from(true),
                        "0" | "false" | "no" | "off" => figment::value::Value::from(false),
                        _ => figment::value::Value::from(value),
                    }
                } else {
                    env_value(key, &value)
                };
                figment = figment.merge((key, value));
            }
        }
        // LOG_LEVEL, then RUST_LOG (the more specific directive) when set.
        let explicit_log_level = get("LATTICE_LOG_LEVEL").is_some_and(|v| !v.is_empty());
        for var in ["LOG_LEVEL", "RUST_LOG"] {
            if explicit_log_level {
                break;
            }
            if let Some(value) = get(var).filter(|v| !v.is_empty()) {
                origins.push(("log_level".into(), format!("environment variable {var}")));
                figment = figment.merge(("log_level", value));
            }
        }
        let mut errors = Vec::new();
        if let Some(port) = get("PORT").filter(|v| !v.is_empty()) {
            match port.parse::<u16>() {
                Ok(port) => {
                    let host = figment
                        .extract_inner::<SocketAddr>("gateway.listen")
                        .map(|a| a.ip())
                        .unwrap_or_else(|_| "127.0.0.1".parse().expect("literal"));
                    origins.push(("gateway.listen".into(), "environment variable PORT".into()));
                    figment =
                        figment.merge(("gateway.listen", SocketAddr::new(host, port).to_string()));
                }
                Err(_) => errors.push(format!("PORT: {port:?} is not a port number")),
            }
        }
        for (key, value) in overrides.pairs() {
            origins.push((key.to_owned(), "command line".to_owned()));
            figment = figment.merge((key, env_value(key, &value)));
        }
        // figment stops at the first bad value; put the default back in its place and
        // extract again, so one run names every bad field.
        let config: Option<Config> = loop {
            match figment.extract::<Config>() {
                Ok(c) => break Some(c),
                Err(err) => {
                    let path = err.path.join(".");
                    let origin = origins
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == path)
                        .map(|(_, o)| o.as_str());
                    errors.push(describe(&err, origin));
                    let fallback = Figment::from(Serialized::defaults(defaults()));
                    match fallback.find_value(&path) {
                        Ok(default) if !path.is_empty() && errors.len() < 64 => {
                            figment = figment.merge((path, default));
                        }
                        _ => break None,
                    }
                }
            }
        };
        let Some(config) = config.filter(|_| errors.is_empty()) else {
            return Err(ConfigError(errors));
        };
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        config.validate()?;
        Ok(config)
    }

    /// Check values that parse but make no sense; reports all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if let Some(url) = &self.database_url {
            let u = url.expose_secret();
            if !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
            {
                errors.push(format!(
                    "database_url: unsupported scheme in {:?} (expected sqlite:// or postgres://)",
                    crate::db::redact_url(u)
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            let u = url.expose_secret();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                errors.push("redis_url: expected redis:// or rediss://".into());
            }
        }
        if self.redis_ca_file.is_some()
            && !self
                .redis_url
                .as_ref()
                .is_some_and(|u| u.expose_secret().starts_with("rediss://"))
        {
            errors.push("redis_ca_file: needs a rediss:// redis_url (TLS)".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            errors.push(format!(
                "log_format: {:?} is not one of text, json",
                self.log_format
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            errors.push(format!("log_level: {e}"));
        }
        if self.database_max_connections == 0 {
            errors.push("database_max_connections: must be at least 1".into());
        }
        let g = &self.gateway;
        if g.tls == TlsMode::Files {
            if g.tls_cert_file.is_none() {
                errors.push("gateway.tls_cert_file: required when gateway.tls = \"files\"".into());
            }
            if g.tls_key_file.is_none() {
                errors.push("gateway.tls_key_file: required when gateway.tls = \"files\"".into());
            }
        }
        if g.request_timeout_s == 0 {
            errors.push("gateway.request_timeout_s: must be at least 1".into());
        }
        if g.body_limit_bytes < 1024 {
            errors.push("gateway.body_limit_bytes: must be at least 1024".into());
        }
        if let Some(url) = &g.identity_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "gateway.identity_url: {url:?} must start with http:// or https://"
            ));
        }
        if let Some(url) = &g.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "gateway.public_url: {url:?} must start with http:// or https://"
            ));
        }
        if let Some(url) = &g.storage_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!(
                "gateway.storage_url: {url:?} must start with http:// or https://"
            ));
        }
        if g.upload_limit_bytes < 1024 {
            errors.push("gateway.upload_limit_bytes: must be at least 1024".into());
        }
        if let Some(url) = &self.storage.objects_url {
            let known = [
                "s3://", "s3a://", "az://", "azure://", "abfs://", "abfss://", "gs://", "file://",
            ];
            if !known.iter().any(|k| url.starts_with(k)) {
                errors.push(format!(
                    "storage.objects_url: {url:?} must be an s3://, az://, gs:// or file:// URL"
                ));
            }
        }
        for (field, url) in [
            ("tasks.url", &self.tasks.url),
            ("tunnel.url", &self.tunnel.url),
            ("tunnel.advertise_url", &self.tunnel.advertise_url),
            ("policy.url", &self.policy.url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                errors.push(format!(
                    "{field}: {url:?} must start with http:// or https://"
                ));
            }
        }
        let t = &self.tasks;
        if t.lease_s < 2 {
            errors.push("tasks.lease_s: must be at least 2".into());
        }
        if t.async_push_enabled {
            match &t.async_push_webhook_url {
                None => errors.push(
                    "tasks.async_push_webhook_url: required when async push is enabled (ASYNC_PUSH_WEBHOOK_URL)"
                        .into(),
                ),
                Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                    errors.push(format!(
                        "tasks.async_push_webhook_url: {:?} must start with http:// or https://",
                        crate::db::redact_url(url)
                    ))
                }
                Some(_) => {}
            }
        }
        let tn = &self.tunnel;
        if tn.heartbeat_interval_s == 0 {
            errors.push("tunnel.heartbeat_interval_s: must be at least 1".into());
        }
        if tn.metrics_interval_s == 0 {
            errors.push("tunnel.metrics_interval_s: must be at least 1".into());
        }
        if tn.join_token_max_ttl_s < 60 {
            errors.push("tunnel.join_token_max_ttl_s: must be at least 60".into());
        }
        if tn.max_proxy_streams == 0 {
            errors.push("tunnel.max_proxy_streams: must be at least 1".into());
        }
        for h in &tn.agent_hosts {
            if h.is_empty()
                || (h.contains(['/', ':', '@', ' ']) && h.parse::<std::net::IpAddr>().is_err())
            {
                errors.push(format!(
                    "tunnel.agent_hosts: {h:?} is not a host name or IP address (no scheme or port)"
                ));
            }
        }
        let i = &self.identity;
        if i.ip_failure_limit == 0 {
            errors.push("identity.ip_failure_limit: must be at least 1".into());
        }
        if i.ip_failure_window_s == 0 {
            errors.push("identity.ip_failure_window_s: must be at least 1".into());
        }
        if i.lockout_duration_s == 0 {
            errors.push("identity.lockout_duration_s: must be at least 1".into());
        }
        if i.session_idle_timeout_s == 0 || i.session_idle_timeout_s > i.session_max_age_s {
            errors.push(
                "identity.session_idle_timeout_s: must be between 1 and identity.session_max_age_s"
                    .into(),
            );
        }
        if i.lockout_threshold == 0 {
            errors.push("identity.lockout_threshold: must be at least 1".into());
        }
        if i.argon2_memory_kib < 8 * i.argon2_parallelism.max(1) {
            errors.push("identity.argon2_memory_kib: must be at least 8 KiB per lane".into());
        }
        if i.argon2_iterations == 0 {
            errors.push("identity.argon2_iterations: must be at least 1".into());
        }
        if i.argon2_parallelism == 0 {
            errors.push("identity.argon2_parallelism: must be at least 1".into());
        }
        if i.argon2_max_concurrent == 0 {
            errors.push("identity.argon2_max_concurrent: must be at least 1".into());
        }
        if let Some(key) = &self.master_key
            && let Err(e) = crate::crypto::MasterKey::parse(key.expose_secret())
        {
            errors.push(e.to_string());
        }
        for (name, secret) in [
            ("jwt_secret", &self.jwt_secret),
            ("mfa_token_secret", &self.mfa_token_secret),
        ] {
            if let Some(s) = secret
                && s.expose_secret().len() < 32
            {
                errors.push(format!("{name}: must be at least 32 characters"));
            }
        }
        if let Some(p) = &self.bootstrap_admin_password
            && p.expose_secret().chars().count() < 12
        {
            errors.push("bootstrap_admin_password: must be at least 12 characters".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }

    /// The database URL in effect (explicit, or the embedded SQLite file).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("lattice.db").display()),
        }
    }

    /// Whether browsers reach the gateway over HTTPS (own TLS, or a proxy named by
    /// `gateway.public_url`): cookies get `Secure` and HSTS is sent.
    pub fn gateway_is_https(&self) -> bool {
        self.gateway.tls != TlsMode::Off
            || self
                .gateway
                .public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
    }

    /// Whether start-up applies migrations.
    pub fn migrate_on_start(&self) -> bool {
        self.migrate_on_start
            .unwrap_or_else(|| self.database_url().starts_with("sqlite:"))
    }
}

/// `LATTICE_*` variables that belong to the CLI or to flags, not to the server's
/// configuration; they may share an environment with the server.
const NOT_SERVER_CONFIG: &[&str] = &[
    "SERVICES",
    "TOKEN",
    "CONFIG",
    "USERNAME",
    "PASSWORD",
    "TOTP_CODE",
    "NEW_PASSWORD",
    "STORAGE_TOKEN",
    "TOTP_DISABLE_CODE",
    "AGENT_CONFIG",
    "AGENT_LOG",
    "AGENT_STATE_DIR",
    "JOIN_TOKEN",
    "SERVER",
];

/// Keys whose values stay strings even when they look like numbers or booleans.
const STRING_KEYS: &[&str] = &[
    "data_dir",
    "database_url",
    "redis_url",
    "redis_ca_file",
    "log_level",
    "log_format",
    "otel_exporter_otlp_endpoint",
    "master_key",
    "jwt_secret",
    "mfa_token_secret",
    "bootstrap_admin_password",
    "gateway.identity_url",
    "gateway.public_url",
    "gateway.storage_url",
    "storage.objects_url",
    "gateway.tls_cert_file",
    "gateway.tls_key_file",
    "identity.mfa_issuer",
    "tasks.url",
    "tunnel.url",
    "tunnel.advertise_url",
    "policy.url",
    "tasks.async_push_webhook_url",
    "tasks.async_push_auth_header",
];

fn env_value(key: &str, raw: &str) -> figment::value::Value {
    if STRING_KEYS.contains(&key) {
        figment::value::Value::from(raw.to_owned())
    } else {
        raw.parse()
            .unwrap_or_else(|never: std::convert::Infallible| match never {})
    }
}

fn describe(err: &figment::Error, origin: Option<&str>) -> String {
    let path = err.path.join(".");
    let detail = match &err.kind {
        figment::error::Kind::InvalidType(actual, expected) => {
            format!("expected {expected}, found {actual}")
        }
        figment::error::Kind::InvalidValue(actual, expected) => {
            format!("expected {expected}, found {actual}")
        }
        figment::error::Kind::UnknownField(field, _) => {
            return format!(
                "{}: unknown field",
                if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                }
            );
        }
        figment::error::Kind::UnknownVariant(v, expected) => {
            format!("{v:?} is not one of {}", expected.join(", "))
        }
        other => other.to_string(),
    };
    let source = match (origin, &err.metadata) {
        (Some(o), _) => format!(" (from {o})"),
        (None, Some(m)) if m.name.contains("TOML") => format!(
            " (from {})",
            m.source
                .as_ref()
                .map_or_else(|| m.name.to_string(), |s| s.to_string())
        ),
        _ => String::new(),
    };
    if path.is_empty() {
        format!("{detail}{source}")
    } else {
        format!("{path}: {detail}{source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let c = Config::load(None, &[], &Overrides::default()).unwrap();
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8088");
        assert!(c.database_url().starts_with("sqlite://"));
        assert!(c.migrate_on_start());
        assert_eq!(c.gateway.tls, TlsMode::SelfSigned);
    }

    #[test]
    fn env_nests_and_conventional_names_apply() {
        let c = Config::load(
            None,
            &env(&[
                ("LATTICE_GATEWAY__TLS", "off"),
                ("LATTICE_IDENTITY__LOCKOUT_THRESHOLD", "3"),
                ("DATABASE_URL", "postgres://u:p@h/db"),
                ("PORT", "9000"),
                ("LOG_LEVEL", "debug"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.gateway.tls, TlsMode::Off);
        assert_eq!(c.identity.lockout_threshold, 3);
        assert_eq!(c.gateway.listen.port(), 9000);
        assert_eq!(c.log_level, "debug");
        assert!(!c.migrate_on_start());
    }

    #[test]
    fn cli_variables_in_the_same_environment_are_not_config() {
        let c = Config::load(
            None,
            &env(&[
                ("LATTICE_TOKEN", "lat_x"),
                ("LATTICE_SERVICES", "gateway"),
                ("LATTICE_PASSWORD", "p"),
            ]),
            &Overrides::default(),
        );
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn specific_log_level_wins_over_generic() {
        let c = Config::load(
            None,
            &env(&[("LATTICE_LOG_LEVEL", "warn"), ("RUST_LOG", "debug")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.log_level, "warn");
    }

    #[test]
    fn flags_win_over_env() {
        let c = Config::load(
            None,
            &env(&[("LATTICE_GATEWAY__LISTEN", "127.0.0.1:1")]),
            &Overrides {
                gateway_listen: Some("127.0.0.1:2".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.gateway.listen.port(), 2);
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = Config::load(
            None,
            &env(&[
                ("LATTICE_GATEWAY__REQUEST_TIMEOUT_S", "soon"),
                ("LATTICE_GATEWAY__TLS", "maybe"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gateway.request_timeout_s"), "{err}");
        assert!(err.contains("gateway.tls"), "{err}");

        let err = Config::load(
            None,
            &env(&[
                ("DATABASE_URL", "mysql://x"),
                ("LATTICE_GATEWAY__TLS", "files"),
                ("JWT_SECRET", "short"),
                ("PORT", "http"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("PORT"), "{err}");
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let err = Config::load(
            None,
            &env(&[
                ("DATABASE_URL", "mysql://x"),
                ("LATTICE_GATEWAY__TLS", "files"),
                ("JWT_SECRET", "short"),
                ("REDIS_URL", "redis://cache:6379/"),
                ("LATTICE_REDIS_CA_FILE", "/etc/lattice/redis-ca.pem"),
            ]),
            &Overrides::default(),
        )
        .unwrap_err()
        .0;
        let joined = err.join("\n");
        assert!(joined.contains("database_url"), "{joined}");
        assert!(
            joined.contains("redis_ca_file: needs a rediss://"),
            "{joined}"
        );
        assert!(joined.contains("gateway.tls_cert_file"), "{joined}");
        assert!(joined.contains("gateway.tls_key_file"), "{joined}");
        assert!(joined.contains("jwt_secret"), "{joined}");
        assert!(
            !joined.contains("short"),
            "secrets are never echoed: {joined}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::load(
            None,
            &env(&[("LATTICE_GATEWAY__LISTN", "x")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listn"), "{err}");
    }
}
