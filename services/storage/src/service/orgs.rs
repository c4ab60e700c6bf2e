//! What storage holds of an org, and dropping all of it when a platform admin
//! deletes the org (`orgs:admin`, checked here on every call).

use std::collections::BTreeMap;

use lattice_core::audit::Actor;
use lattice_core::auth::RequestContext;

use super::{Result, Storage};
use crate::error::StorageError;

fn require_platform(ctx: &RequestContext) -> Result<()> {
    if ctx.principal.allows("orgs:admin") {
        Ok(())
    } else {
        Err(StorageError::MissingScope("orgs:admin".into()))
    }
}

impl Storage {
    /// Buckets, host bindings and live storage tokens of `org_id`.
    pub async fn org_usage(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<BTreeMap<String, i64>> {
        require_platform(ctx)?;
        Ok(self.store.org_usage(org_id).await?)
    }

    /// Remove every bucket (with its entries, deployments, file references and
    /// bindings) and every storage token of `org_id`. Idempotent.
    pub async fn purge_org(
        &self,
        ctx: &RequestContext,
        org_id: &str,
    ) -> Result<BTreeMap<String, i64>> {
        require_platform(ctx)?;
        let mut removed = BTreeMap::new();
        let buckets = self.store.list_buckets(org_id, None).await?;
        let mut hosts = 0;
        for b in &buckets {
            let unbound = self.store.delete_bucket(org_id, &b.id).await?;
            hosts += unbound.len();
            self.hosts_changed(&unbound).await;
        }
        let tokens = self.store.delete_tokens_of_org(org_id).await?;
        for id in &tokens {
            self.forget_grant(id);
            self.announce_revoked(id).await;
        }
        for (kind, n) in [
            ("buckets", buckets.len()),
            ("host_bindings", hosts),
            ("storage_tokens", tokens.len()),
        ] {
            if n > 0 {
                removed.insert(kind.to_owned(), i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        self.audit(
            Actor::in_org(ctx, org_id),
            "org.purge",
            org_id,
            serde_json::json!({"removed": removed}),
        )
        .await;
        Ok(removed)
    }
}
