//! Builders for the CompiledConfig model, so tests read as the routes they configure.

use portcullis_api::CompiledConfig;
use portcullis_api::config::*;

use super::Backend;

/// Builds a config with one HTTP (or HTTPS) port; more ports via `port`.
pub struct ConfigBuilder {
    config: CompiledConfig,
}

impl ConfigBuilder {
    pub fn new(generation: u64) -> Self {
        Self {
            config: CompiledConfig::empty(generation),
        }
    }

    pub fn build(self) -> CompiledConfig {
        self.config
    }

    /// The simplest proxy: `backend` (as `ns/b:80`) behind one catch-all route on an HTTP
    /// `port`, listener `http`.
    pub fn catch_all(backend: &Backend, port: u16) -> Self {
        Self::catch_all_at(&backend.endpoint(), port)
    }

    /// `catch_all` for a backend that is only an address (one a test serves by hand).
    pub fn catch_all_at(endpoint: &str, port: u16) -> Self {
        Self::new(1).backend_at("ns/b:80", &[endpoint]).http_port(
            port,
            "http",
            vec![route(
                "ns/r",
                &[],
                vec![rule(vec![], vec![to("ns/b:80", 1)])],
            )],
        )
    }

    /// Adds an HTTP port with one listener (no hostname) named `listener`.
    pub fn http_port(mut self, port: u16, listener: &str, routes: Vec<HttpRoute>) -> Self {
        self.config.ports.push(Port {
            port,
            protocol: PortProtocol::Http,
            client_validation: None,
            session_resumption_disabled: false,
            listeners: vec![Listener {
                name: listener.into(),
                hostname: None,
                certificates: vec![],
                routes,
                passthrough: false,
                stream_routes: vec![],
            }],
        });
        self
    }

    /// Adds a port with the given listeners.
    pub fn port(mut self, port: u16, protocol: PortProtocol, listeners: Vec<Listener>) -> Self {
        self.config.ports.push(Port {
            port,
            protocol,
            listeners,
            client_validation: None,
            session_resumption_disabled: false,
        });
        self
    }

    /// Asks clients of the (already added) `port` for certificates from `ca_pem`.
    pub fn client_validation(
        mut self,
        port: u16,
        ca_pem: &str,
        mode: ClientValidationMode,
    ) -> Self {
        let entry = self
            .config
            .ports
            .iter_mut()
            .find(|p| p.port == port)
            .unwrap_or_else(|| panic!("no port {port} to validate clients on"));
        entry.client_validation = Some(ClientValidation {
            ca_certificates_pem: ca_pem.into(),
            mode,
        });
        self
    }

    /// Adds a backend named `name` with the given endpoints.
    pub fn backend(mut self, name: &str, endpoints: &[&Backend]) -> Self {
        self.config.backends.push(portcullis_api::config::Backend {
            name: name.into(),
            protocol: BackendProtocol::Http1,
            endpoints: endpoints.iter().map(|b| b.addr).collect(),
            tls: None,
        });
        self
    }

    /// Adds a backend with raw endpoint addresses (e.g. a closed port).
    pub fn backend_at(mut self, name: &str, endpoints: &[&str]) -> Self {
        self.config.backends.push(portcullis_api::config::Backend {
            name: name.into(),
            protocol: BackendProtocol::Http1,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            tls: None,
        });
        self
    }

    /// Makes backend `name` (added before) speak `protocol`.
    pub fn backend_protocol(mut self, name: &str, protocol: BackendProtocol) -> Self {
        let backend = self
            .config
            .backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name:?}"));
        backend.protocol = protocol;
        self
    }

    /// Secures the connections to backend `name` (added before) with `tls`.
    pub fn backend_tls(mut self, name: &str, tls: BackendTls) -> Self {
        let backend = self
            .config
            .backends
            .iter_mut()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name:?} to secure"));
        backend.tls = Some(tls);
        self
    }

    pub fn certificate(mut self, name: &str, cert_chain_pem: &str, private_key_pem: &str) -> Self {
        self.config.certificates.push(Certificate {
            name: name.into(),
            cert_chain_pem: cert_chain_pem.into(),
            private_key_pem: private_key_pem.into(),
        });
        self
    }

    pub fn settings(mut self, f: impl FnOnce(&mut ProxySettings)) -> Self {
        f(&mut self.config.settings);
        self
    }
}

pub fn listener(
    name: &str,
    hostname: Option<&str>,
    certificates: &[&str],
    routes: Vec<HttpRoute>,
) -> Listener {
    Listener {
        name: name.into(),
        hostname: hostname.map(Into::into),
        certificates: certificates.iter().map(|c| c.to_string()).collect(),
        routes,
        passthrough: false,
        stream_routes: vec![],
    }
}

/// A TLSRoute, TCPRoute or UDPRoute: every connection (or UDP session) it takes goes to
/// `backends` (name, weight) by weight.
pub fn stream_route(name: &str, hostnames: &[&str], backends: &[(&str, u32)]) -> StreamRoute {
    StreamRoute {
        name: name.into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        backends: backends
            .iter()
            .map(|(backend, weight)| WeightedBackend {
                weight: *weight,
                target: BackendTarget::Backend(backend.to_string()),
                filters: vec![],
            })
            .collect(),
    }
}

/// The listener of a TCP or UDP port: no hostname, no certificates, stream routes only.
pub fn stream_listener(name: &str, routes: Vec<StreamRoute>) -> Listener {
    Listener {
        name: name.into(),
        hostname: None,
        certificates: vec![],
        routes: vec![],
        passthrough: false,
        stream_routes: routes,
    }
}

pub fn route(name: &str, hostnames: &[&str], rules: Vec<RouteRule>) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        rules,
    }
}

/// A rule matching `matches` (empty: everything) and sending to weighted backends.
pub fn rule(matches: Vec<RouteMatch>, backends: Vec<WeightedBackend>) -> RouteRule {
    RouteRule {
        matches,
        backends,
        ..Default::default()
    }
}

pub fn to(backend: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Backend(backend.into()),
        filters: vec![],
    }
}

pub fn invalid(reason: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Invalid(reason.into()),
        filters: vec![],
    }
}

pub fn prefix(path: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::PathPrefix(path.into()),
        ..Default::default()
    }
}

pub fn exact(path: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::Exact(path.into()),
        ..Default::default()
    }
}

pub fn regex(path: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::RegularExpression(path.into()),
        ..Default::default()
    }
}

pub fn header_value(name: &str, value: &str) -> HeaderValue {
    HeaderValue {
        name: name.into(),
        value: value.into(),
    }
}

/// TLS to a backend: SNI `server_name`, trusting the PEM bundle `ca_pem`, and (when not empty)
/// requiring one of `subject_alt_names` instead of `server_name`.
pub fn backend_tls(
    server_name: &str,
    ca_pem: &str,
    subject_alt_names: Vec<SubjectAltName>,
) -> BackendTls {
    BackendTls {
        client_certificate: None,
        system_trust_anchors: false,
        policy: "ns/backend-tls".into(),
        server_name: server_name.into(),
        ca_certificates_pem: ca_pem.into(),
        subject_alt_names,
    }
}
