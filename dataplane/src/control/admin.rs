//! The admin endpoint: readiness, liveness, Prometheus metrics and the active config.
//! One request per connection; it is for probes and operators, not for traffic.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::spawn_local;
use glommio::timer::Timer;

use super::Control;
use super::listen::exclusive_listener;
use crate::metrics;
use crate::warn;

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the admin address now (so start-up fails on a taken address) and returns the
/// listener to serve.
pub fn bind(address: SocketAddr) -> std::io::Result<std::os::fd::OwnedFd> {
    exclusive_listener(address)
}

pub async fn serve(control: Rc<Control>, socket: std::os::fd::OwnedFd) {
    // SAFETY: `socket` is an owned, bound, listening TCP socket created by `bind`; ownership
    // of the descriptor moves into the glommio listener.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                spawn_local(handle(control.clone(), stream)).detach();
            }
            Err(e) => {
                warn!("admin accept failed", "error" = e);
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(control: Rc<Control>, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let path = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                let path = request.path.unwrap_or("").to_string();
                if method != "GET" && method != "HEAD" {
                    respond(&mut stream, 405, "text/plain", b"only GET\n").await;
                    return;
                }
                break path;
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
            _ => {
                respond(&mut stream, 400, "text/plain", b"bad request\n").await;
                return;
            }
        }
    };
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/live" => respond(&mut stream, 200, "text/plain", b"live\n").await,
        "/ready" => {
            if control.is_ready() {
                respond(&mut stream, 200, "text/plain", b"ready\n").await
            } else {
                respond(&mut stream, 503, "text/plain", b"not ready\n").await
            }
        }
        "/metrics" => {
            let cores = control.collect_stats().await;
            let text = metrics::render(&control.control_stats(), &cores);
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4",
                text.as_bytes(),
            )
            .await
        }
        "/config_dump" => match control.active_config() {
            Some(config) => {
                let body = serde_json::to_vec_pretty(&config.redacted()).unwrap_or_default();
                respond(&mut stream, 200, "application/json", &body).await
            }
            None => respond(&mut stream, 404, "text/plain", b"no config yet\n").await,
        },
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let mut out = Vec::with_capacity(body.len() + 128);
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::http::reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(body);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}
