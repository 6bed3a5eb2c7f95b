//! The control-socket wire format: one framed, versioned, checksummed config per frame, and a
//! one-line reply.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "PCFG"
//!      4     2  frame version (big endian): 2 is written, 1 and 2 are read
//!      6     2  reserved, must be 0
//!      8     4  payload length in bytes (big endian), at most MAX_PAYLOAD_BYTES
//!     12     c  checksum of the payload: version 2 a CRC-32 (IEEE, big endian, c = 4),
//!               version 1 a SHA-256 (c = 32)
//!   12+c     n  payload: the CompiledConfig as JSON
//! ```
//!
//! The checksum guards against corruption on a local socket whose permissions already decide
//! who may write to it, so it need not be cryptographic: a CRC-32 of a 3 MB config costs well
//! under a millisecond where SHA-256 cost 17 ms on each side of the socket (no SHA extensions
//! on the CPU). Version 1 frames stay readable so a newer proxy accepts an older agent's.
//!
//! The reply is one line: `ACK <generation>\n` once every core serves the config, or
//! `NACK <reason>\n` when it was refused and the previous config keeps serving.

use sha2::{Digest, Sha256};

use crate::config::CompiledConfig;

pub const MAGIC: [u8; 4] = *b"PCFG";
/// The version `encode` writes.
pub const FRAME_VERSION: u16 = 2;
/// The first version, checksummed with SHA-256; still read.
pub const SHA256_FRAME_VERSION: u16 = 1;
/// Magic, version, reserved bytes and payload length: what a reader needs before it knows
/// how long the rest of the frame is.
pub const PREFIX_BYTES: usize = 12;
/// Everything `encode` writes before the payload.
pub const HEADER_BYTES: usize = PREFIX_BYTES + CRC32_BYTES;
const CRC32_BYTES: usize = 4;
const SHA256_BYTES: usize = 32;
/// Large enough for tens of thousands of routes with their certificates.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a Portcullis config frame")]
    BadMagic([u8; 4]),
    #[error(
        "frame version {0} is not supported (this build reads {SHA256_FRAME_VERSION} and {FRAME_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(u32),
    #[error("payload checksum mismatch: the frame was corrupted")]
    ChecksumMismatch,
    #[error("payload is not a valid config: {0}")]
    Decode(String),
}

/// The fixed-size start of a frame, read before its checksum and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub payload_len: u32,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; PREFIX_BYTES]) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != FRAME_VERSION && version != SHA256_FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        let payload_len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(FrameError::TooLarge(payload_len));
        }
        Ok(Self {
            version,
            payload_len,
        })
    }

    fn checksum_len(&self) -> usize {
        if self.version == SHA256_FRAME_VERSION {
            SHA256_BYTES
        } else {
            CRC32_BYTES
        }
    }

    /// Bytes that follow the prefix: the checksum and the payload.
    pub fn body_len(&self) -> usize {
        self.checksum_len() + self.payload_len as usize
    }

    /// Verifies the checksum at the start of `body` and decodes the payload after it.
    /// Semantic validation is separate (`validate::validate`).
    pub fn decode_body(&self, body: &[u8]) -> Result<CompiledConfig, FrameError> {
        if body.len() != self.body_len() {
            return Err(FrameError::Decode(format!(
                "frame has {} bytes after its header prefix, the header announced {}",
                body.len(),
                self.body_len()
            )));
        }
        let (checksum, payload) = body.split_at(self.checksum_len());
        let intact = if self.version == SHA256_FRAME_VERSION {
            Sha256::digest(payload).as_slice() == checksum
        } else {
            crc32fast::hash(payload).to_be_bytes() == checksum
        };
        if !intact {
            return Err(FrameError::ChecksumMismatch);
        }
        decode_json(payload)
    }
}

/// Decodes a whole frame held in memory: its header, checksum and payload.
pub fn decode(frame: &[u8]) -> Result<CompiledConfig, FrameError> {
    let Some((prefix, body)) = frame.split_first_chunk::<PREFIX_BYTES>() else {
        return Err(FrameError::Decode(format!(
            "frame of {} bytes is shorter than its {PREFIX_BYTES}-byte header prefix",
            frame.len()
        )));
    };
    FrameHeader::parse(prefix)?.decode_body(body)
}

/// Decodes a config from JSON (the frame payload, or a `--config` file).
///
/// The payload is checked as UTF-8 once, as a whole: `serde_json::from_slice` checks every
/// string it reads on its own, which cost about 3 ms of a 10 000-route config's 19 ms decode.
pub fn decode_json(payload: &[u8]) -> Result<CompiledConfig, FrameError> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| FrameError::Decode(format!("the config is not UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Encodes `config` as one frame. The JSON is written straight after room left for the
/// header, so a large config is not copied once more into its frame.
pub fn encode(config: &CompiledConfig) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; HEADER_BYTES];
    serde_json::to_writer(&mut frame, config).map_err(|e| FrameError::Decode(e.to_string()))?;
    let (header, payload) = frame.split_at_mut(HEADER_BYTES);
    write_header(header, payload)?;
    Ok(frame)
}

/// Frames an already serialized payload (used by tests that send deliberately bad payloads).
pub fn encode_payload(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; HEADER_BYTES];
    write_header(&mut frame, payload)?;
    frame.extend_from_slice(payload);
    Ok(frame)
}

fn write_header(header: &mut [u8], payload: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&FRAME_VERSION.to_be_bytes());
    header[6..8].copy_from_slice(&[0, 0]);
    header[8..12].copy_from_slice(&len.to_be_bytes());
    header[12..HEADER_BYTES].copy_from_slice(&crc32fast::hash(payload).to_be_bytes());
    Ok(())
}

/// The proxy's answer to one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ack { generation: u64 },
    Nack { reason: String },
}

impl Reply {
    /// The reply line, newline included. Newlines inside a reason are flattened so the reply
    /// stays one line.
    pub fn to_line(&self) -> String {
        match self {
            Reply::Ack { generation } => format!("ACK {generation}\n"),
            Reply::Nack { reason } => {
                let flat: String = reason
                    .chars()
                    .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
                    .collect();
                format!("NACK {flat}\n")
            }
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(generation) = line.strip_prefix("ACK ") {
            return generation
                .parse()
                .ok()
                .map(|generation| Reply::Ack { generation });
        }
        line.strip_prefix("NACK ").map(|reason| Reply::Nack {
            reason: reason.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(frame: &[u8]) -> [u8; PREFIX_BYTES] {
        frame[..PREFIX_BYTES].try_into().unwrap()
    }

    #[test]
    fn round_trip() {
        let config = CompiledConfig::empty(7);
        let frame = encode(&config).unwrap();
        assert_eq!(&frame[4..6], &FRAME_VERSION.to_be_bytes());
        assert_eq!(decode(&frame).unwrap(), config);
        assert!(matches!(
            decode(&frame[..PREFIX_BYTES - 1]),
            Err(FrameError::Decode(_))
        ));
    }

    /// A frame as the first version wrote it: the same prefix, then a SHA-256.
    fn version_1_frame(payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&MAGIC);
        frame.extend_from_slice(&SHA256_FRAME_VERSION.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&Sha256::digest(payload));
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn version_1_frames_are_still_read() {
        let config = CompiledConfig::empty(3);
        let mut frame = version_1_frame(&serde_json::to_vec(&config).unwrap());
        assert_eq!(decode(&frame).unwrap(), config);
        let last = frame.len() - 2;
        frame[last] ^= 0x01;
        assert_eq!(decode(&frame), Err(FrameError::ChecksumMismatch));
    }

    #[test]
    fn corrupted_payload_is_detected() {
        let frame = encode(&CompiledConfig::empty(1)).unwrap();
        // Every single-bit flip in the payload or the checksum is caught.
        for byte in PREFIX_BYTES..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(
                    decode(&bad),
                    Err(FrameError::ChecksumMismatch),
                    "byte {byte}"
                );
            }
        }
    }

    #[test]
    fn a_body_of_the_wrong_length_is_refused() {
        let frame = encode(&CompiledConfig::empty(1)).unwrap();
        let header = FrameHeader::parse(&header_of(&frame)).unwrap();
        let short = &frame[PREFIX_BYTES..frame.len() - 1];
        assert!(matches!(
            header.decode_body(short),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn header_errors() {
        let frame = encode(&CompiledConfig::empty(1)).unwrap();
        let mut bad = header_of(&frame);
        bad[0] = b'X';
        assert!(matches!(
            FrameHeader::parse(&bad),
            Err(FrameError::BadMagic(_))
        ));
        let mut bad = header_of(&frame);
        bad[5] = 9;
        assert_eq!(
            FrameHeader::parse(&bad),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut bad = header_of(&frame);
        bad[7] = 1;
        assert_eq!(FrameHeader::parse(&bad), Err(FrameError::ReservedNotZero));
        let mut bad = header_of(&frame);
        bad[8..12].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_be_bytes());
        assert_eq!(
            FrameHeader::parse(&bad),
            Err(FrameError::TooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let payload = br#"{"schema_version":1,"generation":1,"surprise":true}"#;
        assert!(matches!(decode_json(payload), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_payload_that_is_not_utf8_is_refused_with_its_position() {
        let mut payload = serde_json::to_vec(&CompiledConfig::empty(1)).unwrap();
        let inside_a_key = payload.iter().position(|&b| b == b'"').unwrap() + 1;
        payload[inside_a_key] = 0xff;
        let Err(FrameError::Decode(reason)) = decode_json(&payload) else {
            panic!("a payload with a 0xff byte decoded");
        };
        assert!(reason.contains("not UTF-8"), "{reason}");
        assert!(
            reason.contains(&format!("index {inside_a_key}")),
            "{reason}"
        );
    }

    #[test]
    fn reply_lines() {
        assert_eq!(Reply::Ack { generation: 42 }.to_line(), "ACK 42\n");
        let nack = Reply::Nack {
            reason: "bad\nthing".into(),
        };
        assert_eq!(nack.to_line(), "NACK bad thing\n");
        assert_eq!(
            Reply::parse("ACK 42\n"),
            Some(Reply::Ack { generation: 42 })
        );
        assert_eq!(
            Reply::parse("NACK bad thing\n"),
            Some(Reply::Nack {
                reason: "bad thing".into()
            })
        );
        assert_eq!(Reply::parse("HELLO"), None);
    }
}
