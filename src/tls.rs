//! Trust for a self-hosted Fishjam behind a private CA: the platform's root
//! certificates plus the ones in `notifier.ca_file`, for the notifier's
//! WebSocket (rustls) and for the REST calls (reqwest).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// The extra CA certificates, read once at start-up.
#[derive(Debug, Clone)]
pub struct ExtraRoots {
    pem: Vec<u8>,
    certificates: Vec<CertificateDer<'static>>,
}

impl ExtraRoots {
    /// Reads a PEM file holding one or more certificates.
    pub fn load(path: &Path) -> Result<ExtraRoots, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        Ok(ExtraRoots { pem, certificates })
    }

    /// A rustls client configuration trusting the platform's roots and these.
    pub fn rustls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut roots = rustls::RootCertStore::empty();
        // A platform without a readable store still trusts the extra roots.
        for certificate in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(certificate);
        }
        for certificate in &self.certificates {
            roots
                .add(certificate.clone())
                .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The same certificates for reqwest.
    pub fn reqwest(&self) -> Result<Vec<reqwest::Certificate>, String> {
        reqwest::Certificate::from_pem_bundle(&self.pem).map_err(|e| e.to_string())
    }
}
