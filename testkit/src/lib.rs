//! Helpers shared by the integration tests of every crate in the workspace.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Ports handed out by [`free_port`] come from below the kernel's ephemeral range (32768 and up
/// by default), so a port we probe and release cannot be taken in the meantime by some test's
/// outgoing connection, which is what made `bind(0)`-then-close racy.
const FIRST_PORT: u32 = 20_000;
const PORT_COUNT: u32 = 12_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback TCP port that nothing listens on right now. Each test process walks its own
/// stride through the range (seeded by its pid), so parallel test binaries rarely probe the same
/// port, and a port that is busy is skipped.
///
/// # Panics
/// When no port in the range can be bound, which means the machine is out of ports.
pub fn free_port() -> u16 {
    let seed = std::process::id().wrapping_mul(7919);
    let candidates = (0..PORT_COUNT).map(|_| candidate(seed, NEXT.fetch_add(1, Ordering::Relaxed)));
    first_bindable(candidates).unwrap_or_else(|| {
        panic!(
            "no free loopback port between {FIRST_PORT} and {}",
            FIRST_PORT + PORT_COUNT
        )
    })
}

/// The `step`th port of the walk seeded by `seed`; 131 is coprime to the range's size, so a
/// walk visits every port once before repeating.
fn candidate(seed: u32, step: u32) -> u16 {
    let offset = seed.wrapping_add(step.wrapping_mul(131)) % PORT_COUNT;
    u16::try_from(FIRST_PORT + offset).unwrap_or(u16::MAX)
}

fn first_bindable(mut candidates: impl Iterator<Item = u16>) -> Option<u16> {
    candidates.find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
}

/// `reader.read(buf)`, retried when a signal interrupts it: tests run under tracers (strace for
/// `make seccomp-profile`) and signal-heavy harnesses, and an EINTR is never the proxy's doing.
pub fn read_uninterrupted(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!((20_000..32_000).contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn a_busy_port_is_skipped() {
        let busy = free_port();
        let _held = TcpListener::bind(("127.0.0.1", busy)).unwrap();
        let next = free_port();
        assert_eq!(first_bindable([busy, next].into_iter()), Some(next));
    }

    #[test]
    fn a_walk_visits_every_port_once() {
        let mut seen: Vec<u16> = (0..PORT_COUNT).map(|step| candidate(12345, step)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), PORT_COUNT as usize);
    }
}

/// A TLS client's server verifier that accepts any certificate chain for any name, for tests
/// where a failed handshake must mean the server refused, or that compare the certificate
/// served themselves. Handshake signatures are still checked, with `0`'s algorithms.
#[derive(Debug)]
pub struct AcceptAnyServerCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
