//! `/health`, `/ready`, `/metrics`, `/api/v1/openapi.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use utoipa::{OpenApi as _, ToSchema};

use crate::AppState;

/// Liveness and readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: &'static str,
    /// Per dependency: `ok` or the reason it is not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// One dependency check.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// Dependency.
    pub name: String,
    /// `ok` or why not.
    pub status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "system", security(()), responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: Vec::new(),
    })
}

/// Readiness: every dependency reachable (identity, storage, tasks and tunnel over gRPC
/// health, where configured; cache).
#[utoipa::path(get, path = "/ready", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = Health, description = "A dependency is not ready, or the gateway is shutting down")))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "not_ready",
                checks: vec![Check {
                    name: "gateway".into(),
                    status: "shutting down".into(),
                }],
            }),
        )
            .into_response();
    }
    let mut checks = vec![Check {
        name: "identity".into(),
        status: grpc_health(state.health.clone(), "lattice.identity.v1.IdentityService").await,
    }];
    if let Some(storage) = &state.storage_health {
        checks.push(Check {
            name: "storage".into(),
            status: grpc_health(storage.clone(), "lattice.storage.v1.StorageService").await,
        });
    }
    if let Some(tasks) = &state.tasks_health {
        checks.push(Check {
            name: "tasks".into(),
            status: grpc_health(tasks.clone(), "lattice.tasks.v1.TaskService").await,
        });
    }
    if let Some(tunnel) = &state.tunnel_health {
        checks.push(Check {
            name: "tunnel".into(),
            status: grpc_health(tunnel.clone(), "lattice.tunnel.v1.TunnelService").await,
        });
    }
    if let Some(policy) = &state.policy_health {
        checks.push(Check {
            name: "policy".into(),
            status: grpc_health(policy.clone(), "lattice.policy.v1.PolicyService").await,
        });
    }
    checks.push(Check {
        name: "cache".into(),
        status: match state.cache.ping().await {
            Ok(()) => "ok".into(),
            // Redis is an accelerator: its loss costs speed, not readiness.
            Err(e) => format!("degraded: {e}"),
        },
    });
    let ok = checks
        .iter()
        .all(|c| c.status == "ok" || c.status.starts_with("degraded"));
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if ok { "ready" } else { "not_ready" },
            checks,
        }),
    )
        .into_response()
}

/// `ok`, or why `service` is not serving, from its gRPC health (2 s at most).
async fn grpc_health(
    mut client: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    service: &str,
) -> String {
    let req = tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    };
    match tokio::time::timeout(Duration::from_secs(2), client.check(req)).await {
        Ok(Ok(r))
            if r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            "ok".to_owned()
        }
        Ok(Ok(r)) => format!("not serving ({})", r.get_ref().status),
        Ok(Err(s)) => format!("unreachable: {}", s.message()),
        Err(_) => "timed out".to_owned(),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "system", security(()),
    responses((status = 200, content_type = "text/plain", description = "Prometheus text format"),
        (status = 500, body = crate::error::ErrorBody, description = "The registry cannot be encoded")))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.encode() {
        Ok(text) => (
            [(
                http::header::CONTENT_TYPE,
                lattice_core::metrics::OPENMETRICS_CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            crate::error::ApiError::new(lattice_core::ErrorCode::Internal, "internal error")
                .into_response()
        }
    }
}

/// The OpenAPI 3 document for every REST route.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", security(()), responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        crate::openapi::ApiDoc::openapi()
            .to_json()
            .unwrap_or_default()
    });
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        DOC.as_str(),
    )
        .into_response()
}
