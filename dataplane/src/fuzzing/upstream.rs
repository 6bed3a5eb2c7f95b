//! The upstream of the `connection` target: a small blocking HTTP/1.1 server on loopback that
//! checks every request the proxy forwards.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use crate::http::chunked::{self, ChunkedDecoder, Decoded};
use crate::http::find_bare_lf;
use crate::http::request::RequestFraming;

/// The upstream of the `connection` target: a blocking HTTP/1.1 server on loopback, one
/// thread per connection, that checks each request the proxy forwards and answers according
/// to its path (see [`answer`]).
pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    state: Arc<UpstreamState>,
    /// One connection at a time is fuzzed per process, so counts belong to it.
    session: Mutex<()>,
}

#[derive(Default)]
struct UpstreamState {
    requests: AtomicU64,
    active: AtomicU64,
    barriers: AtomicU64,
    violation: Mutex<Option<String>>,
}

impl UpstreamState {
    fn violate(&self, what: String) {
        let mut violation = lock(&self.violation);
        if violation.is_none() {
            *violation = Some(what);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upstream {
    pub(super) fn get() -> &'static Upstream {
        static UPSTREAM: OnceLock<Upstream> = OnceLock::new();
        UPSTREAM.get_or_init(|| {
            // The proxy runs with SIGPIPE ignored (Rust's runtime does that before `main`);
            // libFuzzer's C++ `main` does not, and a write to a closed socket would kill it.
            let _ = signal_hook::flag::register(
                signal_hook::consts::SIGPIPE,
                Arc::new(std::sync::atomic::AtomicBool::new(false)),
            );
            let listener = TcpListener::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("binding the fuzz upstream: {e}"));
            let addr = listener
                .local_addr()
                .unwrap_or_else(|e| panic!("fuzz upstream address: {e}"));
            let state = Arc::new(UpstreamState::default());
            let accept_state = state.clone();
            std::thread::Builder::new()
                .name("fuzz-upstream".into())
                .spawn(move || accept_loop(&accept_state, &listener))
                .unwrap_or_else(|e| panic!("starting the fuzz upstream: {e}"));
            Upstream {
                addr,
                state,
                session: Mutex::new(()),
            }
        })
    }

    /// Starts counting for one connection; the guard keeps other threads out until it ends.
    pub(super) fn session(&self) -> MutexGuard<'_, ()> {
        let guard = lock(&self.session);
        self.state.requests.store(0, Ordering::SeqCst);
        *lock(&self.state.violation) = None;
        guard
    }

    pub(super) fn violation(&self) -> Option<String> {
        lock(&self.state.violation).clone()
    }

    /// Waits until every upstream connection the proxy opened has been accepted and has
    /// ended, and returns the number of requests received. A barrier connection, accepted
    /// after all earlier ones, proves they were all accepted.
    ///
    /// Runs on the executor: sockets the proxy dropped are closed by its reactor (pending
    /// io_uring operations are cancelled there), which has to keep running meanwhile.
    pub(super) async fn settle(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        let before = self.state.barriers.load(Ordering::SeqCst);
        if let Ok(mut barrier) = TcpStream::connect(self.addr) {
            let _ = barrier.write_all(&[0]);
        }
        let mut spins = 0u32;
        while self.state.barriers.load(Ordering::SeqCst) == before
            || self.state.active.load(Ordering::SeqCst) > 0
        {
            assert!(
                Instant::now() < deadline,
                "an upstream connection stayed open after the client connection ended"
            );
            spins += 1;
            if spins < 1000 {
                futures_lite::future::yield_now().await;
            } else {
                Timer::new(Duration::from_micros(50)).await;
            }
        }
        self.state.requests.load(Ordering::SeqCst)
    }
}

/// Hands each accepted connection to an idle worker thread, starting one when none is idle.
/// Workers never exit: a thread exiting while the fuzzer checks for leaks looks like one.
fn accept_loop(state: &Arc<UpstreamState>, listener: &TcpListener) {
    let (sender, receiver) = std::sync::mpsc::channel::<TcpStream>();
    let receiver = Arc::new(Mutex::new(receiver));
    // Workers waiting for a connection and not yet promised one.
    let idle = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        state.active.fetch_add(1, Ordering::SeqCst);
        let reserved = idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !reserved {
            let (worker_state, receiver, idle) = (state.clone(), receiver.clone(), idle.clone());
            let spawned = std::thread::Builder::new()
                .name("fuzz-upstream-conn".into())
                .spawn(move || {
                    loop {
                        let next = lock(&receiver).recv();
                        let Ok(stream) = next else { return };
                        upstream_connection(&worker_state, stream);
                        worker_state.active.fetch_sub(1, Ordering::SeqCst);
                        idle.fetch_add(1, Ordering::SeqCst);
                    }
                });
            if spawned.is_err() {
                state.active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
        }
        if sender.send(stream).is_err() {
            return;
        }
    }
}

/// A request head as the upstream received it.
struct ForwardedHead {
    len: usize,
    method: Vec<u8>,
    path: Vec<u8>,
    framing: RequestFraming,
}

/// Parses and checks a forwarded head: the proxy must send canonical HTTP/1.1 with one Host,
/// at most one framing header and no hop-by-hop headers of the client's.
fn parse_forwarded(buf: &[u8]) -> Result<Option<ForwardedHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "unparseable head ({e}): {:?}",
                String::from_utf8_lossy(&buf[..buf.len().min(512)])
            ));
        }
    };
    let text = || String::from_utf8_lossy(&buf[..len]).into_owned();
    if request.version != Some(1) {
        return Err(format!("not HTTP/1.1: {:?}", text()));
    }
    if find_bare_lf(&buf[..len]).is_some() {
        return Err(format!("bare LF: {:?}", text()));
    }
    let mut hosts = 0;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut connection_upgrade = false;
    let mut upgrade = false;
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => {
                let valid = !header.value.is_empty()
                    && header.value.len() <= 18
                    && header.value.iter().all(u8::is_ascii_digit);
                if length.is_some() || !valid {
                    return Err(format!("bad or repeated content-length: {:?}", text()));
                }
                let digits = String::from_utf8_lossy(header.value);
                length = digits.parse().ok();
            }
            "transfer-encoding" => {
                if chunked || header.value != b"chunked" {
                    return Err(format!("bad transfer-encoding: {:?}", text()));
                }
                chunked = true;
            }
            "connection" if header.value == b"upgrade" && !connection_upgrade => {
                connection_upgrade = true;
            }
            "upgrade" => upgrade = true,
            "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "expect" => {
                return Err(format!(
                    "hop-by-hop header {name:?} forwarded: {:?}",
                    text()
                ));
            }
            _ => {}
        }
    }
    if hosts != 1 {
        return Err(format!("{hosts} host headers: {:?}", text()));
    }
    if chunked && length.is_some() {
        return Err(format!("both content-length and chunked: {:?}", text()));
    }
    if connection_upgrade != upgrade {
        return Err(format!("upgrade without connection: upgrade: {:?}", text()));
    }
    let framing = match (length, chunked) {
        (_, true) => RequestFraming::Chunked,
        (Some(0) | None, false) => RequestFraming::None,
        (Some(n), false) => RequestFraming::Length(n),
    };
    Ok(Some(ForwardedHead {
        len,
        method: request.method.unwrap_or_default().as_bytes().to_vec(),
        path: request.path.unwrap_or_default().as_bytes().to_vec(),
        framing,
    }))
}

/// Reads more into `buf`; false at EOF or on an error.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request body; None when the connection ended first.
fn read_forwarded_body(
    state: &UpstreamState,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    framing: RequestFraming,
) -> Option<Vec<u8>> {
    match framing {
        RequestFraming::None => Some(Vec::new()),
        RequestFraming::Length(n) => {
            while (buf.len() as u64) < n {
                if !read_more(stream, buf) {
                    return None;
                }
            }
            Some(buf.drain(..n as usize).collect())
        }
        RequestFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            loop {
                if buf.is_empty() && !read_more(stream, buf) {
                    return None;
                }
                match decoder.decode(buf) {
                    Ok((consumed, decoded)) => {
                        if let Decoded::Data { start, end } = decoded {
                            body.extend_from_slice(&buf[start..end]);
                        }
                        buf.drain(..consumed);
                        if decoded == Decoded::Done {
                            return Some(body);
                        }
                    }
                    Err(e) => {
                        state.violate(format!("bad chunked body from the proxy: {e}"));
                        return None;
                    }
                }
            }
        }
    }
}

fn upstream_connection(state: &UpstreamState, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let head = loop {
            if buf.first() == Some(&0) {
                state.barriers.fetch_add(1, Ordering::SeqCst);
                return;
            }
            match parse_forwarded(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(violation) => {
                    state.violate(violation);
                    return;
                }
            }
            if !read_more(&mut stream, &mut buf) {
                return;
            }
        };
        state.requests.fetch_add(1, Ordering::SeqCst);
        buf.drain(..head.len);
        if !answer(state, &mut stream, &mut buf, &head) {
            return;
        }
    }
}

/// Answers one request by its path; false when the connection is over.
///
/// `/reset` closes at once; `/bad` sends garbage; `/abort` answers before the body and
/// closes; `/early` answers before reading the body, then reads it; `/interim` sends 100 and
/// 103 first; `/upgrade` and `/101` switch protocols and echo raw bytes; `/chunked`,
/// `/close`, `/http10`, `/204`, `/304` and `/big` pick the response framing; anything else
/// echoes the body with a Content-Length.
fn answer(
    state: &UpstreamState,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &ForwardedHead,
) -> bool {
    let has = |s: &[u8]| head.path.windows(s.len()).any(|w| w == s);
    let mut send = |bytes: &[u8]| stream.write_all(bytes).is_ok();
    if has(b"/reset") {
        return false;
    }
    if has(b"/bad") {
        send(b"HTTP/1.1 2OO Okay\r\n\r\n");
        return false;
    }
    if has(b"/abort") {
        send(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
        return false;
    }
    let early = has(b"/early");
    if early && !send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly") {
        return false;
    }
    if has(b"/interim")
        && !send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n")
    {
        return false;
    }
    let Some(body) = read_forwarded_body(state, stream, buf, head.framing) else {
        return false;
    };
    if early {
        return true;
    }
    let mut send = |bytes: &[u8]| stream.write_all(bytes).is_ok();
    if head.method == b"HEAD" {
        return send(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                body.len() + 5
            )
            .as_bytes(),
        );
    }
    if has(b"/upgrade") || has(b"/101") {
        if !send(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: fuzz\r\n\r\n",
        ) {
            return false;
        }
        if !buf.is_empty() && !send(&std::mem::take(buf)) {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 || stream.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        return false;
    }
    let mut out = Vec::new();
    if has(b"/chunked") {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n",
        );
        for piece in body.chunks(7) {
            chunked::write_chunk_header(&mut out, piece.len());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
        return send(&out);
    }
    if has(b"/close") {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nclosed:");
        out.extend_from_slice(&body);
        send(&out);
        return false;
    }
    if has(b"/http10") {
        out.extend_from_slice(
            format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
        );
        out.extend_from_slice(&body);
        send(&out);
        return false;
    }
    if has(b"/204") {
        return send(b"HTTP/1.1 204 No Content\r\nx-empty: 1\r\n\r\n");
    }
    if has(b"/304") {
        return send(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n");
    }
    if has(b"/big") {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 40000\r\n\r\n");
        out.resize(out.len() + 40_000, b'b');
        return send(&out);
    }
    out.extend_from_slice(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nserver: fuzz\r\nx-echo-method: {}\r\n\r\necho:",
            body.len() + 5,
            String::from_utf8_lossy(&head.method)
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    send(&out)
}
