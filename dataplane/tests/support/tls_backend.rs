//! A test upstream that terminates TLS with a leaf certificate from the test CA and then
//! answers like [`super::Backend`] (same paths, same `x-backend` / `x-connection` headers). It
//! records the SNI and ALPN of every completed handshake and counts connections and
//! handshakes, so tests see what the proxy sent and whether it reused a connection.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};

use super::backend::{Recorded, serve_stream};
use super::certs::Leaf;

/// What one completed handshake looked like from the server.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub server_name: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
    /// The leaf certificate the client presented (DER), if it sent one.
    pub client_certificate: Option<Vec<u8>>,
}

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Recorded>>,
    handshakes: Mutex<Vec<Handshake>>,
    connections: AtomicU64,
    failed_handshakes: AtomicU64,
}

/// A server config presenting `leaf` (its chain is the leaf alone: the test CA signs leaves
/// directly) and offering http/1.1.
pub fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Like [`server_config`], but every client must present a certificate from `client_ca_der`.
pub fn server_config_requiring_client_certificates(
    leaf: &Leaf,
    client_ca_der: &CertificateDer<'static>,
) -> Arc<ServerConfig> {
    let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub struct TlsBackend {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Seen>,
}

impl TlsBackend {
    /// Serves TLS with `leaf`.
    pub fn start(name: &str, leaf: &Leaf) -> TlsBackend {
        Self::start_with(name, server_config(leaf))
    }

    /// Serves TLS with `config`.
    pub fn start_with(name: &str, config: Arc<ServerConfig>) -> TlsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS backend");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let backend = TlsBackend {
            name: name.to_string(),
            addr,
            seen: seen.clone(),
        };
        let name = name.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let id = seen.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (seen, name, config) = (seen.clone(), name.clone(), config.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    // A client that never finishes its handshake must not hold the thread.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut session = ServerConnection::new(config).unwrap();
                    while session.is_handshaking() {
                        if session.complete_io(&mut stream).is_err() {
                            seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    let _ = stream.set_read_timeout(None);
                    seen.handshakes.lock().unwrap().push(Handshake {
                        server_name: session.server_name().map(str::to_string),
                        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                        resumed: session.handshake_kind() == Some(HandshakeKind::Resumed),
                        client_certificate: session
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| leaf.to_vec()),
                    });
                    let tls = StreamOwned::new(session, stream);
                    let _ = serve_stream(tls, &name, id, &seen.requests);
                });
            }
        });
        backend
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.requests.lock().unwrap().len()
    }

    /// TCP connections accepted, whether or not their handshake completed.
    pub fn connection_count(&self) -> u64 {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Handshakes completed, in order.
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.seen.handshakes.lock().unwrap().clone()
    }

    /// Connections whose handshake failed (the client refused the certificate, say).
    pub fn failed_handshakes(&self) -> u64 {
        self.seen.failed_handshakes.load(Ordering::SeqCst)
    }
}
