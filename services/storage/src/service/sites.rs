//! Static sites: deployments stored content-addressed and activated atomically by
//! swapping the bucket's active-deployment pointer; single-object edits derive a new
//! deployment from the active one.

use std::collections::BTreeMap;

use bytes::Bytes;
use lattice_core::audit::Actor;
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::time::now_ms;

use super::{Result, Storage};
use crate::error::StorageError;
use crate::model::{Access, ContentType, MAX_FILES, MAX_OBJECT_BYTES, SitePath, Surface};
use crate::store::{BucketRow, DeploymentRow, FileRow};

/// One file of an upload.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Path inside the site (validated here).
    pub path: String,
    /// Content type; guessed from the extension when empty.
    pub content_type: String,
    /// Bytes.
    pub data: Bytes,
}

impl Storage {
    /// Store blobs and build the file rows; every path and size checked.
    async fn store_files(&self, files: Vec<NewFile>) -> Result<BTreeMap<SitePath, FileRow>> {
        if files.len() > MAX_FILES {
            return Err(StorageError::TooLarge(format!(
                "{} files; the limit is {MAX_FILES}",
                files.len()
            )));
        }
        let total: u64 = files.iter().map(|f| f.data.len() as u64).sum();
        if total > self.limits.max_deployment_bytes {
            return Err(StorageError::TooLarge(format!(
                "deployment is {total} bytes; the limit is {}",
                self.limits.max_deployment_bytes
            )));
        }
        let mut out = BTreeMap::new();
        for f in files {
            let path = SitePath::parse(&f.path)?;
            if f.data.len() as u64 > MAX_OBJECT_BYTES {
                return Err(StorageError::TooLarge(format!(
                    "{:?} is {} bytes; the limit per file is {MAX_OBJECT_BYTES}",
                    path.as_str(),
                    f.data.len()
                )));
            }
            let content_type = ContentType::parse_or_guess(&f.content_type, &path)?.into_string();
            let size = i64::try_from(f.data.len()).unwrap_or(i64::MAX);
            let sha256 = self.blobs.put(f.data).await?;
            self.store.insert_blob(&sha256, size).await?;
            if out.contains_key(&path) {
                return Err(StorageError::invalid(
                    "path",
                    format!("{:?} appears twice", path.as_str()),
                ));
            }
            out.insert(
                path.clone(),
                FileRow {
                    path: path.as_str().to_owned(),
                    sha256,
                    size,
                    content_type,
                },
            );
        }
        Ok(out)
    }

    async fn record_deployment(
        &self,
        ctx: &RequestContext,
        bucket: &BucketRow,
        files: Vec<FileRow>,
        activate: bool,
        action: &str,
    ) -> Result<(DeploymentRow, bool)> {
        let p = &ctx.principal;
        // A derived edit (single object) activates only over the deployment it was
        // derived from; a whole deploy replaces whatever is active.
        let derived = action.starts_with("static.object.");
        let base = bucket.active_deployment_id.clone().unwrap_or_default();
        let d = DeploymentRow {
            id: uuid::Uuid::now_v7().to_string(),
            bucket_id: bucket.id.clone(),
            created_at_ms: now_ms(),
            created_by: if p.username.is_empty() {
                p.sub.clone()
            } else {
                p.username.clone()
            },
            file_count: i64::try_from(files.len()).unwrap_or(i64::MAX),
            total_bytes: files.iter().map(|f| f.size).sum(),
        };
        let stored = self
            .store
            .insert_deployment(&d, &files, activate, derived.then_some(base.as_str()))
            .await?;
        if !stored {
            return Err(StorageError::Conflict(format!(
                "bucket {:?} changed during this edit; retry it",
                bucket.name
            )));
        }
        if activate {
            self.bucket_hosts_changed(p, bucket).await?;
        }
        self.audit(
            Actor::of(ctx),
            action,
            &d.id,
            serde_json::json!({"bucket": bucket.name, "files": d.file_count, "bytes": d.total_bytes, "activated": activate}),
        )
        .await;
        Ok((d, activate))
    }

    async fn bucket_hosts_changed(&self, p: &Principal, bucket: &BucketRow) -> Result<()> {
        let hosts: Vec<String> = self
            .store
            .list_bindings(&p.org_id)
            .await?
            .into_iter()
            .filter(|b| b.bucket_id == bucket.id)
            .map(|b| b.host)
            .collect();
        self.hosts_changed(&hosts).await;
        Ok(())
    }

    /// Publish a whole site as a new deployment (`static:write`); activate it unless
    /// told not to. Returns the deployment and whether it is active.
    pub async fn upload_deployment(
        &self,
        ctx: &RequestContext,
        bucket: &str,
        files: Vec<NewFile>,
        activate: bool,
    ) -> Result<(DeploymentRow, bool)> {
        let bucket = self
            .bucket_for(&ctx.principal, bucket, Some(Surface::Static), Access::Write)
            .await?;
        if files.is_empty() {
            return Err(StorageError::invalid(
                "files",
                "a deployment needs at least one file",
            ));
        }
        let total: u64 = files.iter().map(|f| f.data.len() as u64).sum();
        self.check_bytes_limit(&bucket.org_id, total).await?;
        let files = self.store_files(files).await?.into_values().collect();
        self.record_deployment(ctx, &bucket, files, activate, "static.deploy")
            .await
    }

    /// Put one object: a new deployment = the active one with this file added or
    /// replaced, activated at once (`static:write`).
    pub async fn put_object(
        &self,
        ctx: &RequestContext,
        bucket: &str,
        file: NewFile,
    ) -> Result<(DeploymentRow, bool)> {
        let bucket = self
            .bucket_for(&ctx.principal, bucket, Some(Surface::Static), Access::Write)
            .await?;
        let mut files = self.active_files(&bucket).await?;
        for (path, row) in self.store_files(vec![file]).await? {
            files.insert(path, row);
        }
        let total: u64 = files
            .values()
            .map(|f| u64::try_from(f.size).unwrap_or(0))
            .sum();
        if total > self.limits.max_deployment_bytes {
            return Err(StorageError::TooLarge(format!(
                "the site would be {total} bytes; the limit is {}",
                self.limits.max_deployment_bytes
            )));
        }
        self.check_bytes_limit(&bucket.org_id, total).await?;
        self.record_deployment(
            ctx,
            &bucket,
            files.into_values().collect(),
            true,
            "static.object.put",
        )
        .await
    }

    /// Delete one object: a new deployment without it, activated (`static:write`).
    pub async fn delete_object(
        &self,
        ctx: &RequestContext,
        bucket: &str,
        path: &str,
    ) -> Result<(DeploymentRow, bool)> {
        let bucket = self
            .bucket_for(&ctx.principal, bucket, Some(Surface::Static), Access::Write)
            .await?;
        let path = SitePath::parse(path)?;
        let mut files = self.active_files(&bucket).await?;
        if files.remove(&path).is_none() {
            return Err(StorageError::NotFound(format!(
                "object {:?}",
                path.as_str()
            )));
        }
        self.record_deployment(
            ctx,
            &bucket,
            files.into_values().collect(),
            true,
            "static.object.delete",
        )
        .await
    }

    async fn active_files(&self, bucket: &BucketRow) -> Result<BTreeMap<SitePath, FileRow>> {
        let Some(active) = &bucket.active_deployment_id else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for f in self.store.files(active).await? {
            out.insert(SitePath::parse(&f.path)?, f);
        }
        Ok(out)
    }

    /// Deployments of a bucket, newest first, and the active one's id (`static:read`).
    pub async fn list_deployments(
        &self,
        p: &Principal,
        bucket: &str,
    ) -> Result<(Vec<DeploymentRow>, Option<String>)> {
        let bucket = self
            .bucket_for(p, bucket, Some(Surface::Static), Access::Read)
            .await?;
        Ok((
            self.store.list_deployments(&bucket.id).await?,
            bucket.active_deployment_id,
        ))
    }

    /// Make an existing deployment active: publish or roll back (`static:write`).
    pub async fn activate(
        &self,
        ctx: &RequestContext,
        bucket: &str,
        deployment_id: &str,
    ) -> Result<DeploymentRow> {
        let p = &ctx.principal;
        let bucket = self
            .bucket_for(p, bucket, Some(Surface::Static), Access::Write)
            .await?;
        if !self.store.activate(&bucket.id, deployment_id).await? {
            return Err(StorageError::NotFound(format!(
                "deployment {deployment_id:?} of bucket {:?}",
                bucket.name
            )));
        }
        self.bucket_hosts_changed(p, &bucket).await?;
        self.audit(
            Actor::of(ctx),
            "static.activate",
            deployment_id,
            serde_json::json!({"bucket": bucket.name}),
        )
        .await;
        self.store
            .list_deployments(&bucket.id)
            .await?
            .into_iter()
            .find(|d| d.id == deployment_id)
            .ok_or_else(|| StorageError::NotFound(format!("deployment {deployment_id:?}")))
    }

    /// Files of a deployment (the active one by default) (`static:read`).
    pub async fn list_objects(
        &self,
        p: &Principal,
        bucket: &str,
        deployment_id: &str,
    ) -> Result<(String, Vec<FileRow>)> {
        let bucket = self
            .bucket_for(p, bucket, Some(Surface::Static), Access::Read)
            .await?;
        let id = if deployment_id.is_empty() {
            match &bucket.active_deployment_id {
                Some(id) => id.clone(),
                None => return Ok((String::new(), Vec::new())),
            }
        } else {
            let known = self
                .store
                .list_deployments(&bucket.id)
                .await?
                .iter()
                .any(|d| d.id == deployment_id);
            if !known {
                return Err(StorageError::NotFound(format!(
                    "deployment {deployment_id:?}"
                )));
            }
            deployment_id.to_owned()
        };
        let files = self.store.files(&id).await?;
        Ok((id, files))
    }
}
