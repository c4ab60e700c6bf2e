//! The gateway's outermost service. A request for a bound host is served from
//! storage with only what every answer needs (a request id, a span, a panic guard);
//! every other request goes through the API router and its layers. Deciding first
//! keeps the API's middleware (route matching, security headers, body limits,
//! timeouts) off the static-file path, which is the busiest one.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse as _, Response};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue};
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::AppState;
use crate::error::ApiError;
use crate::storage::host::{Routed, route};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bound hosts first, then the API.
#[derive(Clone)]
pub struct Edge {
    state: Arc<AppState>,
    api: Router,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").finish_non_exhaustive()
    }
}

impl Edge {
    /// The edge over the API router.
    pub fn new(state: Arc<AppState>, api: Router) -> Self {
        Self { state, api }
    }

    async fn handle(self, mut req: Request) -> Response {
        // The request id the API layers would give (one a trusted proxy sent is kept).
        let id = req
            .headers()
            .get(&REQUEST_ID)
            .cloned()
            .unwrap_or_else(new_request_id);
        req.headers_mut().insert(REQUEST_ID, id.clone());
        let span = tracing::info_span!(
            "http",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = id.to_str().unwrap_or(""),
        );
        lattice_core::telemetry::set_parent_from_headers(&span, req.headers());
        let state = self.state.clone();
        let routed = AssertUnwindSafe(async move { route(&state, req).await })
            .catch_unwind()
            .instrument(span)
            .await;
        match routed {
            Ok(Routed::Api(req)) => self
                .api
                .oneshot(req)
                .await
                .unwrap_or_else(|never| match never {}),
            Ok(Routed::Host(mut resp)) => {
                resp.headers_mut().insert(REQUEST_ID, id);
                resp
            }
            Err(_) => {
                tracing::error!("a host request panicked");
                let mut resp = ApiError::new(lattice_core::ErrorCode::Internal, "internal error")
                    .into_response();
                resp.headers_mut().insert(REQUEST_ID, id);
                resp
            }
        }
    }
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
