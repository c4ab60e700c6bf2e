//! Agent releases: binaries the server keeps for `agent.update` plans, each signed
//! at upload with the server's Ed25519 release key. The key is made on first use,
//! its private half sealed at rest under the master key; agents pin its public
//! half at enrollment and accept only releases it signed, so a release swapped in
//! the database (or a server that never had the key) cannot update a node.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use futures::{Stream, StreamExt as _};
use lattice_core::audit::Actor;
use lattice_core::auth::RequestContext;
use lattice_core::crypto::Sealer;
use lattice_core::time::now_ms;
use lattice_proto::release::{ARCHES, MAX_RELEASE_BYTES, signed_message, valid_version};
use lattice_proto::tunnel::v1 as pb;
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

use crate::error::TunnelError;
use crate::service::{Nodes, require};
use crate::store::NodeRow;

/// Rows of the binary: 1 MiB each.
pub const CHUNK: usize = 1024 * 1024;

const KEY_AAD: &str = "tunnel.agent_release_keys.private:primary";

/// The release signing key, loaded (or made) on first use.
#[derive(Default, Clone)]
pub struct ReleaseKey {
    sealer: Option<Arc<Sealer>>,
    key: Arc<tokio::sync::OnceCell<SigningKey>>,
}

impl std::fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReleaseKey(..)")
    }
}

impl ReleaseKey {
    /// Sealed with `sealer`.
    pub fn new(sealer: Sealer) -> Self {
        Self {
            sealer: Some(Arc::new(sealer)),
            key: Arc::default(),
        }
    }
}

fn release_pb(row: &sqlx::any::AnyRow) -> Result<pb::Release, sqlx::Error> {
    use sqlx::Row as _;
    Ok(pb::Release {
        version: row.try_get("version")?,
        arch: row.try_get("arch")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        signature: row.try_get("signature")?,
        uploaded_at_ms: row.try_get("uploaded_at_ms")?,
        uploaded_by: row.try_get("uploaded_by")?,
    })
}

macro_rules! release_cols {
    () => {
        "version, arch, sha256, size, signature, uploaded_at_ms, uploaded_by"
    };
}

fn check_head(version: &str, arch: &str) -> Result<(), TunnelError> {
    if !valid_version(version) {
        return Err(TunnelError::Invalid(format!(
            "version: {version:?} is not a release version (1.4.0 or 1.4.0-rc.1)"
        )));
    }
    if !ARCHES.contains(&arch) {
        return Err(TunnelError::Invalid(format!(
            "arch: {arch:?} is not one of {}",
            ARCHES.join(", ")
        )));
    }
    Ok(())
}

impl Nodes {
    /// The signing key: loaded from the database, or made and stored sealed.
    async fn signing_key(&self) -> Result<&SigningKey, TunnelError> {
        let Some(sealer) = self.releases.sealer.clone() else {
            return Err(TunnelError::NotConnected(
                "agent releases need the master key: this tunnel service has none".into(),
            ));
        };
        let db = self.store.db().clone();
        self.releases
            .key
            .get_or_try_init(|| async move {
                let existing: Option<(Vec<u8>,)> = sqlx::query_as(
                    "SELECT private_sealed FROM agent_release_keys WHERE id = 'primary'",
                )
                .fetch_optional(db.pool())
                .await?;
                let sealed = match existing {
                    Some((s,)) => s,
                    None => {
                        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                        rand::RngCore::fill_bytes(&mut rand::rng(), &mut *seed);
                        let key = SigningKey::from_bytes(&seed);
                        let public = B64.encode(key.verifying_key().as_bytes());
                        // Two replicas may race: the first insert wins, both read it back.
                        sqlx::query(
                            "INSERT INTO agent_release_keys (id, public_key, private_sealed, created_at_ms) \
                             VALUES ('primary', $1, $2, $3) ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(public)
                        .bind(sealer.seal(&*seed, KEY_AAD))
                        .bind(now_ms())
                        .execute(db.pool())
                        .await?;
                        let (s,): (Vec<u8>,) = sqlx::query_as(
                            "SELECT private_sealed FROM agent_release_keys WHERE id = 'primary'",
                        )
                        .fetch_one(db.pool())
                        .await?;
                        s
                    }
                };
                let seed = sealer.open_sealed(&sealed, KEY_AAD).map_err(|_| {
                    TunnelError::Invalid(
                        "the release key does not open with this master key".into(),
                    )
                })?;
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| {
                    TunnelError::Invalid("the stored release key is malformed".into())
                })?;
                Ok::<_, TunnelError>(SigningKey::from_bytes(&seed))
            })
            .await
    }

    /// base64 of the release key's public half ("" without a master key).
    pub async fn release_public_key(&self) -> String {
        match self.signing_key().await {
            Ok(k) => B64.encode(k.verifying_key().as_bytes()),
            Err(e) => {
                tracing::warn!(error = %e, "no release key: agents enroll without pinning one");
                String::new()
            }
        }
    }

    /// Store an agent release (`releases:admin`): `chunks` is the binary. Signed
    /// with the release key; immutable once stored (the same version and arch
    /// again is 409).
    pub async fn upload_release<S>(
        &self,
        ctx: &RequestContext,
        version: &str,
        arch: &str,
        mut chunks: S,
    ) -> Result<pb::Release, TunnelError>
    where
        S: Stream<Item = Result<bytes::Bytes, TunnelError>> + Unpin + Send,
    {
        require(&ctx.principal, "releases:admin")?;
        check_head(version, arch)?;
        let key = self.signing_key().await?;
        let db = self.store.db();
        let exists: Option<(String,)> =
            sqlx::query_as("SELECT version FROM agent_releases WHERE version = $1 AND arch = $2")
                .bind(version)
                .bind(arch)
                .fetch_optional(db.pool())
                .await?;
        if exists.is_some() {
            return Err(TunnelError::Conflict(format!(
                "release {version} ({arch}) exists: releases are immutable, upload a new version"
            )));
        }
        let mut tx = db.pool().begin().await?;
        let (mut hasher, mut size, mut seq) = (Sha256::new(), 0u64, 0i64);
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let flush = |buf: &mut Vec<u8>| std::mem::replace(buf, Vec::with_capacity(CHUNK));
        while let Some(piece) = chunks.next().await {
            let piece = piece?;
            size += piece.len() as u64;
            if size > MAX_RELEASE_BYTES {
                return Err(TunnelError::TooLarge(format!(
                    "a release is at most {} MiB",
                    MAX_RELEASE_BYTES / 1024 / 1024
                )));
            }
            hasher.update(&piece);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                let take = rest.len().min(CHUNK - buf.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK {
                    sqlx::query("INSERT INTO agent_release_chunks (version, arch, seq, data) VALUES ($1, $2, $3, $4)")
                        .bind(version)
                        .bind(arch)
                        .bind(seq)
                        .bind(flush(&mut buf))
                        .execute(&mut *tx)
                        .await?;
                    seq += 1;
                }
            }
        }
        if size == 0 {
            return Err(TunnelError::Invalid("the release binary is empty".into()));
        }
        if !buf.is_empty() {
            sqlx::query("INSERT INTO agent_release_chunks (version, arch, seq, data) VALUES ($1, $2, $3, $4)")
                .bind(version)
                .bind(arch)
                .bind(seq)
                .bind(flush(&mut buf))
                .execute(&mut *tx)
                .await?;
        }
        let sha256 = format!("sha256:{}", hex::encode(hasher.finalize()));
        let signature = B64.encode(
            key.sign(signed_message(version, arch, &sha256, size).as_bytes())
                .to_bytes(),
        );
        let release = pb::Release {
            version: version.into(),
            arch: arch.into(),
            sha256,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            signature,
            uploaded_at_ms: now_ms(),
            uploaded_by: ctx.principal.username.clone(),
        };
        let inserted = sqlx::query(concat!(
            "INSERT INTO agent_releases (",
            release_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (version, arch) DO NOTHING"
        ))
        .bind(&release.version)
        .bind(&release.arch)
        .bind(&release.sha256)
        .bind(release.size)
        .bind(&release.signature)
        .bind(release.uploaded_at_ms)
        .bind(&release.uploaded_by)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(TunnelError::Conflict(format!(
                "release {version} ({arch}) exists: releases are immutable, upload a new version"
            )));
        }
        tx.commit().await?;
        self.record(
            Actor::of(ctx),
            "release.upload",
            &format!("{version}/{arch}"),
            true,
            serde_json::json!({"sha256": release.sha256, "size": release.size}),
        )
        .await;
        Ok(release)
    }

    /// Every release, newest first (`nodes:read`), and the release key.
    pub async fn list_releases(
        &self,
        ctx: &RequestContext,
    ) -> Result<(Vec<pb::Release>, String), TunnelError> {
        if !ctx.principal.is_service_in_org() {
            require(&ctx.principal, "nodes:read")?;
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            release_cols!(),
            " FROM agent_releases ORDER BY uploaded_at_ms DESC, version DESC LIMIT 500"
        ))
        .fetch_all(self.store.db().pool())
        .await?;
        let releases = rows.iter().map(release_pb).collect::<Result<_, _>>()?;
        Ok((releases, self.release_public_key().await))
    }

    /// One release (`nodes:read`, or the policy service acting in an org).
    pub async fn get_release(
        &self,
        ctx: &RequestContext,
        version: &str,
        arch: &str,
    ) -> Result<pb::Release, TunnelError> {
        if !ctx.principal.is_service_in_org() {
            require(&ctx.principal, "nodes:read")?;
        }
        check_head(version, arch)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            release_cols!(),
            " FROM agent_releases WHERE version = $1 AND arch = $2"
        ))
        .bind(version)
        .bind(arch)
        .fetch_optional(self.store.db().pool())
        .await?
        .ok_or_else(|| {
            TunnelError::NotFound(format!(
                "agent release {version} for {arch} (upload it: lattice agent-release upload FILE --version {version} --arch {arch})"
            ))
        })?;
        Ok(release_pb(&row)?)
    }

    /// A release's binary for an enrolled node, chunk by chunk (only one chunk in
    /// memory at a time).
    pub async fn fetch_release(
        &self,
        node: &NodeRow,
        version: &str,
        arch: &str,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, TunnelError>> + use<>, TunnelError> {
        check_head(version, arch)?;
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM agent_release_chunks WHERE version = $1 AND arch = $2",
        )
        .bind(version)
        .bind(arch)
        .fetch_one(self.store.db().pool())
        .await?;
        if count == 0 {
            return Err(TunnelError::NotFound(format!(
                "agent release {version} for {arch}"
            )));
        }
        tracing::info!(node = %node.id, version, arch, "agent release fetched");
        let (db, version, arch) = (self.store.db().clone(), version.to_owned(), arch.to_owned());
        Ok(futures::stream::unfold(0i64, move |seq| {
            let (db, version, arch) = (db.clone(), version.clone(), arch.clone());
            async move {
                if seq >= count {
                    return None;
                }
                let row: Result<(Vec<u8>,), sqlx::Error> = sqlx::query_as(
                    "SELECT data FROM agent_release_chunks WHERE version = $1 AND arch = $2 AND seq = $3",
                )
                .bind(&version)
                .bind(&arch)
                .bind(seq)
                .fetch_one(db.pool())
                .await;
                Some((
                    row.map(|r| bytes::Bytes::from(r.0))
                        .map_err(TunnelError::from),
                    seq + 1,
                ))
            }
        }))
    }
}
