//! The org limits storage enforces: how many buckets, and how many bytes stored
//! (KV values and the files of every deployment kept). Checked before each write;
//! concurrent writes may pass a limit by what they carry together.

use super::{Result, Storage};
use crate::error::StorageError;

impl Storage {
    async fn org_limits(&self, org_id: &str) -> Result<lattice_proto::identity::v1::Limits> {
        match &self.org_limits {
            Some(l) => l.of(org_id).await.map_err(|s| {
                StorageError::Unavailable(format!("reading the org's limits: {}", s.message()))
            }),
            None => Ok(Default::default()),
        }
    }

    /// Refuse a new bucket when the org has `max_buckets` already.
    pub(super) async fn check_bucket_limit(&self, org_id: &str) -> Result<()> {
        let max = self.org_limits(org_id).await?.max_buckets;
        if max > 0 && self.store.count_buckets(org_id).await? >= max {
            return Err(StorageError::LimitExceeded(format!(
                "the org's limit max_buckets ({max}) is reached: delete a bucket, or ask a platform admin to raise the limit"
            )));
        }
        Ok(())
    }

    /// Refuse `adding` more bytes when they would pass the org's `max_stored_bytes`.
    pub(super) async fn check_bytes_limit(&self, org_id: &str, adding: u64) -> Result<()> {
        let max = self.org_limits(org_id).await?.max_stored_bytes;
        if max <= 0 {
            return Ok(());
        }
        let stored = self.store.stored_bytes(org_id).await?;
        let after = stored.saturating_add(i64::try_from(adding).unwrap_or(i64::MAX));
        if after > max {
            return Err(StorageError::LimitExceeded(format!(
                "the org's limit max_stored_bytes ({max}) would be passed: {stored} bytes are stored and this adds {adding}; delete data, or ask a platform admin to raise the limit"
            )));
        }
        Ok(())
    }
}
