//! Content-addressed blob storage through `object_store`: a local directory in the
//! embedded default, S3 / Azure Blob / GCS (`s3://`, `az://`, `gs://` URLs) in the
//! cloud. A blob's name is the SHA-256 of its bytes, so it never changes once
//! written, and the same file in many deployments is stored once.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::{Digest as _, Sha256};

/// The blob store.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({})", self.store)
    }
}

impl Blobs {
    /// Blobs under a local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        Ok(Self {
            store: Arc::new(store),
        })
    }

    /// Blobs at an object store URL (`s3://bucket/prefix`, `az://container/prefix`,
    /// `gs://bucket/prefix`, `file:///dir`). Credentials come from the usual
    /// environment variables of each cloud (`AWS_*`, `AZURE_*`, `GOOGLE_*`), the
    /// instance's metadata service, or (Azure Container Apps, App Service) the managed
    /// identity endpoint in `IDENTITY_ENDPOINT`.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| anyhow::anyhow!("storage.objects_url: {e}"))?;
        let options = std::env::vars().filter(|(k, _)| {
            let k = k.to_ascii_uppercase();
            k.starts_with("AWS_")
                || k.starts_with("AZURE_")
                || k.starts_with("GOOGLE_")
                || k == "IDENTITY_ENDPOINT"
        });
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| anyhow::anyhow!("storage.objects_url: {e}"))?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Self { store })
    }

    fn location(sha256: &str) -> Path {
        Path::from(format!("blobs/{}/{sha256}", &sha256[..2]))
    }

    /// Store `data`; returns its hex SHA-256. Writing an existing blob is skipped.
    pub async fn put(&self, data: Bytes) -> object_store::Result<String> {
        let sha = hex::encode(Sha256::digest(&data));
        let location = Self::location(&sha);
        if self.store.head(&location).await.is_ok() {
            return Ok(sha);
        }
        self.store.put(&location, PutPayload::from(data)).await?;
        Ok(sha)
    }

    /// Read a whole blob.
    pub async fn get(&self, sha256: &str) -> object_store::Result<Bytes> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(object_store::Error::NotFound {
                path: sha256.to_owned(),
                source: "not a SHA-256".into(),
            });
        }
        self.store.get(&Self::location(sha256)).await?.bytes().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_content_addressed() {
        let dir =
            std::env::temp_dir().join(format!("lattice-blobs-{}", uuid::Uuid::now_v7().simple()));
        let blobs = Blobs::local(&dir).unwrap();
        let a = blobs.put(Bytes::from_static(b"hello")).await.unwrap();
        assert_eq!(
            a,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(blobs.put(Bytes::from_static(b"hello")).await.unwrap(), a);
        assert_eq!(&blobs.get(&a).await.unwrap()[..], b"hello");
        assert!(blobs.get("../../etc/passwd").await.is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
