//! The join token format shared by the tunnel service (which issues it) and the
//! agent (which reads it): `ljt1.<base64url(server URL)>.<hex SHA-256 of the CA, or ->.<secret>`.

use base64::Engine as _;

/// Format marker.
pub const PREFIX: &str = "ljt1";

/// The parts of a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The control plane's URL.
    pub server_url: String,
    /// Hex SHA-256 of the CA to pin (None: the server has no TLS of its own).
    pub ca_sha256: Option<String>,
    /// The single-use secret (the server keeps its hash).
    pub secret: String,
}

impl JoinToken {
    /// The token text.
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.server_url),
            self.ca_sha256.as_deref().unwrap_or("-"),
            self.secret
        )
    }

    /// Read a token; the error names what is wrong.
    pub fn parse(token: &str) -> Result<Self, String> {
        let mut parts = token.trim().split('.');
        let (Some(prefix), Some(url), Some(ca), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("join token: expected ljt1.<server>.<ca>.<secret>".into());
        };
        if prefix != PREFIX {
            return Err(format!("join token: unknown format {prefix:?}"));
        }
        let server_url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(url)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("join token: the server part does not decode")?;
        let ca_sha256 = match ca {
            "-" => None,
            hex if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            _ => return Err("join token: the CA fingerprint is not 64 hex digits".into()),
        };
        if secret.is_empty() {
            return Err("join token: the secret is missing".into());
        }
        Ok(Self {
            server_url,
            ca_sha256,
            secret: secret.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_reject_garbage() {
        let t = JoinToken {
            server_url: "https://cp.example:8443".into(),
            ca_sha256: Some("ab".repeat(32)),
            secret: "s3cret".into(),
        };
        assert_eq!(JoinToken::parse(&t.encode()).unwrap(), t);
        assert!(
            JoinToken::parse("ljt1.aGk.-.x")
                .unwrap()
                .ca_sha256
                .is_none()
        );
        assert!(JoinToken::parse("ljt2.aGk.-.x").is_err());
        assert!(JoinToken::parse("ljt1.aGk.zz.x").is_err());
        assert!(JoinToken::parse("ljt1.aGk.-").is_err());
    }
}
