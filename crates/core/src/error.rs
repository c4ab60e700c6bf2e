//! The one closed set of error codes every Lattice service speaks.
//!
//! A service's own error enum says which [`ErrorCode`] each failure is. The gRPC
//! adapter turns it into a [`tonic::Status`] carrying the code in metadata, and the
//! gateway turns that back into the HTTP status and the JSON error body. The gRPC
//! code alone is too coarse (412 and 409 both look like "failed precondition"),
//! so the precise code travels in `x-lattice-error-code`.

use std::fmt;
use std::str::FromStr;

/// Metadata key carrying the precise [`ErrorCode`] on a failed gRPC call.
pub const ERROR_CODE_METADATA: &str = "x-lattice-error-code";
/// Metadata key carrying a retry hint in seconds (for `rate_limited`).
pub const RETRY_AFTER_METADATA: &str = "x-lattice-retry-after";

/// What went wrong, at the granularity a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or a field is invalid (400).
    BadRequest,
    /// No valid credential was presented (401).
    Unauthenticated,
    /// The caller is known but not allowed to do this (403).
    PermissionDenied,
    /// The thing named does not exist, or is not visible to the caller (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// The thing already exists or the request conflicts with current state (409).
    Conflict,
    /// A reviewed plan no longer matches its nodes or intent (409): render again.
    PlanStale,
    /// The action needs a TOTP code completed within the last 5 minutes (403).
    MfaRequired,
    /// A condition the client stated (If-Match and friends) does not hold (412).
    PreconditionFailed,
    /// The request body or a value is larger than allowed (413).
    PayloadTooLarge,
    /// The request is well-formed but semantically unacceptable (422).
    Unprocessable,
    /// Too many requests; retry later (429).
    RateLimited,
    /// An org's limit (buckets, stored bytes, nodes, tokens) would be passed (403);
    /// the message names the limit.
    LimitExceeded,
    /// The upstream behind a proxy failed or answered badly (502).
    BadGateway,
    /// A dependency is down; retry later (503).
    Unavailable,
    /// A bug or an unexpected failure (500).
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 16] = [
        Self::BadRequest,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PlanStale,
        Self::MfaRequired,
        Self::PreconditionFailed,
        Self::PayloadTooLarge,
        Self::Unprocessable,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::BadGateway,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The stable snake_case name used in JSON error bodies and gRPC metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PlanStale => "plan_stale",
            Self::MfaRequired => "mfa_required",
            Self::PreconditionFailed => "precondition_failed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unprocessable => "unprocessable",
            Self::RateLimited => "rate_limited",
            Self::LimitExceeded => "limit_exceeded",
            Self::BadGateway => "bad_gateway",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the gateway answers with.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::BadRequest => S::BAD_REQUEST,
            Self::Unauthenticated => S::UNAUTHORIZED,
            Self::PermissionDenied => S::FORBIDDEN,
            Self::NotFound => S::NOT_FOUND,
            Self::MethodNotAllowed => S::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::PlanStale => S::CONFLICT,
            Self::MfaRequired | Self::LimitExceeded => S::FORBIDDEN,
            Self::PreconditionFailed => S::PRECONDITION_FAILED,
            Self::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            Self::Unprocessable => S::UNPROCESSABLE_ENTITY,
            Self::RateLimited => S::TOO_MANY_REQUESTS,
            Self::BadGateway => S::BAD_GATEWAY,
            Self::Unavailable => S::SERVICE_UNAVAILABLE,
            Self::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code used on internal hops.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            Self::BadRequest | Self::Unprocessable => C::InvalidArgument,
            Self::Unauthenticated => C::Unauthenticated,
            Self::PermissionDenied => C::PermissionDenied,
            Self::NotFound => C::NotFound,
            Self::MethodNotAllowed => C::Unimplemented,
            Self::Conflict => C::AlreadyExists,
            Self::PlanStale => C::FailedPrecondition,
            Self::MfaRequired => C::PermissionDenied,
            Self::PreconditionFailed => C::FailedPrecondition,
            Self::PayloadTooLarge => C::OutOfRange,
            Self::RateLimited | Self::LimitExceeded => C::ResourceExhausted,
            Self::Unavailable | Self::BadGateway => C::Unavailable,
            Self::Internal => C::Internal,
        }
    }

    /// Best guess from a bare gRPC code (when the precise code is missing).
    pub fn from_grpc_code(code: tonic::Code) -> Self {
        use tonic::Code as C;
        match code {
            C::InvalidArgument => Self::BadRequest,
            C::Unauthenticated => Self::Unauthenticated,
            C::PermissionDenied => Self::PermissionDenied,
            C::NotFound => Self::NotFound,
            C::AlreadyExists | C::Aborted => Self::Conflict,
            C::FailedPrecondition => Self::PreconditionFailed,
            C::OutOfRange => Self::PayloadTooLarge,
            C::ResourceExhausted => Self::RateLimited,
            C::Unavailable | C::DeadlineExceeded | C::Cancelled => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|c| c.as_str() == s).ok_or(())
    }
}

/// An error that knows which [`ErrorCode`] it is. Every service error enum implements it.
pub trait CodedError: std::error::Error {
    /// The client-facing class of this failure.
    fn code(&self) -> ErrorCode;
    /// Seconds after which a retry may succeed (rate limits, lockouts).
    fn retry_after_s(&self) -> Option<u64> {
        None
    }
}

/// Build the [`tonic::Status`] for a service error: the precise code in metadata,
/// the message as-is for client errors and a generic one for internal failures
/// (whose chain is logged here, once).
pub fn to_status<E: CodedError>(err: &E) -> tonic::Status {
    let code = err.code();
    let message = if code == ErrorCode::Internal || code == ErrorCode::Unavailable {
        tracing::error!(error = %DisplayChain(err), "request failed");
        if code == ErrorCode::Internal {
            "internal error".to_owned()
        } else {
            err.to_string()
        }
    } else {
        err.to_string()
    };
    let mut status = tonic::Status::new(code.grpc_code(), message);
    let md = status.metadata_mut();
    md.insert(
        ERROR_CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(code.as_str()),
    );
    if let Some(secs) = err.retry_after_s()
        && let Ok(v) = secs.to_string().parse()
    {
        md.insert(RETRY_AFTER_METADATA, v);
    }
    status
}

/// Read the precise code back from a status produced by [`to_status`].
pub fn code_of(status: &tonic::Status) -> ErrorCode {
    status
        .metadata()
        .get(ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ErrorCode::from_grpc_code(status.code()))
}

/// Formats an error with its whole `source()` chain, `a: b: c`.
pub struct DisplayChain<'a, E: ?Sized>(pub &'a E);

impl<E: std::error::Error + ?Sized> fmt::Display for DisplayChain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("bucket \"site\" not found")]
    struct NotThere;
    impl CodedError for NotThere {
        fn code(&self) -> ErrorCode {
            ErrorCode::NotFound
        }
    }

    #[test]
    fn status_carries_the_precise_code() {
        let status = to_status(&NotThere);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(code_of(&status), ErrorCode::NotFound);
        assert_eq!(status.message(), "bucket \"site\" not found");
    }
}
