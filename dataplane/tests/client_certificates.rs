//! Client certificate validation on TLS-terminating ports (the Gateway's `tls.frontend`), over
//! real sockets: AllowValidOnly refuses clients without a certificate the port's CA issued,
//! AllowInsecureFallback asks but lets everyone through, each port trusts its own CA, ports
//! without validation ask for nothing, config swaps add and remove the requirement, sessions
//! resumed from elsewhere do not skip it, and TLS ports validate on terminating listeners only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{
    BackendTarget, ClientValidationMode, Listener, PortProtocol, StreamRoute, WeightedBackend,
};
use portcullis_api::frame::Reply;
use rustls::ClientConfig;
use support::certs::{Ca, Leaf};
use support::client_auth::{client_with_certificate, client_with_version, client_with_wrong_key};
use support::config::{listener, route, rule, to};
use support::tls_backend::TlsBackend;
use support::{Backend, Client, ConfigBuilder, Proxy, Response, free_port};

use ClientValidationMode::{AllowInsecureFallback, AllowValidOnly};

const HOST: &str = "a.example.com";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The proxy's server certificate authority, and the two client certificate authorities.
struct Pki {
    server_ca: Ca,
    server_leaf: Leaf,
    client_ca: Ca,
    other_ca: Ca,
}

fn pki() -> Pki {
    let server_ca = Ca::new();
    let server_leaf = server_ca.leaf(&[HOST, "tls.example.com"]);
    Pki {
        server_ca,
        server_leaf,
        client_ca: Ca::new(),
        other_ca: Ca::new(),
    }
}

/// An HTTPS listener (any hostname) whose every request goes to `ns/b:80`.
fn https_listener(name: &str) -> Listener {
    listener(
        name,
        None,
        &["ns/cert"],
        vec![route(
            &format!("ns/{name}"),
            &[],
            vec![rule(vec![], vec![to("ns/b:80", 1)])],
        )],
    )
}

/// A config with the server certificate, backend `ns/b:80` and one HTTPS port per entry of
/// `ports`: (port, client CA and mode, or None for no validation).
fn https_config(
    generation: u64,
    pki: &Pki,
    backend: &Backend,
    ports: &[(u16, Option<(&Ca, ClientValidationMode)>)],
) -> CompiledConfig {
    let mut builder = ConfigBuilder::new(generation)
        .certificate(
            "ns/cert",
            &pki.server_leaf.cert_pem,
            &pki.server_leaf.key_pem,
        )
        .backend("ns/b:80", &[backend]);
    for (i, (port, validation)) in ports.iter().enumerate() {
        builder = builder.port(
            *port,
            PortProtocol::Https,
            vec![https_listener(&format!("https-{i}"))],
        );
        if let Some((ca, mode)) = validation {
            builder = builder.client_validation(*port, &ca.pem, *mode);
        }
    }
    builder.build()
}

/// Handshakes and sends one GET; any failure (handshake, or the alert that ends a TLS 1.3
/// handshake the server refused after the client considered it complete) as its Debug text.
fn attempt(port: u16, config: &Arc<ClientConfig>) -> Result<Response, String> {
    attempt_with(port, HOST, config).map(|(response, _)| response)
}

/// [`attempt`] with a server name; also says whether the session was resumed.
fn attempt_with(
    port: u16,
    server_name: &str,
    config: &Arc<ClientConfig>,
) -> Result<(Response, bool), String> {
    let mut client =
        Client::connect_tls(port, server_name, config.clone()).map_err(|e| format!("{e:?}"))?;
    client
        .send(format!("GET /check HTTP/1.1\r\nHost: {server_name}\r\n\r\n").as_bytes())
        .map_err(|e| format!("{e:?}"))?;
    let response = client.read_response(false).map_err(|e| format!("{e:?}"))?;
    Ok((response, client.resumed))
}

#[track_caller]
fn assert_served(port: u16, config: &Arc<ClientConfig>, what: &str) {
    match attempt(port, config) {
        Ok(response) => assert_eq!(response.status, 200, "{what}: {}", response.body_text()),
        Err(e) => panic!("{what}: expected 200, the connection failed: {e}"),
    }
}

/// Whether a failed [`attempt`] was the server refusing the handshake: a fatal alert, or, over
/// TLS 1.3, where the client sends its request right behind its certificate, the reset of a
/// server that closed with that request unread (the reset can overtake the alert). A timeout
/// is no refusal.
fn is_refusal(error: &str) -> bool {
    error.contains("AlertReceived") || error.contains("ConnectionReset")
}

/// The server refused the client (not a timeout, not a served request).
#[track_caller]
fn assert_refused(port: u16, config: &Arc<ClientConfig>, what: &str) {
    match attempt(port, config) {
        Ok(response) => panic!(
            "{what}: expected a refused handshake, got {}",
            response.status
        ),
        Err(e) => assert!(is_refusal(&e), "{what}: expected a fatal alert, got {e}"),
    }
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

/// AllowValidOnly: only a client holding a current client certificate from the port's CA, and
/// its key, gets through, over TLS 1.3 and TLS 1.2; the others fail the handshake.
#[test]
fn allow_valid_only_admits_only_clients_the_ca_issued() {
    let pki = pki();
    let backend = Backend::start("b");
    let port = free_port();
    let proxy = Proxy::start(&https_config(
        1,
        &pki,
        &backend,
        &[(port, Some((&pki.client_ca, AllowValidOnly)))],
    ));
    let server_ca = &pki.server_ca.der;
    let valid = pki.client_ca.client_leaf("valid client");
    let errors_before = proxy.metric("portcullis_tls_handshake_errors_total", "");

    let (client, asked) = client_with_certificate(server_ca, Some(&valid));
    assert_served(port, &client, "a certificate from the port's CA");
    assert!(asked.was_asked());
    assert_eq!(
        asked.hinted_authorities(),
        1,
        "the port's CA is named as a hint"
    );
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let what = format!("{version:?}, valid certificate");
        assert_served(
            port,
            &client_with_version(server_ca, Some(&valid), version),
            &what,
        );
        let what = format!("{version:?}, no certificate");
        assert_refused(port, &client_with_version(server_ca, None, version), &what);
    }

    let other = pki.other_ca.client_leaf("other client");
    let refused = [
        ("another CA's certificate", Some(&other)),
        ("no certificate", None),
        (
            "an expired certificate",
            Some(&pki.client_ca.expired_client_leaf("expired client")),
        ),
        (
            "a certificate for servers only",
            Some(&pki.client_ca.server_only_leaf("server")),
        ),
    ];
    for (what, certificate) in refused {
        let (client, asked) = client_with_certificate(server_ca, certificate);
        assert_refused(port, &client, what);
        assert!(asked.was_asked(), "{what}");
    }
    // The certificate is valid, but the client does not hold its key.
    let impostor = client_with_wrong_key(server_ca, &valid, &other.key_pem);
    assert_refused(
        port,
        &impostor,
        "a valid certificate signed for with another key",
    );

    assert_eq!(
        backend.request_count(),
        3,
        "only the valid clients reached the backend"
    );
    assert!(
        eventually(Duration::from_secs(2), || {
            proxy.metric("portcullis_tls_handshake_errors_total", "") >= errors_before + 7.0
        }),
        "seven refused handshakes count as handshake errors"
    );
}

/// Two HTTPS ports trusting different CAs: each admits only its own CA's clients.
#[test]
fn each_port_trusts_only_its_own_ca() {
    let pki = pki();
    let backend = Backend::start("b");
    let (port_a, port_b) = (free_port(), free_port());
    let _proxy = Proxy::start(&https_config(
        1,
        &pki,
        &backend,
        &[
            (port_a, Some((&pki.client_ca, AllowValidOnly))),
            (port_b, Some((&pki.other_ca, AllowValidOnly))),
        ],
    ));
    let server_ca = &pki.server_ca.der;
    let (client_a, _) =
        client_with_certificate(server_ca, Some(&pki.client_ca.client_leaf("client a")));
    let (client_b, _) =
        client_with_certificate(server_ca, Some(&pki.other_ca.client_leaf("client b")));

    assert_served(port_a, &client_a, "CA A's client on port A");
    assert_served(port_b, &client_b, "CA B's client on port B");
    assert_refused(port_a, &client_b, "CA B's client on port A");
    assert_refused(port_b, &client_a, "CA A's client on port B");
    // Twice over, so each client has had a chance to resume a session on its own port first.
    assert_refused(port_b, &client_a, "CA A's client on port B, again");
    assert_refused(port_a, &client_b, "CA B's client on port A, again");
}

/// AllowInsecureFallback: every client is asked and every client is served, whatever it
/// presents; untrusted certificates are counted. A client that cannot sign with the key of the
/// certificate it presents is still refused: the fallback trusts, it does not skip the proof.
#[test]
fn insecure_fallback_asks_but_lets_every_client_through() {
    let pki = pki();
    let backend = Backend::start("b");
    let port = free_port();
    let proxy = Proxy::start(&https_config(
        1,
        &pki,
        &backend,
        &[(port, Some((&pki.client_ca, AllowInsecureFallback)))],
    ));
    let server_ca = &pki.server_ca.der;
    let metric = "portcullis_tls_client_certificates_unverified_total";
    let unverified_before = proxy.metric(metric, "");
    let valid = pki.client_ca.client_leaf("valid client");
    let other = pki.other_ca.client_leaf("other client");
    let expired = pki.client_ca.expired_client_leaf("expired client");

    for (what, certificate) in [
        ("a certificate from the port's CA", Some(&valid)),
        ("another CA's certificate", Some(&other)),
        ("an expired certificate", Some(&expired)),
        ("no certificate", None),
    ] {
        let (client, asked) = client_with_certificate(server_ca, certificate);
        assert_served(port, &client, what);
        assert!(asked.was_asked(), "{what}: the port asks every client");
        assert_eq!(asked.hinted_authorities(), 1, "{what}");
    }
    let tls12 = client_with_version(server_ca, Some(&other), &rustls::version::TLS12);
    assert_served(port, &tls12, "TLS 1.2, another CA's certificate");
    assert_eq!(backend.request_count(), 5);
    assert!(
        eventually(Duration::from_secs(2), || {
            proxy.metric(metric, "") == unverified_before + 3.0
        }),
        "three certificates did not verify (other CA twice, expired once): {} counted",
        proxy.metric(metric, "") - unverified_before
    );

    let impostor = client_with_wrong_key(server_ca, &other, &valid.key_pem);
    assert_refused(port, &impostor, "a certificate signed for with another key");
    let impostor = client_with_wrong_key(server_ca, &valid, &other.key_pem);
    assert_refused(
        port,
        &impostor,
        "a valid certificate signed for with another key",
    );
}

/// A port without client validation sends no CertificateRequest at all.
#[test]
fn ports_without_validation_ask_for_no_certificate() {
    let pki = pki();
    let backend = Backend::start("b");
    let (plain, validated) = (free_port(), free_port());
    let _proxy = Proxy::start(&https_config(
        1,
        &pki,
        &backend,
        &[
            (plain, None),
            (validated, Some((&pki.client_ca, AllowValidOnly))),
        ],
    ));
    let valid = pki.client_ca.client_leaf("valid client");
    for certificate in [Some(&valid), None] {
        let (client, asked) = client_with_certificate(&pki.server_ca.der, certificate);
        assert_served(plain, &client, "port without validation");
        assert!(
            !asked.was_asked(),
            "a port without validation asked for a certificate"
        );
    }
    // The same client is asked on the port next to it: the recording works.
    let (client, asked) = client_with_certificate(&pki.server_ca.der, Some(&valid));
    assert_served(validated, &client, "port with validation");
    assert!(asked.was_asked());
}

/// A swap that adds validation makes new connections need a certificate; one that removes it
/// stops asking.
#[test]
fn config_swaps_add_and_remove_validation() {
    let pki = pki();
    let backend = Backend::start("b");
    let port = free_port();
    let proxy = Proxy::start(&https_config(1, &pki, &backend, &[(port, None)]));
    let server_ca = &pki.server_ca.der;
    let valid = pki.client_ca.client_leaf("valid client");
    let (anonymous, anonymous_asked) = client_with_certificate(server_ca, None);
    assert_served(port, &anonymous, "generation 1, no validation");
    assert!(!anonymous_asked.was_asked());
    // Hold a connection from before the swap: its handshake is done, so it stays served.
    let mut established = Client::connect_tls(port, HOST, anonymous.clone()).unwrap();
    assert_eq!(established.get(HOST, "/before").status, 200);

    let validated = [(port, Some((&pki.client_ca, AllowValidOnly)))];
    ack(&proxy, &https_config(2, &pki, &backend, &validated));
    // The anonymous client holds a ticket from generation 1: it must not get around the CA.
    assert_refused(port, &anonymous, "generation 2, no certificate");
    let (other, _) =
        client_with_certificate(server_ca, Some(&pki.other_ca.client_leaf("other client")));
    assert_refused(port, &other, "generation 2, another CA's certificate");
    let (client, asked) = client_with_certificate(server_ca, Some(&valid));
    assert_served(port, &client, "generation 2, valid certificate");
    assert!(asked.was_asked());
    assert_eq!(established.get(HOST, "/after").status, 200);

    ack(&proxy, &https_config(3, &pki, &backend, &[(port, None)]));
    let (anonymous, anonymous_asked) = client_with_certificate(server_ca, None);
    assert_served(port, &anonymous, "generation 3, no certificate");
    assert!(
        !anonymous_asked.was_asked(),
        "generation 3 asks for nothing"
    );
}

/// Tickets are sealed with one key for every port, and rustls does not authenticate the client
/// again on resumption: a session from a port without validation must not open a port with
/// validation, and a port with validation resumes nothing, over TLS 1.3 and TLS 1.2.
#[test]
fn resumed_sessions_do_not_skip_validation() {
    let pki = pki();
    let backend = Backend::start("b");
    let (open, validated) = (free_port(), free_port());
    let _proxy = Proxy::start(&https_config(
        1,
        &pki,
        &backend,
        &[
            (open, None),
            (validated, Some((&pki.client_ca, AllowValidOnly))),
        ],
    ));
    let server_ca = &pki.server_ca.der;
    let valid = pki.client_ca.client_leaf("valid client");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let anonymous = client_with_version(server_ca, None, version);
        // The test means something only if this client does resume on the open port.
        let resumed: Vec<bool> = (0..4)
            .map(|_| attempt_with(open, HOST, &anonymous).unwrap().1)
            .collect();
        assert!(
            resumed[1..].iter().any(|r| *r),
            "{version:?}: the open port should resume sessions: {resumed:?}"
        );
        let what = format!("{version:?}: a session from the open port, no certificate");
        assert_refused(validated, &anonymous, &what);

        let client = client_with_version(server_ca, Some(&valid), version);
        for _ in 0..3 {
            let (response, resumed) = attempt_with(validated, HOST, &client).unwrap();
            assert_eq!(response.status, 200);
            assert!(
                !resumed,
                "{version:?}: the validated port resumed a session"
            );
        }
    }
}

/// A TLS port validates clients on its terminating listener; its passthrough listener hands
/// the ClientHello to the backend untouched, so the proxy asks nothing there.
#[test]
fn tls_ports_validate_on_terminating_listeners_only() {
    let pki = pki();
    let backend = Backend::start("plain");
    let passthrough_leaf = pki.server_ca.leaf(&["db.example.com"]);
    let passthrough_backend = TlsBackend::start("db", &passthrough_leaf);
    let port = free_port();
    let stream_listener =
        |name: &str, hostname: &str, certificates: &[&str], backend: &str| Listener {
            name: name.into(),
            hostname: Some(hostname.into()),
            certificates: certificates.iter().map(|c| c.to_string()).collect(),
            routes: vec![],
            passthrough: certificates.is_empty(),
            stream_routes: vec![StreamRoute {
                name: format!("ns/{name}"),
                hostnames: vec![],
                backends: vec![WeightedBackend {
                    weight: 1,
                    target: BackendTarget::Backend(backend.into()),
                    filters: vec![],
                }],
            }],
        };
    let config = ConfigBuilder::new(1)
        .certificate(
            "ns/cert",
            &pki.server_leaf.cert_pem,
            &pki.server_leaf.key_pem,
        )
        .backend("ns/plain:80", &[&backend])
        .backend_at("ns/db:443", &[&passthrough_backend.addr.to_string()])
        .port(
            port,
            PortProtocol::Tls,
            vec![
                stream_listener("terminate", "tls.example.com", &["ns/cert"], "ns/plain:80"),
                stream_listener("passthrough", "db.example.com", &[], "ns/db:443"),
            ],
        )
        .client_validation(port, &pki.client_ca.pem, AllowValidOnly)
        .build();
    let _proxy = Proxy::start(&config);
    let server_ca = &pki.server_ca.der;

    // Terminated here: HTTP over the decrypted stream reaches the plaintext backend.
    let (client, asked) =
        client_with_certificate(server_ca, Some(&pki.client_ca.client_leaf("valid client")));
    let (response, _) = attempt_with(port, "tls.example.com", &client).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("plain"));
    assert!(asked.was_asked());
    let (anonymous, _) = client_with_certificate(server_ca, None);
    match attempt_with(port, "tls.example.com", &anonymous) {
        Ok((response, _)) => panic!("no certificate, terminated: served {}", response.status),
        Err(e) => assert!(is_refusal(&e), "{e}"),
    }
    assert_eq!(backend.request_count(), 1);

    // Passed through: the backend terminates TLS and asks for no certificate.
    let (anonymous, asked) = client_with_certificate(server_ca, None);
    let (response, _) = attempt_with(port, "db.example.com", &anonymous).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("db"));
    assert!(
        !asked.was_asked(),
        "the passthrough listener asked for a certificate"
    );
}
