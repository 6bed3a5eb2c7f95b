//! Forwarding one HTTP/2 stream: to an HTTP/2 backend over this core's multiplexed
//! connection (bodies and trailers both ways at once, as gRPC streaming needs), or to an
//! HTTP/1.1 backend over the core's keep-alive pool (the body is sent, then the response read).

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use glommio::timer::Timer;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use portcullis_api::config::ProxySettings;

use crate::http::Version;
use crate::http::chunked::{self, ChunkedDecoder, Decoded};
use crate::http::request::{self, RequestFraming, RequestHead};
use crate::http::response::{self, ResponseFraming};
use crate::io::{Transport, send};
use crate::metrics::UpstreamError;
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::connection::{Downstream, cors_reply};
use crate::proxy::failure::Failure;
use crate::proxy::h2::head::{self, OWN_HEAD_LIMITS};
use crate::proxy::h2::send_all;
use crate::proxy::h2::server::answer_locally;
use crate::proxy::mirror::MirrorRequest;
use crate::proxy::retry;
use crate::proxy::serialize::{self, HeaderEdits, OutFraming, Persistence};
use crate::proxy::upstream::{self, PoolKey, UpstreamConn};
use crate::route::cors::{CorsPolicy, CorsRequest};
use crate::route::table::{BackendShare, CompiledRule};
use crate::shard::{Installed, Shard};

/// Upstream bytes read per fill while relaying an HTTP/1.1 response body.
const BODY_BUFFER: usize = 16 * 1024;

pub(super) struct Forward<'a> {
    pub shard: &'a Shard,
    pub installed: &'a Installed,
    pub settings: &'a ProxySettings,
    pub rule: &'a CompiledRule,
    pub share: &'a BackendShare,
    pub cors: Option<&'a CorsPolicy>,
    /// The endpoint of this attempt (a retry moves on to the backend's next one).
    pub endpoint: Cell<SocketAddr>,
    pub tls: Option<&'a CoreTls>,
    /// The client sent `te: trailers`.
    pub te_trailers: bool,
    pub head_request: bool,
    /// The rule's request timeout, from when the request arrived.
    pub deadline: Option<Instant>,
}

impl Forward<'_> {
    /// Forwards to an HTTP/2 backend. `conn.out` holds the upstream head the engine wrote.
    pub async fn to_http2(
        &self,
        conn: &mut Downstream,
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> u16 {
        match self.exchange_http2(conn, body, respond).await {
            Ok(status) => status,
            Err(failure) => self.fail(conn, respond, failure),
        }
    }

    async fn exchange_http2(
        &self,
        conn: &mut Downstream,
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<u16, Failure> {
        let mut upstream_head = RequestHead::default();
        if !matches!(
            request::parse(&conn.out, &OWN_HEAD_LIMITS, &mut upstream_head),
            Ok(true)
        ) {
            return Err(Failure::Status(500));
        }
        // Without a body, the request is all in `conn.out`: a retry opens a new stream for it.
        let replayable = body.is_end_stream();
        let mut body = Some(body);
        let mut attempt = self
            .http2_attempt(conn, &upstream_head, &mut body, respond)
            .await;
        let mut retries = 0;
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
                break attempt?;
            };
            // Dropping an abandoned response resets its stream.
            drop(attempt);
            self.within_deadline(None, respond, Timer::new(wait))
                .await?;
            if let Some(next) = self.installed.next_endpoint_of(self.share) {
                self.endpoint.set(next);
            }
            attempt = self
                .http2_attempt(conn, &upstream_head, &mut body, respond)
                .await;
        };
        let (parts, mut response_body) = response.into_parts();
        let status = parts.status.as_u16();
        head::response_as_h1(&parts, &mut conn.scratch);
        drop(parts);
        let mut upstream_head = std::mem::take(&mut conn.response);
        if !matches!(
            response::parse(
                &conn.scratch,
                conn.scratch.len(),
                1024,
                false,
                &mut upstream_head
            ),
            Ok(true)
        ) {
            self.shard.counters.upstream_error(UpstreamError::Protocol);
            return Err(Failure::Status(502));
        }
        serialize::client_response(
            &mut conn.out,
            &conn.scratch,
            &upstream_head,
            self.response_edits(&conn.cors),
            OutFraming::None,
            Version::Http11,
            Persistence::KeepAlive,
        );
        let client_head = self.send_head(conn, respond, response_body.is_end_stream())?;
        let Some(mut client_body) = client_head else {
            return Ok(status);
        };
        loop {
            match response_body.data().await {
                Some(Ok(data)) => {
                    let len = data.len();
                    if send_all(&mut client_body, data, self.body_idle())
                        .await
                        .is_err()
                    {
                        return Ok(status);
                    }
                    let _ = response_body.flow_control().release_capacity(len);
                }
                Some(Err(_)) => {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    client_body.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Ok(status);
                }
                None => break,
            }
        }
        let _ = match response_body.trailers().await {
            Ok(Some(trailers)) if !trailers.is_empty() => client_body.send_trailers(trailers),
            Ok(_) => client_body.send_data(Bytes::new(), true),
            Err(_) => {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                client_body.send_reset(h2::Reason::INTERNAL_ERROR);
                Ok(())
            }
        };
        Ok(status)
    }

    /// One attempt at this forward's endpoint: a stream on this core's HTTP/2 connection to
    /// it (connected by the request's deadline), the request (its body, taken from `body`,
    /// streams on beside the response), and the response head within the attempt's deadline.
    async fn http2_attempt(
        &self,
        conn: &mut Downstream,
        upstream_head: &RequestHead,
        body: &mut Option<RecvStream>,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<http::Response<RecvStream>, Failure> {
        let request = head::upstream_request(
            &conn.out,
            upstream_head,
            self.tls.is_some(),
            self.te_trailers,
        )
        .map_err(|_| Failure::Status(500))?;
        let key = PoolKey::new(self.endpoint.get(), self.tls.map(|tls| &*tls.settings));
        let connect_timeout = Duration::from_millis(self.settings.upstream_connect_timeout_ms);
        let ready = self.shard.http2_pool.ready(key, self.tls, connect_timeout);
        let mut sender = self
            .within_deadline(self.deadline, respond, ready)
            .await?
            .map_err(|error| {
                error.record(&self.shard.counters, self.endpoint.get(), self.tls);
                Failure::Unanswered(502)
            })?;
        let end_of_stream = body.as_ref().is_none_or(RecvStream::is_end_stream);
        let (response, request_body) =
            sender.send_request(request, end_of_stream).map_err(|_| {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                Failure::Unanswered(502)
            })?;
        let mirror = conn.mirror.take();
        let chunked = conn.head.framing == RequestFraming::Chunked;
        // An ended body stays where it is (dropping it early is nothing the client asked for).
        let streamed = if end_of_stream { None } else { body.take() };
        match streamed {
            None => self.launch_mirror(mirror),
            Some(body) => {
                // The request body streams while the response comes back (full duplex).
                let copy = BodyCopy {
                    mirror,
                    chunked,
                    counters: self.shard.counters.mirrors.clone(),
                    connect_timeout,
                    idle: self.body_idle(),
                };
                glommio::spawn_local(relay_request_body(body, request_body, copy)).detach();
            }
        }
        self.within_deadline(self.attempt_deadline(), respond, response)
            .await?
            .map_err(|_| {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                Failure::Unanswered(502)
            })
    }

    /// Forwards to an HTTP/1.1 backend. `conn.out` holds the upstream head the engine wrote.
    pub async fn to_http1(
        &self,
        conn: &mut Downstream,
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> u16 {
        match self.exchange_http1(conn, body, respond).await {
            Ok(status) => status,
            Err(failure) => self.fail(conn, respond, failure),
        }
    }

    async fn exchange_http1(
        &self,
        conn: &mut Downstream,
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<u16, Failure> {
        // Without a body, `conn.out` holds the whole request, which a retry sends again.
        let replayable = conn.head.framing == RequestFraming::None;
        let mut attempt = self.send_http1_request(conn, body).await;
        let mut retries = 0;
        let mut upstream = loop {
            let outcome = match attempt {
                Ok(mut upstream) => self
                    .read_final_response_head(conn, &mut upstream, respond)
                    .await
                    .map(|()| upstream),
                Err(failure) => Err(failure),
            };
            let Some(wait) = retry::wait_before_retry(
                self.shard,
                self.rule,
                replayable,
                (&outcome, conn.response.status),
                &mut retries,
                self.deadline,
            ) else {
                break outcome?;
            };
            // A response is abandoned unread, and its connection with it.
            drop(outcome);
            self.within_deadline(None, respond, Timer::new(wait))
                .await?;
            if let Some(next) = self.installed.next_endpoint_of(self.share) {
                self.endpoint.set(next);
            }
            attempt = self
                .within_deadline(self.deadline, respond, self.deliver(&conn.out))
                .await
                .and_then(|delivered| delivered);
            if attempt.is_ok() {
                // The first attempt's connect may have failed before the copy could leave.
                self.launch_mirror(conn.mirror.take());
            }
        };
        let status = conn.response.status;
        if status == 101 {
            // HTTP/2 has no Upgrade; a backend switching protocols is broken.
            self.shard.counters.upstream_error(UpstreamError::Protocol);
            return Err(Failure::Status(502));
        }
        let framing = conn.response.framing;
        let reusable = conn.response.reusable;
        serialize::client_response(
            &mut conn.out,
            upstream.rx.data(),
            &conn.response,
            self.response_edits(&conn.cors),
            OutFraming::None,
            Version::Http11,
            Persistence::KeepAlive,
        );
        upstream.rx.consume(conn.response.head_len);
        let client_head = self.send_head(conn, respond, framing == ResponseFraming::None)?;
        let complete = match client_head {
            None => true,
            Some(mut client_body) => {
                let complete = self
                    .relay_http1_body(&mut upstream, framing, &mut client_body)
                    .await;
                if !complete {
                    client_body.send_reset(h2::Reason::INTERNAL_ERROR);
                }
                complete
            }
        };
        if complete && reusable {
            self.shard
                .pool
                .checkin(upstream, self.settings.upstream_max_idle_per_endpoint);
        }
        Ok(status)
    }

    /// Sends the request head and body to an HTTP/1.1 backend.
    async fn send_http1_request(
        &self,
        conn: &mut Downstream,
        mut body: RecvStream,
    ) -> Result<UpstreamConn, Failure> {
        let mut upstream = self.deliver(&conn.out).await?;
        let chunked = conn.head.framing == RequestFraming::Chunked;
        let mut mirror = conn.mirror.take();
        if conn.head.framing != RequestFraming::None {
            let body_idle = Duration::from_millis(self.settings.body_idle_timeout_ms);
            upstream.stream.set_write_timeout(Some(body_idle));
            loop {
                let data = match glommio::timer::timeout(body_idle, async { Ok(body.data().await) })
                    .await
                {
                    Ok(Some(Ok(data))) => data,
                    Ok(Some(Err(_))) => return Err(Failure::ClientGone),
                    Ok(None) => break,
                    // The client stopped sending its body.
                    Err(_) => return Err(Failure::Status(408)),
                };
                conn.scratch.clear();
                if chunked {
                    chunked::write_chunk_header(&mut conn.scratch, data.len());
                }
                conn.scratch.extend_from_slice(&data);
                if chunked {
                    conn.scratch.extend_from_slice(b"\r\n");
                }
                if let Some(mirror) = &mut mirror {
                    mirror.tee(&conn.scratch);
                }
                if !data.is_empty() && send(&mut upstream.stream, &conn.scratch).await.is_err() {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return Err(Failure::Status(502));
                }
                let _ = body.flow_control().release_capacity(data.len());
            }
            if chunked {
                if let Some(mirror) = &mut mirror {
                    mirror.tee(chunked::LAST_CHUNK);
                }
                if send(&mut upstream.stream, chunked::LAST_CHUNK)
                    .await
                    .is_err()
                {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return Err(Failure::Status(502));
                }
            }
        }
        drop(body);
        self.launch_mirror(mirror);

        Ok(upstream)
    }

    /// Reads the response head that answers the request, within the attempt's deadline;
    /// interim (1xx) responses are dropped.
    async fn read_final_response_head(
        &self,
        conn: &mut Downstream,
        upstream: &mut UpstreamConn,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), Failure> {
        let deadline = self.attempt_deadline();
        loop {
            self.within_deadline(deadline, respond, self.read_response_head(conn, upstream))
                .await??;
            if conn.response.status >= 200 {
                return Ok(());
            }
            upstream.rx.consume(conn.response.head_len);
        }
    }

    async fn read_response_head(
        &self,
        conn: &mut Downstream,
        upstream: &mut UpstreamConn,
    ) -> Result<(), Failure> {
        let max = self.settings.max_header_bytes;
        loop {
            if !upstream.rx.is_empty() {
                match response::parse(
                    upstream.rx.data(),
                    max,
                    self.settings.max_header_count,
                    self.head_request,
                    &mut conn.response,
                ) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(_) => {
                        self.shard.counters.upstream_error(UpstreamError::Protocol);
                        return Err(Failure::Status(502));
                    }
                }
            }
            match upstream.rx.fill(&mut upstream.stream, max + 1).await {
                Ok(n) if n > 0 => {}
                _ => {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return Err(Failure::Unanswered(502));
                }
            }
        }
    }

    /// Relays an HTTP/1.1 response body as DATA frames. Returns whether all of it went.
    async fn relay_http1_body(
        &self,
        upstream: &mut UpstreamConn,
        framing: ResponseFraming,
        client: &mut SendStream<Bytes>,
    ) -> bool {
        let idle = Duration::from_millis(self.settings.body_idle_timeout_ms);
        upstream.stream.set_read_timeout(Some(idle));
        let mut decoder = ChunkedDecoder::new();
        let mut remaining = match framing {
            ResponseFraming::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            if upstream.rx.is_empty() {
                match upstream.rx.fill(&mut upstream.stream, BODY_BUFFER).await {
                    Ok(0) if framing == ResponseFraming::UntilClose => {
                        return client.send_data(Bytes::new(), true).is_ok();
                    }
                    Ok(n) if n > 0 => {}
                    _ => {
                        self.shard.counters.upstream_error(UpstreamError::Reset);
                        return false;
                    }
                }
            }
            let (piece, consumed, done) = match framing {
                ResponseFraming::None => return client.send_data(Bytes::new(), true).is_ok(),
                ResponseFraming::Length(_) => {
                    let take = (upstream.rx.len() as u64).min(remaining) as usize;
                    remaining -= take as u64;
                    (
                        Bytes::copy_from_slice(&upstream.rx.data()[..take]),
                        take,
                        remaining == 0,
                    )
                }
                ResponseFraming::UntilClose => {
                    let all = upstream.rx.len();
                    (Bytes::copy_from_slice(upstream.rx.data()), all, false)
                }
                ResponseFraming::Chunked => match decoder.decode(upstream.rx.data()) {
                    Ok((consumed, Decoded::Data { start, end })) => (
                        Bytes::copy_from_slice(&upstream.rx.data()[start..end]),
                        consumed,
                        false,
                    ),
                    Ok((consumed, Decoded::NeedMore)) => (Bytes::new(), consumed, false),
                    Ok((consumed, Decoded::Done)) => (Bytes::new(), consumed, true),
                    Err(_) => {
                        self.shard.counters.upstream_error(UpstreamError::Protocol);
                        return false;
                    }
                },
            };
            upstream.rx.consume(consumed);
            if !piece.is_empty() && send_all(client, piece, idle).await.is_err() {
                return false;
            }
            if done {
                return client.send_data(Bytes::new(), true).is_ok();
            }
        }
    }

    /// Sends `request` to this attempt's endpoint (see [`upstream::deliver`]).
    async fn deliver(&self, request: &[u8]) -> Result<UpstreamConn, Failure> {
        let endpoint = self.endpoint.get();
        upstream::deliver(self.shard, self.settings, endpoint, self.tls, request)
            .await
            .ok_or(Failure::Unanswered(502))
    }

    fn response_edits<'r>(&'r self, request: &'r CorsRequest) -> HeaderEdits<'r> {
        HeaderEdits {
            rule: &self.rule.response_headers,
            backend: &self.share.response_headers,
            cors: cors_reply(self.cors, request, false),
        }
    }

    /// Sends the response head the engine wrote into `conn.out`. None when the response has
    /// no body (the stream ended with the head).
    fn send_head(
        &self,
        conn: &mut Downstream,
        respond: &mut SendResponse<Bytes>,
        end_of_stream: bool,
    ) -> Result<Option<SendStream<Bytes>>, Failure> {
        let mut client_head = std::mem::take(&mut conn.response);
        let parsed = response::parse(&conn.out, conn.out.len(), 1024, false, &mut client_head);
        let response = match parsed {
            Ok(true) => head::client_response(&conn.out, &client_head),
            _ => return Err(Failure::Status(502)),
        }
        .map_err(|_| Failure::Status(502))?;
        conn.response = client_head;
        let end_of_stream = end_of_stream || self.head_request;
        match respond.send_response(response, end_of_stream) {
            Ok(stream) if !end_of_stream => Ok(Some(stream)),
            Ok(_) => Ok(None),
            Err(_) => Err(Failure::ClientGone),
        }
    }

    fn body_idle(&self) -> Duration {
        Duration::from_millis(self.settings.body_idle_timeout_ms)
    }

    fn attempt_deadline(&self) -> Option<Instant> {
        let backend = self.rule.backend_timeout.map(|t| Instant::now() + t);
        match (backend, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs `work` until `deadline` (504), or until the client resets the stream.
    async fn within_deadline<F: Future>(
        &self,
        deadline: Option<Instant>,
        respond: &mut SendResponse<Bytes>,
        work: F,
    ) -> Result<F::Output, Failure> {
        let work = async { Ok(work.await) };
        let reset = async {
            let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
            Err(Failure::ClientGone)
        };
        let timed = async {
            match deadline {
                Some(deadline) => {
                    Timer::new(deadline.saturating_duration_since(Instant::now())).await;
                    self.shard.counters.upstream_error(UpstreamError::Timeout);
                    Err(Failure::Unanswered(504))
                }
                None => future::pending().await,
            }
        };
        future::or(work, future::or(reset, timed)).await
    }

    fn launch_mirror(&self, mirror: Option<Box<MirrorRequest>>) {
        if let Some(mirror) = mirror {
            let timeout = Duration::from_millis(self.settings.upstream_connect_timeout_ms);
            mirror.launch(&self.shard.counters.mirrors, timeout);
        }
    }

    /// Answers a forward that failed before its response head went out.
    fn fail(
        &self,
        conn: &mut Downstream,
        respond: &mut SendResponse<Bytes>,
        failure: Failure,
    ) -> u16 {
        if let Some(mirror) = conn.mirror.take() {
            mirror.abandon(&self.shard.counters.mirrors);
        }
        match failure {
            Failure::Status(status) | Failure::Unanswered(status) => {
                let edits = cors_reply(self.cors, &conn.cors, false).map(|cors| HeaderEdits {
                    rule: &crate::proxy::connection::NO_EDITS,
                    backend: &crate::proxy::connection::NO_EDITS,
                    cors: Some(cors),
                });
                let _ = answer_locally(respond, &mut conn.out, status, edits, self.head_request);
                status
            }
            // The client's own reset: logged as nginx does (499).
            Failure::ClientGone => 499,
        }
    }
}

/// Where a request body's copies go while it streams to an HTTP/2 backend.
struct BodyCopy {
    mirror: Option<Box<MirrorRequest>>,
    /// The copies are HTTP/1.1 with the body chunked.
    chunked: bool,
    counters: std::rc::Rc<crate::metrics::MirrorCounters>,
    connect_timeout: Duration,
    /// How long the backend's window may stay shut.
    idle: Duration,
}

/// Streams a client's request body and trailers to the backend's stream.
async fn relay_request_body(
    mut body: RecvStream,
    mut upstream: SendStream<Bytes>,
    mut copy: BodyCopy,
) {
    let mut framed = Vec::new();
    loop {
        match body.data().await {
            Some(Ok(data)) => {
                let len = data.len();
                if let Some(mirror) = &mut copy.mirror {
                    framed.clear();
                    if copy.chunked {
                        chunked::write_chunk_header(&mut framed, len);
                    }
                    framed.extend_from_slice(&data);
                    if copy.chunked {
                        framed.extend_from_slice(b"\r\n");
                    }
                    mirror.tee(&framed);
                }
                if send_all(&mut upstream, data, copy.idle).await.is_err() {
                    return abandon(copy);
                }
                let _ = body.flow_control().release_capacity(len);
            }
            Some(Err(_)) => {
                upstream.send_reset(h2::Reason::CANCEL);
                return abandon(copy);
            }
            None => break,
        }
    }
    let sent = match body.trailers().await {
        Ok(Some(trailers)) if !trailers.is_empty() => upstream.send_trailers(trailers),
        Ok(_) => upstream.send_data(Bytes::new(), true),
        Err(_) => {
            upstream.send_reset(h2::Reason::CANCEL);
            return abandon(copy);
        }
    };
    if sent.is_err() {
        return abandon(copy);
    }
    if let Some(mut mirror) = copy.mirror {
        if copy.chunked {
            mirror.tee(chunked::LAST_CHUNK);
        }
        mirror.launch(&copy.counters, copy.connect_timeout);
    }
}

fn abandon(copy: BodyCopy) {
    if let Some(mirror) = copy.mirror {
        mirror.abandon(&copy.counters);
    }
}
