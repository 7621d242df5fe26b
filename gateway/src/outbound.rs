//! TLS for the calls Tern makes itself: webhooks (events, before-send) and
//! the JWKS of `auth.jwks_url`. `https://` URLs are verified against the
//! system's roots (rustls-platform-verifier, which reads the OS store), or,
//! when a `ca_file` is set, against the roots in that PEM file only (a
//! private CA). The crypto is rustls' ring provider, as on the listeners.

use std::{path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore, crypto::CryptoProvider, pki_types::CertificateDer};

/// Whom an outbound `https://` call trusts.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The operating system's root store.
    System,
    /// Only these certificates (from a `ca_file`).
    Specific(Arc<Vec<CertificateDer<'static>>>),
}

/// Why a `ca_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("{0}: {1}")]
    Read(String, String),
    #[error("{0}: no certificate in it")]
    Empty(String),
    #[error("TLS client setup: {0}")]
    Setup(String),
}

impl Roots {
    /// The roots a setting names: the system's without a file.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, RootsError> {
        use rustls::pki_types::pem::PemObject as _;
        let Some(path) = ca_file else {
            return Ok(Self::System);
        };
        let name = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| RootsError::Read(name.clone(), e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RootsError::Read(name.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(RootsError::Empty(name));
        }
        Ok(Self::Specific(Arc::new(certs)))
    }

    /// A rustls client configuration trusting these roots (for hyper).
    pub fn client_config(&self) -> Result<ClientConfig, RootsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| RootsError::Setup(e.to_string()))?;
        let config = match self {
            Self::System => {
                let verifier = rustls_platform_verifier::Verifier::new(provider)
                    .map_err(|e| RootsError::Setup(e.to_string()))?;
                builder
                    .dangerous() // not dangerous: the platform verifier verifies
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            Self::Specific(certs) => {
                let mut store = RootCertStore::empty();
                store.add_parsable_certificates(certs.iter().cloned());
                builder.with_root_certificates(store).with_no_client_auth()
            }
        };
        Ok(config)
    }

    /// The same trust for ureq (the JWKS fetch).
    pub fn ureq_tls(&self) -> ureq::tls::TlsConfig {
        use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
        let roots = match self {
            Self::System => RootCerts::PlatformVerifier,
            Self::Specific(certs) => RootCerts::Specific(Arc::new(
                certs
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                    .collect(),
            )),
        };
        TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider())
            .root_certs(roots)
            .build()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // A ca_file without certificates, or missing, is a typed error naming
    // the file; the system roots always build a client configuration.
    fn bad_ca_files_are_refused_and_system_roots_build() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            Roots::load(Some(&empty)),
            Err(RootsError::Empty(_))
        ));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            Roots::load(Some(&missing)),
            Err(RootsError::Read(..))
        ));
        Roots::load(None).unwrap().client_config().unwrap();
    }
}
