//! The HTTP proxy engine that runs on each core: HTTP/1.1 (`connection`) and HTTP/2 (`h2`).

pub mod backend_tls;
pub mod connection;
pub mod failure;
pub mod h2;
pub mod min_rate;
pub mod mirror;
pub mod redirect;
pub mod retry;
pub mod serialize;
pub mod upstream;
