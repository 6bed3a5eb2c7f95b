//! gzip for the Gateway's last-good Secret. The API server refuses objects over about 1.5 MiB
//! and Secrets over 1 MiB, and a compiled config of 5 000 routes is already 850 KiB of JSON;
//! JSON that repeats the same keys and hostnames compresses about tenfold, which moves the
//! limit from thousands of routes to tens of thousands.

use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// The first two bytes of every gzip member (RFC 1952).
const MAGIC: [u8; 2] = [0x1f, 0x8b];

pub fn compress(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 8), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Decompresses at most `limit` bytes: anything larger is refused rather than allocated, since
/// a few kilobytes of gzip can expand to gigabytes.
pub fn decompress(bytes: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decompresses to more than {limit} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shrinks_repetitive_json() {
        let json: Vec<u8> = (0..2000)
            .flat_map(|i| {
                format!(r#"{{"name":"ns/route-{i}","hostnames":["app.example.com"]}},"#)
                    .into_bytes()
            })
            .collect();
        let packed = compress(&json).unwrap();
        assert!(is_gzip(&packed));
        assert!(
            packed.len() * 8 < json.len(),
            "{} of {}",
            packed.len(),
            json.len()
        );
        assert_eq!(decompress(&packed, json.len() as u64).unwrap(), json);
    }

    #[test]
    fn refuses_output_beyond_the_limit() {
        let packed = compress(&vec![b'a'; 10_000]).unwrap();
        assert!(packed.len() < 200);
        let error = decompress(&packed, 9_999).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(decompress(&packed, 10_000).unwrap().len(), 10_000);
    }

    #[test]
    fn plain_json_is_not_mistaken_for_gzip() {
        assert!(!is_gzip(b"{\"generation\":1}"));
        assert!(decompress(b"{\"generation\":1}", 100).is_err());
    }
}
