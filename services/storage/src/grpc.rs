//! gRPC adapter: converts `lattice.storage.v1` messages to domain calls and
//! [`StorageError`]s to statuses. No decisions are made here.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use lattice_core::auth::RequestContext;
use lattice_core::error::to_status;
use lattice_core::grpc::{context_of, principal_of, storage_token_of};
use lattice_proto::storage::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::error::StorageError;
use crate::input::{HostKvWrite, KvPut, NewBinding, NewBucket, NewToken, delete_condition};
use crate::service::{NewFile, Resolution, Storage};
use crate::store::{BindingRow, BucketRow, DeploymentRow, FileRow, KvRow, TokenRow};

/// Blob chunks sent per message.
const BLOB_CHUNK: usize = 256 * 1024;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct StorageGrpc {
    storage: Storage,
    max_upload_bytes: u64,
}

impl StorageGrpc {
    /// The caller of a static-site call: a relayed storage token acts as itself
    /// (verified here, covering `bucket`), whatever principal carried it; otherwise
    /// the operator's principal as signed.
    async fn site_context(
        &self,
        ctx: RequestContext,
        token: Option<String>,
        bucket: &str,
    ) -> Result<RequestContext, Status> {
        let Some(secret) = token else {
            return Ok(ctx);
        };
        let principal = self
            .storage
            .site_token_principal(&ctx.principal, &secret, bucket)
            .await
            .map_err(st)?;
        Ok(RequestContext { principal, ..ctx })
    }

    /// Serve `storage`; uploads larger than `max_upload_bytes` are refused.
    pub fn new(storage: Storage, max_upload_bytes: u64) -> Self {
        Self {
            storage,
            max_upload_bytes,
        }
    }
}

fn st(e: StorageError) -> Status {
    to_status(&e)
}

fn bucket_pb(b: BucketRow) -> pb::Bucket {
    pb::Bucket {
        id: b.id,
        name: b.name,
        surface: b.surface,
        created_at_ms: b.created_at_ms,
        active_deployment_id: b.active_deployment_id.unwrap_or_default(),
        secret: b.secret,
    }
}

fn kv_pb(r: KvRow) -> pb::KvEntry {
    pb::KvEntry {
        key: r.key,
        value_json: r.value,
        version: r.version,
        updated_at_ms: r.updated_at_ms,
        expires_at_ms: r.expires_at_ms,
        withheld: false,
    }
}

fn deployment_pb(d: DeploymentRow, bucket: &str, active: bool) -> pb::Deployment {
    pb::Deployment {
        id: d.id,
        bucket: bucket.to_owned(),
        created_at_ms: d.created_at_ms,
        file_count: d.file_count,
        total_bytes: d.total_bytes,
        active,
        created_by: d.created_by,
    }
}

fn object_pb(f: FileRow) -> pb::StaticObject {
    pb::StaticObject {
        path: f.path,
        sha256: f.sha256,
        size: f.size,
        content_type: f.content_type,
    }
}

fn binding_pb(b: BindingRow) -> pb::Binding {
    pb::Binding {
        host: b.host,
        bucket: b.bucket,
        surface: b.surface,
        enabled: b.enabled,
        created_at_ms: b.created_at_ms,
    }
}

fn token_pb(t: TokenRow) -> pb::StorageToken {
    pb::StorageToken {
        id: t.id,
        surface: t.surface,
        access: t.access,
        buckets: t.buckets,
        name: t.name,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
    }
}

/// Read an upload stream: a header, then `file` / `data` parts.
async fn read_upload(
    mut stream: Streaming<pb::UploadChunk>,
    max: u64,
) -> Result<(pb::UploadHeader, Vec<NewFile>), Status> {
    let header = match stream.next().await {
        Some(Ok(pb::UploadChunk {
            part: Some(pb::upload_chunk::Part::Header(h)),
        })) => h,
        Some(Err(e)) => return Err(e),
        _ => {
            return Err(st(StorageError::invalid(
                "upload",
                "must start with a header",
            )));
        }
    };
    let mut files: Vec<NewFile> = Vec::new();
    let mut current: Option<(pb::FileStart, Vec<u8>)> = None;
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        match chunk?.part {
            Some(pb::upload_chunk::Part::File(f)) => {
                if let Some((start, data)) = current.take() {
                    files.push(NewFile {
                        path: start.path,
                        content_type: start.content_type,
                        data: Bytes::from(data),
                    });
                }
                current = Some((f, Vec::new()));
            }
            Some(pb::upload_chunk::Part::Data(d)) => {
                total += d.len() as u64;
                if total > max {
                    return Err(st(StorageError::TooLarge(format!(
                        "upload is larger than {max} bytes"
                    ))));
                }
                match current.as_mut() {
                    Some((_, buf)) => buf.extend_from_slice(&d),
                    None => {
                        return Err(st(StorageError::invalid(
                            "upload",
                            "data before the first file",
                        )));
                    }
                }
            }
            Some(pb::upload_chunk::Part::Header(_)) | None => {
                return Err(st(StorageError::invalid(
                    "upload",
                    "a second header or an empty part",
                )));
            }
        }
    }
    if let Some((start, data)) = current.take() {
        files.push(NewFile {
            path: start.path,
            content_type: start.content_type,
            data: Bytes::from(data),
        });
    }
    Ok((header, files))
}

type BlobStream = Pin<Box<dyn Stream<Item = Result<pb::BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::storage_service_server::StorageService for StorageGrpc {
    async fn create_bucket(
        &self,
        req: Request<pb::CreateBucketRequest>,
    ) -> Result<Response<pb::Bucket>, Status> {
        let ctx = context_of(&req)?;
        let new = NewBucket::try_from(req.into_inner()).map_err(st)?;
        let b = self.storage.create_bucket(&ctx, new).await.map_err(st)?;
        Ok(Response::new(bucket_pb(b)))
    }

    async fn list_buckets(
        &self,
        req: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let rows = self
            .storage
            .list_buckets(&p, Some(&req.get_ref().surface))
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ListBucketsResponse {
            buckets: rows.into_iter().map(bucket_pb).collect(),
        }))
    }

    async fn delete_bucket(
        &self,
        req: Request<pb::DeleteBucketRequest>,
    ) -> Result<Response<pb::DeleteBucketResponse>, Status> {
        let ctx = context_of(&req)?;
        self.storage
            .delete_bucket(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DeleteBucketResponse {}))
    }

    async fn kv_put(
        &self,
        req: Request<pb::KvPutRequest>,
    ) -> Result<Response<pb::KvEntry>, Status> {
        let ctx = context_of(&req)?;
        let put = KvPut::try_from(req.into_inner()).map_err(st)?;
        let row = self.storage.kv_put(&ctx, put).await.map_err(st)?;
        Ok(Response::new(kv_pb(row)))
    }

    async fn kv_get(
        &self,
        req: Request<pb::KvGetRequest>,
    ) -> Result<Response<pb::KvEntry>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let row = self
            .storage
            .kv_get(&ctx, &m.bucket, &m.key)
            .await
            .map_err(st)?;
        Ok(Response::new(kv_pb(row)))
    }

    async fn kv_delete(
        &self,
        req: Request<pb::KvDeleteRequest>,
    ) -> Result<Response<pb::KvDeleteResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let if_version = m.if_version;
        self.storage
            .kv_delete(&ctx, &m.bucket, &m.key, if_version)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::KvDeleteResponse {}))
    }

    async fn kv_list(
        &self,
        req: Request<pb::KvListRequest>,
    ) -> Result<Response<pb::KvListResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let m = req.get_ref();
        let page = self
            .storage
            .kv_list(&p, &m.bucket, &m.prefix, &m.cursor, i64::from(m.limit))
            .await
            .map_err(st)?;
        let values = m.values;
        Ok(Response::new(pb::KvListResponse {
            entries: page
                .rows
                .into_iter()
                .map(|r| {
                    let mut e = kv_pb(r);
                    e.withheld = page.withheld;
                    if !values {
                        e.value_json.clear();
                    }
                    e
                })
                .collect(),
            next_cursor: page.next.unwrap_or_default(),
        }))
    }

    async fn upload_deployment(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let ctx = context_of(&req)?;
        let token = storage_token_of(&req);
        let (header, files) = read_upload(req.into_inner(), self.max_upload_bytes).await?;
        let ctx = self.site_context(ctx, token, &header.bucket).await?;
        let (d, active) = self
            .storage
            .upload_deployment(&ctx, &header.bucket, files, header.activate)
            .await
            .map_err(st)?;
        Ok(Response::new(deployment_pb(d, &header.bucket, active)))
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let bucket = req.get_ref().bucket.clone();
        let ctx = self
            .site_context(context_of(&req)?, storage_token_of(&req), &bucket)
            .await?;
        let (rows, active) = self
            .storage
            .list_deployments(&ctx.principal, &bucket)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: rows
                .into_iter()
                .map(|d| {
                    let is_active = active.as_deref() == Some(d.id.as_str());
                    deployment_pb(d, &bucket, is_active)
                })
                .collect(),
        }))
    }

    async fn activate_deployment(
        &self,
        req: Request<pb::ActivateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let m = req.get_ref();
        let ctx = self
            .site_context(context_of(&req)?, storage_token_of(&req), &m.bucket)
            .await?;
        let d = self
            .storage
            .activate(&ctx, &m.bucket, &m.deployment_id)
            .await
            .map_err(st)?;
        Ok(Response::new(deployment_pb(d, &m.bucket, true)))
    }

    async fn put_object(
        &self,
        req: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let ctx = context_of(&req)?;
        let token = storage_token_of(&req);
        let (header, mut files) = read_upload(req.into_inner(), self.max_upload_bytes).await?;
        let ctx = self.site_context(ctx, token, &header.bucket).await?;
        if files.len() != 1 {
            return Err(st(StorageError::invalid(
                "upload",
                "put one object at a time",
            )));
        }
        let file = files.remove(0);
        let (d, active) = self
            .storage
            .put_object(&ctx, &header.bucket, file)
            .await
            .map_err(st)?;
        Ok(Response::new(deployment_pb(d, &header.bucket, active)))
    }

    async fn delete_object(
        &self,
        req: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let m = req.get_ref();
        let ctx = self
            .site_context(context_of(&req)?, storage_token_of(&req), &m.bucket)
            .await?;
        let (d, active) = self
            .storage
            .delete_object(&ctx, &m.bucket, &m.path)
            .await
            .map_err(st)?;
        Ok(Response::new(deployment_pb(d, &m.bucket, active)))
    }

    async fn list_objects(
        &self,
        req: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let m = req.get_ref();
        let ctx = self
            .site_context(context_of(&req)?, storage_token_of(&req), &m.bucket)
            .await?;
        let (id, files) = self
            .storage
            .list_objects(&ctx.principal, &m.bucket, &m.deployment_id)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ListObjectsResponse {
            objects: files.into_iter().map(object_pb).collect(),
            deployment_id: id,
        }))
    }

    async fn create_binding(
        &self,
        req: Request<pb::CreateBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        let ctx = context_of(&req)?;
        let new = NewBinding::try_from(req.into_inner()).map_err(st)?;
        let b = self.storage.create_binding(&ctx, new).await.map_err(st)?;
        Ok(Response::new(binding_pb(b)))
    }

    async fn list_bindings(
        &self,
        req: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let rows = self.storage.list_bindings(&p).await.map_err(st)?;
        Ok(Response::new(pb::ListBindingsResponse {
            bindings: rows.into_iter().map(binding_pb).collect(),
        }))
    }

    async fn delete_binding(
        &self,
        req: Request<pb::DeleteBindingRequest>,
    ) -> Result<Response<pb::DeleteBindingResponse>, Status> {
        let ctx = context_of(&req)?;
        self.storage
            .delete_binding(&ctx, &req.get_ref().host)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DeleteBindingResponse {}))
    }

    async fn set_binding_enabled(
        &self,
        req: Request<pb::SetBindingEnabledRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let b = self
            .storage
            .set_binding_enabled(&ctx, &m.host, m.enabled)
            .await
            .map_err(st)?;
        Ok(Response::new(binding_pb(b)))
    }

    async fn create_storage_token(
        &self,
        req: Request<pb::CreateStorageTokenRequest>,
    ) -> Result<Response<pb::CreateStorageTokenResponse>, Status> {
        let ctx = context_of(&req)?;
        let new = NewToken::try_from(req.into_inner()).map_err(st)?;
        let (t, secret) = self.storage.create_token(&ctx, new).await.map_err(st)?;
        Ok(Response::new(pb::CreateStorageTokenResponse {
            token: Some(token_pb(t)),
            secret,
        }))
    }

    async fn list_storage_tokens(
        &self,
        req: Request<pb::ListStorageTokensRequest>,
    ) -> Result<Response<pb::ListStorageTokensResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let rows = self.storage.list_tokens(&p).await.map_err(st)?;
        Ok(Response::new(pb::ListStorageTokensResponse {
            tokens: rows.into_iter().map(token_pb).collect(),
        }))
    }

    async fn revoke_storage_token(
        &self,
        req: Request<pb::RevokeStorageTokenRequest>,
    ) -> Result<Response<pb::RevokeStorageTokenResponse>, Status> {
        let ctx = context_of(&req)?;
        self.storage
            .revoke_token(&ctx, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::RevokeStorageTokenResponse {}))
    }

    async fn resolve_host(
        &self,
        req: Request<pb::ResolveHostRequest>,
    ) -> Result<Response<pb::ResolveHostResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let found = self
            .storage
            .resolve_host(&p, &req.get_ref().host)
            .await
            .map_err(st)?;
        Ok(Response::new(match found {
            Some(b) => pb::ResolveHostResponse {
                found: true,
                org_id: b.org_id,
                bucket_id: b.bucket_id,
                bucket: b.bucket,
                surface: pb::Surface::from_name(&b.surface)
                    .unwrap_or(pb::Surface::Unspecified)
                    .into(),
                deployment_id: b.active_deployment_id.unwrap_or_default(),
                secret: b.secret,
            },
            None => pb::ResolveHostResponse::default(),
        }))
    }

    async fn resolve_static_path(
        &self,
        req: Request<pb::ResolveStaticPathRequest>,
    ) -> Result<Response<pb::ResolveStaticPathResponse>, Status> {
        let p = principal_of(&req)?.clone();
        let m = req.get_ref();
        let r = self
            .storage
            .resolve_static_path(&p, &m.deployment_id, &m.path)
            .await
            .map_err(st)?;
        Ok(Response::new(match r {
            Resolution::Found(f) => pb::ResolveStaticPathResponse {
                status: 200,
                object: Some(object_pb(f)),
                redirect_to: String::new(),
            },
            Resolution::Redirect(to) => pb::ResolveStaticPathResponse {
                status: 301,
                object: None,
                redirect_to: to,
            },
            Resolution::NotFoundPage(f) => pb::ResolveStaticPathResponse {
                status: 404,
                object: Some(object_pb(f)),
                redirect_to: String::new(),
            },
            Resolution::NotFound => pb::ResolveStaticPathResponse {
                status: 404,
                object: None,
                redirect_to: String::new(),
            },
        }))
    }

    type GetBlobStream = BlobStream;

    async fn get_blob(
        &self,
        req: Request<pb::GetBlobRequest>,
    ) -> Result<Response<Self::GetBlobStream>, Status> {
        let p = principal_of(&req)?.clone();
        let data = self
            .storage
            .get_blob(&p, &req.get_ref().sha256)
            .await
            .map_err(st)?;
        let chunks: Vec<Result<pb::BlobChunk, Status>> = if data.is_empty() {
            vec![Ok(pb::BlobChunk { data: Bytes::new() })]
        } else {
            (0..data.len())
                .step_by(BLOB_CHUNK)
                .map(|start| {
                    Ok(pb::BlobChunk {
                        data: data.slice(start..(start + BLOB_CHUNK).min(data.len())),
                    })
                })
                .collect()
        };
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn authorize_storage_token(
        &self,
        req: Request<pb::AuthorizeStorageTokenRequest>,
    ) -> Result<Response<pb::StorageGrant>, Status> {
        let p = principal_of(&req)?;
        let grant = self
            .storage
            .authorize_token(p, &req.get_ref().secret)
            .await
            .map_err(st)?;
        Ok(Response::new(grant.as_ref().clone()))
    }

    async fn host_kv_get(
        &self,
        req: Request<pb::HostKvRequest>,
    ) -> Result<Response<pb::KvEntry>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let row = self
            .storage
            .host_kv_get(&ctx, &m.host, &m.token_secret, &m.key)
            .await
            .map_err(st)?;
        Ok(Response::new(kv_pb(row)))
    }

    async fn host_kv_put(
        &self,
        req: Request<pb::HostKvRequest>,
    ) -> Result<Response<pb::KvEntry>, Status> {
        let ctx = context_of(&req)?;
        let write = HostKvWrite::try_from(req.into_inner()).map_err(st)?;
        let row = self.storage.host_kv_put(&ctx, write).await.map_err(st)?;
        Ok(Response::new(kv_pb(row)))
    }

    async fn host_kv_delete(
        &self,
        req: Request<pb::HostKvRequest>,
    ) -> Result<Response<pb::KvDeleteResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let if_version = delete_condition(m.condition.as_ref()).map_err(st)?;
        self.storage
            .host_kv_delete(&ctx, &m.host, &m.token_secret, &m.key, if_version)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::KvDeleteResponse {}))
    }
}

#[tonic::async_trait]
impl lattice_core::org_data::OrgData for StorageGrpc {
    async fn usage(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.storage.org_usage(ctx, org_id).await.map_err(st)
    }

    async fn purge(
        &self,
        ctx: &lattice_core::auth::RequestContext,
        org_id: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, Status> {
        self.storage.purge_org(ctx, org_id).await.map_err(st)
    }
}
