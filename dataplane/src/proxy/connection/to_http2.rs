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
use crate::proxy::retry;
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
        if !matches!(
            request::parse(&conn.out, &OWN_HEAD_LIMITS, &mut upstream_head),
            Ok(true)
        ) {
            return self.fail(io, conn, Failure::Status(500), framing).await;
        }
        // Without a body, the request is all in `conn.out`: a retry opens a new stream for it.
        let replayable = framing == RequestFraming::None;
        let mut body_read = false;
        let mut retries = 0;
        let mut attempt = self
            .http2_attempt(io, conn, &upstream_head, &mut body_read)
            .await;
        let response = loop {
            let status = attempt.as_ref().map_or(0, |r| r.status().as_u16());
            let Some(wait) = retry::wait_before_retry(
                self.shard,
                self.rule,
                replayable,
                (&attempt, status),
                &mut retries,
                self.deadline,
            ) else {
                match attempt {
                    Ok(response) => break response,
                    Err(failure) => {
                        let unread = if body_read {
                            RequestFraming::None
                        } else {
                            framing
                        };
                        return self.fail(io, conn, failure, unread).await;
                    }
                }
            };
            // Dropping an abandoned response resets its stream.
            drop(attempt);
            glommio::timer::Timer::new(wait).await;
            if let Some(next) = self.installed.next_endpoint_of(self.share) {
                self.endpoint.set(next);
            }
            attempt = self
                .by_request_deadline(self.http2_attempt(io, conn, &upstream_head, &mut body_read))
                .await;
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

    /// One attempt at this exchange's endpoint: a stream on this core's HTTP/2 connection to
    /// it, the request (the client's body streamed through, which sets `body_read`), and the
    /// response head within the attempt's deadline.
    async fn http2_attempt<T: Transport>(
        &self,
        io: &mut T,
        conn: &mut Downstream,
        upstream_head: &RequestHead,
        body_read: &mut bool,
    ) -> Result<http::Response<h2::RecvStream>, Failure> {
        let framing = conn.head.framing;
        let request = head::upstream_request(&conn.out, upstream_head, self.tls.is_some(), false)
            .map_err(|_| Failure::Status(500))?;
        let key = PoolKey::new(self.endpoint.get(), self.tls.map(|tls| &*tls.settings));
        let connect_timeout = Duration::from_millis(self.settings.upstream_connect_timeout_ms);
        let mut sender = self
            .shard
            .http2_pool
            .ready(key, self.tls, connect_timeout)
            .await
            .map_err(|error| {
                error.record(&self.shard.counters, self.endpoint.get(), self.tls);
                Failure::Unanswered(502)
            })?;
        let (response, mut request_body) = sender
            .send_request(request, framing == RequestFraming::None)
            .map_err(|_| {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                Failure::Unanswered(502)
            })?;
        if framing != RequestFraming::None {
            if conn.head.expect_continue
                && conn.rx.is_empty()
                && send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
            {
                return Err(Failure::ClientGone);
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
                return Err(failure);
            }
            *body_read = true;
            if request_body.send_data(Bytes::new(), true).is_err() {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                return Err(Failure::Status(502));
            }
        }
        *body_read = true;
        self.launch_mirrors(&mut conn.mirror);

        let waited = match self.attempt_deadline() {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                glommio::timer::timeout(left, async { Ok(response.await) }).await
            }
            None => Ok(response.await),
        };
        match waited {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                Err(Failure::Unanswered(502))
            }
            Err(_) => {
                self.shard.counters.upstream_error(UpstreamError::Timeout);
                Err(Failure::Unanswered(504))
            }
        }
    }
}

fn after(keep_alive: bool) -> Next {
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}
