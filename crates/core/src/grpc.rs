//! gRPC plumbing shared by every internal service and client.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::auth::{CLIENT_IP_METADATA, InternalAuth, PRINCIPAL_METADATA, Principal};

/// A way to reach an internal gRPC service: a network channel, or the service
/// itself when it runs in this process (same contract and principal check, no
/// socket and no HTTP/2 framing in between).
pub type InternalService = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    InternalError,
>;

/// Why a call to an internal service failed before it got an answer (a concrete
/// type: a boxed error here trips the compiler's higher-ranked lifetime checks in
/// async handlers).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InternalError(#[from] tonic::transport::Error);

/// An internal service reached over the network.
pub fn over_network(channel: Channel) -> InternalService {
    InternalService::new(tower::ServiceExt::map_err(channel, InternalError))
}

/// An internal service running in this process (e.g. `tonic::service::Routes`).
pub fn in_process<S>(service: S) -> InternalService
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    InternalService::new(tower::ServiceExt::map_err(service, |never| match never {}))
}

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

/// gRPC metadata carrying a storage token the gateway relays for its holder (static
/// site routes): the storage service verifies it and acts as the token, whatever
/// principal carried it.
pub const STORAGE_TOKEN_METADATA: &str = "x-lattice-storage-token";

/// The storage token relayed with a request ([`STORAGE_TOKEN_METADATA`]), if any.
pub fn storage_token_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(STORAGE_TOKEN_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The end client's IP as forwarded by the gateway, if any.
pub fn client_ip_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(CLIENT_IP_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The caller of a request that passed [`RequirePrincipal`]: its principal and the
/// client IP the gateway forwarded.
pub fn context_of<T>(req: &Request<T>) -> Result<crate::auth::RequestContext, Status> {
    Ok(crate::auth::RequestContext {
        principal: principal_of(req)?.clone(),
        client_ip: client_ip_of(req).unwrap_or_default(),
    })
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
