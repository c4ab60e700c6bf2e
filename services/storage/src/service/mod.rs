//! The storage domain: buckets, KV, static deployments, host bindings and storage
//! tokens. Transport-free: the gRPC adapter converts messages and errors; this module
//! decides. Split by area: `kv`, `sites`, `access` (bindings and tokens), `serving`.

mod access;
mod kv;
mod limits;
mod orgs;
mod secrets;
mod serving;
mod sites;

use std::sync::Arc;

use lattice_core::audit::{Actor, AuditSink, Outcome};
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::cache::Cache;

pub use self::kv::KvPage;
pub use self::secrets::{PolicyGate, SecretPolicy, SecretReader, Secrets};
pub use self::serving::Resolution;
pub use self::sites::NewFile;
use crate::blobs::Blobs;
use crate::error::StorageError;
use crate::input::NewBucket;
use crate::model::{Access, BucketName, Surface};
use crate::store::{BucketRow, Store};

type Result<T> = std::result::Result<T, StorageError>;

/// Limits of the storage service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest deployment (sum of file sizes), bytes.
    pub max_deployment_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_deployment_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The storage service.
#[derive(Clone)]
pub struct Storage {
    store: Store,
    blobs: Blobs,
    cache: Cache,
    audit: Arc<dyn AuditSink>,
    limits: Limits,
    secrets: Secrets,
    /// The orgs' limits (buckets, stored bytes), from the identity service.
    org_limits: Option<Arc<lattice_core::limits::OrgLimits>>,
    /// sha256(storage token secret) -> its grant. Short-lived; revocations evict.
    grants: moka::sync::Cache<String, Arc<lattice_proto::storage::v1::StorageGrant>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

fn require_user(p: &Principal) -> Result<()> {
    if p.is_service() {
        return Err(StorageError::Forbidden(
            "this call needs an operator principal".into(),
        ));
    }
    Ok(())
}

fn require_service(p: &Principal) -> Result<()> {
    if p.is_service() {
        Ok(())
    } else {
        Err(StorageError::Forbidden(
            "only the gateway may call this".into(),
        ))
    }
}

fn require_scope(p: &Principal, surface: Surface, level: Access) -> Result<()> {
    require_user(p)?;
    let scope = surface.scope(level);
    if p.allows(&scope) {
        Ok(())
    } else {
        Err(StorageError::MissingScope(scope))
    }
}

impl Storage {
    /// Build over a migrated store and a blob store; `secrets` seals the values of
    /// secret buckets and decides who reads them.
    pub fn new(store: Store, blobs: Blobs, cache: Cache, limits: Limits, secrets: Secrets) -> Self {
        let audit = Arc::new(lattice_core::audit::TableAudit::new(
            store.db().clone(),
            "storage_audit",
        ));
        Self {
            store,
            blobs,
            cache,
            audit,
            limits,
            secrets,
            org_limits: None,
            grants: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(10))
                .support_invalidation_closures()
                .build(),
        }
    }

    /// Enforce the orgs' limits read through `limits`.
    pub fn with_org_limits(mut self, limits: Arc<lattice_core::limits::OrgLimits>) -> Self {
        self.org_limits = Some(limits);
        self
    }

    /// The cache and bus this service publishes on.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Tell every replica that storage token `id` was revoked.
    async fn announce_revoked(&self, id: &str) {
        self.cache
            .announce(&lattice_proto::events::v1::StorageTokenRevoked {
                token_id: id.to_owned(),
            })
            .await;
    }

    /// Forget every cached storage-token grant.
    pub fn forget_all_grants(&self) {
        self.grants.invalidate_all();
    }

    /// The store (tests, readiness).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Record that `actor` did `action` to `target`.
    async fn audit(&self, actor: Actor<'_>, action: &str, target: &str, detail: serde_json::Value) {
        let event = actor.event(action, target, Outcome::Success, &detail);
        if let Err(err) = self.audit.record(event).await {
            tracing::error!(error = %format!("{err:#}"), action, "recording audit event failed");
        }
    }

    /// Announce that what `hosts` serve changed, to every gateway replica.
    async fn hosts_changed(&self, hosts: &[String]) {
        for host in hosts {
            self.cache
                .delete(&lattice_proto::storage::host_cache_key(host))
                .await;
            self.cache
                .announce(&lattice_proto::events::v1::HostChanged { host: host.clone() })
                .await;
        }
    }

    /// The caller's bucket `name`, checked for `level` on its surface and, when
    /// `surface` is given, that it is of that surface.
    async fn bucket_for(
        &self,
        p: &Principal,
        name: &str,
        surface: Option<Surface>,
        level: Access,
    ) -> Result<BucketRow> {
        require_user(p)?;
        let name = BucketName::parse(name)?;
        self.bucket_named(p, &name, surface, level).await
    }

    /// [`Storage::bucket_for`] with a name already validated.
    async fn bucket_named(
        &self,
        p: &Principal,
        name: &BucketName,
        surface: Option<Surface>,
        level: Access,
    ) -> Result<BucketRow> {
        require_user(p)?;
        let bucket = self
            .store
            .bucket(&p.org_id, name.as_str())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("bucket {:?}", name.as_str())))?;
        let actual = Surface::parse("surface", &bucket.surface)?;
        require_scope(p, actual, level)?;
        if let Some(expected) = surface
            && expected != actual
        {
            return Err(StorageError::Conflict(format!(
                "bucket {:?} is a {} bucket, not {}",
                bucket.name,
                actual.as_str(),
                expected.as_str()
            )));
        }
        Ok(bucket)
    }

    /// Create a bucket (`kv:admin` / `static:admin`).
    pub async fn create_bucket(&self, ctx: &RequestContext, new: NewBucket) -> Result<BucketRow> {
        let p = &ctx.principal;
        let NewBucket {
            name,
            surface,
            secret,
        } = new;
        require_scope(p, surface, Access::Admin)?;
        self.check_bucket_limit(&p.org_id).await?;
        let row = match self
            .store
            .insert_bucket(&p.org_id, name.as_str(), surface.as_str(), secret)
            .await
        {
            Ok(r) => r,
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(StorageError::AlreadyExists(format!(
                    "bucket {:?}",
                    name.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        self.audit(
            Actor::of(ctx),
            "bucket.create",
            &row.id,
            serde_json::json!({"name": row.name, "surface": row.surface, "secret": row.secret}),
        )
        .await;
        Ok(row)
    }

    /// Buckets the caller may read (per surface), optionally of one surface.
    pub async fn list_buckets(
        &self,
        p: &Principal,
        surface: Option<&str>,
    ) -> Result<Vec<BucketRow>> {
        require_user(p)?;
        let filter = surface
            .filter(|s| !s.is_empty())
            .map(|s| Surface::parse("surface", s))
            .transpose()?;
        let readable: Vec<Surface> = [Surface::Kv, Surface::Static]
            .into_iter()
            .filter(|s| filter.is_none_or(|f| f == *s))
            .filter(|s| p.allows(&s.scope(Access::Read)))
            .collect();
        if readable.is_empty() {
            let wanted = filter.map_or_else(
                || "kv:read or static:read".to_owned(),
                |s| s.scope(Access::Read),
            );
            return Err(StorageError::MissingScope(wanted));
        }
        let rows = self
            .store
            .list_buckets(&p.org_id, filter.map(Surface::as_str))
            .await?;
        Ok(rows
            .into_iter()
            .filter(|b| readable.iter().any(|s| s.as_str() == b.surface))
            .collect())
    }

    /// Delete a bucket and everything in it (admin of its surface).
    pub async fn delete_bucket(&self, ctx: &RequestContext, name: &str) -> Result<()> {
        let p = &ctx.principal;
        let bucket = self.bucket_for(p, name, None, Access::Admin).await?;
        let hosts = self.store.delete_bucket(&p.org_id, &bucket.id).await?;
        self.hosts_changed(&hosts).await;
        // Tokens are scoped by bucket name: a later bucket of the same name must not
        // inherit them.
        let revoked = self
            .store
            .revoke_tokens_naming(&p.org_id, &bucket.name)
            .await?;
        for id in &revoked {
            self.forget_grant(id);
            self.announce_revoked(id).await;
        }
        self.audit(
            Actor::of(ctx),
            "bucket.delete",
            &bucket.id,
            serde_json::json!({"name": bucket.name, "unbound_hosts": hosts, "revoked_storage_tokens": revoked}),
        )
        .await;
        Ok(())
    }
}
