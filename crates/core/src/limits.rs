//! Per-org limits: owned by the identity service (the platform admin sets them),
//! enforced by the services that hold what they count (storage: buckets and stored
//! bytes; the tunnel: nodes). A service reads an org's limits through this, which
//! remembers them for 30 seconds.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lattice_proto::identity::v1::identity_service_client::IdentityServiceClient;
use lattice_proto::identity::v1::{Limits, OrgLimitsRequest};

use crate::auth::{InternalAuth, Principal};
use crate::grpc::InternalService;

/// How long an org's limits are remembered (a raised limit applies within this).
const REMEMBER: Duration = Duration::from_secs(30);

/// Reads orgs' limits from the identity service.
#[derive(Debug)]
pub struct OrgLimits {
    identity: Arc<OnceLock<IdentityServiceClient<InternalService>>>,
    internal: InternalAuth,
    principal: Principal,
    known: moka::sync::Cache<String, Limits>,
}

impl OrgLimits {
    /// Limits read as service `service`; the identity client is set later with
    /// [`OrgLimits::link`]. Until it is, no org has limits.
    pub fn new(internal: InternalAuth, service: &str) -> Self {
        Self {
            identity: Arc::new(OnceLock::new()),
            internal,
            principal: Principal::service(service),
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REMEMBER)
                .build(),
        }
    }

    /// Where the identity service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<IdentityServiceClient<InternalService>>> {
        self.identity.clone()
    }

    /// `org_id`'s limits (all 0, none, when identity is not linked). An identity
    /// that cannot answer is an error: a limit that cannot be read is not passed.
    pub async fn of(&self, org_id: &str) -> Result<Limits, tonic::Status> {
        if let Some(hit) = self.known.get(org_id) {
            return Ok(hit);
        }
        let Some(mut identity) = self.identity.get().cloned() else {
            return Ok(Limits::default());
        };
        let limits = identity
            .org_limits(crate::grpc::request(
                &self.internal,
                &self.principal,
                None,
                OrgLimitsRequest {
                    org_id: org_id.to_owned(),
                },
            ))
            .await?
            .into_inner();
        self.known.insert(org_id.to_owned(), limits);
        Ok(limits)
    }
}
