//! TLS to backends (BackendTLSPolicy) over real sockets: the proxy sends the policy's server
//! name, verifies the backend against the policy's CA and names, answers 502 when it cannot,
//! reuses verified connections, never mixes connections made under other settings (older
//! configs, plaintext), and carries bodies, upgrades and mirror copies over TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{BackendTls, Filter, RequestMirror, SubjectAltName};
use portcullis_api::frame::Reply;
use support::backend::pattern;
use support::certs::{Ca, dns_san, uri_san};
use support::config::{backend_tls, prefix, route, rule, to};
use support::tls_backend::{
    TlsBackend, server_config, server_config_requiring_client_certificates,
};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

const SERVER_NAME: &str = "backend.internal";

/// One HTTP port whose rules send path prefix `path` to backend `name`, each backend at
/// `addr` with its own TLS settings (None: plaintext).
fn config(
    generation: u64,
    port: u16,
    backends: &[(&str, &str, SocketAddr, Option<BackendTls>)],
) -> CompiledConfig {
    let mut builder = ConfigBuilder::new(generation);
    let mut rules = Vec::new();
    for (path, name, addr, tls) in backends {
        builder = builder.backend_at(name, &[&addr.to_string()]);
        if let Some(tls) = tls {
            builder = builder.backend_tls(name, tls.clone());
        }
        rules.push(rule(vec![prefix(path)], vec![to(name, 1)]));
    }
    builder
        .http_port(port, "http", vec![route("ns/r", &[], rules)])
        .build()
}

/// A proxy sending everything to `addr` with `tls`.
fn proxy_to(addr: SocketAddr, tls: BackendTls) -> (Proxy, u16) {
    let port = free_port();
    let proxy = Proxy::start(&config(1, port, &[("/", "ns/b:443", addr, Some(tls))]));
    (proxy, port)
}

fn hostname(name: &str) -> SubjectAltName {
    SubjectAltName::Hostname(name.into())
}

fn uri(name: &str) -> SubjectAltName {
    SubjectAltName::Uri(name.into())
}

fn push(proxy: &Proxy, config: &CompiledConfig) {
    match proxy.push(config) {
        Reply::Ack { generation } => assert_eq!(generation, config.generation),
        other => panic!("config {} refused: {other:?}", config.generation),
    }
}

/// Log lines of the proxy that say TLS to a backend failed.
fn tls_failure_lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("TLS to backend failed"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_verified_backend_gets_the_server_name_and_its_connection_is_reused() {
    let ca = Ca::new();
    let backend = TlsBackend::start("secure", &ca.leaf(&[SERVER_NAME]));
    let (_proxy, port) = proxy_to(backend.addr, backend_tls(SERVER_NAME, &ca.pem, vec![]));

    let mut client = Client::connect(port);
    let first = client.get("example.com", "/first");
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(first.backend(), Some("secure"));
    assert_eq!(first.json()["path"], "/first");
    let second = client.get("example.com", "/second");
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["path"], "/second");
    assert_eq!(
        first.header("x-connection"),
        second.header("x-connection"),
        "the second request took another upstream connection"
    );

    let handshakes = backend.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert_eq!(backend.connection_count(), 1);
    assert_eq!(handshakes[0].server_name.as_deref(), Some(SERVER_NAME));
    assert_eq!(handshakes[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(backend.request_count(), 2);
}

#[test]
fn system_trust_anchors_come_from_ssl_cert_file() {
    let system_ca = Ca::new();
    let other = Ca::new();
    let trusted = TlsBackend::start("trusted", &system_ca.leaf(&[SERVER_NAME]));
    let untrusted = TlsBackend::start("untrusted", &other.leaf(&[SERVER_NAME]));
    let system = || BackendTls {
        ca_certificates_pem: String::new(),
        system_trust_anchors: true,
        ..backend_tls(SERVER_NAME, "", vec![])
    };
    let bundle =
        std::env::temp_dir().join(format!("portcullis-system-ca-{}.pem", std::process::id()));
    std::fs::write(&bundle, &system_ca.pem).unwrap();
    let port = free_port();
    let proxy = Proxy::start_with_env(
        &config(
            1,
            port,
            &[
                ("/trusted", "ns/trusted:443", trusted.addr, Some(system())),
                (
                    "/untrusted",
                    "ns/untrusted:443",
                    untrusted.addr,
                    Some(system()),
                ),
            ],
        ),
        &[("SSL_CERT_FILE", bundle.to_str().unwrap())],
    );
    std::fs::remove_file(&bundle).unwrap();

    let mut client = Client::connect(port);
    let response = client.get("example.com", "/trusted");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.backend(), Some("trusted"));
    assert_eq!(client.get("example.com", "/untrusted").status, 502);
    assert_eq!(untrusted.request_count(), 0);
    assert!(proxy.stderr().contains("loaded the system trust store"));

    // The store was read once, at the first config that needed it: a later push uses it too,
    // although the file is gone.
    let mut next = config(
        2,
        port,
        &[("/trusted", "ns/trusted:443", trusted.addr, Some(system()))],
    );
    next.backends[0].tls.as_mut().unwrap().policy = "ns/renamed".into();
    push(&proxy, &next);
    assert_eq!(
        Client::connect(port).get("example.com", "/trusted").status,
        200
    );
}

#[test]
fn a_system_trust_store_without_certificates_is_refused_with_the_config() {
    let backend = TlsBackend::start("secure", &Ca::new().leaf(&[SERVER_NAME]));
    let empty =
        std::env::temp_dir().join(format!("portcullis-empty-ca-{}.pem", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let plaintext = Backend::start("plaintext");
    let port = free_port();
    let plain = config(1, port, &[("/", "ns/b:443", plaintext.addr, None)]);
    let proxy = Proxy::start_with_env(
        &plain,
        &[
            ("SSL_CERT_FILE", empty.to_str().unwrap()),
            ("SSL_CERT_DIR", "/nonexistent"),
        ],
    );
    let system = BackendTls {
        ca_certificates_pem: String::new(),
        system_trust_anchors: true,
        ..backend_tls(SERVER_NAME, "", vec![])
    };
    let refused = config(2, port, &[("/", "ns/b:443", backend.addr, Some(system))]);
    match proxy.push(&refused) {
        Reply::Nack { reason } => {
            assert!(reason.contains("system trust store"), "{reason}")
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    std::fs::remove_file(&empty).unwrap();
    // The last good config keeps serving.
    let response = Client::connect(port).get("example.com", "/");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("plaintext"));
    assert_eq!(backend.connection_count(), 0);
}

#[test]
fn a_backend_signed_by_another_ca_is_answered_502_and_logged_once() {
    let trusted = Ca::new();
    let other = Ca::new();
    let backend = TlsBackend::start("impostor", &other.leaf(&[SERVER_NAME]));
    let (proxy, port) = proxy_to(backend.addr, backend_tls(SERVER_NAME, &trusted.pem, vec![]));

    let mut client = Client::connect(port);
    for _ in 0..3 {
        let response = client.get("example.com", "/");
        assert_eq!(response.status, 502);
        assert_ne!(response.backend(), Some("impostor"));
    }
    assert_eq!(backend.request_count(), 0);
    assert!(backend.handshakes().is_empty());
    assert!(proxy.metric("portcullis_upstream_errors_total", "kind=\"connect\"") >= 3.0);

    let lines = tls_failure_lines(&proxy);
    assert_eq!(
        lines.len(),
        1,
        "one line per policy per interval: {lines:?}"
    );
    assert!(lines[0].contains("ns/backend-tls"), "{}", lines[0]);
    // Both test CAs have the same name, so the chain fails on the issuer's signature.
    assert!(
        lines[0].contains("invalid peer certificate: BadSignature"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_certificate_for_another_name_is_answered_502() {
    let ca = Ca::new();
    let backend = TlsBackend::start("elsewhere", &ca.leaf(&["other.internal"]));
    let (proxy, port) = proxy_to(backend.addr, backend_tls(SERVER_NAME, &ca.pem, vec![]));

    let response = Client::connect(port).get("example.com", "/");
    assert_eq!(response.status, 502);
    assert_eq!(backend.request_count(), 0);
    let lines = tls_failure_lines(&proxy);
    assert!(
        lines.iter().any(|l| l.contains("not valid for name")),
        "{lines:?}"
    );
}

#[test]
fn a_backend_that_never_answers_the_handshake_is_502_within_the_connect_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let (stream, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(stream);
    });
    let ca = Ca::new();
    let port = free_port();
    let mut config = config(
        1,
        port,
        &[(
            "/",
            "ns/b:443",
            addr,
            Some(backend_tls(SERVER_NAME, &ca.pem, vec![])),
        )],
    );
    config.settings.upstream_connect_timeout_ms = 300;
    let proxy = Proxy::start(&config);

    let started = Instant::now();
    let response = Client::connect(port).get("example.com", "/");
    assert_eq!(response.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(proxy.metric("portcullis_upstream_errors_total", "kind=\"timeout\"") >= 1.0);
    held.join().unwrap();
}

#[test]
fn subject_alt_names_replace_the_server_name() {
    let ca = Ca::new();
    let spiffe = "spiffe://cluster.local/ns/shop/sa/api";
    // The server name is in none of these certificates.
    let by_hostname = TlsBackend::start("by-hostname", &ca.leaf(&["api.shop.internal"]));
    let by_uri = TlsBackend::start("by-uri", &ca.leaf_with_sans("api", vec![uri_san(spiffe)]));
    let both = TlsBackend::start(
        "both",
        &ca.leaf_with_sans(
            "both",
            vec![dns_san("b.internal"), uri_san("spiffe://td/b")],
        ),
    );
    let sni = "sni.shop.internal";
    let tls = |names: Vec<SubjectAltName>| Some(backend_tls(sni, &ca.pem, names));
    let port = free_port();
    let _proxy = Proxy::start(&config(
        1,
        port,
        &[
            (
                "/hostname",
                "ns/hostname:443",
                by_hostname.addr,
                tls(vec![hostname("api.shop.internal")]),
            ),
            ("/uri", "ns/uri:443", by_uri.addr, tls(vec![uri(spiffe)])),
            (
                "/uri-mismatch",
                "ns/uri-mismatch:443",
                by_uri.addr,
                tls(vec![uri("spiffe://cluster.local/ns/shop/sa/other")]),
            ),
            (
                "/one-of",
                "ns/one-of:443",
                both.addr,
                tls(vec![hostname("a.internal"), uri("spiffe://td/b")]),
            ),
            (
                "/none-of",
                "ns/none-of:443",
                both.addr,
                tls(vec![hostname("a.internal"), uri("spiffe://td/a")]),
            ),
            // Without subject alt names the server name is checked, and it is not there.
            (
                "/sni-only",
                "ns/sni-only:443",
                by_hostname.addr,
                tls(vec![]),
            ),
        ],
    ));

    let mut client = Client::connect(port);
    for (path, status, backend) in [
        ("/hostname", 200, Some("by-hostname")),
        ("/uri", 200, Some("by-uri")),
        ("/uri-mismatch", 502, None),
        ("/one-of", 200, Some("both")),
        ("/none-of", 502, None),
        ("/sni-only", 502, None),
    ] {
        let response = client.get("example.com", path);
        assert_eq!(response.status, status, "{path}: {}", response.body_text());
        assert_eq!(response.backend(), backend, "{path}");
    }
    let names: Vec<_> = by_hostname
        .handshakes()
        .into_iter()
        .map(|h| h.server_name)
        .collect();
    assert_eq!(names, vec![Some(sni.to_string())], "SNI is the server name");
    assert_eq!(by_uri.request_count(), 1);
    assert_eq!(both.request_count(), 1);
}

#[test]
fn a_swap_to_a_wrong_ca_stops_pooled_connections_and_swapping_back_recovers() {
    let ca = Ca::new();
    let wrong = Ca::new();
    let backend = TlsBackend::start("secure", &ca.leaf(&[SERVER_NAME]));
    let port = free_port();
    let with_ca = |generation, pem: &str| {
        let tls = backend_tls(SERVER_NAME, pem, vec![]);
        config(
            generation,
            port,
            &[("/", "ns/b:443", backend.addr, Some(tls))],
        )
    };
    let proxy = Proxy::start(&with_ca(1, &ca.pem));

    // One client connection: every request is served by the same core, whose pool holds the
    // connection verified under generation 1.
    let mut client = Client::connect(port);
    assert_eq!(client.get("example.com", "/").status, 200);
    assert_eq!(backend.handshakes().len(), 1);

    push(&proxy, &with_ca(2, &wrong.pem));
    let response = client.get("example.com", "/");
    assert_eq!(
        response.status, 502,
        "a connection verified under the old CA was reused"
    );
    assert_eq!(backend.request_count(), 1);
    assert_eq!(backend.handshakes().len(), 1);

    push(&proxy, &with_ca(3, &ca.pem));
    let response = client.get("example.com", "/");
    assert_eq!(response.status, 200);
    assert_eq!(backend.request_count(), 2);
    assert_eq!(backend.handshakes().len(), 2);
    assert!(
        !backend.handshakes()[1].resumed,
        "a session from an earlier config was resumed"
    );
}

#[test]
fn plaintext_and_tls_to_one_address_never_share_connections() {
    let ca = Ca::new();
    let backend = TlsBackend::start("secure", &ca.leaf(&[SERVER_NAME]));
    let port = free_port();
    let _proxy = Proxy::start(&config(
        1,
        port,
        &[
            ("/plain", "ns/plain:443", backend.addr, None),
            (
                "/tls",
                "ns/tls:443",
                backend.addr,
                Some(backend_tls(SERVER_NAME, &ca.pem, vec![])),
            ),
        ],
    ));

    let mut client = Client::connect(port);
    assert_eq!(client.get("example.com", "/plain").status, 502);
    assert_eq!(client.get("example.com", "/tls").status, 200);
    // A TLS connection now waits in the pool; plaintext must not take it.
    assert_eq!(client.get("example.com", "/plain").status, 502);
    assert_eq!(client.get("example.com", "/tls").status, 200);
    assert_eq!(
        backend.handshakes().len(),
        1,
        "the TLS connection was reused"
    );
    let paths: Vec<_> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/tls", "/tls"]);
}

#[test]
fn bytes_after_a_tls_response_never_answer_the_next_request() {
    let ca = Ca::new();
    let config = server_config(&ca.leaf(&[SERVER_NAME]));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers each request, and follows its first answer on each connection with a second,
    // unasked-for one: in the same TLS record, and again in a record of its own.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let session = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(session, stream);
                let mut first = true;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while tls.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                    if !head.ends_with(b"\r\n\r\n") {
                        continue;
                    }
                    head.clear();
                    let fresh = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
                    let stale = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale";
                    if first {
                        let _ = tls.write_all(&[&fresh[..], &stale[..]].concat());
                        let _ = tls.write_all(stale);
                    } else {
                        let _ = tls.write_all(fresh);
                    }
                    let _ = tls.flush();
                    first = false;
                }
            });
        }
    });
    let (_proxy, port) = proxy_to(addr, backend_tls(SERVER_NAME, &ca.pem, vec![]));
    let mut client = Client::connect(port);
    for _ in 0..3 {
        let response = client.get("example.com", "/");
        assert_eq!(response.status, 200);
        assert_eq!(response.body_text(), "fresh");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bodies_cross_a_tls_backend_intact() {
    let ca = Ca::new();
    let backend = TlsBackend::start("secure", &ca.leaf(&[SERVER_NAME]));
    let (_proxy, port) = proxy_to(backend.addr, backend_tls(SERVER_NAME, &ca.pem, vec![]));
    let mut client = Client::connect(port);

    // A chunked request body, sent in pieces: each must reach the backend as it comes.
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let big = pattern(100_000);
    let mut rest = format!("{:x}\r\n", big.len()).into_bytes();
    rest.extend_from_slice(&big);
    rest.extend_from_slice(b"\r\n0\r\n\r\n");
    client.send(&rest).unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    let recorded = backend.requests().pop().unwrap();
    let mut expected = b"hello".to_vec();
    expected.extend_from_slice(&big);
    assert!(recorded.body == expected, "the request body differs");

    let megabyte = 1 << 20;
    let response = client.get("example.com", &format!("/bytes/{megabyte}"));
    assert_eq!(response.status, 200);
    assert!(
        response.body == pattern(megabyte),
        "the response body differs"
    );
    let response = client.get("example.com", "/chunked/300000");
    assert_eq!(response.status, 200);
    assert!(
        response.body == pattern(300_000),
        "the chunked body differs"
    );
    assert_eq!(backend.handshakes().len(), 1);
}

/// Reads from `stream` until `buf` holds `needle` after `from`; returns where it starts.
fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, from: usize, needle: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = buf[from..].windows(needle.len()).position(|w| w == needle) {
            return from + i;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {needle:?}"
        );
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn an_upgrade_tunnels_through_a_tls_backend() {
    let ca = Ca::new();
    let backend = TlsBackend::start("secure", &ca.leaf(&[SERVER_NAME]));
    let (_proxy, port) = proxy_to(backend.addr, backend_tls(SERVER_NAME, &ca.pem, vec![]));

    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\n\r\nEARLY-BYTES",
        )
        .unwrap();
    let mut buf = Vec::new();
    let head_end = read_until(&mut stream, &mut buf, 0, b"\r\n\r\n") + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut from = read_until(&mut stream, &mut buf, head_end, b"EARLY-BYTES") + 11;
    for message in [&b"ping-1"[..], b"\x00\x01binary\xff", b"pong"] {
        stream.write_all(message).unwrap();
        from = read_until(&mut stream, &mut buf, from, message) + message.len();
    }
    let big = pattern(300_000);
    stream.write_all(&big).unwrap();
    while buf.len() < from + big.len() {
        let mut chunk = [0u8; 65536];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "tunnel closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf[from..] == big[..], "large tunnel payload differs");

    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "unexpected bytes after the tunnel: {rest:?}"
    );
    assert_eq!(backend.handshakes().len(), 1);
}

#[test]
fn a_mirror_copy_to_a_tls_backend_uses_tls() {
    let ca = Ca::new();
    let main = Backend::start("main");
    let shadow = TlsBackend::start("shadow", &ca.leaf(&[SERVER_NAME]));
    let port = free_port();
    let mut mirrored = rule(vec![prefix("/")], vec![to("ns/main:80", 1)]);
    mirrored.filters = vec![Filter::RequestMirror(RequestMirror {
        backend: "ns/shadow:443".into(),
        numerator: 1,
        denominator: 1,
    })];
    let config = ConfigBuilder::new(1)
        .backend("ns/main:80", &[&main])
        .backend_at("ns/shadow:443", &[&shadow.addr.to_string()])
        .backend_tls("ns/shadow:443", backend_tls(SERVER_NAME, &ca.pem, vec![]))
        .http_port(port, "http", vec![route("ns/r", &[], vec![mirrored])])
        .build();
    let proxy = Proxy::start(&config);

    let response = Client::connect(port).get("example.com", "/copied");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("main"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow.request_count() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let copies = shadow.requests();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].path, "/copied");
    let handshakes = shadow.handshakes();
    assert_eq!(handshakes[0].server_name.as_deref(), Some(SERVER_NAME));
    while proxy.metric("portcullis_mirror_requests_total", "outcome=\"completed\"") < 1.0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        proxy.metric("portcullis_mirror_requests_total", "outcome=\"completed\""),
        1.0
    );
}

#[test]
fn the_gateway_client_certificate_is_presented_to_backends_that_ask() {
    let ca = Ca::new();
    let client_ca = Ca::new();
    let client = client_ca.client_leaf("gateway");
    let backend = TlsBackend::start_with(
        "mutual",
        server_config_requiring_client_certificates(&ca.leaf(&[SERVER_NAME]), &client_ca.der),
    );
    let port = free_port();
    let mut with_certificate = backend_tls(SERVER_NAME, &ca.pem, vec![]);
    with_certificate.client_certificate = Some("ns/gateway-client".into());
    let mut config = config(
        1,
        port,
        &[("/", "ns/b:443", backend.addr, Some(with_certificate))],
    );
    config
        .certificates
        .push(portcullis_api::config::Certificate {
            name: "ns/gateway-client".into(),
            cert_chain_pem: client.cert_pem.clone(),
            private_key_pem: client.key_pem.clone(),
        });
    let proxy = Proxy::start(&config);

    let mut http = Client::connect(port);
    let response = http.get("example.com", "/mutual");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.backend(), Some("mutual"));
    let handshakes = backend.handshakes();
    assert_eq!(
        handshakes[0].client_certificate.as_deref(),
        Some(client.der.as_ref())
    );

    // Without the certificate the backend refuses the handshake: 502. A connection made
    // with it is not reused for the config that dropped it.
    let mut without = config.clone();
    without.generation = 2;
    without.backends[0].tls.as_mut().unwrap().client_certificate = None;
    without.certificates.clear();
    push(&proxy, &without);
    let refused = http.get("example.com", "/mutual");
    assert_eq!(refused.status, 502);
    assert_eq!(backend.request_count(), 1);
}
