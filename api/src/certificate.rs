//! Certificate material as both sides need it: the compiler decides whether a Secret holds a
//! usable certificate (`InvalidCertificateRef` otherwise) with the same check the proxy applies
//! before it accepts a config.

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its private key, decoded from PEM.
#[derive(Debug)]
pub struct ParsedCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl ParsedCertificate {
    /// Loads the key with `provider` and pairs it with the chain.
    pub fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), provider)
            .map_err(|e| format!("certificate and key do not load: {e}"))
    }
}

/// The crypto provider both sides use (aws-lc-rs).
pub fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Decodes PEM and checks that the key loads and belongs to the leaf certificate.
pub fn parse_pem(cert_chain_pem: &str, private_key_pem: &str) -> Result<ParsedCertificate, String> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("certificate chain holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
        .map_err(|e| format!("private key is not valid PEM: {e}"))?;
    let parsed = ParsedCertificate { chain, key };
    parsed.load(&provider())?;
    Ok(parsed)
}

/// Most trust anchors one bundle may hold: far more than any CA bundle a backend needs, few
/// enough to bound the work of building a verifier from a pushed config.
pub const MAX_CA_CERTIFICATES: usize = 256;

/// Decodes a PEM bundle of CA certificates and checks each one can serve as a trust anchor.
/// The compiler uses it to report a ConfigMap that holds no usable CA (`InvalidCACertificateRef`),
/// the proxy to build its verifier: both apply the same rule.
pub fn parse_ca_bundle(pem: &str) -> Result<rustls::RootCertStore, String> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA bundle is not valid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("CA bundle holds no certificate".into());
    }
    if certificates.len() > MAX_CA_CERTIFICATES {
        return Err(format!(
            "CA bundle holds {} certificates, more than {MAX_CA_CERTIFICATES}",
            certificates.len()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| format!("CA certificate {} is not usable: {e}", i + 1))?;
    }
    Ok(roots)
}
