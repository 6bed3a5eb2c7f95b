//! RequestMirror over real sockets: copies reach the mirror backend with the rule's header
//! edits and the body, sampled shares hold, and a slow, dead or oversized mirror never
//! changes what the client gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use portcullis_api::config::{Filter, HeaderModifier, RequestMirror, RouteRule};
use support::config::{header_value, prefix, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

fn mirror(backend: &str, numerator: u32, denominator: u32) -> Filter {
    Filter::RequestMirror(RequestMirror {
        backend: backend.into(),
        numerator,
        denominator,
    })
}

fn with_filters(path: &str, filters: Vec<Filter>) -> RouteRule {
    let mut rule = rule(vec![prefix(path)], vec![to("ns/main:80", 1)]);
    rule.filters = filters;
    rule
}

/// Waits until `backend` has recorded `count` requests (copies arrive asynchronously).
fn wait_for(backend: &Backend, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend.request_count() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The count of mirror copies with `outcome` once it reaches `at_least` (or after 10 s).
fn wait_for_metric(proxy: &Proxy, outcome: &str, at_least: f64) -> f64 {
    let filter = format!("outcome=\"{outcome}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = proxy.metric("portcullis_mirror_requests_total", &filter);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn copies_carry_the_edited_request_and_its_body() {
    let main = Backend::start("main");
    let shadow = Backend::start("shadow");
    let add_header = Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![header_value("X-Edited", "yes")],
        ..HeaderModifier::default()
    });
    let mut rules = vec![with_filters(
        "/",
        vec![add_header, mirror("ns/shadow:80", 100, 100)],
    )];
    // A filter of the primary backendRef applies to what that backend gets, not to copies.
    rules[0].backends[0].filters = vec![Filter::RequestHeaderModifier(HeaderModifier {
        set: vec![header_value("X-Primary-Only", "secret")],
        ..HeaderModifier::default()
    })];
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/main:80", &[&main])
        .backend("ns/shadow:80", &[&shadow])
        .http_port(port, "http", vec![route("ns/r", &["example.com"], rules)])
        .build();
    let proxy = Proxy::start(&config);
    let mut client = Client::connect(port);

    let response = client.get("example.com", "/a/path?q=1");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("main"));
    wait_for(&shadow, 1);
    let copy = &shadow.requests()[0];
    assert_eq!(
        (copy.method.as_str(), copy.path.as_str()),
        ("GET", "/a/path?q=1")
    );
    assert_eq!(copy.header("host"), Some("example.com"));
    assert_eq!(copy.header("x-edited"), Some("yes"));
    assert_eq!(copy.header("connection"), Some("close"));
    assert_eq!(copy.header("x-primary-only"), None);
    assert_eq!(main.requests()[0].header("x-primary-only"), Some("secret"));

    // Bodies by length and chunked both arrive whole.
    let response = client.request(
        "POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!(response.status, 200);
    let response = client.request(
        "POST /chunks HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    wait_for(&shadow, 3);
    let copies = shadow.requests();
    for path in ["/upload", "/chunks"] {
        let copy = copies.iter().find(|r| r.path == path).unwrap();
        assert_eq!(copy.body, b"hello world", "{path}");
    }

    // A body over the copy limit is not mirrored at all; the request itself is unaffected.
    let big = vec![b'x'; 100 * 1024];
    let mut raw = format!(
        "POST /big HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    raw.extend_from_slice(&big);
    client.send(&raw).unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body_len"], 100 * 1024);
    std::thread::sleep(Duration::from_millis(200));
    assert!(shadow.requests().iter().all(|r| r.path != "/big"));
    assert_eq!(wait_for_metric(&proxy, "skipped", 1.0), 1.0);
    assert_eq!(wait_for_metric(&proxy, "completed", 3.0), 3.0);
    // The primary requests all went to the main backend, once each.
    assert_eq!(main.request_count(), 4);
}

#[test]
fn shares_are_sampled_and_each_mirror_gets_its_own_copy() {
    let main = Backend::start("main");
    let all = Backend::start("all");
    let half = Backend::start("half");
    let none = Backend::start("none");
    let rules = vec![with_filters(
        "/",
        vec![
            mirror("ns/all:80", 100, 100),
            mirror("ns/half:80", 25, 50),
            mirror("ns/none:80", 0, 100),
        ],
    )];
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/main:80", &[&main])
        .backend("ns/all:80", &[&all])
        .backend("ns/half:80", &[&half])
        .backend("ns/none:80", &[&none])
        .http_port(port, "http", vec![route("ns/r", &["example.com"], rules)])
        .build();
    let _proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    let requests = 400;
    for i in 0..requests {
        assert_eq!(client.get("example.com", &format!("/{i}")).status, 200);
    }
    wait_for(&all, requests);
    assert_eq!(all.request_count(), requests);
    std::thread::sleep(Duration::from_millis(200));
    // 200 expected; six standard deviations (10 each) either way.
    let halved = half.request_count();
    assert!(
        (140..=260).contains(&halved),
        "{halved} of {requests} copied"
    );
    assert_eq!(none.request_count(), 0);
    assert_eq!(main.request_count(), requests);
}

#[test]
fn a_dead_mirror_never_affects_the_request() {
    let main = Backend::start("main");
    let dead = format!("127.0.0.1:{}", free_port());
    let rules = vec![with_filters("/", vec![mirror("ns/dead:80", 100, 100)])];
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/main:80", &[&main])
        .backend_at("ns/dead:80", &[dead.as_str()])
        .http_port(port, "http", vec![route("ns/r", &["example.com"], rules)])
        .build();
    let proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    for _ in 0..20 {
        let response = client.get("example.com", "/");
        assert_eq!(response.status, 200);
        assert_eq!(response.backend(), Some("main"));
    }
    assert_eq!(wait_for_metric(&proxy, "failed", 20.0), 20.0);
    assert_eq!(
        proxy.metric("portcullis_mirror_requests_in_flight", ""),
        0.0
    );
}

#[test]
fn a_retried_request_is_copied_once_even_when_its_first_connect_failed() {
    let main = Backend::start("main");
    let shadow = Backend::start("shadow");
    // Nothing listens on `refused`: round robin sends every other first attempt there.
    let refused = format!("127.0.0.1:{}", free_port());
    let mut retried = with_filters("/", vec![mirror("ns/shadow:80", 100, 100)]);
    retried.retry = Some(portcullis_api::config::RetryPolicy {
        codes: Vec::new(),
        attempts: 1,
        backoff_ms: 5,
    });
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/main:80", &[&refused, &main.endpoint()])
        .backend("ns/shadow:80", &[&shadow])
        .http_port(
            port,
            "http",
            vec![route("ns/r", &["example.com"], vec![retried])],
        )
        .build();
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);
    let mut client = Client::connect(port);
    for i in 0..4 {
        let response = client.get("example.com", &format!("/h1/{i}"));
        assert_eq!(response.status, 200);
    }
    // HTTP/1.1 with a small body held whole.
    let response = client
        .request("POST /h1/body HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(response.status, 200);
    let response = client
        .request("POST /h1/body2 HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(response.status, 200);
    wait_for(&shadow, 6);
    std::thread::sleep(Duration::from_millis(200));
    let mut paths: Vec<String> = shadow.requests().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/h1/0", "/h1/1", "/h1/2", "/h1/3", "/h1/body", "/h1/body2"]
    );
}
