//! TLS to backends (BackendTLSPolicy): the client config each backend with TLS is reached
//! with, and the certificate verifier for policies that name subject alt names.
//!
//! A backend's `ClientConfig` is built once per config generation, on the control thread with
//! the rest of the snapshot: building it parses the CA bundle, which no request should pay for.
//! Each core then takes a copy with a session cache of its own ([`CoreTls`]), so no lock is
//! shared between cores, and a session resumed after a swap was always verified under the
//! settings now in force (resumption skips certificate verification).

use std::cell::OnceCell;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use portcullis_api::certificate::{self, ParsedCertificate};
use portcullis_api::config::{BackendProtocol, BackendTls, SubjectAltName};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WantsClientCert, WebPkiServerVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, Error, OtherError,
    RootCertStore, SignatureScheme, version,
};

use crate::log::LogThrottle;
use crate::warn;

/// The only application protocol the proxy speaks to backends.
const ALPN_HTTP1: &[u8] = b"http/1.1";
const ALPN_HTTP2: &[u8] = b"h2";
/// TLS sessions each core keeps per backend for resumption (rustls' default size).
const SESSIONS_PER_BACKEND: usize = 256;

/// How connections to one backend are secured, built from its `BackendTls`.
#[derive(Debug)]
pub struct UpstreamTls {
    /// "namespace/name" of the BackendTLSPolicy, for logs.
    pub policy: Arc<str>,
    pub server_name: ServerName<'static>,
    pub config: Arc<ClientConfig>,
    /// Tells pooled connections made under different settings apart; never 0, which stands for
    /// plaintext in a pool key.
    pub identity: u64,
}

impl UpstreamTls {
    /// `client`: the certificate to present when the backend asks for one.
    pub fn build(
        tls: &BackendTls,
        protocol: BackendProtocol,
        client: Option<&ParsedCertificate>,
    ) -> Result<UpstreamTls, String> {
        let server_name = ServerName::try_from(tls.server_name.clone())
            .map_err(|e| format!("server_name {:?}: {e}", tls.server_name))?;
        let roots = if tls.system_trust_anchors {
            system_trust_anchors()?
        } else {
            Arc::new(certificate::parse_ca_bundle(&tls.ca_certificates_pem)?)
        };
        let provider = Arc::new(certificate::provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?;
        let mut config = if tls.subject_alt_names.is_empty() {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
            with_client_certificate(builder.with_webpki_verifier(verifier), client)?
        } else {
            let verifier = SubjectAltNameVerifier::new(
                roots,
                &tls.subject_alt_names,
                provider.signature_verification_algorithms,
            );
            let builder = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier));
            with_client_certificate(builder, client)?
        };
        config.alpn_protocols = match protocol {
            BackendProtocol::Http1 => vec![ALPN_HTTP1.to_vec()],
            BackendProtocol::Http2 => vec![ALPN_HTTP2.to_vec()],
        };
        Ok(UpstreamTls {
            policy: tls.policy.as_str().into(),
            server_name,
            config: Arc::new(config),
            identity: identity(tls, protocol, client),
        })
    }
}

/// One core's copy of a backend's TLS settings. The client session cache (rustls guards it
/// with a lock) and the failure log are the core's own, so making a connection never touches
/// state another core uses. Built at each install, like the rest of the core's tables: a
/// session is never resumed under settings a swap replaced (resumption skips verification).
#[derive(Debug)]
pub struct CoreTls {
    pub settings: Arc<UpstreamTls>,
    pub config: Arc<ClientConfig>,
    /// `config` without ALPN, made on first use: for connections that carry opaque bytes.
    opaque: OnceCell<Arc<ClientConfig>>,
    failures: LogThrottle,
}

impl CoreTls {
    pub fn new(settings: Arc<UpstreamTls>) -> CoreTls {
        let mut config = (*settings.config).clone();
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_BACKEND);
        CoreTls {
            settings,
            config: Arc::new(config),
            opaque: OnceCell::new(),
            failures: LogThrottle::default(),
        }
    }

    /// The client config for a connection whose bytes the proxy does not interpret (a
    /// terminated TLSRoute): no application protocol is offered. It shares `config`'s
    /// session cache.
    pub fn opaque_config(&self) -> Arc<ClientConfig> {
        self.opaque
            .get_or_init(|| {
                let mut config = (*self.config).clone();
                config.alpn_protocols.clear();
                Arc::new(config)
            })
            .clone()
    }

    /// Logs a failed handshake, at most once per [`crate::log::LOG_INTERVAL_SECS`] for this
    /// backend on this core, with how many failures the quiet period swallowed.
    pub fn log_failure(&self, endpoint: std::net::SocketAddr, reason: &dyn fmt::Display) {
        if let Some(suppressed) = self.failures.due_now() {
            warn!(
                "TLS to backend failed",
                "policy" = self.settings.policy,
                "endpoint" = endpoint,
                "reason" = reason,
                "failures_not_logged" = suppressed
            );
        }
    }
}

/// The settings that decide what a TLS connection may be used for. The policy's name is left
/// out: renaming a policy changes nothing about the connections it made.
fn with_client_certificate(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    client: Option<&ParsedCertificate>,
) -> Result<ClientConfig, String> {
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some(client) => builder
            .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
            .map_err(|e| format!("client certificate: {e}")),
    }
}

fn identity(
    tls: &BackendTls,
    protocol: BackendProtocol,
    client: Option<&ParsedCertificate>,
) -> u64 {
    let mut hasher = DefaultHasher::new();
    // A connection authenticated with another client certificate is another identity.
    if let Some(client) = client {
        for certificate in &client.chain {
            certificate.as_ref().hash(&mut hasher);
        }
    }
    // The ALPN offered differs by protocol.
    (protocol == BackendProtocol::Http2).hash(&mut hasher);
    tls.server_name.hash(&mut hasher);
    tls.ca_certificates_pem.hash(&mut hasher);
    tls.system_trust_anchors.hash(&mut hasher);
    for name in &tls.subject_alt_names {
        match name {
            SubjectAltName::Hostname(hostname) => (0u8, hostname).hash(&mut hasher),
            SubjectAltName::Uri(uri) => (1u8, uri).hash(&mut hasher),
        }
    }
    hasher.finish().max(1)
}

/// The system trust store (`wellKnownCACertificates: System`), loaded on first use and kept for
/// the life of the process: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the platform's
/// bundle. An empty or unreadable store is an error, so a config that needs it is refused
/// rather than served with backends that can never verify.
fn system_trust_anchors() -> Result<Arc<RootCertStore>, String> {
    static STORE: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    STORE.get_or_init(load_system_trust_anchors).clone()
}

fn load_system_trust_anchors() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the system trust store holds no usable CA certificate (set SSL_CERT_FILE, or \
             install a CA bundle in the proxy image){}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        ));
    }
    crate::info!(
        "loaded the system trust store",
        "certificates" = added,
        "unusable" = ignored,
        "errors" = found.errors.len()
    );
    Ok(Arc::new(roots))
}

/// A name the certificate must carry, as it is compared.
#[derive(Debug)]
enum RequiredName {
    /// Matched as a TLS client matches a hostname: a wildcard certificate covers it.
    Dns(ServerName<'static>),
    /// A wildcard requirement ("*.example.com") is no hostname a client could connect to: it
    /// matches a certificate name that is the same wildcard.
    Wildcard(String),
    Uri(String),
}

/// Verifies the chain to the policy's roots as WebPKI does for any server, then requires one of
/// the policy's subject alt names instead of the server name.
#[derive(Debug)]
pub struct SubjectAltNameVerifier {
    roots: Arc<RootCertStore>,
    required: Vec<RequiredName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SubjectAltNameVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        names: &[SubjectAltName],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        let required = names
            .iter()
            .map(|name| match name {
                SubjectAltName::Hostname(hostname) if hostname.starts_with("*.") => {
                    RequiredName::Wildcard(hostname.to_ascii_lowercase())
                }
                SubjectAltName::Hostname(hostname) => {
                    match ServerName::try_from(hostname.clone()) {
                        Ok(name) => RequiredName::Dns(name),
                        // Validation admits only DNS names; anything else can only match itself.
                        Err(_) => RequiredName::Wildcard(hostname.to_ascii_lowercase()),
                    }
                }
                SubjectAltName::Uri(uri) => RequiredName::Uri(uri.clone()),
            })
            .collect();
        Self {
            roots,
            required,
            algorithms,
        }
    }

    /// Whether the (already verified) leaf carries one of the required names.
    fn carries_required_name(&self, leaf: &webpki::EndEntityCert<'_>) -> bool {
        self.required.iter().any(|required| match required {
            RequiredName::Dns(name) => leaf.verify_is_valid_for_subject_name(name).is_ok(),
            RequiredName::Wildcard(pattern) => leaf
                .valid_dns_names()
                .any(|presented| presented.eq_ignore_ascii_case(pattern)),
            RequiredName::Uri(uri) => leaf.valid_uri_names().any(|presented| presented == uri),
        })
    }
}

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.carries_required_name(&leaf) {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = leaf
            .valid_dns_names()
            .chain(leaf.valid_uri_names())
            .map(str::to_owned)
            .collect();
        Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(NoRequiredName { presented })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A certificate that chains to the roots but carries none of the required names.
struct NoRequiredName {
    presented: Vec<String>,
}

impl fmt::Display for NoRequiredName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate carries none of the policy's subject alt names; it names {:?}",
            self.presented
        )
    }
}

// rustls shows this error with `{:?}` in its own messages, which end up in the log.
impl fmt::Debug for NoRequiredName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NoRequiredName {}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
        pem: String,
    }

    fn ca(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(ca: &TestCa, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, "backend");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn uri(name: &str) -> SanType {
        SanType::URI(name.try_into().unwrap())
    }

    fn verifier(ca: &TestCa, names: &[SubjectAltName]) -> SubjectAltNameVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        SubjectAltNameVerifier::new(
            Arc::new(roots),
            names,
            certificate::provider().signature_verification_algorithms,
        )
    }

    fn verify(verifier: &SubjectAltNameVerifier, leaf: &CertificateDer<'_>) -> Result<(), Error> {
        let sni = ServerName::try_from("not-in-the-certificate.test").unwrap();
        verifier
            .verify_server_cert(leaf, &[], &sni, &[], UnixTime::now())
            .map(|_| ())
    }

    fn hostname(name: &str) -> SubjectAltName {
        SubjectAltName::Hostname(name.into())
    }

    fn uri_name(name: &str) -> SubjectAltName {
        SubjectAltName::Uri(name.into())
    }

    #[test]
    fn a_listed_hostname_is_enough_and_the_server_name_is_not_checked() {
        let ca = ca("ca");
        let cert = leaf(&ca, vec![dns("backend.internal")]);
        verify(&verifier(&ca, &[hostname("backend.internal")]), &cert).unwrap();
        verify(&verifier(&ca, &[hostname("BACKEND.internal")]), &cert).unwrap();
        assert!(verify(&verifier(&ca, &[hostname("other.internal")]), &cert).is_err());
    }

    #[test]
    fn a_wildcard_certificate_covers_a_listed_hostname() {
        let ca = ca("ca");
        let cert = leaf(&ca, vec![dns("*.svc.internal")]);
        verify(&verifier(&ca, &[hostname("api.svc.internal")]), &cert).unwrap();
        assert!(verify(&verifier(&ca, &[hostname("a.b.svc.internal")]), &cert).is_err());
        // A wildcard requirement matches the same wildcard, nothing broader.
        verify(&verifier(&ca, &[hostname("*.svc.internal")]), &cert).unwrap();
        assert!(verify(&verifier(&ca, &[hostname("*.internal")]), &cert).is_err());
        let exact = leaf(&ca, vec![dns("api.svc.internal")]);
        assert!(verify(&verifier(&ca, &[hostname("*.svc.internal")]), &exact).is_err());
    }

    #[test]
    fn uris_compare_exactly() {
        let ca = ca("ca");
        let spiffe = "spiffe://cluster.local/ns/shop/sa/api";
        let cert = leaf(&ca, vec![uri(spiffe)]);
        verify(&verifier(&ca, &[uri_name(spiffe)]), &cert).unwrap();
        for other in [
            "spiffe://cluster.local/ns/shop/sa/ap",
            "spiffe://cluster.local/ns/shop/sa/api/",
            "SPIFFE://cluster.local/ns/shop/sa/api",
        ] {
            assert!(verify(&verifier(&ca, &[uri_name(other)]), &cert).is_err());
        }
        // A URI never satisfies a hostname requirement, nor the other way round.
        assert!(verify(&verifier(&ca, &[hostname("cluster.local")]), &cert).is_err());
        let named = leaf(&ca, vec![dns("cluster.local")]);
        assert!(verify(&verifier(&ca, &[uri_name("cluster.local")]), &named).is_err());
    }

    #[test]
    fn one_match_among_several_names_is_enough() {
        let ca = ca("ca");
        let cert = leaf(&ca, vec![dns("b.internal"), uri("spiffe://td/b")]);
        let names = [hostname("a.internal"), uri_name("spiffe://td/b")];
        verify(&verifier(&ca, &names), &cert).unwrap();
        let names = [hostname("a.internal"), hostname("b.internal")];
        verify(&verifier(&ca, &names), &cert).unwrap();
        let none = [hostname("a.internal"), uri_name("spiffe://td/a")];
        let error = verify(&verifier(&ca, &none), &cert).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("none of the policy's subject alt names"),
            "{message}"
        );
        assert!(message.contains("spiffe://td/b"), "{message}");
    }

    #[test]
    fn the_chain_must_lead_to_the_roots() {
        let trusted = ca("trusted");
        let other = ca("other");
        let cert = leaf(&other, vec![dns("b.internal")]);
        let error = verify(&verifier(&trusted, &[hostname("b.internal")]), &cert).unwrap_err();
        assert_eq!(
            error,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn the_certificate_must_be_valid_now() {
        let ca = ca("ca");
        let mut params = CertificateParams::new(vec!["b.internal".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let expired = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        let error = verify(&verifier(&ca, &[hostname("b.internal")]), &expired).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_certificate_for_clients_only_is_refused() {
        let ca = ca("ca");
        let mut params = CertificateParams::new(vec!["b.internal".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let client_only = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
        assert!(verify(&verifier(&ca, &[hostname("b.internal")]), &client_only).is_err());
    }

    fn backend_tls(ca_pem: &str, names: Vec<SubjectAltName>) -> BackendTls {
        BackendTls {
            client_certificate: None,
            system_trust_anchors: false,
            policy: "ns/policy".into(),
            server_name: "backend.internal".into(),
            ca_certificates_pem: ca_pem.into(),
            subject_alt_names: names,
        }
    }

    #[test]
    fn identity_follows_the_settings_that_matter() {
        let a = ca("a");
        let b = ca("b");
        let base =
            UpstreamTls::build(&backend_tls(&a.pem, vec![]), BackendProtocol::Http1, None).unwrap();
        assert_ne!(base.identity, 0);
        let same =
            UpstreamTls::build(&backend_tls(&a.pem, vec![]), BackendProtocol::Http1, None).unwrap();
        assert_eq!(base.identity, same.identity);
        let mut renamed = backend_tls(&a.pem, vec![]);
        renamed.policy = "ns/other".into();
        assert_eq!(
            UpstreamTls::build(&renamed, BackendProtocol::Http1, None)
                .unwrap()
                .identity,
            base.identity
        );
        let other_ca =
            UpstreamTls::build(&backend_tls(&b.pem, vec![]), BackendProtocol::Http1, None).unwrap();
        assert_ne!(base.identity, other_ca.identity);
        let mut other_name = backend_tls(&a.pem, vec![]);
        other_name.server_name = "other.internal".into();
        assert_ne!(
            UpstreamTls::build(&other_name, BackendProtocol::Http1, None)
                .unwrap()
                .identity,
            base.identity
        );
        let hostname_san = backend_tls(&a.pem, vec![hostname("x.internal")]);
        let uri_san = backend_tls(&a.pem, vec![uri_name("x.internal")]);
        let hostname_id = UpstreamTls::build(&hostname_san, BackendProtocol::Http1, None)
            .unwrap()
            .identity;
        let over_http2 = UpstreamTls::build(&hostname_san, BackendProtocol::Http2, None).unwrap();
        assert_ne!(hostname_id, over_http2.identity);
        assert_eq!(over_http2.config.alpn_protocols, vec![b"h2".to_vec()]);
        assert_ne!(hostname_id, base.identity);
        assert_ne!(
            hostname_id,
            UpstreamTls::build(&uri_san, BackendProtocol::Http1, None)
                .unwrap()
                .identity
        );
        assert_eq!(base.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_bad_bundle_is_an_error_not_a_panic() {
        let error = UpstreamTls::build(
            &backend_tls("not pem", vec![]),
            BackendProtocol::Http1,
            None,
        )
        .unwrap_err();
        assert!(error.contains("CA bundle"), "{error}");
    }
}
