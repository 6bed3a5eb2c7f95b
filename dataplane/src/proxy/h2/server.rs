//! One HTTP/2 client connection: h2 does the framing, HPACK and flow control; every stream
//! is a task on this core that routes its request through the same tables, filters and
//! counters as an HTTP/1.1 request (see `head`) and forwards it (see `forward`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::panic::AssertUnwindSafe;

use futures_lite::{FutureExt, future};
use glommio::timer::Timer;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use portcullis_api::config::ProxySettings;

use crate::access_log::AccessLog;
use crate::error;
use crate::http::Version;
use crate::http::request;
use crate::http::response::{self, ResponseHead};
use crate::io::Transport;
use crate::metrics::increment;
use crate::proxy::connection::{ConnInfo, Downstream, NO_EDITS, Plan, cors_reply, plan};
use crate::proxy::h2::forward::Forward;
use crate::proxy::h2::head;
use crate::proxy::h2::io;
use crate::proxy::serialize::{self, HeaderEdits, Persistence};
use crate::route::host::{MAX_HOST_LEN, normalize};
use crate::shard::{Installed, Shard};
use crate::signal::Signal;

/// The HTTP/2 connection preface's first line, which no HTTP/1.1 request starts with.
pub const PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Streams a client may have open at once (RFC 9113 recommends at least 100).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Receive windows: a stream's request body flows without waiting on round trips.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes h2 buffers per stream beyond what the client's window lets out.
const SEND_BUFFER: usize = 64 * 1024;
/// How often an idle connection checks its idle timeout.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 connection whose first bytes (`preface`) were already read.
/// `server_name`: the TLS SNI, for connections that negotiated h2 in a TLS handshake.
pub async fn serve<T: Transport>(
    shard: Rc<Shard>,
    io: T,
    preface: Vec<u8>,
    info: ConnInfo,
    server_name: Option<Box<str>>,
) {
    let server_name: Option<Rc<str>> = server_name.map(Rc::from);
    let settings = shard.current().snapshot.settings.clone();
    // Reads wait on h2's own terms (idle and drain are handled below); writes to a client
    // that stopped reading give up after the body idle timeout.
    io.set_read_timeout(None);
    io.set_write_timeout(Some(Duration::from_millis(settings.body_idle_timeout_ms)));
    let header_timeout = Duration::from_millis(settings.header_read_timeout_ms);

    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(settings.max_header_bytes as u32)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .handshake::<_, Bytes>(io::stream(preface, io));
    let handshake = future::or(async { Some(handshake.await) }, async {
        Timer::new(header_timeout).await;
        None
    });
    let Some(Ok(mut connection)) = handshake.await else {
        return;
    };
    increment(&shard.counters.http2_connections);
    let streams = Rc::new(Streams::default());
    serve_streams(
        &shard,
        &settings,
        &mut connection,
        &streams,
        info,
        &server_name,
    )
    .await;
    // Nothing reaches the client once the connection is no longer polled, so streams still
    // running would only load their backends: they stop now, and the connection counts as
    // open (for draining and connection limits) until they have.
    streams.connection_gone.fire();
    drop(connection);
    if streams.open.get() > 0 {
        streams.all_stopped.wait().await;
    }
}

/// The streams of one connection, which end with it.
#[derive(Default)]
struct Streams {
    open: Cell<usize>,
    /// The connection ended: no stream can be answered any more.
    connection_gone: Signal,
    /// The last stream stopped after the connection ended.
    all_stopped: Signal,
}

impl Streams {
    fn stream_stopped(&self) {
        self.open.set(self.open.get() - 1);
        if self.open.get() == 0 && self.connection_gone.is_fired() {
            self.all_stopped.fire();
        }
    }
}

/// Accepts streams until the connection ends or fails (h2 has then told the client why).
async fn serve_streams<T: Transport>(
    shard: &Rc<Shard>,
    settings: &ProxySettings,
    connection: &mut h2::server::Connection<io::Stream<T>, Bytes>,
    streams: &Rc<Streams>,
    info: ConnInfo,
    server_name: &Option<Rc<str>>,
) {
    let idle_timeout = Duration::from_millis(settings.idle_timeout_ms);
    let max_streams = settings.max_requests_per_connection;
    let mut accepted: u64 = 0;
    let mut last_active = Instant::now();
    let mut shutting_down = false;
    loop {
        if !shutting_down && (shard.closing.is_fired() || shard.drain.is_fired()) {
            // GOAWAY: streams already open finish, no new ones start.
            connection.graceful_shutdown();
            shutting_down = true;
        }
        let next = future::or(async { Some(connection.accept().await) }, async {
            let tick = async {
                Timer::new(IDLE_CHECK).await;
            };
            if shutting_down {
                tick.await;
            } else {
                future::or(tick, shard.closing.wait()).await;
            }
            None
        })
        .await;
        match next {
            Some(Some(Ok((request, respond)))) => {
                last_active = Instant::now();
                increment(&shard.counters.http2_streams);
                accepted += 1;
                if max_streams > 0 && accepted >= max_streams && !shutting_down {
                    // The connection's last request: GOAWAY, so the client opens another
                    // (and balances over the cores and replicas again).
                    connection.graceful_shutdown();
                    shutting_down = true;
                }
                streams.open.set(streams.open.get() + 1);
                let shard = shard.clone();
                let streams = streams.clone();
                let server_name = server_name.clone();
                glommio::spawn_local(async move {
                    let tls = info.tls.then_some(server_name.as_deref());
                    let stream = future::or(
                        serve_stream(&shard, info, tls, request, respond),
                        streams.connection_gone.wait(),
                    );
                    // A panic resets this stream only (its handles are dropped); the
                    // connection and its other streams go on.
                    if AssertUnwindSafe(stream).catch_unwind().await.is_err() {
                        increment(&shard.counters.panics);
                        error!(
                            "HTTP/2 stream handler panicked; stream reset",
                            "core" = shard.id,
                            "port" = info.port
                        );
                    }
                    streams.stream_stopped();
                })
                .detach();
            }
            Some(Some(Err(_)) | None) => return,
            None => {
                if streams.open.get() > 0 {
                    last_active = Instant::now();
                } else if !shutting_down && last_active.elapsed() >= idle_timeout {
                    connection.graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// Routes and answers one stream. `tls`: the connection's TLS server name (SNI) when it
/// came over TLS.
async fn serve_stream(
    shard: &Shard,
    info: ConnInfo,
    tls: Option<Option<&str>>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = Instant::now();
    let installed = shard.current();
    let settings = &installed.snapshot.settings;
    let (parts, body) = request.into_parts();
    let te_trailers = parts
        .headers
        .get(http::header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut conn = Downstream::default();
    let limits = request::HeadLimits {
        max_header_count: settings.max_header_count,
        max_header_bytes: settings.max_header_bytes,
        max_request_line_bytes: settings.max_request_line_bytes,
    };
    let parsed = match head::request_as_h1(&parts, body.is_end_stream(), &mut conn.scratch) {
        Ok(()) => {
            conn.rx.append(&conn.scratch);
            match request::parse(conn.rx.data(), &limits, &mut conn.head) {
                Ok(true) => Ok(()),
                Ok(false) => Err(400),
                Err(error) => Err(error.status()),
            }
        }
        Err(_) => Err(400),
    };
    drop(parts);
    if parsed.is_ok() {
        crate::fault::on_request(conn.head.path(conn.rx.data()));
    }
    if let Err(status) = parsed {
        increment(&shard.counters.invalid_requests);
        installed.unmatched.record(status);
        let _ = answer_locally(&mut respond, &mut conn.out, status, None, false);
        return;
    }
    if shard.access_log.is_some() {
        AccessLog::begin(&mut conn.log_line, conn.rx.data(), &conn.head, &info);
    }
    let head_request = conn.head.is_head(conn.rx.data());
    if let Some(server_name) = tls
        && misdirected(
            &installed,
            info.port,
            server_name,
            conn.head.host(conn.rx.data()),
        )
    {
        let _ = answer_locally(&mut respond, &mut conn.out, 421, None, head_request);
        installed.unmatched.record(421);
        if let Some(log) = &shard.access_log {
            log.finish(&mut conn.log_line, 421, started.elapsed());
        }
        return;
    }
    let status = match plan(shard, &installed, &mut conn, &info) {
        Plan::Local {
            status,
            counters,
            cors,
        } => {
            let edits = cors_reply(cors, &conn.cors, false).map(|cors| HeaderEdits {
                rule: &NO_EDITS,
                backend: &NO_EDITS,
                cors: Some(cors),
            });
            let _ = answer_locally(&mut respond, &mut conn.out, status, edits, head_request);
            counters.record(status);
            status
        }
        Plan::Preflight {
            counters,
            cors,
            response_headers,
        } => {
            let edits = HeaderEdits {
                rule: response_headers,
                backend: &NO_EDITS,
                cors: cors_reply(Some(cors), &conn.cors, true),
            };
            let _ = answer_locally(&mut respond, &mut conn.out, 204, Some(edits), head_request);
            counters.record(204);
            204
        }
        Plan::Redirect {
            status,
            counters,
            rule_headers,
            cors,
        } => {
            let mut edits = HeaderEdits::new(rule_headers, &NO_EDITS);
            edits.cors = cors_reply(cors, &conn.cors, false);
            serialize::local_response(
                &mut conn.out,
                status,
                &[(b"location", &conn.scratch)],
                Some(edits),
                Persistence::KeepAlive,
                Version::Http11,
                head_request,
            );
            let _ = send_written(&mut respond, &conn.out);
            counters.record(status);
            status
        }
        Plan::Forward {
            rule,
            share,
            endpoint,
            tls,
            http2,
            counters,
            cors,
        } => {
            let forward = Forward {
                shard,
                installed: &installed,
                settings,
                rule,
                share,
                cors,
                endpoint: Cell::new(endpoint),
                tls,
                te_trailers,
                head_request,
                deadline: rule.request_timeout.map(|t| started + t),
            };
            let status = if http2 {
                forward.to_http2(&mut conn, body, &mut respond).await
            } else {
                forward.to_http1(&mut conn, body, &mut respond).await
            };
            counters.record(status);
            status
        }
    };
    if let Some(log) = &shard.access_log {
        log.finish(&mut conn.log_line, status, started.elapsed());
    }
}

/// Whether a request over TLS is for another listener than the one its connection was
/// made for (by SNI, which chose the certificate): HTTP/2 clients reuse a connection for
/// every host its certificate covers (RFC 9113 §9.1.1), and such a request must not reach
/// routes of a listener whose certificate it never saw. Answered 421 so the client retries
/// on a connection of its own (RFC 9110 §15.5.20).
fn misdirected(
    installed: &Installed,
    port: u16,
    server_name: Option<&str>,
    authority: &[u8],
) -> bool {
    let Some(port) = installed.snapshot.port(port) else {
        return false;
    };
    let mut sni_buf = [0u8; MAX_HOST_LEN + 1];
    let server_name = server_name.and_then(|name| normalize(name.as_bytes(), &mut sni_buf));
    let mut host_buf = [0u8; MAX_HOST_LEN + 1];
    let host = normalize(authority, &mut host_buf).unwrap_or("");
    match (port.select_for_sni(server_name), port.select(host)) {
        (Some(by_name), Some(by_host)) => !std::ptr::eq(by_name, by_host),
        _ => false,
    }
}

/// Answers with a response the proxy makes up (errors, preflights); the request body, if
/// any, is dropped (h2 resets the stream's receiving side).
pub(super) fn answer_locally(
    respond: &mut SendResponse<Bytes>,
    out: &mut Vec<u8>,
    status: u16,
    edits: Option<HeaderEdits<'_>>,
    head_request: bool,
) -> Result<(), ()> {
    serialize::local_response(
        out,
        status,
        &[],
        edits,
        Persistence::KeepAlive,
        Version::Http11,
        head_request,
    );
    send_written(respond, out)
}

/// Sends a complete response the engine wrote in HTTP/1.1 form (`out`: head and body).
pub(super) fn send_written(respond: &mut SendResponse<Bytes>, out: &[u8]) -> Result<(), ()> {
    let mut head = ResponseHead::default();
    if !matches!(
        response::parse(out, out.len(), 1024, false, &mut head),
        Ok(true)
    ) {
        return Err(());
    }
    let response = head::client_response(out, &head).map_err(|_| ())?;
    let body = &out[head.head_len..];
    let mut stream = respond
        .send_response(response, body.is_empty())
        .map_err(|_| ())?;
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .map_err(|_| ())?;
    }
    Ok(())
}
