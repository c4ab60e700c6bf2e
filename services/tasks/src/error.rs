//! What can go wrong in the tasks service, and which code each failure is.

use lattice_core::ErrorCode;
use lattice_core::error::CodedError;

/// Task queue and audit failures.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The caller lacks a scope.
    #[error("missing scope {0}")]
    MissingScope(String),
    /// Only an internal service may call this.
    #[error("{0}")]
    Forbidden(String),
    /// Not found in the caller's org.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the task's state.
    #[error("{0}")]
    Conflict(String),
    /// A result or heartbeat from a run that is no longer current.
    #[error("{0}")]
    Fenced(String),
    /// A service this one needs is unreachable or not configured.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("tasks database")]
    Db(#[from] sqlx::Error),
}

impl CodedError for TaskError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::MissingScope(_) | Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Fenced(_) => ErrorCode::PreconditionFailed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Db(e) if lattice_core::db::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Db(_) => ErrorCode::Internal,
        }
    }
}
