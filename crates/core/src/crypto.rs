//! Secrets at rest and random secrets.
//!
//! - The **master key** (32 bytes) comes from `LATTICE_MASTER_KEY` / `CUSTOMER_DATA_KEY`
//!   or from `master.key` in the data dir, generated 0600 on first start.
//! - Each service database holds one **data key**, stored wrapped (AES-256-GCM) by the
//!   master key. Values are sealed with AES-256-GCM under the data key, with an
//!   associated-data string that binds a ciphertext to its row and column, so a sealed
//!   value copied into another row does not open.
//! - Tokens are 256-bit random secrets; only their SHA-256 is stored.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::db::Db;

/// Failures of key handling and sealing.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The configured key is not 32 bytes of hex/base64 nor a long passphrase.
    #[error("master_key: {0}")]
    BadMasterKey(String),
    /// Reading or writing `master.key` failed.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A sealed value did not open: wrong key, wrong row, or tampering.
    #[error("sealed value does not open under this key (wrong master key, moved or tampered data)")]
    Open,
    /// A sealed value is not in the expected format.
    #[error("sealed value is malformed")]
    Malformed,
    /// The data key row could not be read or written.
    #[error("data key store: {0}")]
    Store(#[from] sqlx::Error),
}

/// The 32-byte root key. Never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Parse a configured key: 64 hex characters, base64 of 32 bytes, or a passphrase
    /// of at least 32 characters (hashed with SHA-256).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        if text.len() == 64
            && let Ok(bytes) = hex::decode(text)
        {
            return Self::from_slice(&bytes);
        }
        if let Ok(bytes) = STANDARD.decode(text)
            && bytes.len() == 32
        {
            return Self::from_slice(&bytes);
        }
        if text.chars().count() >= 32 {
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            return Ok(Self(Zeroizing::new(digest)));
        }
        Err(CryptoError::BadMasterKey(
            "must be 32 bytes as 64 hex characters or base64, or a passphrase of at least 32 characters".into(),
        ))
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::BadMasterKey("must be exactly 32 bytes".into()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut arr = [0u8; 32];
        rand::rng().fill_bytes(&mut arr);
        Self(Zeroizing::new(arr))
    }

    /// Load `path`, or create it (0600, base64) when it does not exist yet.
    /// Returns the key and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), CryptoError> {
        let io_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Self::parse(&text)?, false)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let encoded = Zeroizing::new(format!("{}\n", STANDARD.encode(*key.0)));
                write_private_file(path, encoded.as_bytes()).map_err(io_err)?;
                Ok((key, true))
            }
            Err(err) => Err(io_err(err)),
        }
    }

    /// Derive an independent 32-byte secret for one purpose (internal JWTs, MFA tokens).
    pub fn derive(&self, purpose: &str) -> Zeroizing<Vec<u8>> {
        let mut h = Sha256::new();
        h.update(b"lattice-derive-v1\0");
        h.update(purpose.as_bytes());
        h.update([0u8]);
        h.update(*self.0);
        Zeroizing::new(h.finalize().to_vec())
    }

    /// A short public name of this key (16 hex characters of a one-way derivation):
    /// tells two keys apart without revealing either.
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive("lattice/master-key-fingerprint")[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&*self.0).expect("a 32-byte key is a valid AES-256 key")
    }
}

/// Write a new file readable only by its owner, refusing to overwrite.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

fn seal_with(cipher: &Aes256Gcm, plaintext: &[u8], aad: &str) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(
    cipher: &Aes256Gcm,
    sealed: &[u8],
    aad: &str,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
        return Err(CryptoError::Malformed);
    }
    let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN]
        .try_into()
        .map_err(|_| CryptoError::Malformed)?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad: aad.as_bytes(),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Open)
}

/// Seals and opens values with one service's data key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Load the data key of this database (table `lattice_data_keys`, created by the
    /// core migrations), creating and storing it wrapped on first use.
    pub async fn open(db: &Db, master: &MasterKey) -> Result<Self, CryptoError> {
        const PURPOSE: &str = "lattice/data-key";
        let existing: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT wrapped FROM lattice_data_keys WHERE id = $1")
                .bind("primary")
                .fetch_optional(db.pool())
                .await?;
        let wrapped = match existing {
            Some((wrapped,)) => wrapped,
            None => {
                let mut fresh = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(&mut *fresh);
                let wrapped = seal_with(&master.cipher(), &*fresh, PURPOSE);
                // Two starting replicas may race: the first insert wins, both read it back.
                sqlx::query(
                    "INSERT INTO lattice_data_keys (id, wrapped, created_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind("primary")
                .bind(wrapped)
                .bind(crate::time::now_ms())
                .execute(db.pool())
                .await?;
                let (wrapped,): (Vec<u8>,) =
                    sqlx::query_as("SELECT wrapped FROM lattice_data_keys WHERE id = $1")
                        .bind("primary")
                        .fetch_one(db.pool())
                        .await?;
                wrapped
            }
        };
        let key = open_with(&master.cipher(), &wrapped, PURPOSE)?;
        Ok(Self {
            cipher: Aes256Gcm::new_from_slice(&key).map_err(|_| CryptoError::Malformed)?,
        })
    }

    /// Whether `master` opens this database's data key, without creating one: Ok(true)
    /// when it does, Ok(false) when the database has none yet, Err when it does not.
    pub async fn check(db: &Db, master: &MasterKey) -> Result<bool, CryptoError> {
        let existing: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT wrapped FROM lattice_data_keys WHERE id = $1")
                .bind("primary")
                .fetch_optional(db.pool())
                .await?;
        match existing {
            None => Ok(false),
            Some((wrapped,)) => {
                Self::check_wrapped(master, &wrapped)?;
                Ok(true)
            }
        }
    }

    /// Whether `master` opens a data key as stored (`lattice_data_keys.wrapped`).
    pub fn check_wrapped(master: &MasterKey, wrapped: &[u8]) -> Result<(), CryptoError> {
        open_with(&master.cipher(), wrapped, "lattice/data-key").map(drop)
    }

    /// Seal `plaintext`; `aad` names where it lives (e.g. `identity.users.totp:<user id>`).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Vec<u8> {
        seal_with(&self.cipher, plaintext, aad)
    }

    /// Open a value sealed with the same `aad`.
    pub fn open_sealed(&self, sealed: &[u8], aad: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(&self.cipher, sealed, aad)
    }

    /// [`Sealer::seal`] for a text column: `sealed:` and the sealed bytes in base64.
    pub fn seal_text(&self, plaintext: &str, aad: &str) -> String {
        format!(
            "{SEALED_TEXT_PREFIX}{}",
            STANDARD.encode(self.seal(plaintext.as_bytes(), aad))
        )
    }

    /// Open what [`Sealer::seal_text`] sealed with the same `aad`.
    pub fn open_text(&self, sealed: &str, aad: &str) -> Result<Zeroizing<String>, CryptoError> {
        let encoded = sealed
            .strip_prefix(SEALED_TEXT_PREFIX)
            .ok_or(CryptoError::Malformed)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| CryptoError::Malformed)?;
        let mut opened = self.open_sealed(&bytes, aad)?;
        let text = String::from_utf8(std::mem::take(&mut *opened)).map_err(|e| {
            // Keep the bytes zeroised on the way out.
            drop(Zeroizing::new(e.into_bytes()));
            CryptoError::Malformed
        })?;
        Ok(Zeroizing::new(text))
    }
}

/// What [`Sealer::seal_text`] values start with.
pub const SEALED_TEXT_PREFIX: &str = "sealed:";

/// A new random secret: `prefix` + 43 characters of base64url (256 bits).
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256 of a secret: what is stored for tokens, sessions and recovery codes.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// SHA-256 fingerprint of a DER certificate, as `AA:BB:...`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_parses_hex_base64_and_passphrases() {
        let hex_key = "00".repeat(32);
        assert!(MasterKey::parse(&hex_key).is_ok());
        assert!(MasterKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(MasterKey::parse("a passphrase that is long enough to use!").is_ok());
        let err = MasterKey::parse("short").unwrap_err().to_string();
        assert!(err.starts_with("master_key:"), "{err}");
    }

    #[test]
    fn sealed_text_round_trips_and_is_bound_to_its_aad() {
        let cipher = MasterKey::generate().cipher();
        let sealer = Sealer { cipher };
        let sealed = sealer.seal_text("{\"password\":\"hunter2\"}", "storage.kv:b1/db");
        assert!(sealed.starts_with(SEALED_TEXT_PREFIX));
        assert!(!sealed.contains("hunter2"));
        assert_eq!(
            sealer
                .open_text(&sealed, "storage.kv:b1/db")
                .unwrap()
                .as_str(),
            "{\"password\":\"hunter2\"}"
        );
        assert!(sealer.open_text(&sealed, "storage.kv:b1/other").is_err());
        assert!(
            sealer
                .open_text("{\"plain\":1}", "storage.kv:b1/db")
                .is_err()
        );
    }

    #[test]
    fn sealed_values_open_only_with_their_aad() {
        let key = MasterKey::generate();
        let cipher = key.cipher();
        let sealed = seal_with(&cipher, b"seed", "identity.users.totp:u1");
        assert_eq!(
            &*open_with(&cipher, &sealed, "identity.users.totp:u1").unwrap(),
            b"seed"
        );
        assert!(matches!(
            open_with(&cipher, &sealed, "identity.users.totp:u2"),
            Err(CryptoError::Open)
        ));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            open_with(&cipher, &tampered, "identity.users.totp:u1"),
            Err(CryptoError::Open)
        ));
        let other = MasterKey::generate().cipher();
        assert!(open_with(&other, &sealed, "identity.users.totp:u1").is_err());
    }

    #[test]
    fn master_key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(*k1.0, *k2.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn secrets_are_random_and_hash_stably() {
        let a = random_secret("lat_");
        assert!(a.starts_with("lat_") && a.len() == 4 + 43);
        assert_ne!(a, random_secret("lat_"));
        assert_eq!(hash_secret("x"), hash_secret("x"));
        assert_eq!(hash_secret("x").len(), 64);
    }
}
