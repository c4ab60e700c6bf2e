//! Users' groups, from the identity service (which owns them), remembered briefly:
//! membership changes announce `GroupsChanged` and evict an org's entries on every
//! replica.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lattice_core::auth::{InternalAuth, Principal, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::identity::v1::UserGroupsRequest;
use lattice_proto::identity::v1::identity_service_client::IdentityServiceClient;

use crate::error::PolicyError;
use crate::service::GroupDirectory;

/// The identity service as the group directory.
#[derive(Debug)]
pub struct IdentityGroups {
    identity: Arc<OnceLock<IdentityServiceClient<InternalService>>>,
    internal: InternalAuth,
    principal: Principal,
    /// (org, username) -> group names.
    known: moka::sync::Cache<(String, String), Arc<Vec<String>>>,
}

impl IdentityGroups {
    /// A directory whose identity client is set later with [`IdentityGroups::link`].
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            identity: Arc::new(OnceLock::new()),
            internal,
            principal: Principal::service("policy"),
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                // A backstop: `GroupsChanged` evicts on every change.
                .time_to_live(Duration::from_secs(30))
                .support_invalidation_closures()
                .build(),
        }
    }

    /// Where the identity service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<IdentityServiceClient<InternalService>>> {
        self.identity.clone()
    }

    /// The internal auth calls are signed with.
    pub fn internal(&self) -> &InternalAuth {
        &self.internal
    }
}

#[async_trait::async_trait]
impl GroupDirectory for IdentityGroups {
    async fn groups_of(
        &self,
        ctx: &RequestContext,
        org: &str,
        username: &str,
    ) -> Result<Vec<String>, PolicyError> {
        let key = (org.to_owned(), username.to_owned());
        if let Some(hit) = self.known.get(&key) {
            return Ok(hit.as_ref().clone());
        }
        let mut identity = self.identity.get().cloned().ok_or_else(|| {
            PolicyError::Unavailable(
                "gateway.identity_url is not configured: the policy service cannot read group membership".into(),
            )
        })?;
        let request = lattice_core::grpc::request(
            &self.internal,
            &self.principal,
            Some(&ctx.client_ip),
            UserGroupsRequest {
                username: username.to_owned(),
                org_id: org.to_owned(),
            },
        );
        let groups = match identity.user_groups(request).await {
            Ok(r) => r.into_inner().groups,
            // A token or user that no longer exists is in no group.
            Err(status)
                if lattice_core::error::code_of(&status) == lattice_core::ErrorCode::NotFound =>
            {
                Vec::new()
            }
            Err(status) => {
                return Err(PolicyError::Unavailable(format!(
                    "identity service: {}",
                    status.message()
                )));
            }
        };
        self.known.insert(key, Arc::new(groups.clone()));
        Ok(groups)
    }

    fn forget_all(&self) {
        self.known.invalidate_all();
    }

    fn forget(&self, org: &str) {
        let org = org.to_owned();
        if self
            .known
            .invalidate_entries_if(move |(o, _), _| *o == org)
            .is_err()
        {
            self.known.invalidate_all();
        }
    }
}

/// A fixed directory (tests, and deployments without groups).
#[derive(Debug, Default)]
pub struct StaticGroups(pub std::collections::HashMap<String, Vec<String>>);

#[async_trait::async_trait]
impl GroupDirectory for StaticGroups {
    async fn groups_of(
        &self,
        _ctx: &RequestContext,
        _org: &str,
        username: &str,
    ) -> Result<Vec<String>, PolicyError> {
        Ok(self.0.get(username).cloned().unwrap_or_default())
    }
}
