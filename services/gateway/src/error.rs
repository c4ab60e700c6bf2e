//! The gateway's one error type: every failure becomes `{"error":{"code","message"}}`
//! with the status of its [`ErrorCode`].

use axum::Json;
use axum::response::{IntoResponse, Response};
use lattice_core::ErrorCode;
use lattice_core::error::{RETRY_AFTER_METADATA, code_of};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Class of failure (decides the status).
    pub code: ErrorCode,
    /// One line for the client, naming the problem.
    pub message: String,
    /// `Retry-After` seconds.
    pub retry_after_s: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code: bad_request, unauthenticated, permission_denied,
    /// not_found, method_not_allowed, conflict, plan_stale, mfa_required, precondition_failed,
    /// payload_too_large, limit_exceeded,
    /// unprocessable, rate_limited, unavailable, internal.
    code: String,
    /// Human-readable, names the field or thing at fault.
    message: String,
}

impl ApiError {
    /// Build from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 401 with the given message.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// 400 with the given message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = code_of(&status);
        let message = match status.code() {
            // Transport failures carry tonic's wording; say what the client needs to know.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                if status
                    .metadata()
                    .get(lattice_core::error::ERROR_CODE_METADATA)
                    .is_none() =>
            {
                tracing::warn!(error = %status.message(), "internal service unavailable");
                "a backing service is unavailable; retry shortly".to_owned()
            }
            _ => status.message().to_owned(),
        };
        let retry_after_s = status
            .metadata()
            .get(RETRY_AFTER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .or((code == ErrorCode::Unavailable).then_some(1));
        Self {
            code,
            message,
            retry_after_s,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.code.http_status(), Json(body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = http::HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if self.code == ErrorCode::Unauthenticated {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"lattice\""),
            );
        }
        resp
    }
}
