//! HTTP/1.1 behaviour over real loopback sockets: body framing both ways, keep-alive and
//! pipelining, hop-by-hop and forwarding headers, HTTP/1.0 clients, Expect, malformed
//! requests, absolute-form targets, Upgrade tunnels and large responses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::backend::pattern;
use support::config::{route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, Recorded, free_port};

/// Short wait for asserting that the proxy closed a connection.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// One backend behind a catch-all route on a fresh port.
fn start_one(name: &str) -> (Backend, Proxy, u16) {
    let backend = Backend::start(name);
    let port = free_port();
    let proxy = Proxy::start(&ConfigBuilder::catch_all(&backend, port).build());
    (backend, proxy, port)
}

fn last_request(backend: &Backend) -> Recorded {
    backend
        .requests()
        .pop()
        .expect("the backend got no request")
}

/// Asserts the upstream request used exactly the given framing header and not the other.
fn assert_content_length_framing(recorded: &Recorded, len: usize) {
    assert_eq!(recorded.header_count("content-length"), 1, "{recorded:?}");
    assert_eq!(
        recorded.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(
        recorded.header_count("transfer-encoding"),
        0,
        "{recorded:?}"
    );
}

fn assert_chunked_framing(recorded: &Recorded) {
    assert_eq!(
        recorded.header_count("transfer-encoding"),
        1,
        "{recorded:?}"
    );
    assert_eq!(recorded.header("transfer-encoding"), Some("chunked"));
    assert_eq!(recorded.header_count("content-length"), 0, "{recorded:?}");
}

/// A raw socket with a short read timeout, for byte-level checks (tunnels).
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until `needle` appears in what was received (after `from`); returns its offset.
    fn read_until(&mut self, from: usize, needle: &[u8]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.buf.len() >= from + needle.len()
                && let Some(i) = self.buf[from..]
                    .windows(needle.len())
                    .position(|w| w == needle)
            {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} never arrived; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buf)
            );
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).unwrap_or_else(|e| {
                panic!(
                    "reading for {:?}: {e}; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf)
                )
            });
            assert!(
                n > 0,
                "EOF before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until `total` bytes have been received in all.
    fn read_exactly(&mut self, total: usize) {
        let mut chunk = [0u8; 16384];
        while self.buf.len() < total {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "EOF after {} of {total} bytes", self.buf.len());
            self.buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(self.buf.len(), total, "more bytes than expected");
    }

    /// Whether the peer closes within the read timeout (after any bytes still in flight).
    fn closes(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

// 1. Request bodies.

#[test]
fn content_length_request_bodies_reach_the_backend_intact() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);

    let response = client.request(
        "POST /small HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"], "hello world");
    let recorded = last_request(&backend);
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.body, b"hello world");
    assert_content_length_framing(&recorded, 11);

    // About 1 MiB, sent head and body in one stream on the same connection.
    let body = pattern(1024 * 1024 + 7);
    let mut raw = format!(
        "PUT /big HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    client.send(&raw).unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], body.len());
    let recorded = last_request(&backend);
    assert_eq!(recorded.path, "/big");
    assert!(recorded.body == body, "1 MiB body differs");
    assert_content_length_framing(&recorded, body.len());

    // A body that arrives in pieces after the head.
    client
        .send(b"POST /slow HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\n")
        .unwrap();
    for piece in [&b"012"[..], b"3456", b"789"] {
        std::thread::sleep(Duration::from_millis(20));
        client.send(piece).unwrap();
    }
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(last_request(&backend).body, b"0123456789");

    // The connection is still good for a body-less request.
    assert_eq!(client.get("example.com", "/after").json()["path"], "/after");
    assert_eq!(last_request(&backend).header_count("content-length"), 0);
}

#[test]
fn chunked_request_bodies_are_decoded_and_reencoded() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);

    // Several chunks, chunk extensions (with a quoted value), upper-case hex, a trailer.
    let response = client.request(
        "POST /chunked-in HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;a=b\r\nhello\r\n\
         6;ext;q=\"x y\"\r\n world\r\n\
         B\r\n, chunked!\n\r\n\
         0\r\nx-trailer: yes\r\nx-other: 2\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    assert_eq!(recorded.body, b"hello world, chunked!\n");
    assert_chunked_framing(&recorded);

    // A bigger body in many chunks, written in pieces that split size lines and data.
    let data = pattern(200_000);
    let mut encoded = Vec::new();
    for piece in data.chunks(7000) {
        encoded.extend_from_slice(format!("{:x};n=1\r\n", piece.len()).as_bytes());
        encoded.extend_from_slice(piece);
        encoded.extend_from_slice(b"\r\n");
    }
    encoded.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
    client
        .send(
            b"PUT /chunked-big HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    for piece in encoded.chunks(65_537) {
        client.send(piece).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], data.len());
    let recorded = last_request(&backend);
    assert_eq!(recorded.path, "/chunked-big");
    assert!(recorded.body == data, "chunked body differs");
    assert_chunked_framing(&recorded);

    // An empty chunked body is still sent chunked, and the connection stays usable.
    let response = client.request(
        "POST /empty HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    assert!(recorded.body.is_empty());
    assert_chunked_framing(&recorded);
    assert_eq!(client.get("example.com", "/next").json()["path"], "/next");
}

// 2. Response bodies.

#[test]
fn length_and_chunked_responses_are_relayed() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);

    let response = client.get("example.com", "/bytes/12345");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("12345"));
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.body, pattern(12345));

    let response = client.get("example.com", "/bytes/0");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("0"));
    assert!(response.body.is_empty());

    let response = client.get("example.com", "/chunked/4321");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.body, pattern(4321));

    // All of it over one client connection and one upstream connection.
    assert_eq!(client.get("example.com", "/x").json()["path"], "/x");
    assert_eq!(backend.connection_count(), 1);
}

#[test]
fn close_delimited_responses_are_rechunked_for_http11_clients() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);

    let response = client.get("example.com", "/close/30000");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("connection"), None);
    assert_eq!(response.body, pattern(30000));

    // The client connection is still usable; the upstream one was not reused.
    let response = client.get("example.com", "/close/5");
    assert_eq!(response.body, pattern(5));
    let response = client.get("example.com", "/second");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], "/second");
    assert_eq!(backend.connection_count(), 3);
}

#[test]
fn head_requests_get_no_body_but_keep_content_length() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);

    let response = client.request("HEAD /bytes/1234 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("1234"));
    assert_eq!(response.header("transfer-encoding"), None);
    assert!(response.body.is_empty());

    let response = client.request("HEAD /echo HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(response.status, 200);
    assert!(response.header("content-length").is_some());
    assert_eq!(last_request(&backend).method, "HEAD");

    // Had any body bytes followed, this response would not parse.
    let response = client.get("example.com", "/after-head");
    assert_eq!(response.json()["path"], "/after-head");
    assert!(client.pending().is_empty());
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let (_backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    for status in [204u16, 304] {
        let response = client.get("example.com", &format!("/status/{status}"));
        assert_eq!(response.status, status);
        assert!(response.body.is_empty());
        assert_eq!(response.header("transfer-encoding"), None, "{status}");
        assert!(
            response.header("content-length").is_none()
                || response.header("content-length") == Some("0"),
            "{status}"
        );
        // The next response must start right where the head ended.
        let response = client.get("example.com", "/after");
        assert_eq!(response.json()["path"], "/after", "after {status}");
    }
}

// 3. Keep-alive on both sides.

#[test]
fn keep_alive_reuses_client_and_upstream_connections() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    for i in 0..50 {
        let response = client.get("example.com", &format!("/req/{i}"));
        assert_eq!(response.status, 200, "request {i}");
        assert_eq!(response.header("connection"), None, "request {i}");
        assert_eq!(response.json()["path"], format!("/req/{i}"));
    }
    assert_eq!(backend.request_count(), 50);
    // One client connection is served by one core, whose pool reuses its upstream connection.
    assert!(
        backend.connection_count() <= 4,
        "{} upstream connections for 50 requests",
        backend.connection_count()
    );

    // Connection: close from the client ends it after the response.
    let response =
        client.request("GET /last HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.is_closed(CLOSE_WAIT));
    // The backend did not see the client's Connection header.
    assert_eq!(last_request(&backend).header("connection"), None);
}

/// What a backend does to a keep-alive connection after answering its one request.
#[derive(Clone, Copy, Debug)]
enum WhileIdle {
    /// Closes it without saying so (a keep-alive timeout that ran out).
    Closes,
    /// Writes a response nobody asked for and keeps the connection open.
    SendsStrayBytes,
}

/// A backend that answers only the first request of each connection (keep-alive, body "ok"),
/// does `while_idle` 100 ms later, and counts its connections.
fn backend_that_answers_once(while_idle: WhileIdle) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
                match while_idle {
                    WhileIdle::Closes => drop(stream),
                    WhileIdle::SendsStrayBytes => {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale");
                        std::thread::sleep(Duration::from_secs(10));
                    }
                }
            });
        }
    });
    (endpoint, connections)
}

#[test]
fn a_pooled_connection_the_backend_closed_or_wrote_to_is_not_reused() {
    // Short and long idle periods: the check before reuse must see what happened either way
    // (a check that relied on the executor's readiness polls alone once missed closes that
    // came soon before reuse).
    for (while_idle, idle) in [
        (WhileIdle::Closes, Duration::from_millis(400)),
        (WhileIdle::SendsStrayBytes, Duration::from_millis(400)),
        (WhileIdle::Closes, Duration::from_millis(1500)),
    ] {
        let (endpoint, connections) = backend_that_answers_once(while_idle);
        let port = free_port();
        let _proxy = Proxy::start(&ConfigBuilder::catch_all_at(&endpoint, port).build());
        // One client connection: one core, whose pool holds the upstream connection.
        let mut client = Client::connect(port);
        for request in 0..3 {
            let response = client.get("example.com", "/");
            let case = format!("{while_idle:?} after {idle:?}, request {request}");
            assert_eq!(response.status, 200, "{case}");
            assert_eq!(response.body_text(), "ok", "{case}");
            assert_eq!(connections.load(Ordering::SeqCst), request + 1, "{case}");
            std::thread::sleep(idle);
        }
    }
}

// 4. Pipelining.

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    let big = pattern(100_000);
    let mut burst = Vec::new();
    for i in 0..10 {
        let request = match i {
            1 => "HEAD /bytes/100 HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
            3 => format!(
                "POST /p{i} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nbody{i}"
            ),
            4 => format!(
                "POST /p{i} HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\r\nabc\r\n0\r\n\r\n"
            ),
            5 => "GET /bytes/3000 HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
            6 => format!(
                "PUT /p{i} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
                big.len()
            ),
            7 => "GET /chunked/2500 HTTP/1.1\r\nHost: example.com\r\n\r\n".to_string(),
            _ => format!("GET /p{i}?n={i} HTTP/1.1\r\nHost: example.com\r\n\r\n"),
        };
        burst.extend_from_slice(request.as_bytes());
        if i == 6 {
            burst.extend_from_slice(&big);
        }
    }
    client.send(&burst).unwrap();
    for i in 0..10 {
        let response = client.read_response(i == 1).unwrap();
        assert_eq!(response.status, 200, "response {i}");
        match i {
            1 => {
                assert_eq!(response.header("content-length"), Some("100"));
                assert!(response.body.is_empty());
            }
            3 => {
                let json = response.json();
                assert_eq!(json["path"], "/p3");
                assert_eq!(json["method"], "POST");
                assert_eq!(json["body"], "body3");
            }
            4 => assert_eq!(response.json()["body"], "abc"),
            5 => assert_eq!(response.body, pattern(3000)),
            6 => {
                assert_eq!(response.json()["path"], "/p6");
                assert_eq!(response.json()["body_len"], big.len());
            }
            7 => assert_eq!(response.body, pattern(2500)),
            _ => assert_eq!(response.json()["path"], format!("/p{i}?n={i}")),
        }
    }
    let requests = backend.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/p0?n=0",
            "/bytes/100",
            "/p2?n=2",
            "/p3",
            "/p4",
            "/bytes/3000",
            "/p6",
            "/chunked/2500",
            "/p8?n=8",
            "/p9?n=9"
        ]
    );
    assert!(requests[6].body == big, "pipelined 100 KB body differs");
    assert_chunked_framing(&requests[4]);
    // Still usable afterwards.
    assert_eq!(client.get("example.com", "/tail").json()["path"], "/tail");
}

// 5. Hop-by-hop and forwarding headers.

#[test]
fn hop_by_hop_headers_are_dropped_and_forwarding_headers_added() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    let response = client.request(
        "GET /hop HTTP/1.1\r\n\
         Host: App.Example.com:8080\r\n\
         Connection: x-secret, keep-alive\r\n\
         X-Secret: s3cret\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Upgrade: h2c\r\n\
         X-Forwarded-For: 1.2.3.4\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed.example\r\n\
         X-Custom: kept\r\n\
         Accept: */*\r\n\
         Cookie: a=b\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert_eq!(recorded.header(gone), None, "{gone} was forwarded");
    }
    assert_eq!(recorded.header("x-custom"), Some("kept"));
    assert_eq!(recorded.header("accept"), Some("*/*"));
    assert_eq!(recorded.header("cookie"), Some("a=b"));
    assert_eq!(recorded.header_count("host"), 1);
    assert_eq!(recorded.header("host"), Some("App.Example.com:8080"));
    assert_eq!(recorded.header_count("x-forwarded-for"), 1);
    assert_eq!(
        recorded.header("x-forwarded-for"),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(recorded.header_count("x-forwarded-proto"), 1);
    assert_eq!(recorded.header("x-forwarded-proto"), Some("http"));
    assert_eq!(recorded.header_count("x-forwarded-host"), 1);
    assert_eq!(
        recorded.header("x-forwarded-host"),
        Some("App.Example.com:8080")
    );
    let forwarded = recorded.header("forwarded").expect("forwarded header");
    assert!(
        forwarded.contains("for=127.0.0.1;proto=http"),
        "forwarded: {forwarded}"
    );
    // Upgrade without Connection: upgrade is no upgrade: a normal exchange, connection kept.
    assert_eq!(client.get("example.com", "/next").json()["path"], "/next");

    // Without an incoming X-Forwarded-For the proxy starts the list.
    client.get("example.com", "/plain");
    let recorded = last_request(&backend);
    assert_eq!(recorded.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(recorded.header("x-forwarded-host"), Some("example.com"));
}

// 6. HTTP/1.0 clients.

#[test]
fn http10_clients_get_close_or_keep_alive_as_asked() {
    let (backend, _proxy, port) = start_one("b");

    // No keep-alive: answered, then closed.
    let mut client = Client::connect(port);
    let response = client.request("GET /ten HTTP/1.0\r\nHost: example.com\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], "/ten");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(client.is_closed(CLOSE_WAIT));
    // The upstream request is HTTP/1.1 with a Host.
    assert_eq!(last_request(&backend).header("host"), Some("example.com"));

    // Connection: keep-alive: answered with keep-alive, connection reusable.
    let mut client = Client::connect(port);
    for i in 0..3 {
        let response = client.request(&format!(
            "GET /ka/{i} HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("keep-alive"));
        assert!(response.header("content-length").is_some());
        assert_eq!(response.json()["path"], format!("/ka/{i}"));
    }
    // A Content-Length response keeps its length on a keep-alive HTTP/1.0 connection.
    let response = client
        .request("GET /bytes/777 HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(response.header("content-length"), Some("777"));
    assert_eq!(response.body, pattern(777));

    // A chunked upstream response goes out close-delimited, and the connection closes.
    let response = client.request(
        "GET /chunked/3456 HTTP/1.0\r\nHost: example.com\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.header("content-length"), None);
    assert_eq!(response.header("connection"), Some("close"));
    // The client reads a close-delimited body: it only returns once the proxy closed.
    assert_eq!(response.body, pattern(3456));
    assert!(client.is_closed(CLOSE_WAIT));

    // HTTP/1.0 without Host is allowed; the upstream gets the endpoint as Host.
    let mut client = Client::connect(port);
    let response = client.request("GET /nohost HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    assert_eq!(recorded.path, "/nohost");
    assert_eq!(recorded.header("host"), Some(backend.endpoint().as_str()));
}

// 7. Expect.

#[test]
fn expect_100_continue_gets_an_interim_response_before_the_body() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    client
        .send(
            b"POST /upload HTTP/1.1\r\nHost: example.com\r\nExpect: 100-continue\r\n\
              Content-Length: 12\r\n\r\n",
        )
        .unwrap();
    let interim = client.read_one(false).unwrap();
    assert_eq!(interim.status, 100);
    assert!(client.pending().is_empty(), "bytes after the 100 Continue");
    assert_eq!(backend.request_count(), 0);
    client.send(b"hello, world").unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"], "hello, world");
    let recorded = last_request(&backend);
    assert_eq!(recorded.body, b"hello, world");
    assert_eq!(recorded.header("expect"), None);
    assert_content_length_framing(&recorded, 12);

    // Chunked with Expect: same.
    client
        .send(
            b"POST /upload2 HTTP/1.1\r\nHost: example.com\r\nExpect: 100-Continue\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
    assert_eq!(client.read_one(false).unwrap().status, 100);
    client.send(b"3\r\nabc\r\n0\r\n\r\n").unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    assert_eq!(recorded.body, b"abc");
    assert_eq!(recorded.header("expect"), None);
}

#[test]
fn unsupported_expectation_is_417() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    let response = client.request(
        "POST /upload HTTP/1.1\r\nHost: example.com\r\nExpect: something-else\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(response.status, 417);
    assert!(client.is_closed(CLOSE_WAIT));
    assert_eq!(backend.request_count(), 0);
}

// 8. Malformed requests.

#[test]
fn malformed_requests_are_rejected_and_closed() {
    let (backend, _proxy, port) = start_one("b");
    let long_target = format!("/{}", "a".repeat(9000));
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_headers: String = (0..40)
        .map(|i| format!("X-Big{i}: {}\r\n", "v".repeat(2000)))
        .collect();
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CL then TE",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "TE then CL",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "two Content-Length",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".into(),
            400,
        ),
        (
            "Content-Length list",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello".into(),
            400,
        ),
        (
            "gzip, chunked",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(),
            501,
        ),
        (
            "chunked not final",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        (
            "HTTP/1.0 with TE",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
            400,
        ),
        ("bare LF", "GET / HTTP/1.1\nHost: a\n\n".into(), 400),
        (
            "bare LF in one header",
            "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n".into(),
            400,
        ),
        ("missing Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n".into(), 400),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
            400,
        ),
        (
            "request line over 8 KiB",
            format!("GET {long_target} HTTP/1.1\r\nHost: a\r\n\r\n"),
            414,
        ),
        (
            "101 headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n"),
            431,
        ),
        (
            "80 KB of headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{big_headers}\r\n"),
            431,
        ),
        ("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n".into(), 505),
        (
            "CONNECT",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(),
            405,
        ),
    ];
    let mut failures = Vec::new();
    for (name, raw, expected) in &cases {
        let mut client = Client::connect(port);
        client.send(raw.as_bytes()).unwrap();
        match client.read_response(false) {
            Ok(response) if response.status == *expected => {
                if response.header("connection") != Some("close") {
                    failures.push(format!("{name}: no connection: close"));
                }
                if !client.is_closed(CLOSE_WAIT) {
                    failures.push(format!("{name}: connection left open"));
                }
            }
            Ok(response) => failures.push(format!(
                "{name}: status {} instead of {expected}",
                response.status
            )),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(backend.request_count(), 0, "{:?}", backend.requests());
}

#[test]
fn request_smuggled_behind_cl_te_never_reaches_the_backend() {
    let (backend, _proxy, port) = start_one("b");
    for raw in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 43\r\n\r\n\
         0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut client = Client::connect(port);
        client.send(raw.as_bytes()).unwrap();
        let response = client.read_response(false).unwrap();
        assert_eq!(response.status, 400);
        assert!(client.is_closed(CLOSE_WAIT));
        // Nothing more than the one 400 came back.
        assert!(client.pending().is_empty(), "{:?}", client.pending());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(backend.request_count(), 0, "{:?}", backend.requests());
}

// 9. Absolute-form targets.

#[test]
fn absolute_form_target_routes_by_its_authority() {
    let example = Backend::start("example");
    let other = Backend::start("other");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/example:80", &[&example])
        .backend("ns/other:80", &[&other])
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/example",
                    &["example.com"],
                    vec![rule(vec![], vec![to("ns/example:80", 1)])],
                ),
                route(
                    "ns/other",
                    &["other.test"],
                    vec![rule(vec![], vec![to("ns/other:80", 1)])],
                ),
            ],
        )
        .build();
    let _proxy = Proxy::start(&config);
    let mut client = Client::connect(port);

    let response = client.request("GET http://example.com/p HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("example"));
    let recorded = last_request(&example);
    assert_eq!(recorded.path, "/p");
    assert_eq!(recorded.header_count("host"), 1);
    assert_eq!(recorded.header("host"), Some("example.com"));
    assert_eq!(other.request_count(), 0);

    let response =
        client.request("GET HTTP://example.com/p/q?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(response.backend(), Some("example"));
    assert_eq!(last_request(&example).path, "/p/q?x=1");

    // No path in the absolute form: "/".
    let response = client.request("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(response.backend(), Some("example"));
    assert_eq!(last_request(&example).path, "/");

    // The Host header alone still routes origin-form requests.
    assert_eq!(client.get("other.test", "/o").backend(), Some("other"));
}

// 10. Upgrade.

#[test]
fn upgrade_becomes_a_byte_tunnel() {
    let (backend, _proxy, port) = start_one("b");
    let mut raw = Raw::connect(port);
    // Bytes right after the head travel through the tunnel once it is up.
    raw.send(
        b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEARLY-BYTES",
    );
    let head_end = raw.read_until(0, b"\r\n\r\n") + 4;
    let head = String::from_utf8_lossy(&raw.buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    let early = raw.read_until(head_end, b"EARLY-BYTES");
    assert_eq!(early, head_end, "unexpected bytes after the 101 head");

    let recorded = last_request(&backend);
    assert_eq!(recorded.path, "/ws");
    assert_eq!(recorded.header("upgrade"), Some("websocket"));
    assert_eq!(
        recorded.header("connection").map(str::to_ascii_lowercase),
        Some("upgrade".into())
    );

    let mut from = early + "EARLY-BYTES".len();
    for message in [
        &b"ping-1"[..],
        b"\x00\x01binary\xff",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        raw.send(message);
        from = raw.read_until(from, message) + message.len();
    }
    let big = pattern(300_000);
    raw.send(&big);
    raw.read_exactly(from + big.len());
    assert!(raw.buf[from..] == big[..], "large tunnel payload differs");

    // Closing our side ends the tunnel: the backend sees EOF and the proxy closes.
    raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(raw.closes());
    assert_eq!(backend.request_count(), 1);
}

// 11. Large responses.

#[test]
fn large_responses_stream_intact() {
    let (_backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    let started = Instant::now();
    let response = client.get("example.com", "/bytes/5000000");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-length"), Some("5000000"));
    assert_eq!(response.body.len(), 5_000_000);
    assert!(response.body == pattern(5_000_000), "5 MB body differs");

    let response = client.get("example.com", "/chunked/1000000");
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert!(response.body == pattern(1_000_000), "chunked body differs");

    let response = client.get("example.com", "/close/1000000");
    assert!(response.body == pattern(1_000_000), "close body differs");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A request line of `len` bytes (CRLF not counted) with `Host: a`.
fn request_line_of(len: usize) -> String {
    let fixed = "GET / HTTP/1.1".len();
    let raw = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(len - fixed)
    );
    assert_eq!(raw.find("\r\n"), Some(len));
    raw
}

fn status_of(port: u16, raw: &str) -> u16 {
    let mut client = Client::connect(port);
    client.send(raw.as_bytes()).unwrap();
    client.read_response(false).unwrap().status
}

#[test]
fn head_limits_accept_requests_up_to_the_limit() {
    let (backend, _proxy, port) = start_one("b");
    // 100 header fields (Host included) are fine, 101 are not.
    for (count, expected) in [(100, 200), (101, 431)] {
        let headers: String = (1..count).map(|i| format!("X-H{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
        assert_eq!(status_of(port, &raw), expected, "{count} headers");
    }
    // A head of exactly 60 KiB (request line to the empty line) is fine, one byte more not.
    for (total, expected) in [(60 * 1024, 200), (60 * 1024 + 1, 431)] {
        let base = "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(total - base)
        );
        assert_eq!(raw.len(), total);
        assert_eq!(status_of(port, &raw), expected, "{total}-byte head");
    }
    assert_eq!(status_of(port, &request_line_of(8 * 1024 - 1)), 200);
    assert_eq!(status_of(port, &request_line_of(8 * 1024 + 1)), 414);
    assert_eq!(backend.request_count(), 3);
}

// Product bugs, each demonstrated by an ignored test.

#[test]
fn request_line_of_exactly_8_kib_is_accepted() {
    let (backend, _proxy, port) = start_one("b");
    assert_eq!(status_of(port, &request_line_of(8 * 1024)), 200);
    assert_eq!(backend.request_count(), 1);
}

#[test]
fn expect_100_continue_from_an_http10_client_is_ignored() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    client
        .send(b"POST /ten HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.send(b"hello").unwrap();
    let first = client.read_one(false).unwrap();
    assert_eq!(first.status, 200, "an HTTP/1.0 client got a 1xx response");
    assert_eq!(last_request(&backend).body, b"hello");
}

#[test]
fn every_incoming_forwarding_field_line_is_kept() {
    let (backend, _proxy, port) = start_one("b");
    let mut client = Client::connect(port);
    let response = client.request(
        "GET / HTTP/1.1\r\nHost: a\r\n\
         X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\
         Forwarded: for=1.1.1.1\r\nForwarded: for=2.2.2.2\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    let recorded = last_request(&backend);
    let forwarded_for: Vec<&str> = recorded
        .headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(forwarded_for.join(", "), "1.1.1.1, 2.2.2.2, 127.0.0.1");
    let forwarded: Vec<&str> = recorded
        .headers
        .iter()
        .filter(|(n, _)| n == "forwarded")
        .map(|(_, v)| v.as_str())
        .collect();
    let forwarded = forwarded.join(", ");
    assert!(
        forwarded.starts_with("for=1.1.1.1, for=2.2.2.2, for=127.0.0.1;proto=http"),
        "{forwarded}"
    );
}

#[test]
fn expect_100_continue_on_a_locally_answered_request_is_answered_at_once() {
    let backend = Backend::start("b");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/b:80", &[&backend])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/r",
                &["example.com"],
                vec![rule(vec![], vec![to("ns/b:80", 1)])],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // No route for this host: the proxy answers 404 itself. The client waits for either the
    // final status or a 100 before it sends its body (RFC 9110 §10.1.1).
    stream
        .write_all(
            b"POST /x HTTP/1.1\r\nHost: nowhere.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream
        .read(&mut buf)
        .expect("no answer within 2 s: the proxy is waiting for a body the client withholds");
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(
        got.starts_with("HTTP/1.1 404") || got.starts_with("HTTP/1.1 100"),
        "{got}"
    );
    assert_eq!(backend.request_count(), 0);
}
