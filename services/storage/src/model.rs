//! Validated domain values. Input from the network becomes one of these once, at
//! the boundary; the rest of the service works only with valid values.

use std::fmt;

use crate::error::StorageError;

/// Which storage surface a bucket, token or scope belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Key/value buckets.
    Kv,
    /// Static-site buckets.
    Static,
}

impl Surface {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Static => "static",
        }
    }

    /// Parse `kv` / `static`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, StorageError> {
        match s {
            "kv" => Ok(Self::Kv),
            "static" => Ok(Self::Static),
            other => Err(StorageError::invalid(
                field,
                format!("{other:?} is not one of kv, static"),
            )),
        }
    }

    /// The operator scope for `level` (`read`, `write`, `admin`) on this surface.
    pub fn scope(self, level: Access) -> String {
        format!("{}:{}", self.as_str(), level.as_str())
    }
}

/// A storage token's access level. `admin` includes `write`, which includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read contents.
    Read,
    /// Write contents.
    Write,
    /// Manage (and write and read).
    Admin,
}

impl Access {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    /// Parse `read` / `write` / `admin`.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            "admin" => Ok(Self::Admin),
            other => Err(StorageError::invalid(
                "access",
                format!("{other:?} is not one of read, write, admin"),
            )),
        }
    }
}

/// A bucket name: a DNS label (1-63 of `a-z0-9-`, not starting or ending with `-`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketName(String);

impl BucketName {
    /// Validate.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(StorageError::invalid(
                "name",
                format!(
                    "bucket name {s:?} must be 1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"
                ),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest KV key, bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest KV value (JSON text), bytes.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;

/// A KV key: 1 to 512 bytes of UTF-8 without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvKey(String);

impl KvKey {
    /// Validate.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        if s.is_empty() {
            return Err(StorageError::invalid("key", "must not be empty"));
        }
        if s.len() > MAX_KEY_BYTES {
            return Err(StorageError::invalid(
                "key",
                format!("is {} bytes; the limit is {MAX_KEY_BYTES}", s.len()),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(StorageError::invalid(
                "key",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A KV value: JSON text within the size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvValue(String);

impl KvValue {
    /// Validate that `s` is JSON and small enough; stored compacted.
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        if s.len() > MAX_VALUE_BYTES {
            return Err(StorageError::TooLarge(format!(
                "value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                s.len()
            )));
        }
        let v: serde_json::Value = serde_json::from_str(s)
            .map_err(|e| StorageError::invalid("value", format!("not JSON: {e}")))?;
        Ok(Self(v.to_string()))
    }

    /// JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Largest single static object, bytes.
pub const MAX_OBJECT_BYTES: u64 = 64 * 1024 * 1024;
/// Most files in one deployment (the gateway bounds archive unpacking by it too).
pub const MAX_FILES: usize = lattice_proto::storage::MAX_DEPLOYMENT_FILES;
/// Longest site path, bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// A path inside a static site: '/'-separated, relative, no `.`/`..`/empty segments,
/// no backslashes or control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SitePath(String);

impl SitePath {
    /// Validate and normalise (a leading `/` or `./` is dropped).
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let trimmed = s.trim_start_matches("./").trim_start_matches('/');
        if trimmed.is_empty() || trimmed.len() > MAX_PATH_BYTES {
            return Err(StorageError::invalid(
                "path",
                format!("{s:?} must be 1 to {MAX_PATH_BYTES} bytes"),
            ));
        }
        if trimmed.contains('\\') || trimmed.chars().any(char::is_control) {
            return Err(StorageError::invalid(
                "path",
                format!("{s:?} contains a backslash or control character"),
            ));
        }
        if trimmed.ends_with('/') {
            return Err(StorageError::invalid(
                "path",
                format!("{s:?} names a directory, not a file"),
            ));
        }
        if trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(StorageError::invalid(
                "path",
                format!("{s:?} has an empty, '.' or '..' segment"),
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file's media type as given by the uploader: printable ASCII (it is sent back
/// as a `Content-Type` header byte for byte), `type/subtype` with optional
/// parameters, at most 255 bytes. An empty one is guessed from the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType(String);

impl ContentType {
    /// Validate `given`, or guess from `path` when it is blank.
    pub fn parse_or_guess(given: &str, path: &SitePath) -> Result<Self, StorageError> {
        let given = given.trim();
        if given.is_empty() {
            return Ok(Self(guess_content_type(path.as_str())));
        }
        let printable = given
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        let essence = given.split(';').next().unwrap_or_default().trim();
        let well_formed = essence
            .split_once('/')
            .is_some_and(|(t, sub)| !t.is_empty() && !sub.is_empty() && !sub.contains('/'));
        if given.len() > 255 || !printable || !well_formed {
            return Err(StorageError::invalid(
                "content_type",
                format!(
                    "{given:?} for {:?} is not a media type (type/subtype, printable ASCII, at most 255 bytes)",
                    path.as_str()
                ),
            ));
        }
        Ok(Self(given.to_owned()))
    }

    /// The media type.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// A host name or IP address a binding matches (lowercase, no port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(String);

impl HostName {
    /// Validate: an IP address, or DNS labels of `a-z0-9-` (a leading `*.` is refused).
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        let host = s.trim().trim_end_matches('.').to_lowercase();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Self(bare.to_owned()));
        }
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if ok {
            Ok(Self(host))
        } else {
            Err(StorageError::invalid(
                "host",
                format!("{s:?} is not a host name or IP address"),
            ))
        }
    }

    /// The host.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Guess a Content-Type from a path's extension.
pub fn guess_content_type(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    match (mime.type_(), mime.get_param("charset")) {
        (mime_guess::mime::TEXT, None) => format!("{mime}; charset=utf-8"),
        _ if mime == mime_guess::mime::APPLICATION_JAVASCRIPT => {
            "text/javascript; charset=utf-8".to_owned()
        }
        _ => mime.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_dns_labels() {
        assert!(BucketName::parse("site").is_ok());
        assert!(BucketName::parse("my-site-2").is_ok());
        for bad in ["", "Site", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(BucketName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn site_paths_never_escape() {
        assert_eq!(
            SitePath::parse("/index.html").unwrap().as_str(),
            "index.html"
        );
        assert_eq!(SitePath::parse("./a/b.css").unwrap().as_str(), "a/b.css");
        for bad in [
            "", "/", "a/../b", "..", "a//b", "a/./b", "a\\b", "dir/", "a\u{0}b",
        ] {
            assert!(SitePath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_values_have_limits() {
        assert!(KvKey::parse("site/title").is_ok());
        assert!(KvKey::parse("").is_err());
        assert!(KvKey::parse(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert!(KvKey::parse("a\nb").is_err());
        assert_eq!(
            KvValue::parse(" { \"a\" : 1 } ").unwrap().as_str(),
            "{\"a\":1}"
        );
        assert!(KvValue::parse("{").is_err());
        let big = format!("\"{}\"", "x".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            KvValue::parse(&big),
            Err(StorageError::TooLarge(_))
        ));
    }

    #[test]
    fn hosts_are_names_or_ips() {
        assert_eq!(
            HostName::parse("Assets.Example.com.").unwrap().as_str(),
            "assets.example.com"
        );
        assert_eq!(HostName::parse("127.0.0.1").unwrap().as_str(), "127.0.0.1");
        assert_eq!(HostName::parse("[::1]").unwrap().as_str(), "::1");
        for bad in ["", "a..b", "-a.com", "*.example.com", "a b", "host:80"] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn given_content_types_must_be_header_safe_media_types() {
        let path = SitePath::parse("a.txt").unwrap();
        let ok = |s: &str| ContentType::parse_or_guess(s, &path).map(ContentType::into_string);
        assert_eq!(ok("").unwrap(), "text/plain; charset=utf-8");
        assert_eq!(ok(" text/css ").unwrap(), "text/css");
        assert_eq!(
            ok("application/json; charset=utf-8").unwrap(),
            "application/json; charset=utf-8"
        );
        for bad in [
            "text/html\r\nx-evil: 1",
            "text/\u{7f}",
            "caf\u{e9}/x",
            "html",
            "/x",
            "a/",
            "a/b/c",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        assert!(ok(&format!("a/{}", "b".repeat(300))).is_err());
    }

    #[test]
    fn content_types_have_charsets_for_text() {
        assert_eq!(guess_content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            guess_content_type("app.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(guess_content_type("a.png"), "image/png");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
    }
}
