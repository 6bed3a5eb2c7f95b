//! Heads between HTTP/2 and the engine's form. The engine routes and filters HTTP/1.1 heads
//! (`http::request`, `proxy::serialize`); an HTTP/2 request head is written in that form once,
//! parsed and validated by the same parser as a client's, and whatever the engine writes
//! for the upstream or the client is read back into HTTP/2 fields. One set of rules for
//! matching, filters and forwarding headers serves both protocols.

use std::io::Write as _;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};

use crate::http::request::{HeadLimits, RequestHead};
use crate::http::response::ResponseHead;
use crate::http::{HeaderKind, HeaderSpan};

/// Why an HTTP/2 request head has no HTTP/1.1 form.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// No `:path` (CONNECT), or a target that is not origin-form.
    Target,
    /// Neither `:authority` nor `Host`.
    NoAuthority,
}

/// Limits for reading back heads the proxy wrote itself: the client's head already passed
/// the configured limits, and filters may have added to it.
pub const OWN_HEAD_LIMITS: HeadLimits = HeadLimits {
    max_header_count: 1024,
    max_header_bytes: 1024 * 1024,
    max_request_line_bytes: 64 * 1024,
};

/// Writes the HTTP/1.1 form of an HTTP/2 request head into `out` (cleared first).
/// `:authority` becomes `Host`; cookie fields split by HTTP/2 are joined again (RFC 9113
/// §8.2.3); a body without a declared length is framed as chunked, so the engine streams it.
pub fn request_as_h1(
    parts: &http::request::Parts,
    end_of_stream: bool,
    out: &mut Vec<u8>,
) -> Result<(), HeadError> {
    out.clear();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|t| t.starts_with('/') || (*t == "*" && parts.method == Method::OPTIONS))
        .ok_or(HeadError::Target)?;
    let authority = match parts.uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => parts
            .headers
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes)
            .ok_or(HeadError::NoAuthority)?,
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    let mut cookies: Option<Vec<u8>> = None;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        match name.as_str() {
            // `:authority` wins over Host (RFC 9113 §8.3.1); `te: trailers` is HTTP/2's own.
            "host" | "te" => continue,
            "cookie" => {
                let joined = cookies.get_or_insert_with(Vec::new);
                if !joined.is_empty() {
                    joined.extend_from_slice(b"; ");
                }
                joined.extend_from_slice(value.as_bytes());
                continue;
            }
            "content-length" => has_length = true,
            _ => {}
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(cookies) = cookies {
        write_field(out, b"cookie", &cookies);
    }
    if !end_of_stream && !has_length {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe one HTTP/1.1 connection or message framing: never in HTTP/2.
fn connection_specific(header: &HeaderSpan) -> bool {
    header.kind.is_hop_by_hop() || header.kind == HeaderKind::Host
}

/// Copies the fields of an engine-written head into `map`, leaving out connection-specific
/// ones and those its `Connection` header lists.
fn copy_fields(
    buf: &[u8],
    headers: &[HeaderSpan],
    is_connection_option: impl Fn(&[u8]) -> bool,
    map: &mut HeaderMap,
) -> Result<(), http::Error> {
    for header in headers.iter().filter(|h| !connection_specific(h)) {
        let name = &buf[header.name.clone()];
        if is_connection_option(name) {
            continue;
        }
        map.append(
            HeaderName::from_bytes(name)?,
            HeaderValue::from_bytes(&buf[header.value.clone()])?,
        );
    }
    Ok(())
}

/// The HTTP/2 request for an upstream, from the head the engine wrote for it (`buf`).
/// `te_trailers`: the client announced it accepts trailers (gRPC needs it passed on).
pub fn upstream_request(
    buf: &[u8],
    head: &RequestHead,
    tls: bool,
    te_trailers: bool,
) -> Result<Request<()>, http::Error> {
    let mut target = Vec::with_capacity(head.path.len() + 16);
    target.extend_from_slice(head.path(buf));
    if let Some(query) = head.query(buf) {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    let uri = Uri::builder()
        .scheme(if tls { "https" } else { "http" })
        .authority(head.host(buf))
        .path_and_query(target)
        .build()?;
    let mut request = Request::builder()
        .method(Method::from_bytes(head.method(buf))?)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(())?;
    copy_fields(
        buf,
        &head.headers,
        |name| head.is_connection_option(buf, name),
        request.headers_mut(),
    )?;
    if te_trailers {
        request
            .headers_mut()
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    Ok(request)
}

/// The HTTP/2 response for the client, from the head the engine wrote for it (`buf`).
pub fn client_response(buf: &[u8], head: &ResponseHead) -> Result<Response<()>, http::Error> {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(head.status)?)
        .body(())?;
    copy_fields(
        buf,
        &head.headers,
        |name| head.is_connection_option(buf, name),
        response.headers_mut(),
    )?;
    Ok(response)
}

/// Writes the HTTP/1.1 form of an HTTP/2 upstream response head, so the engine applies the
/// rule's response filters to it as to any other.
pub fn response_as_h1(response: &http::response::Parts, out: &mut Vec<u8>) {
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} \r\n", response.status.as_u16());
    for (name, value) in &response.headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;
    use crate::http::response;

    fn parts(request: Request<()>) -> http::request::Parts {
        request.into_parts().0
    }

    #[test]
    fn an_http2_request_reads_as_the_same_request_in_http11() {
        let request = Request::builder()
            .method("POST")
            .uri("http://api.example.com:8080/pkg.Echo/Say?x=1")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        request_as_h1(&parts(request), false, &mut out).unwrap();
        let mut head = RequestHead::default();
        assert!(request::parse(&out, &OWN_HEAD_LIMITS, &mut head).unwrap());
        assert_eq!(head.method(&out), b"POST");
        assert_eq!(head.path(&out), b"/pkg.Echo/Say");
        assert_eq!(head.query(&out), Some(&b"x=1"[..]));
        assert_eq!(head.host(&out), b"api.example.com:8080");
        assert_eq!(head.header(&out, "cookie"), Some(&b"a=1; b=2"[..]));
        assert_eq!(head.header(&out, "te"), None);
        assert_eq!(head.framing, request::RequestFraming::Chunked);
    }

    #[test]
    fn a_request_without_body_or_with_a_length_keeps_that_framing() {
        let get = Request::builder()
            .uri("http://a.example/")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        request_as_h1(&parts(get), true, &mut out).unwrap();
        let mut head = RequestHead::default();
        assert!(request::parse(&out, &OWN_HEAD_LIMITS, &mut head).unwrap());
        assert_eq!(head.framing, request::RequestFraming::None);

        let post = Request::builder()
            .method("POST")
            .uri("http://a.example/upload")
            .header("content-length", "5")
            .body(())
            .unwrap();
        request_as_h1(&parts(post), false, &mut out).unwrap();
        assert!(request::parse(&out, &OWN_HEAD_LIMITS, &mut head).unwrap());
        assert_eq!(head.framing, request::RequestFraming::Length(5));
    }

    #[test]
    fn connect_and_authority_less_requests_have_no_http11_form() {
        let connect = Request::builder()
            .method("CONNECT")
            .uri("a.example:443")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            request_as_h1(&parts(connect), true, &mut out),
            Err(HeadError::Target)
        );
        let no_authority = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(
            request_as_h1(&parts(no_authority), true, &mut out),
            Err(HeadError::NoAuthority)
        );
    }

    #[test]
    fn upstream_requests_carry_authority_and_no_connection_fields() {
        let wire = b"POST /svc/M?q=1 HTTP/1.1\r\nhost: backend.example\r\nconnection: x-hop\r\n\
                     x-hop: 1\r\nx-keep: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut head = RequestHead::default();
        assert!(request::parse(wire, &OWN_HEAD_LIMITS, &mut head).unwrap());
        let request = upstream_request(wire, &head, false, true).unwrap();
        assert_eq!(request.uri(), "http://backend.example/svc/M?q=1");
        assert_eq!(request.method(), Method::POST);
        let headers = request.headers();
        assert_eq!(headers.get("x-keep").unwrap(), "2");
        assert!(headers.get("x-hop").is_none());
        assert!(headers.get("connection").is_none());
        assert!(headers.get("transfer-encoding").is_none());
        assert!(headers.get("host").is_none());
        assert_eq!(headers.get("te").unwrap(), "trailers");
    }

    #[test]
    fn responses_round_trip_without_connection_fields() {
        let response = Response::builder()
            .status(404)
            .header("grpc-status", "12")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        response_as_h1(&response.into_parts().0, &mut out);
        let mut head = ResponseHead::default();
        assert!(response::parse(&out, 64 * 1024, 100, false, &mut head).unwrap());
        let back = client_response(&out, &head).unwrap();
        assert_eq!(back.status(), 404);
        assert_eq!(back.headers().get("grpc-status").unwrap(), "12");
        assert_eq!(back.headers().get_all("set-cookie").iter().count(), 2);

        let wire = b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\
                     transfer-encoding: chunked\r\nx-a: 1\r\n\r\n";
        assert!(response::parse(wire, 64 * 1024, 100, false, &mut head).unwrap());
        let back = client_response(wire, &head).unwrap();
        assert_eq!(back.headers().len(), 1);
        assert_eq!(back.headers().get("x-a").unwrap(), "1");
    }
}
