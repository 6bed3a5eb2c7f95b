//! Copying bytes both ways between a client and a backend until both sides are done.

use std::cell::Cell;
use std::future::Future;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use futures_lite::future::{self, FutureExt};
use futures_lite::io::{self as lite_io, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::timer::Timer;

use crate::sys::reset_on_close;

/// Per-direction copy buffer.
const CHUNK: usize = 16 * 1024;

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their sending half.
    Closed,
    /// One side failed (reset, broken pipe): the other was dropped.
    Failed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// `stop` resolved: a new config no longer allows the connection.
    Stopped,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Closed => "closed",
            Ended::Failed => "failed",
            Ended::Idle => "idle",
            Ended::Stopped => "revoked",
        }
    }
}

/// Bytes moved each way and how the splice ended.
#[derive(Debug, Clone, Copy)]
pub struct Spliced {
    pub to_upstream: u64,
    pub to_client: u64,
    pub ended: Ended,
}

/// Copies `client` → `upstream` and `upstream` → `client` concurrently. A side that finishes
/// sending gets its peer's write half shut down (half-close), and the other direction goes on.
/// An error on either side ends both with a reset on both sockets (`sockets`: the client's and
/// the upstream's descriptors), so a peer never mistakes a cut-off stream for a complete one.
///
/// When `stop` resolves first, both sockets are reset as well.
pub async fn splice<C, U>(
    client: C,
    upstream: U,
    idle_timeout: Duration,
    sockets: [RawFd; 2],
    stop: impl Future<Output = ()>,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_rx, mut client_tx) = lite_io::split(client);
    let (mut upstream_rx, mut upstream_tx) = lite_io::split(upstream);
    let activity = Cell::new(Instant::now());
    let to_upstream = Cell::new(0u64);
    let to_client = Cell::new(0u64);
    let copying = future::try_zip(
        copy_then_close(&mut client_rx, &mut upstream_tx, &activity, &to_upstream),
        copy_then_close(&mut upstream_rx, &mut client_tx, &activity, &to_client),
    );
    let ended = async {
        match copying.await {
            Ok(_) => Ended::Closed,
            Err(_) => Ended::Failed,
        }
    }
    .or(async {
        loop {
            let quiet = activity.get().elapsed();
            if quiet >= idle_timeout {
                return Ended::Idle;
            }
            Timer::new(idle_timeout - quiet).await;
        }
    })
    .or(async {
        stop.await;
        Ended::Stopped
    })
    .await;
    if matches!(ended, Ended::Failed | Ended::Stopped) {
        // Set before the streams close below.
        for fd in sockets {
            reset_on_close(fd);
        }
    }
    Spliced {
        to_upstream: to_upstream.get(),
        to_client: to_client.get(),
        ended,
    }
}

async fn copy_then_close<R, W>(
    from: &mut R,
    to: &mut W,
    activity: &Cell<Instant>,
    moved: &Cell<u64>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        activity.set(Instant::now());
        let mut unsent = &buf[..n];
        while !unsent.is_empty() {
            // Each partial write counts as activity: a slow reader is not an idle one.
            let written = to.write(unsent).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            unsent = &unsent[written..];
            activity.set(Instant::now());
        }
        to.flush().await?;
        activity.set(Instant::now());
        moved.set(moved.get() + n as u64);
    }
    // The peer sees EOF (a TLS close_notify first, where we terminate) and may still answer.
    to.close().await
}
