//! What the storage service is asked to do, validated: the gRPC adapter converts
//! each request message that carries new values into one of these once, with
//! `TryFrom`, and the service works only with valid values. Requests that only name
//! something (a bucket, a host) are checked where it is looked up.

use lattice_proto::storage::v1 as pb;

use crate::error::StorageError;
use crate::model::{Access, BucketName, HostName, KvKey, KvValue, Surface};

/// Longest KV TTL: ten years.
const MAX_TTL_S: i64 = 10 * 366 * 24 * 3600;
/// Longest storage-token lifetime: ten years.
const MAX_TOKEN_LIFETIME_S: i64 = 10 * 366 * 24 * 3600;

/// Condition on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCondition {
    /// Always write.
    None,
    /// Only if the entry is at this version (`If-Match`).
    Version(i64),
    /// Only if there is no live entry (`If-None-Match: *`).
    Absent,
}

impl From<Option<&pb::WriteCondition>> for KvCondition {
    fn from(c: Option<&pb::WriteCondition>) -> Self {
        use pb::write_condition::Condition;
        match c.and_then(|c| c.condition) {
            None | Some(Condition::Absent(false)) => Self::None,
            Some(Condition::Absent(true)) => Self::Absent,
            Some(Condition::Version(v)) => Self::Version(v),
        }
    }
}

/// A delete's condition: only a version makes sense.
pub fn delete_condition(c: Option<&pb::WriteCondition>) -> Result<Option<i64>, StorageError> {
    match KvCondition::from(c) {
        KvCondition::None => Ok(None),
        KvCondition::Version(v) => Ok(Some(v)),
        KvCondition::Absent => Err(StorageError::invalid(
            "condition",
            "a delete cannot require the key to be absent",
        )),
    }
}

/// A bucket to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBucket {
    /// Its name, unique in the org.
    pub name: BucketName,
    /// What it holds.
    pub surface: Surface,
    /// A kv bucket of secrets.
    pub secret: bool,
}

impl TryFrom<pb::CreateBucketRequest> for NewBucket {
    type Error = StorageError;

    fn try_from(m: pb::CreateBucketRequest) -> Result<Self, StorageError> {
        let surface = Surface::parse("surface", &m.surface)?;
        if m.secret && surface != Surface::Kv {
            return Err(StorageError::invalid(
                "secret",
                "only a kv bucket can hold secrets",
            ));
        }
        Ok(Self {
            name: BucketName::parse(&m.name)?,
            surface,
            secret: m.secret,
        })
    }
}

/// A value to write under a key, with its condition and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: KvKey,
    /// The value (JSON text).
    pub value: KvValue,
    /// When the write may happen.
    pub condition: KvCondition,
    /// Seconds until it expires (0: never; at most ten years).
    pub ttl_s: i64,
}

impl KvEntry {
    /// Validate a write of `value_json` under `key` that expires after `ttl_s`.
    pub fn parse(
        key: &str,
        value_json: &str,
        condition: KvCondition,
        ttl_s: i64,
    ) -> Result<Self, StorageError> {
        let key = KvKey::parse(key)?;
        let value = KvValue::parse(value_json)?;
        if !(0..=MAX_TTL_S).contains(&ttl_s) {
            return Err(StorageError::invalid(
                "ttl_s",
                "must be between 0 (no expiry) and 10 years",
            ));
        }
        Ok(Self {
            key,
            value,
            condition,
            ttl_s,
        })
    }
}

/// A write into a kv bucket of the caller's org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPut {
    /// The bucket.
    pub bucket: BucketName,
    /// What to write.
    pub entry: KvEntry,
}

impl TryFrom<pb::KvPutRequest> for KvPut {
    type Error = StorageError;

    fn try_from(m: pb::KvPutRequest) -> Result<Self, StorageError> {
        let bucket = BucketName::parse(&m.bucket)?;
        Ok(Self {
            bucket,
            entry: KvEntry::parse(
                &m.key,
                &m.value_json,
                KvCondition::from(m.condition.as_ref()),
                m.ttl_s,
            )?,
        })
    }
}

/// A KV write through a host binding, with a storage token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKvWrite {
    /// The request's host (resolved by the service: one bound to no kv bucket is
    /// not found).
    pub host: String,
    /// The storage token presented.
    pub secret: String,
    /// What to write.
    pub entry: KvEntry,
}

impl TryFrom<pb::HostKvRequest> for HostKvWrite {
    type Error = StorageError;

    fn try_from(m: pb::HostKvRequest) -> Result<Self, StorageError> {
        let entry = KvEntry::parse(
            &m.key,
            &m.value_json,
            KvCondition::from(m.condition.as_ref()),
            m.ttl_s,
        )?;
        Ok(Self {
            host: m.host,
            secret: m.token_secret,
            entry,
        })
    }
}

/// A host to bind to a bucket of the caller's org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBinding {
    /// The host (lowercase).
    pub host: HostName,
    /// The bucket it serves.
    pub bucket: BucketName,
}

impl TryFrom<pb::CreateBindingRequest> for NewBinding {
    type Error = StorageError;

    fn try_from(m: pb::CreateBindingRequest) -> Result<Self, StorageError> {
        let host = HostName::parse(&m.host)?;
        Ok(Self {
            host,
            bucket: BucketName::parse(&m.bucket)?,
        })
    }
}

/// The buckets a storage token reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBuckets {
    /// Every bucket of its surface in the org (`"*"`).
    All,
    /// These buckets (at least one; each must exist, of the token's surface).
    Named(Vec<BucketName>),
}

impl TokenBuckets {
    /// Parse a token's bucket list: names, or `["*"]` alone.
    pub fn parse(buckets: &[String]) -> Result<Self, StorageError> {
        match buckets {
            [] => Err(StorageError::invalid(
                "buckets",
                "name at least one bucket, or \"*\" for all",
            )),
            [all] if all == "*" => Ok(Self::All),
            _ if buckets.iter().any(|b| b == "*") => Err(StorageError::invalid(
                "buckets",
                "\"*\" cannot be combined with bucket names",
            )),
            _ => buckets
                .iter()
                .map(|b| {
                    BucketName::parse(b).map_err(|_| {
                        StorageError::invalid("buckets", format!("{b:?} is not a bucket name"))
                    })
                })
                .collect::<Result<_, _>>()
                .map(Self::Named),
        }
    }
}

/// A storage token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The surface it serves.
    pub surface: Surface,
    /// What it may do there.
    pub access: Access,
    /// Which buckets it reaches.
    pub buckets: TokenBuckets,
    /// A label for operators (trimmed; at most 64 printable characters).
    pub name: String,
    /// Seconds until it expires (0: never; at most ten years).
    pub expires_in_s: i64,
}

impl TryFrom<pb::CreateStorageTokenRequest> for NewToken {
    type Error = StorageError;

    fn try_from(m: pb::CreateStorageTokenRequest) -> Result<Self, StorageError> {
        let surface = Surface::parse("surface", &m.surface)?;
        let access = Access::parse(&m.access)?;
        let buckets = TokenBuckets::parse(&m.buckets)?;
        let name = m.name.trim();
        if name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(StorageError::invalid(
                "name",
                "must be at most 64 printable characters",
            ));
        }
        if !(0..=MAX_TOKEN_LIFETIME_S).contains(&m.expires_in_s) {
            return Err(StorageError::invalid(
                "expires_in_s",
                "must be between 0 (no expiry) and 10 years",
            ));
        }
        Ok(Self {
            surface,
            access,
            buckets,
            name: name.to_owned(),
            expires_in_s: m.expires_in_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(buckets: &[&str], name: &str, expires_in_s: i64) -> pb::CreateStorageTokenRequest {
        pb::CreateStorageTokenRequest {
            surface: "kv".into(),
            access: "read".into(),
            buckets: buckets.iter().map(|b| (*b).to_owned()).collect(),
            name: name.into(),
            expires_in_s,
        }
    }

    fn field_of(r: Result<NewToken, StorageError>) -> &'static str {
        match r {
            Err(StorageError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn tokens_are_validated_field_by_field() {
        let ok = NewToken::try_from(token(&["conf", "site"], "  ci  ", 60)).unwrap();
        assert_eq!(ok.surface, Surface::Kv);
        assert_eq!(ok.access, Access::Read);
        assert_eq!(ok.name, "ci");
        assert!(matches!(ok.buckets, TokenBuckets::Named(ref b) if b.len() == 2));
        let all = NewToken::try_from(token(&["*"], "", 0)).unwrap();
        assert_eq!(all.buckets, TokenBuckets::All);
        for (bad, field) in [
            (token(&[], "", 0), "buckets"),
            (token(&["*", "conf"], "", 0), "buckets"),
            (token(&["Not A Bucket"], "", 0), "buckets"),
            (token(&["conf"], &"n".repeat(65), 0), "name"),
            (token(&["conf"], "a\nb", 0), "name"),
            (token(&["conf"], "", -1), "expires_in_s"),
            (
                pb::CreateStorageTokenRequest {
                    access: "root".into(),
                    ..token(&["conf"], "", 0)
                },
                "access",
            ),
            (
                pb::CreateStorageTokenRequest {
                    surface: "blob".into(),
                    ..token(&["conf"], "", 0)
                },
                "surface",
            ),
        ] {
            assert_eq!(field_of(NewToken::try_from(bad)), field);
        }
    }

    #[test]
    fn kv_writes_are_validated_and_deletes_cannot_require_absence() {
        let put = |key: &str, value: &str, ttl_s: i64| {
            KvPut::try_from(pb::KvPutRequest {
                bucket: "conf".into(),
                key: key.into(),
                value_json: value.into(),
                condition: None,
                ttl_s,
            })
        };
        let ok = put("site/title", "\"x\"", 0).unwrap();
        assert_eq!(ok.entry.key.as_str(), "site/title");
        assert_eq!(ok.entry.condition, KvCondition::None);
        assert!(matches!(
            put("k", "{nope", 0),
            Err(StorageError::Invalid { field: "value", .. })
        ));
        assert!(matches!(
            put("", "1", 0),
            Err(StorageError::Invalid { field: "key", .. })
        ));
        assert!(matches!(
            put("k", "1", -1),
            Err(StorageError::Invalid { field: "ttl_s", .. })
        ));
        let absent = pb::WriteCondition {
            condition: Some(pb::write_condition::Condition::Absent(true)),
        };
        assert_eq!(KvCondition::from(Some(&absent)), KvCondition::Absent);
        assert!(delete_condition(Some(&absent)).is_err());
        assert_eq!(delete_condition(None).unwrap(), None);
    }
}
