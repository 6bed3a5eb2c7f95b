//! A plain HTTP/1.1 client for the scenarios: keep-alive, honours `connection: close`, never
//! retries (a retry would hide exactly the failures the tests count).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

/// What `portcullis-echo` answers.
#[derive(Debug, Clone, Deserialize)]
pub struct Echo {
    pub pod: String,
    pub namespace: String,
    pub backend: String,
    pub path: String,
    pub host: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The echo backend's answer, when that is what this is.
    pub fn echo(&self) -> Option<Echo> {
        serde_json::from_slice(&self.body).ok()
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A keep-alive connection to one address, re-opened after the server closes it.
pub struct HttpClient {
    address: String,
    timeout: Duration,
    connection: Option<(TcpStream, Vec<u8>)>,
    /// Connections opened so far.
    pub connects: usize,
}

impl HttpClient {
    /// `address` is `host:port` (a bare IP means port 80).
    pub fn new(address: &str) -> HttpClient {
        let address = match address.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, 80).to_string(),
            Err(_) if address.contains(':') => address.to_string(),
            Err(_) => format!("{address}:80"),
        };
        HttpClient {
            address,
            timeout: Duration::from_secs(10),
            connection: None,
            connects: 0,
        }
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Response> {
        let request =
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: portcullis-e2e\r\n\r\n");
        self.send(request.as_bytes())
    }

    /// Sends one raw request and reads its response.
    pub fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        if self.connection.is_none() {
            let address = self.address.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::other(format!("{} resolves to nothing", self.address))
            })?;
            let stream = TcpStream::connect_timeout(&address, self.timeout)?;
            stream.set_read_timeout(Some(self.timeout))?;
            stream.set_write_timeout(Some(self.timeout))?;
            stream.set_nodelay(true)?;
            self.connects += 1;
            self.connection = Some((stream, Vec::new()));
        }
        let Some((stream, buffer)) = self.connection.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        let result = exchange(stream, buffer, request);
        match &result {
            Ok(response) if !response.closes() => {}
            _ => self.connection = None,
        }
        result
    }
}

/// Writes `request` on `stream` and reads one final response; bytes read past it stay in
/// `buffer` for the next exchange.
pub fn exchange<S: Read + Write>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    request: &[u8],
) -> std::io::Result<Response> {
    stream.write_all(request)?;
    stream.flush()?;
    loop {
        let response = read_response(stream, buffer)?;
        if response.status >= 200 {
            return Ok(response);
        }
    }
}

fn fill<S: Read>(stream: &mut S, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16384];
    let n = loop {
        match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other?,
        }
    };
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    buffer.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn read_response<S: Read>(stream: &mut S, buffer: &mut Vec<u8>) -> std::io::Result<Response> {
    let head_end = loop {
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buffer)?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if status < 200 || status == 204 || status == 304 {
        return Ok(response);
    }
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = read_chunked(stream, buffer)?;
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| std::io::Error::other("bad content-length"))?;
        while buffer.len() < length {
            fill(stream, buffer)?;
        }
        response.body = buffer.drain(..length).collect();
    } else {
        // Delimited by the close.
        loop {
            match fill(stream, buffer) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        response.body = std::mem::take(buffer);
    }
    Ok(response)
}

fn read_chunked<S: Read>(stream: &mut S, buffer: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            fill(stream, buffer)?;
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        buffer.drain(..line_end + 2);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if let Some(i) = buffer.windows(2).position(|w| w == b"\r\n") {
                    buffer.drain(..i + 2);
                    if i == 0 {
                        return Ok(body);
                    }
                    continue;
                }
                fill(stream, buffer)?;
            }
        }
        while buffer.len() < size + 2 {
            fill(stream, buffer)?;
        }
        body.extend(buffer.drain(..size));
        buffer.drain(..2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that plays back `input` and swallows writes.
    struct Replay(std::io::Cursor<Vec<u8>>);
    impl Read for Replay {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Replay {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reads_pipelined_length_chunked_and_interim_responses() {
        let mut stream = Replay(std::io::Cursor::new(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi\
              HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"
                .to_vec(),
        ));
        let mut buffer = Vec::new();
        let first = exchange(&mut stream, &mut buffer, b"").unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, b"hi".as_slice())
        );
        let second = exchange(&mut stream, &mut buffer, b"").unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (404, b"abcd".as_slice())
        );
        assert!(exchange(&mut stream, &mut buffer, b"").is_err());
    }

    #[test]
    fn bare_addresses_get_port_80() {
        assert_eq!(HttpClient::new("10.0.0.1").address, "10.0.0.1:80");
        assert_eq!(HttpClient::new("10.0.0.1:8080").address, "10.0.0.1:8080");
        assert_eq!(HttpClient::new("[fd00::1]:81").address, "[fd00::1]:81");
        assert_eq!(HttpClient::new("fd00::1").address, "[fd00::1]:80");
        assert_eq!(HttpClient::new("gw.example").address, "gw.example:80");
    }
}
