//! A JSON body extractor whose rejections are [`ApiError`]s that name the problem:
//! 400 missing JSON content type or malformed JSON, 422 wrong type / unknown or
//! missing field, 413 too large.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use lattice_core::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `Json<T>` with API-shaped errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

/// An optional body: none without a `Content-Type` (as `Option<Json<T>>`).
impl<T, S> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        match <axum::Json<T> as axum::extract::OptionalFromRequest<S>>::from_request(req, state)
            .await
        {
            Ok(v) => Ok(v.map(|axum::Json(v)| Self(v))),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // "Failed to deserialize the JSON body into the target type: name: invalid type ..."
            let text =
                std::error::Error::source(&e).map_or_else(|| e.body_text(), ToString::to_string);
            ApiError::new(
                ErrorCode::Unprocessable,
                format!("invalid request body: {text}"),
            )
        }
        JsonRejection::JsonSyntaxError(e) => {
            let text =
                std::error::Error::source(&e).map_or_else(|| e.body_text(), ToString::to_string);
            ApiError::bad_request(format!("malformed JSON: {text}"))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("expected Content-Type: application/json")
        }
        JsonRejection::BytesRejection(e) => {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the limit",
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {}", e.body_text()))
            }
        }
        other => ApiError::bad_request(other.body_text()),
    }
}
