//! TLS termination with rustls (aws-lc-rs): certificate material, per-core server configs,
//! SNI certificate selection and session tickets that resume on any core.
//!
//! Each core builds its own `ServerConfig` and its own `CertifiedKey`s from the DER in the
//! snapshot, so a handshake touches no state shared with another core. Resumption uses
//! stateless tickets sealed with one key that every core knows: with SO_REUSEPORT a returning
//! client usually lands on another core, where a per-core session cache would miss.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use portcullis_api::certificate::{self, ParsedCertificate};
use portcullis_api::config::{Certificate, PortProtocol};
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use crate::route::host::{HostPattern, MAX_HOST_LEN, normalize};
use crate::route::{PortTable, Snapshot};

/// A validated certificate chain and key, as DER, ready for any core to load.
#[derive(Debug)]
pub struct CertificateMaterial {
    pub name: Arc<str>,
    pub parsed: ParsedCertificate,
}

impl CertificateMaterial {
    /// Parses PEM and checks that the key loads and belongs to the leaf certificate.
    pub fn parse(certificate: &Certificate) -> Result<Self, String> {
        let parsed =
            certificate::parse_pem(&certificate.cert_chain_pem, &certificate.private_key_pem)?;
        Ok(Self {
            name: certificate.name.as_str().into(),
            parsed,
        })
    }
}

/// The session-ticket key every core seals tickets with. Generated once per process.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl TicketKey {
    pub fn generate() -> Result<Self, String> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(Self(key))
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// Tickets lifetime hint for clients: 12 hours.
const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;

/// Seals tickets as nonce ‖ AES-256-GCM(ciphertext ‖ tag). One instance per core.
struct SharedKeyTicketer {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SharedKeyTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKeyTicketer")
    }
}

impl SharedKeyTicketer {
    fn new(key: &TicketKey) -> Result<Self, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0)
            .map_err(|_| "ticket key rejected by AES-256-GCM".to_string())?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        })
    }
}

impl ProducesTickets for SharedKeyTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plain);
        let mut body = sealed.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut body)
            .ok()?;
        sealed.extend_from_slice(&body);
        Some(sealed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = cipher.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// Chooses a certificate by SNI among the listeners of one HTTPS port: exact hostname, then
/// the longest matching wildcard, then the listener without hostname. A server name that no
/// listener accepts gets no certificate, never another listener's.
#[derive(Debug)]
struct SniResolver {
    listeners: Vec<(HostPattern, Vec<Arc<CertifiedKey>>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        let server_name = match hello.server_name() {
            Some(name) => Some(normalize(name.as_bytes(), &mut buf)?),
            None => None,
        };
        let (_, keys) = match server_name {
            Some(name) => self
                .listeners
                .iter()
                .filter(|(pattern, _)| pattern.matches(name))
                .max_by_key(|(pattern, _)| pattern.specificity())?,
            None => self
                .listeners
                .iter()
                .find(|(pattern, _)| *pattern == HostPattern::Any)?,
        };
        let schemes = hello.signature_schemes();
        keys.iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| keys.first())
            .cloned()
    }
}

/// Builds this core's rustls config for one HTTPS port.
pub fn server_config(
    port: &PortTable,
    snapshot: &Snapshot,
    ticket_key: &TicketKey,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(certificate::provider());
    let mut loaded: Vec<Option<Arc<CertifiedKey>>> = vec![None; snapshot.certificates.len()];
    let mut listeners = Vec::with_capacity(port.listeners.len());
    for listener in &port.listeners {
        let mut keys = Vec::with_capacity(listener.certificates.len());
        for &index in &listener.certificates {
            let slot = loaded
                .get_mut(index as usize)
                .ok_or_else(|| format!("certificate index {index} out of range"))?;
            let key = match slot {
                Some(key) => key.clone(),
                None => {
                    let material = &snapshot.certificates[index as usize];
                    let key = Arc::new(material.parsed.load(&provider)?);
                    *slot = Some(key.clone());
                    key
                }
            };
            keys.push(key);
        }
        listeners.push((listener.hostname.clone(), keys));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { listeners }));
    // A TLS port forwards whatever protocol runs inside; only HTTPS ports speak HTTP/1.1.
    if port.protocol == PortProtocol::Https {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.ticketer = Arc::new(SharedKeyTicketer::new(ticket_key)?);
    // One ticket per full handshake is enough to resume once; each extra ticket costs the
    // server a seal per handshake.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_across_instances_sharing_a_key() {
        let key = TicketKey::generate().unwrap();
        let core_a = SharedKeyTicketer::new(&key).unwrap();
        let core_b = SharedKeyTicketer::new(&key).unwrap();
        let ticket = core_a.encrypt(b"session state").unwrap();
        assert_eq!(
            core_b.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );

        let other = SharedKeyTicketer::new(&TicketKey::generate().unwrap()).unwrap();
        assert_eq!(other.decrypt(&ticket), None);
        let mut tampered = ticket.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(core_b.decrypt(&tampered), None);
        assert_eq!(core_b.decrypt(&ticket[..10]), None);
        assert_ne!(
            core_a.encrypt(b"x"),
            core_a.encrypt(b"x"),
            "nonces must differ"
        );
    }

    #[test]
    fn certificate_material_is_checked() {
        let issued = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let good = Certificate {
            name: "ns/a".into(),
            cert_chain_pem: issued.cert.pem(),
            private_key_pem: issued.signing_key.serialize_pem(),
        };
        assert!(CertificateMaterial::parse(&good).is_ok());

        let mismatched = Certificate {
            private_key_pem: other.signing_key.serialize_pem(),
            ..good.clone()
        };
        let error = CertificateMaterial::parse(&mismatched).unwrap_err();
        assert!(error.contains("do not load"), "{error}");

        let garbage = Certificate {
            cert_chain_pem: "not pem".into(),
            ..good.clone()
        };
        assert!(CertificateMaterial::parse(&garbage).is_err());
        let no_key = Certificate {
            private_key_pem: issued.cert.pem(),
            ..good
        };
        assert!(CertificateMaterial::parse(&no_key).is_err());
    }
}
