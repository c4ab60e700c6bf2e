//! Secret KV buckets: values sealed at rest with the database's data key (bound to
//! their bucket and key), and every read of a value an `AccessSecret` decision of
//! the policy service: default deny, as seed `001_0145cafbdb7ec5b9.txt` says
//! ("services with secrets require an explicit permit"). The policy service records
//! every such decision in the audit chain with the policies that decided it.

use std::sync::{Arc, OnceLock};

use lattice_core::auth::{InternalAuth, RequestContext};
use lattice_core::grpc::InternalService;
use lattice_proto::policy::v1 as policy;
use lattice_proto::policy::v1::policy_service_client::PolicyServiceClient;

use super::{Result, Storage};
use crate::error::StorageError;
use crate::store::{BucketRow, KvRow};

/// Who reads a secret value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretReader<'a> {
    /// The request's own principal (an operator, through the API).
    Caller,
    /// A storage token, relayed by the gateway: `Lattice::Service::"token:<name>"`.
    StorageToken {
        /// The token's name.
        name: &'a str,
        /// Its org.
        org: &'a str,
    },
}

/// Decides whether a reader may read `bucket/key` of a secret bucket.
#[async_trait::async_trait]
pub trait SecretPolicy: Send + Sync {
    /// Ok to read; `Forbidden` when the policy refuses, `Unavailable` when it cannot
    /// be asked (a read is never allowed without an answer).
    async fn may_read(
        &self,
        ctx: &RequestContext,
        reader: SecretReader<'_>,
        bucket: &str,
        key: &str,
    ) -> Result<()>;
}

/// The policy service as the [`SecretPolicy`].
pub struct PolicyGate {
    policy: Arc<OnceLock<PolicyServiceClient<InternalService>>>,
    internal: InternalAuth,
}

impl PolicyGate {
    /// A gate whose policy client is set later with [`PolicyGate::link`] (the policy
    /// service may start after the storage service in one process).
    pub fn new(internal: InternalAuth) -> Self {
        Self {
            policy: Arc::new(OnceLock::new()),
            internal,
        }
    }

    /// Where the policy service is reached; set once.
    pub fn link(&self) -> Arc<OnceLock<PolicyServiceClient<InternalService>>> {
        self.policy.clone()
    }
}

#[async_trait::async_trait]
impl SecretPolicy for PolicyGate {
    async fn may_read(
        &self,
        ctx: &RequestContext,
        reader: SecretReader<'_>,
        bucket: &str,
        key: &str,
    ) -> Result<()> {
        let mut client = self.policy.get().cloned().ok_or_else(|| {
            StorageError::Unavailable(
                "policy.url is not configured: secret values cannot be read until it is".into(),
            )
        })?;
        let (service, org_id) = match reader {
            SecretReader::Caller => (None, String::new()),
            SecretReader::StorageToken { name, org } => (
                Some(policy::ServicePrincipal {
                    kind: policy::service_principal::Kind::StorageToken.into(),
                    name: name.to_owned(),
                }),
                org.to_owned(),
            ),
        };
        let request = lattice_core::grpc::request(
            &self.internal,
            &ctx.principal,
            Some(&ctx.client_ip),
            policy::AuthorizeRequest {
                service,
                action: policy::Action::AccessSecret.into(),
                resource: Some(policy::authorize_request::Resource::Secret(
                    policy::SecretResource {
                        bucket: bucket.to_owned(),
                        key: key.to_owned(),
                    },
                )),
                org_id,
                ..Default::default()
            },
        );
        let answer = client
            .authorize(request)
            .await
            .map_err(|s| StorageError::Unavailable(format!("policy service: {}", s.message())))?
            .into_inner();
        if answer.allow {
            Ok(())
        } else {
            Err(StorageError::Forbidden(format!(
                "policy denies AccessSecret on SecretPath {:?}",
                format!("{bucket}/{key}")
            )))
        }
    }
}

/// What seals values at rest and what decides reads of a secret bucket.
#[derive(Clone)]
pub struct Secrets {
    pub(super) sealer: Arc<lattice_core::crypto::Sealer>,
    pub(super) policy: Arc<dyn SecretPolicy>,
}

impl Secrets {
    /// Seal with `sealer` (the database's data key), decide with `policy`.
    pub fn new(sealer: lattice_core::crypto::Sealer, policy: Arc<dyn SecretPolicy>) -> Self {
        Self {
            sealer: Arc::new(sealer),
            policy,
        }
    }
}

/// What a sealed value is bound to: its bucket (by id, so a value cannot be moved
/// to another bucket of the same name) and key.
fn aad(bucket: &BucketRow, key: &str) -> String {
    format!("storage.kv:{}/{key}", bucket.id)
}

impl Storage {
    /// The text stored for `value` under `key` of `bucket`: sealed when the bucket
    /// holds secrets.
    pub(super) fn at_rest(&self, bucket: &BucketRow, key: &str, value: &str) -> Option<String> {
        bucket
            .secret
            .then(|| self.secrets.sealer.seal_text(value, &aad(bucket, key)))
    }

    /// Open a stored row of `bucket` (a no-op for a bucket without secrets).
    pub(super) fn opened(&self, bucket: &BucketRow, mut row: KvRow) -> Result<KvRow> {
        if bucket.secret {
            let plain = self
                .secrets
                .sealer
                .open_text(&row.value, &aad(bucket, &row.key))
                .map_err(|e| {
                    tracing::error!(bucket = %bucket.id, key = %row.key, error = %e, "a sealed KV value does not open");
                    StorageError::Internal(format!(
                        "the value of {:?} cannot be unsealed with this master key",
                        row.key
                    ))
                })?;
            row.value = plain.as_str().to_owned();
        }
        Ok(row)
    }

    /// Whether `reader` may read `key` of `bucket`: always for a bucket without
    /// secrets, the policy's decision (default deny) for a secret one.
    pub(super) async fn check_secret_read(
        &self,
        ctx: &RequestContext,
        reader: SecretReader<'_>,
        bucket: &BucketRow,
        key: &str,
    ) -> Result<()> {
        if !bucket.secret {
            return Ok(());
        }
        self.secrets
            .policy
            .may_read(ctx, reader, &bucket.name, key)
            .await
    }
}
