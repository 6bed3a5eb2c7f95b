//! Request head parsing and validation.
//!
//! httparse tokenizes; this module decides. It owns every framing rule that httparse leaves
//! to its caller (RFC 9112 §6): one valid Content-Length or exactly one final `chunked`,
//! no CL+TE, no TE on HTTP/1.0, one valid Host, no bare LF, bounded sizes. A rejected
//! request always closes the connection, because after a framing error the next byte on the
//! wire cannot be trusted to start a request.
//!
//! The parsed head keeps offsets into the connection's receive buffer instead of copies, so a
//! request costs no allocation here once the connection's `RequestHead` has grown.

use std::ops::Range;

use super::{HeaderKind, HeaderSpan, Version, find_bare_lf, is_token_byte};

/// Size limits for one request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub max_request_line_bytes: usize,
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestFraming {
    /// No body (no Content-Length and no Transfer-Encoding, or Content-Length: 0).
    #[default]
    None,
    Length(u64),
    Chunked,
}

/// Why a request head was refused, with the status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request head")]
    Malformed,
    #[error("bare LF line ending")]
    BareLf,
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("request header section too large")]
    HeadersTooLarge,
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header")]
    InvalidHost,
    #[error("invalid request target")]
    InvalidTarget,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding on an HTTP/1.0 request")]
    TransferEncodingOnHttp10,
    #[error("chunked is not the final transfer coding")]
    ChunkedNotFinal,
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    #[error("unsupported Expect value")]
    UnsupportedExpectation,
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::RequestLineTooLong => 414,
            RequestError::HeadersTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::UnsupportedVersion => 505,
            RequestError::UnsupportedTransferCoding => 501,
            RequestError::UnsupportedExpectation => 417,
            RequestError::ConnectNotSupported => 405,
            _ => 400,
        }
    }
}

/// A parsed request head. Ranges index the buffer that was parsed.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    pub head_len: usize,
    pub method: Range<usize>,
    pub version: Version,
    /// The path of the target; empty when an absolute-form target had no path ("/").
    pub path: Range<usize>,
    /// The query after '?', without the '?'.
    pub query: Option<Range<usize>>,
    /// The authority the request is for: the absolute-form target's, else the Host header's.
    pub host: Option<Range<usize>>,
    pub headers: Vec<HeaderSpan>,
    pub framing: RequestFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` together with an `Upgrade` header.
    pub upgrade: bool,
    /// Header names listed in `Connection` (hop-by-hop, never forwarded).
    pub connection_options: Vec<Range<usize>>,
}

impl RequestHead {
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.method.clone()]
    }

    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        if self.path.is_empty() {
            b"/"
        } else {
            &buf[self.path.clone()]
        }
    }

    pub fn query<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.query.clone().map(|r| &buf[r])
    }

    pub fn host<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.host.clone().map(|r| &buf[r]).unwrap_or(b"")
    }

    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method(buf) == b"HEAD"
    }

    /// The first value of the header named `name` (ASCII case-insensitive).
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| &buf[h.value.clone()])
    }

    /// Whether `name` is listed in this request's Connection header.
    pub fn is_connection_option(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_options
            .iter()
            .any(|r| buf[r.clone()].eq_ignore_ascii_case(name))
    }
}

/// Parses the request head at the start of `buf` into `head`.
///
/// Returns `Ok(true)` when a complete head was parsed, `Ok(false)` when more bytes are needed,
/// and an error when the head is invalid or over a limit. `head` is overwritten, reusing its
/// allocations.
pub fn parse(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<bool, RequestError> {
    // The limit counts the request line without its CRLF.
    let line_end = memchr_newline(buf);
    match line_end {
        Some(end) if end.saturating_sub(1) > limits.max_request_line_bytes => {
            return Err(RequestError::RequestLineTooLong);
        }
        None if buf.len() > limits.max_request_line_bytes + 1 => {
            return Err(RequestError::RequestLineTooLong);
        }
        _ => {}
    }

    // Uninitialized slots: zeroing a thousand headers per request would cost more than
    // parsing them.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
        super::MAX_HEADER_SLOTS];
    let slots = limits.max_header_count.min(super::MAX_HEADER_SLOTS);
    let mut request = httparse::Request::new(&mut []);
    let status = match request.parse_with_uninit_headers(buf, &mut storage[..slots]) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(if looks_like_http_version(buf) {
                RequestError::UnsupportedVersion
            } else {
                RequestError::Malformed
            });
        }
        Err(_) => {
            return Err(if buf.len() > limits.max_header_bytes {
                RequestError::HeadersTooLarge
            } else {
                RequestError::Malformed
            });
        }
    };
    let head_len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() > limits.max_header_bytes {
                return Err(RequestError::HeadersTooLarge);
            }
            return Ok(false);
        }
    };
    if head_len > limits.max_header_bytes {
        return Err(RequestError::HeadersTooLarge);
    }
    if find_bare_lf(&buf[..head_len]).is_some() {
        return Err(RequestError::BareLf);
    }

    let base = buf.as_ptr() as usize;
    let offset_of = |s: &[u8]| s.as_ptr() as usize - base;
    let range_of = |s: &[u8]| {
        let start = offset_of(s);
        start..start + s.len()
    };

    // httparse leaves method, path and version set on a complete parse.
    let method = request.method.ok_or(RequestError::Malformed)?;
    let target = request.path.ok_or(RequestError::Malformed)?;
    let version = match request.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::UnsupportedVersion),
    };
    if method == "CONNECT" {
        return Err(RequestError::ConnectNotSupported);
    }

    head.head_len = head_len;
    head.method = range_of(method.as_bytes());
    head.version = version;
    head.headers.clear();
    head.connection_options.clear();
    head.host = None;
    head.query = None;
    head.expect_continue = false;
    head.upgrade = false;

    // Target: origin-form ("/path?query") or absolute-form ("http://authority/path?query").
    let target_range = range_of(target.as_bytes());
    let target_bytes = target.as_bytes();
    let mut authority_from_target = None;
    let path_and_query: Range<usize> = if target_bytes.first() == Some(&b'/') {
        target_range
    } else if let Some(rest) = strip_scheme(target_bytes) {
        let rest_start = target_range.start + (target_bytes.len() - rest.len());
        let authority_len = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let authority = rest_start..rest_start + authority_len;
        if authority.is_empty() || !is_valid_authority(&buf[authority.clone()]) {
            return Err(RequestError::InvalidTarget);
        }
        authority_from_target = Some(authority);
        rest_start + authority_len..target_range.end
    } else {
        // Asterisk-form and authority-form name no resource a route could serve.
        return Err(RequestError::InvalidTarget);
    };
    let pq = &buf[path_and_query.clone()];
    match pq.iter().position(|&b| b == b'?') {
        Some(q) => {
            head.path = path_and_query.start..path_and_query.start + q;
            head.query = Some(path_and_query.start + q + 1..path_and_query.end);
        }
        None => head.path = path_and_query,
    }
    if !head.path.is_empty() && buf[head.path.start] != b'/' {
        // "http://host?query": the path is empty and the query follows the authority.
        return Err(RequestError::InvalidTarget);
    }
    // No fragment, in the path or the query (RFC 9112 §3.2), and ASCII only: a URI has no raw
    // non-ASCII bytes (RFC 3986 §2), and the next hop may decode them differently.
    if target_bytes.iter().any(|&b| b == b'#' || !b.is_ascii()) {
        return Err(RequestError::InvalidTarget);
    }

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<Range<usize>> = None;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut connection_upgrade = false;
    let mut has_upgrade_header = false;
    let mut h2c_offered = false;
    let mut host_header: Option<Range<usize>> = None;

    for header in request.headers.iter() {
        let name = range_of(header.name.as_bytes());
        let value_raw = header.value;
        let value = range_of(value_raw);
        let kind = HeaderKind::classify(header.name.as_bytes());
        match kind {
            HeaderKind::Host => {
                if host_header.is_some() {
                    return Err(RequestError::DuplicateHost);
                }
                if !is_valid_authority(value_raw) && !value_raw.is_empty() {
                    return Err(RequestError::InvalidHost);
                }
                host_header = Some(value.clone());
            }
            HeaderKind::ContentLength => {
                if content_length.is_some() {
                    return Err(RequestError::DuplicateContentLength);
                }
                content_length = Some(parse_content_length(value_raw)?);
            }
            HeaderKind::TransferEncoding => {
                if transfer_encoding.is_some() {
                    // Two TE fields form one list; a second "chunked" would be non-final.
                    return Err(RequestError::ChunkedNotFinal);
                }
                transfer_encoding = Some(value.clone());
            }
            HeaderKind::Connection => {
                for token in split_list(value_raw) {
                    let range = offset_of(token)..offset_of(token) + token.len();
                    if token.eq_ignore_ascii_case(b"close") {
                        connection_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        connection_keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else if token.iter().all(|&b| is_token_byte(b)) {
                        head.connection_options.push(range);
                    } else {
                        return Err(RequestError::Malformed);
                    }
                }
            }
            // RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored.
            HeaderKind::Expect if version == Version::Http10 => {}
            HeaderKind::Expect => {
                if value_raw.eq_ignore_ascii_case(b"100-continue") {
                    head.expect_continue = true;
                } else {
                    return Err(RequestError::UnsupportedExpectation);
                }
            }
            HeaderKind::Upgrade => {
                has_upgrade_header = true;
                // RFC 9113 §3.1 deprecates the h2c upgrade. Passing it on would let a client
                // open an HTTP/2 tunnel to the upstream that no route sees (h2c smuggling), so a
                // request offering it is handled as a plain request.
                h2c_offered |= split_list(value_raw).any(|p| p.eq_ignore_ascii_case(b"h2c"));
            }
            _ => {}
        }
        head.headers.push(HeaderSpan { name, value, kind });
    }

    head.framing = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => return Err(RequestError::ContentLengthWithTransferEncoding),
        (_, Some(_)) if version == Version::Http10 => {
            return Err(RequestError::TransferEncodingOnHttp10);
        }
        (None, Some(te)) => transfer_coding(&buf[te])?,
        (Some(0), None) | (None, None) => RequestFraming::None,
        (Some(n), None) => RequestFraming::Length(n),
    };

    head.host = match (authority_from_target, host_header) {
        // RFC 9112 §3.2: every HTTP/1.1 request needs Host, absolute-form ones too.
        (Some(_), None) if version == Version::Http11 => return Err(RequestError::MissingHost),
        (Some(authority), _) => Some(authority),
        (None, Some(host)) => Some(host),
        (None, None) if version == Version::Http11 => return Err(RequestError::MissingHost),
        (None, None) => None,
    };

    head.keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    head.upgrade =
        connection_upgrade && has_upgrade_header && !h2c_offered && version == Version::Http11;
    Ok(true)
}

/// Content-Length must be 1*DIGIT; lists ("5, 5"), signs and whitespace inside are refused.
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::InvalidContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The only transfer coding the proxy implements is a single final `chunked`.
fn transfer_coding(value: &[u8]) -> Result<RequestFraming, RequestError> {
    let codings: Vec<&[u8]> = split_list(value).collect();
    match codings.as_slice() {
        [] => Err(RequestError::Malformed),
        [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(RequestFraming::Chunked),
        // RFC 9112 §6.1: chunked is applied at most once; an earlier chunked is a framing error
        // (400), not a coding we merely lack (501).
        [earlier @ .., last]
            if last.eq_ignore_ascii_case(b"chunked")
                && !earlier.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) =>
        {
            Err(RequestError::UnsupportedTransferCoding)
        }
        _ if codings.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) => {
            Err(RequestError::ChunkedNotFinal)
        }
        // Without a final chunked the body length is unknowable: RFC 9112 §6.3 says 400.
        _ => Err(RequestError::ChunkedNotFinal),
    }
}

/// Splits a comma-separated header list into trimmed, non-empty elements.
pub fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

/// host[:port] where host is a reg-name, IPv4 address or bracketed IPv6 address. No userinfo.
pub fn is_valid_authority(authority: &[u8]) -> bool {
    if authority.is_empty() || authority.len() > 255 {
        return false;
    }
    let (host, port) = split_host_port(authority);
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit))
    {
        return false;
    }
    if host.first() == Some(&b'[') {
        return host.len() > 2
            && host.last() == Some(&b']')
            && host[1..host.len() - 1]
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

/// Splits "host:port" / "[v6]:port" into host and optional port.
pub fn split_host_port(authority: &[u8]) -> (&[u8], Option<&[u8]>) {
    if authority.first() == Some(&b'[') {
        if let Some(close) = authority.iter().position(|&b| b == b']') {
            let host = &authority[..=close];
            return match authority.get(close + 1) {
                Some(b':') => (host, Some(&authority[close + 2..])),
                Some(_) => (authority, Some(&b""[..])), // garbage after ']': invalid port
                None => (host, None),
            };
        }
        return (authority, None);
    }
    match authority.iter().rposition(|&b| b == b':') {
        Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
        None => (authority, None),
    }
}

fn memchr_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Whether the request line is `method SP target SP HTTP/x.y`, so a version httparse rejects
/// is answered 505 rather than 400. A line with more than two spaces ("GET /a b HTTP/1.1") is
/// malformed, not a version problem.
fn looks_like_http_version(buf: &[u8]) -> bool {
    let line_end = memchr_newline(buf).unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    if line.iter().filter(|&&b| b == b' ').count() != 2 {
        return false;
    }
    let Some(space) = line.iter().rposition(|&b| b == b' ') else {
        return false;
    };
    let version = &line[space + 1..];
    version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit()
}

#[cfg(test)]
mod tests;
