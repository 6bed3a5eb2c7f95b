//! backendRefs: Service → port → ready EndpointSlice endpoints, with ReferenceGrant checks.
//!
//! Endpoints come from EndpointSlices, never from the Service's ClusterIP, so headless
//! Services and Services without a selector (hand-written EndpointSlices) work.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ServicePort;
use portcullis_api::config::{Backend, BackendProtocol};

use super::conditions::reasons;
use super::gateways::Problem;
use super::{Index, ObjectKey, refs};

/// A backendRef as written in a route, whatever the route kind.
#[derive(Debug, Clone, Copy)]
pub struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// The referring route: namespace, group and kind (for ReferenceGrant checks).
pub struct Referrer<'a> {
    pub namespace: &'a str,
    pub group: &'a str,
    pub kind: &'a str,
    /// The route speaks the backend's application protocol (HTTPRoute), so the Service
    /// port's appProtocol must be one the proxy speaks; a TLSRoute only forwards bytes.
    pub speaks_app_protocol: bool,
}

/// Resolves a Service reference to its ready endpoints. The error is the route's
/// ResolvedRefs reason and message.
pub fn resolve(
    index: &Index<'_>,
    referrer: &Referrer<'_>,
    reference: BackendRef<'_>,
) -> Result<Backend, Problem> {
    let group = reference.group.unwrap_or("");
    let kind = reference.kind.unwrap_or("Service");
    let namespace = reference.namespace.unwrap_or(referrer.namespace);
    let key = ObjectKey::new(namespace, reference.name);
    if !group.is_empty() || kind != "Service" {
        return Err((
            reasons::INVALID_KIND,
            format!("backendRef {group}/{kind} {key}: only core Services are supported"),
        ));
    }
    let from = refs::From {
        group: referrer.group,
        kind: referrer.kind,
        namespace: referrer.namespace,
    };
    let to = refs::To {
        group: "",
        kind: "Service",
        namespace,
        name: reference.name,
    };
    if !refs::permitted(&index.input.reference_grants, &from, &to) {
        return Err((
            reasons::REF_NOT_PERMITTED,
            format!("Service {key} is in another namespace and no ReferenceGrant allows it"),
        ));
    }
    let Some(port) = reference.port else {
        return Err((
            reasons::BACKEND_NOT_FOUND,
            format!("backendRef to Service {key} needs a port"),
        ));
    };
    let Some(service) = index.services.get(&key) else {
        return Err((
            reasons::BACKEND_NOT_FOUND,
            format!("Service {key} not found"),
        ));
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err((
            reasons::BACKEND_NOT_FOUND,
            format!("Service {key} is of type ExternalName, which is not supported"),
        ));
    }
    let Some(service_port) = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port == port)
    else {
        return Err((
            reasons::BACKEND_NOT_FOUND,
            format!("Service {key} has no port {port}"),
        ));
    };
    let protocol = if referrer.speaks_app_protocol {
        app_protocol(&service_port).map_err(|message| {
            (
                reasons::UNSUPPORTED_PROTOCOL,
                format!("Service {key} port {port}: {message}"),
            )
        })?
    } else {
        BackendProtocol::default()
    };
    Ok(Backend {
        name: backend_name(&key, port),
        protocol,
        endpoints: endpoints(index, &key, &service_port),
        tls: None,
    })
}

/// The config's name for a Service port.
pub fn backend_name(service: &ObjectKey, port: i32) -> String {
    format!("{service}:{port}")
}

fn app_protocol(port: &ServicePort) -> Result<BackendProtocol, String> {
    match port.app_protocol.as_deref() {
        None | Some("http") | Some("HTTP") | Some("kubernetes.io/ws") => Ok(BackendProtocol::Http1),
        // HTTP/1.1 inside TLS: the TLS comes from a BackendTLSPolicy (see `speaks_tls`).
        Some(protocol) if speaks_tls(protocol) => Ok(BackendProtocol::Http1),
        Some(other) => Err(format!("appProtocol {other:?} is not supported")),
    }
}

/// Whether an appProtocol says the port expects TLS.
fn speaks_tls(app_protocol: &str) -> bool {
    matches!(app_protocol, "https" | "HTTPS" | "kubernetes.io/wss")
}

/// Whether `service`'s port `port` declares an appProtocol that expects TLS: the proxy reaches
/// such a port only under a BackendTLSPolicy, never in plaintext.
pub fn expects_tls(index: &Index<'_>, service: &ObjectKey, port: i32) -> bool {
    index
        .services
        .get(service)
        .and_then(|s| s.spec.as_ref())
        .and_then(|spec| spec.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port))
        .and_then(|p| p.app_protocol.as_deref())
        .is_some_and(speaks_tls)
}

/// Ready endpoints of `service` for `port`, sorted, from its EndpointSlices.
fn endpoints(index: &Index<'_>, service: &ObjectKey, port: &ServicePort) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let port_name = port.name.clone().unwrap_or_default();
    for slice in index
        .endpoint_slices
        .get(service)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(target) = slice
            .ports
            .as_ref()
            .and_then(|ports| {
                ports
                    .iter()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // A missing ready condition means ready (EndpointSlice API).
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, target));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
