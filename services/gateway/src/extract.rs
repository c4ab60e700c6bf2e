//! axum's `Path` and `Query` extractors and a raw body, with rejections that are
//! [`ApiError`]s, so that a bad path parameter, query string or upload gets the one
//! JSON error shape like every other error (axum's own rejections are plain text):
//!
//! - [`Path`]: 400 for a parameter that is not UTF-8 once percent-decoded or does not
//!   parse as its type (a mismatch between route and handler is a 500).
//! - [`Query`]: 400 for a query string that does not deserialize (an unknown
//!   parameter, a wrong type).
//! - [`RawBody`]: 413 past the route's body limit, 400 when the body cannot be read.
//!
//! `Path` and `Query` keep axum's names on purpose: utoipa's `axum_extras` reads the
//! handler's `Path<...>` / `Query<...>` arguments to document the parameters.

use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use lattice_core::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// `axum::extract::Path<T>` answering [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(rejection) => Err(refused(rejection.status(), "path", &rejection.body_text())),
        }
    }
}

/// `axum::extract::Query<T>` answering [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(refused(
                rejection.status(),
                "query string",
                &rejection.body_text(),
            )),
        }
    }
}

/// The request body, as bytes.
// Within the route's `DefaultBodyLimit`; in the OpenAPI document a binary string.
#[derive(Debug, Clone, Default, utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct RawBody(pub bytes::Bytes);

impl<S> FromRequest<S> for RawBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match bytes::Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(rejection) if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the limit",
                ))
            }
            Err(rejection) => Err(refused(
                rejection.status(),
                "request body",
                &rejection.body_text(),
            )),
        }
    }
}

/// The error for a rejection of axum's with `status`: the client's fault is a 400
/// naming `what`; anything else is a mismatch between a route and its handler.
pub(crate) fn refused(status: http::StatusCode, what: &str, text: &str) -> ApiError {
    if status.is_client_error() {
        ApiError::bad_request(format!("{what}: {text}"))
    } else {
        tracing::error!(status = %status, error = text, "extractor failed on {what}");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use tower::ServiceExt as _;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[serde(default)]
        limit: i64,
    }

    async fn call(app: Router, req: http::Request<Body>) -> (u16, serde_json::Value) {
        let resp = app.oneshot(req).await.unwrap().into_response();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    fn app() -> Router {
        Router::new()
            .route("/p/{id}", get(|Path(id): Path<String>| async move { id }))
            .route(
                "/n/{n}",
                get(|Path(n): Path<u16>| async move { n.to_string() }),
            )
            .route(
                "/q",
                get(|Query(q): Query<Q>| async move { q.limit.to_string() }),
            )
            .route(
                "/m",
                get(|Query(q): Query<HashMap<String, String>>| async move { q.len().to_string() }),
            )
            .route(
                "/b",
                post(|RawBody(b): RawBody| async move { b.len().to_string() }),
            )
            .layer(DefaultBodyLimit::max(16))
    }

    fn req(method: &str, uri: &str, body: &'static str) -> http::Request<Body> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn refusals_are_api_errors() {
        for (r, status, code) in [
            (req("GET", "/p/%FF", ""), 400, "bad_request"),
            (req("GET", "/n/70000", ""), 400, "bad_request"),
            (req("GET", "/q?limit=x", ""), 400, "bad_request"),
            (req("GET", "/q?nope=1", ""), 400, "bad_request"),
            (
                req("POST", "/b", "0123456789abcdefghij"),
                413,
                "payload_too_large",
            ),
        ] {
            let what = format!("{} {}", r.method(), r.uri());
            let (got, body) = call(app(), r).await;
            assert_eq!(got, status, "{what}: {body}");
            assert_eq!(body["error"]["code"], code, "{what}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{what}: {body}"
            );
        }
        for r in [
            req("GET", "/p/%C3%A9", ""),
            req("GET", "/n/8080", ""),
            req("GET", "/q?limit=5", ""),
            req("GET", "/m?a=1&b=2", ""),
            req("POST", "/b", "0123456789"),
        ] {
            let what = format!("{} {}", r.method(), r.uri());
            let resp = app().oneshot(r).await.unwrap();
            assert_eq!(resp.status(), 200, "{what}");
        }
    }
}
