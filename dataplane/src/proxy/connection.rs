//! One downstream connection: read a request head, route it, answer locally or exchange it
//! with an upstream, repeat while the connection stays alive.
//!
//! Requests on a connection are handled strictly one after another, so pipelined requests
//! are answered in order. Each request takes the routing snapshot current when its head is
//! complete and keeps it to the end, so a config swap never changes a request mid-flight.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use portcullis_api::config::{BackendProtocol, ProxySettings};

use crate::access_log::AccessLog;
use crate::http::Version;
use crate::http::chunked::{self, ChunkedDecoder, Decoded};
use crate::http::request::{self, HeadLimits, RequestError, RequestFraming, RequestHead};
use crate::http::response::{self, ResponseFraming, ResponseHead};
use crate::io::{IDLE_READ_CHUNK, READ_CHUNK, RecvBuf, Transport, send};
use crate::metrics::{RouteCounters, UpstreamError, increment};
use crate::proxy::backend_tls::CoreTls;
use crate::proxy::failure::Failure;
use crate::proxy::h2;
use crate::proxy::min_rate::MinRate;
use crate::proxy::mirror::MirrorRequest;
use crate::proxy::redirect::{self, Origin};
use crate::proxy::retry;
use crate::proxy::serialize::{
    self, HeaderEdits, OutFraming, Persistence, UpstreamRequest, client_framing,
};
use crate::proxy::upstream::{self, UpstreamConn, UpstreamStream};
use crate::route::cors::{CorsPolicy, CorsReply, CorsRequest};
use crate::route::host::{MAX_HOST_LEN, normalize};
use crate::route::matcher::RequestView;
use crate::route::table::{BackendShare, CompiledRule, HeaderOps};
use crate::shard::{Installed, Shard};

/// How much of an unwanted request body is read and dropped to keep a connection alive
/// after a local answer; bigger bodies close the connection instead.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// Lingering close: how long and how much to keep reading after the last response, so the
/// client sees the response rather than a reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// Unconsumed bytes a receive buffer may hold while a body streams through it.
const BODY_BUFFER: usize = 16 * 1024;
/// How long a keep-alive connection waits for its next request with a receive buffer before
/// it parks without one. A busy client's next request comes well within it (no park, no extra
/// read); a longer window multiplies what a burst of new connections holds at once (about
/// 13 KiB each, estimated, until they park; 250 ms cost 1.7-1.9 KiB more per idle connection in
/// the bench).
const PARK_AFTER: Duration = Duration::from_millis(50);
/// Body bytes already buffered that go out in the same write as the head.
const COALESCE_BYTES: usize = 16 * 1024;

/// Facts about the connection that routing and forwarding need.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub port: u16,
    pub peer: SocketAddr,
    pub tls: bool,
}

impl ConnInfo {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

mod to_http2;

/// Per-connection buffers, reused across its requests. An HTTP/2 stream gets one of its own,
/// holding the HTTP/1.1 form of its request head (see `proxy::h2`).
#[derive(Default)]
pub(crate) struct Downstream {
    pub(crate) rx: RecvBuf,
    pub(crate) head: RequestHead,
    pub(crate) response: ResponseHead,
    pub(crate) out: Vec<u8>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) log_line: Vec<u8>,
    /// The Origin (and, for a preflight, what it asks for) of a request whose rule has a
    /// CORS filter that allows it.
    pub(crate) cors: CorsRequest,
    /// Copies of the current request for the rule's RequestMirror filters, until sent.
    pub(crate) mirror: Option<Box<MirrorRequest>>,
    served: u64,
}

enum HeadRead {
    Ready,
    /// The peer went away, or the connection idled out between requests, or a drain began.
    Closed,
    /// A request started but its head did not complete in time.
    TimedOut,
    Invalid(RequestError),
    /// A cleartext connection opened with the HTTP/2 preface (prior knowledge).
    Http2,
    /// Idle between requests for [`PARK_AFTER`]; this much of the idle timeout is left.
    Park(Duration),
}

/// What happens to the connection after a request.
enum Next {
    KeepAlive,
    Close,
    /// Close after reading and dropping what the client may still send.
    Linger,
    /// The upstream switched protocols: relay bytes both ways until either side closes.
    Tunnel(UpstreamConn),
}

/// Serves one connection until it closes. Between requests an idle connection parks: the
/// per-request state (buffers, parsed heads, the serving future itself) is dropped and only the
/// socket waits, so a keep-alive connection nobody uses costs little more than its socket.
pub async fn serve<T: Transport>(shard: Rc<Shard>, mut io: T, info: ConnInfo) {
    let mut resume = Resume::default();
    loop {
        // Bound apart from the await: a temporary would keep its (unboxed) size in this
        // future's state, and so would a binding of what it returns that outlived the match.
        let serving = Box::pin(serve_until_idle(shard.clone(), io, info, resume));
        let idle_left = match serving.await {
            Served::Closed => return,
            Served::Parked(parked) => {
                io = parked.io;
                resume.served = parked.served;
                parked.idle_left
            }
        };
        match park(&shard, &mut io, idle_left).await {
            Some(first) => resume.first = Some(first),
            None => return,
        }
    }
}

/// How [`serve_until_idle`] left the connection.
enum Served<T> {
    Closed,
    /// Idle for [`PARK_AFTER`] after a response.
    Parked(Parked<T>),
}

struct Parked<T> {
    io: T,
    served: u64,
    /// What remains of the idle timeout.
    idle_left: Duration,
}

/// Where a connection picks up after parking.
#[derive(Default, Clone, Copy)]
struct Resume {
    served: u64,
    /// The byte whose arrival ended the wait.
    first: Option<u8>,
}

/// Waits up to `idle_left` for the first byte of a parked connection's next request. A
/// one-byte read needs no buffer (glommio polls for readiness first). None: the client left,
/// the timeout passed, or a drain began.
async fn park<T: Transport>(shard: &Shard, io: &mut T, idle_left: Duration) -> Option<u8> {
    if shard.drain.is_fired() {
        return None;
    }
    io.release_idle_buffers();
    io.set_read_timeout(Some(idle_left));
    let mut first = [0u8; 1];
    let read = future::or(async { Some(io.read(&mut first).await) }, async {
        shard.drain.wait().await;
        None
    })
    .await;
    match read {
        Some(Ok(1)) => Some(first[0]),
        _ => None,
    }
}

/// Serves requests until the connection closes or idles long enough to park.
async fn serve_until_idle<T: Transport>(
    shard: Rc<Shard>,
    mut io: T,
    info: ConnInfo,
    resume: Resume,
) -> Served<T> {
    let mut conn = Downstream {
        served: resume.served,
        ..Downstream::default()
    };
    if let Some(first) = resume.first {
        conn.rx.append(&[first]);
    }
    loop {
        let read = {
            let waiting_with = shard.current();
            read_head(
                &shard,
                &mut io,
                &mut conn,
                &waiting_with.snapshot.settings,
                !info.tls,
            )
            .await
        };
        // Taken once the head is complete: a keep-alive connection may have waited for it
        // across a swap, and its request must not go out under the tables (backends, TLS
        // settings) the swap replaced.
        let installed = shard.current();
        match read {
            HeadRead::Ready => {}
            HeadRead::Http2 => {
                let preface = conn.rx.data().to_vec();
                drop(installed);
                let http2 = Box::pin(h2::serve(shard, io, preface, info, None));
                http2.await;
                return Served::Closed;
            }
            HeadRead::Closed => return Served::Closed,
            HeadRead::Park(idle_left) => {
                return Served::Parked(Parked {
                    io,
                    served: conn.served,
                    idle_left,
                });
            }
            HeadRead::TimedOut => {
                installed.unmatched.record(408);
                let _ = reply_local(
                    &mut io,
                    &mut conn.out,
                    408,
                    None,
                    Persistence::Close,
                    Version::Http11,
                    false,
                )
                .await;
                return Served::Closed;
            }
            HeadRead::Invalid(error) => {
                increment(&shard.counters.invalid_requests);
                installed.unmatched.record(error.status());
                let _ = reply_local(
                    &mut io,
                    &mut conn.out,
                    error.status(),
                    None,
                    Persistence::Close,
                    Version::Http11,
                    false,
                )
                .await;
                linger(&mut io).await;
                return Served::Closed;
            }
        }
        conn.served += 1;
        let started = Instant::now();
        // The exchange's state (upstream, parsers, nested futures: kilobytes) lives on the heap
        // only while a request is in flight, so an idle connection's task stays small.
        let exchange = Box::pin(handle(
            &shard, &installed, &mut io, &mut conn, &info, started,
        ));
        match exchange.await {
            Next::KeepAlive => continue,
            Next::Close => return Served::Closed,
            Next::Linger => {
                linger(&mut io).await;
                return Served::Closed;
            }
            Next::Tunnel(upstream) => {
                tunnel(io, conn.rx, upstream).await;
                return Served::Closed;
            }
        }
    }
}

async fn read_head<T: Transport>(
    shard: &Shard,
    io: &mut T,
    conn: &mut Downstream,
    settings: &ProxySettings,
    cleartext: bool,
) -> HeadRead {
    let limits = HeadLimits {
        max_header_count: settings.max_header_count,
        max_header_bytes: settings.max_header_bytes,
        max_request_line_bytes: settings.max_request_line_bytes,
    };
    let header_timeout = Duration::from_millis(settings.header_read_timeout_ms);
    let idle_timeout = Duration::from_millis(settings.idle_timeout_ms);
    let mut deadline: Option<Instant> = None;
    // Bytes of the buffer already looked at. The head is parsed again only when a line has
    // ended since (or a limit is crossed): re-parsing on every read would let a client that
    // sends its head a byte at a time make the proxy scan it quadratically.
    let mut scanned = 0;
    loop {
        if !conn.rx.is_empty() {
            let data = conn.rx.data();
            let line_ended = data[scanned.min(data.len())..].contains(&b'\n');
            let over_limit = data.len() > limits.max_header_bytes
                || (data.len() > limits.max_request_line_bytes + 1 && !data.contains(&b'\n'));
            scanned = data.len();
            if cleartext && conn.served == 0 && data.starts_with(h2::PREFACE_START) {
                return HeadRead::Http2;
            }
            if line_ended || over_limit {
                match request::parse(data, &limits, &mut conn.head) {
                    Ok(true) => return HeadRead::Ready,
                    Ok(false) => {}
                    Err(error) => return HeadRead::Invalid(error),
                }
            }
            deadline.get_or_insert_with(|| Instant::now() + header_timeout);
        }
        let wait = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => idle_timeout,
        };
        if wait.is_zero() {
            return HeadRead::TimedOut;
        }
        io.set_read_timeout(Some(wait));
        let limit = settings.max_header_bytes + 1;
        // Between requests a drain (the listeners closing) closes the connection at once; a new
        // connection still gets its first request answered, told `connection: close`.
        let read = if conn.rx.is_empty() && conn.served > 0 {
            if shard.drain.is_fired() {
                return HeadRead::Closed;
            }
            shrink_when_idle(&mut conn.out);
            shrink_when_idle(&mut conn.scratch);
            conn.cors.shrink_when_idle(IDLE_READ_CHUNK);
            let read = future::or(
                async { Some(wait_for_next_request(io, conn, limit, wait).await) },
                async {
                    shard.drain.wait().await;
                    None
                },
            )
            .await;
            match read {
                Some(Waited::Read(read)) => read,
                Some(Waited::Park(idle_left)) => return HeadRead::Park(idle_left),
                None => return HeadRead::Closed,
            }
        } else {
            conn.rx.fill(io, limit).await
        };
        match read {
            Ok(0) => return HeadRead::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !conn.rx.is_empty() => {
                return HeadRead::TimedOut;
            }
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// What waiting for a keep-alive connection's next request came to.
enum Waited {
    Read(std::io::Result<usize>),
    /// Nothing came within [`PARK_AFTER`]: the connection parks for the rest, `Duration`.
    Park(Duration),
}

/// Reads the start of the next request on a keep-alive connection, waiting up to `wait`. A
/// busy client's next request comes within [`PARK_AFTER`] and is read straight into the
/// buffer; after that the connection parks (see [`serve`]).
async fn wait_for_next_request<T: Transport>(
    io: &mut T,
    conn: &mut Downstream,
    limit: usize,
    wait: Duration,
) -> Waited {
    conn.rx.shrink_when_idle();
    if wait <= PARK_AFTER {
        return Waited::Read(conn.rx.fill_at_most(io, limit, IDLE_READ_CHUNK).await);
    }
    io.set_read_timeout(Some(PARK_AFTER));
    match conn.rx.fill_at_most(io, limit, IDLE_READ_CHUNK).await {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut && conn.rx.is_empty() => {
            Waited::Park(wait - PARK_AFTER)
        }
        other => Waited::Read(other),
    }
}

/// The routing decision for one request, made while the head is borrowed from the buffer.
pub(crate) enum Plan<'s> {
    Local {
        status: u16,
        counters: &'s RouteCounters,
        /// The rule's CORS filter, when it allows the request's origin.
        cors: Option<&'s CorsPolicy>,
    },
    /// A CORS preflight from an allowed origin, answered here.
    Preflight {
        counters: &'s RouteCounters,
        cors: &'s CorsPolicy,
        response_headers: &'s HeaderOps,
    },
    Redirect {
        status: u16,
        counters: &'s RouteCounters,
        rule_headers: &'s HeaderOps,
        cors: Option<&'s CorsPolicy>,
    },
    Forward {
        rule: &'s CompiledRule,
        share: &'s BackendShare,
        endpoint: SocketAddr,
        /// The backend's TLS settings; None: plaintext.
        tls: Option<&'s CoreTls>,
        /// The backend speaks HTTP/2.
        http2: bool,
        counters: &'s RouteCounters,
        cors: Option<&'s CorsPolicy>,
    },
}

/// The CORS headers for a response to `request`, when its rule's filter allowed it.
pub(crate) fn cors_reply<'a>(
    policy: Option<&'a CorsPolicy>,
    request: &'a CorsRequest,
    preflight: bool,
) -> Option<CorsReply<'a>> {
    policy.map(|policy| CorsReply {
        policy,
        request,
        preflight,
    })
}

pub(crate) static NO_EDITS: HeaderOps = HeaderOps {
    set: Vec::new(),
    add: Vec::new(),
    remove: Vec::new(),
};

async fn handle<T: Transport>(
    shard: &Shard,
    installed: &Rc<Installed>,
    io: &mut T,
    conn: &mut Downstream,
    info: &ConnInfo,
    started: Instant,
) -> Next {
    let snapshot = &installed.snapshot;
    let settings = &snapshot.settings;
    crate::fault::on_request(conn.head.path(conn.rx.data()));
    let plan = plan(shard, installed, conn, info);
    let head_len = conn.head.head_len;
    let client_version = conn.head.version;
    let head_request = conn.head.is_head(conn.rx.data());
    let mut keep_alive = conn.head.keep_alive
        && !shard.closing.is_fired()
        && (settings.max_requests_per_connection == 0
            || conn.served < settings.max_requests_per_connection);
    if shard.access_log.is_some() {
        AccessLog::begin(&mut conn.log_line, conn.rx.data(), &conn.head, info);
    }

    let (status, next) = match plan {
        Plan::Local {
            status,
            counters,
            cors,
        } => {
            let answer = LocalAnswer {
                status,
                rule_headers: &NO_EDITS,
                cors,
                preflight: false,
                head_request,
            };
            let (sent, consumed) =
                answer_locally(io, conn, answer, &mut keep_alive, settings).await;
            counters.record(status);
            (status, after_local(sent, keep_alive, consumed))
        }
        Plan::Preflight {
            counters,
            cors,
            response_headers,
        } => {
            let answer = LocalAnswer {
                status: 204,
                rule_headers: response_headers,
                cors: Some(cors),
                preflight: true,
                head_request,
            };
            let (sent, consumed) =
                answer_locally(io, conn, answer, &mut keep_alive, settings).await;
            counters.record(204);
            (204, after_local(sent, keep_alive, consumed))
        }
        Plan::Redirect {
            status,
            counters,
            rule_headers,
            cors,
        } => {
            let mut edits = HeaderEdits::new(rule_headers, &NO_EDITS);
            edits.cors = cors_reply(cors, &conn.cors, false);
            // The Location was written to `scratch` while planning.
            conn.rx.consume(head_len);
            let consumed = discard_body(io, &mut conn.rx, &conn.head, settings).await;
            keep_alive &= consumed;
            let location = std::mem::take(&mut conn.scratch);
            serialize::local_response(
                &mut conn.out,
                status,
                &[(b"location", &location)],
                Some(edits),
                persistence(keep_alive),
                client_version,
                head_request,
            );
            conn.scratch = location;
            let sent = send(io, &conn.out).await.is_ok();
            counters.record(status);
            (status, after_local(sent, keep_alive, consumed))
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
            let exchange = Exchange {
                http2,
                shard,
                installed,
                settings,
                rule,
                share,
                cors,
                endpoint: Cell::new(endpoint),
                tls,
                keep_alive,
                head_request,
                deadline: rule.request_timeout.map(|t| started + t),
            };
            let (status, next) = exchange.run(io, conn).await;
            counters.record(status);
            (status, next)
        }
    };
    if let Some(log) = &shard.access_log {
        log.finish(&mut conn.log_line, status, started.elapsed());
    }
    next
}

fn after_local(sent: bool, keep_alive: bool, body_consumed: bool) -> Next {
    match (sent, keep_alive, body_consumed) {
        (false, _, _) => Next::Close,
        (true, true, _) => Next::KeepAlive,
        (true, false, true) => Next::Close,
        (true, false, false) => Next::Linger,
    }
}

fn persistence(keep_alive: bool) -> Persistence {
    if keep_alive {
        Persistence::KeepAlive
    } else {
        Persistence::Close
    }
}

/// Routes the request and, for forwarded requests, serializes the upstream head into
/// `conn.out` (the Location of a redirect into `conn.scratch`).
pub(crate) fn plan<'s>(
    shard: &Shard,
    installed: &'s Installed,
    conn: &mut Downstream,
    info: &ConnInfo,
) -> Plan<'s> {
    let snapshot = &installed.snapshot;
    if let Some(unsent) = conn.mirror.take() {
        // The previous request failed before its body was complete.
        unsent.abandon(&shard.counters.mirrors);
    }
    let buf = conn.rx.data();
    let head = &conn.head;
    let mut host_buf = [0u8; MAX_HOST_LEN + 1];
    let host = normalize(head.host(buf), &mut host_buf).unwrap_or("");
    let listener = snapshot.port(info.port).and_then(|port| port.select(host));
    let Some(listener) = listener else {
        return Plan::Local {
            status: 404,
            counters: &installed.unmatched,
            cors: None,
        };
    };
    let view = RequestView {
        method: head.method(buf),
        path: head.path(buf),
        query: head.query(buf),
        buf,
        headers: &head.headers,
    };
    let Some(found) = listener.find(host, &view) else {
        return Plan::Local {
            status: 404,
            counters: &installed.stats[listener.no_route_stat_slot as usize],
            cors: None,
        };
    };
    let rule = found.rule;
    let counters = &*installed.stats[rule.stat_slot as usize];
    let mut cors = None;
    if let Some(policy) = rule.cors.as_deref()
        && let Some(request_origin) = head.header(buf, "origin")
    {
        let requested_method = head.header(buf, "access-control-request-method");
        let allowed = policy.allows(request_origin);
        match requested_method {
            // A preflight never reaches the backend: the filter owns the answer.
            Some(method) if view.method == b"OPTIONS" => {
                if !allowed {
                    return Plan::Local {
                        status: 403,
                        counters,
                        cors: None,
                    };
                }
                let requested_headers = head
                    .header(buf, "access-control-request-headers")
                    .unwrap_or_default();
                conn.cors.capture(request_origin, method, requested_headers);
                return Plan::Preflight {
                    counters,
                    cors: policy,
                    response_headers: &rule.response_headers,
                };
            }
            _ if allowed => {
                conn.cors.capture(request_origin, b"", b"");
                cors = Some(policy);
            }
            _ => {}
        }
    }
    if let Some(redirect_filter) = &rule.redirect {
        let origin = Origin {
            scheme: info.scheme(),
            authority: head.host(buf),
            listener_port: info.port,
            path: view.path,
            matched_prefix_len: found.entry.matcher.matched_prefix_len(),
            query: view.query,
        };
        redirect::location(&mut conn.scratch, redirect_filter, &origin);
        return Plan::Redirect {
            status: redirect_filter.status,
            counters,
            rule_headers: &rule.response_headers,
            cors,
        };
    }
    let server_error = |counters| Plan::Local {
        status: 500,
        counters,
        cors,
    };
    let Some(share) = rule.backends.pick(shard.random()) else {
        return server_error(counters);
    };
    let backend_index = match &share.target {
        Ok(index) => *index as usize,
        Err(_) => return server_error(counters),
    };
    let Some(endpoint) = installed.next_endpoint(backend_index) else {
        return Plan::Local {
            status: 503,
            counters,
            cors,
        };
    };

    let mut rewritten_path = std::mem::take(&mut conn.scratch);
    rewritten_path.clear();
    let rewrite_path = rule.rewrite.as_ref().and_then(|r| r.path.as_ref());
    if let Some(rewrite) = rewrite_path {
        rewrite.apply(
            view.path,
            found.entry.matcher.matched_prefix_len(),
            &mut rewritten_path,
        );
    }
    let request = UpstreamRequest {
        path: rewrite_path.map(|_| rewritten_path.as_slice()),
        host: rule.rewrite.as_ref().and_then(|r| r.hostname.as_deref()),
        edits: HeaderEdits::new(&rule.request_headers, &share.request_headers),
        peer: info.peer,
        tls: info.tls,
        endpoint,
    };
    serialize::upstream_request(&mut conn.out, buf, head, &request);
    // An upgraded connection becomes a tunnel, which cannot be copied.
    if !rule.mirrors.is_empty() && !head.upgrade {
        // The copy gets the rule's edits but not those of the primary backendRef.
        let copy = UpstreamRequest {
            edits: HeaderEdits::new(&rule.request_headers, &NO_EDITS),
            ..request
        };
        conn.mirror = MirrorRequest::prepare(
            shard,
            installed,
            &rule.mirrors,
            head.framing,
            |out: &mut Vec<u8>| serialize::upstream_request(out, buf, head, &copy),
        )
        .map(Box::new);
    }
    conn.scratch = rewritten_path;
    let tls = installed
        .upstream_tls
        .get(backend_index)
        .and_then(|tls| tls.as_deref());
    let http2 = snapshot
        .backends
        .get(backend_index)
        .is_some_and(|backend| backend.protocol == BackendProtocol::Http2);
    Plan::Forward {
        rule,
        share,
        endpoint,
        tls,
        http2,
        counters,
        cors,
    }
}

/// A response the proxy makes up for a routed request.
struct LocalAnswer<'a> {
    status: u16,
    rule_headers: &'a HeaderOps,
    /// The rule's CORS filter, when it allows the request's origin.
    cors: Option<&'a CorsPolicy>,
    preflight: bool,
    head_request: bool,
}

/// Drops the request's body (up to a cap) and sends `answer`. Returns whether the answer
/// went out and whether the body was fully read.
async fn answer_locally<T: Transport>(
    io: &mut T,
    conn: &mut Downstream,
    answer: LocalAnswer<'_>,
    keep_alive: &mut bool,
    settings: &ProxySettings,
) -> (bool, bool) {
    conn.rx.consume(conn.head.head_len);
    let consumed = discard_body(io, &mut conn.rx, &conn.head, settings).await;
    *keep_alive &= consumed;
    let edits = cors_reply(answer.cors, &conn.cors, answer.preflight).map(|cors| HeaderEdits {
        rule: answer.rule_headers,
        backend: &NO_EDITS,
        cors: Some(cors),
    });
    let sent = reply_local(
        io,
        &mut conn.out,
        answer.status,
        edits,
        persistence(*keep_alive),
        conn.head.version,
        answer.head_request,
    )
    .await;
    (sent, consumed)
}

async fn reply_local<T: Transport>(
    io: &mut T,
    out: &mut Vec<u8>,
    status: u16,
    edits: Option<HeaderEdits<'_>>,
    persistence: Persistence,
    client: Version,
    head_request: bool,
) -> bool {
    serialize::local_response(out, status, &[], edits, persistence, client, head_request);
    send(io, out).await.is_ok()
}

/// Reads and drops a request body the proxy will not forward. Returns whether all of it was
/// consumed (only then may the connection carry another request).
async fn discard_body<T: Transport>(
    io: &mut T,
    rx: &mut RecvBuf,
    head: &RequestHead,
    settings: &ProxySettings,
) -> bool {
    if head.expect_continue && rx.is_empty() && head.framing != RequestFraming::None {
        // The client waits for 100 Continue before sending the body; answer now instead of
        // waiting for a body that will not come, and close afterwards (RFC 9110 §10.1.1).
        return false;
    }
    let mut rate = MinRate::start(settings, Instant::now());
    match head.framing {
        RequestFraming::None => true,
        RequestFraming::Length(n) if n > DISCARD_LIMIT => false,
        RequestFraming::Length(mut remaining) => {
            while remaining > 0 {
                if rx.is_empty() && fill_body(io, rx, &mut rate).await.is_err() {
                    return false;
                }
                let take = (rx.len() as u64).min(remaining);
                rx.consume(take as usize);
                remaining -= take;
            }
            true
        }
        RequestFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut total = 0u64;
            loop {
                if rx.is_empty() && fill_body(io, rx, &mut rate).await.is_err() {
                    return false;
                }
                let Ok((consumed, decoded)) = decoder.decode(rx.data()) else {
                    return false;
                };
                rx.consume(consumed);
                total += consumed as u64;
                match decoded {
                    Decoded::Done => return true,
                    _ if total > DISCARD_LIMIT => return false,
                    _ => {}
                }
            }
        }
    }
}

/// Drops a per-connection scratch buffer that grew past what an idle connection keeps.
fn shrink_when_idle(buf: &mut Vec<u8>) {
    if buf.capacity() > IDLE_READ_CHUNK {
        *buf = Vec::new();
    }
}

/// After the last response: stop sending, then read and drop what the client still sends
/// for a moment, so closing does not reset the connection before the response is read.
pub(crate) async fn linger<T: Transport>(io: &mut T) {
    let _ = io.close().await;
    io.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    // On the heap: an array here would sit in every connection's future, idle or not.
    let mut sink = vec![0u8; 4096];
    let mut total = 0;
    while total < LINGER_BYTES && Instant::now() < deadline {
        match io.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// One request's exchange with an upstream.
struct Exchange<'a> {
    /// The backend speaks HTTP/2.
    http2: bool,
    shard: &'a Shard,
    installed: &'a Installed,
    settings: &'a ProxySettings,
    rule: &'a CompiledRule,
    share: &'a BackendShare,
    cors: Option<&'a CorsPolicy>,
    /// The endpoint of this attempt (a retry moves on to the backend's next one).
    endpoint: Cell<SocketAddr>,
    tls: Option<&'a CoreTls>,
    keep_alive: bool,
    head_request: bool,
    deadline: Option<Instant>,
}

/// Where a request body streams from, and who else gets a copy of it.
struct BodyStream<'a> {
    rx: &'a mut RecvBuf,
    scratch: &'a mut Vec<u8>,
    mirror: &'a mut Option<Box<MirrorRequest>>,
}

impl Exchange<'_> {
    /// Header edits for an error the proxy answers itself: only the CORS headers, so a
    /// browser lets the page see the error.
    fn error_edits<'r>(&'r self, request: &'r CorsRequest) -> Option<HeaderEdits<'r>> {
        cors_reply(self.cors, request, false).map(|cors| HeaderEdits {
            rule: &NO_EDITS,
            backend: &NO_EDITS,
            cors: Some(cors),
        })
    }

    async fn run<T: Transport>(&self, io: &mut T, conn: &mut Downstream) -> (u16, Next) {
        let head_len = conn.head.head_len;
        let framing = conn.head.framing;
        let client_version = conn.head.version;
        conn.rx.consume(head_len);
        if self.http2 {
            return self.run_over_http2(io, conn).await;
        }

        let (sent, replayable) = self.send_request(io, conn).await;
        // A request that failed while its body was still coming leaves the rest unread.
        let unread_body = match sent {
            Err(_) if !replayable => framing,
            _ => RequestFraming::None,
        };
        let mut attempt = sent;
        let mut retries = 0;
        let mut upstream = loop {
            let outcome = match attempt {
                Ok(mut upstream) => self
                    .read_final_response_head(&mut upstream, conn)
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
                match outcome {
                    Ok(upstream) => break upstream,
                    Err(failure) => return self.fail(io, conn, failure, unread_body).await,
                }
            };
            // A response is abandoned unread, and its connection with it.
            drop(outcome);
            glommio::timer::Timer::new(wait).await;
            if let Some(next) = self.installed.next_endpoint_of(self.share) {
                self.endpoint.set(next);
            }
            // `conn.out` still holds the whole request.
            attempt = self.by_request_deadline(self.deliver(&conn.out)).await;
            if attempt.is_ok() {
                // Copies of a request held whole leave once it has gone out; the first
                // attempt's connect may have failed before they could.
                self.launch_mirrors(&mut conn.mirror);
            }
        };

        let status = conn.response.status;
        let edits = HeaderEdits {
            rule: &self.rule.response_headers,
            backend: &self.share.response_headers,
            cors: cors_reply(self.cors, &conn.cors, false),
        };
        if status == 101 {
            serialize::client_response(
                &mut conn.out,
                upstream.rx.data(),
                &conn.response,
                edits,
                OutFraming::None,
                client_version,
                Persistence::KeepAlive,
            );
            upstream.rx.consume(conn.response.head_len);
            if send(io, &conn.out).await.is_err() {
                return (101, Next::Close);
            }
            return (101, Next::Tunnel(upstream));
        }

        let out_framing = client_framing(conn.response.framing, client_version);
        // A drain that began while the upstream was working closes this connection too.
        let keep_alive = self.keep_alive
            && !self.shard.closing.is_fired()
            && out_framing != OutFraming::UntilClose;
        serialize::client_response(
            &mut conn.out,
            upstream.rx.data(),
            &conn.response,
            edits,
            out_framing,
            client_version,
            persistence(keep_alive),
        );
        upstream.rx.consume(conn.response.head_len);
        let mut upstream_framing = conn.response.framing;
        let reusable = conn.response.reusable;
        // Send the head together with the body bytes already received: one write instead of
        // two for the common small response.
        if let (ResponseFraming::Length(n), OutFraming::Length(_)) = (upstream_framing, out_framing)
        {
            let take = (n as usize).min(upstream.rx.len()).min(COALESCE_BYTES);
            conn.out.extend_from_slice(&upstream.rx.data()[..take]);
            upstream.rx.consume(take);
            upstream_framing = ResponseFraming::Length(n - take as u64);
        }
        let mut rate = MinRate::start(self.settings, Instant::now());
        if send_paced(io, &conn.out, &mut rate).await.is_err() {
            return (status, Next::Close);
        }
        let relayed = self
            .relay_response_body(
                io,
                &mut upstream,
                (upstream_framing, out_framing),
                &mut conn.out,
                &mut rate,
            )
            .await;
        // Later local answers on this connection wait no longer than the idle timeout, not
        // whatever the rate left over.
        io.set_write_timeout(Some(Duration::from_millis(
            self.settings.body_idle_timeout_ms,
        )));
        match relayed {
            Ok(()) => {
                if reusable {
                    self.shard
                        .pool
                        .checkin(upstream, self.settings.upstream_max_idle_per_endpoint);
                }
                let next = if keep_alive {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
                (status, next)
            }
            Err(()) => (status, Next::Close),
        }
    }

    /// Reads the response head that answers the request: interim (1xx) responses are
    /// dropped (the proxy already answered `Expect` itself), and a 101 only answers an
    /// upgrade request.
    async fn read_final_response_head(
        &self,
        upstream: &mut UpstreamConn,
        conn: &mut Downstream,
    ) -> Result<(), Failure> {
        let backend_deadline = self.attempt_deadline();
        loop {
            self.read_response_head(upstream, &mut conn.response, backend_deadline)
                .await?;
            match conn.response.status {
                101 if !conn.head.upgrade => {
                    self.shard.counters.upstream_error(UpstreamError::Protocol);
                    return Err(Failure::Status(502));
                }
                101 | 200.. => return Ok(()),
                _ => upstream.rx.consume(conn.response.head_len),
            }
        }
    }

    /// `work`, or a 504 once the request's deadline passes.
    async fn by_request_deadline<R>(
        &self,
        work: impl Future<Output = Result<R, Failure>>,
    ) -> Result<R, Failure> {
        let Some(deadline) = self.deadline else {
            return work.await;
        };
        future::or(work, async {
            glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now())).await;
            self.shard.counters.upstream_error(UpstreamError::Timeout);
            Err(Failure::Status(504))
        })
        .await
    }

    fn attempt_deadline(&self) -> Option<Instant> {
        let backend = self.rule.backend_timeout.map(|t| Instant::now() + t);
        match (backend, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Connects (or reuses a pooled connection) and sends the head and body. Also says
    /// whether the whole request is in `conn.out` (a retry can send it again), failed or not.
    async fn send_request<T: Transport>(
        &self,
        io: &mut T,
        conn: &mut Downstream,
    ) -> (Result<UpstreamConn, Failure>, bool) {
        let mut framing = conn.head.framing;
        let body_started = !conn.rx.is_empty();
        if framing == RequestFraming::None {
            self.launch_mirrors(&mut conn.mirror);
        }
        if let RequestFraming::Length(n) = framing {
            // Body bytes that came with the head travel in the same write.
            let take = (n as usize).min(conn.rx.len()).min(COALESCE_BYTES);
            conn.out.extend_from_slice(&conn.rx.data()[..take]);
            if let Some(mirror) = &mut conn.mirror {
                mirror.tee(&conn.rx.data()[..take]);
            }
            conn.rx.consume(take);
            framing = match n - take as u64 {
                0 => RequestFraming::None,
                rest => RequestFraming::Length(rest),
            };
        }
        let whole = framing == RequestFraming::None;
        let sent = async {
            let mut upstream = self.deliver(&conn.out).await?;
            if !whole {
                if conn.head.expect_continue
                    && !body_started
                    && send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                {
                    return Err(Failure::ClientGone);
                }
                let body = BodyStream {
                    rx: &mut conn.rx,
                    scratch: &mut conn.scratch,
                    mirror: &mut conn.mirror,
                };
                let mut sink = Http1Body(&mut upstream.stream);
                self.stream_request_body(io, body, &mut sink, framing)
                    .await?;
            }
            // With a body, the copies leave once all of it is in.
            self.launch_mirrors(&mut conn.mirror);
            Ok(upstream)
        };
        (sent.await, whole)
    }

    /// Sends `request` to this attempt's endpoint (see [`upstream::deliver`]).
    async fn deliver(&self, request: &[u8]) -> Result<UpstreamConn, Failure> {
        let endpoint = self.endpoint.get();
        upstream::deliver(self.shard, self.settings, endpoint, self.tls, request)
            .await
            .ok_or(Failure::Unanswered(502))
    }

    fn launch_mirrors(&self, mirror: &mut Option<Box<MirrorRequest>>) {
        if let Some(mirror) = mirror.take() {
            let connect_timeout = Duration::from_millis(self.settings.upstream_connect_timeout_ms);
            mirror.launch(&self.shard.counters.mirrors, connect_timeout);
        }
    }

    async fn stream_request_body<T: Transport, S: BodySink>(
        &self,
        io: &mut T,
        body: BodyStream<'_>,
        upstream: &mut S,
        framing: RequestFraming,
    ) -> Result<(), Failure> {
        let BodyStream {
            rx,
            scratch,
            mirror,
        } = body;
        let mut rate = MinRate::start(self.settings, Instant::now());
        upstream.set_write_timeout(Duration::from_millis(self.settings.body_idle_timeout_ms));
        match framing {
            RequestFraming::None => Ok(()),
            RequestFraming::Length(mut remaining) => {
                while remaining > 0 {
                    if rx.is_empty() {
                        fill_body(io, rx, &mut rate).await?;
                    }
                    let take = (rx.len() as u64).min(remaining) as usize;
                    let piece = &rx.data()[..take];
                    upstream.write(self.shard, piece, piece).await?;
                    if let Some(mirror) = mirror.as_mut() {
                        mirror.tee(&rx.data()[..take]);
                    }
                    rx.consume(take);
                    remaining -= take as u64;
                }
                Ok(())
            }
            RequestFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    if rx.is_empty() {
                        fill_body(io, rx, &mut rate).await?;
                    }
                    let (consumed, decoded) = decoder
                        .decode(rx.data())
                        .map_err(|_| Failure::Status(400))?;
                    match decoded {
                        Decoded::Data { start, end } => {
                            scratch.clear();
                            chunked::write_chunk_header(scratch, end - start);
                            scratch.extend_from_slice(&rx.data()[start..end]);
                            scratch.extend_from_slice(b"\r\n");
                            let data = &rx.data()[start..end];
                            upstream.write(self.shard, scratch, data).await?;
                            if let Some(mirror) = mirror.as_mut() {
                                mirror.tee(scratch);
                            }
                        }
                        Decoded::Done => {
                            rx.consume(consumed);
                            upstream.write(self.shard, chunked::LAST_CHUNK, b"").await?;
                            if let Some(mirror) = mirror.as_mut() {
                                mirror.tee(chunked::LAST_CHUNK);
                            }
                            return Ok(());
                        }
                        Decoded::NeedMore => {}
                    }
                    rx.consume(consumed);
                }
            }
        }
    }

    async fn read_response_head(
        &self,
        upstream: &mut UpstreamConn,
        head: &mut ResponseHead,
        deadline: Option<Instant>,
    ) -> Result<(), Failure> {
        loop {
            if !upstream.rx.is_empty() {
                match response::parse(
                    upstream.rx.data(),
                    self.settings.max_header_bytes,
                    self.settings.max_header_count,
                    self.head_request,
                    head,
                ) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(_) => {
                        self.shard.counters.upstream_error(UpstreamError::Protocol);
                        return Err(Failure::Status(502));
                    }
                }
            }
            let timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.shard.counters.upstream_error(UpstreamError::Timeout);
                        return Err(Failure::Unanswered(504));
                    }
                    Some(left)
                }
                None => None,
            };
            upstream.stream.set_read_timeout(timeout);
            // A pooled connection keeps a small buffer (`Pool::checkin`); a head that starts
            // in it needs no allocation, nor the zeroing of a fresh 16 KiB.
            let chunk = if upstream.rx.is_empty() {
                IDLE_READ_CHUNK
            } else {
                READ_CHUNK
            };
            match upstream
                .rx
                .fill_at_most(
                    &mut upstream.stream,
                    self.settings.max_header_bytes + 1,
                    chunk,
                )
                .await
            {
                Ok(n) if n > 0 => {}
                Ok(_) => {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return Err(Failure::Unanswered(502));
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.shard.counters.upstream_error(UpstreamError::Timeout);
                    return Err(Failure::Unanswered(504));
                }
                Err(_) => {
                    self.shard.counters.upstream_error(UpstreamError::Reset);
                    return Err(Failure::Unanswered(502));
                }
            }
        }
    }

    async fn relay_response_body<T: Transport>(
        &self,
        io: &mut T,
        upstream: &mut UpstreamConn,
        (from, to): (ResponseFraming, OutFraming),
        out: &mut Vec<u8>,
        rate: &mut MinRate,
    ) -> Result<(), ()> {
        let idle = Duration::from_millis(self.settings.body_idle_timeout_ms);
        upstream.stream.set_read_timeout(Some(idle));
        let chunk_out = to == OutFraming::Chunked;
        match from {
            ResponseFraming::None => Ok(()),
            ResponseFraming::Length(mut remaining) => {
                while remaining > 0 {
                    if upstream.rx.is_empty() {
                        self.fill_from_upstream(upstream).await?;
                    }
                    let take = (upstream.rx.len() as u64).min(remaining) as usize;
                    send_paced(io, &upstream.rx.data()[..take], rate).await?;
                    upstream.rx.consume(take);
                    remaining -= take as u64;
                }
                Ok(())
            }
            ResponseFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    if upstream.rx.is_empty() {
                        self.fill_from_upstream(upstream).await?;
                    }
                    let (consumed, decoded) = decoder.decode(upstream.rx.data()).map_err(|_| {
                        self.shard.counters.upstream_error(UpstreamError::Protocol);
                    })?;
                    match decoded {
                        Decoded::Data { start, end } => {
                            let piece = &upstream.rx.data()[start..end];
                            write_body_piece(io, out, piece, chunk_out, rate).await?;
                        }
                        Decoded::Done => {
                            upstream.rx.consume(consumed);
                            if chunk_out {
                                send_paced(io, chunked::LAST_CHUNK, rate).await?;
                            }
                            return Ok(());
                        }
                        Decoded::NeedMore => {}
                    }
                    upstream.rx.consume(consumed);
                }
            }
            ResponseFraming::UntilClose => loop {
                if upstream.rx.is_empty() {
                    match upstream.rx.fill(&mut upstream.stream, BODY_BUFFER).await {
                        Ok(0) => {
                            if chunk_out {
                                send_paced(io, chunked::LAST_CHUNK, rate).await?;
                            }
                            return Ok(());
                        }
                        Ok(_) => {}
                        Err(_) => {
                            self.shard.counters.upstream_error(UpstreamError::Reset);
                            return Err(());
                        }
                    }
                }
                write_body_piece(io, out, upstream.rx.data(), chunk_out, rate).await?;
                let n = upstream.rx.len();
                upstream.rx.consume(n);
            },
        }
    }

    async fn fill_from_upstream(&self, upstream: &mut UpstreamConn) -> Result<(), ()> {
        match upstream.rx.fill(&mut upstream.stream, BODY_BUFFER).await {
            Ok(n) if n > 0 => Ok(()),
            Ok(_) => {
                self.shard.counters.upstream_error(UpstreamError::Reset);
                Err(())
            }
            Err(e) => {
                let kind = if e.kind() == std::io::ErrorKind::TimedOut {
                    UpstreamError::Timeout
                } else {
                    UpstreamError::Reset
                };
                self.shard.counters.upstream_error(kind);
                Err(())
            }
        }
    }

    /// Answers a failed exchange. If the request body may still be arriving the connection
    /// closes after the answer.
    async fn fail<T: Transport>(
        &self,
        io: &mut T,
        conn: &mut Downstream,
        failure: Failure,
        unread_body: RequestFraming,
    ) -> (u16, Next) {
        match failure {
            Failure::ClientGone => (499, Next::Close),
            Failure::Status(status) | Failure::Unanswered(status) => {
                let keep_alive = self.keep_alive && unread_body == RequestFraming::None;
                let sent = reply_local(
                    io,
                    &mut conn.out,
                    status,
                    self.error_edits(&conn.cors),
                    persistence(keep_alive),
                    conn.head.version,
                    self.head_request,
                )
                .await;
                let next = match (sent, keep_alive) {
                    (true, true) => Next::KeepAlive,
                    (true, false) if unread_body != RequestFraming::None => Next::Linger,
                    _ => Next::Close,
                };
                (status, next)
            }
        }
    }
}

/// Reads more of a request body, no slower than the minimum data rate allows.
async fn fill_body<T: Transport>(
    io: &mut T,
    rx: &mut RecvBuf,
    rate: &mut MinRate,
) -> Result<(), Failure> {
    rate.resume(Instant::now());
    let result = fill_body_timed(io, rx, rate).await;
    rate.pause(Instant::now());
    result
}

async fn fill_body_timed<T: Transport>(
    io: &mut T,
    rx: &mut RecvBuf,
    rate: &mut MinRate,
) -> Result<(), Failure> {
    loop {
        let Some(wait) = rate.next_wait(Instant::now(), 0) else {
            return Err(Failure::Status(408));
        };
        io.set_read_timeout(Some(wait));
        match rx.fill(io, BODY_BUFFER).await {
            Ok(n) if n > 0 => {
                rate.record(n);
                return Ok(());
            }
            Ok(_) => return Err(Failure::ClientGone),
            // The wait was a recheck of the rate; a timed-out read consumed nothing.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Err(Failure::ClientGone),
        }
    }
}

/// Where a request body goes: an HTTP/1.1 upstream takes it as framed for the wire, an
/// HTTP/2 stream takes the data alone (HTTP/2 frames it itself).
trait BodySink {
    fn set_write_timeout(&mut self, timeout: Duration);
    /// Sends one piece: `framed` for HTTP/1.1, `data` (possibly empty) for HTTP/2.
    async fn write(&mut self, shard: &Shard, framed: &[u8], data: &[u8]) -> Result<(), Failure>;
}

struct Http1Body<'a>(&'a mut UpstreamStream);

impl BodySink for Http1Body<'_> {
    fn set_write_timeout(&mut self, timeout: Duration) {
        self.0.set_write_timeout(Some(timeout));
    }

    async fn write(&mut self, shard: &Shard, framed: &[u8], _: &[u8]) -> Result<(), Failure> {
        upstream_write(shard, self.0, framed).await
    }
}

/// Sends body bytes on at once: TLS would hold them back until the next write, which may wait
/// for the client.
async fn upstream_write(
    shard: &Shard,
    stream: &mut UpstreamStream,
    bytes: &[u8],
) -> Result<(), Failure> {
    match send(stream, bytes).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let kind = if e.kind() == std::io::ErrorKind::TimedOut {
                UpstreamError::Timeout
            } else {
                UpstreamError::Reset
            };
            shard.counters.upstream_error(kind);
            Err(Failure::Status(502))
        }
    }
}

async fn write_body_piece<T: Transport>(
    io: &mut T,
    out: &mut Vec<u8>,
    data: &[u8],
    chunk: bool,
    rate: &mut MinRate,
) -> Result<(), ()> {
    if data.is_empty() {
        return Ok(());
    }
    if chunk {
        out.clear();
        chunked::write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        send_paced(io, out, rate).await
    } else {
        send_paced(io, data, rate).await
    }
}

/// Sends response bytes to a client that must read them no slower than the minimum rate.
/// Only bytes the client acknowledged count: a slow reader's socket buffers accept megabytes
/// it never reads. Every wait is a recheck of the rate (see `min_rate`), so a write that
/// times out is tried again unless the client has fallen behind. A client cut off is reset,
/// so the kernel drops what it queued.
///
/// A timed-out plain write sent nothing. A TLS write may have taken plaintext into the session
/// before its socket write timed out, so retrying it could send bytes twice: TLS flushes the
/// session before each write (a flush that times out leaves its records queued and is safe
/// to retry), and a write then meets a socket with no stale wait behind it.
async fn send_paced<T: Transport>(io: &mut T, bytes: &[u8], rate: &mut MinRate) -> Result<(), ()> {
    rate.resume(Instant::now());
    let result = send_paced_timed(io, bytes, rate).await;
    rate.pause(Instant::now());
    result
}

async fn send_paced_timed<T: Transport>(
    io: &mut T,
    bytes: &[u8],
    rate: &mut MinRate,
) -> Result<(), ()> {
    let mut sent = 0;
    // Whether the last flush or write waited out its timeout, for a client not reading.
    let mut timed_out = false;
    loop {
        if sent == bytes.len() && !T::BUFFERED {
            return Ok(());
        }
        // While writes go through, the last check's count will do: it can only shorten the
        // wait, and only its cut-off needs a fresh count from the socket (a syscall), so a
        // response that leaves at once asks nothing. Once a wait timed out, every recheck
        // asks: what the client took since counts as progress, for the idle timeout too.
        let now = Instant::now();
        let known = if timed_out {
            None
        } else {
            rate.next_wait(now, rate.undelivered_at_last_check())
        };
        let wait = known.or_else(|| rate.next_wait(now, io.unacknowledged()));
        let Some(wait) = wait else {
            io.reset_on_close();
            return Err(());
        };
        io.set_write_timeout(Some(wait));
        if T::BUFFERED {
            match io.flush().await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    timed_out = true;
                    continue;
                }
                Err(_) => {
                    io.reset_on_close();
                    return Err(());
                }
            }
        }
        if sent == bytes.len() {
            return Ok(());
        }
        match io.write(&bytes[sent..]).await {
            Ok(n) if n > 0 => {
                sent += n;
                rate.record(n);
                timed_out = false;
            }
            Err(e) if !T::BUFFERED && e.kind() == std::io::ErrorKind::TimedOut => timed_out = true,
            Ok(_) | Err(_) => {
                io.reset_on_close();
                return Err(());
            }
        }
    }
}

/// Relays bytes both ways after a 101 until either side closes. Bytes the client sent after
/// its request head, and bytes the upstream sent after its 101 head, go first.
async fn tunnel<T: Transport>(mut io: T, rx: RecvBuf, mut upstream: UpstreamConn) {
    if !rx.is_empty() && send(&mut upstream.stream, rx.data()).await.is_err() {
        return;
    }
    if !upstream.rx.is_empty() && send(&mut io, upstream.rx.data()).await.is_err() {
        return;
    }
    io.set_read_timeout(None);
    io.set_write_timeout(None);
    upstream.stream.set_read_timeout(None);
    upstream.stream.set_write_timeout(None);
    let (client_read, client_write) = futures_lite::io::split(io);
    let (upstream_read, upstream_write) = futures_lite::io::split(upstream.stream);
    future::zip(
        relay(client_read, upstream_write),
        relay(upstream_read, client_write),
    )
    .await;
}

/// Copies one direction of a tunnel until EOF or an error, then closes the writing side.
/// Every piece is flushed: either side may be TLS, which would hold it back until the next
/// write, and in a tunnel the next write may wait for the answer to this one.
async fn relay(
    mut from: impl futures_lite::AsyncRead + Unpin,
    mut to: impl futures_lite::AsyncWrite + Unpin,
) {
    let mut buf = vec![0u8; BODY_BUFFER];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.close().await;
}
