//! TLS termination: what each core's rustls server config holds (certificates chosen by SNI,
//! tickets that resume on any core, client validation), and the stream a terminated
//! connection is served over.

mod config;
mod stream;

pub use config::{CertificateMaterial, TicketKey, server_config};
pub use stream::{ServerTlsStream, accept};
