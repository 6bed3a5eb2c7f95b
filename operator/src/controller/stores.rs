//! Watches of every kind the compiler reads, kept in in-memory stores (kube-runtime
//! reflectors). Any change wakes the controller, which recompiles from a consistent snapshot.
//!
//! Secrets and ConfigMaps are watched as metadata only (`PartialObjectMeta`); the controller
//! reads the few that listeners, Gateways (client certificates, CA bundles) and
//! BackendTLSPolicies reference ([`ReferencedObjects`]), so the operator never holds every
//! Secret or ConfigMap of the cluster.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
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
use portcullis_api::v1alpha1::GatewayParameters;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

use crate::compile::{CONTROLLER_NAME, Input, ObjectKey};
use crate::provision::{MANAGED_BY, MANAGED_BY_LABEL};

/// The (group, kind, namespace, name) of a reference to a Secret, whichever generated type
/// holds it (listener certificateRefs, a Gateway's backend clientCertificateRef).
macro_rules! secret_ref {
    ($reference:expr) => {
        (
            $reference.group.as_deref(),
            $reference.kind.as_deref(),
            $reference.namespace.as_deref(),
            &$reference.name,
        )
    };
}

/// Route kinds whose CRDs a cluster may lack (older or provider-managed Gateway API bundles;
/// GRPCRoute reached v1 in Gateway API v1.1). A missing kind is not watched: its store is
/// empty and ready, so the operator still serves every other kind instead of waiting forever
/// for a list the API server cannot give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalKinds {
    pub grpc_routes: bool,
    pub tls_routes: bool,
    pub tcp_routes: bool,
    pub udp_routes: bool,
    pub listener_sets: bool,
    pub backend_tls_policies: bool,
}

impl OptionalKinds {
    /// Asks the API server's discovery which of them it serves. When discovery itself fails,
    /// every kind is assumed present: its watch then retries until the API answers.
    pub async fn discover(client: &Client) -> OptionalKinds {
        let all = OptionalKinds {
            grpc_routes: true,
            tls_routes: true,
            tcp_routes: true,
            udp_routes: true,
            listener_sets: true,
            backend_tls_policies: true,
        };
        let resources = match client
            .list_api_group_resources("gateway.networking.k8s.io/v1")
            .await
        {
            Ok(list) => list.resources,
            Err(e) => {
                warn!(error = %e, "API discovery failed; assuming every optional Gateway API kind is served");
                return all;
            }
        };
        let served = |plural: &str| resources.iter().any(|r| r.name == plural);
        let found = OptionalKinds {
            grpc_routes: served("grpcroutes"),
            tls_routes: served("tlsroutes"),
            tcp_routes: served("tcproutes"),
            udp_routes: served("udproutes"),
            listener_sets: served("listenersets"),
            backend_tls_policies: served("backendtlspolicies"),
        };
        for (present, kind) in [
            (found.grpc_routes, "GRPCRoute"),
            (found.tls_routes, "TLSRoute"),
            (found.tcp_routes, "TCPRoute"),
            (found.udp_routes, "UDPRoute"),
            (found.listener_sets, "ListenerSet"),
            (found.backend_tls_policies, "BackendTLSPolicy"),
        ] {
            if !present {
                warn!(
                    kind,
                    "the cluster does not serve gateway.networking.k8s.io/v1 {kind}; not watching \
                     it (install the Gateway API v1.6 CRDs and restart the operator to use it)"
                );
            }
        }
        found
    }
}

/// The watched state of the cluster.
#[derive(Clone)]
pub struct Stores {
    pub gateway_classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub listener_sets: Store<ListenerSet>,
    pub http_routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    pub tls_routes: Store<TlsRoute>,
    pub tcp_routes: Store<TcpRoute>,
    pub udp_routes: Store<UdpRoute>,
    pub reference_grants: Store<ReferenceGrant>,
    pub gateway_parameters: Store<GatewayParameters>,
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub backend_tls_policies: Store<BackendTlsPolicy>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Proxy pods (ours, by label): their readiness gates Programmed.
    pub proxy_pods: Store<Pod>,
}

impl Stores {
    /// Starts every watch; each event notifies `changed`.
    pub fn start(client: &Client, changed: Arc<Notify>, optional: OptionalKinds) -> Stores {
        let managed = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        Stores {
            gateway_classes: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            gateways: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            listener_sets: watch_if(optional.listener_sets, client, &changed),
            http_routes: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            grpc_routes: watch_if(optional.grpc_routes, client, &changed),
            tls_routes: watch_if(optional.tls_routes, client, &changed),
            tcp_routes: watch_if(optional.tcp_routes, client, &changed),
            udp_routes: watch_if(optional.udp_routes, client, &changed),
            reference_grants: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            gateway_parameters: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            namespaces: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            services: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            endpoint_slices: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            secrets: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            backend_tls_policies: watch_if(optional.backend_tls_policies, client, &changed),
            config_maps: watch(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
            ),
            proxy_pods: watch(
                Api::all(client.clone()),
                watcher::Config::default().labels(&managed),
                &changed,
            ),
        }
    }

    /// Resolves once every store has its initial list.
    pub async fn ready(&self) -> anyhow::Result<()> {
        let ready = [
            self.gateway_classes.wait_until_ready().await,
            self.gateways.wait_until_ready().await,
            self.listener_sets.wait_until_ready().await,
            self.http_routes.wait_until_ready().await,
            self.grpc_routes.wait_until_ready().await,
            self.tls_routes.wait_until_ready().await,
            self.tcp_routes.wait_until_ready().await,
            self.udp_routes.wait_until_ready().await,
            self.reference_grants.wait_until_ready().await,
            self.gateway_parameters.wait_until_ready().await,
            self.namespaces.wait_until_ready().await,
            self.services.wait_until_ready().await,
            self.endpoint_slices.wait_until_ready().await,
            self.secrets.wait_until_ready().await,
            self.backend_tls_policies.wait_until_ready().await,
            self.config_maps.wait_until_ready().await,
            self.proxy_pods.wait_until_ready().await,
        ];
        for result in ready {
            result.map_err(|_| anyhow::anyhow!("a watch stopped before its first list"))?;
        }
        Ok(())
    }

    /// Gateways of our classes.
    fn our_gateways(&self) -> Vec<Arc<Gateway>> {
        let ours: BTreeSet<String> = self
            .gateway_classes
            .state()
            .iter()
            .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
            .map(|c| c.name_any())
            .collect();
        self.gateways
            .state()
            .into_iter()
            .filter(|g| ours.contains(&g.spec.gateway_class_name))
            .collect()
    }

    /// Secrets referenced by Gateways of our classes: their listeners' (and their
    /// ListenerSets' listeners') certificateRefs and their backend client certificate.
    pub fn referenced_secrets(&self) -> BTreeSet<ObjectKey> {
        let mut out = BTreeSet::new();
        let mut our_gateways = BTreeSet::new();
        for gateway in self.our_gateways() {
            our_gateways.insert(ObjectKey::of(&*gateway));
            let namespace = gateway.namespace().unwrap_or_default();
            let references = gateway
                .spec
                .listeners
                .iter()
                .flat_map(|l| {
                    l.tls
                        .iter()
                        .flat_map(|t| t.certificate_refs.iter().flatten())
                })
                .map(|r| secret_ref!(r));
            let client_certificate = gateway
                .spec
                .tls
                .iter()
                .filter_map(|t| t.backend.as_ref()?.client_certificate_ref.as_ref())
                .map(|r| secret_ref!(r));
            insert_secret_refs(&mut out, &namespace, references.chain(client_certificate));
        }
        for set in self.listener_sets.state() {
            let namespace = set.namespace().unwrap_or_default();
            let parent = &set.spec.parent_ref;
            if parent.kind.as_deref().unwrap_or("Gateway") != "Gateway" {
                continue;
            }
            let gateway = ObjectKey::new(
                parent
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.clone()),
                parent.name.clone(),
            );
            if !our_gateways.contains(&gateway) {
                continue;
            }
            let references = set
                .spec
                .listeners
                .iter()
                .flat_map(|l| {
                    l.tls
                        .iter()
                        .flat_map(|t| t.certificate_refs.iter().flatten())
                })
                .map(|r| secret_ref!(r));
            insert_secret_refs(&mut out, &namespace, references);
        }
        out
    }

    /// ConfigMaps that hold CA certificates: referenced by BackendTLSPolicies (always in the
    /// policy's namespace) and by Gateways of our classes for client certificate validation.
    pub fn referenced_config_maps(&self) -> BTreeSet<ObjectKey> {
        let mut out = BTreeSet::new();
        for gateway in self.our_gateways() {
            let namespace = gateway.namespace().unwrap_or_default();
            let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
                continue;
            };
            let default = frontend.default.validation.iter().flat_map(|v| {
                v.ca_certificate_refs
                    .iter()
                    .map(|r| (&r.group, &r.kind, r.namespace.as_ref(), &r.name))
            });
            let per_port = frontend
                .per_port
                .iter()
                .flatten()
                .flat_map(|p| p.tls.validation.iter())
                .flat_map(|v| {
                    v.ca_certificate_refs
                        .iter()
                        .map(|r| (&r.group, &r.kind, r.namespace.as_ref(), &r.name))
                });
            for (group, kind, reference_namespace, name) in default.chain(per_port) {
                if group.is_empty() && kind == "ConfigMap" {
                    let namespace = reference_namespace.unwrap_or(&namespace);
                    out.insert(ObjectKey::new(namespace.clone(), name.clone()));
                }
            }
        }
        for policy in self.backend_tls_policies.state() {
            let namespace = policy.namespace().unwrap_or_default();
            let references = policy.spec.validation.ca_certificate_refs.iter().flatten();
            for reference in references {
                if reference.group.is_empty() && reference.kind == "ConfigMap" {
                    out.insert(ObjectKey::new(namespace.clone(), reference.name.clone()));
                }
            }
        }
        out
    }

    /// A snapshot for the compiler.
    pub fn input(&self, secrets: Vec<Secret>, config_maps: Vec<ConfigMap>) -> Input {
        Input {
            gateway_classes: cloned(&self.gateway_classes),
            gateways: cloned(&self.gateways),
            listener_sets: cloned(&self.listener_sets),
            http_routes: cloned(&self.http_routes),
            grpc_routes: cloned(&self.grpc_routes),
            tls_routes: cloned(&self.tls_routes),
            tcp_routes: cloned(&self.tcp_routes),
            udp_routes: cloned(&self.udp_routes),
            reference_grants: cloned(&self.reference_grants),
            namespaces: cloned(&self.namespaces),
            services: cloned(&self.services),
            endpoint_slices: cloned(&self.endpoint_slices),
            secrets,
            gateway_parameters: cloned(&self.gateway_parameters),
            backend_tls_policies: cloned(&self.backend_tls_policies),
            config_maps,
        }
    }
}

/// Adds the core Secrets among certificateRefs (group, kind, namespace, name) declared in
/// `namespace`.
fn insert_secret_refs<'a>(
    out: &mut BTreeSet<ObjectKey>,
    namespace: &str,
    references: impl Iterator<
        Item = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            &'a String,
        ),
    >,
) {
    for (group, kind, reference_namespace, name) in references {
        if group.unwrap_or("").is_empty() && kind.unwrap_or("Secret") == "Secret" {
            out.insert(ObjectKey::new(
                reference_namespace.unwrap_or(namespace),
                name.clone(),
            ));
        }
    }
}

fn cloned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| (**o).clone()).collect()
}

/// A store for a kind the cluster does not serve: no objects, and ready at once.
fn empty_and_ready<K>() -> Store<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

/// A watch of every object of an optional kind, or an empty store when the cluster does not
/// serve it.
fn watch_if<K>(served: bool, client: &Client, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    if served {
        watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            changed,
        )
    } else {
        empty_and_ready()
    }
}

fn watch<K>(api: Api<K>, config: watcher::Config, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// Full copies of the referenced objects of one kind (Secrets, ConfigMaps), re-read only when
/// their resourceVersion changes.
pub struct ReferencedObjects<K> {
    client: Client,
    cache: HashMap<ObjectKey, (String, K)>,
}

impl<K> ReferencedObjects<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + 'static,
{
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: HashMap::new(),
        }
    }

    /// The referenced objects that exist, fetched when new or changed.
    pub async fn refresh(
        &mut self,
        wanted: &BTreeSet<ObjectKey>,
        metadata: &Store<PartialObjectMeta<K>>,
    ) -> Vec<K> {
        let present: HashMap<ObjectKey, String> = metadata
            .state()
            .iter()
            .map(|m| {
                (
                    ObjectKey::of(&**m),
                    m.resource_version().unwrap_or_default(),
                )
            })
            .collect();
        self.cache
            .retain(|key, _| wanted.contains(key) && present.contains_key(key));
        for key in wanted {
            let Some(version) = present.get(key) else {
                continue;
            };
            if self
                .cache
                .get(key)
                .is_some_and(|(cached, _)| cached == version)
            {
                continue;
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
            match api.get_opt(&key.name).await {
                Ok(Some(object)) => {
                    self.cache.insert(
                        key.clone(),
                        (object.resource_version().unwrap_or_default(), object),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    let kind = K::kind(&()).to_string();
                    warn!(kind, object = %key, error = %e, "reading a referenced object failed");
                }
            }
        }
        self.cache.values().map(|(_, o)| o.clone()).collect()
    }
}
