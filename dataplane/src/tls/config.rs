//! TLS termination with rustls (aws-lc-rs): certificate material, per-core server configs,
//! SNI certificate selection and session tickets that resume on any core.
//!
//! Each core builds its own `ServerConfig` and its own `CertifiedKey`s from the DER in the
//! snapshot, so a handshake touches no state shared with another core. Resumption uses
//! stateless tickets sealed with one key that every core knows: with SO_REUSEPORT a returning
//! client usually lands on another core, where a per-core session cache would miss.
//!
//! A port with client validation asks every client for a certificate and resumes no session:
//! rustls does not authenticate the client again on resumption, and a ticket sealed with the
//! shared key could come from a port that asked for no certificate, or trusts another CA.
//!
//! The server picks the cipher suite: AES-128-GCM first, whose suite runs the key schedule on
//! SHA-256, which x86-64 CPUs compute in hardware (SHA-NI) where SHA-384 runs in software. A
//! client that lists ChaCha20 before AES-GCM (one without AES hardware says so this way) gets
//! its own order instead, from a second config that differs in that alone: BoringSSL (Envoy)
//! and Go servers choose the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use portcullis_api::certificate::{self, ParsedCertificate};
use portcullis_api::config::{Certificate, ClientValidationMode, PortProtocol};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CipherSuite, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
    version,
};

use super::stream::note_resolved_server_name;
use crate::route::host::{HostPattern, MAX_HOST_LEN, normalize};
use crate::route::{ClientValidationTable, PortTable, Snapshot};

/// A validated certificate chain and key, as DER, ready for any core to load.
#[derive(Debug)]
pub struct CertificateMaterial {
    pub name: Arc<str>,
    pub parsed: ParsedCertificate,
}

impl CertificateMaterial {
    /// Parses PEM and checks that the key loads and belongs to the leaf certificate.
    pub fn parse(certificate: &Certificate) -> Result<Self, String> {
        let parsed =
            certificate::parse_pem(&certificate.cert_chain_pem, &certificate.private_key_pem)?;
        Ok(Self {
            name: certificate.name.as_str().into(),
            parsed,
        })
    }
}

/// The session-ticket key every core seals tickets with. Generated once per process.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl TicketKey {
    pub fn generate() -> Result<Self, String> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(Self(key))
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// Tickets lifetime hint for clients: 12 hours.
const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;

/// Seals tickets as nonce ‖ AES-256-GCM(ciphertext ‖ tag). One instance per core.
struct SharedKeyTicketer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedKeyTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKeyTicketer")
    }
}

impl SharedKeyTicketer {
    fn new(key: &TicketKey) -> Result<Self, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0)
            .map_err(|_| "ticket key rejected by AES-256-GCM".to_string())?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        })
    }
}

impl ProducesTickets for SharedKeyTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let mut body = sealed.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .ok()?;
        sealed.extend_from_slice(&body);
        Some(sealed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// Chooses a certificate by SNI among the listeners of one HTTPS port: exact hostname, then
/// the longest matching wildcard, then the listener without hostname. A server name that no
/// listener accepts gets no certificate, never another listener's.
#[derive(Debug)]
struct SniResolver {
    listeners: Vec<(HostPattern, Vec<Arc<CertifiedKey>>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        note_resolved_server_name(hello.server_name());
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        let server_name = match hello.server_name() {
            Some(name) => Some(normalize(name.as_bytes(), &mut buf)?),
            None => None,
        };
        let (_, keys) = match server_name {
            Some(name) => self
                .listeners
                .iter()
                .filter(|(pattern, _)| pattern.matches(name))
                .max_by_key(|(pattern, _)| pattern.specificity())?,
            None => self
                .listeners
                .iter()
                .find(|(pattern, _)| *pattern == HostPattern::Any)?,
        };
        let schemes = hello.signature_schemes();
        keys.iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| keys.first())
            .cloned()
    }
}

/// Asks for a client certificate but lets every client through: one that sends none, and one
/// whose certificate the WebPKI verifier rejects (counted in `unverified`). What it cannot let
/// through is a client that does not hold the key of the certificate it sent: the handshake
/// signature (TLS 1.3 CertificateVerify, or TLS 1.2's) is still checked against that
/// certificate's key, which the WebPKI verifier does without looking at trust at all.
#[derive(Debug)]
pub(crate) struct FallbackClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    unverified: Arc<AtomicU64>,
}

impl FallbackClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, unverified: Arc<AtomicU64>) -> Self {
        Self { inner, unverified }
    }
}

impl ClientCertVerifier for FallbackClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .is_err()
        {
            self.unverified.fetch_add(1, Ordering::Relaxed);
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// This core's verifier for a port's client certificates: WebPKI to the port's CA bundle
/// (client-auth usage, validity), mandatory or wrapped in the fallback.
fn client_verifier(
    validation: &ClientValidationTable,
    provider: &Arc<CryptoProvider>,
    unverified: &Arc<AtomicU64>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let webpki =
        WebPkiClientVerifier::builder_with_provider(validation.roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("client certificate verifier: {e}"))?;
    Ok(match validation.mode {
        ClientValidationMode::AllowValidOnly => webpki,
        ClientValidationMode::AllowInsecureFallback => {
            Arc::new(FallbackClientVerifier::new(webpki, unverified.clone()))
        }
    })
}

/// This core's rustls configs for one TLS-terminating port: the same but for who orders the
/// cipher suites.
#[derive(Clone, Debug)]
pub struct PortTlsConfigs {
    server_order: Arc<ServerConfig>,
    client_order: Arc<ServerConfig>,
}

impl PortTlsConfigs {
    /// The config to answer a ClientHello with (see the module documentation).
    pub fn for_client(&self, prefers_chacha20: bool) -> &Arc<ServerConfig> {
        if prefers_chacha20 {
            &self.client_order
        } else {
            &self.server_order
        }
    }
}

/// AES-128-GCM suites first, then AES-256-GCM, then the rest (ChaCha20), each group in the
/// provider's order.
fn server_suite_rank(suite: CipherSuite) -> u8 {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    }
}

/// Builds this core's rustls configs for one TLS-terminating port. `unverified` counts, for
/// this core, the client certificates a fallback verifier let through.
pub fn server_configs(
    port: &PortTable,
    snapshot: &Snapshot,
    ticket_key: &TicketKey,
    unverified: &Arc<AtomicU64>,
) -> Result<PortTlsConfigs, String> {
    let mut provider = certificate::provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| server_suite_rank(suite.suite()));
    let provider = Arc::new(provider);
    let mut loaded: Vec<Option<Arc<CertifiedKey>>> = vec![None; snapshot.certificates.len()];
    let mut listeners = Vec::with_capacity(port.listeners.len());
    for listener in &port.listeners {
        let mut keys = Vec::with_capacity(listener.certificates.len());
        for &index in &listener.certificates {
            let slot = loaded
                .get_mut(index as usize)
                .ok_or_else(|| format!("certificate index {index} out of range"))?;
            let key = match slot {
                Some(key) => key.clone(),
                None => {
                    let material = &snapshot.certificates[index as usize];
                    let key = Arc::new(material.parsed.load(&provider)?);
                    *slot = Some(key.clone());
                    key
                }
            };
            keys.push(key);
        }
        listeners.push((listener.hostname.clone(), keys));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &port.client_validation {
        Some(validation) => {
            builder.with_client_cert_verifier(client_verifier(validation, &provider, unverified)?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { listeners }));
    // A TLS port forwards whatever protocol runs inside; HTTPS ports speak HTTP/2 to clients
    // that offer it, else HTTP/1.1.
    if port.protocol == PortProtocol::Https {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    config.session_storage = Arc::new(NoServerSessionStorage {});
    if port.client_validation.is_some() || port.session_resumption_disabled {
        // A resumed handshake skips client authentication (rustls checks only the cipher suite
        // and the server name), and every port's tickets are sealed with the same key: a
        // ticket from a port without validation, or trusting another CA, would let its holder
        // in here without a certificate. So a port that validates clients resumes nothing, as
        // does one configured to: no session cache (set above), the builder's ticketer that
        // never produces nor accepts tickets, and no TLS 1.3 tickets sent. Every client pays
        // a full handshake, certificate included.
        config.send_tls13_tickets = 0;
    } else {
        config.ticketer = Arc::new(SharedKeyTicketer::new(ticket_key)?);
        // One ticket per full handshake is enough to resume once; each extra ticket costs the
        // server a seal per handshake.
        config.send_tls13_tickets = 1;
    }
    // Both share the resolver, verifier and ticketer: a session resumes under either.
    let mut client_order = config.clone();
    client_order.ignore_client_order = false;
    config.ignore_client_order = true;
    Ok(PortTlsConfigs {
        server_order: Arc::new(config),
        client_order: Arc::new(client_order),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_across_instances_sharing_a_key() {
        let key = TicketKey::generate().unwrap();
        let core_a = SharedKeyTicketer::new(&key).unwrap();
        let core_b = SharedKeyTicketer::new(&key).unwrap();
        let ticket = core_a.encrypt(b"session state").unwrap();
        assert_eq!(
            core_b.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );

        let other = SharedKeyTicketer::new(&TicketKey::generate().unwrap()).unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        let mut tampered = ticket.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(core_b.decrypt(&tampered), None);
        assert_eq!(core_b.decrypt(&ticket[..10]), None);
        assert_ne!(
            core_a.encrypt(b"x"),
            core_a.encrypt(b"x"),
            "nonces must differ"
        );
    }

    /// A CA and a client certificate it issued (client-auth usage), as DER.
    struct ClientPki {
        ca_der: CertificateDer<'static>,
        ca_pem: String,
        client: CertificateDer<'static>,
    }

    fn client_pki(name: &str) -> ClientPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "client");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        ClientPki {
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            client: leaf.der().clone(),
        }
    }

    fn validation(pki: &ClientPki, mode: ClientValidationMode) -> ClientValidationTable {
        ClientValidationTable {
            roots: Arc::new(certificate::parse_ca_bundle(&pki.ca_pem).unwrap()),
            mode,
        }
    }

    #[test]
    fn fallback_verifier_lets_untrusted_certificates_through_and_counts_them() {
        let trusted = client_pki("trusted CA");
        let other = client_pki("other CA");
        let provider = Arc::new(certificate::provider());
        let unverified = Arc::new(AtomicU64::new(0));
        let table = validation(&trusted, ClientValidationMode::AllowInsecureFallback);
        let verifier = client_verifier(&table, &provider, &unverified).unwrap();
        let strict = client_verifier(
            &validation(&trusted, ClientValidationMode::AllowValidOnly),
            &provider,
            &unverified,
        )
        .unwrap();

        assert!(verifier.offer_client_auth());
        assert!(!verifier.client_auth_mandatory());
        assert!(strict.offer_client_auth());
        assert!(strict.client_auth_mandatory());
        // The hints name the trusted CA, so a client holding several certificates picks its one.
        let hints = |v: &Arc<dyn ClientCertVerifier>| {
            v.root_hint_subjects()
                .iter()
                .map(|name| name.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(hints(&verifier), hints(&strict));
        assert_eq!(hints(&verifier).len(), 1);
        assert_eq!(
            verifier.supported_verify_schemes(),
            strict.supported_verify_schemes()
        );

        let now = UnixTime::now();
        assert!(
            verifier
                .verify_client_cert(&trusted.client, &[], now)
                .is_ok()
        );
        assert_eq!(unverified.load(Ordering::Relaxed), 0, "a valid chain");

        assert!(strict.verify_client_cert(&other.client, &[], now).is_err());
        assert!(verifier.verify_client_cert(&other.client, &[], now).is_ok());
        assert_eq!(unverified.load(Ordering::Relaxed), 1, "another CA's client");

        // A CA certificate presented as a client's: no client-auth leaf, still let through.
        assert!(
            strict
                .verify_client_cert(&trusted.ca_der, &[], now)
                .is_err()
        );
        assert!(
            verifier
                .verify_client_cert(&trusted.ca_der, &[], now)
                .is_ok()
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(verifier.verify_client_cert(&garbage, &[], now).is_ok());
        assert_eq!(unverified.load(Ordering::Relaxed), 3);

        // Expired: the same certificate checked 3000 years from now (rcgen's certificates
        // are valid until 4096).
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            now.as_secs() + 3000 * 366 * 24 * 60 * 60,
        ));
        assert!(
            strict
                .verify_client_cert(&trusted.client, &[], later)
                .is_err()
        );
        assert!(
            verifier
                .verify_client_cert(&trusted.client, &[], later)
                .is_ok()
        );
        assert_eq!(unverified.load(Ordering::Relaxed), 4);
    }

    /// This core's config for an HTTPS port with one listener for any host, whose certificate
    /// (self-signed, for a.example) nobody validates.
    pub(in crate::tls) fn https_server_config() -> Arc<ServerConfig> {
        let snapshot = Snapshot::build(&https_config(vec![None])).unwrap();
        let key = TicketKey::generate().unwrap();
        let unverified = Arc::new(AtomicU64::new(0));
        server_configs(&snapshot.ports[0], &snapshot, &key, &unverified)
            .unwrap()
            .for_client(false)
            .clone()
    }

    /// An HTTPS config with one port per entry of `validations`, ports 443, 444, ...
    fn https_config(
        validations: Vec<Option<portcullis_api::config::ClientValidation>>,
    ) -> portcullis_api::CompiledConfig {
        use portcullis_api::CompiledConfig;
        use portcullis_api::config::{Listener, Port};
        let issued = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let mut config = CompiledConfig::empty(1);
        config.certificates.push(Certificate {
            name: "ns/a".into(),
            cert_chain_pem: issued.cert.pem(),
            private_key_pem: issued.signing_key.serialize_pem(),
        });
        for (i, client_validation) in validations.into_iter().enumerate() {
            config.ports.push(Port {
                port: 443 + i as u16,
                protocol: PortProtocol::Https,
                listeners: vec![Listener {
                    name: format!("https-{i}"),
                    hostname: None,
                    certificates: vec!["ns/a".into()],
                    routes: vec![],
                    passthrough: false,
                    stream_routes: vec![],
                }],
                client_validation,
                session_resumption_disabled: false,
            });
        }
        config
    }

    #[test]
    fn ports_with_client_validation_or_resumption_off_resume_no_session() {
        let pki = client_pki("CA");
        let mut config = https_config(vec![
            None,
            Some(portcullis_api::config::ClientValidation {
                ca_certificates_pem: pki.ca_pem.clone(),
                mode: ClientValidationMode::AllowValidOnly,
            }),
            Some(portcullis_api::config::ClientValidation {
                ca_certificates_pem: pki.ca_pem.clone(),
                mode: ClientValidationMode::AllowInsecureFallback,
            }),
            None,
        ]);
        config.ports[3].session_resumption_disabled = true;
        let snapshot = Snapshot::build(&config).unwrap();
        let key = TicketKey::generate().unwrap();
        let unverified = Arc::new(AtomicU64::new(0));
        let both: Vec<PortTlsConfigs> = snapshot
            .ports
            .iter()
            .map(|port| server_configs(port, &snapshot, &key, &unverified).unwrap())
            .collect();
        // Each port's two configs (server's and client's suite order) resume alike.
        let configs: Vec<Arc<ServerConfig>> = both
            .iter()
            .flat_map(|c| [c.for_client(false).clone(), c.for_client(true).clone()])
            .collect();

        for open in &configs[..2] {
            assert!(open.ticketer.enabled());
            assert_eq!(open.send_tls13_tickets, 1);
        }
        for validated in &configs[2..] {
            assert!(!validated.ticketer.enabled());
            assert_eq!(validated.send_tls13_tickets, 0);
            assert!(!validated.session_storage.can_cache());
        }
        // Which verifier each port got is checked over real handshakes
        // (tests/client_certificates.rs): rustls keeps it private.
    }

    #[test]
    fn the_server_orders_suites_unless_the_client_prefers_chacha20() {
        let snapshot = Snapshot::build(&https_config(vec![None])).unwrap();
        let key = TicketKey::generate().unwrap();
        let unverified = Arc::new(AtomicU64::new(0));
        let configs = server_configs(&snapshot.ports[0], &snapshot, &key, &unverified).unwrap();
        let (ours, theirs) = (configs.for_client(false), configs.for_client(true));
        assert!(ours.ignore_client_order);
        assert!(!theirs.ignore_client_order);
        let tls13: Vec<CipherSuite> = ours
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .filter(|s| format!("{s:?}").starts_with("TLS13_"))
            .collect();
        assert_eq!(
            tls13,
            [
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        // A ticket from one config resumes under the other: they share the ticketer.
        assert!(Arc::ptr_eq(&ours.ticketer, &theirs.ticketer));
        assert!(Arc::ptr_eq(&ours.cert_resolver, &theirs.cert_resolver));
    }

    #[test]
    fn an_unparsable_ca_bundle_fails_the_build() {
        let pki = client_pki("CA");
        let truncated = https_config(vec![Some(portcullis_api::config::ClientValidation {
            ca_certificates_pem: pki.ca_pem[..pki.ca_pem.len() / 2].to_string(),
            mode: ClientValidationMode::AllowValidOnly,
        })]);
        let error = Snapshot::build(&truncated).unwrap_err();
        assert!(error.contains("client_validation"), "{error}");
    }

    #[test]
    fn certificate_material_is_checked() {
        let issued = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let good = Certificate {
            name: "ns/a".into(),
            cert_chain_pem: issued.cert.pem(),
            private_key_pem: issued.signing_key.serialize_pem(),
        };
        assert!(CertificateMaterial::parse(&good).is_ok());

        let mismatched = Certificate {
            private_key_pem: other.signing_key.serialize_pem(),
            ..good.clone()
        };
        let error = CertificateMaterial::parse(&mismatched).unwrap_err();
        assert!(error.contains("do not load"), "{error}");

        let garbage = Certificate {
            cert_chain_pem: "not pem".into(),
            ..good.clone()
        };
        assert!(CertificateMaterial::parse(&garbage).is_err());
        let no_key = Certificate {
            private_key_pem: issued.cert.pem(),
            ..good
        };
        assert!(CertificateMaterial::parse(&no_key).is_err());
    }
}
