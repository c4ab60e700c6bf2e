//! gRPC plumbing shared by every internal service and client.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::auth::{CLIENT_IP_METADATA, InternalAuth, PRINCIPAL_METADATA, Principal};

/// Server-side interceptor: every internal call must carry a valid principal JWT.
/// The verified [`Principal`] is put in the request extensions for the handler.
#[derive(Clone, Debug)]
pub struct RequirePrincipal {
    auth: InternalAuth,
}

impl RequirePrincipal {
    /// Verify with `auth`.
    pub fn new(auth: InternalAuth) -> Self {
        Self { auth }
    }
}

impl tonic::service::Interceptor for RequirePrincipal {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get(PRINCIPAL_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing internal principal"))?;
        let principal = self
            .auth
            .verify(token)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The principal verified by [`RequirePrincipal`].
pub fn principal_of<T>(req: &Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("missing internal principal"))
}

/// The end client's IP as forwarded by the gateway, if any.
pub fn client_ip_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(CLIENT_IP_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Build an outgoing request carrying `principal`, the client IP and the current
/// trace context.
pub fn request<T>(
    auth: &InternalAuth,
    principal: &Principal,
    client_ip: Option<&str>,
    message: T,
) -> Request<T> {
    let mut req = Request::new(message);
    let md = req.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(auth.mint(principal)) {
        md.insert(PRINCIPAL_METADATA, v);
    }
    if let Some(ip) = client_ip.and_then(|ip| MetadataValue::try_from(ip).ok()) {
        md.insert(CLIENT_IP_METADATA, ip);
    }
    crate::telemetry::inject_trace_context(md);
    req
}

/// Copy the metadata that must follow a call across one more hop.
pub fn forward_metadata(from: &MetadataMap, to: &mut MetadataMap) {
    for key in [PRINCIPAL_METADATA, CLIENT_IP_METADATA] {
        if let Some(v) = from.get(key) {
            to.insert(key, v.clone());
        }
    }
}
