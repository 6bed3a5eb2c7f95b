//! Reading a TLS ClientHello off a connection without answering it: its SNI (TLS ports route
//! by it) and whether the client prefers ChaCha20 to AES-GCM (which cipher suite order to
//! answer it with, see `config.rs`).
//!
//! Only the framing, the cipher suite list and the server_name extension are read: the
//! records, the one handshake message they carry, and its extension list. Nothing else is
//! judged, so a passthrough listener forwards any hello its backend may accept (TLS 1.0
//! clients without signature_algorithms included); where TLS terminates, rustls then checks
//! the whole hello. Every byte read is kept so the stream can be replayed: to the backend when
//! TLS passes through, or to our own rustls session when it terminates here.

use futures_lite::{AsyncRead, AsyncReadExt};

use crate::route::host::{MAX_HOST_LEN, normalize};

/// Real hellos, post-quantum key shares included, stay under 2 KiB; beyond this bound a
/// connection is not one we serve, and each waiting connection holds at most this much.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// What the proxy takes from a ClientHello.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HelloFacts {
    /// The normalized server name; None without SNI.
    pub server_name: Option<String>,
    /// The client lists a ChaCha20-Poly1305 suite before any AES-GCM one: a client without
    /// AES hardware says so this way (as BoringSSL and Go servers read it).
    pub prefers_chacha20: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("connection closed before a complete ClientHello")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(String),
    #[error("not a TLS ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello longer than {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLong,
    #[error("server name {0:?} is not a host name")]
    BadServerName(String),
}

/// Reads until a complete ClientHello has arrived. Every byte read is appended to `bytes`,
/// also when the hello turns out not to be one (rustls can then answer it with its alert).
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    bytes: &mut Vec<u8>,
) -> Result<HelloFacts, HelloError> {
    let start = bytes.len();
    let mut reassembly = Reassembly::default();
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| HelloError::Io(e.to_string()))?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(facts) = reassembly.advance(&bytes[start..])? {
            return Ok(facts);
        }
        if bytes.len() - start >= MAX_CLIENT_HELLO_BYTES {
            return Err(HelloError::TooLong);
        }
    }
}

const HANDSHAKE_RECORD: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME_EXTENSION: u16 = 0;
const HOST_NAME: u8 = 0;
/// A record's payload is at most 2^14 bytes (RFC 8446 §5.1).
const MAX_RECORD_PAYLOAD: usize = 1 << 14;

/// The facts of the ClientHello at the start of `bytes`; `Ok(None)` while it is incomplete.
pub fn parse(bytes: &[u8]) -> Result<Option<HelloFacts>, HelloError> {
    Reassembly::default().advance(bytes)
}

/// The ClientHello's handshake message, put together from the records at the start of a
/// stream as they arrive: each record is looked at once however many reads bring it (a hello
/// sent in thousands of one-byte records must not cost a pass over all of them per read).
#[derive(Debug, Default)]
struct Reassembly {
    /// Bytes of the stream whose records are in `message`.
    consumed: usize,
    message: Vec<u8>,
}

impl Reassembly {
    /// Takes in the complete records of `stream` (every byte from its start) not yet taken;
    /// the hello's facts once it is complete, `Ok(None)` until then.
    fn advance(&mut self, stream: &[u8]) -> Result<Option<HelloFacts>, HelloError> {
        loop {
            if let Some(needed) = handshake_length(&self.message)?
                && self.message.len() >= needed
            {
                return parse_client_hello(&self.message[4..needed]).map(Some);
            }
            let Some(rest) = stream.get(self.consumed..) else {
                return Ok(None);
            };
            let Some(header) = rest.get(..5) else {
                return Ok(None);
            };
            if header[0] != HANDSHAKE_RECORD {
                return Err(HelloError::Malformed(
                    "the first record is not a handshake record",
                ));
            }
            if header[1] != 3 {
                return Err(HelloError::Malformed("unknown record version"));
            }
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if length == 0 || length > MAX_RECORD_PAYLOAD {
                return Err(HelloError::Malformed("record length out of range"));
            }
            let Some(payload) = rest.get(5..5 + length) else {
                return Ok(None);
            };
            // The usual hello fits in its first record: read it in place.
            if self.message.is_empty()
                && let Some(needed) = handshake_length(payload)?
                && payload.len() >= needed
            {
                return parse_client_hello(&payload[4..needed]).map(Some);
            }
            self.message.extend_from_slice(payload);
            self.consumed += 5 + length;
        }
    }
}

/// The whole handshake message's length (header included) once its header is there.
fn handshake_length(message: &[u8]) -> Result<Option<usize>, HelloError> {
    let Some(header) = message.get(..4) else {
        return Ok(None);
    };
    if header[0] != CLIENT_HELLO {
        return Err(HelloError::Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    let length =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    if length + 4 > MAX_CLIENT_HELLO_BYTES {
        return Err(HelloError::TooLong);
    }
    Ok(Some(length + 4))
}

/// A cursor over a length-prefixed structure; every read checks the bounds.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.data.len() < n {
            return Err(HelloError::Malformed(
                "a length runs past the end of the hello",
            ));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

fn parse_client_hello(body: &[u8]) -> Result<HelloFacts, HelloError> {
    let mut hello = Reader { data: body };
    let _legacy_version = hello.u16()?;
    let _random = hello.take(32)?;
    if hello.vec8()?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let prefers_chacha20 = prefers_chacha20(hello.vec16()?);
    let _compression_methods = hello.vec8()?;
    if hello.data.is_empty() {
        // A hello without extensions (SSL 3.0 style).
        return Ok(HelloFacts {
            server_name: None,
            prefers_chacha20,
        });
    }
    let mut extensions = Reader {
        data: hello.vec16()?,
    };
    if !hello.data.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let mut found = None;
    while !extensions.data.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != SERVER_NAME_EXTENSION {
            continue;
        }
        if found.is_some() {
            return Err(HelloError::Malformed("two server_name extensions"));
        }
        found = Some(host_name(data)?);
    }
    Ok(HelloFacts {
        server_name: found.flatten(),
        prefers_chacha20,
    })
}

/// Whether the first AEAD suite the client lists (TLS 1.3, or TLS 1.2 with ECDHE) is a
/// ChaCha20-Poly1305 one rather than AES-GCM. A list of odd length is read up to its last
/// whole pair (rustls refuses such a hello anyway).
fn prefers_chacha20(cipher_suites: &[u8]) -> bool {
    for suite in cipher_suites.chunks_exact(2) {
        match u16::from_be_bytes([suite[0], suite[1]]) {
            // TLS_CHACHA20_POLY1305_SHA256; TLS_ECDHE_{RSA,ECDSA}_WITH_CHACHA20_POLY1305_SHA256.
            0x1303 | 0xcca8 | 0xcca9 => return true,
            // TLS_AES_{128,256}_GCM_*; TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}_GCM_*.
            0x1301 | 0x1302 | 0xc02b | 0xc02c | 0xc02f | 0xc030 => return false,
            _ => {}
        }
    }
    false
}

/// The host_name entry of a server_name extension, normalized.
fn host_name(extension: &[u8]) -> Result<Option<String>, HelloError> {
    let mut names = Reader {
        data: Reader { data: extension }.vec16()?,
    };
    while !names.data.is_empty() {
        let kind = names.u8()?;
        let name = names.vec16()?;
        if kind != HOST_NAME {
            continue;
        }
        let text = std::str::from_utf8(name)
            .ok()
            // A host name: no spaces or controls, and no port (SNI carries none).
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
            .ok_or_else(|| HelloError::BadServerName(String::from_utf8_lossy(name).into()))?;
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        // "." normalizes to nothing: not a name either.
        let normalized = normalize(text.as_bytes(), &mut buf)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| HelloError::BadServerName(text.into()))?;
        return Ok(Some(normalized.to_string()));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_lite::future::block_on;
    use rustls::pki_types::ServerName;

    use super::*;

    /// The server name of the ClientHello at the start of `bytes`: `Ok(None)` while the hello
    /// is incomplete, `Ok(Some(None))` for a complete hello without SNI.
    fn server_name(bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
        Ok(parse(bytes)?.map(|facts| facts.server_name))
    }

    /// The first flight of a real rustls client to `server_name`.
    fn hello_from_client(server_name: &str) -> Vec<u8> {
        hello_from_client_with(server_name, rustls::crypto::aws_lc_rs::default_provider())
    }

    fn hello_from_client_with(
        server_name: &str,
        provider: rustls::crypto::CryptoProvider,
    ) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        out
    }

    /// A hand-built hello: `extensions` as (type, data), in records of at most `record` bytes.
    fn hello_with(extensions: &[(u16, Vec<u8>)], record: usize) -> Vec<u8> {
        hello_offering(&[0x002f], extensions, record)
    }

    /// [`hello_with`], offering `suites`.
    fn hello_offering(suites: &[u16], extensions: &[(u16, Vec<u8>)], record: usize) -> Vec<u8> {
        let mut body = vec![3, 1];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // no session id
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for suite in suites {
            body.extend_from_slice(&suite.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]); // null compression
        let mut list = Vec::new();
        for (kind, data) in extensions {
            list.extend_from_slice(&kind.to_be_bytes());
            list.extend_from_slice(&(data.len() as u16).to_be_bytes());
            list.extend_from_slice(data);
        }
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut out = Vec::new();
        for piece in message.chunks(record) {
            out.extend_from_slice(&[HANDSHAKE_RECORD, 3, 1]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    fn sni(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![HOST_NAME];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        (SERVER_NAME_EXTENSION, data)
    }

    /// Hands out `data` a few bytes at a time, as a slow network would.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn finds_the_server_name_and_keeps_every_byte() {
        let hello = hello_from_client("DB.Example.com");
        for step in [1, 7, 4096] {
            let mut with_more = hello.clone();
            with_more.extend_from_slice(b"early");
            let mut stream = Trickle {
                data: &with_more,
                step,
            };
            let mut bytes = Vec::new();
            let read = block_on(read_client_hello(&mut stream, &mut bytes)).unwrap();
            assert_eq!(read.server_name.as_deref(), Some("db.example.com"));
            assert!(bytes.starts_with(&hello), "step {step}");
            // Bytes read past the hello are kept for the replay, too.
            assert_eq!(bytes.len() + stream.data.len(), with_more.len());
        }
    }

    #[test]
    fn a_hello_in_one_byte_records_read_one_record_at_a_time() {
        let split = hello_with(&[(0x1234, vec![9; 300]), sni(b"a.example.com")], 1);
        for step in [6, 7, 4096] {
            let mut with_more = split.clone();
            with_more.extend_from_slice(b"early");
            let mut stream = Trickle {
                data: &with_more,
                step,
            };
            let mut bytes = b"kept".to_vec();
            let read = block_on(read_client_hello(&mut stream, &mut bytes)).unwrap();
            assert_eq!(
                read.server_name.as_deref(),
                Some("a.example.com"),
                "step {step}"
            );
            assert!(bytes[4..].starts_with(&split), "step {step}");
            assert_eq!(bytes.len() - 4 + stream.data.len(), with_more.len());
        }
    }

    #[test]
    fn a_hello_without_sni_has_no_server_name() {
        // rustls sends no SNI to an IP address.
        let hello = hello_from_client("192.0.2.7");
        assert_eq!(server_name(&hello), Ok(Some(None)));
        assert_eq!(server_name(&hello_with(&[], 1000)), Ok(Some(None)));
    }

    #[test]
    fn legacy_hellos_and_hellos_split_over_records_are_read() {
        // A TLS 1.0 style hello: no signature_algorithms, SNI only.
        let legacy = hello_with(&[sni(b"legacy.example.com")], 1000);
        assert_eq!(
            server_name(&legacy),
            Ok(Some(Some("legacy.example.com".into())))
        );
        // The same message in 10-byte records.
        let split = hello_with(&[(0x1234, vec![9; 40]), sni(b"a.example.com")], 10);
        assert_eq!(server_name(&split), Ok(Some(Some("a.example.com".into()))));
        for end in 0..split.len() {
            assert_eq!(
                server_name(&split[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_client_hello() {
        let not_tls = server_name(b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            matches!(not_tls, Err(HelloError::Malformed(_))),
            "{not_tls:?}"
        );
        let hello = hello_from_client("a.example");
        let mut bytes = Vec::new();
        let error = block_on(read_client_hello(
            &mut &hello[..hello.len() - 1],
            &mut bytes,
        ))
        .unwrap_err();
        assert_eq!(error, HelloError::Closed);
        assert_eq!(bytes, hello[..hello.len() - 1], "what was read is kept");
        // A handshake message announcing 16 MiB.
        let endless = [HANDSHAKE_RECORD, 3, 1, 0, 4, CLIENT_HELLO, 0xff, 0xff, 0xff];
        assert_eq!(server_name(&endless), Err(HelloError::TooLong));
        // Records that never complete a message stop at the size bound.
        let mut records = Vec::new();
        records.extend_from_slice(&[HANDSHAKE_RECORD, 3, 1, 0, 4, CLIENT_HELLO, 0, 0x3f, 0xff]);
        while records.len() < MAX_CLIENT_HELLO_BYTES + 100 {
            records.extend_from_slice(&[HANDSHAKE_RECORD, 3, 1, 0, 1, 0]);
        }
        let error = block_on(read_client_hello(&mut &records[..], &mut Vec::new())).unwrap_err();
        assert_eq!(error, HelloError::TooLong);
        // Lengths that run past the message, a duplicate SNI, names that are not host names.
        let mut truncated = hello_with(&[sni(b"a.example.com")], 1000);
        truncated[9 + 38 + 1] = 0xff; // cipher suites length
        assert!(matches!(
            server_name(&truncated),
            Err(HelloError::Malformed(_))
        ));
        let twice = hello_with(&[sni(b"a.example.com"), sni(b"b.example.com")], 1000);
        assert!(matches!(server_name(&twice), Err(HelloError::Malformed(_))));
        for bad in [&b"a b"[..], b"", b".", b"a.com:443", b"\xff"] {
            let error = server_name(&hello_with(&[sni(bad)], 1000));
            assert!(
                matches!(error, Err(HelloError::BadServerName(_))),
                "{bad:?}: {error:?}"
            );
        }
    }

    #[test]
    fn a_client_listing_chacha20_before_aes_gcm_prefers_it() {
        let rustls_default = parse(&hello_from_client("a.example")).unwrap().unwrap();
        assert!(
            !rustls_default.prefers_chacha20,
            "rustls lists AES-GCM first"
        );

        let mut chacha_first = rustls::crypto::aws_lc_rs::default_provider();
        chacha_first
            .cipher_suites
            .sort_by_key(|s| !format!("{:?}", s.suite()).contains("CHACHA20"));
        let hello = hello_from_client_with("a.example", chacha_first);
        assert!(parse(&hello).unwrap().unwrap().prefers_chacha20);

        let cases: [(&[u16], bool); 6] = [
            // TLS_EMPTY_RENEGOTIATION_INFO_SCSV, then ECDHE-ECDSA-CHACHA20 before AES.
            (&[0x00ff, 0xcca9, 0xc02b], true),
            (&[0x1303, 0x1301], true),
            (&[0x1302, 0x1303], false),
            (&[0xc030, 0xcca8], false),
            // Neither kind of AEAD (AES-CBC only): nothing to prefer.
            (&[0x002f, 0x0035], false),
            (&[], false),
        ];
        for (suites, expected) in cases {
            let hello = hello_offering(suites, &[sni(b"a.example")], 1000);
            let facts = parse(&hello).unwrap().unwrap();
            assert_eq!(facts.prefers_chacha20, expected, "{suites:04x?}");
            assert_eq!(facts.server_name.as_deref(), Some("a.example"));
        }
    }
}
