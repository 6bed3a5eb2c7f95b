//! The HTTP/1.1 proxy engine that runs on each core.

pub mod backend_tls;
pub mod connection;
pub mod min_rate;
pub mod mirror;
pub mod redirect;
pub mod serialize;
pub mod upstream;
