//! The gateway: the only public entry point. HTTPS (or h2c behind a proxy) for
//! browsers, the CLI and API clients; REST and gRPC share the port. It authenticates
//! each caller once and calls the internal services over gRPC with a short-lived
//! signed principal.

pub mod caller;
mod drain;
pub mod edge;
pub mod error;
pub mod extract;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod serve;
pub mod storage;
pub mod tls;
pub mod ui;

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use http::{HeaderName, HeaderValue};
use lattice_core::auth::{InternalAuth, Principal};
use lattice_core::cache::Cache;
use lattice_core::config::GatewayConfig;
use lattice_proto::identity::v1::identity_service_client::IdentityServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::metrics::Metrics;
pub use crate::tls::TlsInfo;

/// Shared state of the gateway's handlers.
pub struct AppState {
    /// Identity service client (in-process loopback or remote).
    pub identity: IdentityServiceClient<Channel>,
    /// Storage service client (None: storage is not configured on this gateway).
    pub storage:
        Option<lattice_proto::storage::v1::storage_service_client::StorageServiceClient<Channel>>,
    /// Host, path, blob and storage-token caches for serving bound hosts.
    pub host_caches: storage::host::HostCaches,
    /// gRPC health of the identity service, for `/ready`.
    pub health: tonic_health::pb::health_client::HealthClient<Channel>,
    /// Task queue and audit log client (None: not configured on this gateway).
    pub tasks:
        Option<lattice_proto::tasks::v1::task_service_client::TaskServiceClient<InternalService>>,
    /// Nodes and proxy client (None: the tunnel service is not configured here).
    pub tunnel: Option<
        lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient<InternalService>,
    >,
    /// The tunnel service as a raw gRPC service, for relaying agent streams.
    pub tunnel_channel: Option<InternalService>,
    /// Policy client (None: the policy service is not configured here).
    pub policy: Option<
        lattice_proto::policy::v1::policy_service_client::PolicyServiceClient<InternalService>,
    >,
    /// Reviewed changes (served beside the policy service).
    pub changes: Option<
        lattice_proto::policy::v1::change_service_client::ChangeServiceClient<InternalService>,
    >,
    /// Every service that keeps data per org (storage, tasks, tunnel, policy, as
    /// configured), for an org's usage and its deletion.
    pub org_data: Vec<(
        &'static str,
        lattice_proto::orgs::v1::org_data_client::OrgDataClient<InternalService>,
    )>,
    /// SHA-256 (hex) of the CA agents pin, when this gateway serves TLS.
    pub ca_sha256: Option<String>,
    /// gRPC health of the tasks service, for `/ready`.
    pub tasks_health: Option<tonic_health::pb::health_client::HealthClient<Channel>>,
    /// gRPC health of the storage service, for `/ready` (when storage is configured).
    pub storage_health: Option<tonic_health::pb::health_client::HealthClient<Channel>>,
    /// gRPC health of the tunnel service, for `/ready` (when it is configured).
    pub tunnel_health: Option<tonic_health::pb::health_client::HealthClient<Channel>>,
    /// gRPC health of the policy service, for `/ready` (when it is configured).
    pub policy_health: Option<tonic_health::pb::health_client::HealthClient<Channel>>,
    /// Mints internal principals.
    pub internal: InternalAuth,
    /// The gateway acting for nobody (login, authenticate).
    pub service_principal: Principal,
    /// Verified credentials by credential hash.
    pub auth_cache: moka::sync::Cache<[u8; 32], Arc<caller::Verified>>,
    /// Bumped by every eviction from `auth_cache`: a verification that started before
    /// an eviction does not put its (possibly revoked) result back.
    pub auth_generation: std::sync::atomic::AtomicU64,
    /// Cache/bus (readiness, revocations).
    pub cache: Cache,
    /// Settings.
    pub cfg: GatewayConfig,
    /// Whether cookies carry `Secure` (TLS on).
    pub secure_cookies: bool,
    /// Request metrics.
    pub metrics: Metrics,
    /// Fired when shutdown starts (readiness turns false first).
    pub shutting_down: CancellationToken,
    /// Fired when the grace period is over and open connections are drained: relayed
    /// agent streams end then, so agents reconnect (to another replica) at once.
    pub draining: CancellationToken,
}

/// Channels to the internal services the gateway calls (they may not be up yet: the
/// channels connect lazily).
#[derive(Debug, Clone)]
pub struct Backends {
    /// The process's metrics registry (shared with its internal gRPC servers).
    pub metrics: lattice_core::metrics::MetricsRegistry,
    /// The identity service.
    pub identity: Channel,
    /// The storage service, when this deployment has one.
    pub storage: Option<Channel>,
    /// Storage runs in this process (it shares this process's cache and bus).
    pub storage_in_process: bool,
    /// The tasks service (queue and audit log), when this deployment has one.
    pub tasks: Option<InternalService>,
    /// A network channel to the tasks service, for its gRPC health in `/ready`.
    pub tasks_health: Option<Channel>,
    /// A network channel to the tunnel service, for its gRPC health in `/ready`.
    pub tunnel_health: Option<Channel>,
    /// A network channel to the policy service, for its gRPC health in `/ready`.
    pub policy_health: Option<Channel>,
    /// The tunnel service (nodes, proxy), when this deployment has one.
    pub tunnel: Option<InternalService>,
    /// A separate connection to the tunnel service for relaying agent streams, so
    /// proxy traffic can never take them down with it.
    pub tunnel_agents: Option<InternalService>,
    /// The policy service, when this deployment has one.
    pub policy: Option<InternalService>,
}

pub use lattice_core::grpc::{InternalError, InternalService, in_process, over_network};

/// A built gateway, ready to serve on a listener.
pub struct Gateway {
    state: Arc<AppState>,
    edge: edge::Edge,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS facts for the start-up message.
    pub tls_info: TlsInfo,
}

impl Gateway {
    /// Build the gateway (phase one: nothing is bound). `identity` is a channel to the
    /// identity service, which may not be up yet (the channel connects lazily).
    pub fn build(
        cfg: &GatewayConfig,
        https: bool,
        data_dir: &Path,
        internal: InternalAuth,
        backends: Backends,
        cache: Cache,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (tls, tls_info) = tls::server_config(cfg, data_dir, &shutdown)?;
        let org_data = [
            ("storage", backends.storage.clone().map(over_network)),
            ("tasks", backends.tasks.clone()),
            ("tunnel", backends.tunnel.clone()),
            ("policy", backends.policy.clone()),
        ]
        .into_iter()
        .filter_map(|(name, svc)| {
            svc.map(|s| {
                (
                    name,
                    lattice_proto::orgs::v1::org_data_client::OrgDataClient::new(s),
                )
            })
        })
        .collect();
        let state = Arc::new(AppState {
            org_data,
            identity: IdentityServiceClient::new(backends.identity.clone()),
            storage_health: backends
                .storage
                .clone()
                .map(tonic_health::pb::health_client::HealthClient::new),
            storage: backends.storage.map(|c| {
                lattice_proto::storage::v1::storage_service_client::StorageServiceClient::new(c)
                    .max_decoding_message_size(16 * 1024 * 1024)
            }),
            host_caches: storage::host::HostCaches::new(
                cfg,
                backends.storage_in_process || cache.is_shared(),
            ),
            health: tonic_health::pb::health_client::HealthClient::new(backends.identity),
            tasks_health: backends
                .tasks_health
                .map(tonic_health::pb::health_client::HealthClient::new),
            policy_health: backends
                .policy_health
                .map(tonic_health::pb::health_client::HealthClient::new),
            tunnel_health: backends
                .tunnel_health
                .map(tonic_health::pb::health_client::HealthClient::new),
            tunnel: backends.tunnel.clone().map(|c| {
                lattice_proto::tunnel::v1::tunnel_service_client::TunnelServiceClient::new(c)
                    .max_decoding_message_size(8 * 1024 * 1024)
            }),
            tunnel_channel: backends.tunnel_agents,
            changes: backends
                .policy
                .clone()
                .map(lattice_proto::policy::v1::change_service_client::ChangeServiceClient::new),
            policy: backends
                .policy
                .map(lattice_proto::policy::v1::policy_service_client::PolicyServiceClient::new),
            ca_sha256: tls_info
                .ca_fingerprint
                .as_ref()
                .map(|f| f.replace(':', "").to_ascii_lowercase()),
            tasks: backends
                .tasks
                .map(lattice_proto::tasks::v1::task_service_client::TaskServiceClient::new),
            internal,
            service_principal: Principal::service("gateway"),
            auth_generation: std::sync::atomic::AtomicU64::new(0),
            auth_cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(cfg.auth_cache_ttl_s))
                .support_invalidation_closures()
                .build(),
            cache,
            cfg: cfg.clone(),
            secure_cookies: https,
            metrics: Metrics::new(&backends.metrics),
            shutting_down: shutdown,
            draining: CancellationToken::new(),
        });
        let edge = edge::Edge::new(state.clone(), router(state.clone()));
        Ok(Self {
            state,
            edge,
            tls,
            tls_info,
        })
    }

    /// The edge service (bound hosts, then the API), for tests that drive it
    /// without a socket.
    pub fn service(&self) -> edge::Edge {
        self.edge.clone()
    }

    /// Phase two: serve on `listener` until shutdown, then drain for up to 10 s.
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let shutdown = self.state.shutting_down.clone();
        let listener_task = tokio::spawn(caller::run_revocation_listener(
            self.state.clone(),
            self.state.cache.clone(),
            shutdown.clone(),
        ));
        let storage_events = tokio::spawn(storage::host::run_event_listener(
            self.state.clone(),
            shutdown.clone(),
        ));
        let listen = serve::Listener {
            socket: listener,
            tls: self.tls,
            shutdown,
            draining: self.state.draining.clone(),
            grace: Duration::from_secs(self.state.cfg.shutdown_grace_s),
            drain: Duration::from_secs(10),
        };
        let result = serve::serve(listen, self.edge).await;
        listener_task.abort();
        storage_events.abort();
        result
    }
}

/// Every route, with its layers. Listed here, in one place.
pub fn router(state: Arc<AppState>) -> Router {
    // Site uploads take bigger bodies than the rest of the API.
    let uploads = Router::new()
        .route(
            "/api/v1/static/{bucket}/deployments",
            post(storage::sites::deploy),
        )
        .route(
            "/api/v1/static/{bucket}/objects/{*path}",
            put(storage::sites::put_object),
        )
        .layer(DefaultBodyLimit::max(state.cfg.upload_limit_bytes));
    // Agent releases stream through to the tunnel service, which caps them.
    let releases = Router::new()
        .route(
            "/api/v1/agent-releases",
            get(routes::releases::list).post(routes::releases::upload),
        )
        .layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .route("/api/v1/openapi.json", get(routes::system::openapi))
        .route("/api/v1/auth/login", post(routes::auth::login))
        .route("/api/v1/auth/login/totp", post(routes::auth::login_totp))
        .route("/api/v1/auth/logout", post(routes::auth::logout))
        .route("/api/v1/auth/me", get(routes::auth::me))
        .route("/api/v1/auth/orgs", get(routes::orgs::mine))
        .route(
            "/api/v1/orgs",
            get(routes::orgs::list).post(routes::orgs::create),
        )
        .route(
            "/api/v1/orgs/{name}",
            get(routes::orgs::get)
                .patch(routes::orgs::update)
                .delete(routes::orgs::delete),
        )
        .route("/api/v1/invitations", post(routes::orgs::invite))
        .route("/api/v1/invitations/accept", post(routes::orgs::accept))
        .route("/api/v1/users/{id}/scopes", put(routes::orgs::set_scopes))
        .route(
            "/api/v1/users/{id}/membership",
            delete(routes::orgs::remove_member),
        )
        .route("/api/v1/auth/password", post(routes::auth::change_password))
        .route("/api/v1/auth/totp/enroll", post(routes::auth::totp_enroll))
        .route(
            "/api/v1/auth/totp/confirm",
            post(routes::auth::totp_confirm),
        )
        .route(
            "/api/v1/auth/totp/disable",
            post(routes::auth::totp_disable),
        )
        .route(
            "/api/v1/tokens",
            post(routes::tokens::create).get(routes::tokens::list),
        )
        .route("/api/v1/tokens/{id}", delete(routes::tokens::revoke))
        .route(
            "/api/v1/users",
            post(routes::users::create).get(routes::users::list),
        )
        .route(
            "/api/v1/groups",
            post(routes::groups::create).get(routes::groups::list),
        )
        .route(
            "/api/v1/groups/{name}",
            get(routes::groups::get).delete(routes::groups::delete),
        )
        .route(
            "/api/v1/groups/{name}/members/{username}",
            put(routes::groups::add_member).delete(routes::groups::remove_member),
        )
        .route("/api/v1/users/{id}/unlock", post(routes::users::unlock))
        .route("/api/v1/users/{id}/disable", post(routes::users::disable))
        .route("/api/v1/users/{id}/enable", post(routes::users::enable))
        .route(
            "/api/v1/users/{id}/password",
            post(routes::users::set_password),
        )
        .route(
            "/api/v1/tasks",
            post(routes::tasks::create).get(routes::tasks::list),
        )
        .route("/api/v1/tasks/{id}", get(routes::tasks::get))
        .route("/api/v1/tasks/{id}/cancel", post(routes::tasks::cancel))
        .route("/api/v1/audit", get(routes::tasks::audit))
        .route(
            "/api/v1/policies",
            get(routes::policies::list).post(routes::policies::create),
        )
        .route(
            "/api/v1/policies/validate",
            post(routes::policies::validate),
        )
        .route(
            "/api/v1/intents",
            get(routes::changes::list_intents).post(routes::changes::put_intent),
        )
        .route(
            "/api/v1/intents/{name}",
            get(routes::changes::get_intent)
                .put(routes::changes::replace_intent)
                .delete(routes::changes::delete_intent),
        )
        .route(
            "/api/v1/intents/{name}/history",
            get(routes::changes::intent_history),
        )
        .route(
            "/api/v1/plans",
            get(routes::changes::list_plans).post(routes::changes::create_plan),
        )
        .route("/api/v1/plans/{id}", get(routes::changes::get_plan))
        .route(
            "/api/v1/auth/sso/cli/exchange",
            post(routes::sso::cli_exchange),
        )
        .route(
            "/api/v1/auth/sso/providers",
            get(routes::sso::sign_in_providers),
        )
        .route("/api/v1/auth/sso/{provider}/start", get(routes::sso::start))
        .route(
            "/api/v1/auth/sso/{provider}/callback",
            get(routes::sso::callback),
        )
        .route(
            "/api/v1/sso/providers",
            get(routes::sso::list).post(routes::sso::create),
        )
        .route(
            "/api/v1/sso/providers/{name}",
            get(routes::sso::get).delete(routes::sso::delete),
        )
        .route(
            "/api/v1/agent-releases/{version}/{arch}",
            get(routes::releases::get),
        )
        .route(
            "/api/v1/plans/{id}/approve",
            post(routes::changes::approve_plan),
        )
        .route(
            "/api/v1/plans/{id}/reject",
            post(routes::changes::reject_plan),
        )
        .route(
            "/api/v1/plans/{id}/cancel",
            post(routes::changes::cancel_plan),
        )
        .route("/api/v1/policies/explain", post(routes::policies::explain))
        .route("/api/v1/policies/dry-run", post(routes::policies::dry_run))
        .route(
            "/api/v1/policies/{name}",
            get(routes::policies::get)
                .put(routes::policies::put)
                .delete(routes::policies::delete),
        )
        .route("/api/v1/nodes", get(routes::nodes::list))
        .route(
            "/api/v1/nodes/join-tokens",
            post(routes::nodes::create_join_token),
        )
        .route(
            "/api/v1/nodes/{id}",
            get(routes::nodes::get)
                .patch(routes::nodes::patch)
                .delete(routes::nodes::delete),
        )
        .route(
            "/api/v1/nodes/{id}/reconnect",
            post(routes::nodes::reconnect),
        )
        .route("/api/v1/nodes/{id}/metrics", get(routes::nodes::metrics))
        .route("/api/v1/nodes/{id}/logs", get(routes::nodes::logs))
        .route("/api/v1/fleet/metrics", get(routes::nodes::fleet_metrics))
        .route("/api/v1/audit/verify", get(routes::tasks::verify))
        .route(
            "/api/v1/buckets",
            post(storage::control::create_bucket).get(storage::control::list_buckets),
        )
        .route(
            "/api/v1/buckets/{name}",
            delete(storage::control::delete_bucket),
        )
        .route("/api/v1/kv/{bucket}", get(storage::control::kv_list))
        .route(
            "/api/v1/kv/{bucket}/{*key}",
            get(storage::control::kv_get)
                .put(storage::control::kv_put)
                .delete(storage::control::kv_delete),
        )
        .route(
            "/api/v1/bindings",
            post(storage::control::create_binding).get(storage::control::list_bindings),
        )
        .route(
            "/api/v1/bindings/{host}",
            delete(storage::control::delete_binding).patch(storage::control::patch_binding),
        )
        .route(
            "/api/v1/storage-tokens",
            post(storage::control::create_storage_token).get(storage::control::list_storage_tokens),
        )
        .route(
            "/api/v1/storage-tokens/{id}",
            delete(storage::control::revoke_storage_token),
        )
        .route(
            "/api/v1/static/{bucket}/deployments",
            get(storage::sites::list_deployments),
        )
        .route(
            "/api/v1/static/{bucket}/deployments/{id}/activate",
            post(storage::sites::activate),
        )
        .route(
            "/api/v1/static/{bucket}/objects",
            get(storage::sites::list_objects),
        )
        .route(
            "/api/v1/static/{bucket}/objects/{*path}",
            delete(storage::sites::delete_object),
        )
        .merge(uploads)
        .merge(releases)
        // The dashboard: one shell for every page, and its hashed assets.
        .route("/", get(ui::root))
        .route("/ui", get(ui::shell))
        .route("/ui/", get(ui::shell))
        .route("/ui/assets/{file}", get(ui::asset))
        .route("/ui/{*page}", get(ui::shell))
        .route("/health", get(routes::system::health))
        .route("/ready", get(routes::system::ready))
        .route("/metrics", get(routes::system::metrics))
        // gRPC on the same port: health for now (the agent stream joins later).
        .route_service("/grpc.health.v1.Health/{*method}", grpc_health())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    let timeout = Duration::from_secs(state.cfg.request_timeout_s);
    let body_limit = state.cfg.body_limit_bytes;
    let hsts = state.secure_cookies;
    let request_id = HeaderName::from_static("x-request-id");
    let api: Router = api
        // Counts and times every answer by matched route (innermost, sees the real status).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(axum::middleware::from_fn(gzip_json))
        // JSON extractors refuse bodies over the limit with 413.
        .layer(DefaultBodyLimit::max(body_limit))
        // A slow handler answers 503 instead of holding the connection forever.
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            request_timeout,
        ))
        // Security headers on every answer (API answers are never rendered as pages).
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::STRICT_TRANSPORT_SECURITY,
            if hsts {
                HeaderValue::from_static("max-age=31536000")
            } else {
                HeaderValue::from_static("max-age=0")
            },
        ))
        .with_state(state.clone());
    // Long-lived streams: no request timeout and no body limit (the agent stream and
    // proxied requests, such as a Kubernetes watch, last as long as they need).
    let streams = Router::new()
        .route(
            "/api/v1/nodes/{node}/proxy/{port}",
            axum::routing::any(routes::nodes::proxy),
        )
        .route(
            "/api/v1/nodes/{node}/proxy/{port}/",
            axum::routing::any(routes::nodes::proxy),
        )
        .route(
            "/api/v1/nodes/{node}/proxy/{port}/{*path}",
            axum::routing::any(routes::nodes::proxy),
        )
        .route(
            "/api/v1/nodes/{node}/portforward/{port}",
            get(routes::nodes::port_forward),
        )
        .route(
            "/lattice.agent.v1.AgentService/{*method}",
            axum::routing::post(routes::nodes::relay_agent),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(state.clone());
    Router::new()
        .merge(streams)
        .fallback_service(api)
        // One span per request, parented to the caller's W3C trace context.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let span = tracing::info_span!(
                "http",
                method = %req.method(),
                path = %req.uri().path(),
                request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or(""),
            );
            lattice_core::telemetry::set_parent_from_headers(&span, req.headers());
            span
        }))
        // Credentials never reach logs or traces.
        .layer(SetSensitiveRequestHeadersLayer::new([http::header::AUTHORIZATION, http::header::COOKIE]))
        // Echo the request id (the edge gives every request one) so clients can quote it.
        .layer(PropagateRequestIdLayer::new(request_id))
        // A panicking handler answers 500 instead of dropping the connection.
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(lattice_core::ErrorCode::Internal, "internal error"))
        }))
        .with_state(state.clone())
}

/// gRPC health of the gateway itself ("" = serving while the process runs).
fn grpc_health()
-> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    let (_reporter, service) = tonic_health::server::health_reporter();
    service
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Answer 503 with the JSON error when a handler takes longer than the request
/// timeout; dropping the handler's future cancels its work.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => axum::response::IntoResponse::into_response(ApiError {
            code: lattice_core::ErrorCode::Unavailable,
            message: format!("request took longer than {} s", limit.as_secs()),
            retry_after_s: Some(1),
        }),
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        lattice_core::ErrorCode::MethodNotAllowed,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// gzip for JSON answers of 1 KiB or more when the client takes it (a list of a
/// thousand nodes shrinks about tenfold). Only whole JSON bodies of a known size up
/// to 8 MiB: streams, files and site content pass through as they are.
async fn gzip_json(req: Request, next: Next) -> Response {
    use axum::body::HttpBody as _;
    let takes_gzip = req
        .headers()
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.split(';').next().is_some_and(|e| e.trim() == "gzip"))
        });
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let size = resp.body().size_hint().exact().unwrap_or(u64::MAX);
    if !takes_gzip
        || !json
        || !(1024..=8 * 1024 * 1024).contains(&size)
        || resp.headers().contains_key(http::header::CONTENT_ENCODING)
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 8 * 1024 * 1024).await else {
        return axum::response::IntoResponse::into_response(ApiError::new(
            lattice_core::ErrorCode::Internal,
            "answer body failed",
        ));
    };
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    let gz = std::io::Write::write_all(&mut enc, &bytes).and_then(|()| enc.finish());
    let Ok(gz) = gz else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.append(
        http::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
    Response::from_parts(parts, axum::body::Body::from(gz))
}

async fn record_metrics(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed("unmatched"), |p| {
            Cow::Owned(p.as_str().to_owned())
        });
    let method = metrics::method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(
        route,
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}
