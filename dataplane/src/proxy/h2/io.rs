//! The byte stream under an HTTP/2 connection: h2 is written against tokio's I/O traits, the
//! engine's streams implement futures-io; tokio-util's compat layer joins the two (no tokio
//! runtime is involved: every wakeup comes from glommio).

use futures_lite::{AsyncRead, AsyncWrite};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::io::Prefixed;

pub type Stream<T> = Compat<Prefixed<T>>;

/// The stream h2 reads and writes: `prefix` (bytes already read off `inner`, such as the
/// connection preface read while looking for an HTTP/1.1 request), then `inner`.
pub fn stream<T: AsyncRead + AsyncWrite + Unpin>(prefix: Vec<u8>, inner: T) -> Stream<T> {
    Prefixed::new(prefix, inner).compat()
}
