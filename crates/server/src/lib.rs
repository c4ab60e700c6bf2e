//! `lattice-server`: builds and runs any subset of the Lattice services in one
//! process. The binary and the integration tests start servers through [`start`], so
//! tests exercise exactly the code path operators run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lattice_core::auth::InternalAuth;
use lattice_core::cache::Cache;
use lattice_core::config::Config;
use lattice_core::crypto::MasterKey;
use lattice_core::db::{self, Db, MigrationReport};
use lattice_gateway::{Gateway, TlsInfo};
use lattice_identity::BootstrapAdmin;
use lattice_proto::identity::v1::identity_service_server::IdentityServiceServer;
use lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient;
use secrecy_expose::expose;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod audit_forward;
pub mod backup;
pub mod ops;

mod secrecy_expose {
    /// Read a configured secret (kept in one place so it is easy to audit).
    pub fn expose(s: &secrecy::SecretString) -> &str {
        use secrecy::ExposeSecret as _;
        s.expose_secret()
    }
}

/// A service role `--services` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The public edge.
    Gateway,
    /// Users, sessions, tokens.
    Identity,
    /// KV buckets, static sites, host bindings, storage tokens.
    Storage,
    /// The task queue, the audit log, the outbox.
    Tasks,
    /// Nodes, agent streams and the proxy tunnel.
    Tunnel,
    /// Cedar policies and decisions.
    Policy,
}

impl Role {
    const ALL: [Role; 6] = [
        Role::Gateway,
        Role::Identity,
        Role::Storage,
        Role::Tasks,
        Role::Tunnel,
        Role::Policy,
    ];

    fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Identity => "identity",
            Role::Storage => "storage",
            Role::Tasks => "tasks",
            Role::Tunnel => "tunnel",
            Role::Policy => "policy",
        }
    }
}

/// Parse `--services` (`all`, or a comma-separated list).
pub fn parse_roles(text: &str) -> anyhow::Result<BTreeSet<Role>> {
    let mut roles = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            roles.extend(Role::ALL);
            continue;
        }
        let role = Role::ALL
            .into_iter()
            .find(|r| r.name() == part)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "services: unknown service {part:?} (known: all, gateway, identity, storage, tasks, tunnel, policy)"
                )
            })?;
        roles.insert(role);
    }
    anyhow::ensure!(!roles.is_empty(), "services: name at least one service");
    Ok(roles)
}

/// What a started server tells its caller.
pub struct Running {
    /// Where the gateway listens (when it runs here).
    pub gateway_addr: Option<SocketAddr>,
    /// Where the identity service's internal gRPC listens (when it runs here).
    pub identity_addr: Option<SocketAddr>,
    /// Where the storage service's internal gRPC listens (when it runs here).
    pub storage_addr: Option<SocketAddr>,
    /// Where the tasks service's internal gRPC listens (when it runs here).
    pub tasks_addr: Option<SocketAddr>,
    /// Where the tunnel service's internal gRPC listens (when it runs here).
    pub tunnel_addr: Option<SocketAddr>,
    /// Where the policy service's internal gRPC listens (when it runs here).
    pub policy_addr: Option<SocketAddr>,
    /// Where `/health`, `/ready` and `/metrics` are served outside the gateway.
    pub ops_addr: Option<SocketAddr>,
    /// The bootstrap admin, when this start created it.
    pub bootstrap: Option<BootstrapAdmin>,
    /// TLS facts (gateway).
    pub tls_info: Option<TlsInfo>,
    /// Whether the gateway serves TLS.
    pub tls: bool,
    tasks: JoinSet<anyhow::Result<()>>,
    pools: Vec<(&'static str, Db)>,
}

impl Running {
    /// Wait until every service has stopped (after the shutdown token fires), then
    /// close the database pools. The first error wins.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        while let Some(res) = self.tasks.join_next().await {
            let res = res.map_err(anyhow::Error::from).and_then(|r| r);
            if let (Err(e), None) = (res, &first_err) {
                first_err = Some(e);
            }
        }
        for (_, pool) in &self.pools {
            pool.close().await;
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    match &config.master_key {
        Some(k) => Ok(MasterKey::parse(expose(k))?),
        None => {
            let path = config.data_dir.join("master.key");
            let (key, created) = MasterKey::load_or_create(&path)?;
            if created {
                tracing::info!(path = %path.display(), "generated master key; back it up with the data dir");
            }
            Ok(key)
        }
    }
}

/// A configured secret, or one derived from the master key for `purpose`.
fn secret_or_derived(
    configured: Option<&secrecy::SecretString>,
    master: Option<&MasterKey>,
    name: &str,
    purpose: &str,
) -> anyhow::Result<Vec<u8>> {
    match (configured, master) {
        (Some(s), _) => Ok(expose(s).as_bytes().to_vec()),
        (None, Some(m)) => Ok(m.derive(purpose).to_vec()),
        (None, None) => anyhow::bail!("{name}: not configured and no master key is loaded"),
    }
}

/// The migration sets of every service that keeps tables.
pub fn all_migration_sets() -> Vec<db::MigrationSet> {
    let mut sets = lattice_identity::migration_sets();
    sets.push(lattice_storage::store::migrations());
    sets.push(lattice_tasks::store::migrations());
    sets.push(lattice_tunnel::store::migrations());
    sets.push(lattice_policy::store::migrations());
    sets
}

/// `lattice-server migrate`: apply every pending migration and report.
pub async fn migrate(config: &Config) -> anyhow::Result<MigrationReport> {
    let db = Db::connect(&config.database_url(), 2).await?;
    let report = db::migrate(&db, &all_migration_sets(), true).await?;
    db.close().await;
    Ok(report)
}

async fn open_cache(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Cache> {
    let ca = match &config.redis_ca_file {
        None => None,
        // A CA file that cannot be read is a configuration error, not an outage.
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("redis_ca_file {}: {e}", path.display()))?,
        ),
    };
    Ok(match &config.redis_url {
        None => Cache::local(),
        Some(url) => match Cache::redis(expose(url), ca, shutdown.clone()).await {
            Ok(c) => c,
            Err(err) => {
                // Redis only accelerates; without it this replica still serves, slower
                // and with revocations reaching other replicas only by cache expiry.
                tracing::warn!(error = %format!("{err:#}"), "redis unavailable at start; using the in-process cache");
                Cache::local()
            }
        },
    })
}

/// Keep a service's gRPC health in step with its database: NOT_SERVING while the
/// database does not answer, so `/ready` and load balancers see it.
async fn report_database_health(
    service: &'static str,
    db: Db,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tonic_health::ServingStatus;
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let ok = tokio::time::timeout(Duration::from_secs(2), db.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != serving {
            serving = ok;
            let status = if ok {
                tracing::info!(service, "database reachable again");
                ServingStatus::Serving
            } else {
                tracing::warn!(service, "database unreachable; reporting not serving");
                ServingStatus::NotServing
            };
            reporter.set_service_status(service, status).await;
        }
    }
}

/// Open a service's database and, when configured, apply its migrations.
async fn open_service_db(
    config: &Config,
    service: &str,
    sets: &[db::MigrationSet],
) -> anyhow::Result<Db> {
    let url = config.database_url();
    let db = Db::connect(&url, config.database_max_connections)
        .await
        .with_context(|| format!("open {service} database {}", db::redact_url(&url)))?;
    db::migrate(&db, sets, config.migrate_on_start()).await?;
    Ok(db)
}

/// Bind an internal listener; the error names the setting.
async fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{field}: bind {addr}"))
}

/// One internal gRPC service, ready to serve.
struct InternalService {
    /// The name gRPC health reports (`lattice.tasks.v1.TaskService`).
    name: &'static str,
    listener: TcpListener,
    /// The service(s), each behind the principal check.
    routes: tonic::service::Routes,
    /// Health follows this database.
    db: Db,
    /// Per-call limit; None where long-lived streams run (agents, proxied watches).
    timeout: Option<Duration>,
}

/// Serve `svc` with health, reflection, request metrics and tracing until
/// `shared.stop`, reporting NOT_SERVING first.
async fn serve_internal(
    shared: &Shared<'_>,
    svc: InternalService,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (grpc_metrics, stop) = (shared.grpc_metrics.clone(), shared.stop);
    use tonic_health::ServingStatus;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(svc.name, ServingStatus::Serving)
        .await;
    tasks.spawn(report_database_health(
        svc.name,
        svc.db,
        reporter.clone(),
        stop.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lattice_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = svc.routes.add_service(health).add_service(reflection);
    let mut builder = tonic::transport::Server::builder()
        .trace_fn(lattice_core::telemetry::grpc_server_span)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024));
    if let Some(limit) = svc.timeout {
        builder = builder.timeout(limit);
    }
    let (name, listener, stop) = (svc.name, svc.listener, stop.clone());
    tasks.spawn(async move {
        builder
            .layer(grpc_metrics)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                // tonic applies `tcp_nodelay` only to listeners it binds itself: set it
                // on each accepted socket (small frames of long-lived streams would
                // otherwise wait on delayed ACKs).
                futures::TryStreamExt::map_ok(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |tcp| {
                        let _ = tcp.set_nodelay(true);
                        tcp
                    },
                ),
                async move {
                    stop.cancelled().await;
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                },
            )
            .await
            .with_context(|| format!("{name} gRPC server"))
    });
    Ok(())
}

/// What every internal service started in this process is built with.
struct Shared<'a> {
    config: &'a Config,
    /// Mints and verifies internal principals.
    internal: &'a InternalAuth,
    cache: &'a Cache,
    /// Fires when the process starts shutting down.
    shutdown: &'a CancellationToken,
    /// Stops the internal services (once the gateway has drained).
    stop: &'a CancellationToken,
    /// The process's one metrics registry.
    metrics: &'a lattice_core::metrics::MetricsRegistry,
    grpc_metrics: ops::GrpcMetrics,
}

/// Build the identity service (and, on first start, the bootstrap admin), bind its
/// internal gRPC listener and spawn it.
async fn start_identity(
    shared: &Shared<'_>,
    master: Option<&MasterKey>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(
    SocketAddr,
    Db,
    Option<BootstrapAdmin>,
    tonic::service::Routes,
)> {
    let config = shared.config;
    let db = open_service_db(config, "identity", &lattice_identity::migration_sets()).await?;
    let mfa_secret = secret_or_derived(
        config.mfa_token_secret.as_ref(),
        master,
        "mfa_token_secret",
        "lattice/mfa-token",
    )?;
    let master = master.context("identity needs the master key")?;
    let identity = lattice_identity::build(
        db.clone(),
        master,
        shared.cache.clone(),
        config.identity.clone(),
        &mfa_secret,
    )
    .await?;
    let bootstrap = identity
        .bootstrap(
            config
                .bootstrap_admin_password
                .as_ref()
                .map(|p| expose(p).to_owned()),
        )
        .await?;
    let listener = bind(config.identity.listen, "identity.listen").await?;
    let addr = listener.local_addr()?;
    let service = IdentityServiceServer::with_interceptor(
        lattice_identity::grpc::IdentityGrpc::new(identity),
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    let routes = tonic::service::Routes::new(service);
    serve_internal(
        shared,
        InternalService {
            name: "lattice.identity.v1.IdentityService",
            listener,
            routes: routes.clone(),
            db: db.clone(),
            timeout: Some(Duration::from_secs(30)),
        },
        tasks,
    )
    .await?;
    Ok((addr, db, bootstrap, routes))
}

/// Build the storage service, bind its internal gRPC listener and spawn it.
async fn start_storage(
    shared: &Shared<'_>,
    master: &MasterKey,
    secret_policy: Arc<lattice_storage::service::PolicyGate>,
    org_limits: Arc<lattice_core::limits::OrgLimits>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(SocketAddr, Db)> {
    use lattice_proto::storage::v1::storage_service_server::StorageServiceServer;
    let config = shared.config;
    let db = open_service_db(config, "storage", &lattice_storage::migration_sets()).await?;
    // Seals the values of secret buckets; opening it checks that this master key
    // matches the database.
    let sealer = lattice_core::crypto::Sealer::open(&db, master).await?;
    let blobs = match &config.storage.objects_url {
        Some(url) => lattice_storage::blobs::Blobs::from_url(url)?,
        None => lattice_storage::blobs::Blobs::local(&config.data_dir.join("objects"))?,
    };
    let limits = lattice_storage::Limits {
        max_deployment_bytes: config.storage.max_deployment_bytes,
    };
    let storage = lattice_storage::Storage::new(
        lattice_storage::store::Store::new(db.clone()),
        blobs,
        shared.cache.clone(),
        limits,
        lattice_storage::service::Secrets::new(sealer, secret_policy),
    )
    .with_org_limits(org_limits);
    let listener = bind(config.storage.listen, "storage.listen").await?;
    let addr = listener.local_addr()?;
    tasks.spawn(lattice_storage::run_sweeper(
        storage.clone(),
        shared.stop.clone(),
    ));
    // The internal upload stream carries unpacked files: the deployment limit applies.
    let max_upload = config.storage.max_deployment_bytes;
    let grpc = lattice_storage::grpc::StorageGrpc::new(storage, max_upload);
    let service = tonic::service::interceptor::InterceptedService::new(
        StorageServiceServer::new(grpc.clone())
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024),
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    let org_data = lattice_core::org_data::OrgDataServer::new(
        grpc,
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    serve_internal(
        shared,
        InternalService {
            name: "lattice.storage.v1.StorageService",
            listener,
            routes: tonic::service::Routes::new(service).add_service(org_data),
            db: db.clone(),
            timeout: Some(Duration::from_secs(120)),
        },
        tasks,
    )
    .await?;
    Ok((addr, db))
}

/// Build the tasks service, bind its internal gRPC listener and spawn it with its
/// background loops (lease rescue, audit chaining, outbox push).
async fn start_tasks(
    shared: &Shared<'_>,
    nodes: Arc<lattice_tasks::nodes::TunnelDirectory>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(SocketAddr, Db, tonic::service::Routes)> {
    use lattice_proto::tasks::v1::task_service_server::TaskServiceServer;
    use lattice_tasks::grpc::TaskGrpc;
    let db = open_service_db(shared.config, "tasks", &lattice_tasks::migration_sets()).await?;
    let tc = &shared.config.tasks;
    let push = if tc.async_push_enabled {
        let url = tc
            .async_push_webhook_url
            .clone()
            .context("tasks.async_push_webhook_url: required when async push is enabled")?;
        let auth = tc
            .async_push_auth_header
            .as_ref()
            .map(|h| lattice_tasks::outbox::parse_auth_header(expose(h)))
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?;
        Some(lattice_tasks::outbox::PushTarget {
            url,
            auth,
            retention_ms: i64::try_from(tc.outbox_retention_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        })
    } else {
        None
    };
    let service = lattice_tasks::Tasks::new(
        lattice_tasks::store::Store::new(db.clone(), push.is_some()),
        shared.cache.clone(),
        i64::try_from(tc.lease_s.saturating_mul(1000)).unwrap_or(i64::MAX),
        nodes,
    );
    let listener = bind(tc.listen, "tasks.listen").await?;
    let addr = listener.local_addr()?;
    tasks.spawn(lattice_tasks::run_background(
        service.clone(),
        shared.stop.clone(),
    ));
    if let Some(target) = push {
        tracing::info!(webhook = %db::redact_url(&target.url), "outbox push enabled");
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("outbox HTTP client")?;
        tasks.spawn(lattice_tasks::outbox::run_pusher(
            service.store().clone(),
            target,
            client,
            shared.stop.clone(),
        ));
    }
    let grpc = TaskServiceServer::with_interceptor(
        TaskGrpc::new(service.clone()),
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    let org_data = lattice_core::org_data::OrgDataServer::new(
        TaskGrpc::new(service),
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    let routes = tonic::service::Routes::new(grpc).add_service(org_data);
    serve_internal(
        shared,
        InternalService {
            name: "lattice.tasks.v1.TaskService",
            listener,
            routes: routes.clone(),
            db: db.clone(),
            timeout: Some(Duration::from_secs(30)),
        },
        tasks,
    )
    .await?;
    Ok((addr, db, routes))
}

/// Build the policy service, bind its internal gRPC listener and spawn it with its
/// bus listener. `groups` reads membership from the identity service.
async fn start_policy(
    shared: &Shared<'_>,
    groups: Arc<lattice_policy::groups::IdentityGroups>,
    nodes: Arc<lattice_policy::nodes::TunnelNodes>,
    tasks_service: Option<lattice_core::grpc::InternalService>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(SocketAddr, Db, tonic::service::Routes)> {
    use lattice_proto::policy::v1::change_service_server::ChangeServiceServer;
    use lattice_proto::policy::v1::policy_service_server::PolicyServiceServer;
    let db = open_service_db(shared.config, "policy", &lattice_policy::migration_sets()).await?;
    let policies = lattice_policy::Policies::new(
        lattice_policy::store::Store::new(db.clone()),
        shared.cache.clone(),
        groups.clone(),
        nodes.clone(),
    );
    // Reviewed changes: plans render against what the tunnel service's nodes
    // report, approved plans go to the task queue.
    let queue = lattice_policy::changes::links::TasksQueue::new(shared.internal.clone());
    match tasks_service {
        Some(ts) => {
            let _ = queue
                .link()
                .set(lattice_proto::tasks::v1::task_service_client::TaskServiceClient::new(ts));
        }
        None => {
            tracing::warn!("tasks.url is not set: approved plans cannot be applied until it is")
        }
    }
    let changes = lattice_policy::changes::service::Changes::new(
        lattice_policy::changes::store::ChangeStore::new(db.clone()),
        policies.clone(),
        nodes.clone(),
        Arc::new(queue),
        groups.clone(),
        groups,
        Arc::new(lattice_core::audit::TableAudit::new(
            db.clone(),
            "policy_audit",
        )),
    )
    .with_releases(nodes);
    {
        // Roll approved plans forward: the next wave after the canary, the end.
        let (changes, stop) = (changes.clone(), shared.stop.clone());
        tasks.spawn(async move {
            // Every 200 ms while a plan rolls out (a wave starts soon after the one
            // before it finished), every second otherwise.
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut busy, mut idle_ticks) = (false, 0u32);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {
                        idle_ticks += 1;
                        if !busy && idle_ticks < 5 {
                            continue;
                        }
                        idle_ticks = 0;
                        match changes.drive().await {
                            Ok(applying) => busy = applying > 0,
                            Err(err) => {
                                busy = false;
                                tracing::warn!(error = %lattice_core::error::DisplayChain(&err), "rolling out plans failed; retrying");
                            }
                        }
                    }
                }
            }
        });
    }
    let listener = bind(shared.config.policy.listen, "policy.listen").await?;
    let addr = listener.local_addr()?;
    {
        let (policies, cache, stop) = (policies.clone(), shared.cache.clone(), shared.stop.clone());
        tasks.spawn(async move {
            lattice_policy::run_event_listener(policies, cache, stop).await;
            Ok(())
        });
    }
    let grpc = PolicyServiceServer::with_interceptor(
        lattice_policy::grpc::PolicyGrpc::new(policies.clone()),
        lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
    );
    let routes = tonic::service::Routes::new(grpc)
        .add_service(ChangeServiceServer::with_interceptor(
            lattice_policy::changes::grpc::ChangeGrpc::new(changes),
            lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
        ))
        .add_service(lattice_core::org_data::OrgDataServer::new(
            lattice_policy::grpc::PolicyGrpc::new(policies),
            lattice_core::grpc::RequirePrincipal::new(shared.internal.clone()),
        ));
    serve_internal(
        shared,
        InternalService {
            name: "lattice.policy.v1.PolicyService",
            listener,
            routes: routes.clone(),
            db: db.clone(),
            timeout: Some(Duration::from_secs(30)),
        },
        tasks,
    )
    .await?;
    Ok((addr, db, routes))
}

/// How the tunnel service reaches the tasks service.
struct TunnelLinks {
    /// The tasks service (None: agents connect but receive no tasks).
    tasks_service: Option<lattice_core::grpc::InternalService>,
    /// Whether the tasks service runs in this process (its pushes then reach here).
    tasks_in_process: bool,
    /// The policy check of node access (its policy client is linked by `start`).
    access: Arc<lattice_tunnel::access::NodeAccess>,
    /// The orgs' limits (nodes).
    org_limits: Arc<lattice_core::limits::OrgLimits>,
}

/// Build the tunnel service (nodes, agent streams, proxy), bind its internal gRPC
/// listener and spawn it.
async fn start_tunnel(
    shared: &Shared<'_>,
    master: &MasterKey,
    links: TunnelLinks,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<(SocketAddr, Db, tonic::service::Routes)> {
    use lattice_proto::agent::v1::agent_service_server::AgentServiceServer;
    use lattice_proto::tunnel::v1::tunnel_service_server::TunnelServiceServer;
    use lattice_tunnel::grpc::{AgentGrpc, TunnelGrpc};
    let TunnelLinks {
        tasks_service,
        tasks_in_process,
        access,
        org_limits,
    } = links;
    let (internal, cache) = (shared.internal, shared.cache);
    let db = open_service_db(shared.config, "tunnel", &lattice_tunnel::migration_sets()).await?;
    let tc = &shared.config.tunnel;
    let listener = bind(tc.listen, "tunnel.listen").await?;
    let addr = listener.local_addr()?;
    let advertise = tc.advertise_url.clone().unwrap_or_else(|| {
        // Listening on every interface: advertise the address this host reaches
        // others from (a container's or VM's private IP), not 0.0.0.0.
        let host = if addr.ip().is_unspecified() {
            outbound_ip().unwrap_or(addr.ip())
        } else {
            addr.ip()
        };
        format!("http://{}", SocketAddr::new(host, addr.port()))
    });
    tracing::info!(%advertise, "tunnel replicas reach this one at its advertise URL");
    let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
    // Seals the agent release signing key.
    let sealer = lattice_core::crypto::Sealer::open(&db, master).await?;
    let nodes = lattice_tunnel::Nodes::new(
        lattice_tunnel::store::Store::new(db.clone()),
        lattice_tunnel::Settings {
            heartbeat_interval_ms: ms(tc.heartbeat_interval_s),
            metrics_interval_ms: ms(tc.metrics_interval_s),
            metrics_retention_ms: ms(tc.metrics_retention_s),
            logs_retention_ms: ms(tc.logs_retention_s),
            join_token_max_ttl_s: i64::try_from(tc.join_token_max_ttl_s).unwrap_or(i64::MAX),
            max_proxy_streams: tc.max_proxy_streams as usize,
            agent_hosts: tc
                .agent_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            // Pushes reach this replica when the tasks service runs here or the bus is
            // shared (Redis): then polling is only a safety net.
            task_poll_ms: if tasks_in_process || cache.is_shared() {
                300_000
            } else {
                10_000
            },
        },
    )
    .with_sealer(sealer)
    .with_org_limits(org_limits);
    if tasks_service.is_none() {
        tracing::warn!("tasks.url is not set: agents connect but receive no tasks");
    }
    let hub = lattice_tunnel::Hub::new(
        nodes,
        access,
        tasks_service.map(lattice_proto::tasks::v1::task_service_client::TaskServiceClient::new),
        internal.clone(),
        cache.clone(),
        advertise,
        // Agents are told to reconnect as soon as shutdown starts (their streams
        // would hold the gateway's drain); the service stops with the others.
        shared.shutdown.clone(),
    );
    {
        let hub = hub.clone();
        tasks.spawn(async move {
            hub.run_dispatcher().await;
            Ok(())
        });
    }
    let check = lattice_core::grpc::RequirePrincipal::new(internal.clone());
    let tunnel = TunnelServiceServer::with_interceptor(TunnelGrpc::new(hub.clone()), check.clone());
    let org_data =
        lattice_core::org_data::OrgDataServer::new(TunnelGrpc::new(hub.clone()), check.clone());
    let agents = AgentServiceServer::with_interceptor(AgentGrpc::new(hub), check);
    let routes = tonic::service::Routes::new(tunnel)
        .add_service(agents)
        .add_service(org_data);
    serve_internal(
        shared,
        InternalService {
            name: "lattice.tunnel.v1.TunnelService",
            listener,
            routes: routes.clone(),
            db: db.clone(),
            // No call timeout: agent streams and proxied watches live for hours.
            timeout: None,
        },
        tasks,
    )
    .await?;
    Ok((addr, db, routes))
}

/// The local address of the interface this host sends from (a UDP socket's connect
/// sends nothing; it only picks the route).
fn outbound_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// An internal service's address for this process: where it runs here, or its
/// configured URL when it runs elsewhere.
fn service_url(running: Option<SocketAddr>, configured: Option<&String>) -> Option<String> {
    running
        .map(|a| format!("http://{a}"))
        .or_else(|| configured.cloned())
}

/// Per-call limit on unary internal calls.
const CALL_TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// A lazily connecting channel to an internal service (TLS for `https://`).
/// `timeout` bounds each call; None for channels carrying long-lived streams.
fn internal_channel(
    url: &str,
    field: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("{field}: {url:?} is not a valid URL"))?;
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
            .with_context(|| format!("{field}: TLS setup"))?;
    }
    if let Some(limit) = timeout {
        endpoint = endpoint.timeout(limit);
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// The internal services a gateway in this process calls: those running here, and
/// the configured URLs of the others.
struct Peers {
    identity: Option<SocketAddr>,
    storage: Option<SocketAddr>,
    /// The tunnel service's address and routes, when it runs here.
    tunnel: Option<(SocketAddr, tonic::service::Routes)>,
    tasks_service: Option<lattice_core::grpc::InternalService>,
    tasks_channel: Option<tonic::transport::Channel>,
    policy_service: Option<lattice_core::grpc::InternalService>,
    /// Where the policy service listens, when it runs here.
    policy: Option<SocketAddr>,
}

/// A gateway just started: where it listens and its TLS facts.
struct GatewayStarted {
    addr: SocketAddr,
    tls_info: TlsInfo,
    tls: bool,
}

/// Build the gateway over `peers`, bind its public listener and spawn it; `done`
/// fires once it has drained.
async fn start_gateway(
    shared: &Shared<'_>,
    peers: Peers,
    done: CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<GatewayStarted> {
    let config = shared.config;
    let identity_url = match (peers.identity, &config.gateway.identity_url) {
        (Some(addr), _) => format!("http://{addr}"),
        (None, Some(url)) => url.clone(),
        (None, None) => anyhow::bail!(
            "gateway.identity_url: required when the identity service is not in --services (e.g. http://identity:8091)"
        ),
    };
    let channel = internal_channel(&identity_url, "gateway.identity_url", CALL_TIMEOUT)?;
    let storage_channel = service_url(peers.storage, config.gateway.storage_url.as_ref())
        .map(|url| internal_channel(&url, "gateway.storage_url", CALL_TIMEOUT))
        .transpose()?;
    let gateway = Gateway::build(
        &config.gateway,
        config.gateway_is_https(),
        &config.data_dir,
        shared.internal.clone(),
        lattice_gateway::Backends {
            metrics: shared.metrics.clone(),
            identity: channel,
            storage: storage_channel,
            storage_in_process: peers.storage.is_some(),
            tasks: peers.tasks_service,
            tasks_health: peers.tasks_channel,
            tunnel_health: service_url(
                peers.tunnel.as_ref().map(|(addr, _)| *addr),
                config.tunnel.url.as_ref(),
            )
            .map(|url| internal_channel(&url, "tunnel.url", CALL_TIMEOUT))
            .transpose()?,
            // In this process the gateway calls the tunnel service directly; a
            // remote one gets two connections (agent streams apart from proxying).
            tunnel: match (&peers.tunnel, &config.tunnel.url) {
                (Some((_, routes)), _) => Some(lattice_gateway::in_process(routes.clone())),
                (None, Some(url)) => Some(lattice_gateway::over_network(internal_channel(
                    url,
                    "tunnel.url",
                    None,
                )?)),
                (None, None) => None,
            },
            policy: peers.policy_service,
            policy_health: service_url(peers.policy, config.policy.url.as_ref())
                .map(|url| internal_channel(&url, "policy.url", CALL_TIMEOUT))
                .transpose()?,
            tunnel_agents: match (&peers.tunnel, &config.tunnel.url) {
                (Some((_, routes)), _) => Some(lattice_gateway::in_process(routes.clone())),
                (None, Some(url)) => Some(lattice_gateway::over_network(internal_channel(
                    url,
                    "tunnel.url",
                    None,
                )?)),
                (None, None) => None,
            },
        },
        shared.cache.clone(),
        shared.shutdown.clone(),
    )?;
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("gateway.listen: bind {}", config.gateway.listen))?;
    let started = GatewayStarted {
        addr: listener.local_addr()?,
        tls_info: gateway.tls_info.clone(),
        tls: config.gateway.tls != lattice_core::config::TlsMode::Off,
    };
    tasks.spawn(async move {
        let result = gateway.run(listener).await;
        done.cancel();
        result
    });
    Ok(started)
}

/// How this process reaches the tasks service: a channel (health checks) and the
/// service (called in process when it runs here, else over that channel).
fn reach_tasks(
    config: &Config,
    roles: &BTreeSet<Role>,
    running: Option<SocketAddr>,
    routes: Option<tonic::service::Routes>,
) -> anyhow::Result<(
    Option<tonic::transport::Channel>,
    Option<lattice_core::grpc::InternalService>,
)> {
    let channel = match service_url(running, config.tasks.url.as_ref()) {
        Some(url) => Some(internal_channel(&url, "tasks.url", CALL_TIMEOUT)?),
        None => {
            if roles
                .iter()
                .any(|r| matches!(r, Role::Identity | Role::Storage | Role::Tunnel))
            {
                tracing::warn!(
                    "tasks.url is not set: audit events stay in each service's own table until it is"
                );
            }
            None
        }
    };
    // Calls to a tasks service in this process go to it directly (same contract
    // and principal check, no loopback socket or HTTP/2 framing).
    let service = match (routes, &channel) {
        (Some(routes), _) => Some(lattice_gateway::in_process(routes)),
        (None, Some(ch)) => Some(lattice_gateway::over_network(ch.clone())),
        (None, None) => None,
    };
    Ok((channel, service))
}

/// Serve `/health`, `/ready` and `/metrics` on their own listener when this process
/// has no gateway (which serves them itself) or `ops_listen` is set.
async fn start_ops(
    shared: &Shared<'_>,
    roles: &BTreeSet<Role>,
    pools: &[(&'static str, Db)],
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let config = shared.config;
    if config.ops_listen.is_none() && roles.contains(&Role::Gateway) {
        return Ok(None);
    }
    let addr = config
        .ops_listen
        .unwrap_or_else(|| "127.0.0.1:9464".parse().expect("literal address"));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("ops_listen: bind {addr}"))?;
    let ops_addr = listener.local_addr()?;
    tasks.spawn(ops::serve(
        listener,
        shared.grpc_metrics.clone(),
        pools.to_vec(),
        shared.shutdown.clone(),
    ));
    Ok(Some(ops_addr))
}

/// Build every service in `roles`, bind their listeners and start serving until
/// `shutdown` fires. Returns once everything is listening.
pub async fn start(
    config: Config,
    roles: &BTreeSet<Role>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    // The master key is needed by services that seal data and for secrets derived from
    // it; a gateway given JWT_SECRET needs none.
    let needs_master = roles.contains(&Role::Identity)
        || roles.contains(&Role::Storage)
        || roles.contains(&Role::Tunnel)
        || config.jwt_secret.is_none();
    let master = if needs_master {
        Some(master_key(&config)?)
    } else {
        None
    };
    let internal = InternalAuth::new(&secret_or_derived(
        config.jwt_secret.as_ref(),
        master.as_ref(),
        "jwt_secret",
        "lattice/internal-jwt",
    )?);
    let cache = open_cache(&config, &shutdown).await?;
    // Internal services stop only after the gateway has finished its grace period and
    // drained, so requests still in flight can reach them.
    let internal_stop = CancellationToken::new();
    let gateway_done = CancellationToken::new();
    let metrics = lattice_core::metrics::MetricsRegistry::default();
    let shared = Shared {
        config: &config,
        internal: &internal,
        cache: &cache,
        shutdown: &shutdown,
        stop: &internal_stop,
        metrics: &metrics,
        grpc_metrics: ops::GrpcMetrics::new(&metrics),
    };
    let mut tasks = JoinSet::new();
    let mut pools = Vec::new();

    // The tasks service first: every other service sends it audit events. It asks
    // the tunnel service which org a node is in; that link is made once the tunnel
    // service is reachable (below, or now when it runs elsewhere).
    let mut running_tasks = None;
    let mut tasks_routes = None;
    let node_directory = Arc::new(lattice_tasks::nodes::TunnelDirectory::new(internal.clone()));
    let tunnel_for_tasks = node_directory.link();
    let node_directory_policy = node_directory.link_policy();
    if !roles.contains(&Role::Tunnel)
        && let Some(url) = &config.tunnel.url
    {
        let _ = tunnel_for_tasks.set(TunnelServiceClient::new(lattice_gateway::over_network(
            internal_channel(url, "tunnel.url", CALL_TIMEOUT)?,
        )));
    }
    if roles.contains(&Role::Tasks) {
        let (addr, db, routes) = start_tasks(&shared, node_directory, &mut tasks).await?;
        pools.push(("tasks database", db));
        running_tasks = Some(addr);
        tasks_routes = Some(routes);
    }
    let (tasks_channel, tasks_service) = reach_tasks(&config, roles, running_tasks, tasks_routes)?;
    let forward_audit = |tasks: &mut JoinSet<anyhow::Result<()>>,
                         service: &'static str,
                         db: &Db,
                         table: &'static str| {
        if let Some(ts) = &tasks_service {
            tasks.spawn(audit_forward::run(
                service,
                lattice_core::audit::TableAudit::new(db.clone(), table),
                lattice_proto::tasks::v1::task_service_client::TaskServiceClient::new(ts.clone()),
                internal.clone(),
                internal_stop.clone(),
            ));
        }
    };

    let mut running_identity = None;
    let mut identity_routes = None;
    let mut bootstrap = None;
    if roles.contains(&Role::Identity) {
        let (addr, db, admin, routes) =
            start_identity(&shared, master.as_ref(), &mut tasks).await?;
        forward_audit(&mut tasks, "identity", &db, "identity_audit");
        pools.push(("identity database", db));
        running_identity = Some(addr);
        identity_routes = Some(routes);
        bootstrap = admin;
    }
    // The identity service as other services reach it (groups, org limits).
    let identity_service = match (&identity_routes, &config.gateway.identity_url) {
        (Some(routes), _) => Some(lattice_gateway::in_process(routes.clone())),
        (None, Some(url)) => Some(lattice_gateway::over_network(internal_channel(
            url,
            "gateway.identity_url",
            CALL_TIMEOUT,
        )?)),
        (None, None) => None,
    };
    // Org limits as the services that enforce them read them.
    let org_limits = |service: &str| {
        let limits = lattice_core::limits::OrgLimits::new(internal.clone(), service);
        if let Some(identity) = &identity_service {
            let _ = limits.link().set(
                lattice_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
                    identity.clone(),
                ),
            );
        }
        Arc::new(limits)
    };

    // Storage asks the policy service who may read secret values; that link is made
    // once the policy service is reachable (below).
    let mut running_storage = None;
    let secret_policy = Arc::new(lattice_storage::service::PolicyGate::new(internal.clone()));
    if roles.contains(&Role::Storage) {
        let master = master.as_ref().context("storage needs the master key")?;
        let (addr, db) = start_storage(
            &shared,
            master,
            secret_policy.clone(),
            org_limits("storage"),
            &mut tasks,
        )
        .await?;
        forward_audit(&mut tasks, "storage", &db, "storage_audit");
        pools.push(("storage database", db));
        running_storage = Some(addr);
    }

    // The policy service: the tunnel and tasks services (and the gateway) ask it,
    // here directly or over the network when it runs elsewhere.
    let mut running_policy = None;
    let mut policy_routes = None;
    let mut policy_tunnel_link = None;
    if roles.contains(&Role::Policy) {
        let groups = Arc::new(lattice_policy::groups::IdentityGroups::new(
            internal.clone(),
        ));
        let identity = identity_service.clone();
        if identity.is_none() {
            tracing::warn!(
                "gateway.identity_url is not set: the policy service cannot read groups, so decisions about users fail"
            );
        }
        if let Some(identity) = identity {
            let _ = groups.link().set(
                lattice_proto::identity::v1::identity_service_client::IdentityServiceClient::new(
                    identity,
                ),
            );
        }
        let nodes = Arc::new(lattice_policy::nodes::TunnelNodes::new(internal.clone()));
        policy_tunnel_link = Some(nodes.link());
        if !roles.contains(&Role::Tunnel)
            && let Some(url) = &config.tunnel.url
        {
            let _ = nodes
                .link()
                .set(TunnelServiceClient::new(lattice_gateway::over_network(
                    internal_channel(url, "tunnel.url", CALL_TIMEOUT)?,
                )));
        }
        let (addr, db, routes) =
            start_policy(&shared, groups, nodes, tasks_service.clone(), &mut tasks).await?;
        forward_audit(&mut tasks, "policy", &db, "policy_audit");
        pools.push(("policy database", db));
        running_policy = Some(addr);
        policy_routes = Some(routes);
    }
    let policy_service = match (&policy_routes, &config.policy.url) {
        (Some(routes), _) => Some(lattice_gateway::in_process(routes.clone())),
        (None, Some(url)) => Some(lattice_gateway::over_network(internal_channel(
            url,
            "policy.url",
            CALL_TIMEOUT,
        )?)),
        (None, None) => None,
    };
    if let Some(ps) = &policy_service {
        let client =
            lattice_proto::policy::v1::policy_service_client::PolicyServiceClient::new(ps.clone());
        let _ = node_directory_policy.set(client.clone());
        let _ = secret_policy.link().set(client);
    } else if roles
        .iter()
        .any(|r| matches!(r, Role::Tunnel | Role::Tasks | Role::Storage))
    {
        tracing::warn!(
            "policy.url is not set: proxied requests, port forwards, tasks and reads of secret values are refused (503) until it is"
        );
    }

    let mut running_tunnel = None;
    if roles.contains(&Role::Tunnel) {
        let access = Arc::new(lattice_tunnel::access::NodeAccess::new(internal.clone()));
        if let Some(ps) = &policy_service {
            let _ = access.link().set(
                lattice_proto::policy::v1::policy_service_client::PolicyServiceClient::new(
                    ps.clone(),
                ),
            );
        }
        let links = TunnelLinks {
            tasks_service: tasks_service.clone(),
            tasks_in_process: running_tasks.is_some(),
            access,
            org_limits: org_limits("tunnel"),
        };
        let master = master
            .as_ref()
            .context("the tunnel service needs the master key")?;
        let (addr, db, routes) = start_tunnel(&shared, master, links, &mut tasks).await?;
        forward_audit(&mut tasks, "tunnel", &db, "tunnel_audit");
        pools.push(("tunnel database", db));
        let _ = tunnel_for_tasks.set(TunnelServiceClient::new(lattice_gateway::in_process(
            routes.clone(),
        )));
        if let Some(link) = &policy_tunnel_link {
            let _ = link.set(TunnelServiceClient::new(lattice_gateway::in_process(
                routes.clone(),
            )));
        }
        running_tunnel = Some((addr, routes));
    }

    let mut gateway = None;
    if roles.contains(&Role::Gateway) {
        let peers = Peers {
            identity: running_identity,
            storage: running_storage,
            tunnel: running_tunnel.clone(),
            tasks_service,
            tasks_channel,
            policy_service,
            policy: running_policy,
        };
        gateway = Some(start_gateway(&shared, peers, gateway_done.clone(), &mut tasks).await?);
    } else {
        gateway_done.cancel();
    }
    {
        let (shutdown, internal_stop) = (shutdown.clone(), internal_stop.clone());
        tasks.spawn(async move {
            shutdown.cancelled().await;
            gateway_done.cancelled().await;
            internal_stop.cancel();
            Ok(())
        });
    }

    // Every process answers probes and scrapes: the gateway serves them itself;
    // a process without it (or with ops_listen set) gets a small listener.
    let ops_addr = start_ops(&shared, roles, &pools, &mut tasks).await?;

    Ok(Running {
        gateway_addr: gateway.as_ref().map(|g| g.addr),
        identity_addr: running_identity,
        storage_addr: running_storage,
        tasks_addr: running_tasks,
        tunnel_addr: running_tunnel.map(|(addr, _)| addr),
        policy_addr: running_policy,
        ops_addr,
        bootstrap,
        tls: gateway.as_ref().is_some_and(|g| g.tls),
        tls_info: gateway.map(|g| g.tls_info),
        tasks,
        pools,
    })
}
