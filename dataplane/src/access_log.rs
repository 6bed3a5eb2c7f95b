//! Opt-in JSON access log, one line per request (and per connection on TLS and TCP ports) on
//! stdout.
//!
//! A connection builds its line while the request runs; the core appends finished lines to
//! its own buffer, and a timer flushes that buffer in one write, so logging costs no syscall
//! per request and no lock between cores.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;
use std::sync::Arc;

use crate::http::request::RequestHead;
use crate::l4::splice::Spliced;
use crate::proxy::connection::ConnInfo;

/// Flush when this much is buffered, even before the timer fires.
const FLUSH_BYTES: usize = 64 * 1024;
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// What the log says about one connection on a TLS or TCP port, or one session on a UDP port.
#[derive(Debug, Default)]
pub struct StreamEntry {
    pub peer: Option<SocketAddr>,
    pub port: u16,
    /// "tls", "tcp" or "udp".
    pub protocol: &'static str,
    pub server_name: Option<String>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    /// As counted on the route (200 spliced, 404, 500, 502, 503); 400 for a hello or
    /// handshake that failed; 0 before any verdict.
    pub status: u16,
    pub spliced: Option<Spliced>,
}

#[derive(Debug, Default)]
pub struct AccessLog {
    buffer: RefCell<Vec<u8>>,
}

impl AccessLog {
    /// Starts `line` with what is known when the request head arrives.
    pub fn begin(line: &mut Vec<u8>, buf: &[u8], head: &RequestHead, info: &ConnInfo) {
        line.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = write!(
            line,
            "{{\"ts\":{}.{:06}",
            now.as_secs(),
            now.subsec_micros()
        );
        let _ = write!(line, ",\"client\":\"{}\",\"port\":{}", info.peer, info.port);
        line.extend_from_slice(b",\"tls\":");
        line.extend_from_slice(if info.tls { b"true" } else { b"false" });
        push_field(line, "method", head.method(buf));
        push_field(line, "host", head.host(buf));
        push_field(line, "path", head.path(buf));
    }

    /// Completes `line` and queues it for output.
    pub fn finish(&self, line: &mut Vec<u8>, status: u16, elapsed: Duration) {
        let _ = writeln!(
            line,
            ",\"status\":{status},\"duration_us\":{}}}",
            elapsed.as_micros()
        );
        let mut buffer = self.buffer.borrow_mut();
        buffer.extend_from_slice(line);
        line.clear();
        if buffer.len() >= FLUSH_BYTES {
            Self::write_out(&mut buffer);
        }
    }

    /// Queues the line of a finished connection on a TLS or TCP port.
    pub fn stream(&self, entry: &StreamEntry, elapsed: Duration) {
        let mut line = Vec::with_capacity(256);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = write!(
            line,
            "{{\"ts\":{}.{:06},\"port\":{},\"protocol\":\"{}\"",
            now.as_secs(),
            now.subsec_micros(),
            entry.port,
            entry.protocol
        );
        if let Some(peer) = entry.peer {
            let _ = write!(line, ",\"client\":\"{peer}\"");
        }
        if let Some(name) = &entry.server_name {
            push_field(&mut line, "sni", name.as_bytes());
        }
        if let Some(route) = &entry.route {
            push_field(&mut line, "route", route.as_bytes());
        }
        if let Some(upstream) = entry.upstream {
            let _ = write!(line, ",\"upstream\":\"{upstream}\"");
        }
        let _ = write!(line, ",\"status\":{}", entry.status);
        if let Some(spliced) = &entry.spliced {
            let _ = write!(
                line,
                ",\"bytes_in\":{},\"bytes_out\":{},\"ended\":\"{}\"",
                spliced.to_upstream,
                spliced.to_client,
                spliced.ended.as_str()
            );
        }
        let _ = writeln!(line, ",\"duration_us\":{}}}", elapsed.as_micros());
        let mut buffer = self.buffer.borrow_mut();
        buffer.extend_from_slice(&line);
        if buffer.len() >= FLUSH_BYTES {
            Self::write_out(&mut buffer);
        }
    }

    pub fn flush(&self) {
        Self::write_out(&mut self.buffer.borrow_mut());
    }

    fn write_out(buffer: &mut Vec<u8>) {
        if !buffer.is_empty() {
            let _ = std::io::stdout().write_all(buffer);
            buffer.clear();
        }
    }
}

fn push_field(line: &mut Vec<u8>, name: &str, value: &[u8]) {
    let _ = write!(line, ",\"{name}\":");
    let mut text = String::new();
    crate::log::push_json_string(&mut text, &String::from_utf8_lossy(value));
    line.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{HeadLimits, parse};

    #[test]
    fn lines_are_json() {
        let raw = b"GET /a\"b?x HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_header_count: 10,
            max_header_bytes: 1024,
            max_request_line_bytes: 1024,
        };
        // A quote is not a valid target byte for httparse, so use one that is.
        let raw = if parse(raw, &limits, &mut head).is_ok() {
            &raw[..]
        } else {
            &b"GET /a%22b?x HTTP/1.1\r\nHost: h\r\n\r\n"[..]
        };
        assert!(parse(raw, &limits, &mut head).unwrap());
        let info = ConnInfo {
            port: 80,
            peer: "127.0.0.1:5000".parse().unwrap(),
            tls: false,
        };
        let log = AccessLog::default();
        let mut line = Vec::new();
        AccessLog::begin(&mut line, raw, &head, &info);
        log.finish(&mut line, 200, Duration::from_micros(1500));
        let buffered = log.buffer.borrow().clone();
        let record: serde_json::Value = serde_json::from_slice(&buffered).unwrap();
        assert_eq!(record["status"], 200);
        assert_eq!(record["duration_us"], 1500);
        assert_eq!(record["method"], "GET");
        assert_eq!(record["host"], "h");
        assert_eq!(record["client"], "127.0.0.1:5000");
    }

    #[test]
    fn stream_lines_are_json() {
        use crate::l4::splice::Ended;
        let log = AccessLog::default();
        let entry = StreamEntry {
            peer: Some("127.0.0.1:5000".parse().unwrap()),
            port: 443,
            protocol: "tls",
            server_name: Some("db.\"example\".com".into()),
            route: Some("ns/db".into()),
            upstream: Some("10.0.0.1:5432".parse().unwrap()),
            status: 200,
            spliced: Some(Spliced {
                to_upstream: 10,
                to_client: 20,
                ended: Ended::Closed,
            }),
        };
        log.stream(&entry, Duration::from_micros(7));
        log.stream(&StreamEntry::default(), Duration::ZERO);
        let buffered = log.buffer.borrow().clone();
        let lines: Vec<serde_json::Value> = buffered
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["sni"], "db.\"example\".com");
        assert_eq!(lines[0]["route"], "ns/db");
        assert_eq!(lines[0]["upstream"], "10.0.0.1:5432");
        assert_eq!(lines[0]["bytes_in"], 10);
        assert_eq!(lines[0]["bytes_out"], 20);
        assert_eq!(lines[0]["ended"], "closed");
        assert_eq!(lines[0]["duration_us"], 7);
        assert_eq!(lines[1]["status"], 0);
        assert!(lines[1].get("sni").is_none());
    }
}
