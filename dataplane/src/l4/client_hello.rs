//! Reading a TLS ClientHello off a connection without answering it, to learn its SNI.
//!
//! rustls' `Acceptor` parses the hello (it knows every record and extension rule), while
//! every byte read is kept so the whole stream can be replayed: to the backend when TLS
//! passes through, or to our own rustls session when it terminates here.

use futures_lite::{AsyncRead, AsyncReadExt};
use rustls::server::Acceptor;

use crate::route::host::{MAX_HOST_LEN, normalize};

/// A ClientHello spans at most a few records; anything longer is not one we serve. Generous
/// for post-quantum key shares (~1.2 KiB) and long extension lists.
pub const MAX_CLIENT_HELLO_BYTES: usize = 64 * 1024;

/// Everything read up to and including the ClientHello, and its normalized server name.
#[derive(Debug)]
pub struct ClientHello {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("connection closed before a complete ClientHello")]
    Closed,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a TLS ClientHello: {0}")]
    Malformed(rustls::Error),
    #[error("ClientHello longer than {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLong,
    #[error("server name {0:?} is not a host name")]
    BadServerName(String),
}

/// Reads until a complete ClientHello has arrived.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ClientHello, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if bytes.len() + n > MAX_CLIENT_HELLO_BYTES {
            return Err(HelloError::TooLong);
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut unread = &chunk[..n];
        while !unread.is_empty() {
            // The acceptor buffers at most one record's worth ahead; parse between reads.
            let consumed = acceptor.read_tls(&mut unread)?;
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let server_name = match accepted.client_hello().server_name() {
                        Some(name) => {
                            let mut buf = [0u8; MAX_HOST_LEN + 1];
                            let normalized = normalize(name.as_bytes(), &mut buf)
                                .ok_or_else(|| HelloError::BadServerName(name.to_string()))?;
                            Some(normalized.to_string())
                        }
                        None => None,
                    };
                    return Ok(ClientHello { bytes, server_name });
                }
                Ok(None) if consumed == 0 => return Err(HelloError::TooLong),
                Ok(None) => {}
                Err((error, _alert)) => return Err(HelloError::Malformed(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_lite::future::block_on;
    use rustls::pki_types::ServerName;

    use super::*;

    /// The first flight of a real rustls client to `server_name`.
    fn hello_from_client(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
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
            let read = block_on(read_client_hello(&mut stream)).unwrap();
            assert_eq!(read.server_name.as_deref(), Some("db.example.com"));
            assert!(read.bytes.starts_with(&hello), "step {step}");
            // Bytes read past the hello are kept for the replay, too.
            assert_eq!(read.bytes.len() + stream.data.len(), with_more.len());
        }
    }

    #[test]
    fn a_hello_without_sni_has_no_server_name() {
        // rustls sends no SNI to an IP address.
        let hello = hello_from_client("192.0.2.7");
        let read = block_on(read_client_hello(&mut &hello[..])).unwrap();
        assert_eq!(read.server_name, None);
    }

    #[test]
    fn rejects_what_is_not_a_client_hello() {
        let error = block_on(read_client_hello(&mut &b"GET / HTTP/1.1\r\n\r\n"[..])).unwrap_err();
        assert!(matches!(error, HelloError::Malformed(_)), "{error}");
        let hello = hello_from_client("a.example");
        let error = block_on(read_client_hello(&mut &hello[..hello.len() - 1])).unwrap_err();
        assert!(matches!(error, HelloError::Closed), "{error}");
        // A record header announcing an endless handshake message.
        let mut endless = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
        endless.resize(MAX_CLIENT_HELLO_BYTES * 2, 0);
        let error = block_on(read_client_hello(&mut &endless[..])).unwrap_err();
        assert!(
            matches!(error, HelloError::TooLong | HelloError::Malformed(_)),
            "{error}"
        );
    }
}
