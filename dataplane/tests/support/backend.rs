//! A test upstream: an HTTP/1.1 server on a loopback port that records every request it gets
//! and answers with a JSON echo, or in the way the request path asks for:
//!
//! - `/status/NNN`: answer with that status.
//! - `/fail/N/NNN/…`: answer status NNN to the first N requests for this exact path, then echo
//!   (what a backend that recovers looks like to a retrying proxy).
//! - `/drop/N/…`: close the connection unanswered on the first N requests for this path.
//! - `/stall/N/MS/…`: wait MS milliseconds before answering the first N requests for this path.
//! - `/chunked/N`: a chunked response of N bytes.
//! - `/close/N`: a response of N bytes delimited by closing the connection (no length).
//! - `/sleep/MS`: wait MS milliseconds, then echo.
//! - `/bytes/N`: a Content-Length response of N bytes.
//! - `/events/N/MS`: a chunked stream of N events (`data: i`), one every MS milliseconds.
//! - `/ws`: answer an Upgrade with 101 and then echo raw bytes.
//! - `/own-cors`: an empty 200 with its own `access-control-allow-origin` and `vary`.
//! - anything else: JSON `{"backend", "method", "path", "headers", "body_len", "body"}`.
//!
//! Every response carries `x-backend: <name>` and `x-connection: <n>` (which upstream
//! connection served it), so tests can see the split and connection reuse.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn received_for(requests: &[Recorded], path: &str) -> usize {
    requests.iter().filter(|r| r.path == path).count()
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub connection: u64,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n == &name.to_ascii_lowercase())
            .count()
    }
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicU64>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let backend = Backend {
            name: name.to_string(),
            addr,
            requests: requests.clone(),
            connections: connections.clone(),
        };
        let name = name.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let id = connections.fetch_add(1, Ordering::SeqCst) + 1;
                let requests = requests.clone();
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, &name, id, &requests);
                });
            }
        });
        backend
    }

    /// "127.0.0.1:port".
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Requests received for exactly `path`.
    pub fn received(&self, path: &str) -> usize {
        received_for(&self.requests.lock().unwrap(), path)
    }

    /// Upstream connections accepted so far.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

fn serve_connection(
    stream: TcpStream,
    name: &str,
    connection: u64,
    requests: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    serve_stream(stream, name, connection, requests)
}

/// Serves HTTP/1.1 on any byte stream (plain TCP, or TLS for the TLS test backend).
pub(super) fn serve_stream<S: Read + Write>(
    stream: S,
    name: &str,
    connection: u64,
    requests: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        let mut parts = line.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((n, v)) = header.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap_or(0);
            body.resize(len, 0);
            reader.read_exact(&mut body)?;
        } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if size == 0 {
                    // Trailer section up to the empty line.
                    loop {
                        let mut t = String::new();
                        reader.read_line(&mut t)?;
                        if t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; size];
                reader.read_exact(&mut chunk)?;
                body.extend_from_slice(&chunk);
                let mut crlf = [0u8; 2];
                reader.read_exact(&mut crlf)?;
            }
        }
        let recorded = Recorded {
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            connection,
        };
        let seen_before = {
            let mut requests = requests.lock().unwrap();
            let seen = received_for(&requests, &path) as u64;
            requests.push(recorded);
            seen
        };

        let common = format!("x-backend: {name}\r\nx-connection: {connection}\r\n");
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let number = |i: usize| {
            segments
                .get(i)
                .and_then(|s| s.split('?').next())
                .and_then(|s| s.parse::<u64>().ok())
        };
        let close_requested = get("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let failing = segments.first() == Some(&"fail")
            && number(1).is_some_and(|failures| seen_before < failures);
        let early = number(1).is_some_and(|n| seen_before < n);
        match segments.first().copied() {
            Some("drop") if early => return Ok(()),
            Some("stall") if early => {
                std::thread::sleep(Duration::from_millis(number(2).unwrap_or(1000)));
                echo(
                    reader.get_mut(),
                    &common,
                    name,
                    &method,
                    &path,
                    &headers,
                    &body,
                )?;
            }
            Some("status") | Some("fail") if segments[0] == "status" || failing => {
                let status = number(if failing { 2 } else { 1 }).unwrap_or(200);
                let body = format!("status {status}\n");
                let no_body = status == 204 || status == 304 || method == "HEAD";
                let framing = if status == 204 || status == 304 {
                    String::new()
                } else {
                    format!("content-length: {}\r\n", body.len())
                };
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} Test\r\n{common}{framing}\r\n"
                )?;
                if !no_body {
                    reader.get_mut().write_all(body.as_bytes())?;
                }
            }
            Some("own-cors") => {
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\n{common}access-control-allow-origin: https://backend.example\r\n\
                     vary: Accept-Encoding\r\ncontent-length: 0\r\n\r\n"
                )?;
            }
            Some("chunked") => {
                let n = number(1).unwrap_or(10) as usize;
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\n{common}transfer-encoding: chunked\r\n\r\n"
                )?;
                let data = pattern(n);
                for piece in data.chunks(1000) {
                    write!(reader.get_mut(), "{:x};ext=1\r\n", piece.len())?;
                    reader.get_mut().write_all(piece)?;
                    reader.get_mut().write_all(b"\r\n")?;
                }
                reader.get_mut().write_all(b"0\r\nx-trailer: t\r\n\r\n")?;
            }
            Some("close") => {
                let n = number(1).unwrap_or(10) as usize;
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\n{common}connection: close\r\n\r\n"
                )?;
                reader.get_mut().write_all(&pattern(n))?;
                reader.get_mut().flush()?;
                return Ok(());
            }
            Some("bytes") => {
                let n = number(1).unwrap_or(10) as usize;
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\n{common}content-length: {n}\r\n\r\n"
                )?;
                if method != "HEAD" {
                    reader.get_mut().write_all(&pattern(n))?;
                }
            }
            Some("events") => {
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 200 OK\r\n{common}content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )?;
                reader.get_mut().flush()?;
                let gap = Duration::from_millis(number(2).unwrap_or(100));
                for i in 0..number(1).unwrap_or(3) {
                    if i > 0 {
                        std::thread::sleep(gap);
                    }
                    let event = format!("data: {i}\n\n");
                    write!(reader.get_mut(), "{:x}\r\n{event}\r\n", event.len())?;
                    reader.get_mut().flush()?;
                }
                reader.get_mut().write_all(b"0\r\n\r\n")?;
            }
            Some("sleep") => {
                std::thread::sleep(Duration::from_millis(number(1).unwrap_or(100)));
                echo(
                    reader.get_mut(),
                    &common,
                    name,
                    &method,
                    &path,
                    &headers,
                    &body,
                )?;
            }
            Some("ws") if get("upgrade").is_some() => {
                write!(
                    reader.get_mut(),
                    "HTTP/1.1 101 Switching Protocols\r\n{common}upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                )?;
                // Echo raw bytes until the peer closes.
                let mut buf = [0u8; 4096];
                let pending = reader.buffer().to_vec();
                let mut raw = reader.into_inner();
                if !pending.is_empty() {
                    raw.write_all(&pending)?;
                    raw.flush()?;
                }
                loop {
                    let n = raw.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    raw.write_all(&buf[..n])?;
                    raw.flush()?;
                }
            }
            _ => echo(
                reader.get_mut(),
                &common,
                name,
                &method,
                &path,
                &headers,
                &body,
            )?,
        }
        reader.get_mut().flush()?;
        if close_requested {
            return Ok(());
        }
    }
}

fn echo(
    writer: &mut impl Write,
    common: &str,
    name: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (n, v) in headers {
        map.entry(n.clone()).or_default().push(v.clone());
    }
    let json = serde_json::json!({
        "backend": name,
        "method": method,
        "path": path,
        "headers": map,
        "body_len": body.len(),
        "body": String::from_utf8_lossy(body),
    })
    .to_string();
    write!(
        writer,
        "HTTP/1.1 200 OK\r\n{common}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        json.len()
    )?;
    if method != "HEAD" {
        writer.write_all(json.as_bytes())?;
    }
    Ok(())
}

/// Deterministic body bytes: "0123456789" repeated.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'0' + (i % 10) as u8).collect()
}
