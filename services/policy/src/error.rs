//! What can go wrong in the policy service, and which code each failure is.

use lattice_core::ErrorCode;
use lattice_core::error::CodedError;

/// Policy failures.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The policy text does not parse or validate (422).
    #[error("the policy text is invalid: {0}")]
    Rejected(String),
    /// The caller lacks a scope.
    #[error("missing scope {0}")]
    MissingScope(String),
    /// Only an internal service may do this.
    #[error("{0}")]
    Forbidden(String),
    /// Not found in the caller's org.
    #[error("{0} not found")]
    NotFound(String),
    /// The name is taken, or the state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// A plan no longer matches its nodes or intent.
    #[error("{0}")]
    Stale(String),
    /// A fresh TOTP completion is needed.
    #[error("{0}")]
    MfaRequired(String),
    /// A TOTP code was wrong or reused.
    #[error("{0}")]
    BadCode(String),
    /// A service this one needs is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("policy database")]
    Db(#[from] sqlx::Error),
}

impl CodedError for PolicyError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::Rejected(_) => ErrorCode::Unprocessable,
            Self::MissingScope(_) | Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Stale(_) => ErrorCode::PlanStale,
            Self::MfaRequired(_) => ErrorCode::MfaRequired,
            Self::BadCode(_) => ErrorCode::Unauthenticated,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Db(e) if lattice_core::db::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Db(_) => ErrorCode::Internal,
        }
    }
}
