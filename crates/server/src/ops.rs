//! `/health`, `/ready` and `/metrics` for processes that do not run the gateway (which
//! serves them itself): an identity-only or storage-only replica is probed and
//! scraped like any other process. Also the gRPC request metrics of this process's
//! internal servers.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use lattice_core::db::Db;
use lattice_core::metrics::MetricsRegistry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The process's gRPC server metrics (in the process's one registry).
#[derive(Debug, Clone)]
pub struct GrpcMetrics {
    registry: MetricsRegistry,
    requests: Family<GrpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
}

impl GrpcMetrics {
    /// Register the internal gRPC servers' metrics in `registry`
    /// (`lattice_grpc_server_*`).
    pub fn new(registry: &MetricsRegistry) -> Self {
        let requests = Family::<GrpcLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            lattice_core::metrics::latency_histogram,
        );
        registry.register(
            "",
            "grpc_server_requests",
            "Internal gRPC requests answered (HTTP status of the response head)",
            requests.clone(),
        );
        registry.register(
            "",
            "grpc_server_response_seconds",
            "Time to the response head of internal gRPC requests",
            latency.clone(),
        );
        Self {
            registry: registry.clone(),
            requests,
            latency,
        }
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        self.registry.encode()
    }
}

impl<S> tower::Layer<S> for GrpcMetrics {
    type Service = MeteredService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MeteredService {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A gRPC server service that counts and times its requests.
#[derive(Debug, Clone)]
pub struct MeteredService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MeteredService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let status = result.as_ref().map_or(500, |r| r.status().as_u16());
            metrics
                .requests
                .get_or_create(&GrpcLabels {
                    method: method.clone(),
                    status,
                })
                .inc();
            metrics
                .latency
                .get_or_create(&MethodLabels { method })
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: GrpcMetrics,
    databases: Vec<(&'static str, Db)>,
    shutdown: CancellationToken,
}

async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<OpsState>) -> Response {
    let mut checks = Vec::new();
    let mut ok = !state.shutdown.is_cancelled();
    for (name, db) in &state.databases {
        let status = match tokio::time::timeout(Duration::from_secs(2), db.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => format!("unreachable: {e}"),
            Err(_) => "timed out".to_owned(),
        };
        ok &= status == "ok";
        checks.push(serde_json::json!({"name": name, "status": status}));
    }
    let code = if ok {
        http::StatusCode::OK
    } else {
        http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        serde_json::json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
    (code, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<OpsState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                http::header::CONTENT_TYPE,
                lattice_core::metrics::OPENMETRICS_CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serve the ops endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: GrpcMetrics,
    databases: Vec<(&'static str, Db)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = OpsState {
        metrics,
        databases,
        shutdown: shutdown.clone(),
    };
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
