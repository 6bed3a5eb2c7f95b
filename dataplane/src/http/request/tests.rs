use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_header_count: 100,
    max_header_bytes: 60 * 1024,
    max_request_line_bytes: 8 * 1024,
};

fn parse_ok(raw: &[u8]) -> RequestHead {
    let mut head = RequestHead::default();
    match parse(raw, &LIMITS, &mut head) {
        Ok(true) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn parse_err(raw: &[u8]) -> RequestError {
    let mut head = RequestHead::default();
    match parse(raw, &LIMITS, &mut head) {
        Err(e) => e,
        other => panic!("{:?} was accepted: {other:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn simple_get() {
    let raw = b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\nX-A: 1\r\n\r\nNEXT";
    let head = parse_ok(raw);
    assert_eq!(head.head_len, raw.len() - 4);
    assert_eq!(head.method(raw), b"GET");
    assert_eq!(head.path(raw), b"/a/b");
    assert_eq!(head.query(raw), Some(&b"x=1&y=2"[..]));
    assert_eq!(head.host(raw), b"example.com:8080");
    assert_eq!(head.framing, RequestFraming::None);
    assert!(head.keep_alive);
    assert_eq!(head.header(raw, "x-a"), Some(&b"1"[..]));
}

#[test]
fn partial_heads_wait_for_more() {
    let mut head = RequestHead::default();
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &LIMITS, &mut head),
        Ok(false)
    );
    assert_eq!(parse(b"GE", &LIMITS, &mut head), Ok(false));
}

#[test]
fn framing_and_connection_semantics() {
    let head = parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(head.framing, RequestFraming::Length(10));
    let head = parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(head.framing, RequestFraming::None);
    let head = parse_ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(head.framing, RequestFraming::Chunked);
    let head = parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(!head.keep_alive);
    let head = parse_ok(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!head.keep_alive);
    assert_eq!(head.host, None);
    let head = parse_ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(head.keep_alive);
    let raw =
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let head = parse_ok(raw);
    assert!(head.upgrade);
    assert!(head.is_connection_option(raw, b"X-Secret"));
    let head = parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(
        !head.upgrade,
        "Upgrade without Connection: upgrade is not an upgrade"
    );
    let head = parse_ok(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
    );
    assert!(head.expect_continue);
}

#[test]
fn absolute_form_targets_take_the_authority() {
    let raw = b"GET http://Example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
    let head = parse_ok(raw);
    assert_eq!(head.host(raw), b"Example.com:81");
    assert_eq!(head.path(raw), b"/p");
    assert_eq!(head.query(raw), Some(&b"q"[..]));
    let raw = b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let head = parse_ok(raw);
    assert_eq!(head.path(raw), b"/");
}

#[test]
fn rejections() {
    let cases: &[(&[u8], RequestError)] = &[
        (b"GET / HTTP/1.1\r\n\r\n", RequestError::MissingHost),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", RequestError::DuplicateHost),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", RequestError::InvalidHost),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", RequestError::InvalidHost),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", RequestError::InvalidHost),
        (b"GET / HTTP/1.1\r\nHost: a:99999x\r\n\r\n", RequestError::InvalidHost),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", RequestError::BareLf),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", RequestError::BareLf),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", RequestError::UnsupportedVersion),
        (b"GET / HTTX/1.1\r\nHost: a\r\n\r\n", RequestError::Malformed),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidTarget),
        (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidTarget),
        (b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidTarget),
        (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidTarget),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", RequestError::ConnectNotSupported),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            RequestError::DuplicateContentLength,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", RequestError::InvalidContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", RequestError::InvalidContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\n", RequestError::InvalidContentLength),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", RequestError::InvalidContentLength),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            RequestError::InvalidContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            RequestError::ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            RequestError::ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            RequestError::TransferEncodingOnHttp10,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            RequestError::ChunkedNotFinal,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            RequestError::ChunkedNotFinal,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            RequestError::UnsupportedTransferCoding,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            RequestError::ChunkedNotFinal,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", RequestError::Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", RequestError::UnsupportedExpectation),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", RequestError::Malformed),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", RequestError::Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", RequestError::Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", RequestError::Malformed),
        (b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", RequestError::Malformed),
        (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::InvalidTarget),
        (b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", RequestError::Malformed),
    ];
    for (raw, expected) in cases {
        assert_eq!(
            parse_err(raw),
            *expected,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn statuses() {
    assert_eq!(RequestError::RequestLineTooLong.status(), 414);
    assert_eq!(RequestError::TooManyHeaders.status(), 431);
    assert_eq!(RequestError::HeadersTooLarge.status(), 431);
    assert_eq!(RequestError::UnsupportedTransferCoding.status(), 501);
    assert_eq!(RequestError::UnsupportedVersion.status(), 505);
    assert_eq!(
        RequestError::ContentLengthWithTransferEncoding.status(),
        400
    );
}

#[test]
fn limits() {
    let long_line = [
        b"GET /".as_slice(),
        &[b'a'; 9000],
        b" HTTP/1.1\r\nHost: a\r\n\r\n",
    ]
    .concat();
    assert_eq!(parse_err(&long_line), RequestError::RequestLineTooLong);
    // Still partial but already too long for a request line.
    assert_eq!(
        parse_err(&long_line[..8500]),
        RequestError::RequestLineTooLong
    );

    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse_err(&many), RequestError::TooManyHeaders);

    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..20 {
        big.extend_from_slice(format!("X-{i}: {}\r\n", "v".repeat(4000)).as_bytes());
    }
    assert_eq!(parse_err(&big), RequestError::HeadersTooLarge);
    big.extend_from_slice(b"\r\n");
    assert_eq!(parse_err(&big), RequestError::HeadersTooLarge);
}

#[test]
fn authorities() {
    for ok in [
        "a",
        "a.b.c",
        "a:80",
        "[::1]",
        "[::1]:8080",
        "10.0.0.1:1",
        "a_b",
        "xn--x.y",
    ] {
        assert!(is_valid_authority(ok.as_bytes()), "{ok}");
    }
    for bad in [
        "", "a b", "a/b", "u@a", "[::1", "[::1]x", "a:", "a:123456", "[]", "a:8a",
    ] {
        assert!(!is_valid_authority(bad.as_bytes()), "{bad}");
    }
    assert_eq!(split_host_port(b"a:80"), (&b"a"[..], Some(&b"80"[..])));
    assert_eq!(
        split_host_port(b"[::1]:80"),
        (&b"[::1]"[..], Some(&b"80"[..]))
    );
    assert_eq!(split_host_port(b"[::1]"), (&b"[::1]"[..], None));
}

#[test]
fn only_a_well_formed_request_line_gets_505() {
    for raw in [
        &b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(parse_err(raw), RequestError::UnsupportedVersion);
    }
    // A space inside the target or a doubled delimiter leaves a line that merely ends in a
    // version: it is malformed (400), not a version the proxy refuses (505).
    for raw in [
        &b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GE T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            parse_err(raw),
            RequestError::Malformed,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn targets_are_ascii_without_a_fragment() {
    for raw in [
        &b"GET /a?b=1#frag HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /q?name=\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://a/\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(
            parse_err(raw),
            RequestError::InvalidTarget,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    let raw = b"GET /caf%C3%A9?n=%C3%A9 HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(parse_ok(raw).path(raw), b"/caf%C3%A9");
}

#[test]
fn absolute_form_on_http11_still_needs_host() {
    assert_eq!(
        parse_err(b"GET http://a/p HTTP/1.1\r\n\r\n"),
        RequestError::MissingHost
    );
    let raw = b"GET http://a/p HTTP/1.0\r\n\r\n";
    assert_eq!(parse_ok(raw).host(raw), b"a");
}

#[test]
fn chunked_twice_is_a_framing_error_not_an_unknown_coding() {
    for value in [
        "chunked, chunked",
        "chunked,chunked",
        "gzip, chunked, chunked",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {value}\r\n\r\n");
        assert_eq!(
            parse_err(raw.as_bytes()),
            RequestError::ChunkedNotFinal,
            "{value}"
        );
    }
    let raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(parse_err(raw), RequestError::UnsupportedTransferCoding);
}

#[test]
fn h2c_upgrades_are_not_passed_on() {
    for upgrade in ["h2c", "H2C", "websocket, h2c"] {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        );
        assert!(!parse_ok(raw.as_bytes()).upgrade, "{upgrade}");
    }
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(!parse_ok(raw).upgrade);
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(parse_ok(raw).upgrade);
}
