//! What can go wrong in the tunnel service, and which code each failure is.

use lattice_core::ErrorCode;
use lattice_core::error::CodedError;

/// Tunnel failures.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A credential (join token, node token) is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller lacks a scope.
    #[error("missing scope {0}")]
    MissingScope(String),
    /// Refused for another reason (a port the agent does not allow, ...).
    #[error("{0}")]
    Forbidden(String),
    /// Not found in the caller's org.
    #[error("{0} not found")]
    NotFound(String),
    /// The node's agent is not connected to any replica.
    #[error("{0}")]
    NotConnected(String),
    /// A limit is reached for now (concurrent proxy streams to a node).
    #[error("{0}")]
    Busy(String),
    /// It exists already (a release is immutable).
    #[error("{0}")]
    Conflict(String),
    /// Larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// An org's limit would be passed; names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// A dependency could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("tunnel database")]
    Db(#[from] sqlx::Error),
}

impl CodedError for TunnelError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::BadRequest,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::MissingScope(_) | Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::NotConnected(_) => ErrorCode::Unavailable,
            Self::Busy(_) => ErrorCode::RateLimited,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::TooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::Db(e) if lattice_core::db::is_unavailable(e) => ErrorCode::Unavailable,
            Self::Db(_) => ErrorCode::Internal,
        }
    }
}
