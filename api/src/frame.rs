//! The control-socket wire format: one framed, versioned, checksummed config per frame, and a
//! one-line reply.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "PCFG"
//!      4     2  frame version (big endian), currently 1
//!      6     2  reserved, must be 0
//!      8     4  payload length in bytes (big endian), at most MAX_PAYLOAD_BYTES
//!     12    32  SHA-256 of the payload
//!     44     n  payload: the CompiledConfig as JSON
//! ```
//!
//! The reply is one line: `ACK <generation>\n` once every core serves the config, or
//! `NACK <reason>\n` when it was refused and the previous config keeps serving.

use sha2::{Digest, Sha256};

use crate::config::CompiledConfig;

pub const MAGIC: [u8; 4] = *b"PCFG";
pub const FRAME_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 44;
/// Large enough for tens of thousands of routes with their certificates.
pub const MAX_PAYLOAD_BYTES: u32 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a Portcullis config frame")]
    BadMagic([u8; 4]),
    #[error("frame version {0} is not supported (this build reads {FRAME_VERSION})")]
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

/// The fixed-size part of a frame, read before the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub payload_len: u32,
    pub checksum: [u8; 32],
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<Self, FrameError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([bytes[4], bytes[5]]);
        if version != FRAME_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        let payload_len = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if payload_len > MAX_PAYLOAD_BYTES {
            return Err(FrameError::TooLarge(payload_len));
        }
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&bytes[12..44]);
        Ok(Self {
            payload_len,
            checksum,
        })
    }

    /// Verifies the checksum and decodes the payload. Semantic validation is separate
    /// (`validate::validate`).
    pub fn decode_payload(&self, payload: &[u8]) -> Result<CompiledConfig, FrameError> {
        if payload.len() != self.payload_len as usize {
            return Err(FrameError::Decode(format!(
                "payload has {} bytes, header announced {}",
                payload.len(),
                self.payload_len
            )));
        }
        let digest: [u8; 32] = Sha256::digest(payload).into();
        if digest != self.checksum {
            return Err(FrameError::ChecksumMismatch);
        }
        decode_json(payload)
    }
}

/// Decodes a config from JSON (the frame payload, or a `--config` file).
pub fn decode_json(payload: &[u8]) -> Result<CompiledConfig, FrameError> {
    serde_json::from_slice(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

/// Encodes `config` as one frame.
pub fn encode(config: &CompiledConfig) -> Result<Vec<u8>, FrameError> {
    let payload = serde_json::to_vec(config).map_err(|e| FrameError::Decode(e.to_string()))?;
    encode_payload(&payload)
}

/// Frames an already serialized payload (used by tests that send deliberately bad payloads).
pub fn encode_payload(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&Sha256::digest(payload));
    frame.extend_from_slice(payload);
    Ok(frame)
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

    fn header_of(frame: &[u8]) -> [u8; HEADER_BYTES] {
        frame[..HEADER_BYTES].try_into().unwrap()
    }

    #[test]
    fn round_trip() {
        let config = CompiledConfig::empty(7);
        let frame = encode(&config).unwrap();
        let header = FrameHeader::parse(&header_of(&frame)).unwrap();
        let decoded = header.decode_payload(&frame[HEADER_BYTES..]).unwrap();
        assert_eq!(decoded, config);
    }

    #[test]
    fn corrupted_payload_is_detected() {
        let mut frame = encode(&CompiledConfig::empty(1)).unwrap();
        let last = frame.len() - 2;
        frame[last] ^= 0x01;
        let header = FrameHeader::parse(&header_of(&frame)).unwrap();
        assert_eq!(
            header.decode_payload(&frame[HEADER_BYTES..]),
            Err(FrameError::ChecksumMismatch)
        );
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
