//! RequestMirror: fire-and-forget copies of a request to other backends.
//!
//! A copy is the request as it goes to the primary backend (after the rule's filters), with
//! `connection: close`, sent on its own connection from a detached task on the same core; its
//! response is read and dropped. Copies never delay or fail the primary request. A request
//! without a body is copied as soon as it is routed; a body is collected while it streams to
//! the primary backend and the copies leave once it is complete. Limits keep mirroring from
//! costing the core more than a bounded amount: copies in flight per core, body bytes per
//! copy, and one deadline per copy.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, FutureExt};
use glommio::spawn_local;
use glommio::timer::Timer;

use bytes::Bytes;
use portcullis_api::config::BackendProtocol;

use crate::http::chunked::{ChunkedDecoder, Decoded};
use crate::http::request::{self, RequestFraming, RequestHead};
use crate::io::send;
use crate::metrics::{MirrorCounters, increment};
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::h2::head::{self as h2_head, OWN_HEAD_LIMITS};
use crate::proxy::h2::io::stream as http2_stream;
use crate::proxy::h2::send_all;
use crate::proxy::upstream::{ConnectError, UpstreamConn};
use crate::route::table::MirrorTarget;
use crate::shard::{Installed, Shard};

/// Copies in flight on one core; more are skipped (and counted) rather than queued.
pub const MAX_IN_FLIGHT_PER_CORE: u64 = 1024;
/// Body bytes a copy carries; a request with a bigger body is not copied.
pub const MAX_COPY_BODY: usize = 64 * 1024;
/// From connecting to the end of the copy's response.
const COPY_DEADLINE: Duration = Duration::from_secs(10);

/// Where one copy goes.
#[derive(Debug)]
struct CopyTarget {
    endpoint: SocketAddr,
    /// The mirror backend's TLS settings; the copy task outlives the request, so it holds
    /// its own reference.
    tls: Option<Rc<CoreTls>>,
    /// The mirror backend speaks HTTP/2: the copy is translated (see `http2_copy`).
    http2: bool,
}

/// The copies of one request, waiting for its body.
#[derive(Debug)]
pub struct MirrorRequest {
    endpoints: Vec<CopyTarget>,
    /// The head, then the body as it was framed for the primary backend.
    bytes: Vec<u8>,
    head_len: usize,
    too_big: bool,
}

impl MirrorRequest {
    /// Draws which of `mirrors` copy this request and picks an endpoint for each;
    /// `write_head` serializes the copy's head (as an upstream head). None when nothing is
    /// copied: none sampled, no endpoint, a declared body over the copy limit, or the core
    /// already at its limit of copies in flight (each counted as skipped).
    pub fn prepare(
        shard: &Shard,
        installed: &Installed,
        mirrors: &[MirrorTarget],
        body: RequestFraming,
        write_head: impl FnOnce(&mut Vec<u8>),
    ) -> Option<MirrorRequest> {
        let counters = &shard.counters.mirrors;
        let too_big = matches!(body, RequestFraming::Length(n) if n > MAX_COPY_BODY as u64);
        let full = counters.in_flight.get() >= MAX_IN_FLIGHT_PER_CORE;
        let mut endpoints = Vec::new();
        for mirror in mirrors {
            if !mirror.samples(shard.random()) {
                continue;
            }
            match installed.next_endpoint(mirror.backend as usize) {
                Some(endpoint) if !too_big && !full => endpoints.push(CopyTarget {
                    endpoint,
                    http2: installed
                        .snapshot
                        .backends
                        .get(mirror.backend as usize)
                        .is_some_and(|b| b.protocol == BackendProtocol::Http2),
                    tls: installed
                        .upstream_tls
                        .get(mirror.backend as usize)
                        .cloned()
                        .flatten(),
                }),
                _ => increment(&counters.skipped),
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        let mut bytes = Vec::new();
        write_head(&mut bytes);
        // The head ends with an empty line; `connection: close` goes before it.
        bytes.truncate(bytes.len().saturating_sub(2));
        bytes.extend_from_slice(b"connection: close\r\n\r\n");
        Some(MirrorRequest {
            endpoints,
            head_len: bytes.len(),
            bytes,
            too_big: false,
        })
    }

    /// Drops copies that will not be sent (the request failed before its body was complete).
    pub fn abandon(self, counters: &MirrorCounters) {
        for _ in &self.endpoints {
            increment(&counters.skipped);
        }
    }

    /// Adds body bytes sent to the primary backend.
    pub fn tee(&mut self, piece: &[u8]) {
        if self.too_big {
            return;
        }
        if self.bytes.len() - self.head_len + piece.len() > MAX_COPY_BODY {
            self.too_big = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(piece);
    }

    /// Sends the copies from detached tasks.
    pub fn launch(self, counters: &Rc<MirrorCounters>, connect_timeout: Duration) {
        if self.too_big {
            self.abandon(counters);
            return;
        }
        let head_len = self.head_len;
        let bytes: Rc<[u8]> = self.bytes.into();
        for target in self.endpoints {
            if counters.in_flight.get() >= MAX_IN_FLIGHT_PER_CORE {
                increment(&counters.skipped);
                continue;
            }
            increment(&counters.in_flight);
            spawn_local(copy(
                target,
                bytes.clone(),
                head_len,
                counters.clone(),
                connect_timeout,
            ))
            .detach();
        }
    }
}

async fn copy(
    target: CopyTarget,
    bytes: Rc<[u8]>,
    head_len: usize,
    counters: Rc<MirrorCounters>,
    connect_timeout: Duration,
) {
    let delivery = async {
        if target.http2 {
            deliver_http2(&target, &bytes, head_len, connect_timeout).await
        } else {
            deliver(&target, &bytes, connect_timeout).await
        }
    };
    let delivered = delivery
        .or(async {
            Timer::new(COPY_DEADLINE).await;
            false
        })
        .await;
    counters
        .in_flight
        .set(counters.in_flight.get().saturating_sub(1));
    increment(if delivered {
        &counters.completed
    } else {
        &counters.failed
    });
}

/// Sends `bytes` and reads the answer to its end (the backend closes after it).
async fn deliver(target: &CopyTarget, bytes: &[u8], connect_timeout: Duration) -> bool {
    let tls = target.tls.as_deref();
    let mut upstream = match UpstreamConn::connect(target.endpoint, connect_timeout, tls).await {
        Ok(upstream) => upstream,
        Err(e) => {
            if let (ConnectError::Handshake(reason), Some(tls)) = (&e, tls) {
                tls.log_failure(target.endpoint, reason);
            }
            return false;
        }
    };
    if send(&mut upstream.stream, bytes).await.is_err() {
        return false;
    }
    let mut sink = vec![0u8; 4096];
    let mut answered = false;
    loop {
        match upstream.stream.read(&mut sink).await {
            Ok(0) => return answered,
            Ok(_) => answered = true,
            // A TLS backend may close without close_notify once it has answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return answered,
            Err(_) => return false,
        }
    }
}

/// Sends an HTTP/1.1-framed copy (`bytes`: head, then body as framed) to an HTTP/2 backend on a
/// connection of its own, and reads the answer to its end.
async fn deliver_http2(
    target: &CopyTarget,
    bytes: &[u8],
    head_len: usize,
    connect_timeout: Duration,
) -> bool {
    let mut head = RequestHead::default();
    if !matches!(request::parse(bytes, &OWN_HEAD_LIMITS, &mut head), Ok(true)) {
        return false;
    }
    let tls = target.tls.as_deref();
    let Ok(request) = h2_head::upstream_request(bytes, &head, tls.is_some(), false) else {
        return false;
    };
    let body = match copy_body(&bytes[head_len..], head.framing) {
        Some(body) => body,
        None => return false,
    };
    let Ok(upstream) = UpstreamConn::connect(target.endpoint, connect_timeout, tls).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        h2::client::handshake(http2_stream(Vec::new(), upstream.stream)).await
    else {
        return false;
    };
    spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    let Ok((response, mut stream)) = sender.send_request(request, body.is_empty()) else {
        return false;
    };
    if !body.is_empty()
        && (send_all(&mut stream, body, COPY_DEADLINE).await.is_err()
            || stream.send_data(Bytes::new(), true).is_err())
    {
        return false;
    }
    let Ok(response) = response.await else {
        return false;
    };
    let mut response_body = response.into_body();
    while let Some(data) = response_body.data().await {
        match data {
            Ok(data) => {
                let _ = response_body.flow_control().release_capacity(data.len());
            }
            Err(_) => return false,
        }
    }
    true
}

/// The body of a copy without its HTTP/1.1 framing. None when it is not well-formed.
fn copy_body(framed: &[u8], framing: RequestFraming) -> Option<Bytes> {
    match framing {
        RequestFraming::None => Some(Bytes::new()),
        RequestFraming::Length(_) => Some(Bytes::copy_from_slice(framed)),
        RequestFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::with_capacity(framed.len());
            let mut rest = framed;
            loop {
                let (consumed, decoded) = decoder.decode(rest).ok()?;
                match decoded {
                    Decoded::Data { start, end } => body.extend_from_slice(&rest[start..end]),
                    Decoded::Done => return Some(body.into()),
                    Decoded::NeedMore if consumed == 0 => return None,
                    Decoded::NeedMore => {}
                }
                rest = &rest[consumed..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_bodies_lose_their_http1_framing() {
        assert_eq!(copy_body(b"", RequestFraming::None).unwrap(), "");
        assert_eq!(copy_body(b"abc", RequestFraming::Length(3)).unwrap(), "abc");
        let chunked = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            copy_body(chunked, RequestFraming::Chunked).unwrap(),
            "abcde"
        );
        assert!(copy_body(b"3\r\nab", RequestFraming::Chunked).is_none());
    }
}
