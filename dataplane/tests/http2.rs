//! HTTP/2 over real sockets: clients speaking h2c with prior knowledge on an HTTP port are
//! routed and filtered like HTTP/1.1 clients, and reach HTTP/1.1 backends and HTTP/2
//! backends; to HTTP/2 backends bodies stream both ways at once and trailers pass (gRPC).
//!
//! The client and the HTTP/2 backend are h2 on a tokio runtime in the test process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, Response};
use portcullis_api::CompiledConfig;
use portcullis_api::config::{
    BackendProtocol, Filter, HeaderModifier, HeaderValue, RequestRedirect, RetryPolicy, RouteRule,
};
use support::config::{exact, prefix, route, rule, to};
use support::{Backend, Client, ConfigBuilder, Proxy, free_port};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An h2c client connection to `port`.
async fn connect(port: u16) -> SendRequest<Bytes> {
    connect_abortable(port).await.0
}

/// An h2c client connection to `port`, and the task driving it: aborting the task makes the
/// client vanish without a GOAWAY.
async fn connect_abortable(port: u16) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, driver)
}

/// What a response looked like in full.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

async fn exchange(sender: &SendRequest<Bytes>, request: Request<()>, body: &[u8]) -> Answer {
    let mut sender = sender.clone().ready().await.unwrap();
    let (response, mut stream) = sender.send_request(request, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .unwrap();
    }
    collect(response.await.unwrap()).await
}

async fn collect(response: Response<h2::RecvStream>) -> Answer {
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        bytes.extend_from_slice(&data);
    }
    let trailers = body.trailers().await.unwrap();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: bytes,
        trailers,
    }
}

/// Whether the connection refuses a new stream (it sent GOAWAY).
async fn new_stream_refused(client: &SendRequest<Bytes>) -> bool {
    match client.clone().ready().await {
        Err(_) => true,
        Ok(mut sender) => match sender.send_request(get("http://h1.test/after"), true) {
            Err(_) => true,
            Ok((response, _)) => response.await.is_err(),
        },
    }
}

fn get(uri: &str) -> Request<()> {
    Request::builder().uri(uri).body(()).unwrap()
}

/// An HTTP/2 (h2c) backend: echoes each request's body back as it arrives, then ends with
/// `grpc-status: 0` trailers. Response headers carry `x-backend`, the request's path and
/// the request headers the test asks about (`x-seen-<name>`). A path `/fail/N/NNN/…` is
/// answered with status NNN (and no body) on its first N requests.
struct Http2Backend {
    addr: SocketAddr,
    /// Path and body of every request whose body ended.
    received: Received,
    /// The path of every request, as it arrived.
    arrived: Arrived,
    _runtime: std::thread::JoinHandle<()>,
}

type Arrived = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

impl Http2Backend {
    fn start(name: &'static str) -> Http2Backend {
        Self::start_with(name, None)
    }

    /// With `tls`, the backend speaks HTTP/2 inside TLS (ALPN h2 only).
    fn start_with(
        name: &'static str,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    ) -> Http2Backend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let received = Received::default();
        let arrived = Arrived::default();
        let record = (received.clone(), arrived.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let record = record.clone();
                    match &tls {
                        None => {
                            tokio::spawn(serve_backend_connection(tcp, name, record));
                        }
                        Some(config) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    serve_backend_connection(tls, name, record).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        Http2Backend {
            addr,
            received,
            arrived,
            _runtime: thread,
        }
    }

    /// How many requests for `path` arrived.
    fn arrivals(&self, path: &str) -> usize {
        self.arrived
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

async fn serve_backend_connection<T>(
    tcp: T,
    name: &'static str,
    (received, arrived): (Received, Arrived),
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let received = received.clone();
        let path = request.uri().path().to_string();
        let earlier = {
            let mut arrived = arrived.lock().unwrap();
            let earlier = arrived.iter().filter(|p| **p == path).count();
            arrived.push(path.clone());
            earlier
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let ["fail", failures, status, ..] = segments[..]
            && earlier < failures.parse::<usize>().unwrap()
        {
            let response = Response::builder().status(status).body(()).unwrap();
            let _ = respond.send_response(response, true);
            continue;
        }
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let mut response = Response::builder()
                .status(200)
                .header("x-backend", name)
                .header("x-path", parts.uri.path_and_query().unwrap().as_str())
                .header("x-authority", parts.uri.authority().unwrap().as_str());
            for (header, value) in &parts.headers {
                response = response.header(format!("x-seen-{header}"), value);
            }
            let mut send = respond
                .send_response(response.body(()).unwrap(), false)
                .unwrap();
            let mut all = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                body.flow_control().release_capacity(data.len()).unwrap();
                all.extend_from_slice(&data);
                send.send_data(data, false).unwrap();
            }
            let path = parts.uri.path_and_query().unwrap().to_string();
            received.lock().unwrap().push((path, all));
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            if let Ok(Some(received)) = body.trailers().await
                && let Some(value) = received.get("x-client-trailer")
            {
                trailers.insert("x-echo-trailer", value.clone());
            }
            send.send_trailers(trailers).unwrap();
        });
    }
}

fn set_header(name: &str, value: &str) -> HeaderModifier {
    HeaderModifier {
        set: vec![HeaderValue {
            name: name.into(),
            value: value.into(),
        }],
        ..Default::default()
    }
}

/// Host `h1.test` goes to an HTTP/1.1 backend; on `grpc.test`, `/grpc.Echo/…` goes to an
/// HTTP/2 backend (with a request and a response header filter) and `/moved` redirects;
/// nothing else matches.
fn config(port: u16, http1: &Backend, http2: &Http2Backend) -> CompiledConfig {
    let mut grpc = rule(vec![prefix("/grpc.Echo")], vec![to("ns/h2:80", 1)]);
    grpc.filters = vec![
        Filter::RequestHeaderModifier(set_header("x-added", "by-route")),
        Filter::ResponseHeaderModifier(set_header("x-response", "by-route")),
    ];
    let mut moved = rule(vec![exact("/moved")], vec![]);
    moved.filters = vec![Filter::RequestRedirect(RequestRedirect {
        scheme: None,
        hostname: Some("elsewhere.example".into()),
        port: None,
        path: None,
        status_code: 301,
    })];
    ConfigBuilder::new(1)
        .backend("ns/h1:80", &[http1])
        .backend_at("ns/h2:80", &[&http2.endpoint()])
        .backend_protocol("ns/h2:80", BackendProtocol::Http2)
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/h1",
                    &["h1.test"],
                    vec![rule(vec![prefix("/")], vec![to("ns/h1:80", 1)])],
                ),
                route("ns/grpc", &["grpc.test"], vec![grpc, moved]),
            ],
        )
        .build()
}

struct Setup {
    proxy: Proxy,
    port: u16,
    http1: Backend,
    _http2: Http2Backend,
}

fn setup() -> Setup {
    let http1 = Backend::start("h1");
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    let proxy = Proxy::start(&config(port, &http1, &http2));
    Setup {
        proxy,
        port,
        http1,
        _http2: http2,
    }
}

#[test]
fn an_h2c_client_reaches_an_http1_backend_with_the_request_it_sent() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let request = Request::builder()
            .method("POST")
            .uri(format!("http://h1.test:{}/echo?x=1", setup.port))
            .header("x-custom", "yes")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let answer = exchange(&client, request, b"hello body").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers.get("x-backend").unwrap(), "h1");
        assert!(answer.headers.get("connection").is_none());
        assert!(answer.headers.get("x-connection").is_some());
        let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(echo["body_len"], 10);
    });
    let recorded = setup.http1.requests();
    assert_eq!(recorded.len(), 1);
    let request = &recorded[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/echo?x=1");
    assert_eq!(request.body, b"hello body");
    assert_eq!(
        request.header("host"),
        Some(format!("h1.test:{}", setup.port).as_str())
    );
    assert_eq!(request.header("x-custom"), Some("yes"));
    assert_eq!(request.header("cookie"), Some("a=1; b=2"));
    assert_eq!(request.header("x-forwarded-proto"), Some("http"));
    assert_eq!(request.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn many_streams_on_one_connection_are_answered_concurrently() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let client = client.clone();
            let port = setup.port;
            tasks.push(tokio::spawn(async move {
                // Half of them wait at the backend, so the streams overlap.
                let path = if i % 2 == 0 {
                    format!("/sleep/50?{i}")
                } else {
                    format!("/bytes/{}", 1000 + i)
                };
                let uri = format!("http://h1.test:{port}{path}");
                let answer = exchange(&client, get(&uri), b"").await;
                assert_eq!(answer.status, 200);
                if i % 2 == 1 {
                    assert_eq!(answer.body.len(), 1000 + i);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(setup.http1.request_count(), 50);
}

#[test]
fn chunked_and_large_http1_responses_arrive_whole() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let chunked = exchange(&client, get("http://h1.test/chunked/100000"), b"").await;
        assert_eq!(chunked.status, 200);
        assert_eq!(chunked.body, support::backend::pattern(100_000));
        let big = exchange(&client, get("http://h1.test/bytes/3000000"), b"").await;
        assert_eq!(big.body.len(), 3_000_000);
        let head = exchange(
            &client,
            Request::builder()
                .method("HEAD")
                .uri("http://h1.test/bytes/10")
                .body(())
                .unwrap(),
            b"",
        )
        .await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        let status = exchange(&client, get("http://h1.test/status/503"), b"").await;
        assert_eq!(status.status, 503);
    });
}

#[test]
fn an_http2_backend_gets_filters_and_trailers_pass_both_ways() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let request = Request::builder()
            .method("POST")
            .uri("http://grpc.test/grpc.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut sender = client.clone().ready().await.unwrap();
        let (response, mut stream) = sender.send_request(request, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"\0\0\0\0\x05hello"), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-client-trailer", "sent".parse().unwrap());
        stream.send_trailers(trailers).unwrap();
        let answer = collect(response.await.unwrap()).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers.get("x-backend").unwrap(), "h2");
        assert_eq!(answer.headers.get("x-path").unwrap(), "/grpc.Echo/Say");
        assert_eq!(answer.headers.get("x-authority").unwrap(), "grpc.test");
        assert_eq!(answer.headers.get("x-seen-x-added").unwrap(), "by-route");
        assert_eq!(answer.headers.get("x-seen-te").unwrap(), "trailers");
        assert_eq!(
            answer.headers.get("x-seen-content-type").unwrap(),
            "application/grpc"
        );
        assert_eq!(
            answer.headers.get("x-seen-x-forwarded-proto").unwrap(),
            "http"
        );
        assert_eq!(answer.headers.get("x-response").unwrap(), "by-route");
        assert_eq!(answer.body, b"\0\0\0\0\x05hello");
        let trailers = answer.trailers.expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("x-echo-trailer").unwrap(), "sent");
    });
}

#[test]
fn bodies_to_an_http2_backend_stream_both_ways_at_once() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let request = Request::builder()
            .method("POST")
            .uri("http://grpc.test/grpc.Echo/Chat")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let mut sender = client.clone().ready().await.unwrap();
        let (response, mut stream) = sender.send_request(request, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"ping-0"), false)
            .unwrap();
        let (_, mut body) = response.await.unwrap().into_parts();
        // Each message's echo comes back before the next one is sent: nothing waits for
        // the end of the request.
        for i in 0..5 {
            let mut echoed = Vec::new();
            while echoed.len() < 6 {
                let data = tokio::time::timeout(Duration::from_secs(5), body.data())
                    .await
                    .expect("echo in time")
                    .unwrap()
                    .unwrap();
                body.flow_control().release_capacity(data.len()).unwrap();
                echoed.extend_from_slice(&data);
            }
            assert_eq!(echoed, format!("ping-{i}").as_bytes());
            let last = i == 4;
            if !last {
                stream
                    .send_data(Bytes::from(format!("ping-{}", i + 1)), false)
                    .unwrap();
            }
        }
        stream.send_data(Bytes::new(), true).unwrap();
        while let Some(data) = body.data().await {
            data.unwrap();
        }
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    });
}

#[test]
fn local_answers_reach_http2_clients() {
    let setup = setup();
    runtime().block_on(async {
        let client = connect(setup.port).await;
        let missing = exchange(&client, get("http://grpc.test/nothing-here"), b"").await;
        assert_eq!(missing.status, 404);
        let unknown_host = exchange(&client, get("http://other.test/"), b"").await;
        assert_eq!(unknown_host.status, 404);
        let moved = exchange(&client, get("http://grpc.test/moved"), b"").await;
        assert_eq!(moved.status, 301);
        assert_eq!(
            moved.headers.get("location").unwrap(),
            &format!("http://elsewhere.example:{}/moved", setup.port)
        );
    });
}

#[test]
fn an_unreachable_http2_backend_answers_502_and_the_connection_stays_usable() {
    let http1 = Backend::start("h1");
    let closed = Http2Backend {
        addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        received: Received::default(),
        arrived: Arrived::default(),
        _runtime: std::thread::spawn(|| {}),
    };
    let port = free_port();
    let _proxy = Proxy::start(&config(port, &http1, &closed));
    runtime().block_on(async {
        let client = connect(port).await;
        let failed = exchange(&client, get("http://grpc.test/grpc.Echo/Say"), b"").await;
        assert_eq!(failed.status, 502);
        let fine = exchange(&client, get("http://h1.test/x"), b"").await;
        assert_eq!(fine.status, 200);
    });
}

#[test]
fn http1_clients_on_the_same_port_are_unaffected() {
    let setup = setup();
    let mut client = Client::connect(setup.port);
    let response = client.get("h1.test", "/x");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("h1"));
    // An HTTP/2 preface after a first HTTP/1.1 request is not a protocol switch.
    let garbage = client.request("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(garbage.status, 505);
    drop(setup.proxy);
}

#[test]
fn http1_clients_reach_http2_backends_with_bodies_in_either_framing() {
    let setup = setup();
    let mut client = Client::connect(setup.port);
    let response = client.request(
        "POST /grpc.Echo/Say HTTP/1.1\r\nhost: grpc.test\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("h2"));
    assert_eq!(response.body, b"hello");
    assert_eq!(response.header("x-seen-x-added"), Some("by-route"));
    assert_eq!(response.header("x-response"), Some("by-route"));
    assert_eq!(response.header("x-path"), Some("/grpc.Echo/Say"));
    // The backend declared no length: chunked to the client, trailers dropped.
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("grpc-status"), None);

    let chunked = client.request(
        "POST /grpc.Echo/Say HTTP/1.1\r\nhost: grpc.test\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.body, b"abcdefg");
    assert_eq!(chunked.header("x-seen-content-length"), None);

    let get = client.get("grpc.test", "/grpc.Echo/Empty");
    assert_eq!(get.status, 200);
    assert!(get.body.is_empty());
    assert!(!get.closes(), "the client connection stays open");
}

/// An HTTPS port with a catch-all listener (certificate for `example.org` and
/// `unknown.example`), one for
/// `second.example` and one for `*.wild.example`; each listener's route answers only for
/// its own hostnames, from a backend named after the listener.
fn https_config(port: u16, backends: &[&Backend; 3], ca: &support::certs::Ca) -> CompiledConfig {
    use portcullis_api::config::PortProtocol;
    use support::config::listener;
    let leaves = [
        ca.leaf(&["example.org", "unknown.example"]),
        ca.leaf(&["second.example"]),
        ca.leaf(&["*.wild.example"]),
    ];
    let mut builder = ConfigBuilder::new(1);
    let names = ["any", "second", "wild"];
    for (i, leaf) in leaves.iter().enumerate() {
        builder = builder
            .certificate(&format!("ns/{}", names[i]), &leaf.cert_pem, &leaf.key_pem)
            .backend(&format!("ns/{}:80", names[i]), &[backends[i]]);
    }
    let route_for = |name: &str, hostnames: &[&str]| {
        route(
            &format!("ns/{name}"),
            hostnames,
            vec![rule(
                vec![prefix("/")],
                vec![to(&format!("ns/{name}:80"), 1)],
            )],
        )
    };
    builder
        .port(
            port,
            PortProtocol::Https,
            vec![
                listener(
                    "any",
                    None,
                    &["ns/any"],
                    vec![route_for("any", &["example.org"])],
                ),
                listener(
                    "second",
                    Some("second.example"),
                    &["ns/second"],
                    vec![route_for("second", &[])],
                ),
                listener(
                    "wild",
                    Some("*.wild.example"),
                    &["ns/wild"],
                    vec![route_for("wild", &[])],
                ),
            ],
        )
        .build()
}

/// An HTTP/2 connection over TLS to `port`, with `server_name` as SNI, offering only h2.
async fn connect_tls(port: u16, ca: &support::certs::Ca, server_name: &str) -> SendRequest<Bytes> {
    let config = ca.client(&[b"h2"]);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

#[test]
fn https_clients_get_http2_and_requests_for_another_listener_get_421() {
    let ca = support::certs::Ca::new();
    let backends = [
        &Backend::start("any"),
        &Backend::start("second"),
        &Backend::start("wild"),
    ];
    let port = free_port();
    let _proxy = Proxy::start(&https_config(port, &backends, &ca));
    // (SNI, :authority, expected status, expected backend)
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("example.org", "example.org", 200, Some("any")),
        ("example.org", "second.example", 421, None),
        ("example.org", "unknown.example", 404, None),
        ("second.example", "second.example", 200, Some("second")),
        ("second.example", "example.org", 421, None),
        ("second.example", "unknown.example", 421, None),
        ("a.wild.example", "b.wild.example", 200, Some("wild")),
        ("a.wild.example", "second.example", 421, None),
        ("unknown.example", "example.org", 200, Some("any")),
    ];
    runtime().block_on(async {
        for (server_name, authority, status, backend) in cases {
            let client = connect_tls(port, &ca, server_name).await;
            let answer = exchange(&client, get(&format!("https://{authority}/x")), b"").await;
            assert_eq!(
                answer.status, *status,
                "SNI {server_name}, authority {authority}"
            );
            assert_eq!(
                answer.headers.get("x-backend").map(|v| v.to_str().unwrap()),
                *backend,
                "SNI {server_name}, authority {authority}"
            );
        }
    });
}

#[test]
fn a_broken_http2_connection_is_closed_and_forwards_nothing() {
    use std::io::{Read, Write};
    let setup = setup();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The preface, then a HEADERS frame on stream 0 (a connection error).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    tcp.write_all(&[0, 0, 4, 0x1, 0x5, 0, 0, 0, 0, 0x82, 0x86, 0x84, 0x41])
        .unwrap();
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received);
    // SETTINGS first, and a GOAWAY (PROTOCOL_ERROR) before the close.
    let mut frame_types = Vec::new();
    let mut goaway_error = None;
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let payload = &rest[9..(9 + len).min(rest.len())];
        if rest[3] == 0x7 && payload.len() >= 8 {
            goaway_error = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
        frame_types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert_eq!(frame_types.first(), Some(&0x4), "{received:?}");
    assert_eq!(goaway_error, Some(0x1), "frames {frame_types:?}");
    assert_eq!(setup.http1.request_count(), 0);
}

#[test]
fn streams_accepted_just_before_a_connection_error_forward_nothing() {
    use std::io::{Read, Write};
    let setup = setup();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // In one write: the preface, a complete GET on stream 1 (END_STREAM | END_HEADERS), and a
    // HEADERS frame on stream 0, a connection error. Whether or not the stream was accepted
    // before the connection failed, its request must not reach the backend: nobody could be
    // answered for it.
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let block = [&[0x82, 0x86, 0x84, 0x41, 7][..], b"h1.test"].concat();
    bytes.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    bytes.extend_from_slice(&block);
    bytes.extend_from_slice(&[0, 0, 4, 0x1, 0x5, 0, 0, 0, 0, 0x82, 0x86, 0x84, 0x41]);
    tcp.write_all(&bytes).unwrap();
    let mut received = Vec::new();
    let _ = tcp.read_to_end(&mut received);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(setup.http1.request_count(), 0);
}

#[test]
fn a_stream_whose_body_stalls_is_answered_408() {
    let http1 = Backend::start("h1");
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    let mut config = config(port, &http1, &http2);
    config.settings.body_idle_timeout_ms = 300;
    let _proxy = Proxy::start(&config);
    runtime().block_on(async {
        let client = connect(port).await;
        let mut sender = client.clone().ready().await.unwrap();
        let request = Request::builder()
            .method("POST")
            .uri("http://h1.test/upload")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(request, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"part"), false)
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(answer.status(), 408);
        // The connection itself still serves.
        let fine = exchange(&client, get("http://h1.test/x"), b"").await;
        assert_eq!(fine.status, 200);
    });
}

#[test]
fn sigterm_lets_open_streams_finish_and_refuses_new_ones() {
    let http1 = Backend::start("h1");
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    let mut proxy = Proxy::start_with(
        &config(port, &http1, &http2),
        &["--cores", "1", "--drain-timeout", "10"],
    );
    runtime().block_on(async {
        let client = connect(port).await;
        let slow = {
            let client = client.clone();
            tokio::spawn(
                async move { exchange(&client, get("http://h1.test/sleep/700"), b"").await },
            )
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.terminate();
        let answer = slow.await.unwrap();
        assert_eq!(answer.status, 200, "the stream open at SIGTERM completes");
        // The GOAWAY arrived: the connection takes no new streams.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            new_stream_refused(&client).await,
            "a new stream after the GOAWAY was served"
        );
    });
    let status = proxy
        .wait(Duration::from_secs(10))
        .expect("the proxy exits");
    assert!(status.success());
}

#[test]
fn mirror_copies_reach_http2_backends() {
    let http1 = Backend::start("h1");
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    let mut primary = rule(vec![prefix("/")], vec![to("ns/h1:80", 1)]);
    primary.filters = vec![Filter::RequestMirror(
        portcullis_api::config::RequestMirror {
            backend: "ns/h2:80".into(),
            numerator: 1,
            denominator: 1,
        },
    )];
    let config = ConfigBuilder::new(1)
        .backend("ns/h1:80", &[&http1])
        .backend_at("ns/h2:80", &[&http2.endpoint()])
        .backend_protocol("ns/h2:80", BackendProtocol::Http2)
        .http_port(port, "http", vec![route("ns/r", &[], vec![primary])])
        .build();
    let proxy = Proxy::start(&config);
    let mut client = Client::connect(port);
    let response = client.request(
        "POST /copied?x=1 HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
         3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("h1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while http2.received.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let received = http2.received.lock().unwrap().clone();
    assert_eq!(
        received,
        vec![("/copied?x=1".to_string(), b"abcde".to_vec())]
    );
    assert!(
        eventually(|| proxy.metric("portcullis_mirror_requests_total", "completed") == 1.0),
        "the copy's answer was read to its end"
    );
}

fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn http2_backends_are_reached_over_tls_with_alpn_h2() {
    let ca = support::certs::Ca::new();
    let leaf = ca.leaf(&["grpc.internal"]);
    let mut server = rustls::ServerConfig::clone(&support::tls_backend::server_config(&leaf));
    server.alpn_protocols = vec![b"h2".to_vec()];
    let backend = Http2Backend::start_with("h2-tls", Some(std::sync::Arc::new(server)));
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/h2:443", &[&backend.endpoint()])
        .backend_protocol("ns/h2:443", BackendProtocol::Http2)
        .backend_tls(
            "ns/h2:443",
            support::config::backend_tls("grpc.internal", &ca.pem, vec![]),
        )
        .http_port(
            port,
            "http",
            vec![route(
                "ns/r",
                &[],
                vec![rule(vec![], vec![to("ns/h2:443", 1)])],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);
    runtime().block_on(async {
        let client = connect(port).await;
        let answer = exchange(&client, get("http://a/svc.S/M"), b"").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers.get("x-backend").unwrap(), "h2-tls");
        assert_eq!(answer.trailers.unwrap().get("grpc-status").unwrap(), "0");
    });
    // An HTTP/1.1 client too.
    let mut client = Client::connect(port);
    let response = client.get("a", "/svc.S/M");
    assert_eq!(response.status, 200);
    assert_eq!(response.backend(), Some("h2-tls"));
}

#[test]
fn max_requests_per_connection_ends_an_http2_connection_with_goaway() {
    let http1 = Backend::start("h1");
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    let mut config = config(port, &http1, &http2);
    config.settings.max_requests_per_connection = 3;
    let proxy = Proxy::start(&config);
    runtime().block_on(async {
        let client = connect(port).await;
        for i in 0..3 {
            let answer = exchange(&client, get(&format!("http://h1.test/{i}")), b"").await;
            assert_eq!(answer.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            new_stream_refused(&client).await,
            "a fourth stream was served"
        );
        let again = connect(port).await;
        let answer = exchange(&again, get("http://h1.test/again"), b"").await;
        assert_eq!(answer.status, 200);
    });
    assert_eq!(http1.request_count(), 4);
    assert_eq!(proxy.metric("portcullis_http2_connections_total", ""), 2.0);
    assert_eq!(proxy.metric("portcullis_http2_streams_total", ""), 4.0);
}

#[test]
fn a_client_that_goes_away_abandons_its_streams_upstream() {
    use std::io::Read;
    // A backend that takes one request and never answers: it sees its connection close only
    // if the proxy gives the request up.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = backend.local_addr().unwrap().to_string();
    let (events, event) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut upstream, _) = backend.accept().unwrap();
        upstream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = upstream.read(&mut buf).unwrap();
            assert!(n > 0, "the proxy closed before sending the request");
            received.extend_from_slice(&buf[..n]);
        }
        events.send("request").unwrap();
        let after = match upstream.read(&mut buf) {
            Ok(0) => "closed",
            Ok(_) => "more data",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => "closed",
            Err(_) => "still open after 20 s",
        };
        events.send(after).unwrap();
    });
    let port = free_port();
    let config = ConfigBuilder::new(1)
        .backend_at("ns/held:80", &[&endpoint])
        .http_port(
            port,
            "http",
            vec![route(
                "ns/held",
                &["held.test"],
                vec![rule(vec![prefix("/")], vec![to("ns/held:80", 1)])],
            )],
        )
        .build();
    let _proxy = Proxy::start(&config);
    runtime().block_on(async {
        let (client, driver) = connect_abortable(port).await;
        let mut sender = client.ready().await.unwrap();
        let (_response, _) = sender
            .send_request(get("http://held.test/held"), true)
            .unwrap();
        let forwarded = tokio::task::spawn_blocking(move || {
            let first = event.recv_timeout(Duration::from_secs(10));
            (first, event)
        });
        let (first, event) = forwarded.await.unwrap();
        assert_eq!(first, Ok("request"));
        // The client vanishes with its stream still waiting on the backend.
        driver.abort();
        drop(sender);
        let started = std::time::Instant::now();
        let closed =
            tokio::task::spawn_blocking(move || event.recv_timeout(Duration::from_secs(15)))
                .await
                .unwrap();
        assert_eq!(closed, Ok("closed"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the upstream request outlived its client by {:?}",
            started.elapsed()
        );
    });
}

/// A listener whose accept queue is full, so a new connection to it stays in SYN-SENT until
/// the connecting side gives up. Keep the returned sockets alive while it is used.
fn unanswering_endpoint() -> (String, Vec<std::net::TcpStream>, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    // listen(0) queues one connection; a second fills the SYN path for good measure.
    let queued: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()
        })
        .collect();
    (address.to_string(), queued, listener)
}

/// Connections of this process in SYN-SENT towards `endpoint` ("127.0.0.1:port").
fn connecting_to(endpoint: &str) -> usize {
    let port = endpoint.rsplit(':').next().unwrap();
    let remote = format!("0100007F:{:04X}", port.parse::<u16>().unwrap());
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"02")
        })
        .count()
}

#[test]
fn a_connection_that_ends_cancels_its_streams_upstream_connects_and_the_core_serves_on() {
    let http1 = Backend::start("h1");
    let (stuck, _queued, _listener) = unanswering_endpoint();
    let port = free_port();
    let mut config = ConfigBuilder::new(1)
        .backend("ns/h1:80", &[&http1])
        .backend_at("ns/stuck:80", &[&stuck])
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/h1",
                    &["h1.test"],
                    vec![rule(vec![prefix("/")], vec![to("ns/h1:80", 1)])],
                ),
                route(
                    "ns/stuck",
                    &["stuck.test"],
                    vec![rule(vec![prefix("/")], vec![to("ns/stuck:80", 1)])],
                ),
            ],
        )
        .build();
    config.settings.upstream_connect_timeout_ms = 20_000;
    // One core: a wedged executor would leave nobody to answer.
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);
    runtime().block_on(async {
        let (client, driver) = connect_abortable(port).await;
        let mut sender = client.ready().await.unwrap();
        let (_response, _) = sender
            .send_request(get("http://stuck.test/"), true)
            .unwrap();
        let mut waited = 0;
        while connecting_to(&stuck) == 0 && waited < 50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(
            connecting_to(&stuck) > 0,
            "the stream never started connecting"
        );
        // The client goes while its stream is still connecting: nobody could be answered,
        // so the connect is abandoned (not left to run into its 20 s timeout).
        driver.abort();
        drop(sender);
        let mut waited = 0;
        while connecting_to(&stuck) > 0 && waited < 30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert_eq!(
            connecting_to(&stuck),
            0,
            "the upstream connect outlived its client"
        );
        // The same core serves the next connection at once.
        let client = connect(port).await;
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            exchange(&client, get("http://h1.test/after"), b""),
        )
        .await
        .expect("the core answered after a stream was cancelled mid-connect");
        assert_eq!(answer.status, 200);
    });
}

#[test]
fn an_http2_request_is_retried_on_its_rule_s_codes_and_when_unanswered() {
    let http1 = Backend::start("h1");
    let port = free_port();
    let retrying = RouteRule {
        retry: Some(RetryPolicy {
            codes: vec![500],
            attempts: 3,
            backoff_ms: 5,
        }),
        ..rule(vec![prefix("/")], vec![to("ns/h1:80", 1)])
    };
    let config = ConfigBuilder::new(1)
        .backend("ns/h1:80", &[&http1])
        .http_port(
            port,
            "http",
            vec![route("ns/retry", &["retry.test"], vec![retrying])],
        )
        .build();
    let _proxy = Proxy::start(&config);
    runtime().block_on(async {
        let client = connect(port).await;
        let answer = exchange(&client, get("http://retry.test/fail/2/500/h2"), b"").await;
        assert_eq!(answer.status, 200);
        let answer = exchange(&client, get("http://retry.test/fail/5/500/spent"), b"").await;
        assert_eq!(answer.status, 500);
        // An attempt closed unanswered is retried too.
        let answer = exchange(&client, get("http://retry.test/drop/2/h2"), b"").await;
        assert_eq!(answer.status, 200);
        let answer = exchange(&client, get("http://retry.test/drop/9/spent"), b"").await;
        assert_eq!(answer.status, 502);
    });
    assert_eq!(http1.received("/fail/2/500/h2"), 3);
    assert_eq!(http1.received("/fail/5/500/spent"), 4);
    assert_eq!(http1.received("/drop/2/h2"), 3);
    assert_eq!(http1.received("/drop/9/spent"), 4);
}

#[test]
fn requests_to_http2_backends_are_retried_from_either_client_protocol() {
    let http2 = Http2Backend::start("h2");
    let port = free_port();
    // Nothing listens on `refused`: connecting to it fails.
    let refused = format!("127.0.0.1:{}", free_port());
    let retrying = |codes: Vec<u16>, backend: &str| RouteRule {
        retry: Some(RetryPolicy {
            codes,
            attempts: 2,
            backoff_ms: 5,
        }),
        ..rule(vec![prefix("/")], vec![to(backend, 1)])
    };
    let config = ConfigBuilder::new(1)
        .backend_at("ns/h2:80", &[&http2.endpoint()])
        .backend_protocol("ns/h2:80", BackendProtocol::Http2)
        .backend_at("ns/half-down:80", &[&refused, &http2.endpoint()])
        .backend_protocol("ns/half-down:80", BackendProtocol::Http2)
        .http_port(
            port,
            "http",
            vec![
                route(
                    "ns/codes",
                    &["codes.test"],
                    vec![retrying(vec![503], "ns/h2:80")],
                ),
                route(
                    "ns/half-down",
                    &["half-down.test"],
                    vec![retrying(vec![], "ns/half-down:80")],
                ),
            ],
        )
        .build();
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);

    // An HTTP/1.1 client.
    let mut client = Client::connect(port);
    let response = client.get("codes.test", "/fail/1/503/h1");
    assert_eq!(response.status, 200);
    assert_eq!(http2.arrivals("/fail/1/503/h1"), 2);
    let response = client.get("codes.test", "/fail/5/503/h1-spent");
    assert_eq!(response.status, 503);
    assert_eq!(http2.arrivals("/fail/5/503/h1-spent"), 3);
    for i in 0..4 {
        let response = client.get("half-down.test", &format!("/h1/{i}"));
        assert_eq!(response.status, 200, "{}", response.body_text());
    }

    // An HTTP/2 client.
    runtime().block_on(async {
        let client = connect(port).await;
        let answer = exchange(&client, get("http://codes.test/fail/1/503/h2"), b"").await;
        assert_eq!(answer.status, 200);
        let answer = exchange(&client, get("http://codes.test/fail/2/500/h2-other"), b"").await;
        assert_eq!(answer.status, 500);
        for i in 0..4 {
            let answer =
                exchange(&client, get(&format!("http://half-down.test/h2/{i}")), b"").await;
            assert_eq!(answer.status, 200);
        }
    });
    assert_eq!(http2.arrivals("/fail/1/503/h2"), 2);
    assert_eq!(http2.arrivals("/fail/2/500/h2-other"), 1);
}

#[test]
fn an_http2_request_retried_after_a_refused_connect_is_still_copied_once() {
    let http1 = Backend::start("h1");
    let shadow = Backend::start("shadow");
    let port = free_port();
    // Nothing listens on `refused`: round robin sends every other first attempt there.
    let refused = format!("127.0.0.1:{}", free_port());
    let mut primary = rule(vec![prefix("/")], vec![to("ns/h1:80", 1)]);
    primary.filters = vec![Filter::RequestMirror(
        portcullis_api::config::RequestMirror {
            backend: "ns/shadow:80".into(),
            numerator: 1,
            denominator: 1,
        },
    )];
    primary.retry = Some(RetryPolicy {
        codes: Vec::new(),
        attempts: 1,
        backoff_ms: 5,
    });
    let config = ConfigBuilder::new(1)
        .backend_at("ns/h1:80", &[&refused, &http1.endpoint()])
        .backend("ns/shadow:80", &[&shadow])
        .http_port(port, "http", vec![route("ns/r", &[], vec![primary])])
        .build();
    let _proxy = Proxy::start_with(&config, &["--cores", "1"]);
    runtime().block_on(async {
        let client = connect(port).await;
        for i in 0..4 {
            let answer = exchange(&client, get(&format!("http://a/h2/{i}")), b"").await;
            assert_eq!(answer.status, 200);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while shadow.request_count() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut paths: Vec<String> = shadow.requests().iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/h2/0", "/h2/1", "/h2/2", "/h2/3"]);
}
