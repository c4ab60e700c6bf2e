//! The internal principal: who is calling, carried between services as a
//! short-lived HS256 JWT in the `x-lattice-principal` gRPC metadata.
//!
//! The gateway authenticates a caller once (cookie or bearer token) and mints this
//! for every internal call; each service verifies it and checks scopes itself.
//! Internal callers that act for nobody (the gateway asking identity to check a
//! password) carry a service principal.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::scope;

/// gRPC metadata key holding the principal JWT.
pub const PRINCIPAL_METADATA: &str = "x-lattice-principal";
/// gRPC metadata key holding the end client's IP address, as seen by the gateway.
pub const CLIENT_IP_METADATA: &str = "x-lattice-client-ip";
const ISSUER: &str = "lattice";
const AUDIENCE: &str = "lattice-internal";

/// How the end user proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Browser session cookie.
    Session,
    /// Operator API token.
    Token,
    /// Another Lattice service.
    Internal,
}

impl AuthMethod {
    /// Stable name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Token => "token",
            Self::Internal => "internal",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// User id, or `service:<name>` for internal callers.
    pub sub: String,
    /// Username (empty for services).
    #[serde(default)]
    pub username: String,
    /// Organisation the caller acts in (empty for services).
    #[serde(default)]
    pub org_id: String,
    /// Effective scopes (for a token: the token's; for a session: the user's).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How the caller authenticated.
    pub auth: AuthMethod,
    /// Session id or token id the caller used (empty for services).
    #[serde(default)]
    pub credential_id: String,
}

impl Principal {
    /// A principal for an internal service acting on its own behalf.
    pub fn service(name: &str) -> Self {
        Self {
            sub: format!("service:{name}"),
            username: String::new(),
            org_id: String::new(),
            scopes: Vec::new(),
            auth: AuthMethod::Internal,
            credential_id: String::new(),
        }
    }

    /// Whether this is an internal service principal.
    pub fn is_service(&self) -> bool {
        self.auth == AuthMethod::Internal
    }

    /// Whether this is a service acting within one org (the policy service rolling
    /// out an approved plan there): trusted, as every internal principal is, but
    /// confined to that org's data by the org filter every query applies.
    pub fn is_service_in_org(&self) -> bool {
        self.is_service() && !self.org_id.is_empty()
    }

    /// Whether the principal's scopes allow `required`.
    pub fn allows(&self, required: &str) -> bool {
        !self.is_service() && scope::allows(&self.scopes, required)
    }
}

/// Who is asking and from where: the one value a service function takes about its
/// caller (the trace context travels in the current span).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The verified caller.
    pub principal: Principal,
    /// The end client's IP as the gateway saw it ("" when unknown or internal).
    pub client_ip: String,
}

impl RequestContext {
    /// A context for `principal` with no client IP (internal work, tests).
    pub fn internal(principal: Principal) -> Self {
        Self {
            principal,
            client_ip: String::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(flatten)]
    principal: Principal,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Failure to verify an internal principal.
#[derive(Debug, thiserror::Error)]
#[error("invalid internal principal: {0}")]
pub struct InvalidPrincipal(String);

/// Mints and verifies internal principals with one shared secret.
///
/// Both directions remember recent work: a principal's token is reused for half
/// its lifetime (the caller was authenticated for this request; only `iat` would
/// differ), and a token string already verified verifies the same way until it
/// expires. A busy route then costs no signing, parsing or MAC per request.
#[derive(Clone)]
pub struct InternalAuth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Principal → (token, minted at, unix seconds).
    minted: moka::sync::Cache<Principal, (Arc<str>, u64)>,
    /// Token → (principal, expiry, unix seconds).
    verified: moka::sync::Cache<String, (Principal, u64)>,
}

/// Tokens remembered each way.
const REMEMBERED: u64 = 4096;

impl std::fmt::Debug for InternalAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAuth")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl InternalAuth {
    /// Build from the shared secret (`JWT_SECRET`, or derived from the master key).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let ttl = Duration::from_secs(60);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            minted: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(ttl / 2)
                .build(),
            verified: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// A JWT for `principal`, valid for one minute.
    pub fn mint(&self, principal: &Principal) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((token, at)) = self.minted.get(principal)
            && now < at + self.ttl.as_secs() / 2
        {
            return token.to_string();
        }
        let claims = Claims {
            principal: principal.clone(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a serialisable struct cannot fail");
        self.minted
            .insert(claims.principal, (Arc::from(token.as_str()), now));
        token
    }

    /// Verify a JWT minted by [`InternalAuth::mint`] with the same secret.
    pub fn verify(&self, token: &str) -> Result<Principal, InvalidPrincipal> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((principal, exp)) = self.verified.get(token)
            && now < exp
        {
            return Ok(principal);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| InvalidPrincipal(e.to_string()))?
            .claims;
        self.verified
            .insert(token.to_owned(), (claims.principal.clone(), claims.exp));
        Ok(claims.principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Principal {
        Principal {
            sub: "u1".into(),
            username: "admin".into(),
            org_id: "o1".into(),
            scopes: vec!["kv:admin".into()],
            auth: AuthMethod::Token,
            credential_id: "t1".into(),
        }
    }

    #[test]
    fn minted_principals_verify_with_the_same_secret_only() {
        let a = InternalAuth::new(b"secret-a");
        let token = a.mint(&user());
        assert_eq!(a.verify(&token).unwrap(), user());
        assert!(InternalAuth::new(b"secret-b").verify(&token).is_err());
        assert!(a.verify("not.a.jwt").is_err());
        // Remembered both ways: the same principal gets the same token back, which
        // verifies again; a token altered by one character does not.
        assert_eq!(a.mint(&user()), token);
        assert_eq!(a.verify(&token).unwrap(), user());
        let mut forged = token.clone().into_bytes();
        let i = forged.len() - 3;
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        assert!(a.verify(std::str::from_utf8(&forged).unwrap()).is_err());
        let mut other = user();
        other.scopes.push("nodes:proxy".into());
        let t2 = a.mint(&other);
        assert_ne!(t2, token);
        assert_eq!(a.verify(&t2).unwrap(), other);
    }

    #[test]
    fn services_have_no_user_scopes() {
        let s = Principal::service("gateway");
        assert!(s.is_service());
        assert!(!s.allows("kv:read"));
        assert!(user().allows("kv:read"));
    }
}
