//! TLSRoutes, TCPRoutes and UDPRoutes: routes of whole connections (of UDP sessions, for
//! UDPRoute). They attach like HTTPRoutes (parentRefs, allowedRoutes, hostname intersection
//! for TLSRoute), but have no matches or filters: every connection a route takes goes to its
//! weighted backendRefs.

use std::collections::BTreeMap;

use portcullis_api::config::{RouteRule, WeightedBackend};
use portcullis_api::gateway_api::httproute::HttpRouteParentRefs;

use super::backends::{self, BackendRef, Referrer, Speaks};
use super::conditions::reasons;
use super::gateways::{GatewayState, TCP_ROUTE, TLS_ROUTE, UDP_ROUTE};
use super::routes::{RouteSpec, TranslatedRoute, attach_route, parent_refs};
use super::{Index, ObjectKey, RouteOutput, by_age, generation};

/// What attachment and translation need of a TLSRoute, TCPRoute or UDPRoute.
struct StreamRoute<'a> {
    key: ObjectKey,
    kind: &'static str,
    generation: i64,
    hostnames: &'a [String],
    /// The parentRef types of the route kinds are identical but generated apart.
    parent_refs: Vec<HttpRouteParentRefs>,
    /// Every backendRef of every rule, with its weight.
    backend_refs: Vec<(BackendRef<'a>, Option<i32>)>,
    has_rules: bool,
}

/// Every backendRef of a route's rules as (reference, weight).
macro_rules! backend_refs {
    ($rules:expr) => {
        $rules
            .iter()
            .flat_map(|rule| &rule.backend_refs)
            .map(|r| {
                (
                    BackendRef {
                        group: r.group.as_deref(),
                        kind: r.kind.as_deref(),
                        name: &r.name,
                        namespace: r.namespace.as_deref(),
                        port: r.port,
                    },
                    r.weight,
                )
            })
            .collect()
    };
}

/// Attaches every TLSRoute to the listeners its parentRefs select and returns route statuses.
pub fn attach_tls_routes(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
) -> BTreeMap<ObjectKey, RouteOutput> {
    let routes = by_age(&index.input.tls_routes)
        .into_iter()
        .map(|route| StreamRoute {
            key: ObjectKey::of(route),
            kind: TLS_ROUTE,
            generation: generation(route),
            hostnames: &route.spec.hostnames,
            parent_refs: parent_refs!(route.spec.parent_refs),
            backend_refs: backend_refs!(route.spec.rules),
            has_rules: !route.spec.rules.is_empty(),
        })
        .collect();
    attach_all(index, gateways, routes)
}

/// A route kind without hostnames (TCPRoute, UDPRoute; their generated types are distinct but
/// of one shape) in tie-break order, ready to attach.
macro_rules! hostless_routes {
    ($routes:expr, $kind:expr) => {
        by_age($routes)
            .into_iter()
            .map(|route| StreamRoute {
                key: ObjectKey::of(route),
                kind: $kind,
                generation: generation(route),
                hostnames: &[],
                parent_refs: parent_refs!(route.spec.parent_refs),
                backend_refs: backend_refs!(route.spec.rules),
                has_rules: !route.spec.rules.is_empty(),
            })
            .collect()
    };
}

/// Attaches every TCPRoute to the listeners its parentRefs select and returns route statuses.
pub fn attach_tcp_routes(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
) -> BTreeMap<ObjectKey, RouteOutput> {
    attach_all(
        index,
        gateways,
        hostless_routes!(&index.input.tcp_routes, TCP_ROUTE),
    )
}

/// Attaches every UDPRoute to the listeners its parentRefs select and returns route statuses.
pub fn attach_udp_routes(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
) -> BTreeMap<ObjectKey, RouteOutput> {
    attach_all(
        index,
        gateways,
        hostless_routes!(&index.input.udp_routes, UDP_ROUTE),
    )
}

fn attach_all(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
    routes: Vec<StreamRoute<'_>>,
) -> BTreeMap<ObjectKey, RouteOutput> {
    let mut out = BTreeMap::new();
    for route in routes {
        let spec = RouteSpec {
            key: route.key.clone(),
            kind: route.kind,
            generation: route.generation,
            hostnames: route.hostnames,
            parent_refs: &route.parent_refs,
        };
        if let Some(output) = attach_route(index, gateways, &spec, || translate(index, &route)) {
            out.insert(spec.key, output);
        }
    }
    out
}

/// A route as one rule without matches whose backends are all of the route's backendRefs
/// (the rules of these kinds have nothing else to tell them apart). An unresolved backendRef
/// keeps its weight share, and connections drawn to it are refused.
fn translate(index: &Index<'_>, route: &StreamRoute<'_>) -> TranslatedRoute {
    let speaks = if route.kind == UDP_ROUTE {
        Speaks::Datagrams
    } else {
        Speaks::Bytes
    };
    let referrer = Referrer::route(&route.key.namespace, route.kind, speaks);
    let mut out = TranslatedRoute::default();
    let mut weighted = Vec::with_capacity(route.backend_refs.len());
    for (reference, weight) in &route.backend_refs {
        let weight = u32::try_from(weight.unwrap_or(1)).unwrap_or(0);
        let resolved = backends::resolve(index, &referrer, *reference);
        weighted.push(WeightedBackend {
            weight,
            target: out.target(resolved),
            filters: Vec::new(),
        });
    }
    if !route.has_rules {
        out.rejected = Some((reasons::UNSUPPORTED_VALUE, "the route has no rules".into()));
    }
    out.rules.push(RouteRule {
        backends: weighted,
        ..RouteRule::default()
    });
    out
}
