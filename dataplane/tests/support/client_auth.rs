//! TLS client configs that authenticate with a certificate, or record whether the server
//! asked for one: for the tests of client certificate validation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme, SupportedProtocolVersion};

use super::certs::Leaf;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What the server asked of a [`RecordingResolver`]'s client.
#[derive(Debug, Default)]
pub struct Asked {
    /// Whether a CertificateRequest arrived.
    asked: AtomicBool,
    /// How many CA names its certificate_authorities hint listed.
    hinted_authorities: AtomicUsize,
}

impl Asked {
    pub fn was_asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    pub fn hinted_authorities(&self) -> usize {
        self.hinted_authorities.load(Ordering::SeqCst)
    }
}

/// Offers `key` (or nothing) when the server asks for a certificate, and records that it did.
#[derive(Debug)]
struct RecordingResolver {
    key: Option<Arc<CertifiedKey>>,
    asked: Arc<Asked>,
}

impl ResolvesClientCert for RecordingResolver {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.asked.store(true, Ordering::SeqCst);
        self.asked
            .hinted_authorities
            .store(root_hint_subjects.len(), Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Loads `leaf`'s certificate with the private key in `key_pem` (its own, or another one to
/// make a client that cannot prove it holds the certificate's key).
fn certified_key(leaf: &Leaf, key_pem: &str) -> Arc<CertifiedKey> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let signing_key = provider().key_provider.load_private_key(key).unwrap();
    Arc::new(CertifiedKey::new(
        vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
        signing_key,
    ))
}

/// A client trusting `server_ca`, offering http/1.1, presenting `certificate` (None: no
/// certificate) when asked, and recording what the server asked in the returned [`Asked`].
/// Every config has its own session store, so it resumes only what it established itself.
pub fn client_with_certificate(
    server_ca: &CertificateDer<'static>,
    certificate: Option<&Leaf>,
) -> (Arc<ClientConfig>, Arc<Asked>) {
    client_presenting(
        server_ca,
        certificate.map(|leaf| certified_key(leaf, &leaf.key_pem)),
    )
}

/// Like [`client_with_certificate`], but signs the handshake with `wrong_key_pem` instead of
/// the certificate's own key.
pub fn client_with_wrong_key(
    server_ca: &CertificateDer<'static>,
    certificate: &Leaf,
    wrong_key_pem: &str,
) -> Arc<ClientConfig> {
    client_presenting(server_ca, Some(certified_key(certificate, wrong_key_pem))).0
}

/// Like [`client_with_certificate`], restricted to one TLS protocol version.
pub fn client_with_version(
    server_ca: &CertificateDer<'static>,
    certificate: Option<&Leaf>,
    version: &'static SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let key = certificate.map(|leaf| certified_key(leaf, &leaf.key_pem));
    client_presenting_over(server_ca, key, &[version]).0
}

fn client_presenting(
    server_ca: &CertificateDer<'static>,
    key: Option<Arc<CertifiedKey>>,
) -> (Arc<ClientConfig>, Arc<Asked>) {
    client_presenting_over(server_ca, key, rustls::DEFAULT_VERSIONS)
}

fn client_presenting_over(
    server_ca: &CertificateDer<'static>,
    key: Option<Arc<CertifiedKey>>,
    versions: &[&'static SupportedProtocolVersion],
) -> (Arc<ClientConfig>, Arc<Asked>) {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.clone()).unwrap();
    let asked = Arc::new(Asked::default());
    let resolver = RecordingResolver {
        key,
        asked: asked.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (Arc::new(config), asked)
}
