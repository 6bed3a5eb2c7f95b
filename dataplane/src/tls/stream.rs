//! A TLS server connection over a glommio socket, on rustls's unbuffered API: this type owns
//! the received, decrypted and sealed bytes, so a connection waiting idle between requests can
//! hold none of them. (rustls's buffered connection keeps a 4 KiB receive buffer for the
//! connection's whole life: it was most of what an idle TLS connection cost.) Sealed records
//! gather in one buffer and leave in one send.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use rustls::{Error as TlsError, ServerConfig};

use super::client_hello::{HelloError, read_client_hello};
use super::config::PortTlsConfigs;
use crate::io::Transport;

/// First allocation for received TLS bytes: a request's records usually fit.
const READ_SIZE: usize = 4 * 1024;
/// The most received bytes held unprocessed. rustls refuses handshake messages over 64 KiB
/// and records over about 18 KiB long before a peer can fill this.
const INCOMING_LIMIT: usize = 96 * 1024;
/// Sealed bytes queued before a write waits for the socket to take them.
const OUTGOING_BACKLOG: usize = 64 * 1024;
/// Plaintext sealed per write call.
const SEAL_CHUNK: usize = 64 * 1024;
/// A sealed-bytes buffer that grew past this is freed once sent rather than kept.
const OUTGOING_KEEP: usize = 16 * 1024;
/// Plaintext per TLS record, and what sealing adds to one (header, content type, AEAD tag),
/// rounded up.
const MAX_FRAGMENT: usize = 16 * 1024;
const RECORD_OVERHEAD: usize = 64;
/// First guess at a handshake record's size; rustls says when it needs more.
const HANDSHAKE_RECORD_GUESS: usize = 2 * 1024;

thread_local! {
    /// The server name of the ClientHello that rustls's certificate resolver saw last on this
    /// thread. The unbuffered server connection does not expose SNI, and the resolver is where
    /// rustls hands it over: it runs inside `process_tls_records`, which is synchronous, so a
    /// name cleared before that call and taken right after it belongs to that connection.
    static RESOLVED_SERVER_NAME: Cell<Option<Box<str>>> = const { Cell::new(None) };
}

/// Called by the certificate resolver with the ClientHello's server name.
pub(super) fn note_resolved_server_name(name: Option<&str>) {
    RESOLVED_SERVER_NAME.with(|slot| slot.set(name.map(Box::from)));
}

fn take_resolved_server_name() -> Option<Box<str>> {
    RESOLVED_SERVER_NAME.with(Cell::take)
}

/// A terminated TLS connection: reads give the client's plaintext, writes are sealed into
/// records that leave on flush.
pub struct ServerTlsStream {
    socket: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: `incoming[..incoming_len]`.
    incoming: Vec<u8>,
    incoming_len: usize,
    /// Decrypted bytes the reader has not taken yet: `plaintext[plaintext_taken..]`.
    plaintext: Vec<u8>,
    plaintext_taken: usize,
    /// Sealed records not sent yet: `outgoing[outgoing_sent..]`.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    server_name: Option<Box<str>>,
    peer_closed: bool,
    close_notify_queued: bool,
    /// The error that ended the session; every later read or write reports it.
    failed: Option<TlsError>,
    /// A write, flush or close waits for the socket to take sealed records. glommio keeps one
    /// waker per direction of a socket, so a send attempted from the read side while it waits
    /// would replace the writer's waker, and the writer would never wake (a split stream).
    writer_waiting: bool,
}

/// Where processing the received records left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// rustls waits for more bytes from the peer.
    NeedsBytes,
    /// Application data may be sent (a TLS 1.3 server may send before the client finishes
    /// its handshake).
    CanSend,
    /// Both sides have sent close_notify.
    Closed,
}

/// What a call to [`ServerTlsStream::advance`] does besides processing received records.
enum Step<'a> {
    Handshake,
    /// Decrypted bytes go here first, the rest to the plaintext buffer.
    Read(&'a mut [u8]),
    /// Seal (a prefix of) these bytes once the connection can send.
    Write(&'a [u8]),
    CloseNotify,
}

struct Advanced {
    progress: Progress,
    /// Bytes decrypted into [`Step::Read`]'s buffer.
    read: usize,
    /// Bytes of [`Step::Write`]'s data sealed.
    written: usize,
}

/// Why sealing into a buffer did not happen.
enum Sealing {
    NeedsRoom(usize),
    Failed(TlsError),
}

impl From<EncodeError> for Sealing {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::InsufficientSize(size) => Sealing::NeedsRoom(size.required_size),
            EncodeError::AlreadyEncoded => {
                Sealing::Failed(TlsError::General("handshake record encoded twice".into()))
            }
        }
    }
}

impl From<EncryptError> for Sealing {
    fn from(error: EncryptError) -> Self {
        match error {
            EncryptError::InsufficientSize(size) => Sealing::NeedsRoom(size.required_size),
            EncryptError::EncryptExhausted => Sealing::Failed(TlsError::EncryptError),
        }
    }
}

/// Appends what `seal` writes to `outgoing`, growing the room to what rustls asks for.
fn append_sealed(
    outgoing: &mut Vec<u8>,
    mut room: usize,
    mut seal: impl FnMut(&mut [u8]) -> Result<usize, Sealing>,
) -> Result<(), TlsError> {
    let start = outgoing.len();
    loop {
        outgoing.resize(start + room, 0);
        match seal(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(Sealing::NeedsRoom(required)) if required > room => room = required,
            Err(Sealing::NeedsRoom(required)) => {
                outgoing.truncate(start);
                return Err(TlsError::General(format!(
                    "rustls asked for {required} bytes to seal into {room}"
                )));
            }
            Err(Sealing::Failed(error)) => {
                outgoing.truncate(start);
                return Err(error);
            }
        }
    }
}

/// Room for sealing `len` bytes of application data into records.
fn sealed_size(len: usize) -> usize {
    len + (len / MAX_FRAGMENT + 1) * RECORD_OVERHEAD
}

fn io_error(error: &TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.clone())
}

fn unexpected_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

/// Reads the ClientHello off `socket`, then completes the handshake with the port's config
/// for that client. Dropping the future abandons the handshake.
pub async fn accept_on_port(
    configs: &PortTlsConfigs,
    mut socket: TcpStream,
) -> io::Result<ServerTlsStream> {
    // Room for the handshake's reads too: `accept` reads on into this buffer.
    let mut received = Vec::with_capacity(READ_SIZE);
    let config = match read_client_hello(&mut socket, &mut received).await {
        Ok(hello) => configs.for_client(hello.prefers_chacha20),
        Err(HelloError::Closed) => return Err(unexpected_eof()),
        Err(HelloError::Io(error)) => return Err(io::Error::other(error)),
        // What is no hello we can read, rustls judges, and answers with its own alert.
        Err(HelloError::Malformed(_) | HelloError::TooLong | HelloError::BadServerName(_)) => {
            configs.for_client(false)
        }
    };
    accept(config.clone(), socket, received).await
}

/// Completes a TLS handshake on `socket`. `received` holds bytes already read off it (a
/// ClientHello peeked at for routing). Dropping the future abandons the handshake.
pub async fn accept(
    config: Arc<ServerConfig>,
    socket: TcpStream,
    received: Vec<u8>,
) -> io::Result<ServerTlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(|e| io_error(&e))?;
    let incoming_len = received.len();
    let mut incoming = received;
    if !incoming.is_empty() && incoming.len() < READ_SIZE {
        incoming.resize(READ_SIZE, 0);
    }
    let mut stream = ServerTlsStream {
        socket,
        conn,
        incoming,
        incoming_len,
        plaintext: Vec::new(),
        plaintext_taken: 0,
        outgoing: Vec::new(),
        outgoing_sent: 0,
        server_name: None,
        peer_closed: false,
        close_notify_queued: false,
        failed: None,
        writer_waiting: false,
    };
    loop {
        take_resolved_server_name();
        let advanced = stream.advance(Step::Handshake);
        if let Some(name) = take_resolved_server_name() {
            stream.server_name = Some(name);
        }
        let progress = match advanced {
            Ok(advanced) => advanced.progress,
            Err(error) => {
                let error = stream.fail(error);
                // The alert rustls queued tells the client why; the caller's deadline bounds
                // a peer that does not read it.
                let _ = poll_fn(|cx| stream.poll_send(cx)).await;
                return Err(error);
            }
        };
        poll_fn(|cx| stream.poll_send(cx)).await?;
        match progress {
            Progress::CanSend if !stream.conn.is_handshaking() => return Ok(stream),
            Progress::Closed => return Err(unexpected_eof()),
            Progress::CanSend | Progress::NeedsBytes => {}
        }
        if stream.peer_closed || poll_fn(|cx| stream.poll_receive(cx)).await? == 0 {
            return Err(unexpected_eof());
        }
    }
}

impl ServerTlsStream {
    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The server name the client asked for (SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// Processes the received records until rustls needs more bytes or can send, then does
    /// `step`'s part. Handshake and alert records rustls produces are appended to `outgoing`.
    fn advance(&mut self, mut step: Step<'_>) -> Result<Advanced, TlsError> {
        let Self {
            conn,
            incoming,
            incoming_len,
            plaintext,
            outgoing,
            peer_closed,
            close_notify_queued,
            ..
        } = self;
        let mut read = 0;
        let mut written = 0;
        loop {
            let status = conn.process_tls_records(&mut incoming[..*incoming_len]);
            let mut discard = status.discard;
            let outcome = match status.state {
                Err(error) => Err(error),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut outcome = Ok(None);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                let mut payload = record.payload;
                                if let Step::Read(into) = &mut step {
                                    let direct = payload.len().min(into.len() - read);
                                    into[read..read + direct].copy_from_slice(&payload[..direct]);
                                    read += direct;
                                    payload = &payload[direct..];
                                }
                                plaintext.extend_from_slice(payload);
                            }
                            Err(error) => {
                                outcome = Err(error);
                                break;
                            }
                        }
                    }
                    outcome
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append_sealed(outgoing, HANDSHAKE_RECORD_GUESS, |room| {
                        encode.encode(room).map_err(Sealing::from)
                    })
                    .map(|()| None)
                }
                // Sealed records leave when the caller flushes `outgoing`, before it waits for
                // the peer.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Progress::NeedsBytes)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match &step {
                    Step::Write(data) if written == 0 => {
                        let data = &data[..data.len().min(SEAL_CHUNK)];
                        append_sealed(outgoing, sealed_size(data.len()), |room| {
                            traffic.encrypt(data, room).map_err(Sealing::from)
                        })
                        .map(|()| {
                            written = data.len();
                            Some(Progress::CanSend)
                        })
                    }
                    Step::CloseNotify if !*close_notify_queued => {
                        append_sealed(outgoing, RECORD_OVERHEAD, |room| {
                            traffic.queue_close_notify(room).map_err(Sealing::from)
                        })
                        .map(|()| {
                            *close_notify_queued = true;
                            Some(Progress::CanSend)
                        })
                    }
                    _ => Ok(Some(Progress::CanSend)),
                },
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Progress::Closed)),
                // Early data is never accepted (the config leaves it off).
                Ok(other) => Err(TlsError::General(format!(
                    "unexpected TLS connection state {other:?}"
                ))),
            };
            if discard > 0 {
                incoming.copy_within(discard..*incoming_len, 0);
                *incoming_len -= discard;
            }
            match outcome {
                Ok(None) => {}
                Ok(Some(progress)) => {
                    return Ok(Advanced {
                        progress,
                        read,
                        written,
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Ends the session on `error`: the alert rustls queued for it is sealed into `outgoing`
    /// (the caller sends what it can), and every later read or write fails.
    fn fail(&mut self, error: TlsError) -> io::Error {
        // rustls hands out the records it queued (those of the failing step, the alert last)
        // before it looks at received bytes again. Once they are out it processes what is
        // left of the buffer: bytes that failed to deframe would fail again and queue a
        // second alert, so with bytes left only the first record is taken (a step that
        // fails on received bytes queues nothing but its alert).
        for _ in 0..8 {
            let status = self
                .conn
                .process_tls_records(&mut self.incoming[..self.incoming_len]);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state else {
                break;
            };
            let sealed = append_sealed(&mut self.outgoing, HANDSHAKE_RECORD_GUESS, |room| {
                encode.encode(room).map_err(Sealing::from)
            });
            if sealed.is_err() || self.incoming_len > 0 {
                break;
            }
        }
        // Plaintext decrypted before the failure is not handed out after it: what the failing
        // read had already copied out is lost with its error, so nothing after it may follow.
        self.plaintext = Vec::new();
        self.plaintext_taken = 0;
        let reported = io_error(&error);
        self.failed = Some(error);
        reported
    }

    fn has_unsent(&self) -> bool {
        self.outgoing_sent < self.outgoing.len()
    }

    /// Sends every sealed record.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.has_unsent() {
            let sent = ready!(
                Pin::new(&mut self.socket).poll_write(cx, &self.outgoing[self.outgoing_sent..])
            )?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += sent;
        }
        self.outgoing_sent = 0;
        if self.outgoing.capacity() > OUTGOING_KEEP {
            self.outgoing = Vec::new();
        } else {
            self.outgoing.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// `poll_send` for a caller that waits for it (writes, flushes, closes).
    fn poll_send_as_writer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let sent = self.poll_send(cx);
        self.writer_waiting = sent.is_pending();
        sent
    }

    /// Reads more TLS bytes off the socket; 0 when the peer closed its side.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming_len == self.incoming.len() {
            if self.incoming.is_empty() {
                // Buffers were released for an idle wait: glommio polls for readiness and
                // then copies, so the wait itself holds this stack buffer only.
                let mut first = [0u8; READ_SIZE];
                let received = ready!(Pin::new(&mut self.socket).poll_read(cx, &mut first))?;
                if received > 0 {
                    self.incoming = vec![0; READ_SIZE];
                    self.incoming[..received].copy_from_slice(&first[..received]);
                    self.incoming_len = received;
                }
                return Poll::Ready(Ok(received));
            }
            if self.incoming.len() >= INCOMING_LIMIT {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS message larger than the receive limit",
                )));
            }
            let grown = (self.incoming.len() * 2).min(INCOMING_LIMIT);
            self.incoming.resize(grown, 0);
        }
        let received = ready!(
            Pin::new(&mut self.socket).poll_read(cx, &mut self.incoming[self.incoming_len..])
        )?;
        self.incoming_len += received;
        Poll::Ready(Ok(received))
    }

    fn take_plaintext(&mut self, into: &mut [u8]) -> usize {
        let available = &self.plaintext[self.plaintext_taken..];
        let n = available.len().min(into.len());
        into[..n].copy_from_slice(&available[..n]);
        self.plaintext_taken += n;
        if self.plaintext_taken == self.plaintext.len() {
            self.plaintext.clear();
            self.plaintext_taken = 0;
        }
        n
    }
}

impl AsyncRead for ServerTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.plaintext.is_empty() {
                return Poll::Ready(Ok(this.take_plaintext(buf)));
            }
            if let Some(error) = &this.failed {
                return Poll::Ready(Err(io_error(error)));
            }
            if this.peer_closed || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let advanced = match this.advance(Step::Read(buf)) {
                Ok(advanced) => advanced,
                Err(error) => {
                    let error = this.fail(error);
                    // A waiting writer sends the alert when the socket takes it.
                    if !this.writer_waiting {
                        let _ = this.poll_send(cx);
                    }
                    return Poll::Ready(Err(error));
                }
            };
            if advanced.read > 0 {
                return Poll::Ready(Ok(advanced.read));
            }
            if !this.plaintext.is_empty() || this.peer_closed {
                continue;
            }
            if advanced.progress == Progress::Closed {
                return Poll::Ready(Ok(0));
            }
            // Records rustls queued while reading (a warning alert) go out if the socket takes
            // them now. Never wait for it: with the stream split, the other half may be writing
            // to a peer that reads only once its own writes are read. Nor try while that half
            // waits: its send carries these records too.
            if this.has_unsent()
                && !this.writer_waiting
                && let Poll::Ready(Err(error)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(error));
            }
            if ready!(this.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(unexpected_eof()));
            }
        }
    }
}

impl AsyncWrite for ServerTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = &this.failed {
            return Poll::Ready(Err(io_error(error)));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.outgoing.len() - this.outgoing_sent >= OUTGOING_BACKLOG {
            ready!(this.poll_send_as_writer(cx))?;
        }
        match this.advance(Step::Write(buf)) {
            Ok(advanced) if advanced.written > 0 => Poll::Ready(Ok(advanced.written)),
            Ok(_) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS session cannot send",
            ))),
            Err(error) => {
                let error = this.fail(error);
                let _ = this.poll_send(cx);
                Poll::Ready(Err(error))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_as_writer(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_none()
            && !this.close_notify_queued
            && let Err(error) = this.advance(Step::CloseNotify)
        {
            this.fail(error);
        }
        ready!(this.poll_send_as_writer(cx))?;
        Pin::new(&mut this.socket).poll_close(cx)
    }
}

impl Transport for ServerTlsStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        Transport::set_read_timeout(&self.socket, timeout);
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) {
        Transport::set_write_timeout(&self.socket, timeout);
    }

    const BUFFERED: bool = true;

    /// The socket's unacknowledged bytes and the sealed records it has not taken yet: both
    /// were counted as written, and neither has reached the client.
    fn unacknowledged(&self) -> u64 {
        let unsent = (self.outgoing.len() - self.outgoing_sent) as u64;
        Transport::unacknowledged(&self.socket) + unsent
    }

    fn reset_on_close(&self) {
        Transport::reset_on_close(&self.socket);
    }

    fn release_idle_buffers(&mut self) {
        if self.incoming_len == 0 {
            self.incoming = Vec::new();
        }
        if self.plaintext.is_empty() {
            self.plaintext = Vec::new();
        }
        if !self.has_unsent() {
            self.outgoing = Vec::new();
            self.outgoing_sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;

    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;
    use glommio::{LocalExecutorBuilder, Placement};
    use portcullis_testkit::AcceptAnyServerCertificate;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, StreamOwned, SupportedProtocolVersion, version};

    use super::*;
    use crate::tls::config::tests::https_server_config;

    fn client(version: &'static SupportedProtocolVersion) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn connect(
        port: u16,
        version: &'static SupportedProtocolVersion,
    ) -> StreamOwned<ClientConnection, StdTcpStream> {
        let tcp = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let name = ServerName::try_from("a.example").unwrap();
        StreamOwned::new(ClientConnection::new(client(version), name).unwrap(), tcp)
    }

    /// Runs `serve` on a glommio executor for the first connection to a loopback listener;
    /// `client` runs on this thread with the listener's port.
    fn with_server<T, F, Fut>(serve: F, client: impl FnOnce(u16)) -> T
    where
        T: Send + 'static,
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let server = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(crate::IO_MEMORY)
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                let socket = listener.accept().await.unwrap();
                serve(socket).await
            })
            .unwrap();
        client(port_rx.recv().unwrap());
        server.join().unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn data_crosses_both_ways_and_an_idle_connection_holds_no_buffers() {
        const REQUEST: usize = 40 * 1024;
        const RESPONSE: usize = 100 * 1024;
        for version in [&version::TLS13, &version::TLS12] {
            let served = with_server(
                |socket| async move {
                    let mut tls = accept(https_server_config(), socket, Vec::new())
                        .await
                        .unwrap();
                    let names = (
                        tls.server_name().map(String::from),
                        tls.alpn_protocol().map(<[u8]>::to_vec),
                    );
                    let mut request = vec![0u8; REQUEST];
                    tls.read_exact(&mut request).await.unwrap();
                    tls.write_all(&pattern(RESPONSE, 7)).await.unwrap();
                    tls.flush().await.unwrap();

                    tls.release_idle_buffers();
                    let held = tls.incoming.capacity()
                        + tls.plaintext.capacity()
                        + tls.outgoing.capacity();
                    let mut next = [0u8; 5];
                    tls.read_exact(&mut next).await.unwrap();
                    let after_close = tls.read(&mut next).await.unwrap();
                    (names, request, held, next, after_close)
                },
                |port| {
                    let mut tls = connect(port, version);
                    tls.write_all(&pattern(REQUEST, 3)).unwrap();
                    let mut response = vec![0u8; RESPONSE];
                    tls.read_exact(&mut response).unwrap();
                    assert!(
                        response == pattern(RESPONSE, 7),
                        "{version:?}: response garbled"
                    );
                    tls.write_all(b"again").unwrap();
                    tls.conn.send_close_notify();
                    tls.flush().unwrap();
                },
            );
            let (names, request, held, next, after_close) = served;
            assert_eq!(
                names,
                (Some("a.example".to_string()), Some(b"http/1.1".to_vec())),
                "{version:?}"
            );
            assert!(
                request == pattern(REQUEST, 3),
                "{version:?}: request garbled"
            );
            assert_eq!(held, 0, "{version:?}: an idle connection kept buffers");
            assert_eq!(&next, b"again", "{version:?}");
            assert_eq!(after_close, 0, "{version:?}: close_notify reads as the end");
        }
    }

    #[test]
    fn reading_goes_on_while_a_write_waits_for_the_peer() {
        // Each side writes more than the sockets hold before it reads: the proxy's half that
        // writes to this client waits, and its half that reads must not wait with it (a TLS
        // stream port relaying a client that pipelines).
        const EACH_WAY: usize = 8 * 1024 * 1024;
        let received = with_server(
            |socket| async move {
                let tls = accept(https_server_config(), socket, Vec::new())
                    .await
                    .unwrap();
                let (mut reader, mut writer) = futures_lite::io::split(tls);
                let write = async {
                    writer.write_all(&pattern(EACH_WAY, 1)).await.unwrap();
                    writer.flush().await.unwrap();
                };
                let read = async {
                    let mut request = vec![0u8; EACH_WAY];
                    reader.read_exact(&mut request).await.unwrap();
                    request
                };
                futures_lite::future::zip(write, read).await.1
            },
            |port| {
                let mut tls = connect(port, &version::TLS13);
                tls.sock
                    .set_write_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                tls.write_all(&pattern(EACH_WAY, 2)).unwrap();
                tls.flush().unwrap();
                let mut response = vec![0u8; EACH_WAY];
                tls.read_exact(&mut response).unwrap();
                assert!(response == pattern(EACH_WAY, 1), "response garbled");
            },
        );
        assert!(received == pattern(EACH_WAY, 2), "request garbled");
    }

    #[test]
    fn bytes_read_before_the_handshake_are_processed_first() {
        let answered = with_server(
            |mut socket| async move {
                // What a TLS port reads to route by SNI before it terminates.
                let mut peeked = vec![0u8; 7];
                socket.read_exact(&mut peeked).await.unwrap();
                let mut tls = accept(https_server_config(), socket, peeked).await.unwrap();
                let mut ping = [0u8; 4];
                tls.read_exact(&mut ping).await.unwrap();
                tls.write_all(b"pong").await.unwrap();
                tls.close().await.unwrap();
                ping
            },
            |port| {
                let mut tls = connect(port, &version::TLS13);
                tls.write_all(b"ping").unwrap();
                let mut rest = Vec::new();
                tls.read_to_end(&mut rest).unwrap();
                assert_eq!(
                    rest, b"pong",
                    "the server's close_notify ends the stream cleanly"
                );
            },
        );
        assert_eq!(&answered, b"ping");
    }

    #[test]
    fn a_failed_handshake_is_answered_with_an_alert() {
        let failure = with_server(
            |socket| async move {
                accept(https_server_config(), socket, Vec::new())
                    .await
                    .err()
                    .map(|e| e.kind())
            },
            |port| {
                let mut tcp = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
                    .unwrap();
                let mut answer = Vec::new();
                let _ = tcp.read_to_end(&mut answer);
                // An alert record: content type 21.
                assert_eq!(answer.first(), Some(&21), "answer {answer:?}");
            },
        );
        assert_eq!(failure, Some(io::ErrorKind::InvalidData));
    }

    #[test]
    fn a_client_without_a_protocol_in_common_gets_the_alert_for_it() {
        let failure = with_server(
            |socket| async move {
                let error = accept(https_server_config(), socket, Vec::new())
                    .await
                    .err()?;
                error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<TlsError>())
                    .cloned()
            },
            |port| {
                let mut config = (*client(&version::TLS13)).clone();
                config.alpn_protocols = vec![b"spdy/3.1".to_vec()];
                let tcp = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let name = ServerName::try_from("a.example").unwrap();
                let mut tls =
                    StreamOwned::new(ClientConnection::new(Arc::new(config), name).unwrap(), tcp);
                let error = tls.write_all(b"x").and_then(|()| tls.flush()).unwrap_err();
                assert!(
                    error.to_string().contains("NoApplicationProtocol"),
                    "the client saw {error}"
                );
            },
        );
        assert_eq!(failure, Some(TlsError::NoApplicationProtocol));
    }

    #[test]
    fn a_peer_leaving_without_close_notify_is_an_unexpected_end() {
        let ending = with_server(
            |socket| async move {
                let mut tls = accept(https_server_config(), socket, Vec::new())
                    .await
                    .unwrap();
                let mut byte = [0u8; 1];
                tls.read(&mut byte).await.map_err(|e| e.kind())
            },
            |port| {
                let mut tls = connect(port, &version::TLS13);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).unwrap();
                }
                tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
            },
        );
        assert_eq!(ending, Err(io::ErrorKind::UnexpectedEof));
    }
}
