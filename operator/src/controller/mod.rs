//! The operator's controller: watches the cluster, compiles, publishes configs to the proxies,
//! provisions each Gateway's infrastructure and writes every status.
//!
//! It is level-triggered: any watch event, agent report or leadership change wakes one loop
//! that recompiles the whole cluster from its stores (a pure function, fast enough at
//! thousands of routes — see the compile duration metric) and then converges the world
//! towards the result. Every replica publishes configs (agents may connect to any replica);
//! only the lease holder provisions and writes status.
//!
//! Which config a proxy pod serves is recorded on the pod itself (annotation
//! [`APPLIED_ANNOTATION`], written by the replica the pod's agent is connected to), so the
//! leader knows it whichever replica serves the stream, and after a restart too.

pub mod events;
pub mod leader;
pub mod status;
pub mod stores;
pub mod sweep;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use portcullis_api::gateway_api::backendtlspolicy::BackendTlsPolicy;
use portcullis_api::gateway_api::gateway::{Gateway, GatewayStatus, GatewayStatusAddresses};
use portcullis_api::gateway_api::gatewayclass::{GatewayClass, GatewayClassStatus};
use portcullis_api::gateway_api::httproute::{HttpRoute, HttpRouteStatus};
use portcullis_api::gateway_api::listenerset::{ListenerSet, ListenerSetStatus};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::compile::{self, Input, ObjectKey, Output, RouteOutput};
use crate::distribute::ca::ca_configmap;
use crate::distribute::gzip;
use crate::distribute::hub::ConfigHub;
use crate::provision::{self, FIELD_MANAGER, GATEWAY_NAME_LABEL, ProvisionSettings};
use crate::telemetry::{ControllerLabel, Metrics};
use status::Delivery;
use stores::{ReferencedObjects, Stores};
use sweep::{GatewayOwners, Sweeper, Wanted};

/// The objects by namespace and name. Status writing looks up one object per compiled
/// result; a linear search each time made a pass quadratic in the number of routes.
pub fn by_key<K: Resource>(objects: &[K]) -> HashMap<ObjectKey, &K> {
    objects
        .iter()
        .map(|object| (ObjectKey::of(object), object))
        .collect()
}

/// Annotation on a proxy pod: the content hash (hex) of the config its proxy serves.
pub const APPLIED_ANNOTATION: &str = "portcullis.dev/applied-config";

#[derive(Debug, Clone)]
pub struct Settings {
    pub provision: ProvisionSettings,
    pub lease: leader::LeaseSettings,
    /// The operator's Service that agents stream configs from, and its port.
    pub config_service: ObjectKey,
    pub config_port: u16,
}

/// What the controller works with; built by the operator's composition root.
pub struct Parts {
    pub client: Client,
    /// Started with `changed` as their notifier.
    pub stores: Stores,
    pub changed: Arc<Notify>,
    pub hub: ConfigHub,
    /// The config stream CA certificate, copied into every Gateway namespace for the agents.
    pub ca_pem: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Set once the watches have synced (the operator's readiness).
    pub ready: Arc<AtomicBool>,
}

/// Runs the controller until the process ends.
pub async fn run(parts: Parts, settings: Settings) -> anyhow::Result<()> {
    let Parts {
        client,
        stores,
        changed,
        hub,
        ca_pem,
        metrics,
        ready,
    } = parts;
    info!("waiting for the watches' first lists");
    stores.ready().await?;
    ready.store(true, Ordering::Relaxed);
    info!("watches synced");
    let leadership = leader::start(client.clone(), settings.lease.clone());
    let mut leader = leadership.changes.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: compile::CONTROLLER_NAME.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let mut state = Reconciler {
        recorder,
        client,
        hub,
        ca_pem,
        metrics,
        settings,
        secrets: None,
        config_maps: None,
        applied: HashMap::new(),
        annotated: HashMap::new(),
        sweeper: Sweeper::default(),
        leadership,
    };
    state.secrets = Some(ReferencedObjects::new(state.client.clone()));
    state.config_maps = Some(ReferencedObjects::new(state.client.clone()));
    let mut last_term = None;
    // A pass whose writes failed is followed by another after a backoff even when nothing
    // changes; otherwise a transient API error would stand until the idle tick.
    const IDLE: Duration = Duration::from_secs(30);
    const FIRST_RETRY: Duration = Duration::from_millis(250);
    let mut retry = FIRST_RETRY;
    loop {
        let term = *leader.borrow_and_update();
        let is_leader = term.is_some();
        if term != last_term {
            // A new leader applies everything once: its cache says nothing about the cluster.
            state.applied.clear();
            state.sweeper.reset();
            last_term = term;
        }
        state.metrics.leader.set(i64::from(is_leader));
        let failures = state.pass(&stores, is_leader).await;
        let wait = if failures > 0 {
            let wait = retry;
            retry = (retry * 2).min(IDLE);
            wait
        } else {
            retry = FIRST_RETRY;
            IDLE
        };
        tokio::select! {
            _ = changed.notified() => {}
            _ = state.hub.reported() => {}
            _ = leader.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Coalesce a burst of events into one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a leader pass's provisioning did.
struct Provisioning {
    /// Writes that failed.
    failures: usize,
    /// The objects the Gateways of ours want.
    wanted: Wanted,
    /// Uids of Gateways of ours whose objects were not all put in place this pass (parameters
    /// unresolved, rendering or a write failed): the sweep leaves what they own alone.
    unsettled: HashSet<String>,
}

/// The GatewayClasses of `input` by name.
fn classes_by_name(input: &Input) -> HashMap<&str, &GatewayClass> {
    input
        .gateway_classes
        .iter()
        .filter_map(|class| Some((class.metadata.name.as_deref()?, class)))
        .collect()
}

/// Sorts the Gateways of `input` by whether what they want is known (see [`sweep`]): ours
/// whose objects were all put in place, and those whose class names another controller, are
/// decided; those whose class is missing, or that are `unsettled`, are not.
fn gateway_owners(input: &Input, output: &Output, unsettled: &HashSet<String>) -> GatewayOwners {
    let classes = classes_by_name(input);
    let mut owners = GatewayOwners::default();
    for gateway in &input.gateways {
        let Some(uid) = gateway.uid() else {
            continue;
        };
        let ours = output.gateways.contains_key(&ObjectKey::of(gateway));
        let another_controllers = classes
            .get(gateway.spec.gateway_class_name.as_str())
            .is_some_and(|class| class.spec.controller_name != compile::CONTROLLER_NAME);
        if (ours && !unsettled.contains(&uid)) || (!ours && another_controllers) {
            owners.decided.insert(uid);
        } else {
            owners.undecided.insert(uid);
        }
    }
    owners
}

struct Reconciler {
    client: Client,
    recorder: Recorder,
    hub: ConfigHub,
    ca_pem: Option<String>,
    metrics: Arc<Metrics>,
    settings: Settings,
    secrets: Option<ReferencedObjects<Secret>>,
    config_maps: Option<ReferencedObjects<ConfigMap>>,
    /// Hash of what this replica last applied, per object, to skip no-op applies.
    applied: HashMap<String, [u8; 32]>,
    /// Applied-config annotations this replica last wrote, per pod uid.
    annotated: HashMap<String, String>,
    sweeper: Sweeper,
    leadership: leader::Leadership,
}

impl Reconciler {
    /// One pass; returns how many writes failed.
    async fn pass(&mut self, stores: &Stores, is_leader: bool) -> usize {
        let started = Instant::now();
        let wanted = stores.referenced_secrets();
        let secrets = match self.secrets.as_mut() {
            Some(cache) => cache.refresh(&wanted, &stores.secrets).await,
            None => Vec::new(),
        };
        let wanted = stores.referenced_config_maps();
        let config_maps = match self.config_maps.as_mut() {
            Some(cache) => cache.refresh(&wanted, &stores.config_maps).await,
            None => Vec::new(),
        };
        let input = stores.input(secrets, config_maps);
        let compile_started = Instant::now();
        let output = compile::compile(&input);
        self.metrics
            .compile_seconds
            .observe(compile_started.elapsed().as_secs_f64());
        self.metrics.gateways.set(output.gateways.len() as i64);
        self.metrics
            .http_routes
            .set(output.http_routes.len() as i64);

        for (key, gateway) in &output.gateways {
            let before = self.hub.current(key).map(|p| p.content_hash);
            let after = gateway.config.as_ref().map(|c| c.content_hash());
            if before != after {
                self.metrics.config_publishes.inc();
                debug!(gateway = %key, "publishing a new config");
            }
            self.hub.publish(key, gateway.config.clone());
        }
        self.hub.retain(&|key| output.gateways.contains_key(key));
        self.hub.set_synced();
        let pods = stores.proxy_pods.state();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        self.hub.forget_pods(&|pod| live.contains(&pod.uid));
        // Every replica annotates the pods it streams to; the leader also writes the cluster.
        let mut failures = self.record_applied(&pods, output.gateways.keys()).await;

        let label = ControllerLabel {
            controller: "gateway",
        };
        self.metrics.reconciles.get_or_create(&label).inc();
        if is_leader {
            let provisioned = self.provision(stores, &input, &output).await;
            failures += provisioned.failures;
            failures += self.remove_orphans(&input, &output, &provisioned).await;
            failures += self.write_statuses(stores, &input, &output).await;
        }
        if failures > 0 {
            self.metrics.reconcile_errors.get_or_create(&label).inc();
        }
        self.metrics
            .reconcile_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        failures
    }

    /// Writes, on each proxy pod whose agent reports to this replica, which config it serves.
    /// Returns how many writes failed.
    /// Pods are found from the hub's reports (by uid), not from their gateway-name label: a
    /// long Gateway name's label value is shortened and does not lead back to the Gateway.
    async fn record_applied<'a>(
        &mut self,
        pods: &[Arc<Pod>],
        gateways: impl Iterator<Item = &'a ObjectKey>,
    ) -> usize {
        let mut failures = 0;
        let pods_by_uid: HashMap<String, &Arc<Pod>> = pods
            .iter()
            .filter_map(|pod| Some((pod.uid()?, pod)))
            .collect();
        let reports = gateways.flat_map(|key| self.hub.pods(key));
        let reported: Vec<_> = reports
            .filter_map(|(id, report)| Some((*pods_by_uid.get(&id.uid)?, report)))
            .collect();
        for (pod, report) in reported {
            let (Some(namespace), Some(uid)) = (pod.namespace(), pod.uid()) else {
                continue;
            };
            let Some(hash) = report.applied_hash.map(hex) else {
                continue;
            };
            if pod.annotations().get(APPLIED_ANNOTATION) == Some(&hash)
                || self.annotated.get(&uid) == Some(&hash)
            {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let patch = json!({"metadata": {"annotations": {APPLIED_ANNOTATION: hash}}});
            match api
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.annotated.insert(uid, hash);
                }
                Err(e) => {
                    failures += 1;
                    warn!(pod = %pod.name_any(), error = %e, "recording the applied config failed")
                }
            }
        }
        failures
    }

    /// Applies each Gateway's ServiceAccount, Deployment, Service, last-good Secret and its
    /// namespace's CA ConfigMap.
    async fn provision(&mut self, stores: &Stores, input: &Input, output: &Output) -> Provisioning {
        let mut failures = 0;
        let mut wanted = Wanted::default();
        let mut unsettled = HashSet::new();
        // Gateways (name, uid) per namespace: the owners of that namespace's CA ConfigMap.
        // Those whose class is missing stay owners: their pods mount it, and they may be ours.
        let mut owners: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        let classes = classes_by_name(input);
        for gateway in &input.gateways {
            let key = ObjectKey::of(gateway);
            let class_missing = !classes.contains_key(gateway.spec.gateway_class_name.as_str());
            if let (true, Some(uid)) = (
                output.gateways.contains_key(&key) || class_missing,
                gateway.uid(),
            ) {
                owners
                    .entry(key.namespace.clone())
                    .or_default()
                    .push((key.name.clone(), uid));
            }
        }
        let provision_settings = self.provision_settings(stores);
        let gateways = by_key(&input.gateways);
        for (key, gateway_output) in &output.gateways {
            let Some(gateway) = gateways.get(key) else {
                continue;
            };
            if !gateway_output.parameters_resolved {
                debug!(gateway = %key, "parameters unresolved; infrastructure left as it is");
                unsettled.extend(gateway.uid());
                continue;
            }
            let provisioned = match provision::render(gateway, gateway_output, &provision_settings)
            {
                Ok(p) => p,
                Err(e) => {
                    warn!(gateway = %key, error = %e, "rendering infrastructure failed");
                    failures += 1;
                    unsettled.extend(gateway.uid());
                    continue;
                }
            };
            let failures_before = failures;
            let ns = provisioned.namespace.clone();
            wanted.insert("ServiceAccount", &ns, &provisioned.name);
            wanted.insert("Deployment", &ns, &provisioned.name);
            wanted.insert(
                "Secret",
                &ns,
                &provision::last_good_secret_name(&provisioned.name),
            );
            failures += self
                .apply(
                    Api::<ServiceAccount>::namespaced(self.client.clone(), &ns),
                    &provisioned.service_account,
                )
                .await;
            failures += self
                .apply(
                    Api::<Deployment>::namespaced(self.client.clone(), &ns),
                    &provisioned.deployment,
                )
                .await;
            // Without listener ports there is no Service; the sweep removes an earlier one.
            // Listeners that cannot serve yet still have ports (GatewayOutput::service_ports).
            if let Some(service) = &provisioned.service {
                wanted.insert("Service", &ns, &provisioned.name);
                let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
                failures += self.apply(services, service).await;
            }
            failures += self.persist_last_good(stores, key, &provisioned).await;
            // Until its objects are in place, what it had stays (the old class's Deployment
            // keeps serving while the new one cannot be applied).
            if failures > failures_before {
                unsettled.extend(gateway.uid());
            }
        }
        // Only where a Gateway of ours is: one whose class is missing may not be ours at all.
        let with_ours: HashSet<&str> = output
            .gateways
            .keys()
            .map(|key| key.namespace.as_str())
            .collect();
        owners.retain(|namespace, _| with_ours.contains(namespace.as_str()));
        for namespace in owners.keys() {
            wanted.insert("ConfigMap", namespace, provision::CA_CONFIGMAP);
        }
        if let Some(ca) = self.ca_pem.clone() {
            for (namespace, owners) in &owners {
                let config_map = ca_configmap(namespace, &ca, owners);
                failures += self
                    .apply(
                        Api::<ConfigMap>::namespaced(self.client.clone(), namespace),
                        &config_map,
                    )
                    .await;
            }
        }
        Provisioning {
            failures,
            wanted,
            unsettled,
        }
    }

    /// Deletes provisioned objects no Gateway of ours wants any more (see [`sweep`]), judged
    /// by the same snapshot of Gateways and classes the pass compiled. Returns how many calls
    /// failed.
    async fn remove_orphans(
        &mut self,
        input: &Input,
        output: &Output,
        provisioned: &Provisioning,
    ) -> usize {
        let owners = gateway_owners(input, output, &provisioned.unsettled);
        let leadership = self.leadership.clone();
        let still_leading = move || leadership.holds();
        let (deleted, failures) = self
            .sweeper
            .sweep(&self.client, &provisioned.wanted, &owners, &still_leading)
            .await;
        for object in deleted {
            self.applied.remove(&format!(
                "{}/{}/{}",
                object.kind, object.namespace, object.name
            ));
        }
        failures
    }

    /// The provisioning settings, with agents pointed at the config Service's ClusterIP when it
    /// has one: config delivery then never depends on cluster DNS (the certificate is still
    /// verified against the Service's DNS name).
    fn provision_settings(&self, stores: &Stores) -> ProvisionSettings {
        let mut settings = self.settings.provision.clone();
        let service = &self.settings.config_service;
        let cluster_ip = stores
            .services
            .state()
            .into_iter()
            .find(|s| ObjectKey::of(&**s) == *service)
            .and_then(|s| s.spec.as_ref().and_then(|spec| spec.cluster_ip.clone()))
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        if let Some(ip) = cluster_ip {
            let address = std::net::SocketAddr::new(ip, self.settings.config_port);
            settings.config_server = format!("https://{address}");
        }
        settings
    }

    /// Keeps the Gateway's last-good Secret at the newest config a ready proxy pod served, so
    /// a pod started while no operator replica is reachable serves it from the first moment.
    async fn persist_last_good(
        &mut self,
        stores: &Stores,
        key: &ObjectKey,
        provisioned: &provision::Provisioned,
    ) -> usize {
        let Some(current) = self.hub.current(key) else {
            return 0;
        };
        if !matches!(self.delivery(stores, key), Delivery::Served) {
            return 0;
        }
        let hash = hex(current.content_hash);
        let name = provision::last_good_secret_name(&provisioned.name);
        let existing = stores.secrets.state().into_iter().find(|secret| {
            secret.metadata.namespace.as_deref() == Some(&key.namespace)
                && secret.metadata.name.as_deref() == Some(&name)
        });
        if let Some(existing) = existing {
            let annotation = |k: &str| {
                existing
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(k).cloned())
            };
            if annotation(provision::CONTENT_HASH_ANNOTATION).as_ref() == Some(&hash) {
                return 0;
            }
            // Never take over a Secret someone else made under this name.
            let ours = existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(provision::MANAGED_BY_LABEL))
                == Some(&provision::MANAGED_BY.to_string());
            if !ours {
                warn!(gateway = %key, secret = %name,
                    "a Secret not managed by Portcullis has the last-good Secret's name; not persisting");
                return 0;
            }
        }
        let gzipped = match serde_json::to_vec(&*current.config)
            .map_err(std::io::Error::from)
            .and_then(|json| gzip::compress(&json))
        {
            Ok(gzipped) => gzipped,
            Err(e) => {
                warn!(gateway = %key, error = %e, "encoding the last good config failed");
                return 1;
            }
        };
        if gzipped.len() > provision::LAST_GOOD_MAX_BYTES {
            warn!(gateway = %key, bytes = gzipped.len(),
                "the config is too large for a Secret even gzipped; new proxy pods wait for the operator");
            return 0;
        }
        let secret = provision::last_good_secret(provisioned, gzipped, &hash);
        self.apply(
            Api::<Secret>::namespaced(self.client.clone(), &provisioned.namespace),
            &secret,
        )
        .await
    }

    /// Server-side apply under our field manager, skipped when this replica already applied
    /// the same object. Returns 1 on failure.
    async fn apply<K>(&mut self, api: Api<K>, object: &K) -> usize
    where
        K: Resource + Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        let name = object.name_any();
        let cache_key = format!("{kind}/{}/{name}", object.namespace().unwrap_or_default());
        let digest: [u8; 32] =
            Sha256::digest(serde_json::to_vec(object).unwrap_or_default()).into();
        if self.applied.get(&cache_key) == Some(&digest) {
            return 0;
        }
        if !self.leadership.holds() {
            debug!(object = %cache_key, "no longer leading; not applied");
            return 1;
        }
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
        {
            Ok(_) => {
                debug!(object = %cache_key, "applied");
                self.applied.insert(cache_key, digest);
                0
            }
            Err(e) => {
                warn!(object = %cache_key, error = %e, "apply failed");
                1
            }
        }
    }

    async fn write_statuses(&self, stores: &Stores, input: &Input, output: &Output) -> usize {
        let now = Time(Timestamp::now());
        let mut failures = 0;
        for (name, class) in &output.gateway_classes {
            let Some(existing) = input.gateway_classes.iter().find(|c| c.name_any() == *name)
            else {
                continue;
            };
            let new = status::class_status(existing.status.as_ref(), class, &now);
            let api: Api<GatewayClass> = Api::all(self.client.clone());
            let notices = |old: Option<&GatewayClassStatus>, new: &GatewayClassStatus| {
                events::object_changes(
                    old.and_then(|s| s.conditions.as_deref()),
                    new.conditions.as_deref(),
                )
            };
            failures += self
                .write_status(&api, existing, existing.status.as_ref(), &new, notices)
                .await;
        }
        let gateways = by_key(&input.gateways);
        for (key, gateway) in &output.gateways {
            let Some(existing) = gateways.get(key).copied() else {
                continue;
            };
            let delivery = self.delivery(stores, key);
            let addresses = addresses(stores, existing, &gateway.static_addresses);
            let new = status::gateway_status(
                existing.status.as_ref(),
                gateway,
                &delivery,
                &addresses,
                &now,
            );
            let api: Api<Gateway> = Api::namespaced(self.client.clone(), &key.namespace);
            let notices = |old: Option<&GatewayStatus>, new: &GatewayStatus| {
                events::object_changes(
                    old.and_then(|s| s.conditions.as_deref()),
                    new.conditions.as_deref(),
                )
            };
            failures += self
                .write_status(&api, existing, existing.status.as_ref(), &new, notices)
                .await;
        }
        let listener_set_notices = |old: Option<&ListenerSetStatus>, new: &ListenerSetStatus| {
            events::object_changes(
                old.and_then(|s| s.conditions.as_deref()),
                new.conditions.as_deref(),
            )
        };
        let mut listener_sets = Vec::new();
        let existing_sets = by_key(&input.listener_sets);
        for (key, set) in &output.listener_sets {
            let Some(existing) = existing_sets.get(key).copied() else {
                continue;
            };
            let delivery = self.delivery(stores, &set.gateway);
            let static_addresses = output
                .gateways
                .get(&set.gateway)
                .map(|g| g.static_addresses.as_slice())
                .unwrap_or_default();
            let has_address = gateways
                .get(&set.gateway)
                .is_some_and(|g| !addresses(stores, g, static_addresses).is_empty());
            let Some(new) = status::listener_set_status(
                existing.status.as_ref(),
                set,
                &delivery,
                has_address,
                &now,
            ) else {
                failures += 1;
                continue;
            };
            listener_sets.push((existing, new));
        }
        // ListenerSets that were ours and no longer are (their Gateway was deleted or moved to
        // another class) get the API server's pending defaults back. Only if we made the last
        // status write: another controller's status is never touched.
        for existing in &input.listener_sets {
            let key = ObjectKey::of(existing);
            if output.listener_sets.contains_key(&key)
                || !status::last_status_writer_is(&existing.metadata, FIELD_MANAGER)
            {
                continue;
            }
            if let Some(new) = status::released_listener_set_status(existing.status.as_ref(), &now)
            {
                listener_sets.push((existing, new));
            }
        }
        for (existing, new) in &listener_sets {
            let namespace = existing.namespace().unwrap_or_default();
            let api: Api<ListenerSet> = Api::namespaced(self.client.clone(), &namespace);
            failures += self
                .write_status(
                    &api,
                    existing,
                    existing.status.as_ref(),
                    new,
                    listener_set_notices,
                )
                .await;
        }
        let http_routes =
            status::including_detached(&output.http_routes, &input.http_routes, |r| {
                status::has_our_entry(r.status.as_ref())
            });
        let existing_routes = by_key(&input.http_routes);
        for (key, route) in &http_routes {
            let Some(existing) = existing_routes.get(key).copied() else {
                continue;
            };
            let new = status::route_status(existing.status.as_ref(), route, &now);
            let api: Api<HttpRoute> = Api::namespaced(self.client.clone(), &key.namespace);
            let notices = |old: Option<&HttpRouteStatus>, new: &HttpRouteStatus| {
                events::route_changes(&key.namespace, old, new)
            };
            failures += self
                .write_status(&api, existing, existing.status.as_ref(), &new, notices)
                .await;
        }
        failures += self
            .write_same_shape_route_statuses(&output.grpc_routes, &input.grpc_routes, |r| {
                r.status.as_ref()
            })
            .await;
        failures += self
            .write_same_shape_route_statuses(&output.tls_routes, &input.tls_routes, |r| {
                r.status.as_ref()
            })
            .await;
        failures += self
            .write_same_shape_route_statuses(&output.tcp_routes, &input.tcp_routes, |r| {
                r.status.as_ref()
            })
            .await;
        failures += self
            .write_same_shape_route_statuses(&output.udp_routes, &input.udp_routes, |r| {
                r.status.as_ref()
            })
            .await;
        let policies = status::policies_including_detached(
            &output.backend_tls_policies,
            &input.backend_tls_policies,
        );
        let existing_policies = by_key(&input.backend_tls_policies);
        for (key, policy) in &policies {
            let Some(existing) = existing_policies.get(key).copied() else {
                continue;
            };
            let new = status::policy_status(existing.status.as_ref(), policy, &now);
            let api: Api<BackendTlsPolicy> = Api::namespaced(self.client.clone(), &key.namespace);
            failures += self
                .write_status(&api, existing, existing.status.as_ref(), &new, |_, _| {
                    Vec::new()
                })
                .await;
        }
        failures
    }

    /// Statuses of a route kind whose status has HTTPRoute's shape (GRPCRoute, TLSRoute,
    /// TCPRoute, UDPRoute): one merge serves every kind, through a JSON round trip.
    async fn write_same_shape_route_statuses<K, S>(
        &self,
        outputs: &BTreeMap<ObjectKey, RouteOutput>,
        objects: &[K],
        status_of: impl Fn(&K) -> Option<&S>,
    ) -> usize
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        S: Serialize + serde::de::DeserializeOwned,
    {
        let now = Time(Timestamp::now());
        let mut failures = 0;
        let outputs = status::including_detached(outputs, objects, |r| {
            let status: Option<HttpRouteStatus> = status_of(r).and_then(status::same_shape);
            status::has_our_entry(status.as_ref())
        });
        let existing_routes = by_key(objects);
        for (key, route) in &outputs {
            let Some(existing) = existing_routes.get(key).copied() else {
                continue;
            };
            // A status that does not read back (another controller's odd entry) is rebuilt
            // from ours alone rather than never written again.
            let old: Option<HttpRouteStatus> = status_of(existing).and_then(|current| {
                let converted = status::same_shape(current);
                if converted.is_none() {
                    warn!(route = %key, "the route's status does not parse; rewriting it");
                }
                converted
            });
            let merged = status::route_status(old.as_ref(), route, &now);
            let Some(new) = status::same_shape::<_, S>(&merged) else {
                warn!(route = %key, "the route status does not fit its kind's type; not written");
                failures += 1;
                continue;
            };
            let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
            let notices = |old: Option<&S>, new: &S| {
                let old: Option<HttpRouteStatus> = old.and_then(status::same_shape);
                status::same_shape(new)
                    .map(|new| events::route_changes(&key.namespace, old.as_ref(), &new))
                    .unwrap_or_default()
            };
            failures += self
                .write_status(&api, existing, status_of(existing), &new, notices)
                .await;
        }
        failures
    }

    /// Writes `new` over `old` unless they are the same, then publishes the Events for what
    /// changed. Returns 1 when the write failed (0 when it went through or the object had
    /// moved on; the next pass writes a fresh status then).
    async fn write_status<K, S>(
        &self,
        api: &Api<K>,
        existing: &K,
        old: Option<&S>,
        new: &S,
        notices: impl FnOnce(Option<&S>, &S) -> Vec<events::Notice>,
    ) -> usize
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: Serialize,
    {
        if old.is_some_and(|old| status::same_status(old, new)) {
            return 0;
        }
        if !self.leadership.holds() {
            return 1;
        }
        match patch_status(api, existing, new).await {
            Written::Yes => {
                self.publish(existing, &notices(old, new)).await;
                0
            }
            Written::Stale => 0,
            Written::Failed => 1,
        }
    }

    /// Events are best effort: a failure is logged and never holds up the pass.
    async fn publish<K>(&self, object: &K, notices: &[events::Notice])
    where
        K: Resource<DynamicType = ()>,
    {
        if notices.is_empty() {
            return;
        }
        let reference = object.object_ref(&());
        for notice in notices {
            if let Err(e) = self.recorder.publish(&notice.to_event(), &reference).await {
                warn!(object = ?reference.name, error = %e, "publishing an event failed");
            }
        }
    }

    /// Served once a ready proxy pod of the Gateway applied its current config.
    fn delivery(&self, stores: &Stores, key: &ObjectKey) -> Delivery {
        let Some(current) = self.hub.current(key) else {
            return Delivery::Waiting("no config for this Gateway yet".into());
        };
        let wanted = hex(current.content_hash);
        let pods = stores.proxy_pods.state();
        let label = provision::label_value(&key.name);
        let mine: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(&key.namespace))
            .filter(|p| p.labels().get(GATEWAY_NAME_LABEL) == Some(&label))
            .collect();
        let served = mine
            .iter()
            .any(|p| pod_ready(p) && p.annotations().get(APPLIED_ANNOTATION) == Some(&wanted));
        if served {
            Delivery::Served
        } else {
            Delivery::Waiting(format!(
                "waiting for a ready proxy pod to serve the current config ({} proxy pods)",
                mine.len()
            ))
        }
    }
}

/// What became of a status write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// The object changed or went away meanwhile; the next pass writes a fresh status.
    Stale,
    Failed,
}

async fn patch_status<K>(api: &Api<K>, existing: &K, status: &impl Serialize) -> Written
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // The resourceVersion makes this a conditional update: if the object changed meanwhile,
    // the patch fails and the next pass (woken by that change) writes a fresh status.
    let patch = json!({
        "metadata": {"resourceVersion": existing.resource_version()},
        "status": status,
    });
    match api
        .patch_status(
            &existing.name_any(),
            // Named, so the object's managed fields tell which controller wrote its status last.
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Written::Yes,
        Err(kube::Error::Api(e)) if e.code == 409 => Written::Stale,
        // Deleted meanwhile: there is no status left to write.
        Err(kube::Error::Api(e)) if e.code == 404 => Written::Stale,
        Err(e) => {
            warn!(object = %existing.name_any(), error = %e, "status update failed");
            Written::Failed
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// The Gateway's addresses: its static addresses once its Service has them all as external
/// IPs; without static addresses, its Service's load-balancer ingress, else its ClusterIP.
fn addresses(
    stores: &Stores,
    gateway: &Gateway,
    static_addresses: &[String],
) -> Vec<GatewayStatusAddresses> {
    let namespace = gateway.namespace().unwrap_or_default();
    let name = provision::resource_name(&gateway.name_any(), &gateway.spec.gateway_class_name);
    let Some(service) = stores
        .services
        .state()
        .into_iter()
        .find(|s| s.namespace().as_deref() == Some(&namespace) && s.name_any() == name)
    else {
        return Vec::new();
    };
    if !static_addresses.is_empty() {
        let external = service
            .spec
            .as_ref()
            .and_then(|s| s.external_ips.as_deref())
            .unwrap_or_default();
        if !static_addresses.iter().all(|a| external.contains(a)) {
            return Vec::new();
        }
        return static_addresses
            .iter()
            .map(|a| GatewayStatusAddresses {
                r#type: Some("IPAddress".into()),
                value: a.clone(),
            })
            .collect();
    }
    let mut out = Vec::new();
    for ingress in service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(ip) = &ingress.ip {
            out.push(GatewayStatusAddresses {
                r#type: Some("IPAddress".into()),
                value: ip.clone(),
            });
        } else if let Some(hostname) = &ingress.hostname {
            out.push(GatewayStatusAddresses {
                r#type: Some("Hostname".into()),
                value: hostname.clone(),
            });
        }
    }
    if out.is_empty()
        && let Some(ip) = service.spec.as_ref().and_then(|s| s.cluster_ip.clone())
        && ip != "None"
        && !ip.is_empty()
    {
        out.push(GatewayStatusAddresses {
            r#type: Some("IPAddress".into()),
            value: ip,
        });
    }
    out
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Loaded, load_str};

    #[test]
    fn only_gateways_whose_wants_are_known_are_decided() {
        let mut loaded = Loaded::default();
        load_str(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ours}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: theirs}
spec: {controllerName: example.com/other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: misconfigured}
spec:
  controllerName: portcullis.dev/gateway-controller
  parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: missing, namespace: infra}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: unaccepted-class, namespace: infra, uid: unaccepted-uid}
spec: {gatewayClassName: misconfigured, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: rendered, namespace: infra, uid: rendered-uid}
spec: {gatewayClassName: ours, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: not-rendered, namespace: infra, uid: not-rendered-uid}
spec: {gatewayClassName: ours, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: moved-away, namespace: infra, uid: moved-away-uid}
spec: {gatewayClassName: theirs, listeners: [{name: http, port: 80, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: class-missing, namespace: infra, uid: class-missing-uid}
spec: {gatewayClassName: deleted, listeners: [{name: http, port: 80, protocol: HTTP}]}
"#,
            "test",
            &mut loaded,
        )
        .unwrap();
        let output = compile::compile(&loaded.input);
        // Fallback parameters are never provisioned: the controller counts such a Gateway
        // unsettled, like one that failed to render.
        let resolved =
            |name: &str| output.gateways[&ObjectKey::new("infra", name)].parameters_resolved;
        assert!(resolved("rendered"));
        assert!(!resolved("unaccepted-class"));
        let unsettled: HashSet<String> =
            ["not-rendered-uid".to_string(), "unaccepted-uid".to_string()].into();
        let owners = gateway_owners(&loaded.input, &output, &unsettled);
        let sorted = |set: &HashSet<String>| {
            let mut uids: Vec<String> = set.iter().cloned().collect();
            uids.sort();
            uids
        };
        assert_eq!(sorted(&owners.decided), ["moved-away-uid", "rendered-uid"]);
        assert_eq!(
            sorted(&owners.undecided),
            ["class-missing-uid", "not-rendered-uid", "unaccepted-uid"]
        );
    }
}
