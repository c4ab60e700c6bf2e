//! Prometheus metrics of the gateway: requests by route, method and status, and
//! their latency.

use std::borrow::Cow;

use lattice_core::metrics::MetricsRegistry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

// Borrowed label values: counting a request allocates nothing when its series
// exists (routes and methods are few and mostly static strings).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Cow<'static, str>,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Cow<'static, str>,
}

/// The gateway's request metrics (in the process's one registry).
#[derive(Debug)]
pub struct Metrics {
    registry: MetricsRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl Metrics {
    /// Register the gateway's metrics in `registry` (`lattice_gateway_*`).
    pub fn new(registry: &MetricsRegistry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            lattice_core::metrics::latency_histogram,
        );
        registry.register(
            "gateway",
            "http_requests",
            "HTTP requests answered",
            requests.clone(),
        );
        registry.register(
            "gateway",
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        Self {
            registry: registry.clone(),
            requests,
            latency,
        }
    }
}

/// A bounded label for an HTTP method: clients choose methods freely, and each label
/// value is a series kept forever.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    /// Count one answered request (`method` from [`method_label`]).
    pub fn observe(
        &self,
        route: impl Into<Cow<'static, str>>,
        method: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let route = route.into();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    /// Text exposition of the whole process's registry.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.registry.encode()
    }
}
