//! KV entries: conditional writes (If-Match / If-None-Match), TTLs, ordered listing.

use lattice_core::audit::Actor;
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::time::now_ms;
use lattice_proto::storage::kv_cache_key;

use super::{Result, Storage};
use crate::error::StorageError;
use crate::input::{KvCondition, KvEntry, KvPut};
use crate::model::{Access, KvKey, Surface};
use crate::store::{BucketRow, KvRow, Written};

/// Most entries in one listing page.
pub const MAX_LIST: i64 = 1000;

impl Storage {
    pub(super) async fn kv_put_in(&self, bucket: &BucketRow, entry: &KvEntry) -> Result<KvRow> {
        let KvEntry {
            key,
            value,
            condition,
            ttl_s,
        } = entry;
        let expires_at_ms = if *ttl_s == 0 {
            0
        } else {
            now_ms() + ttl_s * 1000
        };
        let (if_version, if_absent) = match *condition {
            KvCondition::None => (None, false),
            KvCondition::Version(v) => (Some(v), false),
            KvCondition::Absent => (None, true),
        };
        let written = self
            .store
            .kv_put(
                &bucket.id,
                key.as_str(),
                value.as_str(),
                expires_at_ms,
                if_version,
                if_absent,
            )
            .await?;
        self.cache
            .delete(&kv_cache_key(&bucket.id, key.as_str()))
            .await;
        match written {
            Written::Ok(row) => Ok(row),
            Written::ConditionFailed => Err(StorageError::PreconditionFailed(match *condition {
                KvCondition::Absent => format!("key {:?} already exists", key.as_str()),
                _ => format!("key {:?} is not at the expected version", key.as_str()),
            })),
        }
    }

    pub(super) async fn kv_get_in(&self, bucket: &BucketRow, key: &str) -> Result<KvRow> {
        let key = KvKey::parse(key)?;
        self.store
            .kv_get(&bucket.id, key.as_str())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("key {:?}", key.as_str())))
    }

    pub(super) async fn kv_delete_in(
        &self,
        bucket: &BucketRow,
        key: &str,
        if_version: Option<i64>,
    ) -> Result<()> {
        let key = KvKey::parse(key)?;
        let deleted = self
            .store
            .kv_delete(&bucket.id, key.as_str(), if_version)
            .await?;
        self.cache
            .delete(&kv_cache_key(&bucket.id, key.as_str()))
            .await;
        match deleted {
            Some(true) => Ok(()),
            Some(false) => Err(StorageError::NotFound(format!("key {:?}", key.as_str()))),
            None => Err(StorageError::PreconditionFailed(format!(
                "key {:?} is not at the expected version",
                key.as_str()
            ))),
        }
    }

    /// Write a value (`kv:write`).
    pub async fn kv_put(&self, ctx: &RequestContext, put: KvPut) -> Result<KvRow> {
        let bucket = self
            .bucket_named(
                &ctx.principal,
                &put.bucket,
                Some(Surface::Kv),
                Access::Write,
            )
            .await?;
        let row = self.kv_put_in(&bucket, &put.entry).await?;
        self.audit(
            Actor::of(ctx),
            "kv.put",
            &format!("{}/{}", bucket.name, row.key),
            serde_json::json!({"version": row.version}),
        )
        .await;
        Ok(row)
    }

    /// Read a value (`kv:read`).
    pub async fn kv_get(&self, p: &Principal, bucket: &str, key: &str) -> Result<KvRow> {
        let bucket = self
            .bucket_for(p, bucket, Some(Surface::Kv), Access::Read)
            .await?;
        self.kv_get_in(&bucket, key).await
    }

    /// Delete a value (`kv:write`).
    pub async fn kv_delete(
        &self,
        ctx: &RequestContext,
        bucket: &str,
        key: &str,
        if_version: Option<i64>,
    ) -> Result<()> {
        let bucket = self
            .bucket_for(&ctx.principal, bucket, Some(Surface::Kv), Access::Write)
            .await?;
        self.kv_delete_in(&bucket, key, if_version).await?;
        self.audit(
            Actor::of(ctx),
            "kv.delete",
            &format!("{}/{key}", bucket.name),
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// List entries in key order (`kv:read`). Returns the page and the cursor of the
    /// next page (None when complete).
    pub async fn kv_list(
        &self,
        p: &Principal,
        bucket: &str,
        prefix: &str,
        cursor: &str,
        limit: i64,
    ) -> Result<(Vec<KvRow>, Option<String>)> {
        let bucket = self
            .bucket_for(p, bucket, Some(Surface::Kv), Access::Read)
            .await?;
        if prefix.len() > crate::model::MAX_KEY_BYTES || cursor.len() > crate::model::MAX_KEY_BYTES
        {
            return Err(StorageError::invalid(
                "prefix",
                "prefix and cursor are at most 512 bytes",
            ));
        }
        let limit = if limit == 0 { 100 } else { limit };
        if !(1..=MAX_LIST).contains(&limit) {
            return Err(StorageError::invalid(
                "limit",
                format!("must be between 1 and {MAX_LIST}"),
            ));
        }
        let mut rows = self
            .store
            .kv_list(&bucket.id, prefix, cursor, limit + 1)
            .await?;
        let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next = more.then(|| rows.last().map(|r| r.key.clone())).flatten();
        Ok((rows, next))
    }
}
