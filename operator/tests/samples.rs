//! The sample manifests under `config/samples/` that need no generated Secret compile without
//! a problem, so the README's pointers stay true.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use portcullis_api::config::{BackendTarget, CompiledConfig};
use portcullis_operator::compile::conditions::reasons;
use portcullis_operator::compile::{Condition, ObjectKey, Output, Status, compile};
use portcullis_operator::objects::{Loaded, load_paths, load_str};
use portcullis_operator::status_table::rows;

fn samples_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/samples")
        .join(name)
}

/// Compiles `config/samples/<name>`, asserting every document was read and no row has a
/// problem.
fn compile_cleanly(name: &str) -> Output {
    let dir = samples_dir(name);
    let loaded = load_paths(&[dir]).unwrap();
    assert!(loaded.ignored.is_empty(), "{:?}", loaded.ignored);
    let output = compile(&loaded.input);
    let problems: Vec<String> = rows(&output)
        .iter()
        .filter(|r| !r.is_ok())
        .map(|r| r.key.clone())
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    output
}

#[test]
fn the_stream_sample_compiles_cleanly() {
    let output = compile_cleanly("stream");
    assert_eq!(output.tls_routes.len(), 1);
    assert_eq!(output.tcp_routes.len(), 1);
    assert_eq!(output.udp_routes.len(), 1);
    let config = output
        .gateways
        .values()
        .next()
        .unwrap()
        .config
        .as_ref()
        .unwrap();
    assert_eq!(config.ports.len(), 3, "every listener is served");
}

#[test]
fn the_listener_set_sample_compiles_cleanly() {
    let output = compile_cleanly("listenerset");
    let gateway = output.gateways.values().next().unwrap();
    assert_eq!(gateway.attached_listener_sets, 1);
    let config = gateway.config.as_ref().unwrap();
    let listeners: Vec<&str> = config.ports[0]
        .listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        listeners,
        ["http", "shop/shop/storefront"],
        "one port, both hostnames"
    );
}

/// The files `config/samples/cluster/kustomization.yaml` lists, in its order (the folder also
/// holds the kustomization itself, which is no Kubernetes object).
fn cluster_sample_files() -> Vec<PathBuf> {
    let dir = samples_dir("cluster");
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let kustomization: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    files
}

/// Loads the cluster sample, asserting that everything but its RBAC objects is read.
fn load_cluster_sample() -> Loaded {
    let loaded = load_paths(&cluster_sample_files()).unwrap();
    let mut ignored: Vec<&str> = loaded
        .ignored
        .iter()
        .map(|i| i.split(" (").next().unwrap())
        .collect();
    ignored.sort_unstable();
    assert_eq!(
        ignored,
        [
            "ClusterRole gateway-platform-admin",
            "Role gateway-app-team",
            "RoleBinding gateway-app-team"
        ]
    );
    loaded
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

/// The weights and targets of the storefront route's one rule, as served on port 80.
fn canary_backends(config: &CompiledConfig) -> Vec<(u32, BackendTarget)> {
    assert_eq!(config.ports.len(), 1);
    assert_eq!(config.ports[0].port, 80);
    let listener = &config.ports[0].listeners[0];
    assert_eq!(listener.name, "http");
    assert_eq!(listener.routes.len(), 1);
    let route = &listener.routes[0];
    assert_eq!(route.name, "shop/storefront");
    assert_eq!(route.hostnames, ["shop.example.com"]);
    assert_eq!(route.rules.len(), 1);
    route.rules[0]
        .backends
        .iter()
        .map(|b| (b.weight, b.target.clone()))
        .collect()
}

#[test]
fn the_cluster_sample_attaches_the_canary_route() {
    let loaded = load_cluster_sample();
    let output = compile(&loaded.input);

    let class = &output.gateway_classes["portcullis"];
    assert_eq!(
        condition(&class.conditions, "Accepted").status,
        Status::True
    );
    let gateway_key = ObjectKey::new("infra", "shared");
    let gateway = &output.gateways[&gateway_key];
    for type_ in ["Accepted", "Programmed"] {
        let c = condition(&gateway.conditions, type_);
        assert_eq!(c.status, Status::True, "Gateway {type_}: {c:?}");
    }
    assert_eq!(gateway.listeners.len(), 1);
    assert_eq!(gateway.listeners[0].attached_routes, 1);
    assert_eq!(
        gateway.parameters.replicas,
        Some(2),
        "the class defaults apply"
    );

    // The route in the labelled namespace is accepted by the Gateway in `infra`.
    let route = &output.http_routes[&ObjectKey::new("shop", "storefront")];
    assert_eq!(route.parents.len(), 1);
    let parent = &route.parents[0];
    assert_eq!(parent.parent_ref.name, "shared");
    assert_eq!(parent.parent_ref.namespace.as_deref(), Some("infra"));
    let accepted = condition(&parent.conditions, "Accepted");
    assert_eq!(accepted.status, Status::True, "{accepted:?}");
    // The sample leaves the app's Services to the app team: without them the references do
    // not resolve, and each backend keeps its weight with its share answered 500.
    let resolved = condition(&parent.conditions, "ResolvedRefs");
    assert_eq!(
        (resolved.status, resolved.reason),
        (Status::False, reasons::BACKEND_NOT_FOUND),
        "{resolved:?}"
    );
    let backends = canary_backends(gateway.config.as_ref().unwrap());
    let weights: Vec<u32> = backends.iter().map(|(w, _)| *w).collect();
    assert_eq!(weights, [95, 5]);
    assert!(
        backends
            .iter()
            .all(|(_, t)| matches!(t, BackendTarget::Invalid(_))),
        "{backends:?}"
    );
}

#[test]
fn the_cluster_sample_routes_95_5_once_the_services_exist() {
    let mut loaded = load_cluster_sample();
    // The app team's Services, and a route from a namespace without the label.
    load_str(
        r#"
apiVersion: v1
kind: Service
metadata: {name: storefront-v1, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: storefront-v2, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: intruder, namespace: other}
spec:
  parentRefs: [{name: shared, namespace: infra}]
  rules: [{backendRefs: [{name: x, port: 80}]}]
"#,
        "test",
        &mut loaded,
    )
    .unwrap();
    let output = compile(&loaded.input);
    let gateway = &output.gateways[&ObjectKey::new("infra", "shared")];
    assert_eq!(
        gateway.listeners[0].attached_routes, 1,
        "the intruder is not counted"
    );

    let parent = &output.http_routes[&ObjectKey::new("shop", "storefront")].parents[0];
    for type_ in ["Accepted", "ResolvedRefs"] {
        let c = condition(&parent.conditions, type_);
        assert_eq!(c.status, Status::True, "{type_}: {c:?}");
    }
    assert_eq!(
        canary_backends(gateway.config.as_ref().unwrap()),
        [
            (95, BackendTarget::Backend("shop/storefront-v1:80".into())),
            (5, BackendTarget::Backend("shop/storefront-v2:80".into())),
        ]
    );

    let intruder = &output.http_routes[&ObjectKey::new("other", "intruder")].parents[0];
    let accepted = condition(&intruder.conditions, "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason),
        (Status::False, reasons::NOT_ALLOWED_BY_LISTENERS),
        "allowedRoutes admits only labelled namespaces: {accepted:?}"
    );
}

/// The RBAC objects of the cluster sample, parsed as what they are.
fn cluster_sample_rbac() -> (ClusterRole, Role) {
    let text = std::fs::read_to_string(samples_dir("cluster").join("30-team-rbac.yaml")).unwrap();
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let of_kind = |kind: &str| {
        let matching: Vec<&serde_json::Value> =
            documents.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(matching.len(), 1, "one {kind}");
        matching[0].clone()
    };
    (
        serde_json::from_value(of_kind("ClusterRole")).unwrap(),
        serde_json::from_value(of_kind("Role")).unwrap(),
    )
}

/// Verbs `rules` grant on `resource` of the Gateway API group.
fn gateway_api_verbs(rules: &[PolicyRule], resource: &str) -> Vec<String> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|g| g == "gateway.networking.k8s.io")
                && r.resources
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|x| x == resource)
        })
        .flat_map(|r| r.verbs.clone())
        .collect()
}

fn assert_no_wildcards(rules: &[PolicyRule]) {
    for rule in rules {
        for value in rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten())
        {
            assert!(!value.contains('*'), "wildcard in {rule:?}");
        }
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
    }
}

#[test]
fn the_cluster_sample_rbac_splits_platform_and_app_teams() {
    let (cluster_role, role) = cluster_sample_rbac();
    let admin = cluster_role.rules.unwrap();
    assert_no_wildcards(&admin);
    let writes = ["create", "update", "patch", "delete"];
    for resource in ["gatewayclasses", "gateways"] {
        let verbs = gateway_api_verbs(&admin, resource);
        for verb in ["get", "list", "watch"].iter().chain(&writes) {
            assert!(verbs.iter().any(|v| v == verb), "admin {verb} {resource}");
        }
    }

    assert_eq!(role.metadata.namespace.as_deref(), Some("shop"));
    let team = role.rules.unwrap();
    assert_no_wildcards(&team);
    let verbs = gateway_api_verbs(&team, "httproutes");
    for verb in ["get", "list", "watch"].iter().chain(&writes) {
        assert!(
            verbs.iter().any(|v| v == verb),
            "app team {verb} httproutes"
        );
    }
    // App teams read Gateways (to see where they may attach) but cannot change them, nor
    // touch classes.
    let gateway_verbs = gateway_api_verbs(&team, "gateways");
    assert!(gateway_verbs.iter().any(|v| v == "get"));
    assert!(
        !gateway_verbs.iter().any(|v| writes.contains(&v.as_str())),
        "{gateway_verbs:?}"
    );
    assert!(gateway_api_verbs(&team, "gatewayclasses").is_empty());
}
