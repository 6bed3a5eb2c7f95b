//! HTTPRoute rule timeouts over real sockets: `timeouts.request` and
//! `timeouts.backendRequest` answer 504 when the backend is slower, "0s" disables them, and a
//! late upstream answer never reaches the next request on the same client connection.

mod support;

use portcullis_api::config::{HttpRoute, RouteRule, RuleTimeouts};
use support::config::{prefix, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

/// A route for `host` whose one rule has these timeouts (the test backend reads its delay
/// from the path, `/sleep/MS`, so the rules are told apart by host).
fn timed(host: &str, request_ms: Option<u64>, backend_request_ms: Option<u64>) -> HttpRoute {
    let rule = RouteRule {
        timeouts: RuleTimeouts {
            request_ms,
            backend_request_ms,
        },
        ..rule(vec![prefix("/")], vec![to("ns/slow:80", 1)])
    };
    route(&format!("ns/{host}"), &[host], vec![rule])
}

fn start() -> (Backend, Proxy, u16) {
    let backend = Backend::start("slow");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/slow:80", &[&backend])
        .http_port(
            port,
            "http",
            vec![
                timed("request.example", Some(300), None),
                timed("backend.example", None, Some(300)),
                timed("disabled.example", Some(0), Some(0)),
            ],
        )
        .build();
    let proxy = Proxy::start(&config);
    (backend, proxy, port)
}

#[test]
fn a_request_slower_than_its_timeout_gets_504() {
    let (_backend, _proxy, port) = start();
    let mut client = Client::connect(port);
    for host in ["request.example", "backend.example"] {
        let fast = client.get(host, "/sleep/10");
        assert_eq!(fast.status, 200, "{host}: fast request");
        let started = std::time::Instant::now();
        let slow = client.get(host, "/sleep/1500");
        assert_eq!(slow.status, 504, "{host}: slow request");
        let waited = started.elapsed();
        assert!(
            waited < std::time::Duration::from_millis(1200),
            "{host}: answered after {waited:?}"
        );
        if client.is_closed(std::time::Duration::from_millis(20)) {
            client = Client::connect(port);
        }
    }
}

#[test]
fn a_zero_timeout_disables_it() {
    let (_backend, _proxy, port) = start();
    let mut client = Client::connect(port);
    let response = client.get("disabled.example", "/sleep/800");
    assert_eq!(response.status, 200);
}

#[test]
fn a_late_upstream_answer_never_reaches_the_next_request() {
    let (backend, _proxy, port) = start();
    let mut client = Client::connect(port);
    let slow = client.get("request.example", "/sleep/600");
    assert_eq!(slow.status, 504);
    // The same client connection, if kept, must get its own answer, not the late one.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut next_client = if client.is_closed(std::time::Duration::from_millis(50)) {
        Client::connect(port)
    } else {
        client
    };
    let next = next_client.get("request.example", "/marker");
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["path"], "/marker");
    assert_eq!(backend.request_count(), 2);
}
