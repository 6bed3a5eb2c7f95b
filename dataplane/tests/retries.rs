//! HTTPRoute rule retries over real sockets: a response with one of the rule's codes, or no
//! response at all (connection refused, closed unanswered, backend timeout), is abandoned and
//! the request sent again, up to `attempts` more times, to the backend's next endpoint;
//! other codes, spent attempts, requests with streamed bodies and the request deadline all
//! end with the backend's own answer (or the proxy's 502/504).

mod support;

use portcullis_api::config::{HttpRoute, RetryPolicy, RouteRule, RuleTimeouts};
use support::config::{prefix, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

struct Policy {
    codes: &'static [u16],
    attempts: u32,
    backoff_ms: u64,
    request_ms: Option<u64>,
    backend_ms: Option<u64>,
    backend: &'static str,
}

const QUICK: Policy = Policy {
    codes: &[500],
    attempts: 3,
    backoff_ms: 10,
    request_ms: None,
    backend_ms: None,
    backend: "ns/flaky:80",
};

fn retrying(host: &str, policy: Policy) -> HttpRoute {
    let rule = RouteRule {
        retry: Some(RetryPolicy {
            codes: policy.codes.to_vec(),
            attempts: policy.attempts,
            backoff_ms: policy.backoff_ms,
        }),
        timeouts: RuleTimeouts {
            request_ms: policy.request_ms,
            backend_request_ms: policy.backend_ms,
        },
        ..rule(vec![prefix("/")], vec![to(policy.backend, 1)])
    };
    route(&format!("ns/{host}"), &[host], vec![rule])
}

struct Setup {
    /// The one endpoint of `ns/flaky`, and with `b` the two of `ns/pair`.
    a: Backend,
    b: Backend,
    _proxy: Proxy,
    port: u16,
}

fn start() -> Setup {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let port = free_port();
    // Nothing listens on `refused`: connecting to it fails.
    let refused = format!("127.0.0.1:{}", free_port());
    let config = ConfigBuilder::new(1)
        .backend("ns/flaky:80", &[&a])
        .backend("ns/pair:80", &[&a, &b])
        .backend_at("ns/half-down:80", &[&refused, &b.endpoint()])
        .http_port(
            port,
            "http",
            vec![
                retrying("three.example", QUICK),
                retrying(
                    "all.example",
                    Policy {
                        codes: &[500, 502, 503, 504],
                        attempts: 2,
                        ..QUICK
                    },
                ),
                retrying(
                    "deadline.example",
                    Policy {
                        backoff_ms: 100,
                        request_ms: Some(200),
                        ..QUICK
                    },
                ),
                retrying(
                    "pair.example",
                    Policy {
                        backend: "ns/pair:80",
                        ..QUICK
                    },
                ),
                retrying(
                    "unanswered.example",
                    Policy {
                        codes: &[],
                        attempts: 2,
                        backend_ms: Some(300),
                        ..QUICK
                    },
                ),
                retrying(
                    "half-down.example",
                    Policy {
                        codes: &[],
                        attempts: 1,
                        backend: "ns/half-down:80",
                        ..QUICK
                    },
                ),
                route(
                    "ns/half-down-plain.example",
                    &["half-down-plain.example"],
                    vec![rule(vec![prefix("/")], vec![to("ns/half-down:80", 1)])],
                ),
                route(
                    "ns/plain.example",
                    &["plain.example"],
                    vec![rule(vec![prefix("/")], vec![to("ns/flaky:80", 1)])],
                ),
            ],
        )
        .build();
    // One core: its round robin moves each retry of pair.example to the other endpoint.
    let proxy = Proxy::start_with(&config, &["--cores", "1"]);
    Setup {
        a,
        b,
        _proxy: proxy,
        port,
    }
}

impl Setup {
    /// Requests both backends received for `path`.
    fn received(&self, path: &str) -> usize {
        self.a.received(path) + self.b.received(path)
    }
}

#[test]
fn a_retryable_status_is_retried_until_the_backend_recovers() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    // Two failures, then success, within three retries.
    let response = client.get("three.example", "/fail/2/500/x");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(setup.received("/fail/2/500/x"), 3);
    // The client connection is still in step: the next request gets its own answer.
    let next = client.get("three.example", "/next");
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["path"], "/next");
}

#[test]
fn spent_attempts_answer_with_the_last_response() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    let response = client.get("three.example", "/fail/4/500/y");
    assert_eq!(response.status, 500);
    // The first attempt and three retries.
    assert_eq!(setup.received("/fail/4/500/y"), 4);
    let response = client.get("all.example", "/fail/3/502/z");
    assert_eq!(response.status, 502);
    assert_eq!(setup.received("/fail/3/502/z"), 3);
    let response = client.get("all.example", "/fail/1/503/w");
    assert_eq!(response.status, 200);
}

#[test]
fn codes_the_rule_does_not_name_and_rules_without_retry_are_not_retried() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    let response = client.get("three.example", "/fail/2/503/a");
    assert_eq!(response.status, 503);
    assert_eq!(setup.received("/fail/2/503/a"), 1);
    let response = client.get("plain.example", "/fail/2/500/b");
    assert_eq!(response.status, 500);
    assert_eq!(setup.received("/fail/2/500/b"), 1);
}

#[test]
fn a_retry_goes_to_the_next_endpoint() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    // Each endpoint fails the path once: the first attempt fails on one, the retry on the
    // other, the second retry succeeds on the first again.
    let path = "/fail/1/500/c";
    let response = client.get("pair.example", path);
    assert_eq!(response.status, 200);
    let mut split = [setup.a.received(path), setup.b.received(path)];
    split.sort();
    assert_eq!(split, [1, 2]);
}

#[test]
fn a_small_body_is_sent_again_whole_and_a_streamed_one_is_not_retried() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    let response = client.request(
        "POST /fail/1/500/small HTTP/1.1\r\nHost: three.example\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"], "hello");
    // A chunked body streams through the proxy and is not kept for a retry.
    let response = client.request(
        "POST /fail/1/500/chunked HTTP/1.1\r\nHost: three.example\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 500);
    assert_eq!(setup.received("/fail/1/500/chunked"), 1);
}

#[test]
fn no_retry_starts_after_the_request_deadline() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    // Backoffs of 100 then 200 ms against a 200 ms request deadline: the first retry is made,
    // the second would start after the deadline, so the last failure is the answer.
    let response = client.get("deadline.example", "/fail/9/500/slow");
    assert_eq!(response.status, 500);
    assert_eq!(setup.received("/fail/9/500/slow"), 2);
}

#[test]
fn an_attempt_closed_unanswered_or_timed_out_is_retried_without_codes() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    let response = client.get("unanswered.example", "/drop/2/a");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(setup.received("/drop/2/a"), 3);
    // The first attempt outlives the 300 ms backend timeout; the retry is answered at once.
    let started = std::time::Instant::now();
    let response = client.get("unanswered.example", "/stall/1/3000/b");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert!(started.elapsed() < std::time::Duration::from_millis(2500));
    assert_eq!(setup.received("/stall/1/3000/b"), 2);
    // A status is still the backend's answer when the rule names no codes.
    let response = client.get("unanswered.example", "/fail/1/500/c");
    assert_eq!(response.status, 500);
    // Spent attempts: the proxy's own 502.
    let response = client.get("unanswered.example", "/drop/5/d");
    assert_eq!(response.status, 502);
    assert_eq!(setup.received("/drop/5/d"), 3);
    // A streamed body is not held for a retry.
    let response = client.request(
        "POST /drop/1/e HTTP/1.1\r\nHost: unanswered.example\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 502);
    assert_eq!(setup.received("/drop/1/e"), 1);
    // Without a retry policy, an unanswered attempt is the proxy's 502.
    let response = client.get("plain.example", "/drop/1/f");
    assert_eq!(response.status, 502);
}

#[test]
fn a_refused_connect_is_retried_on_the_next_endpoint() {
    let setup = start();
    let mut client = Client::connect(setup.port);
    // Round robin over a refused endpoint and a live one: without retries every other
    // request fails, with them none does.
    let plain: Vec<u16> = (0..4)
        .map(|i| {
            client
                .get("half-down-plain.example", &format!("/plain/{i}"))
                .status
        })
        .collect();
    assert_eq!(plain.iter().filter(|s| **s == 502).count(), 2, "{plain:?}");
    for i in 0..4 {
        let response = client.get("half-down.example", &format!("/retried/{i}"));
        assert_eq!(response.status, 200, "{}", response.body_text());
    }
}
