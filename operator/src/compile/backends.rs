//! backendRefs: Service → port → ready EndpointSlice endpoints, with ReferenceGrant checks.
//!
//! Endpoints come from EndpointSlices, never from the Service's ClusterIP, so headless
//! Services and Services without a selector (hand-written EndpointSlices) work.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::ServicePort;
use portcullis_api::config::{Backend, BackendProtocol};

use super::conditions::reasons;
use super::gateways::Problem;
use super::{GATEWAY_GROUP, Index, ObjectKey, refs};

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
    /// What the proxy speaks to the backend for this route kind.
    pub speaks: Speaks,
}

impl<'a> Referrer<'a> {
    /// A Gateway API route of `kind` in `namespace`.
    pub fn route(namespace: &'a str, kind: &'a str, speaks: Speaks) -> Self {
        Self {
            namespace,
            group: GATEWAY_GROUP,
            kind,
            speaks,
        }
    }
}

/// What a route kind makes the proxy speak to its backends, which decides how a Service
/// port's appProtocol is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTPRoute: the port's appProtocol must be one the proxy speaks (HTTP/1.1, or HTTP/2
    /// for `kubernetes.io/h2c`).
    Http,
    /// GRPCRoute: always HTTP/2, unless the appProtocol names a protocol that cannot carry
    /// gRPC.
    Grpc,
    /// TLSRoute, TCPRoute: bytes are forwarded, whatever the appProtocol says.
    Bytes,
    /// UDPRoute: datagrams are forwarded to the Service's UDP port of that number.
    Datagrams,
}

impl Speaks {
    /// The Service port protocol this traffic needs: a Service may have a TCP and a UDP port
    /// with the same number (DNS on 53), and they can lead to different target ports.
    fn transport(self) -> &'static str {
        match self {
            Speaks::Datagrams => "UDP",
            Speaks::Http | Speaks::Grpc | Speaks::Bytes => "TCP",
        }
    }
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
    let transport = referrer.speaks.transport();
    let Some(service_port) = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.port == port && protocol_of(p) == transport)
    else {
        return Err((
            reasons::BACKEND_NOT_FOUND,
            format!("Service {key} has no {transport} port {port}"),
        ));
    };
    let unsupported = |message: String| {
        (
            reasons::UNSUPPORTED_PROTOCOL,
            format!("Service {key} port {port}: {message}"),
        )
    };
    let (name, protocol) = match referrer.speaks {
        Speaks::Http => (
            backend_name(&key, port),
            app_protocol(&service_port).map_err(unsupported)?,
        ),
        Speaks::Grpc => (
            grpc_backend_name(&key, &service_port),
            grpc_protocol(&service_port).map_err(unsupported)?,
        ),
        // The port's own protocol, so that a Service port HTTP and stream routes share is one
        // backend with one protocol (the L4 path ignores it).
        Speaks::Bytes => (
            backend_name(&key, port),
            app_protocol(&service_port).unwrap_or_default(),
        ),
        // Named apart: the TCP port of the same number is another backend.
        Speaks::Datagrams => (
            format!("{}/udp", backend_name(&key, port)),
            BackendProtocol::default(),
        ),
    };
    Ok(Backend {
        name,
        protocol,
        endpoints: endpoints(index, &key, &service_port),
        tls: None,
    })
}

/// The config's name for a Service port.
pub fn backend_name(service: &ObjectKey, port: i32) -> String {
    format!("{service}:{port}")
}

/// The appProtocol that says a port speaks HTTP/2 with prior knowledge.
const H2C: &str = "kubernetes.io/h2c";

/// The config's name for a Service port as a GRPCRoute backend. The proxy speaks HTTP/2 to
/// every gRPC backend; an HTTPRoute speaks it to the same port only when the port says h2c.
/// Otherwise the two must be separate backends (one HTTP/1.1, one HTTP/2), so the gRPC one is
/// named `<namespace>/<service>:<port>/grpc`.
pub fn grpc_backend_name(service: &ObjectKey, port: &ServicePort) -> String {
    let name = backend_name(service, port.port);
    match port.app_protocol.as_deref() {
        Some(H2C) => name,
        _ => format!("{name}/grpc"),
    }
}

fn app_protocol(port: &ServicePort) -> Result<BackendProtocol, String> {
    match port.app_protocol.as_deref() {
        None | Some("http") | Some("HTTP") | Some("kubernetes.io/ws") => Ok(BackendProtocol::Http1),
        // HTTP/1.1 inside TLS: the TLS comes from a BackendTLSPolicy (see `speaks_tls`).
        Some(protocol) if speaks_tls(protocol) => Ok(BackendProtocol::Http1),
        Some(H2C) => Ok(BackendProtocol::Http2),
        Some(other) => Err(format!("appProtocol {other:?} is not supported")),
    }
}

/// gRPC is HTTP/2: a port without an appProtocol, or one naming h2c, gRPC or HTTP/2, gets it
/// (inside TLS when a BackendTLSPolicy governs the port, as `https` requires). A port that
/// names anything else (HTTP/1.1, WebSocket, a non-HTTP protocol) cannot carry gRPC.
fn grpc_protocol(port: &ServicePort) -> Result<BackendProtocol, String> {
    let Some(protocol) = port.app_protocol.as_deref() else {
        return Ok(BackendProtocol::Http2);
    };
    match protocol.to_ascii_lowercase().as_str() {
        H2C | "h2c" | "grpc" | "http2" | "https" => Ok(BackendProtocol::Http2),
        _ => Err(format!(
            "appProtocol {protocol:?} cannot carry gRPC, which needs HTTP/2"
        )),
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
        .and_then(|ports| {
            ports
                .iter()
                .find(|p| p.port == port && protocol_of(p) == "TCP")
        })
        .and_then(|p| p.app_protocol.as_deref())
        .is_some_and(speaks_tls)
}

/// A Service port's protocol ("TCP" when unset, as the API defaults it). TLS, and the names
/// BackendTLSPolicies target, belong to the TCP port of a number, never to a UDP one.
pub fn protocol_of(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn port(app_protocol: Option<&str>) -> ServicePort {
        ServicePort {
            port: 8080,
            app_protocol: app_protocol.map(String::from),
            ..ServicePort::default()
        }
    }

    #[test]
    fn grpc_backends_speak_http2_unless_the_port_says_otherwise() {
        for ok in [
            None,
            Some("kubernetes.io/h2c"),
            Some("grpc"),
            Some("GRPC"),
            Some("h2c"),
        ] {
            assert_eq!(
                grpc_protocol(&port(ok)),
                Ok(BackendProtocol::Http2),
                "{ok:?}"
            );
        }
        // Inside TLS (a BackendTLSPolicy): still HTTP/2.
        assert_eq!(
            grpc_protocol(&port(Some("https"))),
            Ok(BackendProtocol::Http2)
        );
        for refused in ["http", "kubernetes.io/ws", "kubernetes.io/wss", "mysql"] {
            assert!(grpc_protocol(&port(Some(refused))).is_err(), "{refused}");
        }
    }

    #[test]
    fn grpc_backend_names_differ_unless_the_port_says_h2c() {
        let service = ObjectKey::new("app", "echo");
        assert_eq!(
            grpc_backend_name(&service, &port(None)),
            "app/echo:8080/grpc"
        );
        assert_eq!(
            grpc_backend_name(&service, &port(Some("grpc"))),
            "app/echo:8080/grpc"
        );
        assert_eq!(
            grpc_backend_name(&service, &port(Some("kubernetes.io/h2c"))),
            backend_name(&service, 8080)
        );
    }
}
