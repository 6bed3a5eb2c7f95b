//! The compiler: Gateway API objects in, one `CompiledConfig` per Gateway of our class and the
//! status of every object out. A pure function: no I/O, no clock, no randomness; the same
//! input gives byte-identical output, so an unchanged cluster never causes a config push.
//!
//! Standalone mode and the operator both call [`compile`]. One invalid object never blocks
//! the others: it is left out of the configs and its status says why.

pub mod assemble;
pub mod backend_tls;
pub mod backends;
pub mod ca_bundles;
pub mod conditions;
pub mod features;
pub mod frontend_tls;
pub mod gateway_backend_tls;
pub mod gateways;
pub mod grpc_routes;
pub mod hostnames;
pub mod listener_sets;
pub mod refs;
pub mod routes;
pub mod stream_routes;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use portcullis_api::CompiledConfig;
use portcullis_api::gateway_api::backendtlspolicy::BackendTlsPolicy;
use portcullis_api::gateway_api::gateway::Gateway;
use portcullis_api::gateway_api::gatewayclass::GatewayClass;
use portcullis_api::gateway_api::grpcroute::GrpcRoute;
use portcullis_api::gateway_api::httproute::HttpRoute;
use portcullis_api::gateway_api::listenerset::ListenerSet;
use portcullis_api::gateway_api::referencegrant::ReferenceGrant;
use portcullis_api::gateway_api::tcproute::TcpRoute;
use portcullis_api::gateway_api::tlsroute::TlsRoute;
use portcullis_api::gateway_api::udproute::UdpRoute;
use portcullis_api::v1alpha1::{GatewayParameters, GatewayParametersSpec};
use serde::Serialize;

pub use conditions::{Condition, Status};

/// The `spec.controllerName` of GatewayClasses this project implements.
pub const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";
/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Everything the compiler looks at: a consistent snapshot of the relevant objects.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub gateway_classes: Vec<GatewayClass>,
    pub gateways: Vec<Gateway>,
    pub listener_sets: Vec<ListenerSet>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub tls_routes: Vec<TlsRoute>,
    pub tcp_routes: Vec<TcpRoute>,
    pub udp_routes: Vec<UdpRoute>,
    pub reference_grants: Vec<ReferenceGrant>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub gateway_parameters: Vec<GatewayParameters>,
    pub backend_tls_policies: Vec<BackendTlsPolicy>,
    /// ConfigMaps holding the CA certificates BackendTLSPolicies reference.
    pub config_maps: Vec<ConfigMap>,
}

/// namespace/name (namespace empty for cluster-scoped objects).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of<K: kube::Resource>(object: &K) -> Self {
        Self::new(object.namespace().unwrap_or_default(), object.name_any())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What the compiler decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Output {
    /// Status of every GatewayClass with our controllerName.
    pub gateway_classes: BTreeMap<String, ClassOutput>,
    /// Every Gateway of one of those classes.
    pub gateways: BTreeMap<ObjectKey, GatewayOutput>,
    /// Every ListenerSet whose parent is such a Gateway.
    pub listener_sets: BTreeMap<ObjectKey, ListenerSetOutput>,
    /// Every HTTPRoute with at least one parentRef to such a Gateway.
    pub http_routes: BTreeMap<ObjectKey, RouteOutput>,
    /// Every GRPCRoute with at least one parentRef to such a Gateway.
    pub grpc_routes: BTreeMap<ObjectKey, RouteOutput>,
    /// Every TLSRoute with at least one parentRef to such a Gateway.
    pub tls_routes: BTreeMap<ObjectKey, RouteOutput>,
    /// Every TCPRoute with at least one parentRef to such a Gateway.
    pub tcp_routes: BTreeMap<ObjectKey, RouteOutput>,
    /// Every UDPRoute with at least one parentRef to such a Gateway.
    pub udp_routes: BTreeMap<ObjectKey, RouteOutput>,
    /// Every BackendTLSPolicy targeting a Service port that such a Gateway routes to.
    pub backend_tls_policies: BTreeMap<ObjectKey, backend_tls::PolicyOutput>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassOutput {
    pub conditions: Vec<Condition>,
    /// Sorted, as `status.supportedFeatures` requires.
    pub supported_features: Vec<&'static str>,
    #[serde(skip)]
    pub parameters: Option<GatewayParametersSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOutput {
    pub class_name: String,
    /// Accepted and Programmed. Programmed=True here means "valid enough to serve"; the
    /// operator keeps it Pending until a proxy has acknowledged the config.
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerOutput>,
    /// `status.attachedListenerSets`: ListenerSets that are accepted.
    pub attached_listener_sets: i32,
    /// The config for this Gateway's proxies (generation 0; the pusher assigns generations);
    /// without listeners when the Gateway is not accepted.
    #[serde(skip)]
    pub config: Option<CompiledConfig>,
    /// GatewayParameters: the class defaults with the Gateway's override merged over them.
    #[serde(skip)]
    pub parameters: GatewayParametersSpec,
    /// Whether `parameters` are what was asked for (the class accepted, the Gateway's
    /// parametersRef resolved). When not, its infrastructure is left as it is: provisioning
    /// from fallback parameters would change a Service's type or roll its pods.
    #[serde(skip)]
    pub parameters_resolved: bool,
    /// The static IP addresses the Gateway asks for (`spec.addresses` with values), all
    /// usable: its Service's external IPs, and its addresses once the Service has them.
    #[serde(skip)]
    pub static_addresses: Vec<String>,
    /// The ports the Gateway's listeners (its own and its attached ListenerSets') ask for,
    /// ascending: what its Service exposes. Listeners that cannot be served right now (a
    /// missing certificate, a class not accepted) count too, so the Service, and the address
    /// a load balancer gave it, outlive a broken config.
    #[serde(skip)]
    pub service_ports: Vec<ExposedPort>,
}

/// A port a Gateway's Service exposes, and whether its listeners take UDP or TCP there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExposedPort {
    pub port: u16,
    pub udp: bool,
}

impl ExposedPort {
    pub fn tcp(port: u16) -> Self {
        Self { port, udp: false }
    }

    /// The Service port's protocol.
    pub fn protocol(self) -> &'static str {
        if self.udp { "UDP" } else { "TCP" }
    }

    /// The Service port's name, unique per port and protocol.
    pub fn name(self) -> String {
        if self.udp {
            format!("udp-{}", self.port)
        } else {
            format!("port-{}", self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSetOutput {
    /// The parent Gateway.
    #[serde(skip)]
    pub gateway: ObjectKey,
    /// Accepted and Programmed.
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerOutput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerOutput {
    pub name: String,
    pub supported_kinds: Vec<RouteKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteKind {
    pub group: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteOutput {
    pub parents: Vec<RouteParentOutput>,
}

/// One entry of `status.parents`, echoing the spec's parentRef.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentOutput {
    pub parent_ref: ParentRef,
    pub controller_name: &'static str,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

/// Lookups over the input, built once per compilation.
pub struct Index<'a> {
    pub input: &'a Input,
    pub namespaces: HashMap<&'a str, &'a Namespace>,
    pub services: HashMap<ObjectKey, &'a Service>,
    /// EndpointSlices by the Service they belong to (label kubernetes.io/service-name).
    pub endpoint_slices: HashMap<ObjectKey, Vec<&'a EndpointSlice>>,
    pub secrets: HashMap<ObjectKey, &'a Secret>,
    pub gateway_parameters: HashMap<ObjectKey, &'a GatewayParameters>,
    pub classes: HashMap<String, &'a GatewayClass>,
    pub config_maps: HashMap<ObjectKey, &'a ConfigMap>,
    pub backend_tls: backend_tls::Policies,
}

impl<'a> Index<'a> {
    pub fn new(input: &'a Input) -> Self {
        let mut endpoint_slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        for slice in &input.endpoint_slices {
            if let Some(service) = slice.labels().get("kubernetes.io/service-name") {
                endpoint_slices
                    .entry(ObjectKey::new(
                        slice.namespace().unwrap_or_default(),
                        service.clone(),
                    ))
                    .or_default()
                    .push(slice);
            }
        }
        for slices in endpoint_slices.values_mut() {
            slices.sort_by_key(|s| s.name_any());
        }
        let config_maps: HashMap<ObjectKey, &ConfigMap> = input
            .config_maps
            .iter()
            .map(|c| (ObjectKey::of(c), c))
            .collect();
        Self {
            input,
            backend_tls: backend_tls::Policies::new(&input.backend_tls_policies, &config_maps),
            config_maps,
            namespaces: input
                .namespaces
                .iter()
                .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
                .collect(),
            services: input
                .services
                .iter()
                .map(|s| (ObjectKey::of(s), s))
                .collect(),
            endpoint_slices,
            secrets: input
                .secrets
                .iter()
                .map(|s| (ObjectKey::of(s), s))
                .collect(),
            gateway_parameters: input
                .gateway_parameters
                .iter()
                .map(|p| (ObjectKey::of(p), p))
                .collect(),
            classes: input
                .gateway_classes
                .iter()
                .map(|c| (c.name_any(), c))
                .collect(),
        }
    }

    /// Labels of a namespace, including the `kubernetes.io/metadata.name` label the API server
    /// puts on every Namespace (so it holds for namespaces read from files, too).
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(name)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.into());
        labels
    }

    pub fn is_our_class(&self, name: &str) -> bool {
        self.classes
            .get(name)
            .is_some_and(|c| c.spec.controller_name == CONTROLLER_NAME)
    }
}

/// Compiles `input`.
pub fn compile(input: &Input) -> Output {
    let index = Index::new(input);
    let gateway_classes = gateways::classes(&index);
    let mut states = gateways::gateways(&index, &gateway_classes);
    listener_sets::attach_listener_sets(&index, &mut states);
    let routes::HttpRouteOutputs {
        http_routes,
        grpc_routes,
    } = routes::attach_http_routes(&index, &mut states);
    let tls_routes = stream_routes::attach_tls_routes(&index, &mut states);
    let tcp_routes = stream_routes::attach_tcp_routes(&index, &mut states);
    let udp_routes = stream_routes::attach_udp_routes(&index, &mut states);
    let listener_sets = states
        .values()
        .flat_map(|state| {
            state
                .listener_sets
                .iter()
                .map(|set| (set.key.clone(), state.listener_set_output(set)))
        })
        .collect();
    let backend_tls_policies = index
        .backend_tls
        .outputs(&backend_tls::ancestors_by_target(&states));
    let gateways = states
        .into_iter()
        .map(|(key, state)| (key, state.finish()))
        .collect();
    Output {
        gateway_classes,
        gateways,
        listener_sets,
        http_routes,
        grpc_routes,
        tls_routes,
        tcp_routes,
        udp_routes,
        backend_tls_policies,
    }
}

/// Objects in Gateway API tie-break order: oldest first, then by namespace/name.
pub fn by_age<'a, K: kube::Resource + 'a>(objects: impl IntoIterator<Item = &'a K>) -> Vec<&'a K> {
    let mut sorted: Vec<&K> = objects.into_iter().collect();
    sorted.sort_by_cached_key(|o| age(*o));
    sorted
}

/// An object's place in Gateway API tie-break order (creation time, then namespace/name), for
/// ordering objects of different kinds together.
pub fn age<K: kube::Resource>(object: &K) -> (Option<k8s_openapi::jiff::Timestamp>, ObjectKey) {
    (
        object.meta().creation_timestamp.clone().map(|t| t.0),
        ObjectKey::of(object),
    )
}

/// The object's metadata.generation (0 when unset, e.g. in files).
pub fn generation<K: kube::Resource>(object: &K) -> i64 {
    object.meta().generation.unwrap_or(0)
}
