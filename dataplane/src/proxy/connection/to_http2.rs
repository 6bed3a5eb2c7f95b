//! An HTTP/1.1 client's request to an HTTP/2 backend: the head the engine wrote becomes the
//! stream's HEADERS, the body (whatever its HTTP/1.1 framing) its DATA, and the response
//! comes back framed for the client (chunked when the backend declared no length). Trailers
//! from the backend are dropped: HTTP/1.1 clients did not ask for them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::SendStream;

use super::{
    BodySink, BodyStream, Downstream, Exchange, Failure, Next, OutFraming, cors_reply, persistence,
    send_paced, write_body_piece,
};
use crate::http::chunked;
use crate::http::request::{self, RequestFraming, RequestHead};
use crate::http::response;
use crate::io::{Transport, send};
use crate::metrics::UpstreamError;
use crate::proxy::h2::head::{self, OWN_HEAD_LIMITS};
use crate::proxy::h2::send_all;
use crate::proxy::min_rate::MinRate;
use crate::proxy::serialize::{self, HeaderEdits, client_framing};
use crate::proxy::upstream::PoolKey;
use crate::shard::Shard;

struct Http2Body<'a> {
    stream: &'a mut SendStream<Bytes>,
    /// How long the backend's flow-control window may stay shut.
    idle: Duration,
}

impl BodySink for Http2Body<'_> {
    fn set_write_timeout(&mut self, timeout: Duration) {
        self.idle = timeout;
    }

    async fn write(&mut self, shard: &Shard, _: &[u8], data: &[u8]) -> Result<(), Failure> {
        if data.is_empty() {
            return Ok(());
        }
        send_all(self.stream, Bytes::copy_from_slice(data), self.idle)
            .await
            .map_err(|_| {
                shard.counters.upstream_error(UpstreamError::Reset);
                Failure::Status(502)
            })
    }
}

impl Exchange<'_> {
    /// Runs the exchange over this core's HTTP/2 connection to the backend. The request head
    /// was consumed from `conn.rx`; the upstream head is in `conn.out`.
    pub(super) async fn run_over_http2<T: Transport>(
        &self,
        io: &mut T,
        conn: &mut Downstream,
    ) -> (u16, Next) {
        let framing = conn.head.framing;
        let client_version = conn.head.version;
        let mut upstream_head = RequestHead::default();
        let request = match request::parse(&conn.out, &OWN_HEAD_LIMITS, &mut upstream_head) {
            Ok(true) => {
                head::upstream_request(&conn.out, &upstream_head, self.tls.is_some(), false)
                    .map_err(|_| Failure::Status(500))
            }
            _ => Err(Failure::Status(500)),
        };
        let request = match request {
            Ok(request) => request,
            Err(failure) => return self.fail(io, conn, failure, framing).await,
        };
        let key = PoolKey::new(self.endpoint.get(), self.tls.map(|tls| &*tls.settings));
        let connect_timeout = Duration::from_millis(self.settings.upstream_connect_timeout_ms);
        let opened = match self
            .shard
            .http2_pool
            .ready(key, self.tls, connect_timeout)
            .await
        {
            Ok(mut sender) => sender
                .send_request(request, framing == RequestFraming::None)
                .map_err(|_| {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    Failure::Status(502)
                }),
            Err(error) => {
                error.record(&self.shard.counters, self.endpoint.get(), self.tls);
                Err(Failure::Status(502))
            }
        };
        let (response, mut request_body) = match opened {
            Ok(opened) => opened,
            Err(failure) => return self.fail(io, conn, failure, framing).await,
        };

        if framing != RequestFraming::None {
            if conn.head.expect_continue
                && conn.rx.is_empty()
                && send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
            {
                return (499, Next::Close);
            }
            let body = BodyStream {
                rx: &mut conn.rx,
                scratch: &mut conn.scratch,
                mirror: &mut conn.mirror,
            };
            let mut sink = Http2Body {
                stream: &mut request_body,
                idle: Duration::from_millis(self.settings.body_idle_timeout_ms),
            };
            if let Err(failure) = self.stream_request_body(io, body, &mut sink, framing).await {
                request_body.send_reset(h2::Reason::CANCEL);
                return self.fail(io, conn, failure, framing).await;
            }
            if request_body.send_data(Bytes::new(), true).is_err() {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                return self
                    .fail(io, conn, Failure::Status(502), RequestFraming::None)
                    .await;
            }
        }
        self.launch_mirrors(&mut conn.mirror);

        let waited = match self.attempt_deadline() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                glommio::timer::timeout(left, async { Ok(response.await) })
                    .await
                    .map_err(|_| Failure::Status(504))
            }
            None => Ok(response.await),
        };
        let response = match waited {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                return self
                    .fail(io, conn, Failure::Status(502), RequestFraming::None)
                    .await;
            }
            Err(failure) => {
                self.shard.counters.upstream_error(UpstreamError::Timeout);
                return self.fail(io, conn, failure, RequestFraming::None).await;
            }
        };
        let (parts, mut response_body) = response.into_parts();
        let status = parts.status.as_u16();
        head::response_as_h1(&parts, &mut conn.scratch);
        drop(parts);
        let parsed = response::parse(
            &conn.scratch,
            conn.scratch.len(),
            usize::MAX,
            self.head_request,
            &mut conn.response,
        );
        if !matches!(parsed, Ok(true)) {
            self.shard.counters.upstream_error(UpstreamError::Protocol);
            return self
                .fail(io, conn, Failure::Status(502), RequestFraming::None)
                .await;
        }
        // Without a declared length the body is chunked to the client.
        let out_framing = client_framing(conn.response.framing, client_version);
        let keep_alive = self.keep_alive
            && !self.shard.closing.is_fired()
            && out_framing != OutFraming::UntilClose;
        let edits = HeaderEdits {
            rule: &self.rule.response_headers,
            backend: &self.share.response_headers,
            cors: cors_reply(self.cors, &conn.cors, false),
        };
        serialize::client_response(
            &mut conn.out,
            &conn.scratch,
            &conn.response,
            edits,
            out_framing,
            client_version,
            persistence(keep_alive),
        );
        let mut rate = MinRate::start(self.settings, Instant::now());
        if send_paced(io, &conn.out, &mut rate).await.is_err() {
            return (status, Next::Close);
        }
        if out_framing == OutFraming::None {
            return (status, after(keep_alive));
        }
        let chunk_out = out_framing == OutFraming::Chunked;
        loop {
            match response_body.data().await {
                Some(Ok(data)) => {
                    let len = data.len();
                    if write_body_piece(io, &mut conn.scratch, &data, chunk_out, &mut rate)
                        .await
                        .is_err()
                    {
                        return (status, Next::Close);
                    }
                    let _ = response_body.flow_control().release_capacity(len);
                }
                Some(Err(_)) => {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return (status, Next::Close);
                }
                None => break,
            }
        }
        if chunk_out
            && send_paced(io, chunked::LAST_CHUNK, &mut rate)
                .await
                .is_err()
        {
            return (status, Next::Close);
        }
        io.set_write_timeout(Some(Duration::from_millis(
            self.settings.body_idle_timeout_ms,
        )));
        (status, after(keep_alive))
    }
}

fn after(keep_alive: bool) -> Next {
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}
