//! A strict, incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! httparse's chunk-size parser accepts an empty size line and bare LF inside extensions, so
//! the proxy decodes chunked bodies itself and re-encodes them canonically upstream. Anything
//! outside the grammar is an error: empty or over-long sizes, whitespace before the size or
//! after it unless an extension follows (`chunk-size BWS ";"` is allowed), bare CR or LF,
//! control characters in extensions, trailer lines that are not `token ":" value`, oversized
//! extensions or trailers.

/// Longest chunk-extension text accepted per chunk.
pub const MAX_EXTENSION_BYTES: usize = 4 * 1024;
/// Longest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 60 * 1024;
/// 15 hex digits: chunk sizes stay below 2^60, so arithmetic never overflows.
const MAX_SIZE_DIGITS: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    #[error("invalid chunk size line")]
    InvalidSize,
    #[error("chunk size too large")]
    SizeTooLarge,
    #[error("invalid chunk extension")]
    InvalidExtension,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingDataCrlf,
    #[error("invalid trailer section")]
    InvalidTrailer,
    #[error("trailer section too long")]
    TrailerTooLong,
}

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// `input[start..end]` is body data (a piece of one chunk).
    Data { start: usize, end: usize },
    /// All input up to `consumed` was framing; feed more bytes.
    NeedMore,
    /// The last chunk and the trailer section ended; the message body is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` so far.
    Size {
        digits: usize,
    },
    /// Whitespace after the size: only a ';' may follow (RFC 9112 §7.1.1 BWS).
    SizeBws,
    /// After ';': reading extension bytes until CR.
    Extension,
    /// Saw CR after the size line; expect LF.
    SizeLf,
    /// Inside chunk data with this many bytes left.
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerLineStart,
    /// Inside a trailer field name, before its colon.
    TrailerName,
    /// Inside a trailer field value.
    TrailerLine,
    TrailerLf,
    /// Saw CR on an empty line ending the trailer section; expect LF.
    EndLf,
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    extension_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` until it reaches data, the end, or the end of `input`.
    /// Returns the number of bytes consumed (framing plus any data reported) and what was
    /// found. Call again with the unconsumed rest.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Decoded), ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkedError::SizeTooLarge);
                        }
                        self.size = (self.size << 4) | u64::from(hex_value(b));
                        self.state = State::Size { digits: digits + 1 };
                    }
                    b';' if digits > 0 => {
                        self.extension_bytes = 0;
                        self.state = State::Extension;
                    }
                    b' ' | b'\t' if digits > 0 => {
                        self.extension_bytes = 1;
                        self.state = State::SizeBws;
                    }
                    b'\r' if digits > 0 => self.state = State::SizeLf,
                    _ => return Err(ChunkedError::InvalidSize),
                },
                // The whitespace counts against the extension limit.
                State::SizeBws => match b {
                    b' ' | b'\t' => {
                        self.extension_bytes += 1;
                        if self.extension_bytes > MAX_EXTENSION_BYTES {
                            return Err(ChunkedError::ExtensionTooLong);
                        }
                    }
                    b';' => self.state = State::Extension,
                    _ => return Err(ChunkedError::InvalidSize),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    // Extension text: tokens, quoted strings, '=', ';' and whitespace. No
                    // control characters other than HTAB, no bare LF.
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => {
                        self.extension_bytes += 1;
                        if self.extension_bytes > MAX_EXTENSION_BYTES {
                            return Err(ChunkedError::ExtensionTooLong);
                        }
                    }
                    _ => return Err(ChunkedError::InvalidExtension),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::InvalidSize);
                    }
                    if self.size == 0 {
                        self.state = State::TrailerLineStart;
                    } else {
                        self.state = State::Data {
                            remaining: self.size,
                        };
                    }
                    self.size = 0;
                }
                State::Data { remaining } => {
                    let available = (input.len() - i) as u64;
                    let take = remaining.min(available) as usize;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok((
                        i + take,
                        Decoded::Data {
                            start: i,
                            end: i + take,
                        },
                    ));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::MissingDataCrlf);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::MissingDataCrlf);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerLineStart => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => self.state = State::EndLf,
                        // A field line must start with a token character (no obs-fold).
                        _ if crate::http::is_token_byte(b) => self.state = State::TrailerName,
                        _ => return Err(ChunkedError::InvalidTrailer),
                    }
                }
                // field-name ":" with nothing between name and colon (RFC 9112 §5.1). A line
                // that is no field line (a request line, say) is an error, not a trailer to
                // drop: dropping it would let the decoder run past the end of the message.
                State::TrailerName => {
                    self.count_trailer()?;
                    match b {
                        b':' => self.state = State::TrailerLine,
                        _ if crate::http::is_token_byte(b) => {}
                        _ => return Err(ChunkedError::InvalidTrailer),
                    }
                }
                State::TrailerLine => {
                    self.count_trailer()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkedError::InvalidTrailer),
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::InvalidTrailer);
                    }
                    self.state = State::TrailerLineStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::InvalidTrailer);
                    }
                    self.state = State::Done;
                    return Ok((i + 1, Decoded::Done));
                }
                State::Done => return Ok((i, Decoded::Done)),
            }
            i += 1;
        }
        if self.state == State::Done {
            return Ok((i, Decoded::Done));
        }
        Ok((i, Decoded::NeedMore))
    }

    fn count_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError::TrailerTooLong);
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Writes the chunk header for `len` data bytes ("{len:x}\r\n") into `out`.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes. `Ok(None)` means the input ended before
    /// the body did.
    fn decode_all(input: &[u8], step: usize) -> Result<Option<Vec<u8>>, ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                let (consumed, decoded) = decoder.decode(&pending)?;
                if let Decoded::Data { start, end } = decoded {
                    body.extend_from_slice(&pending[start..end]);
                }
                pending.drain(..consumed);
                match decoded {
                    Decoded::Done => return Ok(Some(body)),
                    Decoded::NeedMore => break,
                    Decoded::Data { .. } if pending.is_empty() => break,
                    Decoded::Data { .. } => {}
                }
            }
        }
        Ok(None)
    }

    #[test]
    fn valid_bodies_decode_at_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
            ),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (
                b"1;a=\"quoted; value\"\r\nx\r\n0\r\nTrailer: v\r\nOther: w\r\n\r\n",
                b"x",
            ),
            (b"000003\r\nabc\r\n0\r\n\r\n", b"abc"),
        ];
        for (input, expected) in cases {
            for step in 1..=input.len() {
                let body = decode_all(input, step).unwrap_or_else(|e| {
                    panic!("{:?} step {step}: {e}", String::from_utf8_lossy(input))
                });
                assert_eq!(body.as_deref(), Some(*expected), "step {step}");
            }
        }
    }

    #[test]
    fn stops_exactly_at_the_end_of_the_body() {
        let mut decoder = ChunkedDecoder::new();
        let input = b"0\r\n\r\nGET / HTTP/1.1\r\n";
        let (consumed, decoded) = decoder.decode(input).unwrap();
        assert_eq!(decoded, Decoded::Done);
        assert_eq!(consumed, 5);
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        let cases: &[(&[u8], ChunkedError)] = &[
            (b"\r\n\r\n", ChunkedError::InvalidSize),
            (b"\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"5\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"+5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkedError::InvalidSize),
            (b"g\r\n", ChunkedError::InvalidSize),
            (b"1000000000000000\r\n", ChunkedError::SizeTooLarge),
            (b"5;ext\nhello\r\n0\r\n\r\n", ChunkedError::InvalidExtension),
            (
                b"5;e\x00xt\r\nhello\r\n0\r\n\r\n",
                ChunkedError::InvalidExtension,
            ),
            (b";ext\r\nhello\r\n", ChunkedError::InvalidSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhello\n0\r\n\r\n", ChunkedError::MissingDataCrlf),
            (b"5\r\nhello\r\r\n", ChunkedError::MissingDataCrlf),
            (b"0\r\n\n", ChunkedError::InvalidTrailer),
            (b"0\r\n Folded: x\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\nA: b\nC: d\r\n\r\n", ChunkedError::InvalidTrailer),
            (b"0\r\r\n\r\n", ChunkedError::InvalidSize),
        ];
        for (input, expected) in cases {
            let result = decode_all(input, input.len());
            assert_eq!(
                result.map(|_| ()),
                Err(*expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn oversized_extension_and_trailer() {
        let mut input = b"1;".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_EXTENSION_BYTES + 1));
        input.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&input, 64).map(|_| ()),
            Err(ChunkedError::ExtensionTooLong)
        );

        let mut input = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILER_BYTES / 10 + 1) {
            input.extend_from_slice(b"X-A: 1234\r\n");
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_all(&input, 100).map(|_| ()),
            Err(ChunkedError::TrailerTooLong)
        );
    }

    #[test]
    fn whitespace_after_the_size_only_before_an_extension() {
        for input in [
            &b"5 ;a=b\r\nhello\r\n0\r\n\r\n"[..],
            b"5\t ;a\r\nhello\r\n0 ;last\r\n\r\n",
        ] {
            for step in 1..=input.len() {
                assert_eq!(
                    decode_all(input, step),
                    Ok(Some(b"hello".to_vec())),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
        for input in [&b"5 \r\nhello\r\n"[..], b"5 x\r\n", b"5 5\r\n", b"5\t\r\n"] {
            assert_eq!(
                decode_all(input, input.len()),
                Err(ChunkedError::InvalidSize),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut input = b"5".to_vec();
        input.extend(std::iter::repeat_n(b' ', MAX_EXTENSION_BYTES + 1));
        input.extend_from_slice(b";\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&input, 64).map(|_| ()),
            Err(ChunkedError::ExtensionTooLong)
        );
    }

    #[test]
    fn trailer_lines_must_be_field_lines() {
        let input = b"1\r\nx\r\n0\r\nA: b\r\nC:\r\nD-e_f:\tg h\r\n\r\n";
        for step in 1..=input.len() {
            assert_eq!(
                decode_all(input, step),
                Ok(Some(b"x".to_vec())),
                "step {step}"
            );
        }
        for input in [
            &b"0\r\nno-colon\r\n\r\n"[..],
            b"0\r\nA : b\r\n\r\n",
            b"0\r\nA\t: b\r\n\r\n",
            b"0\r\nX(A): b\r\n\r\n",
            // A pipelined request where the empty line ending the trailers should have been.
            b"0\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(
                decode_all(input, input.len()),
                Err(ChunkedError::InvalidTrailer),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn chunk_headers_are_lowercase_hex() {
        for (len, expected) in [
            (0usize, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (255, "ff\r\n"),
        ] {
            let mut out = Vec::new();
            write_chunk_header(&mut out, len);
            assert_eq!(out, expected.as_bytes());
        }
    }
}
