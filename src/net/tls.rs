//! TLS, both ways. As a client: trust for a self-hosted Fishjam behind a
//! private CA, the platform's root certificates plus the ones in
//! `notifier.ca_file`, for the notifier's WebSocket (rustls) and for the REST
//! calls (reqwest). As a server: the certificate of the webhook and admin
//! listeners (and the simulator), re-read when its files change so a renewed
//! certificate needs no restart; `listener.rs` runs the handshakes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// Why a certificate, key or CA file cannot be used: the file, and the
/// error under it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} cannot be used", path.display())]
    Unusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("a CA certificate cannot be used")]
    Ca(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS cannot be set up")]
    Setup(#[source] rustls::Error),
}

fn read(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Read {
        path: path.to_owned(),
        source,
    }
}

/// The extra CA certificates, read once at start-up.
#[derive(Debug, Clone)]
pub struct ExtraRoots {
    pem: Vec<u8>,
    certificates: Vec<CertificateDer<'static>>,
}

impl ExtraRoots {
    /// Reads a PEM file holding one or more certificates.
    pub fn load(path: &Path) -> Result<ExtraRoots, TlsError> {
        let pem =
            std::fs::read(path).map_err(|e| read(path)(rustls::pki_types::pem::Error::Io(e)))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read(path))?;
        if certificates.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        Ok(ExtraRoots { pem, certificates })
    }

    /// A rustls client configuration trusting the platform's roots and these.
    pub fn rustls(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_config_trusting(&self.certificates, None)
    }

    /// The same certificates for reqwest.
    pub fn reqwest(&self) -> Result<Vec<reqwest::Certificate>, TlsError> {
        reqwest::Certificate::from_pem_bundle(&self.pem).map_err(|e| TlsError::Ca(e.into()))
    }

    /// `builder` trusting these certificates beside the platform's roots.
    pub fn trusted_by(
        &self,
        mut builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, TlsError> {
        for certificate in self.reqwest()? {
            builder = builder.add_root_certificate(certificate);
        }
        Ok(builder)
    }
}

/// A rustls client configuration trusting the platform's roots and, when
/// given, the certificates of `ca_file`; with `identity` (certificate and
/// key files), it presents that certificate for mutual TLS.
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let extra = match ca_file {
        Some(path) => ExtraRoots::load(path)?.certificates,
        None => Vec::new(),
    };
    client_config_trusting(&extra, identity)
}

/// The platform's roots and `extra`, and the client certificate if any.
fn client_config_trusting(
    extra: &[CertificateDer<'static>],
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // A platform without a readable store still trusts the extra roots.
    for certificate in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(certificate);
    }
    for certificate in extra {
        roots
            .add(certificate.clone())
            .map_err(|e| TlsError::Ca(e.into()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(read(cert_file))?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(read(key_file))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::Unusable {
                    path: cert_file.to_owned(),
                    source,
                })?
        }
    };
    Ok(Arc::new(config))
}

/// `[webhook.tls]` and `[admin.tls]`: serve HTTPS with this certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// With it, mutual TLS: a client must present a certificate that one
    /// of these CA certificates (PEM) signed, or its handshake fails. Read
    /// at start-up.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    /// An acceptor for this certificate; the files are read now, so a
    /// missing or mismatched one is a start-up error.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        self.acceptor_of(None)
    }

    /// An acceptor that also exports when its certificate expires, as the
    /// certificate of `listener` (`webhook`, `admin`).
    pub fn acceptor_for(&self, listener: &'static str) -> Result<TlsAcceptor, TlsError> {
        self.acceptor_of(Some(listener))
    }

    fn acceptor_of(&self, listener: Option<&'static str>) -> Result<TlsAcceptor, TlsError> {
        let resolver =
            ReloadingCertificate::new(self.cert_file.clone(), self.key_file.clone(), listener)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepts the clients whose certificate a CA of `path` signed, and no
/// client without one.
fn client_verifier(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in ExtraRoots::load(path)?.certificates {
        roots.add(certificate).map_err(|e| TlsError::Ca(e.into()))?;
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::Ca(e.into()))
}

/// Why a handshake failed, as `tls_handshake_failures_total` counts it:
/// `client_certificate` when mutual TLS refused the client's certificate
/// (or its lack of one), `error` for anything else.
pub fn handshake_failure(error: &std::io::Error) -> &'static str {
    let refused_client = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)
            )
        });
    if refused_client {
        "client_certificate"
    } else {
        "error"
    }
}

/// How often the certificate files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The server certificate, read again when a file's modification time moves
/// (cert-manager, certbot and Kubernetes secret volumes all replace files).
/// A renewal that cannot be read keeps the previous certificate and is logged.
#[derive(Debug)]
struct ReloadingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The listener whose certificate's expiry is exported, if any.
    listener: Option<&'static str>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCertificate {
    fn new(
        cert_file: PathBuf,
        key_file: PathBuf,
        listener: Option<&'static str>,
    ) -> Result<ReloadingCertificate, TlsError> {
        let modified = modification_times(&cert_file, &key_file);
        let key = certified_key(&cert_file, &key_file)?;
        export_expiry(listener, &key);
        Ok(ReloadingCertificate {
            cert_file,
            key_file,
            listener,
            current: Mutex::new(Loaded {
                key,
                modified,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.checked.elapsed() >= RELOAD_CHECK {
            current.checked = Instant::now();
            let modified = modification_times(&self.cert_file, &self.key_file);
            if modified != current.modified {
                current.modified = modified;
                match certified_key(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        export_expiry(self.listener, &key);
                        current.key = key;
                        tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                    }
                    Err(problem) => tracing::error!(
                        problem = %crate::telemetry::Chain(&problem),
                        "the changed TLS certificate cannot be used; keeping the previous one"
                    ),
                }
            }
        }
        Some(current.key.clone())
    }
}

/// Exports when the served certificate (the chain's first) expires, for
/// the alert that fires weeks before.
fn export_expiry(listener: Option<&'static str>, key: &CertifiedKey) {
    let (Some(listener), Some(leaf)) = (listener, key.cert.first()) else {
        return;
    };
    if let Ok((_, certificate)) = x509_parser::parse_x509_certificate(leaf) {
        let not_after = certificate.validity().not_after.timestamp();
        crate::telemetry::certificate_expires(listener, not_after);
    }
}

fn modification_times(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(read(key))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, private, &provider).map_err(|source| TlsError::Unusable {
            path: key.to_owned(),
            source,
        })?;
    Ok(Arc::new(certified))
}
