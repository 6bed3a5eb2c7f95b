//! The corpus client: a raw socket that sends exact bytes and reads responses one at a time,
//! reporting problems as text instead of panicking, so one case cannot stop the run.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long the client waits for a response, or for the proxy to close.
pub const WAIT: Duration = Duration::from_secs(4);

pub use crate::support::Response;

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn show(bytes: &[u8]) -> String {
    let text: String = bytes.iter().take(300).map(|&b| b as char).collect();
    let more = if bytes.len() > 300 { "…" } else { "" };
    format!("{text:?}{more}")
}

impl Conn {
    pub fn connect(port: u16) -> Result<Conn, String> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(WAIT))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Writes all of `bytes`. A proxy that rejects a request early may close before the rest
    /// is written; that is not an error of the case, so the caller may ignore the result.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads more bytes. Ok(false) on EOF (a reset after the proxy closed counts as EOF).
    fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16384];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    self.eof = true;
                    return Ok(false);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!(
                        "nothing more within {WAIT:?} (have {})",
                        show(&self.buf)
                    ));
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    fn need(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(format!(
                    "closed in the middle of a response body (have {})",
                    show(&self.buf)
                ));
            }
        }
        Ok(())
    }

    /// Reads one response (interim ones included). Ok(None): the proxy closed the connection
    /// before sending another byte.
    pub fn read_one(&mut self, head_request: bool) -> Result<Option<Response>, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(format!(
                    "closed inside a response head: {}",
                    show(&self.buf)
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        let length = response.header("content-length").map(str::to_string);
        if head_request || status < 200 || status == 204 || status == 304 {
            // No body.
        } else if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if !self.fill()? {
                        return Err("closed inside a chunked response".into());
                    }
                };
                let size_line: Vec<u8> = self.buf.drain(..line_end + 2).collect();
                let size_text = String::from_utf8_lossy(&size_line[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size line {size_text:?} in a response"))?;
                if size == 0 {
                    loop {
                        let end = loop {
                            if let Some(i) = find(&self.buf, b"\r\n") {
                                break i;
                            }
                            if !self.fill()? {
                                return Err("closed inside a response trailer".into());
                            }
                        };
                        self.buf.drain(..end + 2);
                        if end == 0 {
                            break;
                        }
                    }
                    break;
                }
                self.need(size + 2)?;
                response.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(length) = length {
            let n: usize = length
                .parse()
                .map_err(|_| format!("bad content-length {length:?} in a response"))?;
            self.need(n)?;
            response.body = self.buf.drain(..n).collect();
        } else {
            while self.fill()? {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(Some(response))
    }

    /// Reads the next final response, skipping interim ones other than 101.
    pub fn read_final(&mut self, head_request: bool) -> Result<Option<Response>, String> {
        loop {
            match self.read_one(head_request)? {
                Some(r) if r.status < 200 && r.status != 101 => continue,
                other => return Ok(other),
            }
        }
    }

    /// Reads exactly `n` raw bytes (a tunnel's payload).
    pub fn read_raw(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + WAIT;
        while self.buf.len() < n && Instant::now() < deadline {
            if !self.fill()? {
                break;
            }
        }
        let take = n.min(self.buf.len());
        Ok(self.buf.drain(..take).collect())
    }

    /// Waits for the proxy to close. Returns the bytes that arrived before the close; an error
    /// if the connection is still open after the wait.
    pub fn rest_until_close(&mut self) -> Result<Vec<u8>, String> {
        while self.fill()? {}
        Ok(std::mem::take(&mut self.buf))
    }
}
