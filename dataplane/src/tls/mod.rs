//! TLS termination: what each core's rustls server config holds (certificates chosen by SNI,
//! tickets that resume on any core, client validation, cipher suite order), the ClientHello
//! read ahead of the handshake, and the stream a terminated connection is served over.

pub mod client_hello;
mod config;
mod stream;

pub use config::{CertificateMaterial, PortTlsConfigs, TicketKey, server_configs};
pub use stream::{ServerTlsStream, accept, accept_on_port};
