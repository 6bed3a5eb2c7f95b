//! HTTP/2: cleartext with prior knowledge (h2c) from clients on HTTP ports, and to backends
//! whose protocol is HTTP/2 (appProtocol `kubernetes.io/h2c`, GRPCRoute backends).
//!
//! h2 (the crate) owns framing, HPACK, flow control and the protocol's limits (concurrent
//! streams, reset floods); this module maps streams onto the engine: requests are routed
//! and filtered in their HTTP/1.1 form (`head`), then forwarded to either kind of backend
//! (`forward`). Connections and streams are tasks on the core that accepted them; the
//! backend connections are the core's own (`pool`).

pub mod forward;
pub mod head;
pub mod io;
pub mod pool;
pub mod server;

pub use pool::Http2Pool;
pub use server::{PREFACE_START, serve};

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;

/// Sends `data` as the peer's flow-control window allows, waiting at most `idle` for the
/// window to open each time: a peer that stops reading has its stream reset.
pub async fn send_all(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    idle: Duration,
) -> Result<(), ()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let wait = async { Ok(poll_fn(|cx| stream.poll_capacity(cx)).await) };
        let granted = match glommio::timer::timeout(idle, wait).await {
            Ok(Some(Ok(granted))) => granted,
            Ok(Some(Err(_)) | None) => return Err(()),
            Err(_) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(());
            }
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        stream.send_data(piece, false).map_err(|_| ())?;
    }
    Ok(())
}
