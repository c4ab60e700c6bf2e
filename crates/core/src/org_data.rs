//! The one gRPC adapter of `lattice.orgs.v1.OrgData`: each service that keeps data
//! per org implements [`OrgData`] (its usage and its purge of one org, with its own
//! `orgs:admin` check), and serves it with [`OrgDataServer::new`].

use std::collections::BTreeMap;

use lattice_proto::orgs::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::RequestContext;
use crate::grpc::context_of;

/// What a service holds of an org, and dropping it.
#[async_trait::async_trait]
pub trait OrgData: Send + Sync + 'static {
    /// Counts by kind (only kinds with something in them).
    async fn usage(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<BTreeMap<String, i64>, Status>;

    /// Remove everything of the org (idempotent); what went, by kind.
    async fn purge(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<BTreeMap<String, i64>, Status>;
}

/// Serves an [`OrgData`] as `lattice.orgs.v1.OrgData`.
#[derive(Debug, Clone)]
pub struct OrgDataServer<T>(T);

impl<T: OrgData> OrgDataServer<T> {
    /// The tonic service, behind `interceptor` (the principal check).
    pub fn new<F>(
        data: T,
        interceptor: F,
    ) -> tonic::service::interceptor::InterceptedService<pb::org_data_server::OrgDataServer<Self>, F>
    where
        F: tonic::service::Interceptor,
    {
        pb::org_data_server::OrgDataServer::with_interceptor(Self(data), interceptor)
    }
}

fn counts(map: BTreeMap<String, i64>) -> Response<pb::OrgDataCounts> {
    Response::new(pb::OrgDataCounts {
        counts: map.into_iter().collect(),
    })
}

#[async_trait::async_trait]
impl<T: OrgData> pb::org_data_server::OrgData for OrgDataServer<T> {
    async fn usage(
        &self,
        req: Request<pb::OrgDataRequest>,
    ) -> Result<Response<pb::OrgDataCounts>, Status> {
        let ctx = context_of(&req)?;
        self.0.usage(&ctx, &req.get_ref().org_id).await.map(counts)
    }

    async fn purge(
        &self,
        req: Request<pb::OrgDataRequest>,
    ) -> Result<Response<pb::OrgDataCounts>, Status> {
        let ctx = context_of(&req)?;
        self.0.purge(&ctx, &req.get_ref().org_id).await.map(counts)
    }
}
