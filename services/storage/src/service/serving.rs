//! What the gateway needs to serve bound hosts: host resolution, static path
//! resolution within one (immutable) deployment, blobs, storage-token checks and KV
//! access for a token the gateway has authorised. Only the gateway's service
//! principal may call these.

use std::sync::Arc;

use bytes::Bytes;
use lattice_core::audit::Actor;
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::hash_secret;
use lattice_core::time::now_ms;

use lattice_proto::storage::v1::{self as pb, Access, StorageGrant, Surface};

use super::{Result, SecretReader, Storage, require_service};
use crate::error::StorageError;
use crate::input::HostKvWrite;
use crate::model::HostName;
use crate::store::{BindingRow, BucketRow, FileRow, KvRow, TokenRow};

/// How a path of a deployment resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Serve this file with 200.
    Found(FileRow),
    /// Redirect to the directory form (`/docs` -> `/docs/`).
    Redirect(String),
    /// Serve this file (the site's `404.html`) with 404.
    NotFoundPage(FileRow),
    /// Plain 404.
    NotFound,
}

/// The grant a token row gives.
pub(super) fn grant_of(t: &TokenRow) -> StorageGrant {
    StorageGrant {
        id: t.id.clone(),
        org_id: t.org_id.clone(),
        buckets: t.buckets.clone(),
        expires_at_ms: t.expires_at_ms,
        name: t.name.clone(),
        surface: pb::Surface::from_name(&t.surface)
            .unwrap_or(pb::Surface::Unspecified)
            .into(),
        access: pb::Access::from_name(&t.access)
            .unwrap_or(pb::Access::Unspecified)
            .into(),
    }
}

/// Who a host write is recorded as: the storage token (in its org).
fn token_actor(grant: &StorageGrant) -> String {
    format!("storage_token:{}", grant.id)
}

impl Storage {
    /// The enabled binding of `host`, with its bucket and active deployment.
    pub async fn resolve_host(&self, p: &Principal, host: &str) -> Result<Option<BindingRow>> {
        require_service(p)?;
        let Ok(host) = HostName::parse(host) else {
            return Ok(None);
        };
        Ok(self
            .store
            .resolve_host(host.as_str())
            .await?
            .filter(|b| b.enabled))
    }

    /// Resolve `path` (normalised by the gateway: no leading `/`, `""` for the root)
    /// within one deployment: the file, `index.html` for directories, a redirect for a
    /// directory named without its slash, or the site's `404.html`.
    pub async fn resolve_static_path(
        &self,
        p: &Principal,
        deployment_id: &str,
        path: &str,
    ) -> Result<Resolution> {
        require_service(p)?;
        let candidate = if path.is_empty() || path.ends_with('/') {
            format!("{path}index.html")
        } else {
            path.to_owned()
        };
        if let Some(f) = self.store.file(deployment_id, &candidate).await? {
            return Ok(Resolution::Found(f));
        }
        if !path.is_empty()
            && !path.ends_with('/')
            && self
                .store
                .file(deployment_id, &format!("{path}/index.html"))
                .await?
                .is_some()
        {
            return Ok(Resolution::Redirect(format!("/{path}/")));
        }
        Ok(match self.store.file(deployment_id, "404.html").await? {
            Some(f) => Resolution::NotFoundPage(f),
            None => Resolution::NotFound,
        })
    }

    /// A blob's bytes.
    pub async fn get_blob(&self, p: &Principal, sha256: &str) -> Result<Bytes> {
        require_service(p)?;
        match self.blobs.get(sha256).await {
            Ok(b) => Ok(b),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StorageError::NotFound(format!("blob {sha256:?}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The live grant of a storage token secret (gateway only).
    pub async fn authorize_token(&self, p: &Principal, secret: &str) -> Result<Arc<StorageGrant>> {
        require_service(p)?;
        self.grant(secret).await
    }

    /// The live grant of `secret`, from a short-lived cache that revocations evict
    /// (on this replica at once, on the others through the bus).
    async fn grant(&self, secret: &str) -> Result<Arc<StorageGrant>> {
        let invalid = || StorageError::Unauthenticated("invalid or expired storage token".into());
        if !secret.starts_with(super::access::STORAGE_TOKEN_PREFIX) || secret.len() > 256 {
            return Err(invalid());
        }
        let hash = hash_secret(secret);
        let grant = match self.grants.get(&hash) {
            Some(g) => g,
            None => {
                let token = self
                    .store
                    .token_by_hash(&hash)
                    .await?
                    .filter(|t| !t.revoked)
                    .ok_or_else(invalid)?;
                let grant = Arc::new(grant_of(&token));
                self.grants.insert(hash, grant.clone());
                grant
            }
        };
        if grant.expires_at_ms != 0 && grant.expires_at_ms <= now_ms() {
            return Err(invalid());
        }
        Ok(grant)
    }

    /// The principal a `static` storage token acts as on `bucket`, decided here from
    /// the token itself (relayed by the gateway, which is the only caller allowed):
    /// the token's org, `static:<its access>` and nothing else, and only for a bucket
    /// its list covers.
    pub async fn site_token_principal(
        &self,
        carrier: &Principal,
        secret: &str,
        bucket: &str,
    ) -> Result<Principal> {
        require_service(carrier)?;
        let grant = self.grant(secret).await?;
        grant
            .check(
                &grant.org_id,
                bucket,
                Surface::Static,
                Access::Read,
                now_ms(),
            )
            .map_err(|refusal| StorageError::Forbidden(refusal.to_string()))?;
        Ok(Principal {
            sub: format!("storage_token:{}", grant.id),
            username: String::new(),
            org_id: grant.org_id.clone(),
            scopes: vec![format!("static:{}", grant.access().name())],
            auth: lattice_core::auth::AuthMethod::Token,
            credential_id: grant.id.clone(),
        })
    }

    /// Forget the cached grant of token `id` (revoked).
    pub fn forget_grant(&self, id: &str) {
        let id = id.to_owned();
        if self
            .grants
            .invalidate_entries_if(move |_, g| g.id == id)
            .is_err()
        {
            self.grants.invalidate_all();
        }
    }

    /// The kv bucket `host` serves, when the storage token `secret` allows `needs`
    /// on it: decided here on every request, whatever the gateway checked.
    async fn host_kv_bucket(
        &self,
        p: &Principal,
        host: &str,
        secret: &str,
        needs: Access,
    ) -> Result<(BucketRow, Arc<StorageGrant>)> {
        require_service(p)?;
        let grant = self.grant(secret).await?;
        let no_site = || StorageError::NotFound(format!("no kv bucket is bound to host {host:?}"));
        let host = HostName::parse(host).map_err(|_| no_site())?;
        let binding = self
            .store
            .resolve_host(host.as_str())
            .await?
            .filter(|b| b.enabled && b.surface == Surface::Kv.name())
            .ok_or_else(no_site)?;
        grant
            .check(
                &binding.org_id,
                &binding.bucket,
                Surface::Kv,
                needs,
                now_ms(),
            )
            .map_err(|refusal| StorageError::Forbidden(refusal.to_string()))?;
        let bucket = BucketRow {
            id: binding.bucket_id,
            org_id: binding.org_id,
            name: binding.bucket,
            surface: binding.surface,
            active_deployment_id: binding.active_deployment_id,
            created_at_ms: binding.created_at_ms,
            secret: binding.secret,
        };
        Ok((bucket, grant))
    }

    /// Read a key through a host binding with a storage token; in a secret bucket,
    /// as `Lattice::Service::"token:<its name>"` asking `AccessSecret`.
    pub async fn host_kv_get(
        &self,
        ctx: &RequestContext,
        host: &str,
        secret: &str,
        key: &str,
    ) -> Result<KvRow> {
        let (bucket, grant) = self
            .host_kv_bucket(&ctx.principal, host, secret, Access::Read)
            .await?;
        let reader = SecretReader::StorageToken {
            name: &grant.name,
            org: &grant.org_id,
        };
        self.kv_get_in(ctx, reader, &bucket, key).await
    }

    /// Write a key through a host binding with a storage token.
    pub async fn host_kv_put(&self, ctx: &RequestContext, write: HostKvWrite) -> Result<KvRow> {
        let (bucket, grant) = self
            .host_kv_bucket(&ctx.principal, &write.host, &write.secret, Access::Write)
            .await?;
        let row = self.kv_put_in(&bucket, &write.entry).await?;
        self.audit(
            Actor {
                org_id: &grant.org_id,
                id: &token_actor(&grant),
                client_ip: &ctx.client_ip,
            },
            "kv.put",
            &format!("{}/{}", bucket.name, row.key),
            serde_json::json!({"version": row.version, "via": "host"}),
        )
        .await;
        Ok(row)
    }

    /// Delete a key through a host binding with a storage token.
    pub async fn host_kv_delete(
        &self,
        ctx: &RequestContext,
        host: &str,
        secret: &str,
        key: &str,
        if_version: Option<i64>,
    ) -> Result<()> {
        let (bucket, grant) = self
            .host_kv_bucket(&ctx.principal, host, secret, Access::Write)
            .await?;
        self.kv_delete_in(&bucket, key, if_version).await?;
        self.audit(
            Actor {
                org_id: &grant.org_id,
                id: &token_actor(&grant),
                client_ip: &ctx.client_ip,
            },
            "kv.delete",
            &format!("{}/{key}", bucket.name),
            serde_json::json!({"via": "host"}),
        )
        .await;
        Ok(())
    }

    /// Delete expired KV entries; run periodically.
    pub async fn sweep_expired(&self) -> Result<u64> {
        Ok(self.store.kv_sweep().await?)
    }
}
