//! Moves each service's recorded audit events (its `*_audit` table) to the tasks
//! service's hash-chained log, oldest first, deleting them only once the log has
//! acknowledged them. Event ids make a resend after a crash harmless.

use std::time::Duration;

use lattice_core::audit::TableAudit;
use lattice_core::auth::{InternalAuth, Principal};
use lattice_proto::tasks::v1 as pb;
use lattice_proto::tasks::v1::task_service_client::TaskServiceClient;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 500;

/// Forward until `shutdown`, then flush what is left (bounded by a few seconds).
pub async fn run(
    service: &'static str,
    table: TableAudit,
    client: TaskServiceClient<lattice_core::grpc::InternalService>,
    internal: InternalAuth,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let principal = Principal::service(service);
    let mut failures = 0u32;
    loop {
        let pause = match forward_once(&table, &client, &internal, &principal).await {
            Ok(n) if n as i64 == BATCH => Duration::ZERO,
            Ok(_) => {
                failures = 0;
                Duration::from_millis(250)
            }
            Err(err) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(service, error = %format!("{err:#}"), "audit events wait in the local table: the tasks service is unreachable");
                }
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        forward_once(&table, &client, &internal, &principal),
    )
    .await;
    Ok(())
}

async fn forward_once(
    table: &TableAudit,
    client: &TaskServiceClient<lattice_core::grpc::InternalService>,
    internal: &InternalAuth,
    principal: &Principal,
) -> anyhow::Result<usize> {
    let batch = table.pending(BATCH).await?;
    if batch.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = batch.iter().map(|(id, _, _)| id.clone()).collect();
    let events = batch
        .into_iter()
        .map(|(event_id, at_ms, e)| pb::AuditEvent {
            event_id,
            at_ms,
            org_id: e.org_id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome.as_str().into(),
            client_ip: e.client_ip,
            detail: e.detail,
        })
        .collect();
    client
        .clone()
        .append_audit(lattice_core::grpc::request(
            internal,
            principal,
            None,
            pb::AppendAuditRequest { events },
        ))
        .await?;
    table.forwarded(&ids).await?;
    Ok(ids.len())
}
