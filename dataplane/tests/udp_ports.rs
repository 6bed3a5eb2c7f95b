//! UDP ports (UDPRoute) over real sockets: datagrams pass unchanged both ways and answers come
//! from the port the client wrote to; a client's datagrams stay with one backend while new
//! clients spread by weight; sessions end when idle, when the endpoint refuses them, when a
//! config no longer routes them, and never exceed the per-core limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{PortProtocol, ProxySettings, StreamRoute};
use portcullis_api::frame::Reply;
use support::config::{stream_listener, stream_route};
use support::{ConfigBuilder, Proxy, free_port};

/// Answers every datagram with "<name>:" followed by the datagram, to whoever sent it.
struct UdpEcho {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

impl UdpEcho {
    fn start(name: &'static str) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65_535];
            while let Ok((length, from)) = socket.recv_from(&mut buffer) {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut answer = format!("{name}:").into_bytes();
                answer.extend_from_slice(&buffer[..length]);
                // The largest datagrams cannot grow: answer those unchanged.
                if answer.len() > 65_507 {
                    answer = buffer[..length].to_vec();
                }
                let _ = socket.send_to(&answer, from);
            }
        });
        UdpEcho { addr, received }
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// A config with one UDP port whose routes send to `backends` (name, endpoint).
fn udp_config(
    generation: u64,
    port: u16,
    backends: &[(&str, &str)],
    routes: Vec<StreamRoute>,
    settings: impl FnOnce(&mut ProxySettings),
) -> CompiledConfig {
    let mut builder = ConfigBuilder::new(generation);
    for (name, endpoint) in backends {
        builder = builder.backend_at(name, &[endpoint]);
    }
    builder
        .port(
            port,
            PortProtocol::Udp,
            vec![stream_listener("udp", routes)],
        )
        .settings(settings)
        .build()
}

/// A config with one UDP port whose one route, `ns/r`, sends everything to `endpoint`.
fn one_route_config(
    generation: u64,
    port: u16,
    endpoint: &str,
    settings: impl FnOnce(&mut ProxySettings),
) -> CompiledConfig {
    udp_config(
        generation,
        port,
        &[("ns/b:1", endpoint)],
        vec![stream_route("ns/r", &[], &[("ns/b:1", 1)])],
        settings,
    )
}

/// A client socket talking to the proxy's UDP port.
fn client(port: u16) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    socket
}

/// Sends `datagram` and returns the answer, or None when none came within the read timeout.
fn ask(socket: &UdpSocket, datagram: &[u8]) -> Option<Vec<u8>> {
    socket.send(datagram).unwrap();
    let mut buffer = vec![0u8; 65_535];
    let length = socket.recv(&mut buffer).ok()?;
    buffer.truncate(length);
    Some(buffer)
}

/// Asks until an answer comes: the proxy's sockets exist once it is ready, but a datagram can
/// still be lost to a full queue on a loaded machine.
fn ask_until_answered(socket: &UdpSocket, datagram: &[u8]) -> Vec<u8> {
    for _ in 0..5 {
        if let Some(answer) = ask(socket, datagram) {
            return answer;
        }
    }
    panic!("no answer to {:?}", String::from_utf8_lossy(datagram));
}

/// Throws away answers still queued on `socket` (a late answer to a datagram that was sent
/// again), so the next `ask` reads the answer to its own datagram.
fn discard_queued(socket: &UdpSocket) {
    socket.set_nonblocking(true).unwrap();
    let mut buffer = [0u8; 2048];
    while socket.recv(&mut buffer).is_ok() {}
    socket.set_nonblocking(false).unwrap();
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn datagrams_pass_unchanged_both_ways_and_answers_come_from_the_port() {
    let echo = UdpEcho::start("echo");
    let port = free_port();
    let config = udp_config(
        1,
        port,
        &[("ns/echo:53", &echo.endpoint())],
        vec![stream_route("ns/dns", &[], &[("ns/echo:53", 1)])],
        |_| {},
    );
    let proxy = Proxy::start(&config);

    // An unconnected client sees the answer come from the proxy's own address and port.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = vec![0u8; 65_535];
    let mut answered = None;
    for _ in 0..5 {
        socket
            .send_to(b"\x00\xffquery", ("127.0.0.1", port))
            .unwrap();
        if let Ok(received) = socket.recv_from(&mut buffer) {
            answered = Some(received);
            break;
        }
    }
    let (length, from) = answered.expect("an answer");
    assert_eq!(&buffer[..length], b"echo:\x00\xffquery");
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));

    // Empty and largest datagrams pass whole: nothing is cut at a buffer size.
    let client = client(port);
    assert_eq!(ask_until_answered(&client, b""), b"echo:");
    let largest: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(ask_until_answered(&client, &largest), largest);

    assert_eq!(
        proxy.metric(
            "portcullis_requests_total",
            "route=\"ns/dns\",status_class=\"2xx\""
        ),
        2.0,
        "one session per client address and port"
    );
    assert_eq!(proxy.metric("portcullis_udp_sessions", ""), 2.0);
}

#[test]
fn a_client_stays_with_its_backend_while_new_clients_spread_by_weight() {
    let heavy = UdpEcho::start("heavy");
    let light = UdpEcho::start("light");
    let port = free_port();
    let config = udp_config(
        1,
        port,
        &[
            ("ns/heavy:1", &heavy.endpoint()),
            ("ns/light:1", &light.endpoint()),
        ],
        vec![stream_route(
            "ns/r",
            &[],
            &[("ns/heavy:1", 3), ("ns/light:1", 1)],
        )],
        |_| {},
    );
    let _proxy = Proxy::start(&config);

    let mut chosen = HashMap::<String, usize>::new();
    for i in 0..200 {
        let client = client(port);
        let first = ask_until_answered(&client, format!("{i}").as_bytes());
        let backend = String::from_utf8_lossy(&first)
            .split(':')
            .next()
            .unwrap()
            .to_string();
        // Every later datagram of this client reaches the same backend.
        for n in 0..3 {
            let again = ask_until_answered(&client, format!("{i}.{n}").as_bytes());
            assert!(
                again.starts_with(format!("{backend}:").as_bytes()),
                "client {i} moved from {backend}: {:?}",
                String::from_utf8_lossy(&again)
            );
        }
        *chosen.entry(backend).or_default() += 1;
    }
    let heavy_share = chosen.get("heavy").copied().unwrap_or(0);
    let light_share = chosen.get("light").copied().unwrap_or(0);
    assert_eq!(heavy_share + light_share, 200, "{chosen:?}");
    assert!((120..=180).contains(&heavy_share), "{chosen:?}");
}

#[test]
fn idle_sessions_end_and_a_refused_session_ends_at_once() {
    let echo = UdpEcho::start("echo");
    let port = free_port();
    // Nothing listens at the second backend's endpoint: the kernel answers with a port
    // unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed_endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let config = one_route_config(1, port, &echo.endpoint(), |s| {
        s.udp_session_idle_timeout_ms = 300
    });
    let proxy = Proxy::start(&config);
    let client_socket = client(port);
    assert_eq!(ask_until_answered(&client_socket, b"hi"), b"echo:hi");
    assert_eq!(proxy.metric("portcullis_udp_sessions", ""), 1.0);
    let answered = Instant::now();
    wait_for("the idle session to end", || {
        proxy.metric("portcullis_udp_sessions", "") == 0.0
    });
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "ended after {:?}",
        answered.elapsed()
    );
    // The client's next datagram opens a new session.
    assert_eq!(ask_until_answered(&client_socket, b"again"), b"echo:again");

    let refused = one_route_config(2, port, &closed_endpoint, |s| {
        s.udp_session_idle_timeout_ms = 60_000
    });
    assert!(matches!(proxy.push(&refused), Reply::Ack { .. }));
    let other = client(port);
    assert_eq!(ask(&other, b"anyone?"), None);
    // The session opened (counted as forwarded), and the ICMP port unreachable ended it well
    // before its idle timeout.
    assert_eq!(
        proxy.metric(
            "portcullis_requests_total",
            "route=\"ns/r\",status_class=\"2xx\""
        ),
        3.0
    );
    wait_for("the refused session to end", || {
        proxy.metric("portcullis_udp_sessions", "") == 0.0
    });
}

#[test]
fn a_config_that_no_longer_routes_a_session_ends_it() {
    let old = UdpEcho::start("old");
    let new = UdpEcho::start("new");
    let port = free_port();
    let backends = [
        ("ns/old:1", &*old.endpoint()),
        ("ns/new:1", &*new.endpoint()),
    ];
    let first = udp_config(
        1,
        port,
        &backends,
        vec![stream_route("ns/r", &[], &[("ns/old:1", 1)])],
        |_| {},
    );
    let proxy = Proxy::start(&first);
    let client = client(port);
    assert_eq!(ask_until_answered(&client, b"1"), b"old:1");

    // The same route with a new endpoint list for its backend keeps the session...
    let same = udp_config(
        2,
        port,
        &backends,
        vec![stream_route(
            "ns/r",
            &[],
            &[("ns/old:1", 1), ("ns/new:1", 0)],
        )],
        |_| {},
    );
    assert!(matches!(proxy.push(&same), Reply::Ack { .. }));
    assert_eq!(ask_until_answered(&client, b"2"), b"old:2");

    // ...a route that no longer sends to its backend ends it, and the client's next datagram
    // goes where the new config says.
    let moved = udp_config(
        3,
        port,
        &backends,
        vec![stream_route("ns/r", &[], &[("ns/new:1", 1)])],
        |_| {},
    );
    assert!(matches!(proxy.push(&moved), Reply::Ack { .. }));
    wait_for("the revoked session to end", || {
        proxy.metric("portcullis_udp_sessions", "") == 0.0
    });
    assert_eq!(ask_until_answered(&client, b"3"), b"new:3");
    assert_eq!(old.received(), 2);
}

#[test]
fn sessions_over_the_core_limit_are_refused_and_counted() {
    let echo = UdpEcho::start("echo");
    let port = free_port();
    let config = one_route_config(1, port, &echo.endpoint(), |s| {
        s.max_udp_sessions_per_core = 1
    });
    let proxy = Proxy::start_with(&config, &["--cores", "1"]);
    let first = client(port);
    assert_eq!(ask_until_answered(&first, b"a"), b"echo:a");
    let second = client(port);
    assert_eq!(ask(&second, b"b"), None);
    assert_eq!(
        proxy.metric("portcullis_udp_datagrams_refused_total", ""),
        1.0
    );
    // The open session is not affected.
    assert_eq!(ask_until_answered(&first, b"c"), b"echo:c");
}

#[test]
fn a_port_can_change_between_tcp_and_udp() {
    let echo = UdpEcho::start("echo");
    let port = free_port();
    let udp = one_route_config(2, port, &echo.endpoint(), |_| {});
    let mut tcp = udp.clone();
    tcp.generation = 1;
    tcp.ports[0].protocol = PortProtocol::Tcp;
    let proxy = Proxy::start(&tcp);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(matches!(proxy.push(&udp), Reply::Ack { .. }));
    assert_eq!(ask_until_answered(&client(port), b"x"), b"echo:x");
    wait_for("the TCP listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
}

#[test]
fn a_port_number_carries_tcp_and_udp_at_once() {
    // A TCP backend that answers "tcp:" and the first line, beside the UDP echo: DNS on 53.
    let tcp_backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_endpoint = tcp_backend.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in tcp_backend.incoming().flatten() {
            let mut stream = stream;
            let mut buffer = [0u8; 64];
            let n = std::io::Read::read(&mut stream, &mut buffer).unwrap_or(0);
            let mut answer = b"tcp:".to_vec();
            answer.extend_from_slice(&buffer[..n]);
            let _ = std::io::Write::write_all(&mut stream, &answer);
        }
    });
    let echo = UdpEcho::start("udp");
    let port = free_port();
    let mut config = udp_config(
        1,
        port,
        &[
            ("ns/dns:53/udp", &echo.endpoint()),
            ("ns/dns:53", &tcp_endpoint),
        ],
        vec![stream_route("ns/dns-udp", &[], &[("ns/dns:53/udp", 1)])],
        |_| {},
    );
    let mut tcp_port = config.ports[0].clone();
    tcp_port.protocol = PortProtocol::Tcp;
    tcp_port.listeners[0].name = "tcp".into();
    tcp_port.listeners[0].stream_routes =
        vec![stream_route("ns/dns-tcp", &[], &[("ns/dns:53", 1)])];
    config.ports.push(tcp_port);
    let proxy = Proxy::start(&config);

    assert_eq!(ask_until_answered(&client(port), b"q1"), b"udp:q1");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"q2").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    assert_eq!(answer, b"tcp:q2");

    // Dropping the UDP port leaves the TCP one serving, and the UDP session is revoked.
    let mut tcp_only = config.clone();
    tcp_only.generation = 2;
    tcp_only.ports.remove(0);
    assert!(matches!(proxy.push(&tcp_only), Reply::Ack { .. }));
    wait_for("the UDP session to end", || {
        proxy.metric("portcullis_udp_sessions", "") == 0.0
    });
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"q3").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    assert_eq!(answer, b"tcp:q3");
    assert_eq!(ask(&client(port), b"q4"), None);
}

#[test]
fn many_sessions_to_one_endpoint_each_get_their_own_answers() {
    // Every session has a socket of its own toward the endpoint; were two on one local port,
    // the endpoint's answers to both would reach only one of them.
    let echo = UdpEcho::start("echo");
    let port = free_port();
    let config = one_route_config(1, port, &echo.endpoint(), |_| {});
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);
    let clients: Vec<UdpSocket> = (0..600).map(|_| client(port)).collect();
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(
            ask_until_answered(client, format!("open {i}").as_bytes()),
            format!("echo:open {i}").as_bytes()
        );
    }
    // All sessions are open now: each must still get its own answer.
    for (i, client) in clients.iter().enumerate() {
        discard_queued(client);
        let answer = ask_until_answered(client, format!("again {i}").as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("echo:again {i}"),
            "client {i}"
        );
    }
}

#[test]
fn a_session_ends_when_its_endpoint_leaves_the_backend() {
    // A client that keeps sending never goes idle: without this, a session to a deleted pod
    // would send into the void for as long as the client talks.
    let first = UdpEcho::start("first");
    let second = UdpEcho::start("second");
    let port = free_port();
    let with = |generation, endpoint: &str| one_route_config(generation, port, endpoint, |_| {});
    let proxy = Proxy::start(&with(1, &first.endpoint()));
    let client = client(port);
    assert_eq!(ask_until_answered(&client, b"1"), b"first:1");
    assert!(matches!(
        proxy.push(&with(2, &second.endpoint())),
        Reply::Ack { .. }
    ));
    wait_for("the session to the removed endpoint to end", || {
        proxy.metric("portcullis_udp_sessions", "") == 0.0
    });
    assert_eq!(ask_until_answered(&client, b"2"), b"second:2");
    assert_eq!(first.received(), 1);
}
