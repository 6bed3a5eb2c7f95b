//! HTTP/1.1 message syntax: request and response heads, body framing, canonical output.
//!
//! Pure functions over byte buffers; no I/O. The proxy engine (`crate::proxy`) drives them.

pub mod chunked;
pub mod request;
pub mod response;

use std::ops::Range;

pub use portcullis_api::validate::is_token_byte;

/// httparse needs a header array up front; this bounds the configurable header count.
pub const MAX_HEADER_SLOTS: usize = 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    Http10,
    #[default]
    Http11,
}

/// A header's name and value as offsets into the buffer that holds the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpan {
    pub name: Range<usize>,
    pub value: Range<usize>,
    pub kind: HeaderKind,
}

/// Headers the proxy treats specially, classified once at parse time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Forwarded,
    Other,
}

impl HeaderKind {
    pub fn classify(name: &[u8]) -> HeaderKind {
        // Dispatch on length first: most headers are rejected after one integer compare.
        let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
        match name.len() {
            2 if is("te") => HeaderKind::Te,
            4 if is("host") => HeaderKind::Host,
            6 if is("expect") => HeaderKind::Expect,
            7 if is("upgrade") => HeaderKind::Upgrade,
            7 if is("trailer") => HeaderKind::Trailer,
            9 if is("forwarded") => HeaderKind::Forwarded,
            10 if is("connection") => HeaderKind::Connection,
            10 if is("keep-alive") => HeaderKind::KeepAlive,
            14 if is("content-length") => HeaderKind::ContentLength,
            15 if is("x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if is("proxy-connection") => HeaderKind::ProxyConnection,
            16 if is("x-forwarded-host") => HeaderKind::XForwardedHost,
            17 if is("transfer-encoding") => HeaderKind::TransferEncoding,
            17 if is("x-forwarded-proto") => HeaderKind::XForwardedProto,
            _ => HeaderKind::Other,
        }
    }

    /// Hop-by-hop headers (RFC 9110 §7.6.1) and framing headers: never copied from one
    /// connection to the next; the proxy writes its own.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Trailer
                | HeaderKind::Upgrade
                | HeaderKind::TransferEncoding
                | HeaderKind::ContentLength
        )
    }
}

/// Position of the first LF not preceded by CR. httparse accepts bare LF line endings; a proxy
/// must not, because the next hop may disagree about where the head ends.
pub fn find_bare_lf(head: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(pos) = head[from..].iter().position(|&b| b == b'\n') {
        let at = from + pos;
        if at == 0 || head[at - 1] != b'\r' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The reason phrase the proxy writes for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf_detection() {
        assert_eq!(find_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(find_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"), Some(14));
        assert_eq!(find_bare_lf(b"\n"), Some(0));
        assert_eq!(find_bare_lf(b"a\r\nb\n"), Some(4));
    }

    #[test]
    fn classification_is_case_insensitive() {
        assert_eq!(HeaderKind::classify(b"HOST"), HeaderKind::Host);
        assert_eq!(
            HeaderKind::classify(b"Transfer-Encoding"),
            HeaderKind::TransferEncoding
        );
        assert_eq!(
            HeaderKind::classify(b"x-forwarded-proto"),
            HeaderKind::XForwardedProto
        );
        assert_eq!(HeaderKind::classify(b"hosts"), HeaderKind::Other);
        assert!(HeaderKind::ContentLength.is_hop_by_hop());
        assert!(!HeaderKind::Host.is_hop_by_hop());
    }
}
