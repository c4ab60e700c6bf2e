//! Traces leave the real binary over OTLP/gRPC, and one W3C trace context spans the
//! client's request, the gateway and the internal gRPC hop to identity.

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

mod common;

/// (trace id hex, span name, service.name)
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

struct Collector(Seen);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut seen = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    seen.push((hex(&span.trace_id), span.name, service.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn traces_are_exported_and_follow_the_request_across_the_grpc_hop() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Collector(seen.clone())))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let collector = tokio::spawn(server);

    let dir = tempfile::tempdir().unwrap();
    let collector_url = format!("http://{collector_addr}");
    let (mut server, url) = common::process::spawn_all_in_one(
        dir.path(),
        "off",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str())],
    );

    // The client starts the trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{url}/api/v1/auth/login"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"username": "admin", "password": "admin-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A graceful stop flushes the batch exporter.
    assert!(
        Command::new("kill")
            .args(["-TERM", &server.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if server.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let names: HashSet<String> = loop {
        let names: HashSet<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == trace_id)
            .map(|(_, n, _)| n.clone())
            .collect();
        if names.contains("http") && names.contains("grpc") || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        names.contains("http"),
        "gateway span in the client's trace: {:?}",
        seen.lock().unwrap()
    );
    assert!(
        names.contains("grpc"),
        "identity's gRPC span in the same trace: {:?}",
        seen.lock().unwrap()
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|(_, _, svc)| svc.contains("lattice-server"))
    );
    collector.abort();
}
