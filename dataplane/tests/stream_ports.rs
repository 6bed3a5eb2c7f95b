//! Ports that carry whole connections, over real sockets. TLS ports (TLSRoute): routing by
//! SNI, passthrough to a backend that holds the certificate, termination with the listener's
//! certificate, both modes on one port, half-close, weighted backends, refusals, and a spliced
//! connection that outlives a config swap only while the new config still routes it. TCP ports (TCPRoute): the first route takes every
//! connection, bytes pass unchanged both ways, half-close.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_api::CompiledConfig;
use portcullis_api::config::{Listener, PortProtocol, StreamRoute};
use portcullis_api::frame::Reply;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};
use support::certs::{Ca, Leaf};
use support::config::{backend_tls, stream_listener, stream_route};
use support::{ConfigBuilder, Proxy, free_port};

// ---------------------------------------------------------------------------------------------
// A line echo backend, plaintext or TLS
// ---------------------------------------------------------------------------------------------

/// Answers every line with "<name> sni=<server name or -> <line>"; once the client has
/// finished sending, answers "<name> done <bytes received>" and closes. With a certificate it
/// terminates TLS itself (the passthrough case); without, it reads the proxy's plaintext.
struct EchoBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl EchoBackend {
    fn start(name: &'static str, certificate: Option<&Leaf>) -> EchoBackend {
        let tls = certificate.map(server_config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => echo_lines(&mut { stream }, name, "-"),
                    Some(config) => {
                        let connection = ServerConnection::new(config).unwrap();
                        let mut tls = StreamOwned::new(connection, stream);
                        while tls.conn.is_handshaking() {
                            if tls.conn.complete_io(&mut tls.sock).is_err() {
                                return;
                            }
                        }
                        let sni = tls.conn.server_name().unwrap_or("-").to_string();
                        echo_lines(&mut tls, name, &sni);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        EchoBackend { addr, connections }
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn echo_lines<S: Read + Write>(stream: &mut S, name: &str, sni: &str) {
    let mut pending = Vec::new();
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n;
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let reply = format!("{name} sni={sni} {}", String::from_utf8_lossy(&line));
            if stream
                .write_all(reply.as_bytes())
                .and_then(|_| stream.flush())
                .is_err()
            {
                return;
            }
        }
    }
    let _ = stream.write_all(format!("{name} done {total}\n").as_bytes());
    let _ = stream.flush();
}

fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// A TLS client speaking the echo protocol
// ---------------------------------------------------------------------------------------------

struct LineClient {
    tls: StreamOwned<ClientConnection, TcpStream>,
}

impl LineClient {
    /// Connects to the proxy's `port` and completes the handshake with `server_name` (a DNS
    /// name, or an IP address for a hello without SNI).
    fn connect(port: u16, server_name: &str, config: &Arc<ClientConfig>) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let connection = ClientConnection::new(config.clone(), name).unwrap();
        let mut tls = StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self { tls })
    }

    /// Sends `line` and returns the backend's answer, newline removed.
    fn ask(&mut self, line: &str) -> String {
        self.tls.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.tls.flush().unwrap();
        self.read_line()
    }

    fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.tls.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) => panic!("reading a line: {e} (so far {line:?})"),
            }
        }
        String::from_utf8(line).unwrap()
    }

    /// Closes our sending half (close_notify) and reads what arrives until the end.
    fn finish(mut self) -> String {
        self.tls.conn.send_close_notify();
        self.tls.flush().unwrap();
        let mut rest = Vec::new();
        match self.tls.read_to_end(&mut rest) {
            Ok(_) => {}
            // A peer that closes TCP right after its close_notify is fine.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("reading to the end: {e}"),
        }
        String::from_utf8(rest).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Config helpers
// ---------------------------------------------------------------------------------------------

fn tls_listener(
    name: &str,
    hostname: Option<&str>,
    certificates: &[&str],
    routes: Vec<StreamRoute>,
) -> Listener {
    Listener {
        name: name.into(),
        hostname: hostname.map(Into::into),
        certificates: certificates.iter().map(|c| c.to_string()).collect(),
        routes: vec![],
        passthrough: certificates.is_empty(),
        stream_routes: routes,
    }
}

/// A proxy with one TLS port: `db.example.com` passes through to a TLS echo backend holding
/// its certificate, `tls.example.com` is terminated with the listener's certificate and goes
/// to a plaintext echo backend.
struct MixedSetup {
    ca: Ca,
    port: u16,
    proxy: Proxy,
    passthrough_backend: EchoBackend,
    plain_backend: EchoBackend,
    config: CompiledConfig,
}

fn mixed_setup() -> MixedSetup {
    let ca = Ca::new();
    let backend_cert = ca.leaf(&["db.example.com"]);
    let gateway_cert = ca.leaf(&["tls.example.com"]);
    let passthrough_backend = EchoBackend::start("db", Some(&backend_cert));
    let plain_backend = EchoBackend::start("plain", None);
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/db:8443", &[&passthrough_backend.endpoint()])
        .backend_at("ns/plain:3000", &[&plain_backend.endpoint()])
        .certificate(
            "ns/gateway-cert",
            &gateway_cert.cert_pem,
            &gateway_cert.key_pem,
        )
        .port(
            port,
            PortProtocol::Tls,
            vec![
                tls_listener(
                    "passthrough",
                    Some("*.example.com"),
                    &[],
                    vec![stream_route(
                        "ns/db",
                        &["db.example.com"],
                        &[("ns/db:8443", 1)],
                    )],
                ),
                tls_listener(
                    "terminate",
                    Some("tls.example.com"),
                    &["ns/gateway-cert"],
                    vec![stream_route("ns/plain", &[], &[("ns/plain:3000", 1)])],
                ),
            ],
        )
        .build();
    let proxy = Proxy::start(&config);
    MixedSetup {
        ca,
        port,
        proxy,
        passthrough_backend,
        plain_backend,
        config,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn passthrough_reaches_the_backend_that_holds_the_certificate() {
    let setup = mixed_setup();
    let client_config = setup.ca.client(&[]);
    // The proxy holds no certificate for db.example.com: the handshake can only succeed
    // end to end with the backend.
    let mut client = LineClient::connect(setup.port, "db.example.com", &client_config).unwrap();
    assert_eq!(client.ask("ping"), "db sni=db.example.com ping");
    assert_eq!(client.ask("again"), "db sni=db.example.com again");
    // Half-close: the backend sees the end of our data and still answers.
    assert_eq!(client.finish(), "db done 11\n");
    assert_eq!(setup.plain_backend.connection_count(), 0);
}

#[test]
fn termination_hands_the_backend_plaintext_and_half_closes() {
    let setup = mixed_setup();
    let client_config = setup.ca.client(&[]);
    let mut client = LineClient::connect(setup.port, "tls.example.com", &client_config).unwrap();
    // No ALPN on a TLS port: whatever runs inside is the backend's business.
    assert_eq!(client.tls.conn.alpn_protocol(), None);
    assert_eq!(client.ask("hello"), "plain sni=- hello");
    assert_eq!(client.finish(), "plain done 6\n");
    assert_eq!(setup.passthrough_backend.connection_count(), 0);
}

#[test]
fn termination_re_encrypts_to_a_backend_with_a_tls_policy() {
    let ca = Ca::new();
    let gateway_cert = ca.leaf(&["tls.example.com", "other.example.com"]);
    let secure = EchoBackend::start("secure", Some(&ca.leaf(&["secure.internal"])));
    let impostor = EchoBackend::start("impostor", Some(&Ca::new().leaf(&["secure.internal"])));
    let port = free_port();
    let policy = backend_tls("secure.internal", &ca.pem, vec![]);
    let config = ConfigBuilder::new(1)
        .backend_at("ns/secure:8443", &[&secure.endpoint()])
        .backend_tls("ns/secure:8443", policy.clone())
        .backend_at("ns/impostor:8443", &[&impostor.endpoint()])
        .backend_tls("ns/impostor:8443", policy)
        .certificate(
            "ns/gateway-cert",
            &gateway_cert.cert_pem,
            &gateway_cert.key_pem,
        )
        .port(
            port,
            PortProtocol::Tls,
            vec![
                tls_listener(
                    "secure",
                    Some("tls.example.com"),
                    &["ns/gateway-cert"],
                    vec![stream_route("ns/secure", &[], &[("ns/secure:8443", 1)])],
                ),
                tls_listener(
                    "impostor",
                    Some("other.example.com"),
                    &["ns/gateway-cert"],
                    vec![stream_route("ns/impostor", &[], &[("ns/impostor:8443", 1)])],
                ),
            ],
        )
        .build();
    let proxy = Proxy::start(&config);
    let client_config = ca.client(&[]);

    // The backend terminates a second TLS session whose SNI is the policy's hostname.
    let mut client = LineClient::connect(port, "tls.example.com", &client_config).unwrap();
    assert_eq!(client.ask("hello"), "secure sni=secure.internal hello");
    assert_eq!(client.finish(), "secure done 6\n");

    // A backend the policy's CA did not sign never gets a byte: the client's connection ends.
    let mut refused = LineClient::connect(port, "other.example.com", &client_config).unwrap();
    let _ = refused
        .tls
        .write_all(b"secret\n")
        .and_then(|_| refused.tls.flush());
    let mut rest = Vec::new();
    let _ = refused.tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        proxy.stderr().contains("TLS to backend failed"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn connections_no_listener_or_route_serves_are_refused() {
    let setup = mixed_setup();
    let client_config = setup.ca.client(&[]);
    // Matches the passthrough listener's wildcard but none of its routes.
    let refused = LineClient::connect(setup.port, "other.example.com", &client_config);
    assert!(refused.is_err(), "a name without a route must be refused");
    // No SNI at all: no listener without a hostname on this port.
    let refused = LineClient::connect(setup.port, "127.0.0.1", &client_config);
    assert!(refused.is_err(), "a hello without SNI must be refused");
    // Not TLS at all.
    let mut raw = TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(answer.is_empty(), "plain HTTP on a TLS port got {answer:?}");
    assert_eq!(setup.passthrough_backend.connection_count(), 0);
    assert_eq!(setup.plain_backend.connection_count(), 0);
    // The port keeps serving.
    let mut client = LineClient::connect(setup.port, "db.example.com", &client_config).unwrap();
    assert_eq!(client.ask("still"), "db sni=db.example.com still");
}

#[test]
fn config_swaps_keep_spliced_connections_they_still_allow_and_cut_the_others() {
    let setup = mixed_setup();
    let client_config = setup.ca.client(&[]);
    let mut passthrough =
        LineClient::connect(setup.port, "db.example.com", &client_config).unwrap();
    let mut terminated =
        LineClient::connect(setup.port, "tls.example.com", &client_config).unwrap();
    assert_eq!(passthrough.ask("before"), "db sni=db.example.com before");

    // A swap that still routes both (here: a new generation with one more endpoint) leaves
    // them alone.
    let mut next = setup.config.clone();
    next.generation = 2;
    next.backends[0]
        .endpoints
        .push("127.0.0.1:9".parse().unwrap());
    assert_eq!(setup.proxy.push(&next), Reply::Ack { generation: 2 });
    assert_eq!(passthrough.ask("after"), "db sni=db.example.com after");
    assert_eq!(terminated.ask("after"), "plain sni=- after");

    // One that drops the db route (as when its ReferenceGrant is revoked) cuts its open
    // connection with a reset, and new ones are refused; the other route is untouched.
    let mut next = setup.config.clone();
    next.generation = 3;
    next.ports[0].listeners[0].stream_routes.clear();
    assert_eq!(setup.proxy.push(&next), Reply::Ack { generation: 3 });
    let mut rest = [0u8; 64];
    let outcome = passthrough.tls.read(&mut rest);
    assert!(
        matches!(&outcome, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "a revoked connection is reset: {outcome:?}"
    );
    assert_eq!(terminated.ask("still"), "plain sni=- still");
    assert!(
        LineClient::connect(setup.port, "db.example.com", &client_config).is_err(),
        "new connections follow the new config"
    );
}

#[test]
fn weighted_backends_share_connections_and_dead_ones_are_not_fatal() {
    let ca = Ca::new();
    let cert = ca.leaf(&["db.example.com"]);
    let heavy = EchoBackend::start("heavy", Some(&cert));
    let light = EchoBackend::start("light", Some(&cert));
    let port = free_port();
    let closed = format!("127.0.0.1:{}", free_port());
    let config = ConfigBuilder::new(1)
        .backend_at("ns/heavy:443", &[&heavy.endpoint()])
        .backend_at("ns/light:443", &[&light.endpoint()])
        .backend_at("ns/closed:443", &[&closed])
        .port(
            port,
            PortProtocol::Tls,
            vec![tls_listener(
                "tls",
                None,
                &[],
                vec![
                    stream_route(
                        "ns/db",
                        &["db.example.com"],
                        &[("ns/heavy:443", 3), ("ns/light:443", 1)],
                    ),
                    stream_route("ns/dead", &["dead.example.com"], &[("ns/closed:443", 1)]),
                ],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);
    let client_config = ca.client(&[]);
    let total = 200;
    for _ in 0..total {
        let client = LineClient::connect(port, "db.example.com", &client_config).unwrap();
        drop(client);
    }
    // Every connection reached a backend; heavy's share is 3/4 (binomial sd ~6 of 150).
    std::thread::sleep(Duration::from_millis(200));
    let (h, l) = (heavy.connection_count(), light.connection_count());
    assert_eq!(h + l, total);
    assert!((120..=180).contains(&h), "heavy got {h} of {total}");

    // A backend that refuses the connection costs the client its connection, nothing more.
    assert!(LineClient::connect(port, "dead.example.com", &client_config).is_err());
    let mut client = LineClient::connect(port, "db.example.com", &client_config).unwrap();
    assert!(client.ask("ok").ends_with("sni=db.example.com ok"));
}

#[test]
fn a_tcp_port_forwards_bytes_unchanged_to_its_first_route() {
    let first = EchoBackend::start("first", None);
    let second = EchoBackend::start("second", None);
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/first:3000", &[&first.endpoint()])
        .backend_at("ns/second:3000", &[&second.endpoint()])
        .port(
            port,
            PortProtocol::Tcp,
            vec![stream_listener(
                "tcp",
                vec![
                    stream_route("ns/older", &[], &[("ns/first:3000", 1)]),
                    stream_route("ns/newer", &[], &[("ns/second:3000", 1)]),
                ],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);

    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Bytes that would be a malformed HTTP request pass untouched: nothing parses them.
    client.write_all(b"GET /\x00 HTTP/9\r\nping\n").unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.iter().filter(|b| **b == b'\n').count() < 2 {
        assert_eq!(client.read(&mut byte).unwrap(), 1, "got {answer:?}");
        answer.push(byte[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "first sni=- GET /\u{0} HTTP/9\r\nfirst sni=- ping\n"
    );
    // Half-close: our end of data reaches the backend, whose last words still reach us.
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    client.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "first done 20\n");
    assert_eq!(
        second.connection_count(),
        0,
        "only the oldest route takes connections"
    );
}

/// A TCP port in front of a backend listening at `backend` (one route, `ns/r`).
fn tcp_proxy(
    backend: &str,
    settings: impl FnOnce(&mut portcullis_api::config::ProxySettings),
) -> (Proxy, u16) {
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/b:1", &[backend])
        .port(
            port,
            PortProtocol::Tcp,
            vec![stream_listener(
                "tcp",
                vec![stream_route("ns/r", &[], &[("ns/b:1", 1)])],
            )],
        )
        .settings(settings)
        .build();
    (Proxy::start(&config), port)
}

#[test]
fn a_reset_on_one_side_reaches_the_other_as_a_reset() {
    // A backend that reads a little and then resets its connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 16];
            let _ = stream.read(&mut buf);
            let socket = socket2::SockRef::from(&stream);
            socket.set_linger(Some(Duration::ZERO)).unwrap();
            drop(stream);
        }
    });
    let (proxy, port) = tcp_proxy(&addr, |_| {});
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 16];
    let outcome = client.read(&mut buf);
    assert!(
        matches!(&outcome, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "a cut-off stream must not look complete: {outcome:?}"
    );
    // Counted once on its route, as spliced.
    assert_eq!(
        proxy.metric(
            "portcullis_requests_total",
            "route=\"ns/r\",status_class=\"2xx\""
        ),
        1.0
    );
}

#[test]
fn idle_streams_slow_hellos_and_oversized_hellos_are_closed() {
    let backend = EchoBackend::start("echo", None);
    let (proxy, port) = tcp_proxy(&backend.endpoint(), |s| {
        s.stream_idle_timeout_ms = 300;
        s.header_read_timeout_ms = 300;
    });
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(b"one\n").unwrap();
    let mut answer = [0u8; 64];
    let n = idle.read(&mut answer).unwrap();
    assert_eq!(&answer[..n], b"echo sni=- one\n");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    drop(proxy);

    // On a TLS port the hello has the header-read timeout, and a bounded size.
    let ca = Ca::new();
    let cert = ca.leaf(&["db.example.com"]);
    let tls_backend = EchoBackend::start("db", Some(&cert));
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/db:1", &[&tls_backend.endpoint()])
        .port(
            port,
            PortProtocol::Tls,
            vec![tls_listener(
                "tls",
                None,
                &[],
                vec![stream_route("ns/db", &[], &[("ns/db:1", 1)])],
            )],
        )
        .settings(|s| s.header_read_timeout_ms = 300)
        .build();
    let _proxy = Proxy::start(&config);
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(&[22, 3, 1, 0, 200, 1]).unwrap(); // a hello that never completes
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut Vec::new());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "slow hello held"
    );

    let mut huge = TcpStream::connect(("127.0.0.1", port)).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A record sequence that keeps announcing more hello, beyond the 16 KiB bound.
    let mut records = vec![22, 3, 1, 0, 4, 1, 0, 0x3f, 0xff];
    while records.len() < 20 * 1024 {
        records.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
    }
    let _ = huge.write_all(&records);
    let _ = huge.read_to_end(&mut Vec::new());
    assert_eq!(
        tls_backend.connection_count(),
        0,
        "nothing reached the backend"
    );
}
