//! Complete validation of a [`CompiledConfig`], shared by the compiler (to never emit a config
//! the proxy would refuse) and the proxy (to NACK before anything is swapped).
//!
//! Errors name the offending element by its path, e.g.
//! `ports[0].listeners[1].routes["ns/web"].rules[2].matches[0].path`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::config::*;

/// Upper bounds that keep one config from exhausting the proxy. Generous for real Gateways.
pub const MAX_PORTS: usize = 64;
pub const MAX_ROUTES_PER_LISTENER: usize = 100_000;
pub const MAX_WEIGHT: u32 = 1_000_000;
pub const MAX_REGEX_LEN: usize = 1024;
/// Entries in each list of a CORS filter (the Gateway API allows 64).
pub const MAX_CORS_LIST: usize = 64;
/// RequestMirror filters per rule (a rule holds at most 16 filters of any kind).
pub const MAX_MIRRORS: usize = 16;
/// Most subject alt names a BackendTLSPolicy may require (the CRD allows 5).
pub const MAX_SUBJECT_ALT_NAMES: usize = 16;
/// Compiled-size limit per regex, so a hostile pattern cannot blow up memory.
pub const MAX_REGEX_COMPILED_BYTES: usize = 1 << 20;

/// Framing and hop-by-hop headers: the proxy writes them per connection.
pub const PROXY_OWNED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Set,
    AddOrRemove,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

/// Checks every invariant the proxy relies on. The first violation is returned.
pub fn validate(config: &CompiledConfig) -> Result<(), ValidationError> {
    let mut v = Validator::default();
    v.config(config);
    match v.first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[derive(Default)]
struct Validator {
    /// Where the validator is, spelled out only when something fails: a config with 10 000
    /// routes would otherwise format a path string for every element it visits.
    path: Vec<Segment>,
    first_error: Option<ValidationError>,
}

#[derive(Clone, Copy)]
enum Segment {
    /// `name` as written, e.g. `settings` or `.path`.
    Field(&'static str),
    /// `.name`, for a field named at run time.
    Setting(&'static str),
    /// `list[index]`, e.g. `.routes[3]`.
    Index(&'static str, usize),
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Segment::Field(name) => f.write_str(name),
            Segment::Setting(name) => write!(f, ".{name}"),
            Segment::Index(list, index) => write!(f, "{list}[{index}]"),
        }
    }
}

impl Validator {
    fn fail(&mut self, message: impl Into<String>) {
        if self.first_error.is_none() {
            // One line: errors end up in NACK replies, status messages and stderr.
            let message: String = message.into();
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            self.first_error = Some(ValidationError {
                path: self.path.iter().map(Segment::to_string).collect(),
                message,
            });
        }
    }

    fn within<F: FnOnce(&mut Self)>(&mut self, segment: Segment, f: F) {
        self.path.push(segment);
        f(self);
        self.path.pop();
    }

    fn at<F: FnOnce(&mut Self)>(&mut self, list: &'static str, index: usize, f: F) {
        self.within(Segment::Index(list, index), f)
    }

    fn config(&mut self, config: &CompiledConfig) {
        if config.schema_version != SCHEMA_VERSION {
            self.within(Segment::Field("schema_version"), |v| {
                v.fail(format!(
                    "schema version {} is not supported (this proxy reads {SCHEMA_VERSION})",
                    config.schema_version
                ))
            });
            return;
        }
        self.within(Segment::Field("settings"), |v| v.settings(&config.settings));
        if config.ports.len() > MAX_PORTS {
            self.within(Segment::Field("ports"), |v| {
                v.fail(format!(
                    "{} ports exceed the limit of {MAX_PORTS}",
                    config.ports.len()
                ))
            });
        }

        let mut certificate_names = HashSet::new();
        for (i, certificate) in config.certificates.iter().enumerate() {
            self.at("certificates", i, |v| {
                if certificate.name.is_empty() {
                    v.fail("name is empty");
                }
                if !certificate_names.insert(certificate.name.as_str()) {
                    v.fail(format!("duplicate certificate name {:?}", certificate.name));
                }
                if certificate.cert_chain_pem.trim().is_empty() {
                    v.fail("cert_chain_pem is empty");
                }
                if certificate.private_key_pem.trim().is_empty() {
                    v.fail("private_key_pem is empty");
                }
            });
        }

        let mut backend_names = HashSet::new();
        for (i, backend) in config.backends.iter().enumerate() {
            self.at("backends", i, |v| {
                if backend.name.is_empty() {
                    v.fail("name is empty");
                }
                if !backend_names.insert(backend.name.as_str()) {
                    v.fail(format!("duplicate backend name {:?}", backend.name));
                }
                for (j, endpoint) in backend.endpoints.iter().enumerate() {
                    if endpoint.port() == 0 {
                        v.at(".endpoints", j, |v| v.fail("port 0"));
                    }
                }
                if let Some(tls) = &backend.tls {
                    v.within(Segment::Field(".tls"), |v| {
                        v.backend_tls(tls);
                        if let Some(name) = &tls.client_certificate
                            && !certificate_names.contains(name.as_str())
                        {
                            v.fail(format!(
                                "client_certificate {name:?} is not in certificates"
                            ));
                        }
                    });
                }
            });
        }

        let mut ports = HashSet::new();
        let mut listener_names = HashSet::new();
        for (i, port) in config.ports.iter().enumerate() {
            self.at("ports", i, |v| {
                if port.port == 0 {
                    v.fail("port 0 cannot be bound");
                }
                if !ports.insert((port.port, port.protocol.transport())) {
                    v.fail(format!(
                        "port {} appears twice for {:?}",
                        port.port,
                        port.protocol.transport()
                    ));
                }
                v.port(
                    port,
                    &certificate_names,
                    &backend_names,
                    &mut listener_names,
                );
            });
        }
    }

    fn settings(&mut self, s: &ProxySettings) {
        let positive = [
            ("max_header_count", s.max_header_count as u64),
            ("max_header_bytes", s.max_header_bytes as u64),
            ("max_request_line_bytes", s.max_request_line_bytes as u64),
            ("header_read_timeout_ms", s.header_read_timeout_ms),
            ("idle_timeout_ms", s.idle_timeout_ms),
            ("body_idle_timeout_ms", s.body_idle_timeout_ms),
            ("upstream_connect_timeout_ms", s.upstream_connect_timeout_ms),
            ("stream_idle_timeout_ms", s.stream_idle_timeout_ms),
            ("udp_session_idle_timeout_ms", s.udp_session_idle_timeout_ms),
            (
                "max_udp_sessions_per_core",
                s.max_udp_sessions_per_core as u64,
            ),
            ("upstream_idle_timeout_ms", s.upstream_idle_timeout_ms),
            (
                "max_connections_per_core",
                s.max_connections_per_core as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                self.within(Segment::Setting(name), |v| v.fail("must be greater than 0"));
            }
        }
        if s.max_header_count > 1024 {
            self.within(Segment::Field(".max_header_count"), |v| {
                v.fail("must be at most 1024")
            });
        }
        if s.max_header_bytes > 1 << 20 {
            self.within(Segment::Field(".max_header_bytes"), |v| {
                v.fail("must be at most 1 MiB")
            });
        }
        if s.max_request_line_bytes > s.max_header_bytes {
            self.within(Segment::Field(".max_request_line_bytes"), |v| {
                v.fail("must not exceed max_header_bytes")
            });
        }
    }

    fn port<'a>(
        &mut self,
        port: &'a Port,
        certificates: &HashSet<&str>,
        backends: &HashSet<&str>,
        listener_names: &mut HashSet<&'a str>,
    ) {
        if port.listeners.is_empty() {
            self.fail("a port needs at least one listener");
        }
        if port.protocol == PortProtocol::Tcp && port.listeners.len() > 1 {
            self.fail("a TCP port has exactly one listener: nothing tells its connections apart");
        }
        if port.protocol == PortProtocol::Udp && port.listeners.len() > 1 {
            self.fail("a UDP port has exactly one listener: nothing tells its datagrams apart");
        }
        let terminates = port
            .protocol
            .terminates_tls(port.listeners.iter().map(|l| l.passthrough));
        if port.session_resumption_disabled && !terminates {
            self.within(Segment::Field(".session_resumption_disabled"), |v| {
                v.fail("only a port that terminates TLS has sessions to resume");
            });
        }
        if let Some(validation) = &port.client_validation {
            self.within(Segment::Field(".client_validation"), |v| {
                if !terminates {
                    v.fail("only a port that terminates TLS can validate client certificates");
                }
                if let Err(e) = crate::certificate::parse_ca_bundle(&validation.ca_certificates_pem)
                {
                    v.fail(format!("ca_certificates_pem: {e}"));
                }
            });
        }
        let mut hostnames = HashSet::new();
        for (i, listener) in port.listeners.iter().enumerate() {
            self.at(".listeners", i, |v| {
                if listener.name.is_empty() {
                    v.fail("name is empty");
                }
                if !listener_names.insert(listener.name.as_str()) {
                    v.fail(format!("duplicate listener name {:?}", listener.name));
                }
                let key = listener.hostname.as_deref().map(str::to_ascii_lowercase);
                if let Some(hostname) = &listener.hostname {
                    v.within(Segment::Field(".hostname"), |v| v.hostname(hostname));
                }
                if !hostnames.insert(key) {
                    v.fail(format!(
                        "another listener on port {} has the same hostname {:?}",
                        port.port,
                        listener.hostname.as_deref().unwrap_or("(any)")
                    ));
                }
                v.listener_kind(port.protocol, listener);
                for (j, name) in listener.certificates.iter().enumerate() {
                    if !certificates.contains(name.as_str()) {
                        v.at(".certificates", j, |v| {
                            v.fail(format!("unknown certificate {name:?}"))
                        });
                    }
                }
                if listener.routes.len() > MAX_ROUTES_PER_LISTENER {
                    v.fail(format!(
                        "{} routes exceed the limit of {MAX_ROUTES_PER_LISTENER}",
                        listener.routes.len()
                    ));
                }
                for (j, route) in listener.routes.iter().enumerate() {
                    v.at(".routes", j, |v| v.route(route, backends));
                }
                if listener.stream_routes.len() > MAX_ROUTES_PER_LISTENER {
                    v.fail(format!(
                        "{} TLS routes exceed the limit of {MAX_ROUTES_PER_LISTENER}",
                        listener.stream_routes.len()
                    ));
                }
                for (j, route) in listener.stream_routes.iter().enumerate() {
                    v.at(".stream_routes", j, |v| v.tls_route(route, backends));
                }
            });
        }
    }

    /// What a listener may carry on a port of `protocol`: certificates where TLS is
    /// terminated, HTTP routes on HTTP(S) ports, TLS routes and passthrough on TLS ports.
    fn listener_kind(&mut self, protocol: PortProtocol, listener: &Listener) {
        let http = matches!(protocol, PortProtocol::Http | PortProtocol::Https);
        if http && !listener.stream_routes.is_empty() {
            self.fail("TLS, TCP and UDP routes can only attach to TLS, TCP and UDP ports");
        }
        if !http && !listener.routes.is_empty() {
            self.fail("a TLS, TCP or UDP listener carries stream routes, not HTTP routes");
        }
        if listener.passthrough && protocol != PortProtocol::Tls {
            self.fail("passthrough is only possible on a TLS port");
        }
        match protocol {
            PortProtocol::Https if listener.certificates.is_empty() => {
                self.fail("an HTTPS listener needs at least one certificate")
            }
            PortProtocol::Http | PortProtocol::Tcp | PortProtocol::Udp
                if !listener.certificates.is_empty() =>
            {
                self.fail("a plaintext listener cannot carry certificates")
            }
            PortProtocol::Tls => match (listener.passthrough, listener.certificates.is_empty()) {
                (true, false) => self.fail(
                    "a passthrough listener cannot carry certificates: the backend terminates TLS",
                ),
                (false, true) => {
                    self.fail("a TLS listener that terminates TLS needs at least one certificate")
                }
                _ => {}
            },
            PortProtocol::Tcp | PortProtocol::Udp => {
                // Nothing in a TCP connection or a UDP datagram names a host.
                let kind = if protocol == PortProtocol::Tcp {
                    "TCP"
                } else {
                    "UDP"
                };
                if listener.hostname.is_some() {
                    self.fail(format!("a {kind} listener has no hostname"));
                }
                if listener
                    .stream_routes
                    .iter()
                    .any(|r| !r.hostnames.is_empty())
                {
                    self.fail(format!("{kind} routes have no hostnames"));
                }
            }
            _ => {}
        }
    }

    /// What every route kind needs: a name, and hostnames that are hostnames.
    fn route_identity(&mut self, name: &str, hostnames: &[String]) {
        if name.is_empty() {
            self.fail("name is empty");
        }
        for (i, hostname) in hostnames.iter().enumerate() {
            self.at(".hostnames", i, |v| v.hostname(hostname));
        }
    }

    fn tls_route(&mut self, route: &StreamRoute, backends: &HashSet<&str>) {
        self.route_identity(&route.name, &route.hostnames);
        for (i, backend) in route.backends.iter().enumerate() {
            self.at(".backends", i, |v| {
                if backend.weight > MAX_WEIGHT {
                    v.fail(format!("weight {} exceeds {MAX_WEIGHT}", backend.weight));
                }
                if let BackendTarget::Backend(name) = &backend.target
                    && !backends.contains(name.as_str())
                {
                    v.fail(format!("unknown backend {name:?}"));
                }
                if !backend.filters.is_empty() {
                    v.fail("a TLS route's backends take no HTTP filters");
                }
            });
        }
    }

    fn route(&mut self, route: &HttpRoute, backends: &HashSet<&str>) {
        self.route_identity(&route.name, &route.hostnames);
        for (i, rule) in route.rules.iter().enumerate() {
            self.at(".rules", i, |v| {
                v.rule(rule, &|name: &str| backends.contains(name))
            });
        }
    }

    fn rule(&mut self, rule: &RouteRule, backends: &dyn Fn(&str) -> bool) {
        for (i, m) in rule.matches.iter().enumerate() {
            self.at(".matches", i, |v| v.route_match(m));
        }
        let all_prefix = rule.matches.is_empty()
            || rule
                .matches
                .iter()
                .all(|m| matches!(m.path, PathMatch::PathPrefix(_)));
        let mut has_redirect = false;
        let mut has_rewrite = false;
        let mut cors_filters = 0;
        let mut mirrors = 0;
        for (i, filter) in rule.filters.iter().enumerate() {
            self.at(".filters", i, |v| {
                v.filter(filter, all_prefix);
                if let Filter::RequestMirror(m) = filter {
                    mirrors += 1;
                    if !backends(m.backend.as_str()) {
                        v.fail(format!("unknown backend {:?}", m.backend));
                    }
                }
            });
            has_redirect |= matches!(filter, Filter::RequestRedirect(_));
            has_rewrite |= matches!(filter, Filter::UrlRewrite(_));
            cors_filters += usize::from(matches!(filter, Filter::Cors(_)));
        }
        if has_redirect && has_rewrite {
            self.within(Segment::Field(".filters"), |v| {
                v.fail("RequestRedirect and URLRewrite cannot be combined")
            });
        }
        if mirrors > MAX_MIRRORS {
            self.within(Segment::Field(".filters"), |v| {
                v.fail(format!("more than {MAX_MIRRORS} RequestMirror filters"))
            });
        }
        if cors_filters > 1 {
            self.within(Segment::Field(".filters"), |v| {
                v.fail("a rule has at most one CORS filter")
            });
        }
        let mut total: u64 = 0;
        for (i, backend) in rule.backends.iter().enumerate() {
            self.at(".backends", i, |v| {
                if backend.weight > MAX_WEIGHT {
                    v.fail(format!("weight {} exceeds {MAX_WEIGHT}", backend.weight));
                }
                total += u64::from(backend.weight);
                if let BackendTarget::Backend(name) = &backend.target
                    && !backends(name.as_str())
                {
                    v.fail(format!("unknown backend {name:?}"));
                }
                for (j, filter) in backend.filters.iter().enumerate() {
                    v.at(".filters", j, |v| match filter {
                        Filter::RequestHeaderModifier(m) => {
                            v.header_modifier(m, Direction::Request)
                        }
                        Filter::ResponseHeaderModifier(m) => {
                            v.header_modifier(m, Direction::Response)
                        }
                        _ => v.fail("only header modifiers are allowed on a backend"),
                    });
                }
            });
        }
        if let Some(retry) = &rule.retry {
            self.within(Segment::Field(".retry"), |v| {
                if let Some(code) = retry.codes.iter().find(|c| !(400..=599).contains(*c)) {
                    v.fail(format!("code {code} is not between 400 and 599"));
                }
                if retry.backoff_ms > MAX_RETRY_BACKOFF_MS {
                    v.fail(format!(
                        "backoff_ms {} exceeds {MAX_RETRY_BACKOFF_MS}",
                        retry.backoff_ms
                    ));
                }
                if retry.attempts == 0 || retry.attempts > MAX_RETRY_ATTEMPTS {
                    v.fail(format!(
                        "attempts {} is not between 1 and {MAX_RETRY_ATTEMPTS}",
                        retry.attempts
                    ));
                }
            });
        }
        if let Some(ms) = rule.timeouts.request_ms
            && let Some(backend_ms) = rule.timeouts.backend_request_ms
            && ms > 0
            && backend_ms > ms
        {
            self.within(Segment::Field(".timeouts"), |v| {
                v.fail("backend_request_ms must not exceed request_ms")
            });
        }
    }

    fn route_match(&mut self, m: &RouteMatch) {
        self.within(Segment::Field(".path"), |v| match &m.path {
            PathMatch::Exact(p) | PathMatch::PathPrefix(p) => v.absolute_path(p),
            PathMatch::RegularExpression(r) => v.regex(r),
            PathMatch::GrpcMethod(method) => v.grpc_method(method),
        });
        for (i, h) in m.headers.iter().enumerate() {
            self.at(".headers", i, |v| {
                v.header_name(&h.name);
                v.string_match(&h.value);
            });
        }
        for (i, q) in m.query_params.iter().enumerate() {
            self.at(".query_params", i, |v| {
                if q.name.is_empty() {
                    v.fail("name is empty");
                }
                v.string_match(&q.value);
            });
        }
        if let Some(method) = &m.method
            && !is_token(method)
        {
            self.within(Segment::Field(".method"), |v| {
                v.fail(format!("invalid method {method:?}"))
            });
        }
    }

    fn string_match(&mut self, m: &StringMatch) {
        match m {
            StringMatch::Exact(value) => self.header_value(value),
            StringMatch::RegularExpression(r) => self.regex(r),
        }
    }

    fn filter(&mut self, filter: &Filter, all_prefix: bool) {
        match filter {
            Filter::RequestHeaderModifier(m) => self.header_modifier(m, Direction::Request),
            Filter::ResponseHeaderModifier(m) => self.header_modifier(m, Direction::Response),
            Filter::RequestRedirect(r) => {
                if let Some(scheme) = &r.scheme
                    && scheme != "http"
                    && scheme != "https"
                {
                    self.fail(format!("scheme {scheme:?} is not http or https"));
                }
                if let Some(hostname) = &r.hostname {
                    self.hostname_exact(hostname);
                }
                if r.port == Some(0) {
                    self.fail("port 0");
                }
                if ![301, 302, 303, 307, 308].contains(&r.status_code) {
                    self.fail(format!("redirect status {} is not allowed", r.status_code));
                }
                if let Some(path) = &r.path {
                    self.path_modifier(path, all_prefix);
                }
            }
            Filter::UrlRewrite(r) => {
                if let Some(hostname) = &r.hostname {
                    self.hostname_exact(hostname);
                }
                if let Some(path) = &r.path {
                    self.path_modifier(path, all_prefix);
                }
            }
            Filter::Cors(c) => self.cors(c),
            Filter::RequestMirror(m) => {
                if m.denominator == 0 || m.numerator > m.denominator {
                    self.fail(format!(
                        "mirror share {}/{} is not a fraction between 0 and 1",
                        m.numerator, m.denominator
                    ));
                }
            }
        }
    }

    fn cors(&mut self, c: &Cors) {
        self.within(Segment::Field(".allow_origins"), |v| {
            if c.allow_origins.len() > MAX_CORS_LIST {
                v.fail(format!("more than {MAX_CORS_LIST} origins"));
            }
            if c.allow_origins.len() > 1 && c.allow_origins.iter().any(|o| o == "*") {
                v.fail("\"*\" cannot be combined with other origins");
            }
            for origin in &c.allow_origins {
                if let Err(e) = crate::cors::OriginPattern::parse(origin) {
                    v.fail(e);
                }
            }
        });
        for (field, list) in [
            (".allow_methods", &c.allow_methods),
            (".allow_headers", &c.allow_headers),
            (".expose_headers", &c.expose_headers),
        ] {
            self.within(Segment::Field(field), |v| {
                if list.len() > MAX_CORS_LIST {
                    v.fail(format!("more than {MAX_CORS_LIST} entries"));
                }
                if list.len() > 1 && list.iter().any(|m| m == "*") {
                    v.fail("\"*\" cannot be combined with other entries");
                }
                // Each entry is written into a response header: tokens only.
                for entry in list {
                    if !is_token(entry) {
                        v.fail(format!("{entry:?} is not a method or header name"));
                    }
                }
            });
        }
        if c.max_age_seconds == 0 {
            self.within(Segment::Field(".max_age_seconds"), |v| {
                v.fail("must be at least 1")
            });
        }
    }

    fn path_modifier(&mut self, m: &PathModifier, all_prefix: bool) {
        match m {
            PathModifier::ReplaceFullPath(p) => self.absolute_path(p),
            PathModifier::ReplacePrefixMatch(p) => {
                self.absolute_path(p);
                if !all_prefix {
                    self.fail(
                        "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
                    );
                }
            }
        }
    }

    fn header_modifier(&mut self, m: &HeaderModifier, direction: Direction) {
        let mut seen = HashMap::new();
        for (i, h) in m.set.iter().enumerate() {
            self.at(".set", i, |v| {
                v.header_name(&h.name);
                v.header_value(&h.value);
                v.modifiable(&h.name, direction, Operation::Set);
                if seen.insert(h.name.to_ascii_lowercase(), ()).is_some() {
                    v.fail(format!("header {:?} is set twice", h.name));
                }
            });
        }
        for (i, h) in m.add.iter().enumerate() {
            self.at(".add", i, |v| {
                v.header_name(&h.name);
                v.header_value(&h.value);
                v.modifiable(&h.name, direction, Operation::AddOrRemove);
            });
        }
        for (i, name) in m.remove.iter().enumerate() {
            self.at(".remove", i, |v| {
                v.header_name(name);
                v.modifiable(name, direction, Operation::AddOrRemove);
            });
        }
    }

    /// Headers the proxy writes itself cannot be edited by a filter: framing and hop-by-hop
    /// headers describe one connection, and a second copy would make the message ambiguous.
    /// A request's Host may be replaced (like a hostname rewrite), not added or removed.
    fn modifiable(&mut self, name: &str, direction: Direction, operation: Operation) {
        let lower = name.to_ascii_lowercase();
        if PROXY_OWNED_HEADERS.contains(&lower.as_str()) {
            self.fail(format!(
                "header {name:?} is managed by the proxy and cannot be modified"
            ));
        } else if lower == "host"
            && (direction == Direction::Response || operation != Operation::Set)
        {
            self.fail(format!("header {name:?} can only be set on requests"));
        }
    }

    fn header_name(&mut self, name: &str) {
        if !is_token(name) {
            self.fail(format!("invalid header name {name:?}"));
        }
    }

    fn header_value(&mut self, value: &str) {
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            self.fail(format!(
                "header value {value:?} contains control characters"
            ));
        }
    }

    fn absolute_path(&mut self, path: &str) {
        if !path.starts_with('/') {
            self.fail(format!("path {path:?} must start with '/'"));
        } else if path.bytes().any(not_in_path) {
            self.fail(format!(
                "path {path:?} contains characters not allowed in a path"
            ));
        }
    }

    fn grpc_method(&mut self, method: &str) {
        if method.is_empty() {
            self.fail("gRPC method must not be empty");
        } else {
            // The method is the path's last element: a path's characters, without a '/'.
            if method.bytes().any(|b| b == b'/' || not_in_path(b)) {
                self.fail(format!(
                    "gRPC method {method:?} contains characters not allowed in a path element"
                ));
            }
        }
    }

    fn regex(&mut self, pattern: &str) {
        if pattern.len() > MAX_REGEX_LEN {
            self.fail(format!(
                "regular expression longer than {MAX_REGEX_LEN} bytes"
            ));
            return;
        }
        if let Err(e) = regex::RegexBuilder::new(&full_match_pattern(pattern))
            .size_limit(MAX_REGEX_COMPILED_BYTES)
            .build()
        {
            let mut message = String::from("invalid regular expression: ");
            let _ = write!(message, "{e}");
            self.fail(message);
        }
    }

    /// A Gateway API hostname: a DNS name, optionally with a leading "*." wildcard label.
    fn backend_tls(&mut self, tls: &BackendTls) {
        if !is_dns_name(&tls.server_name) {
            self.fail(format!("invalid server_name {:?}", tls.server_name));
        }
        match (tls.system_trust_anchors, tls.ca_certificates_pem.is_empty()) {
            (true, false) => {
                self.fail("set either ca_certificates_pem or system_trust_anchors, not both")
            }
            (true, true) => {}
            (false, _) => {
                if let Err(e) = crate::certificate::parse_ca_bundle(&tls.ca_certificates_pem) {
                    self.fail(format!("ca_certificates_pem: {e}"));
                }
            }
        }
        if tls.subject_alt_names.len() > MAX_SUBJECT_ALT_NAMES {
            self.fail(format!(
                "{} subject_alt_names exceed the limit of {MAX_SUBJECT_ALT_NAMES}",
                tls.subject_alt_names.len()
            ));
        }
        for (i, name) in tls.subject_alt_names.iter().enumerate() {
            self.at(".subject_alt_names", i, |v| match name {
                SubjectAltName::Hostname(hostname) => v.hostname(hostname),
                SubjectAltName::Uri(uri) => {
                    if !is_absolute_uri(uri) {
                        v.fail(format!("{uri:?} is not an absolute URI"));
                    }
                }
            });
        }
    }

    fn hostname(&mut self, hostname: &str) {
        let rest = hostname.strip_prefix("*.").unwrap_or(hostname);
        if !is_dns_name(rest) {
            self.fail(format!("invalid hostname {hostname:?}"));
        }
    }

    fn hostname_exact(&mut self, hostname: &str) {
        if !is_dns_name(hostname) {
            self.fail(format!("invalid hostname {hostname:?}"));
        }
    }
}

/// The pattern the proxy compiles for a configured regular expression: it must match the
/// whole value. Validation compiles exactly this text, so a pattern that validates always
/// builds (an `(?x)` comment would otherwise swallow the closing anchor).
pub fn full_match_pattern(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

/// Checks one route rule on its own (backend names are not looked up). The compiler uses it
/// to drop an invalid rule and report it, keeping the rest of the route.
pub fn validate_rule(rule: &RouteRule) -> Result<(), ValidationError> {
    let mut v = Validator::default();
    v.rule(rule, &|_| true);
    match v.first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// An absolute URI as RFC 3986 spells one: a scheme, a colon and a non-empty rest made of
/// visible ASCII. Good enough to refuse what could never match a certificate's URI name.
pub fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut scheme_bytes = scheme.bytes();
    scheme_bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty()
        && s.len() <= 2048
        && rest.bytes().all(|b| b.is_ascii_graphic())
}

/// RFC 9110 token: the grammar of methods and header names.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

pub fn is_token_byte(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`'
        | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

/// RFC 1123 DNS name (lowercase or uppercase letters, digits, hyphens; labels of 1–63 bytes).
pub fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests;

/// Bytes a request path never holds as they are (the query and fragment have been split off).
fn not_in_path(b: u8) -> bool {
    b <= 0x20 || b == 0x7f || b == b'?' || b == b'#'
}
