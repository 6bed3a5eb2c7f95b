//! Routing: the immutable tables of one config generation and how a request finds its rule.
//!
//! A [`Snapshot`] is built once on the control thread from a validated `CompiledConfig` and
//! shared read-only with every core through an `Arc`. Nothing in it changes after the build,
//! so cores read it without locks; per-core mutable state (round-robin cursors, counters,
//! TLS server configs) lives in the core, not here. The TLS client configs for backends are
//! the exception: built here once per generation rather than once per core, since parsing CA
//! bundles is the expensive part; what they share across cores (the session cache, the rate
//! limit of failure logs) is touched once per handshake, not per request.

pub mod cors;
pub mod host;
pub mod matcher;
pub mod stream_route;
pub mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_api::CompiledConfig;
use portcullis_api::certificate;
use portcullis_api::config::{
    BackendProtocol, ClientValidationMode, PortProtocol, ProxySettings, Transport,
};
use portcullis_api::validate::validate;

use crate::proxy::backend_tls::UpstreamTls;
use crate::tls::CertificateMaterial;
use host::HostPattern;
use table::ListenerTable;

/// Maps built from a config. Their keys come from the config, never from requests (a request
/// only probes them), so SipHash's flooding resistance buys nothing here, and a 10 000-route
/// build hashes several keys per route. foldhash is still seeded per map.
pub type ConfigMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What building one config's tables shares across listeners: certificate and backend
/// indices by name, and the request-counter slots handed out so far.
pub struct BuildContext<'c> {
    pub certificates: ConfigMap<&'c str, u32>,
    pub backends: ConfigMap<&'c str, u32>,
    stat_slots: ConfigMap<(&'c str, &'c str), u32>,
    stat_keys: Vec<(Arc<str>, Arc<str>)>,
}

impl<'c> BuildContext<'c> {
    /// Indices follow the order of the names given; `routes` (a hint) sizes the counter
    /// slots.
    pub fn new(
        certificates: impl IntoIterator<Item = &'c str>,
        backends: impl IntoIterator<Item = &'c str>,
        routes: usize,
    ) -> Self {
        Self {
            certificates: index_by_name(certificates),
            backends: index_by_name(backends),
            stat_slots: ConfigMap::with_capacity_and_hasher(routes, Default::default()),
            stat_keys: Vec::with_capacity(routes),
        }
    }

    /// The counter slot of (listener, route); route "" counts the listener's unmatched
    /// requests. The same pair always gets the same slot.
    pub fn stat_slot(&mut self, listener: &'c str, route: &'c str) -> u32 {
        if let Some(slot) = self.stat_slots.get(&(listener, route)) {
            return *slot;
        }
        // Slots of one listener are handed out together: share its name.
        let listener_name = match self.stat_keys.last() {
            Some((last, _)) if **last == *listener => last.clone(),
            _ => listener.into(),
        };
        let slot = self.stat_keys.len() as u32;
        self.stat_keys.push((listener_name, route.into()));
        self.stat_slots.insert((listener, route), slot);
        slot
    }

    /// The route name of a slot `stat_slot` handed out, shared with the slot's key.
    pub fn slot_route_name(&self, slot: u32) -> Arc<str> {
        match self.stat_keys.get(slot as usize) {
            Some((_, route)) => route.clone(),
            None => Arc::from(""),
        }
    }
}

/// Each name's position in `names`.
fn index_by_name<'c>(names: impl IntoIterator<Item = &'c str>) -> ConfigMap<&'c str, u32> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (name, i as u32))
        .collect()
}

/// The routing tables of one config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub settings: ProxySettings,
    pub ports: Vec<PortTable>,
    pub backends: Vec<BackendTable>,
    pub certificates: Vec<CertificateMaterial>,
    /// (listener, route) of each request-counter slot; route "" counts unmatched requests.
    pub stat_keys: Vec<(Arc<str>, Arc<str>)>,
}

#[derive(Debug)]
pub struct PortTable {
    pub port: u16,
    pub protocol: PortProtocol,
    pub listeners: Vec<ListenerTable>,
    /// The client certificates the port asks for when it terminates TLS; None: none asked for.
    pub client_validation: Option<ClientValidationTable>,
    /// Every handshake on the port is a full one: no session tickets issued or accepted.
    pub session_resumption_disabled: bool,
}

/// How a TLS-terminating port checks client certificates. The CA bundle is parsed here, once
/// per config on the control thread, like the backends' bundles; each core builds its own
/// verifier from these read-only roots when it installs the config, never per connection.
#[derive(Debug)]
pub struct ClientValidationTable {
    pub roots: Arc<rustls::RootCertStore>,
    pub mode: ClientValidationMode,
}

impl PortTable {
    /// The listener serving `host` (normalized): exact hostname, else the longest matching
    /// wildcard, else the listener without hostname. A request never falls through to a
    /// less specific listener's routes (Gateway API listener isolation).
    pub fn select(&self, host: &str) -> Option<&ListenerTable> {
        self.listeners
            .iter()
            .filter(|l| l.hostname.matches(host))
            .max_by_key(|l| l.hostname.specificity())
    }

    /// Listeners whose hostname could accept `server_name` (for TLS certificate selection).
    pub fn select_for_sni(&self, server_name: Option<&str>) -> Option<&ListenerTable> {
        match server_name {
            Some(name) => self.select(name),
            None => self
                .listeners
                .iter()
                .find(|l| l.hostname == HostPattern::Any),
        }
    }
}

#[derive(Debug)]
pub struct BackendTable {
    pub name: Arc<str>,
    pub protocol: BackendProtocol,
    pub endpoints: Vec<SocketAddr>,
    /// How connections to the endpoints are secured; None: plaintext. Shared with the
    /// detached tasks that send mirror copies.
    pub tls: Option<Arc<UpstreamTls>>,
}

impl Snapshot {
    /// Validates `config` completely and builds its tables. On error nothing is kept and the
    /// message says what and where.
    pub fn build(config: &CompiledConfig) -> Result<Snapshot, String> {
        validate(config).map_err(|e| e.to_string())?;

        let mut certificates = Vec::with_capacity(config.certificates.len());
        for (i, certificate) in config.certificates.iter().enumerate() {
            let material = CertificateMaterial::parse(certificate)
                .map_err(|e| format!("certificates[{i}] ({:?}): {e}", certificate.name))?;
            certificates.push(material);
        }
        // A counter slot per listener and per (listener, route).
        let slots = config
            .ports
            .iter()
            .flat_map(|p| &p.listeners)
            .map(|l| 1 + l.routes.len() + l.stream_routes.len())
            .sum();
        let mut context = BuildContext::new(
            config.certificates.iter().map(|c| c.name.as_str()),
            config.backends.iter().map(|b| b.name.as_str()),
            slots,
        );
        let mut backends = Vec::with_capacity(config.backends.len());
        for (i, backend) in config.backends.iter().enumerate() {
            let tls = match &backend.tls {
                Some(tls) => {
                    // Validation made sure the name is one of the certificates.
                    let client = tls.client_certificate.as_deref().and_then(|name| {
                        let index = *context.certificates.get(name)? as usize;
                        Some(&certificates.get(index)?.parsed)
                    });
                    Some(Arc::new(
                        UpstreamTls::build(tls, backend.protocol, client)
                            .map_err(|e| format!("backends[{i}] ({:?}).tls: {e}", backend.name))?,
                    ))
                }
                None => None,
            };
            backends.push(BackendTable {
                name: backend.name.as_str().into(),
                protocol: backend.protocol,
                endpoints: backend.endpoints.clone(),
                tls,
            });
        }

        let mut ports = Vec::with_capacity(config.ports.len());
        for (i, port) in config.ports.iter().enumerate() {
            let mut listeners = Vec::with_capacity(port.listeners.len());
            for (j, listener) in port.listeners.iter().enumerate() {
                let table = ListenerTable::build(listener, &mut context)
                    .map_err(|e| format!("ports[{i}].listeners[{j}]: {e}"))?;
                listeners.push(table);
            }
            let client_validation = match &port.client_validation {
                Some(validation) => Some(ClientValidationTable {
                    roots: Arc::new(
                        certificate::parse_ca_bundle(&validation.ca_certificates_pem).map_err(
                            |e| format!("ports[{i}].client_validation.ca_certificates_pem: {e}"),
                        )?,
                    ),
                    mode: validation.mode,
                }),
                None => None,
            };
            ports.push(PortTable {
                port: port.port,
                protocol: port.protocol,
                listeners,
                client_validation,
                session_resumption_disabled: port.session_resumption_disabled,
            });
        }
        ports.sort_by_key(|p| (p.port, p.protocol.transport()));

        Ok(Snapshot {
            generation: config.generation,
            settings: config.settings.clone(),
            ports,
            backends,
            certificates,
            stat_keys: context.stat_keys,
        })
    }

    /// The port taking TCP connections (HTTP, HTTPS, TLS or TCP) on `port`.
    pub fn port(&self, port: u16) -> Option<&PortTable> {
        self.port_of(port, Transport::Tcp)
    }

    /// The port of `transport` on `port`: a number can have a TCP and a UDP port.
    pub fn port_of(&self, port: u16, transport: Transport) -> Option<&PortTable> {
        self.ports
            .binary_search_by_key(&(port, transport), |p| (p.port, p.protocol.transport()))
            .ok()
            .map(|i| &self.ports[i])
    }
}
