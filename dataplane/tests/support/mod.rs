//! Shared harness for the proxy's integration tests: test backends, a proxy process, raw and
//! TLS clients, and config builders. Everything runs over real loopback sockets.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod certs;
pub mod client;
pub mod client_auth;
pub mod config;
pub mod proxy;
pub mod tls_backend;

#[allow(unused_imports)]
pub use backend::{Backend, Recorded};
#[allow(unused_imports)]
pub use client::{Client, Response};
pub use config::ConfigBuilder;
pub use proxy::Proxy;

pub use portcullis_testkit::free_port;
