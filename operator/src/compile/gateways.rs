//! GatewayClasses, Gateways and their listeners: acceptance, parameters, protocols,
//! conflicts, TLS certificate references and which route kinds and namespaces may attach.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use portcullis_api::certificate;
use portcullis_api::config::{Certificate, ClientValidation};
use portcullis_api::gateway_api::gateway::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector, GatewayListenersTlsMode,
};
use portcullis_api::v1alpha1::GatewayParametersSpec;
use portcullis_api::v1alpha1::gateway_parameters::{
    GROUP as PARAMETERS_GROUP, KIND as PARAMETERS_KIND,
};

use super::conditions::{Condition, Status, reasons, types};
use super::listener_sets::ListenerSetState;
use super::routes::Attachment;
use super::{
    ClassOutput, GATEWAY_GROUP, Index, ObjectKey, RouteKind, by_age, features, frontend_tls,
    gateway_backend_tls, generation, refs,
};

pub const HTTP_ROUTE: &str = "HTTPRoute";
pub const GRPC_ROUTE: &str = "GRPCRoute";
pub const TLS_ROUTE: &str = "TLSRoute";
pub const TCP_ROUTE: &str = "TCPRoute";
pub const UDP_ROUTE: &str = "UDPRoute";

/// Statuses of our GatewayClasses, with their (valid) parameters.
pub fn classes(index: &Index<'_>) -> BTreeMap<String, ClassOutput> {
    let mut out = BTreeMap::new();
    for class in &index.input.gateway_classes {
        if class.spec.controller_name != super::CONTROLLER_NAME {
            continue;
        }
        let generation = generation(class);
        let (accepted, parameters) = match &class.spec.parameters_ref {
            None => (Ok(()), None),
            Some(reference) => {
                let found = (reference.group == PARAMETERS_GROUP
                    && reference.kind == PARAMETERS_KIND)
                    .then(|| {
                        reference.namespace.as_ref().and_then(|ns| {
                            index
                                .gateway_parameters
                                .get(&ObjectKey::new(ns.clone(), reference.name.clone()))
                        })
                    })
                    .flatten();
                match found {
                    Some(parameters) => (Ok(()), Some(parameters.spec.clone())),
                    None => (
                        Err(format!(
                            "parametersRef must name an existing {PARAMETERS_KIND}.{PARAMETERS_GROUP} (with its namespace); {}/{} {}/{} not found",
                            reference.group,
                            reference.kind,
                            reference.namespace.as_deref().unwrap_or("<no namespace>"),
                            reference.name
                        )),
                        None,
                    ),
                }
            }
        };
        let condition = match accepted {
            Ok(()) => Condition::new(
                types::ACCEPTED,
                Status::True,
                reasons::ACCEPTED,
                "GatewayClass is accepted",
                generation,
            ),
            Err(message) => Condition::new(
                types::ACCEPTED,
                Status::False,
                reasons::INVALID_PARAMETERS,
                message,
                generation,
            ),
        };
        out.insert(
            class.name_any(),
            ClassOutput {
                conditions: vec![condition],
                supported_features: features::supported(),
                parameters,
            },
        );
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    /// TLS streams routed by SNI (TLSRoute); `ListenerState::passthrough` says whether TLS is
    /// terminated. Passthrough and terminating TLS listeners may share a port.
    Tls,
    /// TCP connections forwarded whole (TCPRoute); nothing in them names a host.
    Tcp,
    /// UDP datagrams forwarded per client (UDPRoute); nothing in them names a host either.
    Udp,
}

impl Protocol {
    /// The route kinds a listener of this protocol serves, in `supportedKinds` order: gRPC is
    /// HTTP/2, so HTTP and HTTPS listeners take GRPCRoutes next to HTTPRoutes.
    pub fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Protocol::Http | Protocol::Https => &[HTTP_ROUTE, GRPC_ROUTE],
            Protocol::Tls => &[TLS_ROUTE],
            Protocol::Tcp => &[TCP_ROUTE],
            Protocol::Udp => &[UDP_ROUTE],
        }
    }
}

/// Which namespaces may attach routes to a listener.
#[derive(Debug, Clone)]
pub enum AllowedNamespaces {
    Same,
    All,
    Selector(GatewayListenersAllowedRoutesNamespacesSelector),
}

/// A failed condition: its reason and message.
pub type Problem = (&'static str, String);

/// Where a listener is declared: a Gateway or a ListenerSet. Its namespace is the one
/// `allowedRoutes.namespaces.from: Same` means and the one certificateRefs resolve from.
#[derive(Debug, Clone, Copy)]
pub struct ListenerOwner<'a> {
    pub kind: &'static str,
    pub namespace: &'a str,
}

/// A listener after validation, collecting the routes that attach to it.
#[derive(Debug, Clone)]
pub struct ListenerState {
    pub name: String,
    /// The namespace of the Gateway or ListenerSet that declares it.
    pub namespace: String,
    pub port: u16,
    /// None when the protocol is not supported.
    pub protocol: Option<Protocol>,
    pub hostname: Option<String>,
    /// Accepted=False.
    pub not_accepted: Option<Problem>,
    /// Conflicted=True.
    pub conflicted: Option<Problem>,
    /// ResolvedRefs=False.
    pub unresolved: Option<Problem>,
    pub supported_kinds: Vec<RouteKind>,
    pub allowed_namespaces: AllowedNamespaces,
    /// Usable certificates (HTTPS, and TLS listeners in Terminate mode).
    pub certificates: Vec<Certificate>,
    /// A TLS listener in Passthrough mode: the backend terminates TLS.
    pub passthrough: bool,
    /// Client certificates its port asks for (the Gateway's `tls.frontend`).
    pub client_validation: Option<ClientValidation>,
    /// `tls.options` asks for full handshakes only (see [`TLS_SESSION_RESUMPTION_OPTION`]).
    pub session_resumption_disabled: bool,
    pub attachments: Vec<Attachment>,
}

/// A listener's port as the proxy binds it: its number, and whether it takes UDP datagrams
/// (a UDP port is apart from the TCP-based one of the same number).
pub type PortKey = (u16, bool);

impl ListenerState {
    pub fn port_key(&self) -> PortKey {
        (self.port, self.protocol == Some(Protocol::Udp))
    }

    /// Accepted and not conflicted.
    pub fn accepted(&self) -> bool {
        self.not_accepted.is_none() && self.conflicted.is_none()
    }

    /// Goes into the proxy config.
    pub fn programmable(&self) -> bool {
        self.accepted()
            && match self.protocol {
                Some(Protocol::Http) => true,
                Some(Protocol::Https) => !self.certificates.is_empty(),
                Some(Protocol::Tls) => self.passthrough || !self.certificates.is_empty(),
                Some(Protocol::Tcp | Protocol::Udp) => true,
                None => false,
            }
    }

    /// Valid in the sense of the Gateway's ListenersNotValid reason.
    pub fn valid(&self) -> bool {
        self.accepted() && self.unresolved.is_none()
    }

    pub fn allows_kind(&self, group: &str, kind: &str) -> bool {
        self.supported_kinds
            .iter()
            .any(|k| k.group == group && k.kind == kind)
    }

    pub fn allows_namespace(&self, index: &Index<'_>, route_namespace: &str) -> bool {
        match &self.allowed_namespaces {
            AllowedNamespaces::Same => self.namespace == route_namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(selector) => {
                selector_matches(selector, &index.namespace_labels(route_namespace))
            }
        }
    }
}

/// A Gateway of our class while it is being compiled.
#[derive(Debug, Clone)]
pub struct GatewayState {
    pub key: ObjectKey,
    pub generation: i64,
    pub class_name: String,
    /// Accepted=False for the Gateway itself (class not accepted, bad parametersRef,
    /// unsupported address type).
    pub rejected: Option<Problem>,
    /// Programmed=False/AddressNotUsable: spec.addresses asks for one that cannot carry
    /// traffic.
    pub address_not_usable: Option<String>,
    /// The IP addresses spec.addresses asks for by value, in order, without repeats: the
    /// Gateway's Service gets them as external IPs and they are the Gateway's addresses.
    pub static_addresses: Vec<String>,
    pub listeners: Vec<ListenerState>,
    /// The ListenerSets whose parentRef names this Gateway, in precedence order.
    pub listener_sets: Vec<ListenerSetState>,
    pub parameters: GatewayParametersSpec,
    /// `parameters` are what the class and the Gateway ask for: the class is accepted and
    /// the Gateway's own parametersRef resolves. Otherwise they are the class's, or defaults.
    pub parameters_resolved: bool,
    /// Some listener lets clients through without a valid certificate (AllowInsecureFallback).
    pub insecure_frontend: bool,
    /// The certificate its proxies present to TLS backends that ask for one
    /// (`spec.tls.backend.clientCertificateRef`), when that resolves.
    pub backend_client_certificate: Option<Certificate>,
    /// Why `spec.tls.backend.clientCertificateRef` does not resolve: the Gateway's own
    /// ResolvedRefs=False.
    pub unresolved: Option<Problem>,
}

/// Validates every Gateway of our classes.
pub fn gateways(
    index: &Index<'_>,
    classes: &BTreeMap<String, ClassOutput>,
) -> BTreeMap<ObjectKey, GatewayState> {
    let mut out = BTreeMap::new();
    for gateway in by_age(&index.input.gateways) {
        let Some(class) = classes.get(&gateway.spec.gateway_class_name) else {
            continue;
        };
        let key = ObjectKey::of(gateway);
        let generation = generation(gateway);
        let class_accepted = class.conditions.iter().all(Condition::is_true);
        let class_parameters = class.parameters.clone().unwrap_or_default();
        let (rejected, parameters) = if !class_accepted {
            (
                Some((
                    reasons::INVALID,
                    format!(
                        "GatewayClass {} is not accepted",
                        gateway.spec.gateway_class_name
                    ),
                )),
                class_parameters,
            )
        } else {
            match gateway_parameters(index, gateway) {
                Ok(Some(own)) => (None, own.merged_over(&class_parameters)),
                Ok(None) => (None, class_parameters),
                Err(message) => (
                    Some((reasons::INVALID_PARAMETERS, message)),
                    class_parameters,
                ),
            }
        };
        let parameters_resolved = rejected.is_none();
        let (rejected, address_not_usable, static_addresses) =
            match (rejected, requested_addresses(gateway)) {
                (Some(rejected), _) => (Some(rejected), None, Vec::new()),
                (None, Ok(addresses)) => (None, None, addresses),
                (None, Err(AddressProblem::UnsupportedType(message))) => (
                    Some((reasons::UNSUPPORTED_ADDRESS, message)),
                    None,
                    Vec::new(),
                ),
                (None, Err(AddressProblem::NotUsable(message))) => {
                    (None, Some(message), Vec::new())
                }
            };
        let mut listeners: Vec<ListenerState> = gateway
            .spec
            .listeners
            .iter()
            .map(|l| {
                let owner = ListenerOwner {
                    kind: "Gateway",
                    namespace: &key.namespace,
                };
                listener(index, owner, l)
            })
            .collect();
        let insecure_frontend = frontend_tls::apply(index, gateway, &mut listeners);
        mark_conflicts(&mut listeners);
        let (backend_client_certificate, unresolved) =
            match gateway_backend_tls::client_certificate(index, gateway) {
                None => (None, None),
                Some(Ok(certificate)) => (Some(certificate), None),
                Some(Err(problem)) => (None, Some(problem)),
            };
        out.insert(
            key.clone(),
            GatewayState {
                key,
                generation,
                class_name: gateway.spec.gateway_class_name.clone(),
                rejected,
                address_not_usable,
                static_addresses,
                listeners,
                listener_sets: Vec::new(),
                parameters,
                parameters_resolved,
                insecure_frontend,
                backend_client_certificate,
                unresolved,
            },
        );
    }
    out
}

enum AddressProblem {
    UnsupportedType(String),
    NotUsable(String),
}

/// `spec.addresses`. Only IPAddress is supported. An entry without a value lets the Gateway
/// have its Service's address; an entry with one is a static address, which the Service
/// takes as an external IP (nodes then accept the Gateway's traffic sent to it). An address
/// no node could receive traffic on (loopback, unspecified, multicast, link-local, broadcast)
/// is not usable.
fn requested_addresses(gateway: &Gateway) -> Result<Vec<String>, AddressProblem> {
    let mut addresses = Vec::new();
    let mut not_usable = None;
    for address in gateway.spec.addresses.iter().flatten() {
        let kind = address.r#type.as_deref().unwrap_or("IPAddress");
        if kind != "IPAddress" {
            return Err(AddressProblem::UnsupportedType(format!(
                "address type {kind:?} is not supported (IPAddress is)"
            )));
        }
        let Some(value) = address.value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        match value.parse::<IpAddr>() {
            Ok(ip) => match unusable_because(ip) {
                Some(why) => {
                    not_usable.get_or_insert_with(|| {
                        format!(
                            "static address {value} is {why}, which cannot receive the \
                             Gateway's traffic; remove it or use a unicast address"
                        )
                    });
                }
                None => {
                    let canonical = ip.to_string();
                    if !addresses.contains(&canonical) {
                        addresses.push(canonical);
                    }
                }
            },
            Err(_) => {
                not_usable.get_or_insert_with(|| {
                    format!("static address {value:?} is not an IP address")
                });
            }
        }
    }
    match not_usable {
        Some(message) => Err(AddressProblem::NotUsable(message)),
        None => Ok(addresses),
    }
}

/// Why `ip` cannot be a Gateway's address, if it cannot.
fn unusable_because(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
        ip if ip.is_unspecified() => Some("the unspecified address"),
        ip if ip.is_loopback() => Some("a loopback address"),
        ip if ip.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

fn gateway_parameters(
    index: &Index<'_>,
    gateway: &Gateway,
) -> Result<Option<GatewayParametersSpec>, String> {
    let Some(reference) = gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    else {
        return Ok(None);
    };
    if reference.group != PARAMETERS_GROUP || reference.kind != PARAMETERS_KIND {
        return Err(format!(
            "infrastructure.parametersRef must name a {PARAMETERS_KIND}.{PARAMETERS_GROUP}, not {}.{}",
            reference.kind, reference.group
        ));
    }
    let key = ObjectKey::new(
        gateway.namespace().unwrap_or_default(),
        reference.name.clone(),
    );
    match index.gateway_parameters.get(&key) {
        Some(parameters) => Ok(Some(parameters.spec.clone())),
        None => Err(format!("{PARAMETERS_KIND} {key} not found")),
    }
}

pub fn listener(
    index: &Index<'_>,
    owner: ListenerOwner<'_>,
    spec: &GatewayListeners,
) -> ListenerState {
    let mut state = ListenerState {
        name: spec.name.clone(),
        namespace: owner.namespace.to_string(),
        port: u16::try_from(spec.port).unwrap_or(0),
        protocol: None,
        hostname: spec.hostname.clone(),
        not_accepted: None,
        conflicted: None,
        unresolved: None,
        supported_kinds: Vec::new(),
        allowed_namespaces: AllowedNamespaces::Same,
        certificates: Vec::new(),
        passthrough: false,
        client_validation: None,
        session_resumption_disabled: false,
        attachments: Vec::new(),
    };
    state.protocol = match spec.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        "TLS" => Some(Protocol::Tls),
        // The API ignores a TCP or UDP listener's hostname; so do conflicts and routing.
        "TCP" => {
            state.hostname = None;
            Some(Protocol::Tcp)
        }
        "UDP" => {
            state.hostname = None;
            Some(Protocol::Udp)
        }
        other => {
            state.not_accepted = Some((
                reasons::UNSUPPORTED_PROTOCOL,
                format!("protocol {other:?} is not supported (HTTP, HTTPS, TLS, TCP and UDP are)"),
            ));
            return state;
        }
    };
    let route_kinds = state
        .protocol
        .map(Protocol::route_kinds)
        .unwrap_or_default();
    if state.port == 0 {
        state.not_accepted = Some((
            reasons::UNSUPPORTED_VALUE,
            format!("port {} is not valid", spec.port),
        ));
        return state;
    }

    // Route kinds: the protocol's kinds unless the listener restricts them.
    let requested = spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
    match requested {
        Some(kinds) if !kinds.is_empty() => {
            let mut invalid = Vec::new();
            for kind in kinds {
                let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
                match route_kinds
                    .iter()
                    .find(|k| group == GATEWAY_GROUP && **k == kind.kind)
                {
                    Some(supported) => {
                        if !state.supported_kinds.contains(&route_kind_of(supported)) {
                            state.supported_kinds.push(route_kind_of(supported));
                        }
                    }
                    None => invalid.push(format!("{}/{}", group, kind.kind)),
                }
            }
            if !invalid.is_empty() {
                state.unresolved = Some((
                    reasons::INVALID_ROUTE_KINDS,
                    format!(
                        "route kinds {} are not supported on this listener",
                        invalid.join(", ")
                    ),
                ));
            }
        }
        _ => state
            .supported_kinds
            .extend(route_kinds.iter().map(|k| route_kind_of(k))),
    }

    let namespaces = spec
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    state.allowed_namespaces = match namespaces.and_then(|n| n.from.clone()) {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => AllowedNamespaces::Same,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => AllowedNamespaces::All,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
            // A Selector without a selector selects nothing rather than everything.
            AllowedNamespaces::Selector(
                namespaces
                    .and_then(|n| n.selector.clone())
                    .unwrap_or_else(nothing_selector),
            )
        }
    };

    match state.protocol {
        Some(Protocol::Https) => tls(index, owner, spec, &mut state),
        Some(Protocol::Tls) => {
            let mode = spec.tls.as_ref().and_then(|t| t.mode.clone());
            if mode == Some(GatewayListenersTlsMode::Passthrough) {
                // The backend holds the certificate; certificateRefs have nothing to do.
                state.passthrough = true;
            } else {
                tls(index, owner, spec, &mut state);
            }
        }
        Some(Protocol::Http | Protocol::Tcp | Protocol::Udp) | None => {}
    }
    // After the references, so ResolvedRefs reports on them whatever the options say.
    if matches!(state.protocol, Some(Protocol::Https | Protocol::Tls))
        && state.not_accepted.is_none()
    {
        tls_options(spec, &mut state);
    }
    state
}

fn route_kind_of(kind: &str) -> RouteKind {
    RouteKind {
        group: GATEWAY_GROUP.into(),
        kind: kind.into(),
    }
}

fn nothing_selector() -> GatewayListenersAllowedRoutesNamespacesSelector {
    GatewayListenersAllowedRoutesNamespacesSelector {
        match_expressions: Some(vec![
            portcullis_api::gateway_api::gateway::GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions {
                key: "portcullis.dev/no-selector".into(),
                operator: "In".into(),
                values: Some(vec![]),
            },
        ]),
        match_labels: None,
    }
}

/// The `tls.options` key that turns session resumption off on a listener's port:
/// `"Disabled"` (every handshake a full one) or `"Enabled"` (the default).
pub const TLS_SESSION_RESUMPTION_OPTION: &str = "portcullis.dev/tls-session-resumption";

/// Reads a TLS listener's implementation-specific `tls.options`. Keys in our domain must be
/// ones we know, with a value we know: a typo would otherwise silently keep a setting the
/// platform team meant to change. Keys of other domains belong to other implementations (a
/// Gateway moved between classes keeps them) and are left alone.
fn tls_options(spec: &GatewayListeners, state: &mut ListenerState) {
    let options = spec.tls.as_ref().and_then(|t| t.options.as_ref());
    for (key, value) in options.into_iter().flatten() {
        if key == TLS_SESSION_RESUMPTION_OPTION {
            let disabled = match value.as_str() {
                "Enabled" => false,
                "Disabled" => true,
                other => {
                    state.not_accepted = Some((
                        reasons::UNSUPPORTED_VALUE,
                        format!("tls.options {key:?} is {other:?}; it must be Enabled or Disabled"),
                    ));
                    return;
                }
            };
            // A passthrough listener never sees the handshake; its option has nothing to do.
            state.session_resumption_disabled = disabled && !state.passthrough;
        } else if key
            .split_once('/')
            .is_some_and(|(domain, _)| domain.eq_ignore_ascii_case("portcullis.dev"))
        {
            state.not_accepted = Some((
                reasons::UNSUPPORTED_VALUE,
                format!(
                    "tls.options {key:?} is not a Portcullis option (known: {TLS_SESSION_RESUMPTION_OPTION})"
                ),
            ));
            return;
        }
    }
}

/// Resolves the certificateRefs of a listener that terminates TLS (HTTPS, or TLS in
/// Terminate mode).
fn tls(
    index: &Index<'_>,
    owner: ListenerOwner<'_>,
    spec: &GatewayListeners,
    state: &mut ListenerState,
) {
    let tls = spec.tls.as_ref();
    if state.protocol == Some(Protocol::Https)
        && tls.and_then(|t| t.mode.clone()) == Some(GatewayListenersTlsMode::Passthrough)
    {
        state.not_accepted = Some((
            reasons::UNSUPPORTED_VALUE,
            "HTTPS listeners terminate TLS; Passthrough needs protocol TLS".into(),
        ));
        return;
    }
    let references = tls
        .and_then(|t| t.certificate_refs.clone())
        .unwrap_or_default();
    if references.is_empty() {
        state.unresolved = Some((
            reasons::INVALID_CERTIFICATE_REF,
            "a listener that terminates TLS needs tls.certificateRefs".into(),
        ));
        return;
    }
    let from = refs::From {
        group: GATEWAY_GROUP,
        kind: owner.kind,
        namespace: owner.namespace,
    };
    let mut problems: Vec<Problem> = Vec::new();
    for reference in &references {
        let reference = CertificateRef {
            group: reference.group.as_deref().unwrap_or(""),
            kind: reference.kind.as_deref().unwrap_or("Secret"),
            namespace: reference.namespace.as_deref().unwrap_or(owner.namespace),
            name: &reference.name,
        };
        match resolve_certificate(
            index,
            &from,
            &reference,
            "certificateRef",
            reasons::INVALID_CERTIFICATE_REF,
        ) {
            Ok(certificate) => state.certificates.push(certificate),
            Err(problem) => problems.push(problem),
        }
    }
    if let Some(first) = problems.into_iter().next() {
        state.unresolved = Some(first);
    }
}

/// A reference to a Secret holding a certificate and its key: a listener's certificateRef, or
/// a Gateway's `tls.backend.clientCertificateRef`. Defaults applied: group "", kind Secret,
/// the referring object's namespace.
pub struct CertificateRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// The certificate a reference made by `from` names, as a config entry called
/// `namespace/name` (one Secret is one entry, whichever listeners or backends use it). Only
/// core Secrets are supported; another namespace needs a ReferenceGrant (RefNotPermitted).
/// `field` names the reference in messages, and `invalid` is the reason for every other
/// problem: another kind, a missing Secret, a Secret without a usable certificate and key.
pub fn resolve_certificate(
    index: &Index<'_>,
    from: &refs::From<'_>,
    reference: &CertificateRef<'_>,
    field: &str,
    invalid: &'static str,
) -> Result<Certificate, Problem> {
    let key = ObjectKey::new(reference.namespace, reference.name);
    if !reference.group.is_empty() || reference.kind != "Secret" {
        return Err((
            invalid,
            format!(
                "{field} {}/{} {key}: only core Secrets are supported",
                reference.group, reference.kind
            ),
        ));
    }
    let to = refs::To {
        group: "",
        kind: "Secret",
        namespace: reference.namespace,
        name: reference.name,
    };
    if !refs::permitted(&index.input.reference_grants, from, &to) {
        return Err((
            reasons::REF_NOT_PERMITTED,
            format!("Secret {key} is in another namespace and no ReferenceGrant allows it"),
        ));
    }
    let Some(secret) = index.secrets.get(&key) else {
        return Err((invalid, format!("Secret {key} not found")));
    };
    let (cert_chain_pem, private_key_pem) = certificate_from_secret(secret)
        .map_err(|message| (invalid, format!("Secret {key}: {message}")))?;
    Ok(Certificate {
        name: key.to_string(),
        cert_chain_pem,
        private_key_pem,
    })
}

/// The PEM certificate chain and key of a kubernetes.io/tls Secret, checked.
pub fn certificate_from_secret(secret: &Secret) -> Result<(String, String), String> {
    let field = |name: &str| -> Option<String> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(name).cloned())
            })
    };
    let (Some(cert), Some(key)) = (field("tls.crt"), field("tls.key")) else {
        return Err("no tls.crt and tls.key".into());
    };
    certificate::parse_pem(&cert, &key).map_err(|e| format!("malformed certificate: {e}"))?;
    Ok((cert, key))
}

/// Listeners that are not distinct: several protocols on one port (ProtocolConflict), or one
/// protocol with the same hostname twice on a port (HostnameConflict). No listener wins: every
/// listener involved is conflicted (GatewaySpec.Listeners, "Handling indistinct Listeners").
/// UDP listeners live beside the TCP-based ones of their port number: the spec counts a
/// mixture of TCP and UDP listeners on one port as distinct, and nothing a UDP datagram and a
/// TCP connection carry can be confused (DNS serves both on 53). Listeners with an
/// unsupported protocol, or already conflicted, take no part.
pub fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut protocols: HashMap<PortKey, Vec<Protocol>> = HashMap::new();
    let mut hostnames: HashMap<(PortKey, Option<String>), usize> = HashMap::new();
    for listener in listeners.iter().filter(|l| l.accepted()) {
        if let Some(protocol) = listener.protocol {
            let seen = protocols.entry(listener.port_key()).or_default();
            if !seen.contains(&protocol) {
                seen.push(protocol);
            }
            let host = listener.hostname.as_deref().map(str::to_ascii_lowercase);
            *hostnames.entry((listener.port_key(), host)).or_default() += 1;
        }
    }
    for listener in listeners.iter_mut().filter(|l| l.accepted()) {
        if listener.protocol.is_none() {
            continue;
        }
        if protocols
            .get(&listener.port_key())
            .is_some_and(|p| p.len() > 1)
        {
            listener.conflicted = Some((
                reasons::PROTOCOL_CONFLICT,
                format!(
                    "listeners with different protocols share port {}",
                    listener.port
                ),
            ));
            continue;
        }
        let host = listener.hostname.as_deref().map(str::to_ascii_lowercase);
        if hostnames
            .get(&(listener.port_key(), host))
            .is_some_and(|n| *n > 1)
        {
            listener.conflicted = Some((
                reasons::HOSTNAME_CONFLICT,
                format!(
                    "listeners on port {} share the hostname {}",
                    listener.port,
                    listener.hostname.as_deref().unwrap_or("(none)")
                ),
            ));
        }
    }
}

/// Label selector semantics (matchLabels and matchExpressions: In, NotIn, Exists, DoesNotExist).
pub fn selector_matches(
    selector: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector
        .match_expressions
        .as_ref()
        .is_none_or(|expressions| {
            expressions.iter().all(|e| {
                let values = e.values.clone().unwrap_or_default();
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
        });
    labels_ok && expressions_ok
}

impl GatewayState {
    /// Conditions of the Gateway and its listeners.
    pub fn conditions(&self) -> Vec<Condition> {
        let g = self.generation;
        if let Some((reason, message)) = &self.rejected {
            return vec![
                Condition::new(types::ACCEPTED, Status::False, reason, message.clone(), g),
                Condition::new(
                    types::PROGRAMMED,
                    Status::False,
                    reasons::INVALID,
                    message.clone(),
                    g,
                ),
                self.resolved_refs(),
            ];
        }
        let valid = self.listeners.iter().filter(|l| l.valid()).count();
        let programmable = self.listeners.iter().any(ListenerState::programmable);
        let accepted = if valid == self.listeners.len() {
            Condition::new(
                types::ACCEPTED,
                Status::True,
                reasons::ACCEPTED,
                "Gateway is accepted",
                g,
            )
        } else if valid > 0 || programmable {
            Condition::new(
                types::ACCEPTED,
                Status::True,
                reasons::LISTENERS_NOT_VALID,
                format!(
                    "{} of {} listeners are not valid",
                    self.listeners.len() - valid,
                    self.listeners.len()
                ),
                g,
            )
        } else {
            Condition::new(
                types::ACCEPTED,
                Status::False,
                reasons::LISTENERS_NOT_VALID,
                "no listener is valid",
                g,
            )
        };
        let programmed =
            if let (true, Some(message)) = (accepted.is_true(), &self.address_not_usable) {
                Condition::new(
                    types::PROGRAMMED,
                    Status::False,
                    reasons::ADDRESS_NOT_USABLE,
                    message.clone(),
                    g,
                )
            } else if accepted.is_true() && programmable {
                Condition::new(
                    types::PROGRAMMED,
                    Status::True,
                    reasons::PROGRAMMED,
                    "Gateway is programmed",
                    g,
                )
            } else {
                Condition::new(
                    types::PROGRAMMED,
                    Status::False,
                    reasons::INVALID,
                    "no listener can be programmed",
                    g,
                )
            };
        let mut conditions = vec![accepted, programmed, self.resolved_refs()];
        if self.insecure_frontend {
            conditions.push(Condition::new(
                types::INSECURE_FRONTEND_VALIDATION_MODE,
                Status::True,
                reasons::CONFIGURATION_CHANGED,
                "client certificate validation lets clients without a valid certificate through \
                 (AllowInsecureFallback)",
                g,
            ));
        }
        conditions
    }

    /// The Gateway's ResolvedRefs, on every Gateway of ours: its own references (the backend
    /// client certificate) first, then a summary of its listeners' ResolvedRefs. It does not
    /// touch Accepted or Programmed.
    fn resolved_refs(&self) -> Condition {
        let g = self.generation;
        let unresolved_listeners: Vec<&str> = self
            .listeners
            .iter()
            .filter(|l| l.unresolved.is_some())
            .map(|l| l.name.as_str())
            .collect();
        let listeners = (!unresolved_listeners.is_empty()).then(|| {
            format!(
                "listeners with unresolved references: {}",
                unresolved_listeners.join(", ")
            )
        });
        let (reason, message) = match (&self.unresolved, listeners) {
            (None, None) => {
                return Condition::new(
                    types::RESOLVED_REFS,
                    Status::True,
                    reasons::RESOLVED_REFS,
                    "references are resolved",
                    g,
                );
            }
            (Some((reason, message)), None) => (*reason, message.clone()),
            (Some((reason, message)), Some(listeners)) => {
                (*reason, format!("{message}; {listeners}"))
            }
            (None, Some(listeners)) => (reasons::LISTENERS_NOT_RESOLVED, listeners),
        };
        Condition::new(types::RESOLVED_REFS, Status::False, reason, message, g)
    }

    /// Whether the Gateway is accepted, so that its config carries listeners at all.
    pub fn serves(&self) -> bool {
        self.conditions().first().is_some_and(Condition::is_true)
    }

    /// Conditions of a listener declared by an object of generation `g` (the Gateway, or the
    /// ListenerSet that declares it); `parent_serves` says whether its Gateway's config
    /// carries listeners.
    pub fn listener_conditions(
        &self,
        listener: &ListenerState,
        g: i64,
        parent_serves: bool,
    ) -> Vec<Condition> {
        let mut out = Vec::with_capacity(4);
        match (&listener.not_accepted, &listener.conflicted) {
            (Some((reason, message)), _) | (None, Some((reason, message))) => out.push(
                Condition::new(types::ACCEPTED, Status::False, reason, message.clone(), g),
            ),
            (None, None) => out.push(Condition::new(
                types::ACCEPTED,
                Status::True,
                reasons::ACCEPTED,
                "listener is accepted",
                g,
            )),
        }
        if listener.programmable() && parent_serves {
            out.push(Condition::new(
                types::PROGRAMMED,
                Status::True,
                reasons::PROGRAMMED,
                "listener is programmed",
                g,
            ));
        } else {
            let reason = listener
                .conflicted
                .as_ref()
                .map(|(r, _)| *r)
                .unwrap_or(reasons::INVALID);
            out.push(Condition::new(
                types::PROGRAMMED,
                Status::False,
                reason,
                "listener cannot be programmed",
                g,
            ));
        }
        match &listener.unresolved {
            Some((reason, message)) => out.push(Condition::new(
                types::RESOLVED_REFS,
                Status::False,
                reason,
                message.clone(),
                g,
            )),
            None => out.push(Condition::new(
                types::RESOLVED_REFS,
                Status::True,
                reasons::RESOLVED_REFS,
                "references are resolved",
                g,
            )),
        }
        match &listener.conflicted {
            Some((reason, message)) => out.push(Condition::new(
                types::CONFLICTED,
                Status::True,
                reason,
                message.clone(),
                g,
            )),
            None => out.push(Condition::new(
                types::CONFLICTED,
                Status::False,
                reasons::NO_CONFLICTS,
                "no conflicts",
                g,
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_api::gateway_api::gateway::GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions as Expression;

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let selector = |match_labels: Option<&[(&str, &str)]>, expressions: Vec<Expression>| {
            GatewayListenersAllowedRoutesNamespacesSelector {
                match_labels: match_labels.map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                match_expressions: Some(expressions),
            }
        };
        let expression = |op: &str, values: &[&str]| Expression {
            key: "team".into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        };
        assert!(selector_matches(
            &selector(Some(&[("team", "a")]), vec![]),
            &labels
        ));
        assert!(!selector_matches(
            &selector(Some(&[("team", "b")]), vec![]),
            &labels
        ));
        assert!(selector_matches(
            &selector(None, vec![expression("In", &["a", "b"])]),
            &labels
        ));
        assert!(!selector_matches(
            &selector(None, vec![expression("NotIn", &["a"])]),
            &labels
        ));
        assert!(selector_matches(
            &selector(None, vec![expression("Exists", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &selector(None, vec![expression("DoesNotExist", &[])]),
            &labels
        ));
        assert!(!selector_matches(&nothing_selector(), &labels));
    }
}
