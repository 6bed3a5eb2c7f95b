//! Turning a compiled Gateway into its status and its proxy config.

use std::collections::BTreeMap;

use portcullis_api::CompiledConfig;
use portcullis_api::config::{
    Backend, Certificate, GatewayIdentity, HttpRoute, Listener, Port, PortProtocol, StreamRoute,
};

use super::gateways::{GatewayState, ListenerState, PortKey, Protocol};
use super::listener_sets::ListenerSetState;
use super::{ExposedPort, GatewayOutput, ListenerOutput};

impl GatewayState {
    /// The Gateway's status and its config. A Gateway that is not accepted gets a config with
    /// no listeners: its proxies run, become ready and serve nothing, which is what its status
    /// says, and they pick up the Gateway's listeners as soon as it is fixed.
    pub fn finish(self) -> GatewayOutput {
        let conditions = self.conditions();
        let listeners = self
            .listeners
            .iter()
            .map(|listener| {
                self.listener_output(listener, self.generation, self.rejected.is_none())
            })
            .collect();
        let accepted = conditions.first().is_some_and(|c| c.is_true());
        let config = Some(if accepted {
            self.config()
        } else {
            self.config_without_listeners()
        });
        GatewayOutput {
            service_ports: self.service_ports(),
            attached_listener_sets: self.attached_listener_sets(),
            class_name: self.class_name,
            conditions,
            listeners,
            config,
            parameters: self.parameters,
            parameters_resolved: self.parameters_resolved,
            static_addresses: self.static_addresses,
        }
    }

    /// The listeners of the ListenerSets attached to this Gateway, with their set.
    fn admitted_set_listeners(&self) -> impl Iterator<Item = (&ListenerSetState, &ListenerState)> {
        self.listener_sets
            .iter()
            .filter(|set| set.admitted())
            .flat_map(|set| set.listeners.iter().map(move |l| (set, l)))
    }

    /// Distinct ports of the listeners with a supported protocol, served or not, ascending.
    /// The ports of the config are among them: a listener is served only once accepted,
    /// which needs a supported protocol and a valid port.
    fn service_ports(&self) -> Vec<ExposedPort> {
        let from_sets = self.admitted_set_listeners().map(|(_, l)| l);
        let mut ports: Vec<ExposedPort> = self
            .listeners
            .iter()
            .chain(from_sets)
            .filter(|listener| listener.port != 0)
            .filter_map(|listener| {
                let udp = listener.protocol? == Protocol::Udp;
                Some(ExposedPort {
                    port: listener.port,
                    udp,
                })
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// One entry of `status.listeners` (a Gateway's, or a ListenerSet's: `g` is the generation
    /// of the object that declares the listener).
    pub fn listener_output(
        &self,
        listener: &ListenerState,
        g: i64,
        parent_serves: bool,
    ) -> ListenerOutput {
        ListenerOutput {
            name: listener.name.clone(),
            supported_kinds: listener.supported_kinds.clone(),
            attached_routes: i32::try_from(listener.attachments.len()).unwrap_or(i32::MAX),
            conditions: self.listener_conditions(listener, g, parent_serves),
        }
    }

    fn config_without_listeners(&self) -> CompiledConfig {
        let mut config = CompiledConfig::empty(0);
        config.gateway = GatewayIdentity {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
        };
        config
    }

    /// The proxy config: programmable listeners grouped by port, their routes in tie-break
    /// order, and the backends and certificates they use, each once and sorted by name.
    pub fn config(&self) -> CompiledConfig {
        let mut config = self.config_without_listeners();
        let mut ports: BTreeMap<PortKey, Port> = BTreeMap::new();
        let mut backends: BTreeMap<String, Backend> = BTreeMap::new();
        let mut certificates: BTreeMap<String, Certificate> = BTreeMap::new();
        // ListenerSet listeners share the Gateway's ports; their names are qualified with the
        // ListenerSet, since a name is unique only within the object that declares it.
        let own = self.listeners.iter().map(|l| (l.name.clone(), l));
        let from_sets = self
            .admitted_set_listeners()
            .map(|(set, l)| (format!("{}/{}", set.key, l.name), l));
        for (name, listener) in own.chain(from_sets).filter(|(_, l)| l.programmable()) {
            let protocol = match listener.protocol {
                Some(Protocol::Https) => PortProtocol::Https,
                Some(Protocol::Tls) => PortProtocol::Tls,
                Some(Protocol::Tcp) => PortProtocol::Tcp,
                Some(Protocol::Udp) => PortProtocol::Udp,
                Some(Protocol::Http) | None => PortProtocol::Http,
            };
            for certificate in &listener.certificates {
                certificates.insert(certificate.name.clone(), certificate.clone());
            }
            let mut routes = Vec::new();
            let mut stream_routes = Vec::new();
            for attachment in &listener.attachments {
                for backend in &attachment.translated.backends {
                    add_backend(&mut backends, backend);
                }
                let name = attachment.route.to_string();
                let hostnames = attachment.hostnames.clone();
                if matches!(
                    protocol,
                    PortProtocol::Tls | PortProtocol::Tcp | PortProtocol::Udp
                ) {
                    stream_routes.push(StreamRoute {
                        name,
                        hostnames,
                        backends: attachment
                            .translated
                            .rules
                            .iter()
                            .flat_map(|r| r.backends.iter().cloned())
                            .collect(),
                    });
                } else {
                    routes.push(HttpRoute {
                        name,
                        hostnames,
                        rules: attachment.translated.rules.clone(),
                    });
                }
            }
            let port = ports.entry(listener.port_key()).or_insert_with(|| Port {
                port: listener.port,
                protocol,
                listeners: Vec::new(),
                client_validation: None,
                session_resumption_disabled: false,
            });
            // Validation is per port (the Gateway's tls.frontend is keyed by port): every
            // listener on it shares the handshake that asks for the certificate.
            if port.client_validation.is_none() {
                port.client_validation = listener.client_validation.clone();
            }
            // Resumption is decided before the server name picks a listener, so it is per port
            // too: one listener that refuses it, for forward secrecy, refuses it for the port.
            port.session_resumption_disabled |= listener.session_resumption_disabled;
            port.listeners.push(Listener {
                name,
                hostname: listener.hostname.clone(),
                certificates: listener
                    .certificates
                    .iter()
                    .map(|c| c.name.clone())
                    .collect(),
                routes,
                passthrough: listener.passthrough,
                stream_routes,
            });
        }
        self.present_client_certificate(&mut backends, &mut certificates);
        config.ports = ports.into_values().collect();
        config.backends = backends.into_values().collect();
        config.certificates = certificates.into_values().collect();
        config
    }

    /// Every TLS backend of this Gateway's config presents the Gateway's backend client
    /// certificate (`spec.tls.backend.clientCertificateRef`), which joins the config's
    /// certificates (one entry with a listener's certificate from the same Secret). Set here,
    /// per Gateway: the same Service port may be a backend of Gateways with different
    /// certificates, or none. A config without TLS backends does not carry it.
    fn present_client_certificate(
        &self,
        backends: &mut BTreeMap<String, Backend>,
        certificates: &mut BTreeMap<String, Certificate>,
    ) {
        let Some(certificate) = &self.backend_client_certificate else {
            return;
        };
        let mut used = false;
        for tls in backends.values_mut().filter_map(|b| b.tls.as_mut()) {
            tls.client_certificate = Some(certificate.name.clone());
            used = true;
        }
        if used {
            certificates
                .entry(certificate.name.clone())
                .or_insert_with(|| certificate.clone());
        }
    }
}

/// Adds `backend` once. Backends with one name have one protocol: a Service port is named
/// `ns/svc:port` with the protocol its appProtocol says (stream routes take it too, and the L4
/// path ignores it), and a GRPCRoute backend that needs HTTP/2 where the port does not say
/// h2c is another backend, `ns/svc:port/grpc` (see `backends::grpc_backend_name`). A Service
/// port that HTTPRoutes and stream routes (TLSRoute, TCPRoute) both use is one backend; only
/// the HTTP side applies its BackendTLSPolicy, so its TLS settings are kept whichever route
/// came first (the L4 path ignores them and forwards bytes).
fn add_backend(backends: &mut BTreeMap<String, Backend>, backend: &Backend) {
    match backends.entry(backend.name.clone()) {
        std::collections::btree_map::Entry::Vacant(entry) => {
            entry.insert(backend.clone());
        }
        std::collections::btree_map::Entry::Occupied(mut entry) => {
            if entry.get().tls.is_none() {
                entry.get_mut().tls = backend.tls.clone();
            }
        }
    }
}
