//! The CORS filter over real sockets: preflights answered by the proxy (never forwarded),
//! cross-origin requests forwarded untouched with the CORS headers added to the response,
//! wildcards with and without credentials, and the backend's own CORS headers replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use portcullis_api::config::{Cors, Filter, RouteRule};
use support::config::{prefix, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, Response, free_port};

fn cors(origins: &[&str], methods: &[&str], headers: &[&str], credentials: bool) -> Cors {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Cors {
        allow_origins: list(origins),
        allow_methods: list(methods),
        allow_headers: list(headers),
        expose_headers: Vec::new(),
        allow_credentials: credentials,
        max_age_seconds: 5,
    }
}

fn cors_rule(path: &str, cors: Cors) -> RouteRule {
    let mut rule = rule(vec![prefix(path)], vec![to("ns/echo:80", 1)]);
    rule.filters = vec![Filter::Cors(cors)];
    rule
}

fn start(echo: &Backend) -> (Proxy, u16) {
    let mut listed = cors(
        &["https://www.foo.com", "https://*.bar.com"],
        &["GET", "OPTIONS"],
        &["x-header-1", "x-header-2"],
        true,
    );
    listed.expose_headers = vec!["x-header-3".into(), "x-header-4".into()];
    listed.max_age_seconds = 3600;
    let rules = vec![
        cors_rule("/cors-1", listed.clone()),
        cors_rule("/own-cors", listed),
        cors_rule("/any-auth", cors(&["*"], &["*"], &["*"], true)),
        cors_rule("/any-anon", cors(&["*"], &["*"], &["*"], false)),
        rule(vec![prefix("/plain")], vec![to("ns/echo:80", 1)]),
    ];
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/echo:80", &[echo])
        .http_port(
            port,
            "http",
            vec![support::config::route("ns/r", &["example.com"], rules)],
        )
        .build();
    (Proxy::start(&config), port)
}

fn send(client: &mut Client, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: example.com\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    client.request(&raw)
}

/// Every response header whose name starts with "access-control-", lowercased, in order.
fn cors_headers(response: &Response) -> Vec<(String, String)> {
    response
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .filter(|(n, _)| n.starts_with("access-control-"))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn preflights_are_answered_by_the_proxy_and_never_forwarded() {
    let echo = Backend::start("echo");
    let (_proxy, port) = start(&echo);
    let mut client = Client::connect(port);

    for origin in [
        "https://www.foo.com",
        "https://www.bar.com",
        "https://xpto.www.bar.com",
    ] {
        let response = send(
            &mut client,
            "OPTIONS",
            "/cors-1",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
            ],
        );
        assert_eq!(response.status, 204, "{origin}");
        assert_eq!(
            cors_headers(&response),
            pairs(&[
                ("access-control-allow-origin", origin),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-header-3, x-header-4"),
                ("access-control-allow-methods", "GET, OPTIONS"),
                ("access-control-allow-headers", "x-header-1, x-header-2"),
                ("access-control-max-age", "3600"),
            ])
        );
        assert_eq!(response.header("vary"), Some("Origin"));
        assert_eq!(response.header("content-type"), None);
        assert_eq!(
            response.header("content-length"),
            None,
            "a 204 has no length"
        );
    }

    // An origin the filter does not allow: refused, no CORS headers, still not forwarded.
    // "foobar.com" must not match "*.bar.com".
    let response = send(
        &mut client,
        "OPTIONS",
        "/cors-1",
        &[
            ("Origin", "https://foobar.com"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    assert_eq!(response.status, 403);
    assert!(cors_headers(&response).is_empty());

    // A preflight with a body: the body is read and dropped, the connection carries on.
    client
        .send(
            b"OPTIONS /cors-1 HTTP/1.1\r\nHost: example.com\r\nOrigin: https://www.foo.com\r\n\
              Access-Control-Request-Method: GET\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
    let response = client.read_response(false).unwrap();
    assert_eq!(response.status, 204);
    assert_eq!(client.get("example.com", "/plain").status, 200);

    // Only the last request reached the backend.
    let recorded = echo.requests();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].path, "/plain");
}

#[test]
fn cross_origin_requests_are_forwarded_untouched_and_answered_with_cors_headers() {
    let echo = Backend::start("echo");
    let (_proxy, port) = start(&echo);
    let mut client = Client::connect(port);

    // A GET carrying Access-Control-Request-* is not a preflight: forwarded as sent.
    let response = send(
        &mut client,
        "GET",
        "/cors-1",
        &[
            ("Origin", "https://www.bar.com"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
        ],
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("echo"));
    assert_eq!(
        cors_headers(&response),
        pairs(&[
            ("access-control-allow-origin", "https://www.bar.com"),
            ("access-control-allow-credentials", "true"),
            ("access-control-expose-headers", "x-header-3, x-header-4"),
        ])
    );
    assert_eq!(response.header("vary"), Some("Origin"));
    let recorded = echo.requests();
    let forwarded = recorded.last().unwrap();
    assert_eq!(forwarded.header("origin"), Some("https://www.bar.com"));
    assert_eq!(
        forwarded.header("access-control-request-headers"),
        Some("x-header-1, x-header-2")
    );

    // An origin not allowed is still served, without CORS headers.
    let response = send(
        &mut client,
        "GET",
        "/cors-1",
        &[("Origin", "https://foobar.com")],
    );
    assert_eq!(response.status, 200);
    assert!(cors_headers(&response).is_empty());
    assert_eq!(response.header("vary"), None);

    // No Origin: not a CORS request at all.
    let response = send(&mut client, "GET", "/cors-1", &[]);
    assert_eq!(response.status, 200);
    assert!(cors_headers(&response).is_empty());

    // OPTIONS without Access-Control-Request-Method is an ordinary request.
    let response = send(
        &mut client,
        "OPTIONS",
        "/cors-1",
        &[("Origin", "https://www.foo.com")],
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("echo"));
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://www.foo.com")
    );

    // A rule without the filter adds nothing.
    let response = send(
        &mut client,
        "GET",
        "/plain",
        &[("Origin", "https://www.foo.com")],
    );
    assert!(cors_headers(&response).is_empty());
}

#[test]
fn wildcards_are_echoed_with_credentials_and_sent_as_stars_without() {
    let echo = Backend::start("echo");
    let (_proxy, port) = start(&echo);
    let mut client = Client::connect(port);
    let preflight = [
        ("Origin", "https://other.foo.com:12345"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "x-header-1, x-header-2"),
    ];

    let response = send(&mut client, "OPTIONS", "/any-auth", &preflight);
    assert_eq!(response.status, 204);
    assert_eq!(
        cors_headers(&response),
        pairs(&[
            ("access-control-allow-origin", "https://other.foo.com:12345"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", "PUT"),
            ("access-control-allow-headers", "x-header-1, x-header-2"),
            ("access-control-max-age", "5"),
        ])
    );

    let response = send(&mut client, "OPTIONS", "/any-anon", &preflight);
    assert_eq!(response.status, 204);
    assert_eq!(
        cors_headers(&response),
        pairs(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "*"),
            ("access-control-allow-headers", "*"),
            ("access-control-max-age", "5"),
        ])
    );
    // The answer is the same for every origin, so it does not vary by it.
    assert_eq!(response.header("vary"), None);

    let response = send(
        &mut client,
        "PUT",
        "/any-auth",
        &[("Origin", "https://other.foo.com")],
    );
    assert_eq!(response.status, 200);
    assert_eq!(
        cors_headers(&response),
        pairs(&[
            ("access-control-allow-origin", "https://other.foo.com"),
            ("access-control-allow-credentials", "true"),
        ])
    );
    assert_eq!(echo.request_count(), 1);
}

#[test]
fn the_backends_own_cors_headers_are_replaced_and_its_vary_extended() {
    let echo = Backend::start("echo");
    let (_proxy, port) = start(&echo);
    let mut client = Client::connect(port);

    let response = send(
        &mut client,
        "GET",
        "/own-cors",
        &[("Origin", "https://www.foo.com")],
    );
    assert_eq!(response.status, 200);
    let origins: Vec<&str> = response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("access-control-allow-origin"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(origins, ["https://www.foo.com"]);
    assert_eq!(response.header("vary"), Some("Accept-Encoding, Origin"));

    // Without an allowed origin the backend's headers pass through as they are.
    let response = send(&mut client, "GET", "/own-cors", &[]);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://backend.example")
    );
    assert_eq!(response.header("vary"), Some("Accept-Encoding"));
}
