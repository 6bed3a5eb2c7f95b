//! The `request_head` target: request-head parsing under small and default limits.

use portcullis_api::config::ProxySettings;

use crate::http::request::{self, HeadLimits, RequestFraming, RequestHead};
use crate::http::{HeaderKind, Version, find_bare_lf, is_token_byte};

/// Limits small enough that every limit is reachable within a fuzz input.
const SMALL_LIMITS: HeadLimits = HeadLimits {
    max_header_count: 16,
    max_header_bytes: 1024,
    max_request_line_bytes: 256,
};

pub(super) fn default_limits() -> HeadLimits {
    let settings = ProxySettings::default();
    HeadLimits {
        max_header_count: settings.max_header_count,
        max_header_bytes: settings.max_header_bytes,
        max_request_line_bytes: settings.max_request_line_bytes,
    }
}

/// Parses `data` as the start of a receive buffer, under small and default limits.
///
/// A complete head must lie within the input and the limits, with every range inside it; it
/// must parse the same without the bytes after it, into a reused head, and under larger
/// limits; and no shorter prefix of it may be rejected, because where reads split a request
/// is up to the network.
pub fn request_head(data: &[u8]) {
    let default = default_limits();
    let mut small_head = RequestHead::default();
    let small = request::parse(data, &SMALL_LIMITS, &mut small_head);
    if small == Ok(true) {
        check_complete_head(data, &SMALL_LIMITS, &small_head);
    }
    let mut head = RequestHead::default();
    let result = request::parse(data, &default, &mut head);
    // The connection reuses one head for all its requests.
    let mut reused = small_head.clone();
    let again = request::parse(data, &default, &mut reused);
    assert_eq!(
        result, again,
        "parsing into a reused head changed the result"
    );
    if result == Ok(true) {
        assert_same_head(&head, &reused, data);
        check_complete_head(data, &default, &head);
    }
    if small == Ok(true) {
        assert_eq!(
            result,
            Ok(true),
            "larger limits rejected a head smaller limits accepted"
        );
        assert_same_head(&small_head, &head, data);
    }
}

fn check_complete_head(data: &[u8], limits: &HeadLimits, head: &RequestHead) {
    let len = head.head_len;
    assert!(len <= data.len(), "head length {len} beyond the input");
    assert!(len <= limits.max_header_bytes, "head over max_header_bytes");
    assert!(
        data[..len].ends_with(b"\r\n\r\n"),
        "head does not end with CRLFCRLF"
    );
    assert_eq!(find_bare_lf(&data[..len]), None, "bare LF accepted");
    assert!(
        head.headers.len() <= limits.max_header_count,
        "too many headers"
    );
    let within = |r: &std::ops::Range<usize>| r.start <= r.end && r.end <= len;
    assert!(
        within(&head.method) && !head.method.is_empty(),
        "method range"
    );
    assert!(
        data[head.method.clone()].iter().all(|&b| is_token_byte(b)),
        "method is not a token"
    );
    assert!(within(&head.path), "path range");
    let path = head.path(data);
    assert!(path.starts_with(b"/"), "path does not start with '/'");
    assert!(!path.contains(&b'#'), "fragment in path");
    if let Some(query) = &head.query {
        assert!(within(query), "query range");
    }
    if let Some(host) = &head.host {
        assert!(within(host), "host range");
    }
    for header in &head.headers {
        assert!(
            within(&header.name) && within(&header.value),
            "header range"
        );
        assert_eq!(
            header.kind,
            HeaderKind::classify(&data[header.name.clone()])
        );
    }
    for option in &head.connection_options {
        assert!(within(option), "connection option range");
    }
    match head.version {
        Version::Http11 => assert!(head.host.is_some(), "HTTP/1.1 without a host"),
        Version::Http10 => {
            assert_ne!(head.framing, RequestFraming::Chunked, "chunked on HTTP/1.0");
            assert!(!head.upgrade, "upgrade on HTTP/1.0");
        }
    }
    assert_ne!(head.framing, RequestFraming::Length(0), "Length(0) is None");

    // The same head alone, without what follows it.
    let mut alone = RequestHead::default();
    assert_eq!(
        request::parse(&data[..len], limits, &mut alone),
        Ok(true),
        "the head alone did not parse"
    );
    assert_same_head(head, &alone, data);

    // Shorter prefixes are incomplete, never errors: all of them for short heads, a sample
    // for long ones.
    let step = (len / 64).max(1);
    let mut prefix = RequestHead::default();
    for cut in (0..len).step_by(step).chain(len.saturating_sub(4)..len) {
        let result = request::parse(&data[..cut], limits, &mut prefix);
        assert_eq!(
            result,
            Ok(false),
            "a {cut}-byte prefix of a valid {len}-byte head was not just incomplete"
        );
    }
}

fn assert_same_head(a: &RequestHead, b: &RequestHead, data: &[u8]) {
    let context = String::from_utf8_lossy(&data[..a.head_len.min(data.len())]);
    assert_eq!(a.head_len, b.head_len, "head_len: {context:?}");
    assert_eq!(a.method, b.method, "method: {context:?}");
    assert_eq!(a.version, b.version, "version: {context:?}");
    assert_eq!(a.path, b.path, "path: {context:?}");
    assert_eq!(a.query, b.query, "query: {context:?}");
    assert_eq!(a.host, b.host, "host: {context:?}");
    assert_eq!(a.headers, b.headers, "headers: {context:?}");
    assert_eq!(a.framing, b.framing, "framing: {context:?}");
    assert_eq!(a.keep_alive, b.keep_alive, "keep_alive: {context:?}");
    assert_eq!(a.expect_continue, b.expect_continue, "expect: {context:?}");
    assert_eq!(a.upgrade, b.upgrade, "upgrade: {context:?}");
    assert_eq!(
        a.connection_options, b.connection_options,
        "connection options: {context:?}"
    );
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_request_head_replays() {
        replay("request_head");
    }
}
