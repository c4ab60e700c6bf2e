//! The process's one Prometheus registry. Every part of a process (the gateway's
//! HTTP routes, each internal gRPC server) registers its metrics here, and every
//! `/metrics` endpoint of the process (the gateway's, or the ops listener's) encodes
//! the same registry, so a scrape sees the whole process wherever it lands.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The media type of [`MetricsRegistry::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A handle on the process's registry (metric names start with `lattice_`); cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct MetricsRegistry {
    registry: Arc<Mutex<Registry>>,
}

impl Default for MetricsRegistry {
    fn default() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("lattice"))),
        }
    }
}

impl MetricsRegistry {
    /// Register `metric` as `lattice_<prefix>_<name>` (`lattice_<name>` when
    /// `prefix` is empty).
    pub fn register(&self, prefix: &str, name: &str, help: &str, metric: impl Metric) {
        let mut registry = self
            .registry
            .lock()
            .expect("metrics registry mutex is never poisoned");
        if prefix.is_empty() {
            registry.register(name, help, metric);
        } else {
            registry
                .sub_registry_with_prefix(prefix)
                .register(name, help, metric);
        }
    }

    /// The OpenMetrics text exposition of everything registered.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .expect("metrics registry mutex is never poisoned");
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// A latency histogram with the buckets every Lattice request metric uses
/// (0.5 ms to 5 s).
pub fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn every_part_lands_in_one_exposition() {
        let registry = MetricsRegistry::default();
        let http: Counter = Counter::default();
        let grpc: Counter = Counter::default();
        registry.register("gateway", "http_requests", "HTTP", http.clone());
        registry.register("", "grpc_server_requests", "gRPC", grpc.clone());
        http.inc();
        grpc.inc_by(2);
        let text = registry.encode().unwrap();
        assert!(
            text.contains("lattice_gateway_http_requests_total 1"),
            "{text}"
        );
        assert!(
            text.contains("lattice_grpc_server_requests_total 2"),
            "{text}"
        );
    }
}
