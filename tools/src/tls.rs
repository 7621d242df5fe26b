//! TLS client settings shared by `tern-cli` and `tern-load` (`--tls`,
//! `--ca FILE`, `--insecure`): a rustls client configuration (ring
//! provider, TLS 1.2 and 1.3) that trusts the given CA file, the system's
//! CA bundle, or (for tests and benchmarks against a self-signed gateway)
//! any certificate.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use serde::{Deserialize, Serialize};

/// Where a client finds the CAs it trusts when neither `--ca` nor
/// `--insecure` is given (Debian's bundle).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a client connects over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOptions {
    /// PEM CA certificates to trust (default: [`SYSTEM_CA_FILE`]).
    pub ca_file: Option<PathBuf>,
    /// Trust any certificate (tests and benchmarks only: no protection
    /// against an active attacker).
    pub insecure: bool,
    /// The name the certificate must carry (default: the host of the
    /// address connected to).
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// The rustls client configuration of these options.
    pub fn client_config(&self) -> anyhow::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let file = self
                .ca_file
                .as_deref()
                .unwrap_or_else(|| Path::new(SYSTEM_CA_FILE));
            builder
                .with_root_certificates(roots(file)?)
                .with_no_client_auth()
        };
        Ok(Arc::new(config))
    }

    /// The server name to verify for `server` (`host:port`).
    pub fn server_name(&self, server: &str) -> anyhow::Result<ServerName<'static>> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => server
                .rsplit_once(':')
                .map_or(server, |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']'),
        };
        ServerName::try_from(host.to_owned())
            .map_err(|e| anyhow::anyhow!("TLS server name {host:?}: {e}"))
    }
}

/// The certificates of a PEM file, as trust anchors.
fn roots(file: &Path) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| anyhow::anyhow!("CA file {}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| anyhow::anyhow!("CA file {}: {e}", file.display()))?;
        store
            .add(cert)
            .map_err(|e| anyhow::anyhow!("CA file {}: {e}", file.display()))?;
    }
    if store.is_empty() {
        anyhow::bail!("CA file {}: no PEM certificate", file.display());
    }
    Ok(store)
}

/// `--insecure`: accepts any server certificate (signatures of the
/// handshake are still checked, so the peer holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
