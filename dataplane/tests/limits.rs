//! Connection limits and slow clients over real loopback sockets: the head must arrive in
//! time, bodies and responses must keep a minimum rate, idle connections close, each core
//! holds a bounded number of connections (the rest get a 503), and a connection serves a
//! bounded number of requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use portcullis_api::config::ProxySettings;
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

/// One backend behind a catch-all route, one core, with `settings` edited by `edit`.
fn start(edit: impl FnOnce(&mut ProxySettings)) -> (Backend, Proxy, u16) {
    let backend = Backend::start("b");
    let port = free_port();
    let config = ConfigBuilder::catch_all(&backend, port)
        .settings(edit)
        .build();
    let proxy = Proxy::start_with(&config, &["--cores", "1"]);
    (backend, proxy, port)
}

/// Sends `pieces` one by one, `gap` apart, until the proxy answers; returns when the answer
/// came (since the first piece) and the answer's status.
fn trickle(client: &mut Client, pieces: &[&[u8]], gap: Duration) -> (Duration, u16) {
    let started = Instant::now();
    for piece in pieces {
        if client.send(piece).is_err() {
            break;
        }
        std::thread::sleep(gap);
        if client.has_data() {
            break;
        }
    }
    let response = client.read_response(false).expect("an answer");
    (started.elapsed(), response.status)
}

#[test]
fn a_head_that_trickles_in_gets_408_at_the_header_timeout() {
    let (backend, _proxy, port) = start(|s| s.header_read_timeout_ms = 1_000);
    let mut client = Client::connect(port);
    let lines: Vec<Vec<u8>> = std::iter::once(b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec())
        .chain((0..40).map(|i| format!("X-Slow-{i}: v\r\n").into_bytes()))
        .collect();
    let pieces: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let (elapsed, status) = trickle(&mut client, &pieces, Duration::from_millis(100));
    assert_eq!(status, 408);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    assert!(client.is_closed(Duration::from_secs(3)));
    assert_eq!(backend.request_count(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let (_backend, _proxy, port) = start(|s| s.idle_timeout_ms = 500);
    let mut client = Client::connect(port);
    assert_eq!(client.get("a", "/").status, 200);
    let started = Instant::now();
    assert!(client.is_closed(Duration::from_secs(3)));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1_500),
        "closed after {elapsed:?}"
    );
}

/// A keep-alive connection parks after a quarter second without a request (its buffers and
/// serving state are dropped) and picks up where it left off: the same upstream connection,
/// a request whose first byte arrives alone, pipelined requests, and the idle timeout counted
/// from the last response, not from when it parked.
#[test]
fn a_parked_connection_resumes_and_keeps_its_idle_timeout() {
    let (backend, _proxy, port) = start(|s| s.idle_timeout_ms = 1_200);
    let mut client = Client::connect(port);
    let first = client.get("a", "/one");
    assert_eq!(first.status, 200);
    std::thread::sleep(Duration::from_millis(500));
    // One byte, a pause long enough to matter, then the rest of the head.
    client.send(b"G").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    client.send(b"ET /two HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let second = client.read_response(false).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(
        first.header("x-connection"),
        second.header("x-connection"),
        "a parked client connection kept its upstream connection in the pool"
    );
    std::thread::sleep(Duration::from_millis(500));
    client
        .send(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\nGET /four HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response(false).unwrap().status, 200);
    assert_eq!(client.read_response(false).unwrap().status, 200);
    assert_eq!(backend.request_count(), 4);

    let started = Instant::now();
    assert!(client.is_closed(Duration::from_secs(4)));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_000) && elapsed < Duration::from_millis(2_200),
        "closed after {elapsed:?}"
    );
}

#[test]
fn a_body_below_the_minimum_rate_gets_408_and_the_connection_closes() {
    let (backend, _proxy, port) = start(|s| {
        s.min_data_rate_bytes_per_s = 100;
        s.min_data_rate_grace_ms = 1_000;
    });
    let mut client = Client::connect(port);
    // 1 byte every 200 ms is 5 B/s; 100 B/s after a 1 s grace cuts it off at about 1 s.
    let mut pieces: Vec<&[u8]> =
        vec![b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n"];
    pieces.extend(std::iter::repeat_n(&b"x"[..], 50));
    let (elapsed, status) = trickle(&mut client, &pieces, Duration::from_millis(200));
    assert_eq!(status, 408);
    assert!(elapsed < Duration::from_millis(2_500), "after {elapsed:?}");
    assert!(client.is_closed(Duration::from_secs(3)));
    assert!(
        backend.requests().iter().all(|r| r.path != "/slow"),
        "a partial body was taken for a whole request"
    );
}

#[test]
fn a_body_above_the_minimum_rate_is_forwarded_however_long_it_takes() {
    let (backend, _proxy, port) = start(|s| {
        s.min_data_rate_bytes_per_s = 100;
        s.min_data_rate_grace_ms = 200;
    });
    let mut client = Client::connect(port);
    client
        .send(b"POST /steady HTTP/1.1\r\nHost: a\r\nContent-Length: 600\r\n\r\n")
        .unwrap();
    // 60 bytes every 200 ms is 300 B/s, for 2 s: longer than the grace, above the minimum.
    for _ in 0..10 {
        client.send(&[b'y'; 60]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], 600);
    assert_eq!(backend.request_count(), 1);
}

#[test]
fn a_client_that_reads_too_slowly_is_cut_off() {
    let (_backend, _proxy, port) = start(|s| {
        s.min_data_rate_bytes_per_s = 1 << 20;
        s.min_data_rate_grace_ms = 500;
    });
    let mut stream = support::client::connect_with_receive_buffer(port, 4096);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    // Read 16 KiB every 100 ms (160 KiB/s) against a minimum of 1 MiB/s.
    let started = Instant::now();
    let mut received = 0usize;
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still connected after {received} bytes"
        );
    }
    assert!(received < 64 << 20, "the whole response was delivered");
}

#[test]
fn connections_over_the_per_core_limit_get_503() {
    let (_backend, proxy, port) = start(|s| s.max_connections_per_core = 2);
    let mut held: Vec<Client> = (0..2).map(|_| Client::connect(port)).collect();
    for client in &mut held {
        assert_eq!(client.get("a", "/").status, 200);
    }
    let mut extra = Client::connect(port);
    extra.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let response = extra.read_response(false).unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(extra.is_closed(Duration::from_secs(3)));

    // A freed slot is taken again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut next = Client::connect(port);
    assert_eq!(next.get("a", "/").status, 200);
    let (_, metrics) = proxy.admin_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "portcullis_connections_rejected_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_connection_serves_at_most_max_requests_then_closes() {
    let (_backend, _proxy, port) = start(|s| s.max_requests_per_connection = 3);
    let mut client = Client::connect(port);
    for i in 1..=3 {
        let response = client.get("a", "/");
        assert_eq!(response.status, 200);
        let expected = if i == 3 { Some("close") } else { None };
        assert_eq!(response.header("connection"), expected, "request {i}");
    }
    assert!(client.is_closed(Duration::from_secs(3)));
}

#[test]
fn a_head_sent_a_byte_at_a_time_is_parsed_once_per_line_and_answered() {
    let (backend, _proxy, port) = start(|_| {});
    let mut client = Client::connect(port);
    let raw = b"GET /bytewise HTTP/1.1\r\nHost: a\r\nX-One: 1\r\nX-Two: 2\r\n\r\n";
    for byte in raw {
        client.send(&[*byte]).unwrap();
    }
    assert_eq!(client.read_response(false).unwrap().status, 200);
    assert!(backend.requests().iter().any(|r| r.path == "/bytewise"));

    // A bad request line is refused as soon as it ends, not when the head would.
    let mut client = Client::connect(port);
    for byte in b"GET /a b c HTTP/1.1\r\n" {
        client.send(&[*byte]).unwrap();
    }
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 400);
}

#[test]
fn a_client_that_stops_reading_is_reset_once_the_grace_is_over() {
    // The kernel takes megabytes into the socket's buffers before a write blocks; those bytes
    // must not count as delivered, or the idle timeout (60 s here) would be the only limit.
    // The client reads nothing: at 64 KiB/s, what its small receive buffer acknowledged buys
    // well under a second after the 1 s grace.
    let (_backend, _proxy, port) = start(|s| {
        s.min_data_rate_bytes_per_s = 64 * 1024;
        s.min_data_rate_grace_ms = 1_000;
    });
    let mut stream = support::client::connect_with_receive_buffer(port, 4096);
    std::io::Write::write_all(
        &mut stream,
        b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let asked = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    stream
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    // A reset discards what the client had not read yet; a graceful close would deliver it.
    let mut big = vec![0u8; 1 << 20];
    let outcome = loop {
        match stream.read(&mut big) {
            Ok(0) => break "eof",
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("{e} after {:?}", asked.elapsed()),
        }
    };
    assert_eq!(outcome, "reset");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "cut off after {:?}",
        asked.elapsed()
    );
}

#[test]
fn every_connection_of_a_burst_over_the_limit_is_told_503() {
    let (_backend, proxy, port) = start(|s| s.max_connections_per_core = 1);
    let mut held = Client::connect(port);
    assert_eq!(held.get("a", "/").status, 200);
    // More refusals at once than the proxy lingers on (256).
    let burst: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let mut told = 0;
    for mut stream in burst {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 503 ") {
            told += 1;
        }
    }
    assert_eq!(told, 400);
    assert_eq!(held.get("a", "/").status, 200);
    let (_, metrics) = proxy.admin_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "portcullis_connections_rejected_total 400"),
        "{metrics}"
    );
}

#[test]
fn an_event_stream_with_long_gaps_is_not_cut_off_for_the_upstream_s_pauses() {
    // Three events 1.5 s apart against a grace of 0.5 s: the gaps are the upstream's, and the
    // client reads everything at once, so the minimum rate has nothing to hold against it.
    let (_backend, _proxy, port) = start(|s| {
        s.min_data_rate_bytes_per_s = 4 * 1024;
        s.min_data_rate_grace_ms = 500;
    });
    let mut client = Client::connect(port);
    let started = Instant::now();
    let response = client.get("a", "/events/3/1500");
    assert_eq!(response.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&response.body),
        "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}
