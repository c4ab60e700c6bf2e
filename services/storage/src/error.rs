//! What can go wrong in the storage service, and which code each failure is.

use lattice_core::ErrorCode;
use lattice_core::error::CodedError;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A value or upload is over a stated limit.
    #[error("{0}")]
    TooLarge(String),
    /// An org's limit would be passed; names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// A storage token is unknown, revoked or expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller lacks a scope.
    #[error("missing scope {0}")]
    MissingScope(String),
    /// Not allowed for another reason.
    #[error("{0}")]
    Forbidden(String),
    /// A named thing does not exist in the caller's org.
    #[error("{0} not found")]
    NotFound(String),
    /// A named thing already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request conflicts with current state.
    #[error("{0}")]
    Conflict(String),
    /// A conditional write's condition does not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The database failed.
    #[error("storage database")]
    Db(#[from] sqlx::Error),
    /// The object store failed.
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    /// A service this one needs (the policy service) cannot answer.
    #[error("{0}")]
    Unavailable(String),
    /// Stored data cannot be used (a sealed value that does not open).
    #[error("{0}")]
    Internal(String),
}

impl StorageError {
    /// Shorthand for a field error.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl CodedError for StorageError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid { .. } => ErrorCode::BadRequest,
            Self::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::MissingScope(_) | Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) | Self::Conflict(_) => ErrorCode::Conflict,
            Self::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            Self::Db(e) if lattice_core::db::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Db(_) | Self::Objects(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }
}
