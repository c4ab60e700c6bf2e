//! Connecting to the control plane: TLS pinned to the CA fingerprint from the join
//! token (like `kubeadm join --discovery-token-ca-cert-hash`), HTTP/2 for gRPC.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

/// Accepts the server only if a certificate of its chain has the pinned SHA-256
/// and the server certificate verifies against that certificate.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let matches = |c: &CertificateDer<'_>| Sha256::digest(c.as_ref())[..] == self.pin[..];
        if matches(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(anchor) = intermediates.iter().find(|c| matches(c)) else {
            return Err(rustls::Error::General(
                "the server's certificate chain does not contain the pinned CA (wrong server, or the CA changed)".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A channel to `server` (`https://` pinned to `ca_sha256`, or `http://` h2c).
pub fn channel(server: &str, ca_sha256: Option<&str>) -> anyhow::Result<Channel> {
    let uri: Uri = server
        .parse()
        .map_err(|e| anyhow::anyhow!("server: {server:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("server: {server:?} has no host"))?
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // tonic dials plain HTTP/2; TLS (when used) happens in the connector below.
    let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_stream_window_size(Some(1024 * 1024))
        .initial_connection_window_size(Some(4 * 1024 * 1024));
    if !https {
        return Ok(endpoint.connect_lazy());
    }
    let pin = ca_sha256.ok_or_else(|| {
        anyhow::anyhow!("server: an https server needs the CA fingerprint from the join token")
    })?;
    let pin: [u8; 32] = hex::decode(pin.replace(':', ""))
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("ca_sha256: not a SHA-256 in hex"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let name = ServerName::try_from(host.clone())?.to_owned();
    let addr = format!("{host}:{port}");
    let connect = tower::service_fn(move |_: Uri| {
        let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}
