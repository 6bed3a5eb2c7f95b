//! TLS connections that report which certificate the Gateway served. The tests compare that
//! certificate with the one they put in a Secret, so the verifier accepts any chain and the
//! comparison is the check.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use portcullis_testkit::AcceptAnyServerCertificate;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

use crate::http::{Response, exchange};

fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// One TLS connection to a Gateway listener.
pub struct TlsConnection {
    stream: StreamOwned<ClientConnection, TcpStream>,
    buffer: Vec<u8>,
    /// The leaf certificate the server presented (DER).
    pub certificate: Vec<u8>,
}

impl TlsConnection {
    /// Connects to `address` (`ip:port`) with SNI `server_name` and completes the handshake.
    pub fn connect(address: &str, server_name: &str) -> std::io::Result<TlsConnection> {
        let socket_address = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{address} resolves to nothing")))?;
        let tcp = TcpStream::connect_timeout(&socket_address, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| std::io::Error::other(format!("server name {server_name}: {e}")))?;
        let connection =
            ClientConnection::new(client_config(), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        let certificate = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.to_vec())
            .ok_or_else(|| std::io::Error::other("no server certificate"))?;
        Ok(TlsConnection {
            stream,
            buffer: Vec::new(),
            certificate,
        })
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Response> {
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: portcullis-e2e\r\n\r\n");
        exchange(&mut self.stream, &mut self.buffer, request.as_bytes())
    }
}

/// A self-signed certificate for `host`: (certificate PEM, key PEM, certificate DER).
pub fn self_signed(host: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
    let certificate = params.self_signed(&key).expect("certificate");
    (
        certificate.pem(),
        key.serialize_pem(),
        certificate.der().to_vec(),
    )
}
