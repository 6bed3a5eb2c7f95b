//! A tiny upstream for the demo and the benchmarks: answers every request with
//! "hello from NAME" and an `x-backend: NAME` header, with keep-alive.
//!
//! Usage: demo_backend NAME ADDRESS   (e.g. `demo_backend v1 127.0.0.1:18181`)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(name), Some(address)) = (args.next(), args.next()) else {
        eprintln!("usage: demo_backend NAME ADDRESS");
        std::process::exit(2);
    };
    let listener = match TcpListener::bind(&address) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("demo_backend: cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || serve(stream, &name));
    }
}

fn serve(stream: TcpStream, name: &str) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let body = format!("hello from {name}\n");
    loop {
        let mut content_length = 0usize;
        let mut close = false;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((n, v)) = header.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                } else if n.eq_ignore_ascii_case("connection")
                    && v.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut sink = vec![0u8; content_length];
        if reader.read_exact(&mut sink).is_err() {
            return;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}
