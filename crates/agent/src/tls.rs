//! Connecting to the control plane: TLS pinned to the CA fingerprint from the join
//! token (like `kubeadm join --discovery-token-ca-cert-hash`), or, when the token
//! carries none (a gateway behind a load balancer that terminates TLS with a public
//! certificate), verified against the system's trusted roots; HTTP/2 for gRPC.

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

/// The TLS client configuration: the chain must contain the pinned certificate, or
/// without a pin, verify against the system's trusted roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` override where they are read from). The host name is checked
/// either way.
fn client_config(ca_sha256: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    client_config_with(ca_sha256, rustls_native_certs::load_native_certs)
}

fn client_config_with(
    ca_sha256: Option<&str>,
    system_roots: impl FnOnce() -> rustls_native_certs::CertificateResult,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut tls = match ca_sha256 {
        Some(pin) => {
            let pin: [u8; 32] = hex::decode(pin.replace(':', ""))
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("ca_sha256: not a SHA-256 in hex"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }))
                .with_no_client_auth()
        }
        None => {
            let found = system_roots();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            anyhow::ensure!(
                added > 0,
                "server: the join token pins no certificate and this system has no trusted \
                 roots to verify the server with (install ca-certificates, or set SSL_CERT_FILE){}",
                found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tls)
}

/// A channel to `server`: `https://` pinned to `ca_sha256` (or, without one,
/// verified against the system's trusted roots), or `http://` h2c.
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_sha256)?));
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA and a server certificate for `localhost` that it signs.
    fn ca_and_server() -> (CertificateDer<'static>, CertificateDer<'static>, KeyPair) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &Issuer::new(ca_params, &ca_key))
            .unwrap();
        (ca.der().clone(), cert.der().clone(), key)
    }

    /// Serve one TLS handshake on loopback with `cert`; the client's result.
    async fn handshake(
        tls: rustls::ClientConfig,
        name: &str,
        chain: Vec<CertificateDer<'static>>,
        key: &KeyPair,
    ) -> Result<(), String> {
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn roots(
        certs: Vec<CertificateDer<'static>>,
    ) -> impl FnOnce() -> rustls_native_certs::CertificateResult {
        move || {
            let mut found = rustls_native_certs::CertificateResult::default();
            found.certs = certs;
            found
        }
    }

    /// Without a pin (a gateway behind a load balancer with a public certificate),
    /// the server must chain to a trusted root and match the host name.
    #[tokio::test]
    async fn without_a_pin_the_system_roots_and_the_name_decide() {
        let (ca, cert, key) = ca_and_server();
        let (other_ca, _, _) = ca_and_server();
        let trusted = client_config_with(None, roots(vec![ca.clone()])).unwrap();
        handshake(trusted.clone(), "localhost", vec![cert.clone()], &key)
            .await
            .expect("a server that chains to a trusted root");
        let err = handshake(trusted, "lattice.example.com", vec![cert.clone()], &key)
            .await
            .unwrap_err();
        assert!(
            err.contains("NotValidForName") || err.contains("not valid for"),
            "{err}"
        );
        let untrusted = client_config_with(None, roots(vec![other_ca])).unwrap();
        let err = handshake(untrusted, "localhost", vec![cert], &key)
            .await
            .unwrap_err();
        // (Both test CAs have the same name: webpki finds the wrong one and refuses
        // its signature; with distinct names it reports an unknown issuer.)
        assert!(err.contains("invalid peer certificate"), "{err}");
        let none = client_config_with(None, roots(vec![]))
            .unwrap_err()
            .to_string();
        assert!(none.contains("no trusted roots"), "{none}");
    }

    /// With a pin, the system's roots play no part: only the pinned CA is accepted.
    #[tokio::test]
    async fn a_pin_accepts_only_its_ca() {
        let (ca, cert, key) = ca_and_server();
        let (other_ca, _, _) = ca_and_server();
        let pin = hex::encode(Sha256::digest(ca.as_ref()));
        let other_pin = hex::encode(Sha256::digest(other_ca.as_ref()));
        let chain = vec![cert, ca];
        let tls = client_config_with(Some(&pin), roots(vec![])).unwrap();
        handshake(tls, "localhost", chain.clone(), &key)
            .await
            .expect("the pinned CA in the chain");
        let tls = client_config_with(Some(&other_pin), roots(vec![chain[1].clone()])).unwrap();
        let err = handshake(tls, "localhost", chain, &key).await.unwrap_err();
        assert!(err.contains("pinned CA"), "{err}");
    }
}
