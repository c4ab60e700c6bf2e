//! TLS for the public port: a generated CA and server certificate (`self-signed`),
//! the operator's PEM files reloaded on SIGHUP (`files`), or none (`off`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use lattice_core::config::{GatewayConfig, TlsMode};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

/// What the operator needs to know about the TLS in effect.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// PEM file of the CA clients should trust (self-signed mode).
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of that CA (what agents and `--ca-file` users pin).
    pub ca_fingerprint: Option<String>,
}

/// A certificate that can be swapped while the server runs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl ReloadableCert {
    fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
        let certs = read_certs(cert_file)?;
        let key = read_key(key_file)?;
        let provider = rustls::crypto::ring::default_provider();
        let ck = CertifiedKey::from_der(certs, key, &provider).with_context(|| {
            format!(
                "certificate {} does not match key {}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        Ok(Arc::new(ck))
    }

    /// Re-read the files; on failure keep serving the old certificate.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Self::load(&self.cert_file, &self.key_file)?;
        *self
            .current
            .write()
            .map_err(|_| anyhow::anyhow!("certificate lock poisoned"))? = fresh;
        Ok(())
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("gateway.tls_cert_file: read {}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("gateway.tls_cert_file: parse PEM {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "gateway.tls_cert_file: no certificate in {}",
        path.display()
    );
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("gateway.tls_key_file: read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("gateway.tls_key_file: parse PEM {}", path.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!("gateway.tls_key_file: no private key in {}", path.display())
        })
}

fn ensure_self_signed(dir: &Path, sans: &[String]) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_file = dir.join("ca.pem");
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    if ca_file.exists() && cert_file.exists() && key_file.exists() {
        return Ok((ca_file, cert_file, key_file));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let ((y0, m0, d0), (y1, m1, d1)) = validity();
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Lattice local CA");
    ca_params.distinguished_name = dn;
    ca_params.not_before = rcgen::date_time_ymd(y0, m0, d0);
    ca_params.not_after = rcgen::date_time_ymd(y1, m1, d1);
    let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(sans.iter().cloned());
    let server_key = KeyPair::generate().context("generate server key")?;
    let mut server_params = CertificateParams::new(names).context("server certificate names")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "lattice-server");
    server_params.distinguished_name = dn;
    server_params.not_before = rcgen::date_time_ymd(y0, m0, d0);
    server_params.not_after = rcgen::date_time_ymd(y1, m1, d1);
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("sign server certificate")?;

    let write = |path: &Path, text: &str| -> anyhow::Result<()> {
        let _ = std::fs::remove_file(path);
        lattice_core::crypto::write_private_file(path, text.as_bytes())
            .with_context(|| format!("write {}", path.display()))
    };
    write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    write(&key_file, &server_key.serialize_pem())?;
    write(
        &cert_file,
        &format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )?;
    write(&ca_file, &ca_cert.pem())?;
    Ok((ca_file, cert_file, key_file))
}

/// Validity window: from yesterday for ten years, as (year, month, day) pairs.
fn validity() -> ((i32, u8, u8), (i32, u8, u8)) {
    let days = lattice_core::time::now_ms() / 1000 / 86_400;
    let (y, m, d) = civil_from_days(days - 1);
    let y = i32::try_from(y).unwrap_or(2026);
    ((y, m, d), (y + 10, m, d.min(28)))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u8::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u8::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Build the rustls config for `cfg.tls` (None for `off`). In `files` mode a SIGHUP
/// listener task reloads the certificate until `shutdown`.
pub fn server_config(
    cfg: &GatewayConfig,
    data_dir: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Option<Arc<ServerConfig>>, TlsInfo)> {
    let (cert_file, key_file, info) = match cfg.tls {
        TlsMode::Off => {
            return Ok((
                None,
                TlsInfo {
                    ca_file: None,
                    ca_fingerprint: None,
                },
            ));
        }
        TlsMode::SelfSigned => {
            let (ca_file, cert_file, key_file) =
                ensure_self_signed(&data_dir.join("tls"), &cfg.tls_san)?;
            let ca = read_certs(&ca_file)?;
            let fp = lattice_core::crypto::fingerprint(ca[0].as_ref());
            (
                cert_file,
                key_file,
                TlsInfo {
                    ca_file: Some(ca_file),
                    ca_fingerprint: Some(fp),
                },
            )
        }
        TlsMode::Files => {
            let cert = cfg
                .tls_cert_file
                .clone()
                .context("gateway.tls_cert_file is required")?;
            let key = cfg
                .tls_key_file
                .clone()
                .context("gateway.tls_key_file is required")?;
            // Agents pin the last certificate of the chain (the issuing CA when the
            // file carries it, else the server certificate itself).
            let chain = read_certs(&cert)?;
            let fp = chain
                .last()
                .map(|c| lattice_core::crypto::fingerprint(c.as_ref()));
            (
                cert,
                key,
                TlsInfo {
                    ca_file: None,
                    ca_fingerprint: fp,
                },
            )
        }
    };
    let resolver = Arc::new(ReloadableCert {
        current: RwLock::new(ReloadableCert::load(&cert_file, &key_file)?),
        cert_file,
        key_file,
    });
    if cfg.tls == TlsMode::Files {
        spawn_sighup_reloader(resolver.clone(), shutdown.clone());
    }
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Some(Arc::new(config)), info))
}

#[cfg(unix)]
fn spawn_sighup_reloader(cert: Arc<ReloadableCert>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGHUP; certificate reload disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => match cert.reload() {
                    Ok(()) => tracing::info!(file = %cert.cert_file.display(), "reloaded TLS certificate"),
                    Err(err) => tracing::error!(error = %format!("{err:#}"), "TLS certificate reload failed; keeping the old one"),
                },
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_sighup_reloader(_cert: Arc<ReloadableCert>, _shutdown: CancellationToken) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    /// One PEM file with the key and the chain (as Key Vault stores a PEM
    /// certificate) serves as both `tls_cert_file` and `tls_key_file`.
    #[test]
    fn one_pem_file_holds_key_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cert, key) = ensure_self_signed(dir.path(), &[]).unwrap();
        let bundle = dir.path().join("bundle.pem");
        let text = format!(
            "{}{}",
            std::fs::read_to_string(key).unwrap(),
            std::fs::read_to_string(cert).unwrap()
        );
        std::fs::write(&bundle, text).unwrap();
        let loaded = ReloadableCert::load(&bundle, &bundle).unwrap();
        assert_eq!(loaded.cert.len(), 2, "the server certificate and its CA");
    }
}
