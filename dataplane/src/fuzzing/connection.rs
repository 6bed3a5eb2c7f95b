//! The `connection` target: [`serve`] over an in-memory [`Transport`] on one glommio
//! executor per thread (see the module docs of [`crate::fuzzing`] for the input format).

use std::cell::{OnceCell, RefCell};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::timer::Timer;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use portcullis_api::CompiledConfig;

use super::upstream::Upstream;
use crate::io::Transport;
use crate::proxy::connection::{ConnInfo, serve};
use crate::proxy::h2::PREFACE_START;
use crate::route::Snapshot;
use crate::shard::Shard;
use crate::tls::TicketKey;

/// Memory glommio registers per ring: the proxy does no file I/O, and locked memory is scarce.
const FUZZ_IO_MEMORY: usize = 512 << 10;
/// The HTTP/2 frame type the server's connection preface starts with.
const SETTINGS_FRAME: u8 = 0x4;
/// Writes fail after this many bytes when the input asks for a client that goes away.
const WRITE_LIMIT: usize = 256;

/// The proxy's config for the `connection` target; `{upstream}` is the echo server.
const CONNECTION_CONFIG: &str = r#"{
  "schema_version": 1,
  "generation": 1,
  "gateway": {"namespace": "fuzz", "name": "connection"},
  "ports": [{"port": 8080, "protocol": "HTTP", "listeners": [
    {"name": "main", "routes": [
      {"name": "fuzz/redirect", "hostnames": ["redirect.test"], "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/keep"}}],
         "filters": [{"type": "RequestRedirect",
                      "path": {"type": "ReplacePrefixMatch", "value": "/moved"},
                      "status_code": 308}]},
        {"filters": [{"type": "RequestRedirect", "scheme": "https", "port": 8443,
                      "status_code": 301},
                     {"type": "ResponseHeaderModifier", "set": [{"name": "x-redirected", "value": "1"}]}]}
      ]},
      {"name": "fuzz/echo", "hostnames": ["echo.test", "*.echo.test"], "rules": [
        {"filters": [{"type": "RequestHeaderModifier",
                      "set": [{"name": "x-route", "value": "echo"}],
                      "add": [{"name": "x-add", "value": "1"}],
                      "remove": ["x-remove"]},
                     {"type": "ResponseHeaderModifier",
                      "set": [{"name": "x-resp", "value": "1"}],
                      "add": [{"name": "x-echo-method", "value": "added"}],
                      "remove": ["server"]}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/rewrite/"}}],
         "filters": [{"type": "URLRewrite", "hostname": "rewritten.test",
                      "path": {"type": "ReplacePrefixMatch", "value": "/"}}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}}]},
        {"matches": [{"path": {"type": "Exact", "value": "/full"}}],
         "filters": [{"type": "URLRewrite", "path": {"type": "ReplaceFullPath", "value": "/replaced"}}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}}]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[a-z]+"}, "method": "POST"}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}},
                      {"weight": 0, "target": {"backend": "empty"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/none"}}],
         "backends": [{"weight": 1, "target": {"backend": "empty"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/invalid"}}],
         "backends": [{"weight": 1, "target": {"invalid": "no such service"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/nobackends"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}},
                      {"weight": 1, "target": {"invalid": "half broken"}}]},
        {"matches": [{"headers": [{"name": "x-canary", "value": {"type": "Exact", "value": "1"}}]}],
         "backends": [{"weight": 1, "target": {"backend": "echo"},
                       "filters": [{"type": "RequestHeaderModifier",
                                    "set": [{"name": "host", "value": "canary.test"}],
                                    "add": [{"name": "x-canary", "value": "seen"}]}]}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/timeout"}}],
         "timeouts": {"request_ms": 3000, "backend_request_ms": 2000},
         "backends": [{"weight": 1, "target": {"backend": "echo"}}]}
      ]},
      {"name": "fuzz/default", "rules": [
        {"backends": [{"weight": 1, "target": {"backend": "echo"}}]}
      ]}
    ]},
    {"name": "wild", "hostname": "*.wild.test", "routes": [
      {"name": "fuzz/wild", "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/redirect"}}],
         "filters": [{"type": "RequestRedirect", "hostname": "example.com",
                      "path": {"type": "ReplaceFullPath", "value": "/x"}, "status_code": 302}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/w"}}],
         "backends": [{"weight": 1, "target": {"backend": "echo"}}]}
      ]}
    ]}
  ]}],
  "backends": [{"name": "echo", "endpoints": ["{upstream}"]},
               {"name": "empty", "endpoints": []}],
  "settings": {
    "max_header_count": 32,
    "max_header_bytes": 4096,
    "max_request_line_bytes": 1024,
    "header_read_timeout_ms": 3000,
    "idle_timeout_ms": 3000,
    "body_idle_timeout_ms": 3000,
    "upstream_connect_timeout_ms": 2000,
    "upstream_idle_timeout_ms": 30000,
    "upstream_max_idle_per_endpoint": 4
  }
}"#;

/// The connection config with `upstream` as the echo backend's endpoint.
pub(super) fn connection_config(upstream: SocketAddr) -> CompiledConfig {
    let json = CONNECTION_CONFIG.replace("{upstream}", &upstream.to_string());
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("the connection fixture does not decode: {e}"))
}

pub(super) fn new_shard(id: usize) -> Shard {
    let key = TicketKey::generate().unwrap_or_else(|e| panic!("ticket key: {e}"));
    Shard::new(id, key, false).unwrap_or_else(|e| panic!("shard: {e}"))
}

/// One glommio executor per thread (per fuzz process), with cores in each state.
struct Harness {
    executor: LocalExecutor,
    /// Serving, announced termination, draining.
    shards: [Rc<Shard>; 3],
}

impl Harness {
    fn new(upstream: SocketAddr) -> Self {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name("fuzz-connection")
            .io_memory(FUZZ_IO_MEMORY)
            .make()
            .unwrap_or_else(|e| panic!("glommio executor: {e}"));
        let snapshot = Arc::new(
            Snapshot::build(&connection_config(upstream))
                .unwrap_or_else(|e| panic!("the connection fixture does not build: {e}")),
        );
        let shards = [0, 1, 2].map(|id| {
            let shard = new_shard(id);
            let installed = shard
                .build(snapshot.clone())
                .unwrap_or_else(|e| panic!("install: {e}"));
            *shard.installed.borrow_mut() = Rc::new(installed);
            Rc::new(shard)
        });
        shards[1].closing.fire();
        shards[2].closing.fire();
        shards[2].drain.fire();
        Self { executor, shards }
    }
}

thread_local! {
    static HARNESS: OnceCell<Harness> = const { OnceCell::new() };
}

/// How the client's bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientEnd {
    Eof,
    Reset,
    TimedOut,
    /// EOF, and writes fail once [`WRITE_LIMIT`] bytes went out.
    WritesFail,
}

/// The client side of a connection, in memory. `BUFFERED` picks the TLS-like flavour.
struct MemoryTransport<const BUFFERED: bool> {
    input: Vec<u8>,
    position: usize,
    /// 0: reads fill the buffer; else reads of 1..=max_read bytes.
    max_read: usize,
    rng: u64,
    end: ClientEnd,
    pend_each_read: bool,
    pending_left: usize,
    pending_done: bool,
    output: Rc<RefCell<Vec<u8>>>,
}

/// At most about this many reads per input, and as many pending polls: tiny reads of a long
/// input would spend the fuzzing time in the executor loop.
const MAX_READS: usize = 4096;

impl<const BUFFERED: bool> MemoryTransport<BUFFERED> {
    fn new(
        input: &[u8],
        split: u8,
        end: ClientEnd,
        pend_each_read: bool,
        output: &Rc<RefCell<Vec<u8>>>,
    ) -> Self {
        Self {
            input: input.to_vec(),
            position: 0,
            max_read: usize::from(split),
            rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(split),
            end,
            pend_each_read,
            pending_left: MAX_READS,
            pending_done: false,
            output: output.clone(),
        }
    }

    fn next_read_size(&mut self, room: usize) -> usize {
        let left = (self.input.len() - self.position).min(room);
        if self.max_read == 0 {
            return left;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let size = 1 + (self.rng % self.max_read as u64) as usize;
        size.max(self.input.len() / MAX_READS).min(left)
    }
}

impl<const BUFFERED: bool> AsyncRead for MemoryTransport<BUFFERED> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pend_each_read && !this.pending_done && this.pending_left > 0 {
            this.pending_done = true;
            this.pending_left -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pending_done = false;
        if this.position == this.input.len() {
            return Poll::Ready(match this.end {
                ClientEnd::Eof | ClientEnd::WritesFail => Ok(0),
                ClientEnd::Reset => Err(std::io::ErrorKind::ConnectionReset.into()),
                ClientEnd::TimedOut => Err(std::io::ErrorKind::TimedOut.into()),
            });
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = this.next_read_size(buf.len());
        buf[..n].copy_from_slice(&this.input[this.position..this.position + n]);
        this.position += n;
        Poll::Ready(Ok(n))
    }
}

impl<const BUFFERED: bool> AsyncWrite for MemoryTransport<BUFFERED> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut output = self.output.borrow_mut();
        let mut n = buf.len();
        if self.end == ClientEnd::WritesFail {
            let room = WRITE_LIMIT.saturating_sub(output.len());
            if room == 0 && !buf.is_empty() {
                return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
            }
            n = n.min(room);
        }
        output.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<const BUFFERED: bool> Transport for MemoryTransport<BUFFERED> {
    fn set_read_timeout(&self, _: Option<Duration>) {}
    fn set_write_timeout(&self, _: Option<Duration>) {}
    const BUFFERED: bool = BUFFERED;
}

/// Serves `[flags, split, client bytes…]` on one connection (see the module docs), then
/// checks that the proxy forwarded no more requests than the client sent complete heads,
/// that every forwarded request was canonical HTTP/1.1, that the client only ever received
/// responses, and that no upstream connection outlived the client's.
pub fn connection(data: &[u8]) {
    let _ = serve_connection(data);
}

/// [`connection`], returning the number of requests the upstream received and what the
/// client received (None for inputs too short to have a client stream).
fn serve_connection(data: &[u8]) -> Option<(u64, Vec<u8>)> {
    let [flags, split, client @ ..] = data else {
        return None;
    };
    let (flags, split) = (*flags, *split);
    let upstream = Upstream::get();
    let _serialized = upstream.session();

    let info = ConnInfo {
        port: if flags & 2 != 0 { 8081 } else { 8080 },
        peer: if flags & 4 != 0 {
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 4711))
        } else {
            SocketAddr::from(([192, 0, 2, 7], 4711))
        },
        tls: flags & 1 != 0,
    };
    let end = match (flags >> 3) & 3 {
        0 => ClientEnd::Eof,
        1 => ClientEnd::Reset,
        2 => ClientEnd::TimedOut,
        _ => ClientEnd::WritesFail,
    };
    let output = Rc::new(RefCell::new(Vec::new()));
    let forwarded = HARNESS.with(|harness| {
        let harness = harness.get_or_init(|| Harness::new(upstream.addr));
        let shard = harness.shards[usize::from((flags >> 5) & 3).saturating_sub(1)].clone();
        harness.executor.run(async {
            let served = async {
                let pend = flags & 0x80 != 0;
                if info.tls {
                    let io = MemoryTransport::<true>::new(client, split, end, pend, &output);
                    serve(shard.clone(), io, info).await;
                } else {
                    let io = MemoryTransport::<false>::new(client, split, end, pend, &output);
                    serve(shard.clone(), io, info).await;
                }
            };
            let watchdog = async {
                Timer::new(Duration::from_secs(30)).await;
                panic!("the connection was still open after 30 s");
            };
            futures_lite::future::or(served, watchdog).await;
            // Close pooled upstream connections so the upstream can count what it received.
            shard.pool.retain_endpoints(&HashSet::new());
            upstream.settle().await
        })
    });
    if let Some(violation) = upstream.violation() {
        panic!("the proxy sent the upstream a bad request: {violation}");
    }
    // A connection opened with the HTTP/2 preface is served by h2: its requests are frames
    // (not counted as heads), and the proxy speaks first with its SETTINGS frame.
    let http2 = !info.tls && client.starts_with(PREFACE_START);
    let heads = count_heads(client);
    assert!(
        http2 || forwarded <= heads,
        "{forwarded} requests forwarded, but the client sent only {heads} complete heads"
    );
    let output = output.take();
    let answered = if http2 {
        output.len() >= 9 && output[3] == SETTINGS_FRAME
    } else {
        output.starts_with(b"HTTP/1.1 ")
    };
    assert!(
        output.is_empty() || answered,
        "the client received something other than a response: {:?}",
        String::from_utf8_lossy(&output[..output.len().min(64)])
    );
    Some((forwarded, output))
}

/// Non-overlapping occurrences of CRLFCRLF: an upper bound on the complete request heads in
/// `bytes`, as every head ends with one and heads do not overlap.
fn count_heads(bytes: &[u8]) -> u64 {
    let mut count = 0;
    let mut i = 0;
    while i + 4 <= bytes.len() {
        if &bytes[i..i + 4] == b"\r\n\r\n" {
            count += 1;
            i += 4;
        } else {
            i += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_connection_replays() {
        replay("connection");
    }

    #[test]
    fn connection_forwards_and_answers_locally() {
        let mut input = vec![0u8, 0u8];
        input.extend_from_slice(
            b"GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n\
              POST /chunked HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\n\
              GET / HTTP/1.1\r\nHost: redirect.test\r\n\r\n\
              GET / HTTP/1.1\r\nHost: a.wild.test\r\n\r\n",
        );
        let (forwarded, output) = serve_connection(&input).unwrap();
        assert_eq!(forwarded, 2);
        let output = String::from_utf8_lossy(&output);
        let statuses: Vec<&str> = output
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|response| &response[..3])
            .collect();
        assert_eq!(statuses, ["200", "200", "301", "404"], "{output}");
    }

    #[test]
    fn head_count_is_an_upper_bound() {
        assert_eq!(count_heads(b""), 0);
        assert_eq!(count_heads(b"\r\n\r\n\r\n\r\n"), 2);
        assert_eq!(count_heads(b"\r\n\r\n\r\n"), 1);
    }

    /// The first fuzz finding of the `connection` target: an HTTP/2 connection that fails
    /// while its streams connect upstream. Its streams must end with it (so the next
    /// connection's upstream count is its own) and leave the executor able to run the next.
    #[test]
    fn a_failed_http2_connection_leaves_no_stream_behind() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");
        let seed = std::fs::read(format!("{dir}/seeds/connection/h2c-prior-knowledge.bin"))
            .unwrap_or_else(|e| panic!("the HTTP/2 seed: {e}"));
        // Prior knowledge on the serving core, the client pends before each read and its
        // writes fail after WRITE_LIMIT bytes.
        let mut failing = vec![0x98, 0x01];
        failing.extend_from_slice(&seed);
        let next = b"\0\x23M-SEARCH /m/-.1\r\nHost: aSEA\n";
        // On a thread of its own (with its own executor), so that a wedged executor fails
        // the test instead of hanging it.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = serve_connection(&failing).map(|(forwarded, _)| forwarded);
            let second = serve_connection(next).map(|(forwarded, _)| forwarded);
            let _ = done.send((first, second));
        });
        let (first, second) = result
            .recv_timeout(Duration::from_secs(60))
            .expect("the executor stopped running tasks after the HTTP/2 connection failed");
        assert!(
            first.is_some_and(|n| n <= 2),
            "{first:?} forwarded for two streams"
        );
        assert_eq!(
            second,
            Some(0),
            "a stream of the failed connection was forwarded later"
        );
    }
}
