//! What the gateway needs to serve bound hosts: host resolution, static path
//! resolution within one (immutable) deployment, blobs, storage-token checks and KV
//! access for a token the gateway has authorised. Only the gateway's service
//! principal may call these.

use bytes::Bytes;
use lattice_core::auth::Principal;
use lattice_core::crypto::hash_secret;
use lattice_core::time::now_ms;

use super::kv::KvCondition;
use super::{Result, Storage, require_service};
use crate::error::StorageError;
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

/// A storage token the gateway may honour.
pub type TokenGrant = TokenRow;

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

    /// The live token whose secret this is.
    pub async fn authorize_token(&self, p: &Principal, secret: &str) -> Result<TokenGrant> {
        require_service(p)?;
        let invalid = || StorageError::Forbidden("invalid or expired storage token".into());
        if !secret.starts_with(super::access::STORAGE_TOKEN_PREFIX) || secret.len() > 256 {
            return Err(invalid());
        }
        let token = self
            .store
            .token_by_hash(&hash_secret(secret))
            .await?
            .ok_or_else(invalid)?;
        if token.revoked || (token.expires_at_ms != 0 && token.expires_at_ms <= now_ms()) {
            return Err(invalid());
        }
        Ok(token)
    }

    async fn host_bucket(&self, p: &Principal, org_id: &str, bucket_id: &str) -> Result<BucketRow> {
        require_service(p)?;
        let bucket = self
            .store
            .bucket_by_id(org_id, bucket_id)
            .await?
            .ok_or_else(|| StorageError::NotFound("bucket".into()))?;
        if bucket.surface != "kv" {
            return Err(StorageError::Conflict(format!(
                "bucket {:?} is not a kv bucket",
                bucket.name
            )));
        }
        Ok(bucket)
    }

    /// Read a key for an authorised host request.
    pub async fn host_kv_get(
        &self,
        p: &Principal,
        org_id: &str,
        bucket_id: &str,
        key: &str,
    ) -> Result<KvRow> {
        let bucket = self.host_bucket(p, org_id, bucket_id).await?;
        self.kv_get_in(&bucket, key).await
    }

    /// Write a key for an authorised host request.
    #[allow(clippy::too_many_arguments)]
    pub async fn host_kv_put(
        &self,
        p: &Principal,
        org_id: &str,
        bucket_id: &str,
        key: &str,
        value_json: &str,
        condition: KvCondition,
        ttl_s: i64,
        token_id: &str,
        ip: &str,
    ) -> Result<KvRow> {
        let bucket = self.host_bucket(p, org_id, bucket_id).await?;
        let row = self
            .kv_put_in(&bucket, key, value_json, condition, ttl_s)
            .await?;
        let actor = Principal {
            sub: format!("storage_token:{token_id}"),
            org_id: org_id.to_owned(),
            ..Principal::service("gateway")
        };
        self.audit(
            &actor,
            "kv.put",
            &format!("{}/{}", bucket.name, row.key),
            ip,
            serde_json::json!({"version": row.version, "via": "host"}),
        )
        .await;
        Ok(row)
    }

    /// Delete a key for an authorised host request.
    #[allow(clippy::too_many_arguments)]
    pub async fn host_kv_delete(
        &self,
        p: &Principal,
        org_id: &str,
        bucket_id: &str,
        key: &str,
        if_version: Option<i64>,
        token_id: &str,
        ip: &str,
    ) -> Result<()> {
        let bucket = self.host_bucket(p, org_id, bucket_id).await?;
        self.kv_delete_in(&bucket, key, if_version).await?;
        let actor = Principal {
            sub: format!("storage_token:{token_id}"),
            org_id: org_id.to_owned(),
            ..Principal::service("gateway")
        };
        self.audit(
            &actor,
            "kv.delete",
            &format!("{}/{key}", bucket.name),
            ip,
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
