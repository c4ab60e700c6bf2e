//! What can go wrong in the identity service, and which code each failure is.

use lattice_core::ErrorCode;
use lattice_core::db::is_unavailable;
use lattice_core::error::CodedError;

/// Identity failures.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Unknown user or wrong password: one message for both.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The MFA token is bad or expired.
    #[error("invalid or expired mfa_token")]
    InvalidMfaToken,
    /// The TOTP or recovery code is wrong or was already used.
    #[error("invalid or already used code")]
    InvalidCode,
    /// A session or token is unknown, expired or revoked.
    #[error("invalid or expired credential")]
    InvalidCredential,
    /// Too many failures for this user.
    #[error("too many failed logins; account locked for {retry_after_s} s")]
    Locked {
        /// Seconds until the lock ends.
        retry_after_s: u64,
    },
    /// Too many failures from this address.
    #[error("too many failed logins from this address; retry in {retry_after_s} s")]
    Throttled {
        /// Seconds until the window ends.
        retry_after_s: u64,
    },
    /// The caller lacks a scope.
    #[error("missing scope {0}")]
    MissingScope(String),
    /// The caller may not do this for another reason.
    #[error("{0}")]
    Forbidden(String),
    /// Only end users (not services) may call this, or vice versa.
    #[error("{0}")]
    WrongCaller(&'static str),
    /// A named thing does not exist in the caller's org.
    #[error("{0} not found")]
    NotFound(String),
    /// A named thing already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Well-formed but not acceptable (a provider whose discovery fails).
    #[error("{0}")]
    Unprocessable(String),
    /// An org's limit would be passed; names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The account is disabled (said only after its password or provider login).
    #[error("this account is disabled; an administrator of its org can enable it")]
    Disabled,
    /// The database failed.
    #[error("identity database")]
    Db(#[from] sqlx::Error),
    /// Sealing or opening a secret failed.
    #[error("identity secrets")]
    Crypto(#[from] lattice_core::crypto::CryptoError),
    /// Password hashing failed.
    #[error("identity password hashing")]
    Hash(#[from] crate::password::HashError),
}

impl IdentityError {
    /// Shorthand for a field error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl CodedError for IdentityError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidCredentials
            | Self::InvalidMfaToken
            | Self::InvalidCode
            | Self::InvalidCredential => ErrorCode::Unauthenticated,
            Self::Locked { .. } | Self::Throttled { .. } => ErrorCode::RateLimited,
            Self::MissingScope(_) | Self::Forbidden(_) | Self::WrongCaller(_) | Self::Disabled => {
                ErrorCode::PermissionDenied
            }
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) | Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unprocessable(_) => ErrorCode::Unprocessable,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Invalid { .. } => ErrorCode::BadRequest,
            Self::Db(e) if is_unavailable(e) => ErrorCode::Unavailable,
            Self::Db(_) | Self::Crypto(_) | Self::Hash(_) => ErrorCode::Internal,
        }
    }

    fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::Locked { retry_after_s } | Self::Throttled { retry_after_s } => {
                Some(*retry_after_s)
            }
            _ => None,
        }
    }
}
