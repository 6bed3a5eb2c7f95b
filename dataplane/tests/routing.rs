//! Routing over real sockets: host and path matching, and the statuses of requests that
//! cannot be served (404, 500, 502, 503).

mod support;

use support::config::{exact, invalid, prefix, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};

#[test]
fn routes_by_host_and_path() {
    let api = Backend::start("api");
    let web = Backend::start("web");
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend("ns/api:80", &[&api])
        .backend("ns/web:80", &[&web])
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/api",
                    &["api.example.com"],
                    vec![rule(vec![prefix("/v1")], vec![to("ns/api:80", 1)])],
                ),
                route("ns/web", &[], vec![rule(vec![], vec![to("ns/web:80", 1)])]),
            ],
        )
        .build();
    let _proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    assert_eq!(
        client.get("api.example.com", "/v1/items").backend(),
        Some("api")
    );
    assert_eq!(
        client.get("API.example.com:8080", "/v1").backend(),
        Some("api")
    );
    assert_eq!(client.get("api.example.com", "/v10").backend(), Some("web"));
    assert_eq!(
        client.get("other.example.com", "/v1/items").backend(),
        Some("web")
    );
    let echoed = client.get("api.example.com", "/v1/items?q=1").json();
    assert_eq!(echoed["path"], "/v1/items?q=1");
    assert_eq!(echoed["headers"]["host"][0], "api.example.com");
}

#[test]
fn unservable_requests_get_the_gateway_api_statuses() {
    let live = Backend::start("live");
    let port = free_port();
    let closed = format!("127.0.0.1:{}", free_port());
    let config = ConfigBuilder::new(1)
        .backend("ns/live:80", &[&live])
        .backend_at("ns/closed:80", &[&closed])
        .backend_at("ns/empty:80", &[])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/r",
                &["example.com"],
                vec![
                    rule(vec![exact("/no-backends")], vec![]),
                    rule(vec![exact("/invalid")], vec![invalid("BackendNotFound", 1)]),
                    rule(vec![exact("/zero")], vec![to("ns/live:80", 0)]),
                    rule(vec![exact("/refused")], vec![to("ns/closed:80", 1)]),
                    rule(vec![exact("/no-endpoints")], vec![to("ns/empty:80", 1)]),
                    rule(vec![exact("/ok")], vec![to("ns/live:80", 1)]),
                ],
            )],
        )
        .build();
    let proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    for (path, status) in [
        ("/ok", 200),
        ("/nothing-here", 404),
        ("/no-backends", 500),
        ("/invalid", 500),
        ("/zero", 500),
        ("/refused", 502),
        ("/no-endpoints", 503),
        ("/ok", 200),
    ] {
        assert_eq!(client.get("example.com", path).status, status, "{path}");
    }
    assert_eq!(client.get("unknown.host", "/ok").status, 404);
    assert!(proxy.metric("portcullis_upstream_errors_total", "kind=\"connect\"") >= 1.0);
    assert!(proxy.metric("portcullis_requests_total", "status_class=\"5xx\"") >= 5.0);
}
