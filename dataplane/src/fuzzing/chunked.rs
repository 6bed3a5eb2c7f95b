//! The `chunked` target: the chunked-body decoder, however the body is split.

use super::seeds::fnv1a;
use crate::http::chunked::{self, ChunkedDecoder, ChunkedError, Decoded};

/// What decoding a whole input found.
#[derive(Debug, PartialEq, Eq)]
struct ChunkedOutcome {
    body: Vec<u8>,
    /// Ok(Some(n)): the body ended after n input bytes; Ok(None): the input ended first.
    end: Result<Option<usize>, ChunkedError>,
}

/// Feeds `input` to a decoder `step` bytes at a time, the way the proxy does: unconsumed
/// bytes stay in the buffer and the decoder is called until it needs more.
fn decode_in_steps(input: &[u8], step: usize) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    // Received bytes; `pending[from..]` is not consumed yet.
    let mut pending: Vec<u8> = Vec::new();
    let mut from = 0;
    let mut consumed_total = 0usize;
    for piece in input.chunks(step.max(1)) {
        if from == pending.len() {
            pending.clear();
            from = 0;
        }
        pending.extend_from_slice(piece);
        while from < pending.len() {
            let unconsumed = &pending[from..];
            let (consumed, decoded) = match decoder.decode(unconsumed) {
                Ok(result) => result,
                Err(e) => return ChunkedOutcome { body, end: Err(e) },
            };
            assert!(consumed <= unconsumed.len(), "consumed more than the input");
            if let Decoded::Data { start, end } = decoded {
                assert!(
                    start < end && end == consumed,
                    "data {start}..{end}, consumed {consumed}"
                );
                body.extend_from_slice(&unconsumed[start..end]);
            }
            assert!(
                consumed > 0 || decoded == Decoded::Done,
                "no progress on {} bytes",
                unconsumed.len()
            );
            from += consumed;
            consumed_total += consumed;
            match decoded {
                Decoded::Done => {
                    assert!(decoder.is_done());
                    return ChunkedOutcome {
                        body,
                        end: Ok(Some(consumed_total)),
                    };
                }
                Decoded::NeedMore => assert_eq!(from, pending.len(), "NeedMore left input"),
                Decoded::Data { .. } => {}
            }
        }
    }
    ChunkedOutcome {
        body,
        end: Ok(None),
    }
}

/// Decodes `data` whole, byte by byte and in input-dependent steps: the outcome must not
/// depend on how the body was split, decoded bytes never exceed the input, and a complete
/// body re-encoded canonically decodes to the same bytes.
pub fn chunked(data: &[u8]) {
    let whole = decode_in_steps(data, data.len());
    assert!(
        whole.body.len() <= data.len(),
        "decoded more than the input"
    );
    if let Ok(Some(end)) = whole.end {
        assert!(end <= data.len());
    }
    assert_eq!(
        decode_in_steps(data, 1),
        whole,
        "byte-by-byte decoding differs"
    );
    let step = 2 + (fnv1a(data) % 61) as usize;
    assert_eq!(
        decode_in_steps(data, step),
        whole,
        "decoding in {step}-byte steps differs"
    );

    if whole.end.is_ok_and(|end| end.is_some()) {
        let mut encoded = Vec::new();
        let piece = 1 + (fnv1a(&whole.body) % 97) as usize;
        for chunk in whole.body.chunks(piece) {
            chunked::write_chunk_header(&mut encoded, chunk.len());
            encoded.extend_from_slice(chunk);
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(chunked::LAST_CHUNK);
        let again = decode_in_steps(&encoded, encoded.len());
        assert_eq!(
            again.body, whole.body,
            "re-encoded body decodes differently"
        );
        assert_eq!(again.end, Ok(Some(encoded.len())));
    }
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_chunked_replays() {
        replay("chunked");
    }
}
