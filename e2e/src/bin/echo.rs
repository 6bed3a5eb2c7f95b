//! The e2e backend: an HTTP/1.1 server that answers every request with JSON naming the pod that
//! answered and echoing the request, so tests can tell which backend a Gateway routed to.
//!
//! Environment: `PORT` (default 8080), `POD_NAME`, `POD_NAMESPACE`, `BACKEND` (a label the
//! test chose, e.g. "v1"). Keep-alive and Content-Length bodies are supported; anything else it
//! does not understand gets a 400 and a closed connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() -> std::process::ExitCode {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("portcullis-echo: cannot listen on port {port}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let identity = Identity {
        pod: std::env::var("POD_NAME").unwrap_or_default(),
        namespace: std::env::var("POD_NAMESPACE").unwrap_or_default(),
        backend: std::env::var("BACKEND").unwrap_or_default(),
    };
    eprintln!("portcullis-echo listening on {port}");
    for stream in listener.incoming().flatten() {
        let identity = identity.clone();
        std::thread::spawn(move || serve(stream, &identity));
    }
    std::process::ExitCode::SUCCESS
}

#[derive(Clone)]
struct Identity {
    pod: String,
    namespace: String,
    backend: String,
}

fn serve(stream: TcpStream, identity: &Identity) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
        else {
            let _ = writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            return;
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some() {
            let _ = writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            return;
        }
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || version == "HTTP/1.0";
        let answer = serde_json::json!({
            "pod": identity.pod,
            "namespace": identity.namespace,
            "backend": identity.backend,
            "method": method,
            "path": path,
            "host": header("host").unwrap_or_default(),
            "headers": headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "bodyBytes": length,
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n{answer}",
            answer.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
