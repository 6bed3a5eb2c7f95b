//! A strict recording upstream for the hostile corpus.
//!
//! It records a request only once the whole message (head and body) has arrived, so a request
//! the proxy starts forwarding and then aborts (a chunked body that turns out malformed) is
//! never counted as forwarded. It also checks that what the proxy sends is canonical: CRLF
//! only, `METHOD SP target SP HTTP/1.1`, token header names, one Host, at most one framing
//! header, and chunks the way the proxy writes them (lowercase hex sizes, no extensions, no
//! trailers). Anything else is recorded as a violation, which the harness reports as a proxy
//! bug.
//!
//! Every response is `200` with `x-path: <target>` (bytes outside `!`..`~` percent-escaped) and
//! a 2-byte body, except a request with `Upgrade` on a path starting with `/ws`, which gets a
//! `101` switching to the first protocol offered (whatever it is, as a permissive server
//! would) and then echoes raw bytes until the proxy closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One complete request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    /// Names lowercased, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Seen>,
    violations: Vec<String>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

/// A position in the upstream's log.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    requests: usize,
    violations: usize,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the upstream");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = shared.clone();
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        Upstream { addr, log }
    }

    pub fn mark(&self) -> Mark {
        let log = self.log.lock().unwrap();
        Mark {
            requests: log.requests.len(),
            violations: log.violations.len(),
        }
    }

    /// Requests and violations recorded since `mark`.
    pub fn since(&self, mark: Mark) -> (Vec<Seen>, Vec<String>) {
        let log = self.log.lock().unwrap();
        (
            log.requests[mark.requests..].to_vec(),
            log.violations[mark.violations..].to_vec(),
        )
    }
}

/// Bytes as a Latin-1 string (one char per byte), the corpus's notation.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Printable ASCII kept, everything else %XX: a header-safe rendering of a request target.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x21..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads more bytes; false on EOF or error.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads until `n` bytes are buffered; false if the proxy closed first (possibly
    /// mid-message: an aborted request).
    fn need(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill() {
                return false;
            }
        }
        true
    }

    /// Position of the first CRLF, reading as needed.
    fn line(&mut self) -> Option<usize> {
        let mut from = 0;
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Some(from + i);
            }
            from = self.buf.len().saturating_sub(1);
            if !self.fill() {
                return None;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn serve(stream: TcpStream, log: &Mutex<Log>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(None);
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
    };
    let violation = |text: String| log.lock().unwrap().violations.push(text);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&reader.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !reader.fill() {
                return;
            }
        };
        let head: Vec<u8> = reader.buf.drain(..head_end).collect();
        let shown = escape(&head);
        for (i, &b) in head.iter().enumerate() {
            let bare_lf = b == b'\n' && (i == 0 || head[i - 1] != b'\r');
            let bare_cr = b == b'\r' && head.get(i + 1) != Some(&b'\n');
            if bare_lf || bare_cr {
                violation(format!("bare CR or LF in the upstream head {shown}"));
                break;
            }
        }
        let text = &head[..head.len() - 4];
        let mut lines = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = lines.next().unwrap_or_default();
        let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
        if parts.len() != 3
            || parts[2] != b"HTTP/1.1"
            || parts[0].is_empty()
            || !parts[0].iter().all(|&b| is_tchar(b))
            || parts[1].is_empty()
        {
            violation(format!("non-canonical request line in {shown}"));
        }
        let method = parts.first().copied().unwrap_or_default().to_vec();
        let target = parts.get(1).copied().unwrap_or_default().to_vec();
        let mut headers = Vec::new();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                violation(format!("header line without a colon in {shown}"));
                continue;
            };
            let name = &line[..colon];
            let value = line[colon + 1..].trim_ascii();
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                violation(format!("invalid header name in {shown}"));
            }
            if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                violation(format!("control character in a header value in {shown}"));
            }
            headers.push((latin1(name).to_ascii_lowercase(), value.to_vec()));
        }
        let mut seen = Seen {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        if seen.count("host") != 1 {
            violation(format!("{} Host headers in {shown}", seen.count("host")));
        }
        let lengths = seen.count("content-length");
        let codings = seen.count("transfer-encoding");
        if lengths + codings > 1 {
            violation(format!("more than one framing header in {shown}"));
        }
        if codings == 1 {
            if seen.header("transfer-encoding") != Some(b"chunked") {
                violation(format!("transfer-encoding other than chunked in {shown}"));
            }
            // Chunks exactly as the proxy writes them.
            loop {
                let Some(end) = reader.line() else {
                    return; // aborted mid-body
                };
                let size_line: Vec<u8> = reader.buf.drain(..end + 2).collect();
                let digits = &size_line[..end];
                let canonical = !digits.is_empty()
                    && digits
                        .iter()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
                    && (digits.len() == 1 || digits[0] != b'0');
                let Some(size) = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| usize::from_str_radix(d, 16).ok())
                    .filter(|_| canonical)
                else {
                    violation(format!(
                        "non-canonical chunk size line {:?} after {shown}",
                        escape(&size_line)
                    ));
                    return;
                };
                if size == 0 {
                    if !reader.need(2) {
                        return;
                    }
                    if &reader.buf[..2] != b"\r\n" {
                        violation(format!(
                            "trailers or junk after the last chunk after {shown}"
                        ));
                        return;
                    }
                    reader.buf.drain(..2);
                    break;
                }
                if !reader.need(size + 2) {
                    return;
                }
                seen.body.extend_from_slice(&reader.buf[..size]);
                if &reader.buf[size..size + 2] != b"\r\n" {
                    violation(format!("chunk data not followed by CRLF after {shown}"));
                    return;
                }
                reader.buf.drain(..size + 2);
            }
        } else if lengths == 1 {
            let value = seen.header("content-length").unwrap_or_default();
            let Some(n) = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
            else {
                violation(format!("invalid content-length in {shown}"));
                return;
            };
            if !reader.need(n) {
                return;
            }
            seen.body = reader.buf.drain(..n).collect();
        }

        // Like a server that speaks every protocol offered: the first one is accepted.
        let upgrade = seen
            .header("upgrade")
            .filter(|_| seen.target.starts_with(b"/ws"))
            .and_then(|u| u.split(|&b| b == b',').next())
            .map(|p| latin1(p.trim_ascii()));
        let head_request = seen.method == b"HEAD";
        let path = escape(&seen.target);
        log.lock().unwrap().requests.push(seen);

        if let Some(protocol) = upgrade {
            let _ = writer.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: {protocol}\r\nconnection: upgrade\r\n\r\n"
                )
                .as_bytes(),
            );
            if !reader.buf.is_empty() && writer.write_all(&reader.buf).is_err() {
                return;
            }
            reader.buf.clear();
            while reader.fill() {
                if writer.write_all(&reader.buf).is_err() {
                    return;
                }
                reader.buf.clear();
            }
            return;
        }
        let mut response =
            format!("HTTP/1.1 200 OK\r\nx-path: {path}\r\ncontent-length: 2\r\n\r\n").into_bytes();
        if !head_request {
            response.extend_from_slice(b"ok");
        }
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}
