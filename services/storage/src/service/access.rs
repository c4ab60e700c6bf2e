//! Host bindings and storage access tokens: managed with the admin scope of the
//! surface they serve (`kv:admin`, `static:admin`).

use lattice_core::audit::Actor;
use lattice_core::auth::{Principal, RequestContext};
use lattice_core::crypto::{hash_secret, random_secret};
use lattice_core::time::now_ms;

use super::{Result, Storage, require_scope, require_user};
use crate::error::StorageError;
use crate::input::{NewBinding, NewToken, TokenBuckets};
use crate::model::{Access, HostName, Surface};
use crate::store::{BindingRow, TokenRow};

/// Prefix of storage token secrets.
pub const STORAGE_TOKEN_PREFIX: &str = "lst_";

impl Storage {
    /// Bind a host to a bucket (admin of the bucket's surface). A host is bound at
    /// most once across all orgs.
    pub async fn create_binding(
        &self,
        ctx: &RequestContext,
        new: NewBinding,
    ) -> Result<BindingRow> {
        let p = &ctx.principal;
        let NewBinding { host, bucket } = new;
        let bucket = self.bucket_named(p, &bucket, None, Access::Admin).await?;
        match self
            .store
            .insert_binding(host.as_str(), &p.org_id, &bucket.id)
            .await
        {
            Ok(()) => {}
            Err(e) if lattice_core::db::Db::is_unique_violation(&e) => {
                return Err(StorageError::AlreadyExists(format!(
                    "a binding for host {:?}",
                    host.as_str()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.hosts_changed(&[host.as_str().to_owned()]).await;
        self.audit(
            Actor::of(ctx),
            "binding.create",
            host.as_str(),
            serde_json::json!({"bucket": bucket.name}),
        )
        .await;
        self.store
            .binding(&p.org_id, host.as_str())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("binding {:?}", host.as_str())))
    }

    /// Bindings of the org on the surfaces the caller may read.
    pub async fn list_bindings(&self, p: &Principal) -> Result<Vec<BindingRow>> {
        require_user(p)?;
        let rows = self.store.list_bindings(&p.org_id).await?;
        if !p.allows("kv:read") && !p.allows("static:read") {
            return Err(StorageError::MissingScope("kv:read or static:read".into()));
        }
        Ok(rows
            .into_iter()
            .filter(|b| p.allows(&format!("{}:read", b.surface)))
            .collect())
    }

    async fn binding_for(&self, p: &Principal, host: &str) -> Result<(HostName, BindingRow)> {
        require_user(p)?;
        let host = HostName::parse(host)?;
        let binding = self
            .store
            .binding(&p.org_id, host.as_str())
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("binding {:?}", host.as_str())))?;
        require_scope(
            p,
            Surface::parse("surface", &binding.surface)?,
            Access::Admin,
        )?;
        Ok((host, binding))
    }

    /// Remove a binding (admin of its surface).
    pub async fn delete_binding(&self, ctx: &RequestContext, host: &str) -> Result<()> {
        let p = &ctx.principal;
        let (host, _) = self.binding_for(p, host).await?;
        self.store.delete_binding(&p.org_id, host.as_str()).await?;
        self.hosts_changed(&[host.as_str().to_owned()]).await;
        self.audit(
            Actor::of(ctx),
            "binding.delete",
            host.as_str(),
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }

    /// Turn a binding on or off (admin of its surface).
    pub async fn set_binding_enabled(
        &self,
        ctx: &RequestContext,
        host: &str,
        enabled: bool,
    ) -> Result<BindingRow> {
        let p = &ctx.principal;
        let (host, mut binding) = self.binding_for(p, host).await?;
        self.store
            .set_binding_enabled(&p.org_id, host.as_str(), enabled)
            .await?;
        self.hosts_changed(&[host.as_str().to_owned()]).await;
        self.audit(
            Actor::of(ctx),
            "binding.update",
            host.as_str(),
            serde_json::json!({"enabled": enabled}),
        )
        .await;
        binding.enabled = enabled;
        Ok(binding)
    }

    /// Create a storage token (admin of its surface). Every named bucket must exist
    /// in the org and be of that surface. Returns the row and the secret (once).
    pub async fn create_token(
        &self,
        ctx: &RequestContext,
        new: NewToken,
    ) -> Result<(TokenRow, String)> {
        let p = &ctx.principal;
        let NewToken {
            surface,
            access,
            buckets,
            name,
            expires_in_s,
        } = new;
        require_scope(p, surface, Access::Admin)?;
        let mut names = Vec::new();
        match buckets {
            TokenBuckets::All => names.push("*".to_owned()),
            TokenBuckets::Named(buckets) => {
                for name in buckets {
                    let row = self
                        .store
                        .bucket(&p.org_id, name.as_str())
                        .await?
                        .ok_or_else(|| {
                            StorageError::NotFound(format!("bucket {:?}", name.as_str()))
                        })?;
                    if row.surface != surface.as_str() {
                        return Err(StorageError::invalid(
                            "buckets",
                            format!(
                                "bucket {:?} is a {} bucket, not {}",
                                row.name,
                                row.surface,
                                surface.as_str()
                            ),
                        ));
                    }
                    names.push(row.name);
                }
            }
        }
        names.sort();
        names.dedup();
        let now = now_ms();
        let row = TokenRow {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: p.org_id.clone(),
            name,
            surface: surface.as_str().into(),
            access: access.as_str().into(),
            buckets: names,
            created_at_ms: now,
            expires_at_ms: if expires_in_s == 0 {
                0
            } else {
                now + expires_in_s * 1000
            },
            revoked: false,
        };
        let secret = random_secret(STORAGE_TOKEN_PREFIX);
        self.store.insert_token(&row, &hash_secret(&secret)).await?;
        self.audit(
            Actor::of(ctx),
            "storage_token.create",
            &row.id,
            serde_json::json!({"surface": row.surface, "access": row.access, "buckets": row.buckets}),
        )
        .await;
        Ok((row, secret))
    }

    /// Live storage tokens on the surfaces the caller administers.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<TokenRow>> {
        require_user(p)?;
        if !p.allows("kv:admin") && !p.allows("static:admin") {
            return Err(StorageError::MissingScope(
                "kv:admin or static:admin".into(),
            ));
        }
        Ok(self
            .store
            .list_tokens(&p.org_id)
            .await?
            .into_iter()
            .filter(|t| p.allows(&format!("{}:admin", t.surface)))
            .collect())
    }

    /// Revoke a storage token (admin of its surface).
    pub async fn revoke_token(&self, ctx: &RequestContext, id: &str) -> Result<()> {
        let p = &ctx.principal;
        require_user(p)?;
        let token = self
            .store
            .token(&p.org_id, id)
            .await?
            .filter(|t| !t.revoked)
            .ok_or_else(|| StorageError::NotFound(format!("storage token {id:?}")))?;
        require_scope(p, Surface::parse("surface", &token.surface)?, Access::Admin)?;
        self.store.revoke_token(&p.org_id, id).await?;
        self.forget_grant(id);
        self.announce_revoked(id).await;
        self.audit(
            Actor::of(ctx),
            "storage_token.revoke",
            id,
            serde_json::json!({}),
        )
        .await;
        Ok(())
    }
}
