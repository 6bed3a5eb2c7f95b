//! Upstream response head parsing (RFC 9112 §6.3 message body length rules).
//!
//! Upstreams are trusted more than clients but not blindly: conflicting lengths or a broken
//! head become a 502, and the connection is not reused after anything ambiguous.

use std::ops::Range;

use super::request::split_list;
use super::{HeaderKind, HeaderSpan, Version, find_bare_lf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResponseFraming {
    /// No body: 1xx, 204, 304, or a response to HEAD.
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Delimited by the upstream closing the connection.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("response head too large")]
    TooLarge,
    #[error("conflicting Content-Length values")]
    InvalidContentLength,
}

#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub head_len: usize,
    pub version: Version,
    pub status: u16,
    pub reason: Range<usize>,
    pub headers: Vec<HeaderSpan>,
    pub framing: ResponseFraming,
    /// Whether the upstream connection may carry another request after this response.
    pub reusable: bool,
    pub connection_options: Vec<Range<usize>>,
}

impl ResponseHead {
    pub fn is_connection_option(&self, buf: &[u8], name: &[u8]) -> bool {
        self.connection_options
            .iter()
            .any(|r| buf[r.clone()].eq_ignore_ascii_case(name))
    }
}

/// Parses the response head at the start of `buf`. `Ok(false)` means more bytes are needed.
pub fn parse(
    buf: &[u8],
    max_header_bytes: usize,
    max_headers: usize,
    request_was_head: bool,
    head: &mut ResponseHead,
) -> Result<bool, ResponseError> {
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() };
        super::MAX_HEADER_SLOTS];
    let slots = max_headers.min(super::MAX_HEADER_SLOTS);
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut storage[..slots],
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header_bytes {
                return Err(ResponseError::TooLarge);
            }
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    if head_len > max_header_bytes {
        return Err(ResponseError::TooLarge);
    }
    if find_bare_lf(&buf[..head_len]).is_some() {
        return Err(ResponseError::Malformed);
    }
    let base = buf.as_ptr() as usize;
    let range_of = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };

    let status = response.code.ok_or(ResponseError::Malformed)?;
    if !(100..=999).contains(&status) {
        return Err(ResponseError::Malformed);
    }
    head.head_len = head_len;
    head.status = status;
    head.version = match response.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    head.reason = response
        .reason
        .map(|r| range_of(r.as_bytes()))
        .unwrap_or(0..0);
    head.headers.clear();
    head.connection_options.clear();

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    for header in response.headers.iter() {
        let kind = HeaderKind::classify(header.name.as_bytes());
        let value = header.value;
        match kind {
            HeaderKind::ContentLength => {
                for item in split_list(value) {
                    if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
                        return Err(ResponseError::InvalidContentLength);
                    }
                    let n = item.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                    if content_length.is_some_and(|existing| existing != n) {
                        return Err(ResponseError::InvalidContentLength);
                    }
                    content_length = Some(n);
                }
            }
            HeaderKind::TransferEncoding => {
                has_transfer_encoding = true;
                chunked = split_list(value)
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            }
            HeaderKind::Connection => {
                for token in split_list(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else if !token.eq_ignore_ascii_case(b"upgrade") {
                        head.connection_options.push(range_of(token));
                    }
                }
            }
            _ => {}
        }
        head.headers.push(HeaderSpan {
            name: range_of(header.name.as_bytes()),
            value: range_of(value),
            kind,
        });
    }

    let mut reusable = match head.version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    head.framing = if request_was_head || status < 200 || status == 204 || status == 304 {
        ResponseFraming::None
    } else if has_transfer_encoding {
        if content_length.is_some() {
            // RFC 9112 §6.1: Transfer-Encoding wins, and the connection must not be reused.
            reusable = false;
        }
        if chunked {
            ResponseFraming::Chunked
        } else {
            reusable = false;
            ResponseFraming::UntilClose
        }
    } else if let Some(n) = content_length {
        ResponseFraming::Length(n)
    } else {
        reusable = false;
        ResponseFraming::UntilClose
    };
    head.reusable = reusable;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(raw: &[u8], head_request: bool) -> Result<ResponseHead, ResponseError> {
        let mut head = ResponseHead::default();
        assert!(parse(raw, 64 * 1024, 100, head_request, &mut head)?);
        Ok(head)
    }

    #[test]
    fn framing_rules() {
        let cases: &[(&[u8], bool, ResponseFraming, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                ResponseFraming::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                false,
                ResponseFraming::Length(5),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                ResponseFraming::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                ResponseFraming::Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\n",
                false,
                ResponseFraming::UntilClose,
                false,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                false,
                ResponseFraming::None,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                ResponseFraming::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
                true,
                ResponseFraming::None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false,
                ResponseFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                false,
                ResponseFraming::Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false,
                ResponseFraming::Length(1),
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                false,
                ResponseFraming::None,
                true,
            ),
        ];
        for (raw, head_request, framing, reusable) in cases {
            let head = parse_one(raw, *head_request).unwrap();
            assert_eq!(head.framing, *framing, "{}", String::from_utf8_lossy(raw));
            assert_eq!(head.reusable, *reusable, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn bad_responses() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        ] {
            assert_eq!(
                parse_one(raw, false).err(),
                Some(ResponseError::InvalidContentLength)
            );
        }
        assert_eq!(
            parse_one(b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n", false).err(),
            Some(ResponseError::Malformed)
        );
        assert_eq!(
            parse_one(b"HTTQ/1.1 200 OK\r\n\r\n", false).err(),
            Some(ResponseError::Malformed)
        );
    }

    #[test]
    fn partial_and_oversized() {
        let mut head = ResponseHead::default();
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nA: b", 1024, 100, false, &mut head),
            Ok(false)
        );
        let big = [b"HTTP/1.1 200 OK\r\nA: ".as_slice(), &[b'x'; 2000]].concat();
        assert_eq!(
            parse(&big, 1024, 100, false, &mut head),
            Err(ResponseError::TooLarge)
        );
    }
}
