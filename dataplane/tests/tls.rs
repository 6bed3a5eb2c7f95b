//! TLS termination over real sockets: SNI certificate selection, refusal of unknown names,
//! ALPN, protocol versions and key types, session resumption across cores (and none on a port
//! that turns it off), certificate rotation, plain HTTP on an HTTPS port, and certificates
//! whose key does not match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{Listener, PortProtocol};
use portcullis_api::frame::Reply;
use portcullis_testkit::AcceptAnyServerCertificate;
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use support::certs::{Ca, Leaf};
use support::config::{listener, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

impl Ca {
    /// A client config trusting this CA, offering http/1.1, restricted to one TLS version.
    fn client_with_version(&self, version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client config trusting this CA that advertises only `schemes` as signature schemes
    /// it can verify (so the server must pick a certificate whose key can sign with them).
    fn client_with_schemes(&self, schemes: &[SignatureScheme]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
        let verifier = OnlySchemes {
            inner,
            schemes: schemes.to_vec(),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn accept_anything_client() -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Verifies like webpki, but tells the server it can only check signatures in `schemes`.
#[derive(Debug)]
struct OnlySchemes {
    inner: Arc<WebPkiServerVerifier>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for OnlySchemes {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Config helpers
// ---------------------------------------------------------------------------------------------

/// A listener whose every request goes to `backend`.
fn https_listener(name: &str, hostname: Option<&str>, certs: &[&str], backend: &str) -> Listener {
    listener(
        name,
        hostname,
        certs,
        vec![route(
            &format!("ns/{name}"),
            &[],
            vec![rule(vec![], vec![to(backend, 1)])],
        )],
    )
}

/// Connects with TLS and panics with the error when the handshake fails.
fn connect(port: u16, sni: &str, config: &Arc<ClientConfig>) -> Client {
    Client::connect_tls(port, sni, config.clone())
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni:?} failed: {e}"))
}

fn ack(proxy: &Proxy, config: &CompiledConfig) {
    match proxy.push(config) {
        Reply::Ack { generation } => assert_eq!(generation, config.generation),
        Reply::Nack { reason } => panic!("config NACKed: {reason}"),
    }
}

/// Polls `f` until it holds or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// 1. SNI picks the exact listener, then the wildcard (one or more labels), then the listener
///    without hostname; requests on each connection reach that listener's routes.
#[test]
fn sni_selects_the_listener_certificate_and_routes() {
    let ca = Ca::new();
    let cert_a = ca.leaf(&["a.example.com"]);
    // X.509 wildcards cover one label only, so the two-label name is listed explicitly.
    let cert_w = ca.leaf(&["*.wild.example.com", "x.y.wild.example.com"]);
    let cert_d = ca.leaf(&["other.example.com", "127.0.0.1"]);
    let a = Backend::start("a");
    let w = Backend::start("w");
    let d = Backend::start("d");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .certificate("ns/a", &cert_a.cert_pem, &cert_a.key_pem)
        .certificate("ns/w", &cert_w.cert_pem, &cert_w.key_pem)
        .certificate("ns/d", &cert_d.cert_pem, &cert_d.key_pem)
        .backend("ns/a:80", &[&a])
        .backend("ns/w:80", &[&w])
        .backend("ns/d:80", &[&d])
        .port(
            port,
            PortProtocol::Https,
            vec![
                https_listener("a", Some("a.example.com"), &["ns/a"], "ns/a:80"),
                https_listener("w", Some("*.wild.example.com"), &["ns/w"], "ns/w:80"),
                https_listener("d", None, &["ns/d"], "ns/d:80"),
            ],
        )
        .build();
    let _proxy = Proxy::start(&config);
    let client = ca.client(&[b"http/1.1"]);

    for (sni, cert, backend) in [
        ("a.example.com", &cert_a, "a"),
        ("x.wild.example.com", &cert_w, "w"),
        ("x.y.wild.example.com", &cert_w, "w"),
        ("other.example.com", &cert_d, "d"),
        // An IP address sends no SNI at all: the listener without hostname answers.
        ("127.0.0.1", &cert_d, "d"),
    ] {
        let mut connection = connect(port, sni, &client);
        assert_eq!(
            connection.peer_certificate.as_ref(),
            Some(&cert.der),
            "certificate presented for SNI {sni:?}"
        );
        assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
        for _ in 0..2 {
            let response = connection.get(sni, "/hello");
            assert_eq!(response.status, 200, "{sni}: {}", response.body_text());
            assert_eq!(response.backend(), Some(backend), "request for {sni:?}");
            let echoed = response.json();
            assert_eq!(echoed["headers"]["x-forwarded-proto"][0], "https", "{sni}");
        }
    }
}

/// 2. A server name that no listener accepts gets no certificate, not another listener's.
#[test]
fn unknown_server_names_get_no_certificate() {
    let ca = Ca::new();
    let cert_a = ca.leaf(&["a.example.com"]);
    let cert_w = ca.leaf(&["*.wild.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .certificate("ns/a", &cert_a.cert_pem, &cert_a.key_pem)
        .certificate("ns/w", &cert_w.cert_pem, &cert_w.key_pem)
        .backend("ns/a:80", &[&a])
        .backend("ns/w:80", &[&a])
        .port(
            port,
            PortProtocol::Https,
            vec![
                https_listener("a", Some("a.example.com"), &["ns/a"], "ns/a:80"),
                https_listener("w", Some("*.wild.example.com"), &["ns/w"], "ns/w:80"),
            ],
        )
        .build();
    let proxy = Proxy::start(&config);
    let trusting = ca.client(&[b"http/1.1"]);
    // This client would accept any certificate: a failure can only be the server's refusal.
    let lax = accept_anything_client();
    let errors_before = proxy.metric("portcullis_tls_handshake_errors_total", "");

    for sni in ["nope.example.com", "wild.example.com", "127.0.0.1"] {
        for (kind, client) in [("trusting", &trusting), ("lax", &lax)] {
            match Client::connect_tls(port, sni, client.clone()) {
                // rustls refuses with a fatal alert (access_denied) before any certificate.
                Err(e) => assert!(
                    format!("{e:?}").contains("AlertReceived"),
                    "{kind} client with SNI {sni:?}: expected a fatal alert, got {e:?}"
                ),
                Ok(connection) => {
                    let presented = connection.peer_certificate.as_ref();
                    let which = if presented == Some(&cert_a.der) {
                        "A"
                    } else if presented == Some(&cert_w.der) {
                        "W"
                    } else {
                        "an unknown certificate"
                    };
                    panic!("{kind} client with SNI {sni:?} completed a handshake and got {which}");
                }
            }
        }
    }
    // The listeners still work.
    let mut connection = connect(port, "a.example.com", &trusting);
    assert_eq!(connection.peer_certificate.as_ref(), Some(&cert_a.der));
    assert_eq!(connection.get("a.example.com", "/").backend(), Some("a"));
    let w = connect(port, "q.wild.example.com", &trusting);
    assert_eq!(w.peer_certificate.as_ref(), Some(&cert_w.der));
    assert!(
        eventually(Duration::from_secs(2), || {
            proxy.metric("portcullis_tls_handshake_errors_total", "") >= errors_before + 6.0
        }),
        "six refused handshakes should count as handshake errors"
    );
}

/// 3. ALPN: the proxy speaks h2 when offered, else http/1.1, and refuses other protocols.
#[test]
fn alpn_negotiates_http2_or_http1() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .certificate("ns/a", &cert.cert_pem, &cert.key_pem)
        .backend("ns/a:80", &[&a])
        .port(
            port,
            PortProtocol::Https,
            vec![https_listener("a", None, &["ns/a"], "ns/a:80")],
        )
        .build();
    let _proxy = Proxy::start(&config);

    let mut http1 = connect(port, "a.example.com", &ca.client(&[b"http/1.1"]));
    assert_eq!(http1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(http1.get("a.example.com", "/").backend(), Some("a"));

    // HTTP/2 when the client offers it (tests/http2.rs speaks it).
    let both = connect(port, "a.example.com", &ca.client(&[b"h2", b"http/1.1"]));
    assert_eq!(both.alpn.as_deref(), Some(&b"h2"[..]));
    let h2_only = connect(port, "a.example.com", &ca.client(&[b"h2"]));
    assert_eq!(h2_only.alpn.as_deref(), Some(&b"h2"[..]));

    // No ALPN offered at all: plain HTTP/1.1 over TLS.
    let mut none = connect(port, "a.example.com", &ca.client(&[]));
    assert_eq!(none.alpn, None);
    assert_eq!(none.get("a.example.com", "/").backend(), Some("a"));

    // No protocol in common: the handshake must fail (RFC 7301 §3.2).
    if let Ok(connection) = Client::connect_tls(port, "a.example.com", ca.client(&[b"spdy/3.1"])) {
        panic!(
            "a client offering only spdy/3.1 completed the handshake with ALPN {:?}",
            connection.alpn
        );
    }
    // Over TLS 1.2 the mismatch is found before the ServerHello is sent, and the client gets
    // the no_application_protocol alert (over TLS 1.3 it does not: see the ignored test below).
    let mut tls12_h2 = ClientConfig::clone(&ca.client_with_version(&rustls::version::TLS12));
    tls12_h2.alpn_protocols = vec![b"spdy/3.1".to_vec()];
    match Client::connect_tls(port, "a.example.com", Arc::new(tls12_h2)) {
        Err(e) => assert!(
            e.to_string().contains("NoApplicationProtocol"),
            "TLS 1.2, spdy/3.1 only: {e:?}"
        ),
        Ok(connection) => panic!(
            "a TLS 1.2 client offering only spdy/3.1 completed the handshake with ALPN {:?}",
            connection.alpn
        ),
    }
    assert_eq!(
        connect(port, "a.example.com", &ca.client(&[b"http/1.1"]))
            .get("a.example.com", "/")
            .backend(),
        Some("a")
    );
}

/// 3b. Over TLS 1.3 the failed ALPN negotiation should also be reported with the
///     no_application_protocol alert that rustls produces. Here rustls finds the mismatch
///     while building EncryptedExtensions, after queueing the ServerHello: the proxy writes
///     only the first queued record (the ServerHello; futures-rustls makes one "last gasp"
///     `write_vectored`, and glommio's stream writes one buffer of it) and then drops the
///     socket, so the ChangeCipherSpec and the encrypted alert are never sent and the client
///     sees a connection reset (or EOF) instead of the alert.
#[test]
fn alpn_mismatch_is_answered_with_no_application_protocol() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let _proxy = Proxy::start(&single_listener_config(1, port, &cert, &a));
    for attempt in 0..3 {
        match Client::connect_tls(port, "a.example.com", ca.client(&[b"spdy/3.1"])) {
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains("NoApplicationProtocol"),
                    "attempt {attempt}: the client got {message:?}, not the \
                     no_application_protocol alert"
                );
            }
            Ok(connection) => panic!(
                "a client offering only spdy/3.1 completed the handshake with ALPN {:?}",
                connection.alpn
            ),
        }
    }
}

/// 4. TLS 1.2 and 1.3 both work, with ECDSA and RSA certificates; a listener holding both
///    picks the one the client can verify.
#[test]
fn tls12_and_tls13_with_ecdsa_and_rsa_certificates() {
    let ca = Ca::new();
    let ec = ca.leaf(&["ec.example.com", "dual.example.com"]);
    let rsa = ca.rsa_leaf(&["rsa.example.com", "dual.example.com"]);
    let backend = Backend::start("b");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .certificate("ns/ec", &ec.cert_pem, &ec.key_pem)
        .certificate("ns/rsa", &rsa.cert_pem, &rsa.key_pem)
        .backend("ns/b:80", &[&backend])
        .port(
            port,
            PortProtocol::Https,
            vec![
                https_listener("ec", Some("ec.example.com"), &["ns/ec"], "ns/b:80"),
                https_listener("rsa", Some("rsa.example.com"), &["ns/rsa"], "ns/b:80"),
                https_listener(
                    "dual",
                    Some("dual.example.com"),
                    &["ns/ec", "ns/rsa"],
                    "ns/b:80",
                ),
            ],
        )
        .build();
    let _proxy = Proxy::start(&config);

    for (label, version) in [
        ("TLS 1.2", &rustls::version::TLS12),
        ("TLS 1.3", &rustls::version::TLS13),
    ] {
        let client = ca.client_with_version(version);
        for (sni, cert) in [("ec.example.com", &ec), ("rsa.example.com", &rsa)] {
            let mut connection = Client::connect_tls(port, sni, client.clone())
                .unwrap_or_else(|e| panic!("{label} handshake with {sni} failed: {e}"));
            assert_eq!(
                connection.peer_certificate.as_ref(),
                Some(&cert.der),
                "{label} {sni}"
            );
            assert_eq!(connection.alpn.as_deref(), Some(&b"http/1.1"[..]));
            let response = connection.get(sni, "/");
            assert_eq!(response.status, 200, "{label} {sni}");
            assert_eq!(response.backend(), Some("b"));
        }
    }

    let only_rsa = ca.client_with_schemes(&[
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA512,
    ]);
    let only_ecdsa = ca.client_with_schemes(&[
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
    ]);
    for (label, client, cert) in [
        ("RSA-only", &only_rsa, &rsa),
        ("ECDSA-only", &only_ecdsa, &ec),
    ] {
        let mut connection = connect(port, "dual.example.com", client);
        assert_eq!(
            connection.peer_certificate.as_ref(),
            Some(&cert.der),
            "{label} client on a listener with both certificates"
        );
        assert_eq!(connection.get("dual.example.com", "/").status, 200);
    }
}

/// Makes `count` connections with one client config (and so one resumption store), one
/// request each, and returns whether each handshake was resumed.
fn resumptions(port: u16, client: &Arc<ClientConfig>, count: usize) -> Vec<bool> {
    (0..count)
        .map(|i| {
            let mut connection = connect(port, "a.example.com", client);
            // Reading a response also processes the session ticket sent after the handshake.
            let response = connection.get("a.example.com", "/");
            assert_eq!(response.status, 200, "connection {i}");
            connection.resumed
        })
        .collect()
}

fn resumption_proxy(ca: &Ca) -> (Proxy, Backend, u16) {
    let cert = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let config = single_listener_config(1, port, &cert, &a);
    let proxy = Proxy::start_with(&config, &["--cores", "2"]);
    (proxy, a, port)
}

/// An idle TLS keep-alive connection parks like a plaintext one and its session carries on.
#[test]
fn a_parked_tls_connection_resumes() {
    let ca = Ca::new();
    let (_proxy, backend, port) = resumption_proxy(&ca);
    let mut client = connect(port, "a.example.com", &ca.client(&[]));
    for round in 0..3 {
        let response = client.get("a.example.com", &format!("/{round}"));
        assert_eq!(response.status, 200, "round {round}");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(backend.request_count(), 3);
}

/// 5. Tickets are sealed with a key every core shares: with two cores (SO_REUSEPORT spreads
///    connections over both), nearly every handshake after the first resumes.
#[test]
fn sessions_resume_across_cores_tls13() {
    let ca = Ca::new();
    let (proxy, _backend, port) = resumption_proxy(&ca);
    assert_eq!(proxy.metric("portcullis_cores", ""), 2.0);
    let resumed = resumptions(port, &ca.client(&[b"http/1.1"]), 20);
    assert!(!resumed[0], "the first handshake cannot be resumed");
    let later = resumed[1..].iter().filter(|r| **r).count();
    assert!(
        later >= 15,
        "only {later} of 19 handshakes resumed: {resumed:?}"
    );
}

/// 5b. The same with TLS 1.2 session tickets (RFC 5077).
#[test]
fn sessions_resume_across_cores_tls12() {
    let ca = Ca::new();
    let (_proxy, _backend, port) = resumption_proxy(&ca);
    let resumed = resumptions(port, &ca.client_with_version(&rustls::version::TLS12), 20);
    assert!(!resumed[0], "the first handshake cannot be resumed");
    let later = resumed[1..].iter().filter(|r| **r).count();
    assert!(
        later >= 15,
        "only {later} of 19 handshakes resumed: {resumed:?}"
    );
}

/// 5c. A port configured without session resumption makes every handshake a full one, over
///     TLS 1.3 and TLS 1.2; a config that turns resumption back on applies to the next
///     handshakes.
#[test]
fn a_port_without_session_resumption_resumes_nothing() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let backend = Backend::start("a");
    let port = free_port();
    let mut without_resumption = single_listener_config(1, port, &cert, &backend);
    without_resumption.ports[0].session_resumption_disabled = true;
    let proxy = Proxy::start_with(&without_resumption, &["--cores", "2"]);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let resumed = resumptions(port, &ca.client_with_version(version), 8);
        assert!(
            resumed.iter().all(|r| !r),
            "{version:?}: resumed with resumption disabled: {resumed:?}"
        );
    }

    ack(&proxy, &single_listener_config(2, port, &cert, &backend));
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let resumed = resumptions(port, &ca.client_with_version(version), 8);
        let later = resumed[1..].iter().filter(|r| **r).count();
        assert!(
            later >= 5,
            "{version:?}: only {later} of 7 handshakes resumed once enabled: {resumed:?}"
        );
    }
}

/// 5d. The server orders the cipher suites, AES-128-GCM first, unless the client lists
///     ChaCha20 before AES-GCM (a client without AES hardware); a suite the client alone
///     offers is still agreed. TLS 1.3 and TLS 1.2.
#[test]
fn the_server_prefers_aes_128_gcm_unless_the_client_prefers_chacha20() {
    use rustls::CipherSuite::*;
    let ca = Ca::new();
    let (_proxy, _backend, port) = resumption_proxy(&ca);
    let cases = [
        (
            &rustls::version::TLS13,
            vec![
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            TLS13_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS13,
            vec![
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
            ],
            TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            &rustls::version::TLS13,
            vec![TLS13_AES_256_GCM_SHA384],
            TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ],
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (version, offered, expected) in cases {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = offered
            .iter()
            .map(|wanted| {
                *provider
                    .cipher_suites
                    .iter()
                    .find(|s| s.suite() == *wanted)
                    .unwrap()
            })
            .collect();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = connect(port, "a.example.com", &Arc::new(config));
        assert_eq!(client.cipher_suite, Some(expected), "offered {offered:?}");
        assert_eq!(client.get("a.example.com", "/").status, 200);
    }
}

fn single_listener_config(
    generation: u64,
    port: u16,
    cert: &Leaf,
    backend: &Backend,
) -> CompiledConfig {
    ConfigBuilder::new(generation)
        .certificate("ns/a", &cert.cert_pem, &cert.key_pem)
        .backend("ns/a:80", &[backend])
        .port(
            port,
            PortProtocol::Https,
            vec![https_listener(
                "a",
                Some("a.example.com"),
                &["ns/a"],
                "ns/a:80",
            )],
        )
        .build()
}

/// 6. A new certificate applies to new connections; open connections keep serving.
#[test]
fn certificate_rotation_keeps_open_connections() {
    let ca = Ca::new();
    let old = ca.leaf(&["a.example.com"]);
    let new = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let proxy = Proxy::start(&single_listener_config(1, port, &old, &a));
    let client = ca.client(&[b"http/1.1"]);

    let mut open = connect(port, "a.example.com", &client);
    assert_eq!(open.peer_certificate.as_ref(), Some(&old.der));
    assert_eq!(open.get("a.example.com", "/1").backend(), Some("a"));

    ack(&proxy, &single_listener_config(2, port, &new, &a));

    for path in ["/2", "/3"] {
        let response = open.get("a.example.com", path);
        assert_eq!(
            response.status, 200,
            "{path} on the connection opened before"
        );
        assert_eq!(response.backend(), Some("a"));
    }
    // Clients without a session ticket do a full handshake and see the new certificate.
    // Several connections, so both cores are very likely to be asked.
    for i in 0..6 {
        let mut fresh = connect(port, "a.example.com", &ca.client(&[b"http/1.1"]));
        assert!(!fresh.resumed);
        assert_eq!(
            fresh.peer_certificate.as_ref(),
            Some(&new.der),
            "new connection {i} after the rotation"
        );
        assert_eq!(fresh.get("a.example.com", "/").backend(), Some("a"));
    }
    // A client holding a ticket from before the rotation may resume that session (the ticket
    // key outlives configs); rustls then reports the certificate of the original session.
    // Either way the connection must serve.
    let mut returning = connect(port, "a.example.com", &client);
    let expected = if returning.resumed { &old } else { &new };
    assert_eq!(returning.peer_certificate.as_ref(), Some(&expected.der));
    assert_eq!(returning.get("a.example.com", "/").backend(), Some("a"));
    assert_eq!(open.get("a.example.com", "/4").status, 200);
}

/// 7. Plain HTTP sent to an HTTPS port gets no HTTP answer and counts as a handshake error.
#[test]
fn plain_http_on_an_https_port_is_not_answered() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let proxy = Proxy::start(&single_listener_config(1, port, &cert, &a));
    let before = proxy.metric("portcullis_tls_handshake_errors_total", "");

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    let closed = loop {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    assert!(
        !received.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(closed, "the connection stayed open; received {received:?}");
    assert_eq!(a.request_count(), 0, "nothing may reach the backend");

    assert!(
        eventually(Duration::from_secs(2), || {
            proxy.metric("portcullis_tls_handshake_errors_total", "") > before
        }),
        "portcullis_tls_handshake_errors_total did not increase"
    );

    let mut tls = connect(port, "a.example.com", &ca.client(&[b"http/1.1"]));
    assert_eq!(tls.get("a.example.com", "/").backend(), Some("a"));
}

/// 8. A certificate whose key does not match is refused, and the old one keeps serving.
#[test]
fn mismatched_certificate_and_key_is_nacked() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let other = ca.leaf(&["a.example.com"]);
    let a = Backend::start("a");
    let port = free_port();
    let proxy = Proxy::start(&single_listener_config(1, port, &cert, &a));

    let mismatched = Leaf {
        cert_pem: other.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
        der: other.der.clone(),
    };
    match proxy.push(&single_listener_config(2, port, &mismatched, &a)) {
        Reply::Nack { reason } => assert!(
            reason.contains("certificate"),
            "the NACK should name the certificate: {reason}"
        ),
        Reply::Ack { generation } => panic!("a mismatched key was accepted at {generation}"),
    }
    // An RSA key with an ECDSA certificate is refused too.
    let rsa = ca.rsa_leaf(&["a.example.com"]);
    let cross = Leaf {
        cert_pem: cert.cert_pem.clone(),
        key_pem: rsa.key_pem.clone(),
        der: cert.der.clone(),
    };
    match proxy.push(&single_listener_config(2, port, &cross, &a)) {
        Reply::Nack { reason } => assert!(reason.contains("certificate"), "{reason}"),
        Reply::Ack { generation } => {
            panic!("an RSA key for an ECDSA cert was accepted at {generation}")
        }
    }
    assert_eq!(proxy.metric("portcullis_config_generation", ""), 1.0);

    // Fresh client configs (no session tickets): every handshake is a full one.
    for _ in 0..4 {
        let mut connection = connect(port, "a.example.com", &ca.client(&[b"http/1.1"]));
        assert!(!connection.resumed);
        assert_eq!(connection.peer_certificate.as_ref(), Some(&cert.der));
        assert_eq!(connection.get("a.example.com", "/").backend(), Some("a"));
    }
    // The refused generation can still be used by a valid config.
    ack(&proxy, &single_listener_config(2, port, &other, &a));
    let fresh = connect(port, "a.example.com", &ca.client(&[b"http/1.1"]));
    assert_eq!(fresh.peer_certificate.as_ref(), Some(&other.der));
}

/// A TLS response checks the client's minimum read rate like a plaintext one: what the
/// kernel and the session buffered but the client never acknowledged buys no time, so a
/// client that stops reading is reset soon after the grace period. At 2 KiB/s, the sealed
/// records of one 16 KiB read from the backend alone would buy 8 s, and the kernel's send
/// buffer more. (The check asks the socket only when its last count says the client fell
/// behind: here it must.)
#[test]
fn a_tls_client_that_stops_reading_is_reset_once_the_grace_is_over() {
    let ca = Ca::new();
    let cert = ca.leaf(&["a.example.com"]);
    let backend = Backend::start("b");
    let port = free_port();
    let mut config = single_listener_config(1, port, &cert, &backend);
    config.settings.min_data_rate_bytes_per_s = 2 * 1024;
    config.settings.min_data_rate_grace_ms = 1_000;
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);

    let mut tcp = support::client::connect_with_receive_buffer(port, 1024);
    tcp.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let name = ServerName::try_from("a.example.com").unwrap();
    let mut tls = rustls::ClientConnection::new(ca.client(&[b"http/1.1"]), name).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    let mut stream = rustls::StreamOwned::new(tls, tcp);
    stream
        .write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .unwrap();
    // The client never reads: the reset shows in the socket's pending error (a read would
    // earn the client time once it began). Cut off about 2 s after asking; 16 KiB of sealed
    // records counted as delivered would buy 8 s more.
    let asked = Instant::now();
    let error = loop {
        if let Some(error) = stream.get_ref().take_error().unwrap() {
            break error;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(7),
            "not cut off after {:?}",
            asked.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}
