//! TLS for both ports with rustls: the certificate chain and key (and the client CA for mutual
//! TLS) are read from files at start and again on SIGHUP, so certificates rotate without a
//! restart; a handshake in progress keeps the configuration it started with.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

/// Where the TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates (mutual TLS); None: no client
    /// certificates are asked for.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate from `client_ca` (else a token will do).
    pub require_client_cert: bool,
}

/// A server TLS configuration that SIGHUP can replace.
pub struct ReloadableTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    /// Reads the files; `alpn` lists the application protocols offered (`h2`, `http/1.1`).
    pub fn load(files: TlsFiles, alpn: &[&str]) -> anyhow::Result<ReloadableTls> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let config = server_config(&files, &alpn)?;
        Ok(ReloadableTls {
            files,
            alpn,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on error the configuration in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = server_config(&self.files, &self.alpn)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(config);
        }
        Ok(())
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        TlsAcceptor::from(config)
    }
}

/// The rustls crypto provider kensa uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file.
pub fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} holds a malformed certificate", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// A root store of the CA certificates in a PEM file.
pub fn read_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots
            .add(certificate)
            .with_context(|| format!("{} holds an unusable CA certificate", path.display()))?;
    }
    Ok(roots)
}

/// A client configuration (to PostgreSQL, to the MQTT broker) that verifies the server against
/// the CA certificates in `ca`, or against the system's roots when it names none.
pub fn client_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let roots = match ca {
        Some(ca) => read_roots(ca)?,
        None => {
            let mut roots = RootCertStore::empty();
            for certificate in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(certificate);
            }
            roots
        }
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn server_config(files: &TlsFiles, alpn: &[Vec<u8>]) -> anyhow::Result<ServerConfig> {
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a PEM private key from {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider());
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().context("client CA")?)
        }
        None if files.require_client_cert => {
            bail!("requiring client certificates needs a client CA (--tls-client-ca)")
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "{} does not match {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// The subject of a client certificate, as the client file names it (`CN=aoi-08, O=Plant`).
pub fn subject(certificate: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(certificate.as_ref())
        .ok()
        .map(|(_, parsed)| parsed.subject().to_string())
}
