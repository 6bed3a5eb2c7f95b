use super::*;
use crate::http::request::{HeadLimits, parse};
use crate::http::response;
use portcullis_api::config::{HeaderModifier, HeaderValue};

const LIMITS: HeadLimits = HeadLimits {
    max_header_count: 100,
    max_header_bytes: 65536,
    max_request_line_bytes: 8192,
};

fn head(raw: &[u8]) -> RequestHead {
    let mut head = RequestHead::default();
    assert!(parse(raw, &LIMITS, &mut head).unwrap());
    head
}

fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOps {
    let value = |(name, value): &(&str, &str)| HeaderValue {
        name: name.to_string(),
        value: value.to_string(),
    };
    HeaderOps::compile(&HeaderModifier {
        set: set.iter().map(value).collect(),
        add: add.iter().map(value).collect(),
        remove: remove.iter().map(|r| r.to_string()).collect(),
    })
}

fn upstream(raw: &[u8], req: &UpstreamRequest<'_>) -> String {
    let head = head(raw);
    let mut out = Vec::new();
    upstream_request(&mut out, raw, &head, req);
    String::from_utf8(out).unwrap()
}

fn request<'a>(edits: HeaderEdits<'a>) -> UpstreamRequest<'a> {
    UpstreamRequest {
        path: None,
        host: None,
        edits,
        peer: "10.1.2.3:5555".parse().unwrap(),
        tls: false,
        endpoint: "127.0.0.1:9".parse().unwrap(),
    }
}

#[test]
fn upstream_requests_are_canonical() {
    let none = HeaderOps::default();
    let edits = HeaderEdits::new(&none, &none);
    let raw =
        b"POST /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\n\
X-Hop: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\
X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: spoofed\r\nExpect: 100-continue\r\n\r\nabc";
    let text = upstream(raw, &request(edits));
    assert_eq!(
        text,
        "POST /a?b=c HTTP/1.1\r\nhost: example.com\r\nX-A: 1\r\n\
x-forwarded-for: 1.1.1.1, 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: example.com\r\n\
forwarded: for=10.1.2.3;proto=http;host=\"example.com\"\r\ncontent-length: 3\r\n\r\n"
    );
}

#[test]
fn chunked_and_rewritten_requests() {
    let none = HeaderOps::default();
    let edits = HeaderEdits::new(&none, &none);
    let raw = b"PUT /old HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut req = request(edits);
    req.path = Some(b"/new");
    req.host = Some(b"b.example");
    req.tls = true;
    let text = upstream(raw, &req);
    assert!(
        text.starts_with("PUT /new HTTP/1.1\r\nhost: b.example\r\n"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-host: a.example\r\n"));
    assert!(text.contains("x-forwarded-proto: https\r\n"));
    assert!(text.ends_with("transfer-encoding: chunked\r\n\r\n"));
    assert_eq!(text.matches("transfer-encoding").count(), 1);
}

#[test]
fn header_filters_apply_rule_then_backend() {
    let rule = ops(
        &[("X-Set", "rule"), ("X-Both", "rule")],
        &[("X-Add", "r")],
        &["X-Remove"],
    );
    let backend = ops(
        &[("x-both", "backend")],
        &[("X-Add", "b"), ("X-New", "n")],
        &[],
    );
    let edits = HeaderEdits::new(&rule, &backend);
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\nx-set: old\r\nX-REMOVE: gone\r\nx-add: orig\r\nX-Both: old\r\n\r\n";
    let text = upstream(raw, &request(edits));
    assert!(text.contains("x-add: orig,r,b\r\n"), "{text}");
    assert!(!text.contains("old"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("x-remove"), "{text}");
    assert!(text.contains("X-Set: rule\r\n"));
    assert!(text.contains("x-both: backend\r\n"));
    assert!(
        !text.contains("X-Both: rule"),
        "the backend's set wins: {text}"
    );
    assert!(text.contains("X-New: n\r\n"));
}

#[test]
fn http10_requests_without_host_use_the_endpoint() {
    let none = HeaderOps::default();
    let edits = HeaderEdits::new(&none, &none);
    let text = upstream(b"GET / HTTP/1.0\r\n\r\n", &request(edits));
    assert!(
        text.starts_with("GET / HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"),
        "{text}"
    );
    assert!(!text.contains("x-forwarded-host"));
}

#[test]
fn ipv6_clients_are_quoted_in_forwarded() {
    let none = HeaderOps::default();
    let mut req = request(HeaderEdits::new(&none, &none));
    req.peer = "[2001:db8::1]:443".parse().unwrap();
    let text = upstream(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &req);
    assert!(
        text.contains("forwarded: for=\"[2001:db8::1]\";proto=http"),
        "{text}"
    );
    assert!(text.contains("x-forwarded-for: 2001:db8::1\r\n"), "{text}");
}

fn client_text(
    raw: &[u8],
    edits: HeaderEdits<'_>,
    framing: OutFraming,
    client: Version,
    persistence: Persistence,
) -> String {
    let mut head = response::ResponseHead::default();
    assert!(response::parse(raw, 65536, 100, false, &mut head).unwrap());
    let mut out = Vec::new();
    client_response(&mut out, raw, &head, edits, framing, client, persistence);
    String::from_utf8(out).unwrap()
}

#[test]
fn client_responses_drop_hop_by_hop_and_reframe() {
    let add = ops(&[], &[("x-extra", "1")], &["server"]);
    let none = HeaderOps::default();
    let raw = b"HTTP/1.1 200 Fine\r\nServer: upstream\r\nConnection: close, X-Private\r\nX-Private: p\r\n\
Transfer-Encoding: chunked\r\nX-Kept: k\r\n\r\n";
    let text = client_text(
        raw,
        HeaderEdits::new(&add, &none),
        OutFraming::Chunked,
        Version::Http11,
        Persistence::KeepAlive,
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 Fine\r\nX-Kept: k\r\nx-extra: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let text = client_text(
        raw,
        HeaderEdits::new(&none, &none),
        OutFraming::Length(5),
        Version::Http10,
        Persistence::KeepAlive,
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"
    );
    let text = client_text(
        raw,
        HeaderEdits::new(&none, &none),
        OutFraming::Length(5),
        Version::Http11,
        Persistence::Close,
    );
    assert_eq!(
        text,
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"
    );
}

#[test]
fn bodiless_responses_keep_their_declared_length() {
    let none = HeaderOps::default();
    let raw = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: x\r\n\r\n";
    let text = client_text(
        raw,
        HeaderEdits::new(&none, &none),
        OutFraming::None,
        Version::Http11,
        Persistence::KeepAlive,
    );
    assert_eq!(
        text,
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: x\r\n\r\n"
    );
}

#[test]
fn local_responses() {
    let mut out = Vec::new();
    local_response(
        &mut out,
        404,
        &[],
        None,
        Persistence::KeepAlive,
        Version::Http11,
        false,
    );
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "HTTP/1.1 404 Not Found\r\ncontent-length: 14\r\ncontent-type: text/plain\r\n\r\n404 Not Found\n"
    );
    local_response(
        &mut out,
        302,
        &[(b"location", b"http://a/")],
        None,
        Persistence::Close,
        Version::Http11,
        false,
    );
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "HTTP/1.1 302 Found\r\nlocation: http://a/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    local_response(
        &mut out,
        503,
        &[],
        None,
        Persistence::KeepAlive,
        Version::Http11,
        true,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with("\r\n\r\n"),
        "HEAD responses carry no body: {text}"
    );
    assert!(text.contains("content-length: 24\r\n"), "{text}");
}

#[test]
fn client_framing_mapping() {
    use crate::http::response::ResponseFraming as R;
    assert_eq!(
        client_framing(R::Length(3), Version::Http11),
        OutFraming::Length(3)
    );
    assert_eq!(
        client_framing(R::UntilClose, Version::Http11),
        OutFraming::Chunked
    );
    assert_eq!(
        client_framing(R::Chunked, Version::Http10),
        OutFraming::UntilClose
    );
    assert_eq!(client_framing(R::None, Version::Http10), OutFraming::None);
}
