//! Byte transport between the engine and sockets: plain TCP and TLS behind one trait, and the
//! receive buffer every connection reads into.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

/// A bidirectional byte stream whose reads and writes can time out.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Bounds each read that has to wait for the peer.
    fn set_read_timeout(&self, timeout: Option<Duration>);
    /// Bounds each write that has to wait for the peer (slow readers).
    fn set_write_timeout(&self, timeout: Option<Duration>);
    /// Whether writes are buffered and need a flush to reach the socket (TLS).
    const BUFFERED: bool;
    /// Bytes written that the peer has not acknowledged yet.
    fn unacknowledged(&self) -> u64 {
        0
    }
    /// Closing resets the connection rather than leaving queued data to a peer not reading it.
    fn reset_on_close(&self) {}
    /// Frees buffers kept between writes, for a connection about to wait idle.
    fn release_idle_buffers(&mut self) {}
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) {
        // Only a zero duration is refused; callers never pass one.
        let _ = TcpStream::set_read_timeout(self, timeout.filter(|d| !d.is_zero()));
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) {
        let _ = TcpStream::set_write_timeout(self, timeout.filter(|d| !d.is_zero()));
    }

    const BUFFERED: bool = false;

    fn unacknowledged(&self) -> u64 {
        crate::sys::unacknowledged_bytes(self.as_raw_fd())
    }

    fn reset_on_close(&self) {
        crate::sys::reset_on_close(self.as_raw_fd());
    }
}

/// The TCP stream under a TLS session to a backend (futures-rustls). rustls hands over all
/// pending records as one vectored write; the socket's default would send only the first
/// record per call. Gathering them into one send saves syscalls, and gets a flight's records
/// and an alert that ends the handshake out together before the connection closes.
#[derive(Debug)]
pub struct TlsSocket {
    stream: TcpStream,
    gather: Vec<u8>,
}

/// Gather at most this much per send; the rest goes out on the next call.
const GATHER_LIMIT: usize = 64 * 1024;
/// A gather buffer larger than this is freed after use rather than kept per connection.
const GATHER_KEEP: usize = 16 * 1024;

impl TlsSocket {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            gather: Vec::new(),
        }
    }

    /// The socket itself, for its timeouts and descriptor.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        match (nonempty.next(), nonempty.next()) {
            (None, _) => return Poll::Ready(Ok(0)),
            (Some(only), None) => return Pin::new(&mut self.stream).poll_write(cx, only),
            _ => {}
        }
        let this = &mut *self;
        this.gather.clear();
        for buf in bufs {
            if this.gather.len() >= GATHER_LIMIT {
                break;
            }
            this.gather.extend_from_slice(buf);
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, &this.gather);
        if this.gather.capacity() > GATHER_KEEP {
            this.gather = Vec::new();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// Writes everything and makes sure it left the process.
pub async fn send<T: Transport>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    if T::BUFFERED {
        io.flush().await?;
    }
    Ok(())
}

/// A growable receive buffer: bytes in `[start, end)` are received and not yet consumed.
#[derive(Debug, Default)]
pub struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Bytes read per syscall when the buffer has to grow.
pub const READ_CHUNK: usize = 16 * 1024;
/// What an idle keep-alive connection keeps, and reads into while it waits for the next
/// request: most request heads fit, and thousands of idle connections stay cheap.
pub const IDLE_READ_CHUNK: usize = 4 * 1024;

impl RecvBuf {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Appends bytes read elsewhere.
    pub fn append(&mut self, bytes: &[u8]) {
        self.buf.truncate(self.end);
        self.buf.extend_from_slice(bytes);
        self.end = self.buf.len();
    }

    /// For an idle connection: drops a buffer that grew past [`IDLE_READ_CHUNK`] (a large
    /// head or body), so waiting costs little memory.
    pub fn shrink_when_idle(&mut self) {
        if self.is_empty() && self.buf.len() > IDLE_READ_CHUNK {
            self.buf = Vec::new();
        }
    }

    /// Reads once from `io`, appending. Returns the number of bytes read (0 = EOF).
    /// `limit` caps how many unconsumed bytes the buffer may hold.
    pub async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
    ) -> io::Result<usize> {
        self.fill_at_most(io, limit, READ_CHUNK).await
    }

    /// [`Self::fill`], reading at most `chunk` bytes.
    pub async fn fill_at_most<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
        chunk: usize,
    ) -> io::Result<usize> {
        let unconsumed = self.len();
        if unconsumed >= limit {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "receive buffer full",
            ));
        }
        if self.start > 0 && (self.buf.len() - self.end) < READ_CHUNK / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = unconsumed;
        }
        let want = (limit - unconsumed).min(chunk);
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        let n = io.read(&mut self.buf[self.end..self.end + want]).await?;
        self.end += n;
        Ok(n)
    }
}

/// `prefix` (bytes already read off `inner`), then the rest of `inner`; writes go to `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.position < this.prefix.len() {
            let rest = &this.prefix[this.position..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.position += n;
            if this.position == this.prefix.len() {
                this.prefix = Vec::new();
                this.position = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_buffer_is_small() {
        futures_lite::future::block_on(async {
            let big = vec![b'x'; 40 * 1024];
            let mut source: &[u8] = &big;
            let mut rx = RecvBuf::new();
            while rx.fill(&mut source, 64 * 1024).await.unwrap() > 0 {}
            let grown = rx.buf.len();
            assert!(grown > IDLE_READ_CHUNK);
            rx.shrink_when_idle();
            assert_eq!(rx.buf.len(), grown, "data still unread: kept");
            assert_eq!(rx.len(), 40 * 1024);
            rx.consume(rx.len());
            rx.shrink_when_idle();
            assert_eq!(rx.buf.capacity(), 0);
            let mut next: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
            rx.fill_at_most(&mut next, 64 * 1024, IDLE_READ_CHUNK)
                .await
                .unwrap();
            assert_eq!(rx.data(), b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(rx.buf.len(), IDLE_READ_CHUNK);
        });
    }

    #[test]
    fn fills_consumes_and_compacts() {
        futures_lite::future::block_on(async {
            let mut source: &[u8] = b"hello world";
            let mut rx = RecvBuf::new();
            assert_eq!(rx.fill(&mut source, 64).await.unwrap(), 11);
            assert_eq!(rx.data(), b"hello world");
            rx.consume(6);
            assert_eq!(rx.data(), b"world");
            rx.consume(5);
            assert!(rx.is_empty());
            assert_eq!(rx.fill(&mut source, 64).await.unwrap(), 0, "EOF");

            let mut long: &[u8] = &[7u8; 100];
            assert_eq!(rx.fill(&mut long, 10).await.unwrap(), 10);
            assert!(rx.fill(&mut long, 10).await.is_err(), "limit reached");
        });
    }

    #[test]
    fn prefixed_reads_the_prefix_first_in_small_pieces() {
        let mut stream = Prefixed::new(b"hello ".to_vec(), &b"world"[..]);
        let mut out = Vec::new();
        let mut piece = [0u8; 4];
        loop {
            let n = futures_lite::future::block_on(stream.read(&mut piece)).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&piece[..n]);
        }
        assert_eq!(out, b"hello world");
    }
}
