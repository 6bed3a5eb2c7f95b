//! A deliberately simple HTTP/1.1 client over a raw socket (plain or TLS), so tests control
//! every byte sent and see every byte received.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Client {
    stream: Box<dyn Stream>,
    /// The TCP socket under `stream`, for its timeouts.
    socket: TcpStream,
    buf: Vec<u8>,
    /// Protocol negotiated by ALPN (TLS only).
    pub alpn: Option<Vec<u8>>,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
    /// The cipher suite the server chose (TLS only).
    pub cipher_suite: Option<rustls::CipherSuite>,
    /// The leaf certificate the server presented (TLS only).
    pub peer_certificate: Option<CertificateDer<'static>>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// Whether the response announces that the connection closes.
    pub fn closes(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n == "connection" && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend's JSON echo.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_text()))
    }

    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            socket: stream.try_clone().expect("clone the client socket"),
            stream: Box::new(stream),
            buf: Vec::new(),
            alpn: None,
            resumed: false,
            cipher_suite: None,
            peer_certificate: None,
        }
    }

    /// Connects with TLS, trusting `ca`, sending `server_name` as SNI (None: no SNI, which
    /// rustls does for IP addresses).
    pub fn connect_tls(
        port: u16,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(server_name.to_string()).map_err(std::io::Error::other)?;
        let mut connection =
            rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = stream;
        while connection.is_handshaking() {
            connection.complete_io(&mut stream)?;
        }
        let alpn = connection.alpn_protocol().map(|p| p.to_vec());
        let resumed = connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let cipher_suite = connection.negotiated_cipher_suite().map(|s| s.suite());
        let peer_certificate = connection
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        Ok(Client {
            socket: stream.try_clone()?,
            stream: Box::new(rustls::StreamOwned::new(connection, stream)),
            buf: Vec::new(),
            alpn,
            resumed,
            cipher_suite,
            peer_certificate,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends a GET for `path` with `Host: host` and reads the response.
    pub fn get(&mut self, host: &str, path: &str) -> Response {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
    }

    pub fn request(&mut self, raw: &str) -> Response {
        self.send(raw.as_bytes()).expect("send request");
        self.read_response(raw.starts_with("HEAD "))
            .unwrap_or_else(|e| panic!("reading the response to {raw:?}: {e}"))
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = portcullis_testkit::read_uninterrupted(&mut self.stream, &mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response. Interim (1xx) responses other than 101 are skipped.
    pub fn read_response(&mut self, head_request: bool) -> std::io::Result<Response> {
        loop {
            let response = self.read_one(head_request)?;
            if response.status >= 200 || response.status == 101 {
                return Ok(response);
            }
        }
    }

    /// Reads exactly one response, interim ones included.
    pub fn read_one(&mut self, head_request: bool) -> std::io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if head_request || status < 200 || status == 204 || status == 304 {
            // no body
        } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if self.fill()? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                self.buf.drain(..line_end + 2);
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| {
                            std::io::Error::other(format!("bad chunk size {size_text:?}"))
                        })?;
                if size == 0 {
                    // Trailers up to an empty line.
                    loop {
                        let end = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            if self.fill()? == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                        };
                        self.buf.drain(..end + 2);
                        if end == 0 {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < size + 2 {
                    if self.fill()? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                body.extend_from_slice(&self.buf[..size]);
                if &self.buf[size..size + 2] != b"\r\n" {
                    return Err(std::io::Error::other("chunk not followed by CRLF"));
                }
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().map_err(std::io::Error::other)?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            body = self.buf.drain(..len).collect();
        } else {
            // Delimited by close.
            while self.fill()? > 0 {}
            body = std::mem::take(&mut self.buf);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Whether the server closed the connection (reads EOF within `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let saved = self.socket.read_timeout().ok().flatten();
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let _ = self.socket.set_read_timeout(Some(left));
            match self.fill() {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break false;
                }
                Err(_) => break true,
            }
        };
        let _ = self.socket.set_read_timeout(saved);
        closed
    }

    /// Whether the server sent something (or closed) that was not read yet; never blocks.
    pub fn has_data(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let _ = self.socket.set_nonblocking(true);
        let mut byte = [0u8; 1];
        let ready = !matches!(self.socket.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        let _ = self.socket.set_nonblocking(false);
        ready
    }

    /// Bytes received but not yet part of a parsed response.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Reads whatever arrives until EOF or `wait` passes.
    pub fn read_to_end(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.fill() {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        std::mem::take(&mut self.buf)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A loopback connection to `port` whose receive buffer is asked to be `bytes` (the kernel
/// doubles it and keeps a floor): a client that stops reading stops acknowledging soon.
pub fn connect_with_receive_buffer(port: u16, bytes: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("a TCP socket");
    socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF set");
    socket
        .connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connected to the proxy");
    socket.into()
}

/// A rustls client config trusting `roots`, offering `alpn`.
pub fn tls_client_config(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
