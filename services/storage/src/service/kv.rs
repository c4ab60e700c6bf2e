//! KV entries: conditional writes (If-Match / If-None-Match), TTLs, ordered listing.

use lattice_core::audit::Actor;
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::time::now_ms;
use lattice_proto::storage::kv_cache_key;

use super::{Result, SecretReader, Storage};
use crate::error::StorageError;
use crate::input::{KvCondition, KvEntry, KvPut};
use crate::model::{Access, KvKey, Surface};
use crate::store::{BucketRow, KvRow, Written};

/// Most entries in one listing page.
pub const MAX_LIST: i64 = 1000;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPage {
    /// Entries in key order.
    pub rows: Vec<KvRow>,
    /// The cursor of the next page (None: complete).
    pub next: Option<String>,
    /// The bucket holds secrets: the rows' values are withheld (read each key).
    pub withheld: bool,
}

impl Storage {
    pub(super) async fn kv_put_in(&self, bucket: &BucketRow, entry: &KvEntry) -> Result<KvRow> {
        let KvEntry {
            key,
            value,
            condition,
            ttl_s,
        } = entry;
        self.check_bytes_limit(&bucket.org_id, value.as_str().len() as u64)
            .await?;
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
        let sealed = self.at_rest(bucket, key.as_str(), value.as_str());
        let written = self
            .store
            .kv_put(
                &bucket.id,
                key.as_str(),
                sealed.as_deref().unwrap_or(value.as_str()),
                expires_at_ms,
                if_version,
                if_absent,
            )
            .await?;
        self.cache
            .delete(&kv_cache_key(&bucket.id, key.as_str()))
            .await;
        match written {
            Written::Ok(row) => Ok(KvRow {
                value: value.as_str().to_owned(),
                ..row
            }),
            Written::ConditionFailed => Err(StorageError::PreconditionFailed(match *condition {
                KvCondition::Absent => format!("key {:?} already exists", key.as_str()),
                _ => format!("key {:?} is not at the expected version", key.as_str()),
            })),
        }
    }

    /// Read `key` of `bucket` for `reader` (of `ctx`): a secret bucket's value only
    /// when the policy allows it, decided before the key is looked up, so a refusal
    /// does not tell whether the key exists.
    pub(super) async fn kv_get_in(
        &self,
        ctx: &RequestContext,
        reader: SecretReader<'_>,
        bucket: &BucketRow,
        key: &str,
    ) -> Result<KvRow> {
        let key = KvKey::parse(key)?;
        self.check_secret_read(ctx, reader, bucket, key.as_str())
            .await?;
        let row = self
            .store
            .kv_get(&bucket.id, key.as_str())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("key {:?}", key.as_str())))?;
        self.opened(bucket, row)
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

    /// Read a value (`kv:read`; in a secret bucket, also `AccessSecret`).
    pub async fn kv_get(&self, ctx: &RequestContext, bucket: &str, key: &str) -> Result<KvRow> {
        let bucket = self
            .bucket_for(&ctx.principal, bucket, Some(Surface::Kv), Access::Read)
            .await?;
        self.kv_get_in(ctx, SecretReader::Caller, &bucket, key)
            .await
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

    /// List entries in key order (`kv:read`); a secret bucket's values are withheld.
    pub async fn kv_list(
        &self,
        p: &Principal,
        bucket: &str,
        prefix: &str,
        cursor: &str,
        limit: i64,
    ) -> Result<KvPage> {
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
        if bucket.secret {
            for row in &mut rows {
                row.value.clear();
            }
        }
        Ok(KvPage {
            rows,
            next,
            withheld: bucket.secret,
        })
    }
}
