//! Config swaps over the control socket: hundreds of swaps under load without a failed request,
//! in-flight requests finishing on the tables they started with, NACKs that keep the last good
//! config, listeners opened and closed by swaps, and the swap metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{Filter, HeaderModifier};
use portcullis_api::frame::{self, Reply};
use support::config::{header_value, prefix, regex, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 client that reports every failure as an error instead of panicking, for
/// the load threads. Responses must be Content-Length framed (the backend's echo and the
/// proxy's local answers are).
struct LoadConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl LoadConn {
    fn connect(port: u16) -> std::io::Result<LoadConn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(LoadConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one GET and reads its response: (status, whether the proxy said it closes).
    fn get(&mut self, path: &str, close: bool) -> std::io::Result<(u16, bool)> {
        let connection = if close { "connection: close\r\n" } else { "" };
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: swap.test\r\n{connection}\r\n"
        )?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut closes = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                if name == "content-length" {
                    length = value.parse::<usize>().ok();
                } else if name == "connection" && value.eq_ignore_ascii_case("close") {
                    closes = true;
                } else if name == "transfer-encoding" {
                    return Err(std::io::Error::other("unexpected transfer-encoding"));
                }
            }
        }
        let length =
            length.ok_or_else(|| std::io::Error::other(format!("no content-length: {head:?}")))?;
        while self.buf.len() < length {
            self.fill()?;
        }
        self.buf.drain(..length);
        Ok((status, closes))
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = portcullis_testkit::read_uninterrupted(&mut self.stream, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the proxy",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn assert_ack(reply: Reply, generation: u64) {
    assert_eq!(
        reply,
        Reply::Ack { generation },
        "push of generation {generation}"
    );
}

/// The reason of a NACK; panics on an ACK.
fn nack_reason(reply: Reply) -> String {
    match reply {
        Reply::Nack { reason } => reason,
        Reply::Ack { generation } => panic!("expected a NACK, got ACK {generation}"),
    }
}

/// The generation `/config_dump` shows.
fn dumped_generation(proxy: &Proxy) -> u64 {
    let (status, body) = proxy.admin_get("/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["generation"].as_u64().unwrap()
}

/// Whether `port` no longer serves: the connection is refused, or it is accepted and closed
/// (or reset) without an answer.
fn port_refuses(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: swap.test\r\n\r\n")
        .is_err()
    {
        return true;
    }
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn header_filter(name: &str, value: &str) -> Filter {
    Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![header_value(name, value)],
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Swaps under load
// ---------------------------------------------------------------------------------------------

/// The config of push number `k` (generation `k + 1`): weights alternate 90/10 and 10/90, the
/// extra route and its backend come and go, and so does a request header filter.
fn load_config(
    generation: u64,
    port: u16,
    a: &Backend,
    b: &Backend,
    extra: &Backend,
) -> (CompiledConfig, bool, bool) {
    let k = generation;
    let (wa, wb) = if k.is_multiple_of(2) {
        (90, 10)
    } else {
        (10, 90)
    };
    let with_extra = (k / 2).is_multiple_of(2);
    let with_header = (k / 4).is_multiple_of(2);
    let mut main = rule(
        vec![prefix("/main")],
        vec![to("ns/a:80", wa), to("ns/b:80", wb)],
    );
    if with_header {
        main.filters
            .push(header_filter("x-swap", &generation.to_string()));
    }
    let mut routes = vec![route("ns/main", &[], vec![main])];
    let mut builder = ConfigBuilder::new(generation)
        .backend("ns/a:80", &[a])
        .backend("ns/b:80", &[b]);
    if with_extra {
        builder = builder.backend("ns/extra:80", &[extra]);
        routes.push(route(
            "ns/extra",
            &[],
            vec![rule(vec![prefix("/extra")], vec![to("ns/extra:80", 1)])],
        ));
    }
    (
        builder.http_port(port, "http", routes).build(),
        with_extra,
        with_header,
    )
}

#[derive(Default)]
struct LoadResult {
    ok: u64,
    failures: u64,
    /// The first few failures, for the assertion message.
    examples: Vec<String>,
}

impl LoadResult {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.examples.len() < 10 {
            self.examples.push(what);
        }
    }
}

/// Sends requests until `stop`: keep-alive connections (renewed every 50 requests) when
/// `keep_alive`, otherwise a new connection per request (every other one asking to close).
fn load_thread(port: u16, keep_alive: bool, stop: Arc<AtomicBool>) -> LoadResult {
    let mut result = LoadResult::default();
    let mut conn: Option<LoadConn> = None;
    let mut on_conn = 0u32;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if conn.is_none() {
            match LoadConn::connect(port) {
                Ok(c) => {
                    conn = Some(c);
                    on_conn = 0;
                }
                Err(e) => {
                    result.fail(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let close = !keep_alive && n.is_multiple_of(2);
        match c.get(&format!("/main/{n}"), close) {
            Ok((200, closes)) => {
                result.ok += 1;
                on_conn += 1;
                if !keep_alive || closes || on_conn >= 50 {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                result.fail(format!("status {status}"));
                conn = None;
            }
            Err(e) => {
                result.fail(format!("read: {e} (request {on_conn} on its connection)"));
                conn = None;
            }
        }
    }
    result
}

#[test]
fn two_hundred_swaps_under_load_fail_no_request() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let extra = Backend::start("extra");
    let port = free_port();
    let (initial, _, _) = load_config(1, port, &a, &b, &extra);
    let proxy = Proxy::start_with(&initial, &["--cores", "2"]);

    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || load_thread(port, i % 2 == 0, stop))
        })
        .collect();

    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    for generation in 2..=201u64 {
        let (config, with_extra, with_header) = load_config(generation, port, &a, &b, &extra);
        assert_ack(proxy.push(&config), generation);
        // Every few pushes, check from a fresh connection that the pushed tables serve.
        if generation.is_multiple_of(5) || generation == 201 {
            let mut client = Client::connect(port);
            let response = client.get("swap.test", "/extra/check");
            if with_extra {
                assert_eq!(response.status, 200, "generation {generation}");
                assert_eq!(response.backend(), Some("extra"));
            } else {
                assert_eq!(response.status, 404, "generation {generation}");
            }
            let echoed = client.get("swap.test", "/main/check").json();
            let header = &echoed["headers"]["x-swap"];
            if with_header {
                assert_eq!(header[0], generation.to_string(), "generation {generation}");
            } else {
                assert!(header.is_null(), "generation {generation}: {header}");
            }
        }
        std::thread::sleep(Duration::from_millis(8));
    }
    let swapping = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);

    let mut total = LoadResult::default();
    for thread in threads {
        let result = thread.join().unwrap();
        total.ok += result.ok;
        total.failures += result.failures;
        total.examples.extend(result.examples);
    }
    println!(
        "{} requests, {} failures during 200 swaps in {swapping:?}",
        total.ok, total.failures
    );
    assert_eq!(
        total.failures, 0,
        "{} failed requests (of {}) during 200 swaps in {swapping:?}: {:?}",
        total.failures, total.ok, total.examples
    );
    assert!(
        total.ok > 500,
        "only {} requests were sent during the swaps",
        total.ok
    );
    assert!(a.request_count() > 0 && b.request_count() > 0);
    assert_eq!(dumped_generation(&proxy), 201);
    assert_eq!(proxy.metric("portcullis_config_generation", ""), 201.0);
    assert_eq!(proxy.metric("portcullis_config_swaps_total", ""), 201.0);
    assert_eq!(proxy.metric("portcullis_config_rejections_total", ""), 0.0);
}

// ---------------------------------------------------------------------------------------------
// 2. In-flight requests keep their tables
// ---------------------------------------------------------------------------------------------

#[test]
fn in_flight_requests_finish_on_the_tables_they_started_with() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port();
    let with_a = ConfigBuilder::new(1)
        .backend("ns/a:80", &[&a])
        .backend("ns/b:80", &[&b])
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/a",
                    &[],
                    vec![rule(vec![prefix("/sleep")], vec![to("ns/a:80", 1)])],
                ),
                route(
                    "ns/b",
                    &[],
                    vec![rule(vec![prefix("/b")], vec![to("ns/b:80", 1)])],
                ),
            ],
        )
        .build();
    // Route A and its backend are gone in generation 2.
    let without_a = ConfigBuilder::new(2)
        .backend("ns/b:80", &[&b])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/b",
                &[],
                vec![rule(vec![prefix("/b")], vec![to("ns/b:80", 1)])],
            )],
        )
        .build();
    let proxy = Proxy::start(&with_a);

    let in_flight = std::thread::spawn(move || {
        let mut client = Client::connect(port);
        let slow = client.get("swap.test", "/sleep/1500");
        let finished = Instant::now();
        // The same keep-alive connection picks up the new tables on its next request.
        let next = client.get("swap.test", "/sleep/1");
        (slow, finished, next)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.request_count() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ack(proxy.push(&without_a), 2);
    let acked = Instant::now();
    assert!(
        !in_flight.is_finished(),
        "the slow request finished before the swap was acknowledged"
    );
    let mut client = Client::connect(port);
    assert_eq!(client.get("swap.test", "/sleep/1").status, 404);
    assert_eq!(client.get("swap.test", "/b/x").backend(), Some("b"));

    let (slow, finished, next) = in_flight.join().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.body_text());
    assert_eq!(slow.backend(), Some("a"));
    assert!(finished > acked);
    assert_eq!(next.status, 404);
    assert_eq!(a.request_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 3. NACKs keep the last good config
// ---------------------------------------------------------------------------------------------

fn good_config(generation: u64, port: u16, backend: &Backend) -> CompiledConfig {
    ConfigBuilder::new(generation)
        .backend("ns/web:80", &[backend])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/web",
                &[],
                vec![rule(vec![prefix("/")], vec![to("ns/web:80", 1)])],
            )],
        )
        .build()
}

#[test]
fn nacks_keep_the_last_good_config() {
    let web = Backend::start("web");
    let port = free_port();
    let proxy = Proxy::start(&good_config(5, port, &web));
    let mut client = Client::connect(port);
    let still_serving = |client: &mut Client, what: &str| {
        let response = client.get("swap.test", "/after");
        assert_eq!(response.status, 200, "after {what}");
        assert_eq!(response.backend(), Some("web"), "after {what}");
        assert_eq!(dumped_generation(&proxy), 5, "after {what}");
        assert_eq!(
            proxy.metric("portcullis_config_generation", ""),
            5.0,
            "after {what}"
        );
    };
    still_serving(&mut client, "start");
    assert_eq!(proxy.metric("portcullis_config_swaps_total", ""), 1.0);

    // A regular expression that does not compile.
    let bad_regex = ConfigBuilder::new(6)
        .backend("ns/web:80", &[&web])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/web",
                &[],
                vec![rule(vec![regex("/(unclosed")], vec![to("ns/web:80", 1)])],
            )],
        )
        .build();
    let reason = nack_reason(proxy.push(&bad_regex));
    assert!(
        reason.contains("invalid regular expression") && reason.contains("matches[0].path"),
        "{reason}"
    );
    still_serving(&mut client, "a bad regex");

    // A rule that names a backend the config does not have.
    let unknown_backend = ConfigBuilder::new(6)
        .backend("ns/web:80", &[&web])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/web",
                &[],
                vec![rule(vec![], vec![to("ns/nope:80", 1)])],
            )],
        )
        .build();
    let reason = nack_reason(proxy.push(&unknown_backend));
    assert!(
        reason.contains("unknown backend") && reason.contains("ns/nope:80"),
        "{reason}"
    );
    still_serving(&mut client, "an unknown backend");

    // An older generation.
    let reason = nack_reason(proxy.push(&good_config(4, port, &web)));
    assert!(reason.contains("stale") && reason.contains('4'), "{reason}");
    still_serving(&mut client, "a stale generation");

    // The active generation with other content.
    let mut changed = good_config(5, port, &web);
    changed.settings.idle_timeout_ms = 1234;
    let reason = nack_reason(proxy.push(&changed));
    assert!(
        reason.contains("generation 5") && reason.contains("different content"),
        "{reason}"
    );
    still_serving(&mut client, "the same generation with other content");

    // A schema version this proxy does not read.
    let mut future_schema = good_config(6, port, &web);
    future_schema.schema_version = 99;
    let reason = nack_reason(proxy.push(&future_schema));
    assert!(
        reason.contains("schema") && reason.contains("99"),
        "{reason}"
    );
    still_serving(&mut client, "an unknown schema version");

    // A frame whose payload was corrupted in transit.
    let mut corrupted = frame::encode(&good_config(6, port, &web)).unwrap();
    let middle = frame::HEADER_BYTES + (corrupted.len() - frame::HEADER_BYTES) / 2;
    corrupted[middle] ^= 0x20;
    let reason = nack_reason(proxy.push_frame(&corrupted));
    assert!(reason.contains("checksum"), "{reason}");
    still_serving(&mut client, "a corrupted frame");

    // JSON with a field the schema does not have.
    let mut json = serde_json::to_value(good_config(6, port, &web)).unwrap();
    json.as_object_mut()
        .unwrap()
        .insert("surprise".into(), serde_json::Value::Bool(true));
    let payload = serde_json::to_vec(&json).unwrap();
    let reason = nack_reason(proxy.push_frame(&frame::encode_payload(&payload).unwrap()));
    assert!(
        reason.contains("unknown field") && reason.contains("surprise"),
        "{reason}"
    );
    still_serving(&mut client, "an unknown field");

    // A frame with bad magic: NACK, and the control socket keeps taking new connections.
    let mut bad_magic = frame::encode(&good_config(6, port, &web)).unwrap();
    bad_magic[..4].copy_from_slice(b"XCFG");
    let reason = nack_reason(proxy.push_frame(&bad_magic));
    assert!(reason.contains("magic"), "{reason}");
    still_serving(&mut client, "bad magic");

    assert_eq!(proxy.metric("portcullis_config_rejections_total", ""), 8.0);
    assert_eq!(proxy.metric("portcullis_config_swaps_total", ""), 1.0);

    // A good push on a new connection still works.
    let six = good_config(6, port, &web);
    assert_ack(proxy.push(&six), 6);
    assert_eq!(dumped_generation(&proxy), 6);
    assert_eq!(proxy.metric("portcullis_config_swaps_total", ""), 2.0);

    // The same generation with identical content is acknowledged without a swap.
    assert_ack(proxy.push(&six), 6);
    assert_ack(proxy.push_frame(&frame::encode(&six).unwrap()), 6);
    assert_eq!(proxy.metric("portcullis_config_swaps_total", ""), 2.0);
    assert_eq!(proxy.metric("portcullis_config_rejections_total", ""), 8.0);
    assert_eq!(proxy.metric("portcullis_config_generation", ""), 6.0);
    assert_eq!(client.get("swap.test", "/end").status, 200);
}

// ---------------------------------------------------------------------------------------------
// 4. Listeners added and removed
// ---------------------------------------------------------------------------------------------

fn ports_config(generation: u64, ports: &[u16], backend: &Backend) -> CompiledConfig {
    let mut builder = ConfigBuilder::new(generation).backend("ns/web:80", &[backend]);
    for (i, port) in ports.iter().enumerate() {
        builder = builder.http_port(
            *port,
            &format!("http-{i}"),
            vec![route(
                &format!("ns/web-{i}"),
                &[],
                vec![rule(vec![], vec![to("ns/web:80", 1)])],
            )],
        );
    }
    builder.build()
}

#[test]
fn listeners_are_added_and_removed_by_swaps() {
    let web = Backend::start("web");
    let first = free_port();
    let second = free_port();
    let proxy = Proxy::start(&ports_config(1, &[first], &web));
    assert_eq!(Client::connect(first).get("p.test", "/").status, 200);
    assert!(port_refuses(second));

    // Add a second port.
    assert_ack(proxy.push(&ports_config(2, &[first, second], &web)), 2);
    let mut idle = Client::connect(second);
    assert_eq!(idle.get("p.test", "/one").status, 200);
    assert_eq!(Client::connect(first).get("p.test", "/").status, 200);

    // Remove the first, and add it back, a few times: once the ACK is in, a removed port
    // refuses connections at once (nothing completes a handshake that no one will accept), and
    // an added one serves.
    for round in 0..10 {
        let generation = 3 + 2 * round;
        assert_ack(
            proxy.push(&ports_config(generation, &[second], &web)),
            generation,
        );
        assert!(
            TcpStream::connect(("127.0.0.1", first)).is_err(),
            "port {first} still accepts after the ACK of its removal (round {round})"
        );
        assert_eq!(Client::connect(second).get("p.test", "/").status, 200);
        assert_eq!(idle.get("p.test", "/two").status, 200);

        assert_ack(
            proxy.push(&ports_config(generation + 1, &[first, second], &web)),
            generation + 1,
        );
        assert_eq!(Client::connect(first).get("p.test", "/").status, 200);
        assert_eq!(idle.get("p.test", "/three").status, 200);
    }

    // A port another process holds (without SO_REUSEPORT) cannot be bound: NACK, nothing
    // changes.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_port = held.local_addr().unwrap().port();
    let reason = nack_reason(proxy.push(&ports_config(100, &[second, held_port], &web)));
    assert!(reason.contains(&held_port.to_string()), "{reason}");
    assert_eq!(dumped_generation(&proxy), 22);
    assert_eq!(Client::connect(first).get("p.test", "/").status, 200);
    assert_eq!(Client::connect(second).get("p.test", "/").status, 200);
    assert_eq!(idle.get("p.test", "/four").status, 200);
    let echoed = idle.get("p.test", "/five").json();
    assert_eq!(echoed["path"], "/five");
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// 5. Swap metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn swap_latency_and_generation_are_reported() {
    let web = Backend::start("web");
    let port = free_port();
    let proxy = Proxy::start(&good_config(1, port, &web));
    let mut moved = good_config(7, port, &web);
    moved.settings.idle_timeout_ms = 30_000;
    assert_ack(proxy.push(&moved), 7);
    let last = proxy.metric("portcullis_config_last_swap_duration_seconds", "");
    assert!(last > 0.0 && last < 5.0, "last swap took {last} s");
    assert_eq!(proxy.metric("portcullis_config_generation", ""), 7.0);
    assert_eq!(
        proxy.metric("portcullis_config_swap_duration_seconds_count", ""),
        2.0
    );
    assert!(proxy.metric("portcullis_config_swap_duration_seconds_sum", "") >= last);
    assert_eq!(Client::connect(port).get("m.test", "/").status, 200);
}
