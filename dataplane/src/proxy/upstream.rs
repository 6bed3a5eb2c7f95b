//! Upstream connections and the per-core keep-alive pool.
//!
//! Each core owns its pool; connections never move between cores. An idle connection is
//! checked before reuse (a peer that closed it, or sent bytes nobody asked for, is dropped),
//! which avoids most keep-alive races with upstreams that close idle connections.
//!
//! Connections are pooled by endpoint and TLS identity, so a request never travels on a
//! connection secured differently from what its backend's current config asks for: plaintext
//! and TLS to one address, or TLS made under an older CA or name, are never mixed.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use portcullis_api::config::ProxySettings;
use rustls::ClientConfig;

use crate::io::{RecvBuf, TlsSocket, Transport, send};
use crate::metrics::{CoreCounters, UpstreamError};
use crate::proxy::backend_tls::{CoreTls, UpstreamTls};
use crate::shard::Shard;
use crate::sys::{IdleSocket, idle_socket_state};

/// Which idle connections a request may take: same endpoint, same TLS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: SocketAddr,
    /// [`UpstreamTls::identity`], or 0 for plaintext.
    pub tls: u64,
}

impl PoolKey {
    pub fn new(addr: SocketAddr, tls: Option<&UpstreamTls>) -> Self {
        Self {
            addr,
            tls: tls.map_or(0, |tls| tls.identity),
        }
    }
}

/// The byte stream to an upstream: plain TCP or TLS over it.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TlsSocket>>),
}

impl UpstreamStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(stream) => stream,
            UpstreamStream::Tls(tls) => tls.get_ref().0.tcp(),
        }
    }

    /// Whether an idle connection can carry a new request: the socket has nothing to read
    /// and, for TLS, the session holds no unread plaintext (bytes past the last response that
    /// rustls decrypted while reading it) and nothing unsent.
    fn is_idle_and_open(&mut self) -> bool {
        if idle_socket_state(self.tcp().as_raw_fd()) != IdleSocket::Open {
            return false;
        }
        match self {
            UpstreamStream::Plain(_) => true,
            UpstreamStream::Tls(tls) => {
                let session = tls.get_mut().1;
                !session.wants_write()
                    && session.process_new_packets().is_ok_and(|state| {
                        state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed()
                    })
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            UpstreamStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            UpstreamStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_close(cx),
            UpstreamStream::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
        }
    }
}

impl Transport for UpstreamStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        Transport::set_read_timeout(self.tcp(), timeout);
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) {
        Transport::set_write_timeout(self.tcp(), timeout);
    }

    // TLS holds written records until flushed; flushing plain TCP costs nothing.
    const BUFFERED: bool = true;
}

/// Why no connection to an upstream could be made.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP: refused, unreachable, timed out.
    Connect(io::Error),
    /// TCP worked, TLS did not: the handshake failed or timed out, or the certificate was
    /// refused.
    Handshake(io::Error),
}

impl ConnectError {
    /// Counts the failure (timeout or connect error) and, for a failed TLS handshake, logs it
    /// under the backend's policy.
    pub fn record(&self, counters: &CoreCounters, endpoint: SocketAddr, tls: Option<&CoreTls>) {
        counters.upstream_error(if self.timed_out() {
            UpstreamError::Timeout
        } else {
            UpstreamError::Connect
        });
        if let (ConnectError::Handshake(reason), Some(tls)) = (self, tls) {
            tls.log_failure(endpoint, reason);
        }
    }

    pub fn timed_out(&self) -> bool {
        let (ConnectError::Connect(e) | ConnectError::Handshake(e)) = self;
        e.kind() == io::ErrorKind::TimedOut
    }
}

#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub rx: RecvBuf,
    pub key: PoolKey,
}

impl UpstreamConn {
    /// Connects to `addr` and, with `tls`, completes the handshake, all within `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&CoreTls>,
    ) -> Result<UpstreamConn, ConnectError> {
        let key = PoolKey::new(addr, tls.map(|tls| &*tls.settings));
        let stream = open(addr, timeout, tls.map(|tls| (tls, tls.config.clone()))).await?;
        Ok(UpstreamConn {
            stream,
            rx: RecvBuf::new(),
            key,
        })
    }
}

/// Sends `request` (a whole head, maybe with body bytes) to `endpoint` on a pooled
/// connection, or a new one. A pooled connection that turns out to be dead before anything
/// could have been processed is replaced by a fresh one once. Failures are counted; None
/// means the backend could not be reached (answered 502).
pub async fn deliver(
    shard: &Shard,
    settings: &ProxySettings,
    endpoint: SocketAddr,
    tls: Option<&CoreTls>,
    request: &[u8],
) -> Option<UpstreamConn> {
    let idle_timeout = Duration::from_millis(settings.upstream_idle_timeout_ms);
    let connect_timeout = Duration::from_millis(settings.upstream_connect_timeout_ms);
    let connect = || async {
        UpstreamConn::connect(endpoint, connect_timeout, tls)
            .await
            .map_err(|error| error.record(&shard.counters, endpoint, tls))
            .ok()
    };
    let key = PoolKey::new(endpoint, tls.map(|tls| &*tls.settings));
    let mut upstream = match shard.pool.checkout(key, idle_timeout) {
        Some(upstream) => upstream,
        None => connect().await?,
    };
    if send(&mut upstream.stream, request).await.is_err() {
        shard.counters.upstream_error(UpstreamError::Reset);
        upstream = connect().await?;
        if send(&mut upstream.stream, request).await.is_err() {
            shard.counters.upstream_error(UpstreamError::Reset);
            return None;
        }
    }
    Some(upstream)
}

/// A connection that carries opaque bytes (a terminated TLSRoute's decrypted stream): TLS,
/// when the backend has a policy, offers no application protocol, since the proxy does not
/// know which one the bytes speak.
pub async fn connect_opaque(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&CoreTls>,
) -> Result<UpstreamStream, ConnectError> {
    open(addr, timeout, tls.map(|tls| (tls, tls.opaque_config()))).await
}

/// TCP to `addr` and, with `tls`, the handshake under the given client config, all within
/// `timeout`.
async fn open(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<(&CoreTls, Arc<ClientConfig>)>,
) -> Result<UpstreamStream, ConnectError> {
    let deadline = Instant::now() + timeout;
    let stream = connect_tcp(addr, timeout)
        .await
        .map_err(ConnectError::Connect)?;
    Ok(match tls {
        None => UpstreamStream::Plain(stream),
        Some((tls, config)) => {
            UpstreamStream::Tls(Box::new(handshake(stream, tls, config, deadline).await?))
        }
    })
}

/// A TCP connection to an upstream, as HTTP and stream (L4) ports make them.
///
/// The timeout is a timer raced against a plain connect, not glommio's `connect_timeout`
/// (a connect linked to an io_uring link-timeout): the `connection` fuzz target found that
/// dropping one of those while it was still connecting (an HTTP/2 stream cancelled because
/// its connection failed) left the core's executor never scheduling a task again. See
/// `fuzzing::connection`'s `a_failed_http2_connection_leaves_no_stream_behind`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let connect = async { TcpStream::connect(addr).await.map_err(io::Error::from) };
    let stream = connect
        .or(async {
            Timer::new(timeout).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        })
        .await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn handshake(
    stream: TcpStream,
    tls: &CoreTls,
    config: Arc<ClientConfig>,
    deadline: Instant,
) -> Result<futures_rustls::client::TlsStream<TlsSocket>, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
    if left.is_zero() {
        return Err(ConnectError::Handshake(timed_out()));
    }
    let connector = TlsConnector::from(config);
    connector
        .connect(tls.settings.server_name.clone(), TlsSocket::new(stream))
        .or(async {
            Timer::new(left).await;
            Err(timed_out())
        })
        .await
        .map_err(ConnectError::Handshake)
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<(UpstreamConn, Instant)>>>,
}

impl Pool {
    /// The most recently used healthy idle connection for `key`, if any.
    pub fn checkout(&self, key: PoolKey, idle_timeout: Duration) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some((mut conn, since)) = stack.pop() {
            if now.duration_since(since) < idle_timeout && conn.stream.is_idle_and_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for reuse unless the endpoint already has `max_idle` idle connections.
    pub fn checkin(&self, mut conn: UpstreamConn, max_idle: usize) {
        if !conn.rx.is_empty() {
            return; // bytes after the response: the framing is off, never reuse
        }
        // What a response head is read into next: a buffer no larger than a head usually
        // needs stays (it bounds what each pooled connection holds).
        conn.rx.shrink_when_idle();
        let mut idle = self.idle.borrow_mut();
        let stack = idle.entry(conn.key).or_default();
        if stack.len() < max_idle {
            stack.push((conn, Instant::now()));
        }
    }

    /// Closes connections idle longer than `idle_timeout`.
    pub fn prune(&self, idle_timeout: Duration) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, stack| {
            stack.retain(|(_, since)| now.duration_since(*since) < idle_timeout);
            !stack.is_empty()
        });
    }

    /// Closes connections the config no longer asks for: endpoints it dropped, and those made
    /// with TLS settings it changed (or plaintext to a backend that now wants TLS).
    pub fn retain_endpoints(&self, wanted: &HashSet<PoolKey>) {
        self.idle.borrow_mut().retain(|key, _| wanted.contains(key));
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}
