//! The byte stream under an HTTP/2 connection: h2 is written against tokio's I/O traits, the
//! engine's streams implement futures-io; tokio-util's compat layer joins the two (no tokio
//! runtime is involved: every wakeup comes from glommio).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// A stream whose first bytes were already read (the connection preface, read while looking
/// for an HTTP/1.1 request): they are read again first.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    position: usize,
    inner: T,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Prefixed<T> {
    /// The stream h2 reads and writes.
    pub fn compat(prefix: Vec<u8>, inner: T) -> Compat<Prefixed<T>> {
        Prefixed {
            prefix,
            position: 0,
            inner,
        }
        .compat()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let left = &this.prefix[this.position..];
        if !left.is_empty() {
            let n = left.len().min(buf.len());
            buf[..n].copy_from_slice(&left[..n]);
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

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;

    #[test]
    fn the_prefix_is_read_before_the_stream() {
        let inner = futures_lite::io::Cursor::new(b" world".to_vec());
        let mut stream = Prefixed {
            prefix: b"hello".to_vec(),
            position: 0,
            inner,
        };
        let mut all = Vec::new();
        futures_lite::future::block_on(stream.read_to_end(&mut all)).unwrap();
        assert_eq!(all, b"hello world");
    }
}
