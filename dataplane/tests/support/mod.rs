//! Shared harness for the proxy's integration tests: test backends, a proxy process, raw and
//! TLS clients, and config builders. Everything runs over real loopback sockets.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod client;
pub mod config;
pub mod proxy;

#[allow(unused_imports)]
pub use backend::{Backend, Recorded};
#[allow(unused_imports)]
pub use client::{Client, Response};
pub use config::ConfigBuilder;
pub use proxy::Proxy;

/// A port that was free a moment ago (the OS picks it; the listener is closed again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}
