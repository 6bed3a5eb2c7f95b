//! The real controller (`controller::run`, its kube-runtime reflectors, leader election,
//! provisioning, status writes and Events) against the in-process fake API server of
//! `support::fake_api`: what it writes to the API for the flows that matter, without a cluster.
//!
//! Every wait polls the fake's state for at most [`WAIT`]; nothing relies on the controller's
//! 30 s idle tick, only on watch events (which the fake delivers) and agent reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The helpers for the binary tests (`proxy_bin`) are unused here.
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use portcullis_operator::compile::{CONTROLLER_NAME, ObjectKey, features};
use portcullis_operator::controller::leader::LeaseSettings;
use portcullis_operator::controller::stores::{OptionalKinds, Stores};
use portcullis_operator::controller::{self, APPLIED_ANNOTATION, Parts, Settings};
use portcullis_operator::distribute::hub::{ConfigHub, PodId};
use portcullis_operator::provision::{
    FIELD_MANAGER, GATEWAY_NAME_LABEL, MANAGED_BY, MANAGED_BY_LABEL, ProvisionSettings, Seccomp,
    label_value, resource_name,
};
use portcullis_operator::telemetry::{ControllerLabel, Metrics};
use serde_json::{Value, json};
use support::fake_api::FakeApi;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The longest any wait-for-condition polls.
const WAIT: Duration = Duration::from_secs(10);
const OPERATOR_NAMESPACE: &str = "portcullis-system";
const LEASE: &str = "portcullis-operator";
const CLASS: &str = "portcullis";
const NS: &str = "infra";
/// `<gateway>-<class>`: what is provisioned for Gateway infra/gw.
const PROVISIONED: &str = "gw-portcullis";

// ---- the controller under test ----------------------------------------------------------

/// A running controller wired as `operator::run` wires it, talking to the fake.
struct Controller {
    fake: FakeApi,
    hub: ConfigHub,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<anyhow::Result<()>>,
}

fn settings(identity: &str) -> Settings {
    Settings {
        provision: ProvisionSettings {
            proxy_image: "registry.test/portcullis-proxy:test".into(),
            agent_image: "registry.test/portcullis:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            config_server: "https://portcullis.portcullis-system.svc:9443".into(),
            config_server_name: "portcullis.portcullis-system.svc".into(),
            seccomp: Seccomp::RuntimeDefault,
        },
        lease: LeaseSettings {
            namespace: OPERATOR_NAMESPACE.into(),
            name: LEASE.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_millis(300),
        },
        config_service: ObjectKey::new(OPERATOR_NAMESPACE, "portcullis"),
        config_port: 9443,
    }
}

/// The optional route kinds the fake serves, discovered as the operator does at start.
fn optional_kinds(client: &kube::Client) -> OptionalKinds {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(OptionalKinds::discover(client))
    })
}

fn start(fake: &FakeApi, identity: &str) -> Controller {
    init_logging();
    let client = fake.client();
    let changed = Arc::new(Notify::new());
    let stores = Stores::start(&client, changed.clone(), optional_kinds(&client));
    let hub = ConfigHub::new();
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let parts = Parts {
        client,
        stores,
        changed,
        hub: hub.clone(),
        ca_pem: Some("-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n".into()),
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let task = tokio::spawn(controller::run(parts, settings(identity)));
    Controller {
        fake: fake.clone(),
        hub,
        metrics,
        ready,
        task,
    }
}

impl Controller {
    fn reconcile_errors(&self) -> u64 {
        self.metrics.reconcile_errors.get_or_create(&LABEL).get()
    }

    fn reconciles(&self) -> u64 {
        self.metrics.reconciles.get_or_create(&LABEL).get()
    }

    /// The controller still runs and the fake was never asked anything it does not serve.
    fn finish(self) {
        assert!(!self.task.is_finished(), "the controller stopped");
        let unknown = self.fake.unknown();
        assert!(
            unknown.is_empty(),
            "requests the fake API server does not serve:\n{}",
            unknown.join("\n")
        );
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const LABEL: ControllerLabel = ControllerLabel {
    controller: "gateway",
};

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns Some, for at most [`WAIT`]; the failure shows the last
/// requests the fake served.
async fn wait_for<T>(fake: &FakeApi, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}; the last requests:\n{}",
            fake.summary(60)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- objects ----------------------------------------------------------------------------

fn gateway_class(name: &str, controller_name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller_name},
    })
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
    })
}

fn gateway(name: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "gatewayClassName": CLASS,
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    })
}

/// An HTTPRoute in `namespace` attached to Gateway infra/gw, sending everything to
/// `backend`:8080.
fn route(namespace: &str, name: &str, backend: &str) -> Value {
    let parent = if namespace == NS {
        json!({"name": "gw"})
    } else {
        json!({"name": "gw", "namespace": NS})
    };
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [parent],
            "hostnames": [format!("{name}.example.com")],
            "rules": [{"backendRefs": [{"name": backend, "port": 8080}]}],
        },
    })
}

/// A backend Service on port 8080 and its EndpointSlice with one ready endpoint.
fn backend(fake: &FakeApi, name: &str) {
    fake.create(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        },
    }));
    fake.create(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-abcde"),
            "namespace": NS,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}],
    }));
}

/// Our class, namespace `infra`, Gateway infra/gw and backend Service `echo`.
fn seed_gateway(fake: &FakeApi) {
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(namespace(NS));
    fake.create(gateway("gw"));
    backend(fake, "echo");
}

/// A proxy pod of Gateway infra/gw as its Deployment would make it.
fn proxy_pod(name: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                GATEWAY_NAME_LABEL: "gw",
                MANAGED_BY_LABEL: MANAGED_BY,
                "app.kubernetes.io/instance": PROVISIONED,
            },
        },
        "spec": {"containers": [{"name": "proxy", "image": "proxy"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        },
    })
}

fn micro_time(offset: SignedDuration) -> Value {
    serde_json::to_value(MicroTime(Timestamp::now() + offset)).unwrap()
}

// ---- reading statuses -------------------------------------------------------------------

fn condition(conditions: &Value, type_: &str) -> Option<Value> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The condition `type_` of an object's `status.conditions`.
fn object_condition(
    fake: &FakeApi,
    kind: &str,
    namespace: &str,
    name: &str,
    type_: &str,
) -> Option<Value> {
    condition(
        &fake.get(kind, namespace, name)?["status"]["conditions"],
        type_,
    )
}

fn is(condition: &Value, status: &str, reason: &str) -> bool {
    condition["status"] == status && condition["reason"] == reason
}

/// Our parent entry for Gateway infra/gw in an HTTPRoute's status.
fn route_parent(fake: &FakeApi, namespace: &str, name: &str) -> Option<Value> {
    kind_route_parent(fake, "HTTPRoute", namespace, name)
}

/// Our parent entry for Gateway infra/gw in the status of a route of any kind.
fn kind_route_parent(fake: &FakeApi, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    fake.get(kind, namespace, name)?["status"]["parents"]
        .as_array()?
        .iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME && p["parentRef"]["name"] == "gw")
        .cloned()
}

fn route_condition(fake: &FakeApi, namespace: &str, name: &str, type_: &str) -> Option<Value> {
    condition(&route_parent(fake, namespace, name)?["conditions"], type_)
}

/// Events (events.k8s.io/v1) about the object `kind` `namespace/name`.
fn events_about(fake: &FakeApi, kind: &str, namespace: &str, name: &str) -> Vec<Value> {
    fake.list("Event")
        .into_iter()
        .filter(|e| {
            let regarding = &e["regarding"];
            regarding["kind"] == kind
                && regarding["name"] == name
                && regarding["namespace"].as_str().unwrap_or_default() == namespace
        })
        .collect()
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- flows ------------------------------------------------------------------------------

/// Our GatewayClass gets Accepted=True with its generation and the supported features, and
/// follows a spec change; a class of another controller is never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_gateway_class_is_accepted_and_others_are_left_alone() {
    let fake = FakeApi::new();
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(gateway_class("other", "example.com/other-controller"));
    let controller = start(&fake, "portcullis-0");

    let accepted = wait_for(&fake, "GatewayClass Accepted=True", || {
        object_condition(&fake, "GatewayClass", "", CLASS, "Accepted")
            .filter(|c| is(c, "True", "Accepted"))
    })
    .await;
    assert_eq!(accepted["observedGeneration"], 1);
    assert!(
        controller.ready.load(Ordering::Relaxed),
        "ready once synced"
    );
    let class = fake.get("GatewayClass", "", CLASS).unwrap();
    let features: Vec<&str> = class["status"]["supportedFeatures"]
        .as_array()
        .expect("status.supportedFeatures")
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut expected = features::supported();
    expected.sort_unstable();
    assert_eq!(features, expected);
    assert!(features.contains(&"HTTPRoute"));

    // A spec change moves the generation; the watch delivers it and the status follows.
    fake.modify("GatewayClass", "", CLASS, |c| {
        c["spec"]["description"] = json!("edge proxies");
    });
    wait_for(&fake, "observedGeneration 2", || {
        object_condition(&fake, "GatewayClass", "", CLASS, "Accepted")
            .filter(|c| c["observedGeneration"] == 2 && c["status"] == "True")
    })
    .await;

    // Status writes are conditional merge patches of the status subresource.
    let writes = fake.requests_where(|r| r.is_status_patch() && r.kind == Some("GatewayClass"));
    assert!(!writes.is_empty());
    for write in &writes {
        assert_eq!(write.name.as_deref(), Some(CLASS), "{write}");
        assert_eq!(
            write.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert!(
            write.body["metadata"]["resourceVersion"].is_string(),
            "a conditional write: {}",
            write.body
        );
    }

    // The leader's orphan sweep lists our objects, as metadata, of the kinds it provisions.
    let managed_by = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let is_sweep = |r: &support::fake_api::RecordedRequest| {
        !r.watch
            && r.accept
                .as_deref()
                .is_some_and(|a| a.contains("as=PartialObjectMetadata"))
            && r.query.get("labelSelector") == Some(&managed_by)
    };
    for path in [
        "/apis/apps/v1/deployments",
        "/api/v1/services",
        "/api/v1/serviceaccounts",
        "/api/v1/secrets",
        "/api/v1/configmaps",
    ] {
        assert!(
            !fake
                .requests_where(|r| r.path == path && is_sweep(r))
                .is_empty(),
            "no sweep of {path}"
        );
    }

    // The watches: a LIST then a WATCH from its resourceVersion for every kind; Secrets as
    // metadata only, Pods of ours only.
    for path in [
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses",
        "/apis/gateway.networking.k8s.io/v1/gateways",
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "/apis/gateway.networking.k8s.io/v1/referencegrants",
        "/apis/portcullis.dev/v1alpha1/gatewayparameters",
        "/api/v1/namespaces",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/api/v1/secrets",
        "/api/v1/pods",
    ] {
        let lists = fake.requests_where(|r| r.path == path && !r.watch && !is_sweep(r));
        let watches = fake.requests_where(|r| r.path == path && r.watch);
        assert!(!lists.is_empty() && !watches.is_empty(), "{path}");
        assert!(
            watches[0].query.contains_key("resourceVersion"),
            "{}",
            watches[0]
        );
        for request in lists.iter().chain(&watches) {
            let accept = request.accept.as_deref().unwrap_or_default();
            assert_eq!(
                accept.contains("as=PartialObjectMetadata"),
                path == "/api/v1/secrets",
                "{request}: {accept}"
            );
            assert_eq!(
                request.query.get("labelSelector").map(String::as_str),
                (path == "/api/v1/pods").then_some("app.kubernetes.io/managed-by=portcullis"),
                "{request}"
            );
        }
    }

    let other = fake.get("GatewayClass", "", "other").unwrap();
    assert!(other.get("status").is_none(), "{other}");
    let touched = fake.requests_where(|r| r.name.as_deref() == Some("other"));
    assert!(
        touched.is_empty(),
        "the other class was addressed: {touched:?}"
    );
    controller.finish();
}

/// A Gateway and its route: the proxy infrastructure is server-side applied, the Gateway is
/// Accepted but Programmed only once a ready proxy pod serves its config, and the route's
/// parent status echoes its parentRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_is_provisioned_and_programmed_once_a_proxy_serves_its_config() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    let controller = start(&fake, "portcullis-0");
    let gateway_uid = fake.get("Gateway", NS, "gw").unwrap()["metadata"]["uid"].clone();

    for kind in ["ServiceAccount", "Deployment", "Service"] {
        let object = wait_for(&fake, &format!("the {kind}"), || {
            fake.get(kind, NS, PROVISIONED)
        })
        .await;
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(
            owner["apiVersion"], "gateway.networking.k8s.io/v1",
            "{kind}"
        );
        assert_eq!(owner["kind"], "Gateway");
        assert_eq!(owner["name"], "gw");
        assert_eq!(owner["uid"], gateway_uid);
        assert_eq!(owner["controller"], true);
        assert_eq!(object["metadata"]["labels"][GATEWAY_NAME_LABEL], "gw");
        assert_eq!(fake.field_managers(kind, NS, PROVISIONED), [FIELD_MANAGER]);
        let applies = fake.requests_where(|r| {
            r.kind == Some(kind) && r.name.as_deref() == Some(PROVISIONED) && r.is_write()
        });
        assert!(!applies.is_empty());
        for apply in &applies {
            assert!(
                apply.is_apply(),
                "{kind} written otherwise than by apply: {apply}"
            );
            assert_eq!(apply.field_manager(), Some(FIELD_MANAGER));
            assert_eq!(apply.query.get("force").map(String::as_str), Some("true"));
        }
    }
    let deployment = fake.get("Deployment", NS, PROVISIONED).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"][GATEWAY_NAME_LABEL],
        "gw"
    );
    // The agents' CA ConfigMap, owned by the Gateway too.
    let ca = wait_for(&fake, "the CA ConfigMap", || {
        fake.get("ConfigMap", NS, "portcullis-ca")
    })
    .await;
    assert_eq!(ca["metadata"]["ownerReferences"][0]["uid"], gateway_uid);

    // Accepted, but not Programmed while no proxy serves the config.
    wait_for(&fake, "Gateway Accepted=True", || {
        object_condition(&fake, "Gateway", NS, "gw", "Accepted")
            .filter(|c| is(c, "True", "Accepted"))
    })
    .await;
    let programmed = object_condition(&fake, "Gateway", NS, "gw", "Programmed").unwrap();
    assert!(is(&programmed, "False", "Pending"), "{programmed}");

    let parent = wait_for(&fake, "the route's parent status", || {
        route_parent(&fake, NS, "web")
    })
    .await;
    assert_eq!(
        parent["parentRef"],
        json!({"name": "gw"}),
        "the parentRef is echoed as written"
    );
    let accepted = condition(&parent["conditions"], "Accepted").unwrap();
    assert!(is(&accepted, "True", "Accepted"), "{accepted}");
    let resolved = condition(&parent["conditions"], "ResolvedRefs").unwrap();
    assert!(is(&resolved, "True", "ResolvedRefs"), "{resolved}");
    let gateway = fake.get("Gateway", NS, "gw").unwrap();
    assert_eq!(gateway["status"]["listeners"][0]["attachedRoutes"], 1);

    // A ready proxy pod that has not applied the config yet changes nothing.
    fake.create(proxy_pod("gw-portcullis-abc12", true));
    wait_for(&fake, "Programmed to count the proxy pod", || {
        object_condition(&fake, "Gateway", NS, "gw", "Programmed").filter(|c| {
            is(c, "False", "Pending")
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("(1 proxy pods)"))
        })
    })
    .await;

    // Its agent reports the current config applied: the controller records that on the pod
    // (the annotation any replica reads) and the Gateway becomes Programmed.
    let key = ObjectKey::new(NS, "gw");
    let published = controller.hub.current(&key).expect("a config is published");
    let pod = fake.get("Pod", NS, "gw-portcullis-abc12").unwrap();
    let pod_id = PodId {
        namespace: NS.into(),
        name: "gw-portcullis-abc12".into(),
        uid: pod["metadata"]["uid"].as_str().unwrap().into(),
    };
    controller.hub.report(&key, &pod_id, |report| {
        report.applied_hash = Some(published.content_hash);
        report.applied_generation = 1;
    });
    let programmed = wait_for(&fake, "Gateway Programmed=True", || {
        object_condition(&fake, "Gateway", NS, "gw", "Programmed")
            .filter(|c| is(c, "True", "Programmed"))
    })
    .await;
    assert_eq!(programmed["observedGeneration"], 1);
    let pod = fake.get("Pod", NS, "gw-portcullis-abc12").unwrap();
    assert_eq!(
        pod["metadata"]["annotations"][APPLIED_ANNOTATION],
        hex(published.content_hash)
    );
    let annotate = fake.requests_where(|r| r.kind == Some("Pod") && r.is_write());
    assert!(
        annotate
            .iter()
            .all(|r| r.content_type.as_deref() == Some("application/merge-patch+json")),
        "{annotate:?}"
    );
    let service = fake.get("Service", NS, PROVISIONED).unwrap();
    let gateway = fake.get("Gateway", NS, "gw").unwrap();
    assert_eq!(
        gateway["status"]["addresses"],
        json!([{"type": "IPAddress", "value": service["spec"]["clusterIP"]}])
    );
    // The served config is kept for proxies started while the operator is away.
    let last_good = wait_for(&fake, "the last-good Secret", || {
        fake.get("Secret", NS, "gw-portcullis-last-good")
    })
    .await;
    assert_eq!(
        last_good["metadata"]["annotations"]["portcullis.dev/content-hash"],
        hex(published.content_hash)
    );
    assert_eq!(
        fake.field_managers("Secret", NS, "gw-portcullis-last-good"),
        [FIELD_MANAGER]
    );

    // The only proxy pod stops being ready: Programmed goes back to Pending.
    fake.modify("Pod", NS, "gw-portcullis-abc12", |p| {
        p["status"]["conditions"][0]["status"] = json!("False");
    });
    wait_for(&fake, "Programmed=False once no proxy is ready", || {
        object_condition(&fake, "Gateway", NS, "gw", "Programmed")
            .filter(|c| is(c, "False", "Pending"))
    })
    .await;
    controller.finish();
}

/// One route with a missing backend is ResolvedRefs=False/BackendNotFound while a healthy
/// route on the same Gateway stays as it is; once the Service appears (a watch event), the
/// broken route recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_route_does_not_affect_its_neighbour() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "good", "echo"));
    fake.create(route(NS, "broken", "missing"));
    let controller = start(&fake, "portcullis-0");

    let unresolved = wait_for(&fake, "broken ResolvedRefs=False", || {
        route_condition(&fake, NS, "broken", "ResolvedRefs").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(unresolved["reason"], "BackendNotFound");
    let accepted = route_condition(&fake, NS, "broken", "Accepted").unwrap();
    assert!(is(&accepted, "True", "Accepted"), "{accepted}");
    let good = wait_for(&fake, "good route status", || {
        route_parent(&fake, NS, "good")
    })
    .await;
    let good_accepted = condition(&good["conditions"], "Accepted").unwrap();
    assert!(is(&good_accepted, "True", "Accepted"), "{good_accepted}");
    let good_resolved = condition(&good["conditions"], "ResolvedRefs").unwrap();
    assert!(
        is(&good_resolved, "True", "ResolvedRefs"),
        "{good_resolved}"
    );
    wait_for(&fake, "both routes attached", || {
        (fake.get("Gateway", NS, "gw")?["status"]["listeners"][0]["attachedRoutes"] == 2)
            .then_some(())
    })
    .await;

    backend(&fake, "missing");
    wait_for(&fake, "broken ResolvedRefs=True", || {
        route_condition(&fake, NS, "broken", "ResolvedRefs")
            .filter(|c| is(c, "True", "ResolvedRefs"))
    })
    .await;
    let after = route_parent(&fake, NS, "good").unwrap();
    assert_eq!(after, good, "the healthy route's status did not move");
    // The recovery is an Event (a first ResolvedRefs=True is not).
    wait_for(&fake, "the ResolvedRefs Event", || {
        events_about(&fake, "HTTPRoute", NS, "broken")
            .into_iter()
            .find(|e| e["reason"] == "ResolvedRefs")
    })
    .await;
    assert!(
        events_about(&fake, "HTTPRoute", NS, "good")
            .iter()
            .all(|e| e["reason"] != "ResolvedRefs")
    );
    controller.finish();
}

/// A route whose parentRefs stop naming our Gateway loses our status entry; another
/// controller's entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_route_loses_only_our_status_entry() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    let controller = start(&fake, "portcullis-0");
    wait_for(&fake, "route attached", || route_parent(&fake, NS, "web")).await;
    fake.modify("HTTPRoute", NS, "web", |r| {
        r["spec"]["parentRefs"] = json!([{"name": "someone-elses"}]);
        r["metadata"]["generation"] = json!(2);
        let parents = r["status"]["parents"].as_array_mut().unwrap();
        parents.push(json!({
            "controllerName": "example.com/other",
            "parentRef": {"name": "someone-elses"},
            "conditions": [],
        }));
    });
    let parents = wait_for(&fake, "our entry removed", || {
        let route = fake.get("HTTPRoute", NS, "web")?;
        let parents = route["status"]["parents"].as_array()?.clone();
        parents
            .iter()
            .all(|p| p["controllerName"] != CONTROLLER_NAME)
            .then_some(parents)
    })
    .await;
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    controller.finish();
}

/// GatewayParameters without `replicas` leave the Deployment's replica count alone (the field
/// is never applied); with replicas 3 the Deployment gets 3; unset again, the field is
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_applied_only_when_set() {
    let fake = FakeApi::new();
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(namespace(NS));
    fake.create(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "GatewayParameters",
        "metadata": {"name": "proxies", "namespace": NS},
        "spec": {"proxy": {"logLevel": "debug"}},
    }));
    let mut gw = gateway("gw");
    gw["spec"]["infrastructure"] = json!({
        "parametersRef": {"group": "portcullis.dev", "kind": "GatewayParameters", "name": "proxies"},
    });
    fake.create(gw);
    let controller = start(&fake, "portcullis-0");

    let last_apply = || {
        fake.requests_where(|r| {
            r.is_apply() && r.kind == Some("Deployment") && r.name.as_deref() == Some(PROVISIONED)
        })
        .pop()
    };
    let deployment = wait_for(&fake, "the Deployment", || {
        fake.get("Deployment", NS, PROVISIONED)
    })
    .await;
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "{}",
        deployment["spec"]
    );
    let applied = last_apply().unwrap().body;
    assert!(applied["spec"].get("replicas").is_none());
    let args = applied["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--log-level=debug"),
        "the parameters apply: {args}"
    );
    wait_for(&fake, "Gateway Accepted=True", || {
        object_condition(&fake, "Gateway", NS, "gw", "Accepted")
            .filter(|c| is(c, "True", "Accepted"))
    })
    .await;

    fake.modify("GatewayParameters", NS, "proxies", |p| {
        p["spec"]["replicas"] = json!(3);
    });
    wait_for(&fake, "3 replicas", || {
        (fake.get("Deployment", NS, PROVISIONED)?["spec"]["replicas"] == 3).then_some(())
    })
    .await;
    assert_eq!(last_apply().unwrap().body["spec"]["replicas"], 3);

    fake.modify("GatewayParameters", NS, "proxies", |p| {
        p["spec"].as_object_mut().unwrap().remove("replicas");
    });
    wait_for(&fake, "replicas released", || {
        fake.get("Deployment", NS, PROVISIONED)?["spec"]
            .get("replicas")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(last_apply().unwrap().body["spec"].get("replicas").is_none());
    controller.finish();
}

/// A replica that does not hold the Lease compiles and publishes configs but writes nothing:
/// no status, no apply, no Event. Once the holder's lease expires it takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_lease_writes_nothing() {
    let fake = FakeApi::new();
    fake.create(namespace(OPERATOR_NAMESPACE));
    fake.create(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": OPERATOR_NAMESPACE},
        "spec": {
            "holderIdentity": "portcullis-1",
            "leaseDurationSeconds": 15,
            "acquireTime": micro_time(SignedDuration::from_secs(-60)),
            "renewTime": micro_time(SignedDuration::from_hours(1)),
            "leaseTransitions": 0,
        },
    }));
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    let controller = start(&fake, "portcullis-0");

    let key = ObjectKey::new(NS, "gw");
    wait_for(&fake, "a published config and a few lease rounds", || {
        let rounds = fake.requests_where(|r| r.kind == Some("Lease")).len();
        (controller.hub.current(&key).is_some() && controller.reconciles() >= 1 && rounds >= 4)
            .then_some(())
    })
    .await;
    let writes = fake.requests_where(|r| r.is_write());
    assert!(writes.is_empty(), "a follower wrote: {writes:#?}");
    assert_eq!(controller.metrics.leader.get(), 0);
    for (kind, namespace, name) in [
        ("GatewayClass", "", CLASS),
        ("Gateway", NS, "gw"),
        ("HTTPRoute", NS, "web"),
    ] {
        assert!(
            fake.get(kind, namespace, name)
                .unwrap()
                .get("status")
                .is_none(),
            "{kind} has a status"
        );
    }
    assert!(fake.list("Deployment").is_empty());
    assert!(fake.list("Event").is_empty());

    // The holder stops renewing: this replica takes the lease and starts writing.
    fake.modify("Lease", OPERATOR_NAMESPACE, LEASE, |l| {
        l["spec"]["renewTime"] = micro_time(SignedDuration::from_secs(-60));
    });
    wait_for(&fake, "Gateway Accepted=True by the new leader", || {
        object_condition(&fake, "Gateway", NS, "gw", "Accepted")
            .filter(|c| is(c, "True", "Accepted"))
    })
    .await;
    let lease = fake.get("Lease", OPERATOR_NAMESPACE, LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "portcullis-0");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(controller.metrics.leader.get(), 1);
    wait_for(&fake, "the Deployment", || {
        fake.get("Deployment", NS, PROVISIONED)
    })
    .await;
    controller.finish();
}

/// Status writes answering 500 for a while: the passes count as failed, and the controller
/// retries on its own (no other change happens) and converges once the API recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_status_writes_are_retried_until_the_api_recovers() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    fake.fail_next(usize::MAX, 500, |r| r.is_status_patch());
    let controller = start(&fake, "portcullis-0");

    wait_for(&fake, "failed status writes", || {
        let failed = fake.requests_where(|r| r.is_status_patch() && r.code == 500);
        (failed.len() >= 3 && controller.reconcile_errors() >= 1).then_some(())
    })
    .await;
    // Provisioning is not held up by the status failures.
    wait_for(&fake, "the Deployment", || {
        fake.get("Deployment", NS, PROVISIONED)
    })
    .await;
    // The cluster is quiet now (everything applied, failed writes change nothing), yet the
    // controller keeps retrying, with a backoff rather than a busy loop.
    let errors = controller.reconcile_errors();
    wait_for(&fake, "a retry without any change", || {
        (controller.reconcile_errors() > errors).then_some(())
    })
    .await;
    let errors = controller.reconcile_errors();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retries = controller.reconcile_errors() - errors;
    assert!(
        retries <= 6,
        "{retries} failed passes in 600 ms: no backoff?"
    );
    // The API recovers; nothing else happens.
    fake.clear_faults();

    wait_for(&fake, "every status written after the recovery", || {
        let class = object_condition(&fake, "GatewayClass", "", CLASS, "Accepted")?;
        let gateway = object_condition(&fake, "Gateway", NS, "gw", "Accepted")?;
        let route = route_condition(&fake, NS, "web", "Accepted")?;
        (is(&class, "True", "Accepted")
            && is(&gateway, "True", "Accepted")
            && is(&route, "True", "Accepted"))
        .then_some(())
    })
    .await;
    assert!(controller.reconcile_errors() >= errors);
    controller.finish();
}

/// Events: acceptance and refusals are published (events.k8s.io/v1) about the object they
/// concern, by our controller; a steady cluster publishes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_acceptance_and_refusals() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(namespace("apps"));
    fake.create(route(NS, "web", "echo"));
    // Listeners allow routes from their own namespace only.
    fake.create(route("apps", "intruder", "echo"));
    let mut broken = gateway("broken");
    broken["spec"]["infrastructure"] = json!({
        "parametersRef": {"group": "portcullis.dev", "kind": "GatewayParameters", "name": "absent"},
    });
    fake.create(broken);
    let controller = start(&fake, "portcullis-0");

    let class_event = wait_for(&fake, "the GatewayClass Accepted Event", || {
        events_about(&fake, "GatewayClass", "", CLASS)
            .into_iter()
            .find(|e| e["reason"] == "Accepted")
    })
    .await;
    let class = fake.get("GatewayClass", "", CLASS).unwrap();
    assert_eq!(class_event["type"], "Normal");
    assert_eq!(class_event["action"], "Reconcile");
    assert_eq!(class_event["reportingController"], CONTROLLER_NAME);
    assert_eq!(class_event["regarding"]["uid"], class["metadata"]["uid"]);
    assert_eq!(
        class_event["metadata"]["namespace"], "default",
        "Events about cluster-scoped objects go to default"
    );

    wait_for(&fake, "the Gateway's Accepted and Pending Events", || {
        let events = events_about(&fake, "Gateway", NS, "gw");
        let accepted = events
            .iter()
            .any(|e| e["reason"] == "Accepted" && e["type"] == "Normal");
        let pending = events
            .iter()
            .any(|e| e["reason"] == "Pending" && e["type"] == "Normal");
        (accepted && pending).then_some(())
    })
    .await;
    let refused = wait_for(&fake, "the refused Gateway's Event", || {
        events_about(&fake, "Gateway", NS, "broken")
            .into_iter()
            .find(|e| e["reason"] == "InvalidParameters")
    })
    .await;
    assert_eq!(refused["type"], "Warning");
    assert!(
        refused["note"]
            .as_str()
            .unwrap()
            .starts_with("Accepted=False (InvalidParameters)"),
        "{refused}"
    );

    let route_event = wait_for(&fake, "the route's Accepted Event", || {
        events_about(&fake, "HTTPRoute", NS, "web")
            .into_iter()
            .find(|e| e["reason"] == "Accepted")
    })
    .await;
    assert_eq!(route_event["type"], "Normal");
    assert!(
        route_event["note"]
            .as_str()
            .unwrap()
            .starts_with("parent Gateway infra/gw: Accepted=True"),
        "{route_event}"
    );
    let intruder = wait_for(&fake, "the intruder's refusal Event", || {
        events_about(&fake, "HTTPRoute", "apps", "intruder")
            .into_iter()
            .find(|e| e["reason"] == "NotAllowedByListeners")
    })
    .await;
    assert_eq!(intruder["type"], "Warning");
    assert_eq!(intruder["metadata"]["namespace"], "apps");
    let status = route_condition(&fake, "apps", "intruder", "Accepted").unwrap();
    assert!(is(&status, "False", "NotAllowedByListeners"), "{status}");

    // Steady state: a pass that changes no condition publishes nothing.
    let before = fake.list("Event").len();
    let passes = controller.reconciles();
    fake.modify("Namespace", "", "apps", |n| {
        n["metadata"]["labels"]["team"] = json!("apps");
    });
    wait_for(&fake, "another pass", || {
        (controller.reconciles() > passes).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.list("Event").len(),
        before,
        "{:#?}",
        fake.list("Event")
    );
    controller.finish();
}

/// TLSRoutes and TCPRoutes get their statuses written through the same merge as HTTPRoutes,
/// and attach to the Gateway's TLS and TCP listeners only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tcp_routes_get_statuses() {
    let fake = FakeApi::new();
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(namespace(NS));
    fake.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": NS},
        "spec": {
            "gatewayClassName": CLASS,
            "listeners": [
                {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                {"name": "tcp", "port": 5432, "protocol": "TCP"},
            ],
        },
    }));
    backend(&fake, "echo");
    fake.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "TLSRoute",
        "metadata": {"name": "db-tls", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["db.example.com"],
            "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}],
        },
    }));
    fake.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "TCPRoute",
        "metadata": {"name": "db-tcp", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw", "sectionName": "tcp"}],
            "rules": [{"backendRefs": [{"name": "missing", "port": 5432}]}],
        },
    }));
    let controller = start(&fake, "portcullis-0");

    let parent_condition = |kind: &str, name: &str, type_: &str| {
        condition(
            &kind_route_parent(&fake, kind, NS, name)?["conditions"],
            type_,
        )
    };
    let tls = wait_for(&fake, "TLSRoute Accepted", || {
        parent_condition("TLSRoute", "db-tls", "Accepted")
    })
    .await;
    assert!(is(&tls, "True", "Accepted"), "{tls}");
    let tcp = wait_for(&fake, "TCPRoute ResolvedRefs", || {
        parent_condition("TCPRoute", "db-tcp", "ResolvedRefs")
    })
    .await;
    assert!(is(&tcp, "False", "BackendNotFound"), "{tcp}");
    assert_eq!(
        fake.get("TCPRoute", NS, "db-tcp").unwrap()["status"]["parents"][0]["parentRef"]["sectionName"],
        "tcp",
        "the spec's parentRef is echoed"
    );
    wait_for(&fake, "one route on each listener", || {
        let listeners = fake.get("Gateway", NS, "gw")?["status"]["listeners"].clone();
        (listeners[0]["attachedRoutes"] == 1 && listeners[1]["attachedRoutes"] == 1).then_some(())
    })
    .await;
    controller.finish();
}

/// A GRPCRoute attaches to an HTTP listener next to an HTTPRoute, gets its status written
/// (echoing its parentRef) and is counted in the listener's attachedRoutes; the listener lists
/// GRPCRoute among its supported kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_get_statuses() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    fake.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": "rpc", "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw", "sectionName": "http"}],
            "hostnames": ["rpc.example.com"],
            "rules": [{
                "matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}],
                "backendRefs": [{"name": "echo", "port": 8080}],
            }],
        },
    }));
    let controller = start(&fake, "portcullis-0");
    let accepted = wait_for(&fake, "GRPCRoute Accepted", || {
        condition(
            &kind_route_parent(&fake, "GRPCRoute", NS, "rpc")?["conditions"],
            "Accepted",
        )
    })
    .await;
    assert!(is(&accepted, "True", "Accepted"), "{accepted}");
    let parent = kind_route_parent(&fake, "GRPCRoute", NS, "rpc").unwrap();
    assert_eq!(parent["parentRef"]["sectionName"], "http", "{parent}");
    let resolved = condition(&parent["conditions"], "ResolvedRefs").unwrap();
    assert!(is(&resolved, "True", "ResolvedRefs"), "{resolved}");
    wait_for(&fake, "both routes on the listener", || {
        let listener = fake.get("Gateway", NS, "gw")?["status"]["listeners"][0].clone();
        let kinds: Vec<Value> = listener["supportedKinds"]
            .as_array()?
            .iter()
            .map(|k| k["kind"].clone())
            .collect();
        (listener["attachedRoutes"] == 2 && kinds == [json!("HTTPRoute"), json!("GRPCRoute")])
            .then_some(())
    })
    .await;
    controller.finish();
}

/// A cluster whose Gateway API bundle lacks GRPCRoute, TLSRoute, TCPRoute and ListenerSet: the
/// operator does not wait for lists it cannot get, and HTTPRoutes are served as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_optional_route_crds_do_not_block_the_rest() {
    let fake = FakeApi::new();
    fake.uninstall("GRPCRoute");
    fake.uninstall("TLSRoute");
    fake.uninstall("TCPRoute");
    fake.uninstall("UDPRoute");
    fake.uninstall("ListenerSet");
    fake.uninstall("BackendTLSPolicy");
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    let client = fake.client();
    assert_eq!(
        optional_kinds(&client),
        OptionalKinds {
            grpc_routes: false,
            tls_routes: false,
            tcp_routes: false,
            udp_routes: false,
            listener_sets: false,
            backend_tls_policies: false,
        }
    );
    let controller = start(&fake, "portcullis-0");
    let accepted = wait_for(&fake, "HTTPRoute Accepted", || {
        route_condition(&fake, NS, "web", "Accepted")
    })
    .await;
    assert!(is(&accepted, "True", "Accepted"), "{accepted}");
    assert!(
        fake.requests().iter().all(|r| [
            "grpcroutes",
            "tlsroutes",
            "tcproutes",
            "udproutes",
            "listenersets",
            "backendtlspolicies"
        ]
        .iter()
        .all(|kind| !r.path.contains(kind))),
        "no list or watch of a kind the cluster does not serve"
    );
    controller.finish();
}

fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

/// BackendTLSPolicy infra/echo-tls: TLS to Service echo, verified with ConfigMap echo-ca.
fn echo_tls_policy() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": "echo-tls", "namespace": NS, "generation": 1},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo"}],
            "validation": {
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "echo-ca"}],
                "hostname": "echo.example.com",
            },
        },
    })
}

/// ConfigMap infra/echo-ca with a CA certificate.
fn echo_ca() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "echo-ca", "namespace": NS},
        "data": {"ca.crt": ca_pem()},
    })
}

/// Our ancestor entry for Gateway infra/gw in a BackendTLSPolicy's status.
fn policy_condition(fake: &FakeApi, name: &str, type_: &str) -> Option<Value> {
    let policy = fake.get("BackendTLSPolicy", NS, name)?;
    let ancestor = policy["status"]["ancestors"]
        .as_array()?
        .iter()
        .find(|a| a["controllerName"] == CONTROLLER_NAME && a["ancestorRef"]["name"] == "gw")?
        .clone();
    condition(&ancestor["conditions"], type_)
}

/// The CA ConfigMap a BackendTLSPolicy references is read when it appears and re-read when it
/// changes (ConfigMaps are watched as metadata only); the policy's status follows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_policy_status_follows_its_ca_config_map() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(route(NS, "web", "echo"));
    fake.create(echo_tls_policy());
    let controller = start(&fake, "portcullis-0");
    let accepted = wait_for(&fake, "policy status without its ConfigMap", || {
        policy_condition(&fake, "echo-tls", "Accepted")
    })
    .await;
    assert!(is(&accepted, "False", "NoValidCACertificate"), "{accepted}");

    fake.create(echo_ca());
    wait_for(&fake, "policy accepted once the ConfigMap exists", || {
        let accepted = policy_condition(&fake, "echo-tls", "Accepted")?;
        let resolved = policy_condition(&fake, "echo-tls", "ResolvedRefs")?;
        (is(&accepted, "True", "Accepted") && is(&resolved, "True", "ResolvedRefs")).then_some(())
    })
    .await;

    fake.modify("ConfigMap", NS, "echo-ca", |c| {
        c["data"]["ca.crt"] = json!("not a certificate");
    });
    wait_for(&fake, "policy refused once the CA is broken", || {
        let resolved = policy_condition(&fake, "echo-tls", "ResolvedRefs")?;
        is(&resolved, "False", "InvalidCACertificateRef").then_some(())
    })
    .await;
    let route_resolved = route_condition(&fake, NS, "web", "ResolvedRefs").unwrap();
    assert!(
        is(&route_resolved, "True", "ResolvedRefs"),
        "{route_resolved}"
    );
    controller.finish();
}

/// A certificate and its key as the data of a kubernetes.io/tls Secret.
fn tls_secret(name: &str) -> Value {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["gateway.example.com".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap().pem();
    let bytes =
        |text: String| serde_json::to_value(k8s_openapi::ByteString(text.into_bytes())).unwrap();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": bytes(cert), "tls.key": bytes(key.serialize_pem())},
    })
}

/// The Secret a Gateway's `spec.tls.backend.clientCertificateRef` names is read (Secrets are
/// watched as metadata only) once it appears: the Gateway's ResolvedRefs turns from
/// InvalidClientCertificateRef to True while it stays Accepted, and the published config has
/// the TLS backend present the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_client_certificate_secret_is_read_and_resolved() {
    let fake = FakeApi::new();
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(namespace(NS));
    let mut gw = gateway("gw");
    gw["spec"]["tls"] = json!({"backend": {"clientCertificateRef": {"name": "client-cert"}}});
    fake.create(gw);
    backend(&fake, "echo");
    fake.create(route(NS, "web", "echo"));
    fake.create(echo_ca());
    fake.create(echo_tls_policy());
    let controller = start(&fake, "portcullis-0");

    let unresolved = wait_for(&fake, "Gateway ResolvedRefs=False", || {
        object_condition(&fake, "Gateway", NS, "gw", "ResolvedRefs")
            .filter(|c| c["status"] == "False")
    })
    .await;
    assert!(
        is(&unresolved, "False", "InvalidClientCertificateRef"),
        "{unresolved}"
    );
    assert!(
        unresolved["message"]
            .as_str()
            .is_some_and(|m| m.contains("infra/client-cert")),
        "{unresolved}"
    );
    let accepted = object_condition(&fake, "Gateway", NS, "gw", "Accepted").unwrap();
    assert!(is(&accepted, "True", "Accepted"), "{accepted}");
    let key = ObjectKey::new(NS, "gw");
    let client_certificate = |controller: &Controller| {
        let published = controller.hub.current(&key)?;
        let backend = published
            .config
            .backends
            .iter()
            .find(|b| b.name.starts_with("infra/echo:"))?;
        Some(backend.tls.as_ref()?.client_certificate.clone())
    };
    assert_eq!(
        client_certificate(&controller),
        Some(None),
        "the TLS backend goes without a client certificate"
    );

    fake.create(tls_secret("client-cert"));
    wait_for(&fake, "Gateway ResolvedRefs=True", || {
        object_condition(&fake, "Gateway", NS, "gw", "ResolvedRefs")
            .filter(|c| is(c, "True", "ResolvedRefs"))
    })
    .await;
    let published = controller.hub.current(&key).unwrap();
    assert_eq!(
        client_certificate(&controller),
        Some(Some("infra/client-cert".to_string()))
    );
    assert!(
        published
            .config
            .certificates
            .iter()
            .any(|c| c.name == "infra/client-cert"),
        "the config carries the certificate"
    );
    let reads = fake.requests_where(|r| {
        r.kind == Some("Secret") && r.name.as_deref() == Some("client-cert") && !r.is_write()
    });
    assert!(!reads.is_empty(), "the referenced Secret is read in full");
    // The recovery is an Event, like a route's.
    wait_for(&fake, "the Gateway's ResolvedRefs Event", || {
        events_about(&fake, "Gateway", NS, "gw")
            .into_iter()
            .find(|e| e["reason"] == "ResolvedRefs")
    })
    .await;
    controller.finish();
}

/// What is provisioned for a Gateway that stays but stops being ours goes away: moved to
/// another class of ours, the objects named after the old class are deleted (and new ones
/// made); moved to another controller's class, all of them are deleted, the namespace's CA
/// ConfigMap too; a Gateway left without listeners loses its Service. Objects of ours that
/// no existing Gateway owns are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_no_gateway_of_ours_wants_is_deleted() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(gateway_class("portcullis-b", CONTROLLER_NAME));
    fake.create(gateway_class("other", "example.com/other"));
    let labelled = |name: &str, owners: Value| {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": owners,
            },
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {}},
        })
    };
    // Ours by label but owned by no Gateway, and owned by a Gateway that is gone: not the
    // sweep's to delete.
    fake.create(labelled("hand-made", json!([])));
    fake.create(labelled(
        "gone-owner",
        json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "name": "gone", "uid": "no-such-uid", "controller": true}]),
    ));
    let controller = start(&fake, "portcullis-0");
    let kinds = ["ServiceAccount", "Deployment", "Service"];
    let all_present = |name: &str| kinds.iter().all(|kind| fake.get(kind, NS, name).is_some());
    let all_gone = |name: &str| kinds.iter().all(|kind| fake.get(kind, NS, name).is_none());
    wait_for(&fake, "infra/gw-portcullis", || {
        all_present(PROVISIONED).then_some(())
    })
    .await;
    wait_for(&fake, "the CA ConfigMap", || {
        fake.get("ConfigMap", NS, "portcullis-ca")
    })
    .await;
    seed_last_good_secret(&fake);

    let sweeps_before_move = completed_sweeps(&fake);
    fake.modify("Gateway", NS, "gw", |g| {
        g["spec"]["gatewayClassName"] = json!("portcullis-b");
    });
    wait_for(&fake, "gw-portcullis-b made, gw-portcullis deleted", || {
        (all_present("gw-portcullis-b") && all_gone(PROVISIONED)).then_some(())
    })
    .await;
    // Emptied, not deleted: the operator may not delete Secrets cluster-wide.
    let last_good = wait_for(&fake, "the old last-good Secret emptied", || {
        fake.get("Secret", NS, "gw-portcullis-last-good")
            .filter(|secret| secret.get("data").is_none())
    })
    .await;
    assert!(
        last_good["metadata"]["annotations"]
            .get("portcullis.dev/content-hash")
            .is_none(),
        "{last_good}"
    );
    // The sweep that removed them got as far as ConfigMaps, and kept the CA, still wanted.
    wait_for(&fake, "a sweep through ConfigMaps after the move", || {
        (completed_sweeps(&fake) > sweeps_before_move).then_some(())
    })
    .await;
    assert!(fake.get("ConfigMap", NS, "portcullis-ca").is_some());

    fake.modify("Gateway", NS, "gw", |g| {
        g["spec"]["listeners"] = json!([]);
    });
    wait_for(
        &fake,
        "the Service of a Gateway without listeners deleted",
        || {
            fake.get("Service", NS, "gw-portcullis-b")
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(fake.get("Deployment", NS, "gw-portcullis-b").is_some());

    fake.modify("Gateway", NS, "gw", |g| {
        g["spec"]["gatewayClassName"] = json!("other");
    });
    wait_for(&fake, "everything of gw deleted", || {
        (all_gone("gw-portcullis-b") && fake.get("ConfigMap", NS, "portcullis-ca").is_none())
            .then_some(())
    })
    .await;
    for name in ["hand-made", "gone-owner"] {
        assert!(
            fake.get("Deployment", NS, name).is_some(),
            "{name} was deleted"
        );
    }
    assert_eq!(controller.reconcile_errors(), 0);
    controller.finish();
}

/// Gateway infra/gw's last-good Secret, as the leader writes it once a proxy served the
/// config.
fn seed_last_good_secret(fake: &FakeApi) {
    let uid = fake.get("Gateway", NS, "gw").unwrap()["metadata"]["uid"].clone();
    fake.create(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "gw-portcullis-last-good",
            "namespace": NS,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"portcullis.dev/content-hash": "ab"},
            "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1",
                                 "kind": "Gateway", "name": "gw", "uid": uid,
                                 "controller": true}],
        },
        "data": {"config.json.gz": "AAAA"},
    }));
}

/// Sweeps that got to their last kind: list requests for ConfigMaps labelled ours (the
/// ConfigMap watch selects no label).
fn completed_sweeps(fake: &FakeApi) -> usize {
    fake.requests_where(|r| {
        r.kind == Some("ConfigMap")
            && !r.watch
            && r.name.is_none()
            && r.code == 200
            && r.query.get("labelSelector").map(String::as_str)
                == Some(&*format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
    })
    .len()
}

/// A Gateway moved to another class of ours keeps its old objects until the new ones are in
/// place: while the new Deployment cannot be applied, the old one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_class_objects_stay_until_the_new_ones_are_applied() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(gateway_class("portcullis-b", CONTROLLER_NAME));
    let controller = start(&fake, "portcullis-0");
    wait_for(&fake, "infra/gw-portcullis and the first sweep", || {
        (fake.get("Deployment", NS, PROVISIONED).is_some() && completed_sweeps(&fake) > 0)
            .then_some(())
    })
    .await;
    let sweeps = completed_sweeps(&fake);
    fake.fail_next(usize::MAX, 500, |r| {
        r.is_apply() && r.kind == Some("Deployment") && r.name.as_deref() == Some("gw-portcullis-b")
    });
    fake.modify("Gateway", NS, "gw", |g| {
        g["spec"]["gatewayClassName"] = json!("portcullis-b");
    });
    wait_for(
        &fake,
        "the new Service applied while its Deployment fails",
        || fake.get("Service", NS, "gw-portcullis-b"),
    )
    .await;
    wait_for(&fake, "a sweep after the failed apply", || {
        (completed_sweeps(&fake) > sweeps).then_some(())
    })
    .await;
    assert!(
        fake.get("Deployment", NS, PROVISIONED).is_some(),
        "{}",
        fake.summary(30)
    );
    assert!(fake.get("Service", NS, PROVISIONED).is_some());

    fake.clear_faults();
    wait_for(
        &fake,
        "gw-portcullis-b's Deployment, then gw-portcullis deleted",
        || {
            (fake.get("Deployment", NS, "gw-portcullis-b").is_some()
                && fake.get("Deployment", NS, PROVISIONED).is_none()
                && fake.get("Service", NS, PROVISIONED).is_none())
            .then_some(())
        },
    )
    .await;
    controller.finish();
}

/// A Gateway whose GatewayClass is missing for a while (deleted and recreated, say) keeps
/// everything provisioned for it: what it wants is unknown, so the sweep leaves its objects
/// alone, the last-good Secret too, even while other Gateways' changes make it sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_class_is_missing_keeps_its_infrastructure() {
    let fake = FakeApi::new();
    seed_gateway(&fake);
    fake.create(gateway_class("other", "example.com/other"));
    let controller = start(&fake, "portcullis-0");
    let kinds = ["ServiceAccount", "Deployment", "Service"];
    let all_present = |name: &str| kinds.iter().all(|kind| fake.get(kind, NS, name).is_some());
    wait_for(&fake, "infra/gw-portcullis and the first sweep", || {
        (all_present(PROVISIONED) && completed_sweeps(&fake) > 0).then_some(())
    })
    .await;
    seed_last_good_secret(&fake);

    let sweeps_before = completed_sweeps(&fake);
    fake.delete("GatewayClass", "", CLASS);
    wait_for(&fake, "a sweep after the class went", || {
        (completed_sweeps(&fake) > sweeps_before).then_some(())
    })
    .await;
    // Another Gateway, moved away from us, changes what is wanted: one more sweep.
    fake.create(gateway("elsewhere"));
    fake.modify("Gateway", NS, "elsewhere", |g| {
        g["spec"]["gatewayClassName"] = json!("other");
    });
    let sweeps_before = completed_sweeps(&fake);
    wait_for(&fake, "a sweep after another Gateway moved", || {
        (completed_sweeps(&fake) > sweeps_before).then_some(())
    })
    .await;
    assert!(all_present(PROVISIONED), "{}", fake.summary(20));
    assert!(fake.get("ConfigMap", NS, "portcullis-ca").is_some());
    let last_good = fake.get("Secret", NS, "gw-portcullis-last-good").unwrap();
    assert!(last_good.get("data").is_some(), "{last_good}");
    let removals = fake.requests_where(|r| {
        r.method == http::Method::DELETE
            || (r.kind == Some("Secret") && r.method == http::Method::PATCH)
    });
    assert!(
        removals.is_empty(),
        "{:?}",
        removals.iter().map(|r| r.target()).collect::<Vec<_>>()
    );

    // The class is back: nothing was lost, and nothing had to be remade.
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    wait_for(&fake, "the Gateway accepted again", || {
        object_condition(&fake, "Gateway", NS, "gw", "Accepted")
            .filter(|c| is(c, "True", "Accepted"))
    })
    .await;
    assert!(all_present(PROVISIONED));
    assert_eq!(controller.reconcile_errors(), 0);
    controller.finish();
}

/// A Gateway whose name is too long for a label value: its pods carry a shortened
/// gateway-name label, and the controller still finds them (the applied-config annotation
/// is written, the Gateway becomes Programmed). Its address comes from the Service's
/// load-balancer ingress, IPs and hostnames, once there is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_long_name_is_programmed_with_its_load_balancer_addresses() {
    let fake = FakeApi::new();
    fake.create(gateway_class(CLASS, CONTROLLER_NAME));
    fake.create(namespace(NS));
    let name = format!("gw-{}", "long".repeat(20));
    assert!(name.len() > 63);
    fake.create(gateway(&name));
    let controller = start(&fake, "portcullis-0");
    let provisioned = resource_name(&name, CLASS);
    wait_for(&fake, "the Service", || {
        fake.get("Service", NS, &provisioned)
    })
    .await;

    let mut pod = proxy_pod("long-abc12", true);
    pod["metadata"]["labels"][GATEWAY_NAME_LABEL] = json!(label_value(&name));
    pod["metadata"]["labels"]["app.kubernetes.io/instance"] = json!(provisioned);
    let pod = fake.create(pod);
    let key = ObjectKey::new(NS, name.as_str());
    let published = wait_for(&fake, "a published config", || controller.hub.current(&key)).await;
    let pod_id = PodId {
        namespace: NS.into(),
        name: "long-abc12".into(),
        uid: pod["metadata"]["uid"].as_str().unwrap().into(),
    };
    controller.hub.report(&key, &pod_id, |report| {
        report.applied_hash = Some(published.content_hash);
        report.applied_generation = 1;
    });
    wait_for(&fake, "the pod's applied-config annotation", || {
        let pod = fake.get("Pod", NS, "long-abc12")?;
        (pod["metadata"]["annotations"][APPLIED_ANNOTATION] == hex(published.content_hash))
            .then_some(())
    })
    .await;
    wait_for(&fake, "Programmed=True on the ClusterIP", || {
        object_condition(&fake, "Gateway", NS, &name, "Programmed")
            .filter(|c| is(c, "True", "Programmed"))
    })
    .await;

    fake.modify("Service", NS, &provisioned, |service| {
        service["status"] = json!({"loadBalancer": {"ingress": [
            {"ip": "198.51.100.7"},
            {"hostname": "gw.lb.example.net"},
        ]}});
    });
    wait_for(&fake, "the load-balancer addresses", || {
        let gateway = fake.get("Gateway", NS, &name)?;
        (gateway["status"]["addresses"]
            == json!([
                {"type": "IPAddress", "value": "198.51.100.7"},
                {"type": "Hostname", "value": "gw.lb.example.net"},
            ]))
        .then_some(())
    })
    .await;
    controller.finish();
}
