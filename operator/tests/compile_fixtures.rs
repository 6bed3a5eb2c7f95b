//! Table tests of the compiler over YAML fixtures.
//!
//! Each directory under `tests/fixtures/` holds `input.yaml` (the objects) and `expected.yaml`
//! (statuses, and requests with their routing decisions). See `tests/fixtures/README.md` for
//! the format. Every fixture also checks, without being asked:
//! - every condition carries its object's `metadata.generation` as `observedGeneration`;
//! - the compiled configs pass the proxy's own validation and build into routing tables;
//! - compiling the same input twice gives byte-identical configs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use portcullis_api::CompiledConfig;
use portcullis_api::config::{Backend, PortProtocol, SubjectAltName, Transport};
use portcullis_api::frame;
use portcullis_dataplane::http::request::{HeadLimits, RequestHead, parse};
use portcullis_dataplane::route::Snapshot;
use portcullis_dataplane::route::host::{MAX_HOST_LEN, normalize};
use portcullis_dataplane::route::matcher::RequestView;
use portcullis_dataplane::route::table::BackendChoice;
use portcullis_operator::compile::{self, Condition, Output};
use portcullis_operator::objects::{Loaded, load_paths};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expected {
    #[serde(default)]
    gateway_classes: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    gateways: BTreeMap<String, ExpectedGateway>,
    /// ListenerSet → its conditions and listeners (`serves` does not apply), or "none" for a
    /// ListenerSet that must have no status from us.
    #[serde(default)]
    listener_sets: BTreeMap<String, serde_json::Value>,
    /// Route → parent key ("ns/gw", "ns/gw/section", "ns/gw:port") → conditions; or the
    /// string "none" when the route must have no status from us.
    #[serde(default)]
    routes: BTreeMap<String, serde_json::Value>,
    /// BackendTLSPolicy → Gateway key ("ns/gw") → conditions; or "none" when the policy must
    /// have no status from us.
    #[serde(default, rename = "backendTLSPolicies")]
    backend_tls_policies: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    requests: Vec<ExpectedRequest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedGateway {
    #[serde(default)]
    conditions: BTreeMap<String, String>,
    #[serde(default)]
    listeners: BTreeMap<String, ExpectedListener>,
    /// false: the Gateway's proxies must serve no listener (its config has no ports).
    #[serde(default)]
    serves: Option<bool>,
    /// `status.attachedListenerSets`.
    attached_listener_sets: Option<i32>,
    /// Port → the client certificate validation its config asks for: "none",
    /// "AllowValidOnly" or "AllowInsecureFallback".
    #[serde(default)]
    client_validation: BTreeMap<u16, String>,
    /// Port → "Enabled" or "Disabled": whether its config lets TLS sessions resume.
    #[serde(default)]
    session_resumption: BTreeMap<u16, String>,
    /// The names of the certificates its config carries (listeners' and the backend client
    /// certificate), in config order.
    certificates: Option<Vec<String>>,
    /// The static addresses its Service gets as external IPs.
    static_addresses: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedListenerSet {
    #[serde(default)]
    conditions: BTreeMap<String, String>,
    #[serde(default)]
    listeners: BTreeMap<String, ExpectedListener>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedListener {
    attached_routes: Option<i32>,
    supported_kinds: Option<Vec<String>>,
    #[serde(default)]
    conditions: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExpectedRequest {
    gateway: String,
    port: u16,
    /// The Host header; on a TLS port, the SNI ("" for none).
    host: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A datagram to the UDP port of that number instead of a connection to the TCP one.
    #[serde(default)]
    udp: bool,
    expect: Decision,
}

fn root() -> String {
    "/".into()
}

fn get() -> String {
    "GET".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Decision {
    /// 404 (no route), 500 (no valid backend), or a redirect status.
    status: Option<u16>,
    route: Option<String>,
    /// Backends with a non-zero weight, "invalid" for unresolved shares.
    backends: Option<Vec<String>>,
    /// Endpoints of the single backend.
    endpoints: Option<Vec<String>>,
    /// "backend numerator/denominator" for each RequestMirror filter of the rule, in order.
    mirrors: Option<Vec<String>>,
    /// For each backend with a non-zero weight: "plaintext", "invalid", or its TLS settings as
    /// "policy sni=NAME[ san=NAME,uri:URI...][ system-ca][ client=CERTIFICATE]".
    tls: Option<Vec<String>>,
    /// For each backend with a non-zero weight: the protocol the proxy speaks to it
    /// ("HTTP/1.1", "HTTP/2"), or "invalid".
    protocols: Option<Vec<String>>,
    /// The rule's retry policy as "codes=500,502 attempts=2 backoff=25ms", or "none".
    retry: Option<String>,
}

#[test]
fn fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no fixtures under {}", root.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        if let Err(problems) = run_case(case) {
            for problem in problems {
                failures.push(format!("{name}: {problem}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{} fixtures passed", cases.len());
}

fn run_case(dir: &Path) -> Result<(), Vec<String>> {
    let loaded: Loaded =
        load_paths(&[dir.join("input.yaml")]).map_err(|e| vec![format!("{e:#}")])?;
    let text =
        std::fs::read_to_string(dir.join("expected.yaml")).map_err(|e| vec![e.to_string()])?;
    let expected: Expected =
        serde_saphyr::from_str(&text).map_err(|e| vec![format!("expected.yaml: {e}")])?;
    let output = compile::compile(&loaded.input);
    let mut problems = Vec::new();

    check_generations(&loaded, &output, &mut problems);
    check_determinism(&loaded, &output, &mut problems);

    for (name, conditions) in &expected.gateway_classes {
        match output.gateway_classes.get(name) {
            Some(class) => check_conditions(
                &format!("GatewayClass {name}"),
                &class.conditions,
                conditions,
                &mut problems,
            ),
            None => problems.push(format!("GatewayClass {name} has no status")),
        }
    }
    for (key, expected_gateway) in &expected.gateways {
        let Some(gateway) = output
            .gateways
            .iter()
            .find(|(k, _)| k.to_string() == *key)
            .map(|(_, g)| g)
        else {
            problems.push(format!("Gateway {key} has no status"));
            continue;
        };
        check_conditions(
            &format!("Gateway {key}"),
            &gateway.conditions,
            &expected_gateway.conditions,
            &mut problems,
        );
        let serves = gateway
            .config
            .as_ref()
            .is_some_and(|config| !config.ports.is_empty());
        if let Some(expect_serves) = expected_gateway.serves
            && serves != expect_serves
        {
            problems.push(format!("Gateway {key}: serves listeners = {serves}"));
        }
        if let Some(expected) = &expected_gateway.static_addresses
            && *expected != gateway.static_addresses
        {
            problems.push(format!(
                "Gateway {key}: static addresses {:?}",
                gateway.static_addresses
            ));
        }
        let config_port = |port: u16| {
            gateway
                .config
                .as_ref()
                .and_then(|c| c.ports.iter().find(|p| p.port == port))
        };
        for (port, expected) in &expected_gateway.client_validation {
            let actual = match config_port(*port) {
                None => "no such port".to_string(),
                Some(p) => match &p.client_validation {
                    None => "none".to_string(),
                    Some(v) => format!("{:?}", v.mode),
                },
            };
            if actual != *expected {
                problems.push(format!(
                    "Gateway {key} port {port}: client validation {actual} (expected {expected})"
                ));
            }
        }
        for (port, expected) in &expected_gateway.session_resumption {
            let actual = match config_port(*port) {
                None => "no such port",
                Some(p) if p.session_resumption_disabled => "Disabled",
                Some(_) => "Enabled",
            };
            if actual != expected {
                problems.push(format!(
                    "Gateway {key} port {port}: session resumption {actual} (expected {expected})"
                ));
            }
        }
        if let Some(expected) = &expected_gateway.certificates {
            let actual: Vec<&str> = gateway
                .config
                .iter()
                .flat_map(|c| c.certificates.iter().map(|c| c.name.as_str()))
                .collect();
            if actual != *expected {
                problems.push(format!(
                    "Gateway {key}: certificates {actual:?} (expected {expected:?})"
                ));
            }
        }
        if let Some(expected) = expected_gateway.attached_listener_sets
            && gateway.attached_listener_sets != expected
        {
            problems.push(format!(
                "Gateway {key}: attachedListenerSets {} (expected {expected})",
                gateway.attached_listener_sets
            ));
        }
        check_listeners(
            &format!("Gateway {key}"),
            &gateway.listeners,
            &expected_gateway.listeners,
            &mut problems,
        );
    }
    for (key, expected_set) in &expected.listener_sets {
        let set = output
            .listener_sets
            .iter()
            .find(|(k, _)| k.to_string() == *key)
            .map(|(_, s)| s);
        if expected_set.as_str() == Some("none") {
            if set.is_some() {
                problems.push(format!(
                    "ListenerSet {key} has a status but should have none"
                ));
            }
            continue;
        }
        let expected_set: ExpectedListenerSet = match serde_json::from_value(expected_set.clone()) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("expected.yaml listenerSets.{key}: {e}"));
                continue;
            }
        };
        let Some(set) = set else {
            problems.push(format!("ListenerSet {key} has no status"));
            continue;
        };
        check_conditions(
            &format!("ListenerSet {key}"),
            &set.conditions,
            &expected_set.conditions,
            &mut problems,
        );
        check_listeners(
            &format!("ListenerSet {key}"),
            &set.listeners,
            &expected_set.listeners,
            &mut problems,
        );
    }
    for (route_key, expected_route) in &expected.routes {
        let route = output
            .http_routes
            .iter()
            .chain(&output.grpc_routes)
            .chain(&output.tls_routes)
            .chain(&output.tcp_routes)
            .chain(&output.udp_routes)
            .find(|(k, _)| k.to_string() == *route_key)
            .map(|(_, r)| r);
        if expected_route.as_str() == Some("none") {
            if route.is_some() {
                problems.push(format!(
                    "route {route_key} has a status but should have none"
                ));
            }
            continue;
        }
        let Some(route) = route else {
            problems.push(format!("route {route_key} has no status"));
            continue;
        };
        let parents: BTreeMap<String, BTreeMap<String, String>> =
            match serde_json::from_value(expected_route.clone()) {
                Ok(parents) => parents,
                Err(e) => {
                    problems.push(format!("expected.yaml routes.{route_key}: {e}"));
                    continue;
                }
            };
        if parents.len() != route.parents.len() {
            problems.push(format!(
                "route {route_key}: {} parent statuses (expected {})",
                route.parents.len(),
                parents.len()
            ));
        }
        for (parent_key, conditions) in &parents {
            let found = route
                .parents
                .iter()
                .find(|p| parent_label(route_key, p) == *parent_key);
            match found {
                Some(parent) => check_conditions(
                    &format!("route {route_key} parent {parent_key}"),
                    &parent.conditions,
                    conditions,
                    &mut problems,
                ),
                None => problems.push(format!(
                    "route {route_key}: no parent status {parent_key} (have {:?})",
                    route
                        .parents
                        .iter()
                        .map(|p| parent_label(route_key, p))
                        .collect::<Vec<_>>()
                )),
            }
        }
    }
    for (policy_key, expected_policy) in &expected.backend_tls_policies {
        let policy = output
            .backend_tls_policies
            .iter()
            .find(|(k, _)| k.to_string() == *policy_key)
            .map(|(_, p)| p);
        if expected_policy.as_str() == Some("none") {
            if policy.is_some() {
                problems.push(format!(
                    "BackendTLSPolicy {policy_key} has a status but should have none"
                ));
            }
            continue;
        }
        let Some(policy) = policy else {
            problems.push(format!("BackendTLSPolicy {policy_key} has no status"));
            continue;
        };
        let ancestors: BTreeMap<String, BTreeMap<String, String>> =
            match serde_json::from_value(expected_policy.clone()) {
                Ok(ancestors) => ancestors,
                Err(e) => {
                    problems.push(format!(
                        "expected.yaml backendTLSPolicies.{policy_key}: {e}"
                    ));
                    continue;
                }
            };
        let actual: Vec<String> = policy
            .ancestors
            .iter()
            .map(|a| a.gateway.to_string())
            .collect();
        if actual != ancestors.keys().cloned().collect::<Vec<_>>() {
            problems.push(format!(
                "BackendTLSPolicy {policy_key}: ancestors {actual:?} (expected {:?})",
                ancestors.keys().collect::<Vec<_>>()
            ));
        }
        for ancestor in &policy.ancestors {
            if let Some(conditions) = ancestors.get(&ancestor.gateway.to_string()) {
                check_conditions(
                    &format!(
                        "BackendTLSPolicy {policy_key} ancestor {}",
                        ancestor.gateway
                    ),
                    &ancestor.conditions,
                    conditions,
                    &mut problems,
                );
            }
        }
    }
    let mut snapshots: BTreeMap<String, (Snapshot, &CompiledConfig)> = BTreeMap::new();
    for (key, gateway) in &output.gateways {
        if let Some(config) = &gateway.config {
            match Snapshot::build(config) {
                Ok(snapshot) => {
                    snapshots.insert(key.to_string(), (snapshot, config));
                }
                Err(e) => problems.push(format!(
                    "Gateway {key}: the proxy would refuse the config: {e}"
                )),
            }
        }
    }
    for (i, request) in expected.requests.iter().enumerate() {
        let what = format!(
            "requests[{i}] {} {}{}",
            request.method, request.host, request.path
        );
        match snapshots.get(&request.gateway) {
            Some((snapshot, config)) => {
                check_request(&what, snapshot, config, request, &mut problems)
            }
            None => problems.push(format!("{what}: Gateway {} has no config", request.gateway)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// "ns/gw", "ns/gw/section", "ns/gw:port", "ns/gw/section:port" (namespace defaults to the
/// route's).
fn parent_label(route_key: &str, parent: &compile::RouteParentOutput) -> String {
    let route_namespace = route_key.split('/').next().unwrap_or("");
    let p = &parent.parent_ref;
    let kind = match p.kind.as_deref() {
        Some("ListenerSet") => "ListenerSet ",
        _ => "",
    };
    let mut label = format!(
        "{kind}{}/{}",
        p.namespace.as_deref().unwrap_or(route_namespace),
        p.name
    );
    if let Some(section) = &p.section_name {
        label.push('/');
        label.push_str(section);
    }
    if let Some(port) = p.port {
        label.push_str(&format!(":{port}"));
    }
    label
}

/// `expected` maps a condition type to "Status/Reason" (or just "Status").
fn check_conditions(
    what: &str,
    actual: &[Condition],
    expected: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    for (type_, value) in expected {
        if value == "absent" {
            if let Some(c) = actual.iter().find(|c| c.type_ == type_) {
                problems.push(format!(
                    "{what}: {type_} is {:?}/{}, expected no such condition",
                    c.status, c.reason
                ));
            }
            continue;
        }
        let (status, reason) = match value.split_once('/') {
            Some((s, r)) => (s, Some(r)),
            None => (value.as_str(), None),
        };
        match actual.iter().find(|c| c.type_ == type_) {
            None => problems.push(format!("{what}: no {type_} condition (expected {value})")),
            Some(c) => {
                let actual_status = format!("{:?}", c.status);
                if actual_status != status || reason.is_some_and(|r| r != c.reason) {
                    problems.push(format!(
                        "{what}: {type_} is {actual_status}/{} ({}), expected {value}",
                        c.reason, c.message
                    ));
                }
            }
        }
    }
}

fn check_generations(loaded: &Loaded, output: &Output, problems: &mut Vec<String>) {
    let input = &loaded.input;
    let generation_of = |kind: &str, key: &str| -> i64 {
        let find = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            let k = match &meta.namespace {
                Some(ns) => format!("{ns}/{}", meta.name.clone().unwrap_or_default()),
                None => meta.name.clone().unwrap_or_default(),
            };
            (k == key).then(|| meta.generation.unwrap_or(0))
        };
        match kind {
            "GatewayClass" => input.gateway_classes.iter().find_map(|o| find(&o.metadata)),
            "Gateway" => input.gateways.iter().find_map(|o| find(&o.metadata)),
            "ListenerSet" => input.listener_sets.iter().find_map(|o| find(&o.metadata)),
            "GRPCRoute" => input.grpc_routes.iter().find_map(|o| find(&o.metadata)),
            "TLSRoute" => input.tls_routes.iter().find_map(|o| find(&o.metadata)),
            "TCPRoute" => input.tcp_routes.iter().find_map(|o| find(&o.metadata)),
            "UDPRoute" => input.udp_routes.iter().find_map(|o| find(&o.metadata)),
            _ => input.http_routes.iter().find_map(|o| find(&o.metadata)),
        }
        .unwrap_or(-1)
    };
    let mut check = |kind: &str, key: String, conditions: &[Condition]| {
        let generation = generation_of(kind, &key);
        for c in conditions {
            if c.observed_generation != generation {
                problems.push(format!(
                    "{kind} {key}: {} has observedGeneration {} but the object is at generation {generation}",
                    c.type_, c.observed_generation
                ));
            }
        }
    };
    for (name, class) in &output.gateway_classes {
        check("GatewayClass", name.clone(), &class.conditions);
    }
    for (key, gateway) in &output.gateways {
        check("Gateway", key.to_string(), &gateway.conditions);
        for listener in &gateway.listeners {
            check("Gateway", key.to_string(), &listener.conditions);
        }
    }
    for (key, set) in &output.listener_sets {
        check("ListenerSet", key.to_string(), &set.conditions);
        for listener in &set.listeners {
            check("ListenerSet", key.to_string(), &listener.conditions);
        }
    }
    for (key, route) in &output.http_routes {
        for parent in &route.parents {
            check("HTTPRoute", key.to_string(), &parent.conditions);
        }
    }
    for (key, route) in &output.grpc_routes {
        for parent in &route.parents {
            check("GRPCRoute", key.to_string(), &parent.conditions);
        }
    }
    for (key, route) in &output.tls_routes {
        for parent in &route.parents {
            check("TLSRoute", key.to_string(), &parent.conditions);
        }
    }
    for (key, route) in &output.tcp_routes {
        for parent in &route.parents {
            check("TCPRoute", key.to_string(), &parent.conditions);
        }
    }
    for (key, route) in &output.udp_routes {
        for parent in &route.parents {
            check("UDPRoute", key.to_string(), &parent.conditions);
        }
    }
}

fn check_determinism(loaded: &Loaded, output: &Output, problems: &mut Vec<String>) {
    let again = compile::compile(&loaded.input);
    if &again != output {
        problems.push("compiling the same input twice gave different output".into());
    }
    // Shuffled input order must not change the output either.
    let mut reversed = loaded.input.clone();
    reversed.gateways.reverse();
    reversed.http_routes.reverse();
    reversed.grpc_routes.reverse();
    reversed.tls_routes.reverse();
    reversed.tcp_routes.reverse();
    reversed.udp_routes.reverse();
    reversed.services.reverse();
    reversed.endpoint_slices.reverse();
    reversed.reference_grants.reverse();
    let shuffled = compile::compile(&reversed);
    for (key, gateway) in &output.gateways {
        let a = gateway.config.as_ref().map(|c| frame::encode(c).unwrap());
        let b = shuffled
            .gateways
            .get(key)
            .and_then(|g| g.config.as_ref())
            .map(|c| frame::encode(c).unwrap());
        if a != b {
            problems.push(format!("Gateway {key}: the config depends on input order"));
        }
    }
}

fn check_request(
    what: &str,
    snapshot: &Snapshot,
    config: &CompiledConfig,
    request: &ExpectedRequest,
    problems: &mut Vec<String>,
) {
    if request.udp
        || snapshot
            .port(request.port)
            .is_some_and(|p| matches!(p.protocol, PortProtocol::Tls | PortProtocol::Tcp))
    {
        check_tls_connection(what, snapshot, request, problems);
        return;
    }
    let mut raw = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        request.method, request.path, request.host
    );
    for (name, value) in &request.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let buf = raw.as_bytes();
    let mut head = RequestHead::default();
    let limits = HeadLimits {
        max_header_count: 100,
        max_header_bytes: 65536,
        max_request_line_bytes: 8192,
    };
    if parse(buf, &limits, &mut head) != Ok(true) {
        problems.push(format!("{what}: the test request does not parse"));
        return;
    }
    let mut host_buf = [0u8; MAX_HOST_LEN + 1];
    let host = normalize(head.host(buf), &mut host_buf)
        .unwrap_or("")
        .to_string();
    let view = RequestView {
        method: head.method(buf),
        path: head.path(buf),
        query: head.query(buf),
        buf,
        headers: &head.headers,
    };
    let found = snapshot
        .port(request.port)
        .and_then(|p| p.select(&host))
        .and_then(|l| l.find(&host, &view));
    let expect = &request.expect;
    let Some(found) = found else {
        if expect.status != Some(404) {
            problems.push(format!("{what}: no route matched (expected {expect:?})"));
        }
        return;
    };
    let rule = found.rule;
    if let Some(route) = &expect.route
        && &*rule.route_name != route
    {
        problems.push(format!(
            "{what}: matched route {} (expected {route})",
            rule.route_name
        ));
    }
    if let Some(expected) = &expect.retry {
        let actual = match &rule.retry {
            None => "none".to_string(),
            Some(retry) => format!(
                "codes={} attempts={} backoff={}ms",
                retry
                    .codes
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                retry.attempts,
                retry.backoff.as_millis()
            ),
        };
        if &actual != expected {
            problems.push(format!("{what}: retry {actual} (expected {expected})"));
        }
    }
    let shares = weighted_shares(snapshot, &rule.backends);
    let tls = format!("{what}: backend TLS");
    check_shares(
        &tls,
        config,
        &shares,
        expect.tls.as_ref(),
        describe_tls,
        problems,
    );
    let protocols = format!("{what}: backend protocols");
    let expected = expect.protocols.as_ref();
    check_shares(
        &protocols,
        config,
        &shares,
        expected,
        describe_protocol,
        problems,
    );
    match expect.status {
        Some(404) => problems.push(format!(
            "{what}: matched route {} (expected 404)",
            rule.route_name
        )),
        Some(500) if (rule.redirect.is_some() || shares.iter().any(|s| s != "invalid")) => {
            problems.push(format!(
                "{what}: expected 500, the rule has backends {shares:?}"
            ));
        }
        Some(500) => {}
        Some(status) => match &rule.redirect {
            Some(redirect) if redirect.status == status => {}
            other => problems.push(format!(
                "{what}: expected redirect {status}, rule redirect {:?}",
                other.as_ref().map(|r| r.status)
            )),
        },
        None => {}
    }
    if let Some(backends) = &expect.backends
        && &shares != backends
    {
        problems.push(format!(
            "{what}: backends {shares:?} (expected {backends:?})"
        ));
    }
    if let Some(mirrors) = &expect.mirrors {
        let actual: Vec<String> = rule
            .mirrors
            .iter()
            .map(|m| {
                format!(
                    "{} {}/{}",
                    snapshot.backends[m.backend as usize].name, m.numerator, m.denominator
                )
            })
            .collect();
        if &actual != mirrors {
            problems.push(format!("{what}: mirrors {actual:?} (expected {mirrors:?})"));
        }
    }
    if let Some(endpoints) = &expect.endpoints {
        let actual: Vec<String> = rule
            .backends
            .shares
            .iter()
            .filter_map(|s| s.target.as_ref().ok())
            .flat_map(|i| {
                snapshot.backends[*i as usize]
                    .endpoints
                    .iter()
                    .map(|e| e.to_string())
            })
            .collect();
        if &actual != endpoints {
            problems.push(format!(
                "{what}: endpoints {actual:?} (expected {endpoints:?})"
            ));
        }
    }
}

/// A backend's TLS settings (see [`Decision::tls`]).
fn describe_tls(backend: &Backend) -> String {
    let Some(tls) = &backend.tls else {
        return "plaintext".to_string();
    };
    let mut text = format!("{} sni={}", tls.policy, tls.server_name);
    if !tls.subject_alt_names.is_empty() {
        let names: Vec<String> = tls
            .subject_alt_names
            .iter()
            .map(|n| match n {
                SubjectAltName::Hostname(h) => h.clone(),
                SubjectAltName::Uri(u) => format!("uri:{u}"),
            })
            .collect();
        text.push_str(&format!(" san={}", names.join(",")));
    }
    if tls.system_trust_anchors {
        text.push_str(" system-ca");
    }
    if let Some(certificate) = &tls.client_certificate {
        text.push_str(&format!(" client={certificate}"));
    }
    text
}

/// The protocol the proxy speaks to a backend (see [`Decision::protocols`]).
fn describe_protocol(backend: &Backend) -> String {
    match serde_json::to_value(backend.protocol) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

/// Compares `describe` of the backend of each share a request goes to ("invalid" for
/// unresolved shares) with `expected`.
fn check_shares(
    what: &str,
    config: &CompiledConfig,
    shares: &[String],
    expected: Option<&Vec<String>>,
    describe: fn(&Backend) -> String,
    problems: &mut Vec<String>,
) {
    let Some(expected) = expected else {
        return;
    };
    let actual: Vec<String> = shares
        .iter()
        .map(
            |name| match config.backends.iter().find(|b| b.name == *name) {
                None => "invalid".to_string(),
                Some(backend) => describe(backend),
            },
        )
        .collect();
    if &actual != expected {
        problems.push(format!("{what}: {actual:?} (expected {expected:?})"));
    }
}

/// The backends of `choice` with a non-zero weight ("invalid" for unresolved references).
fn weighted_shares(snapshot: &Snapshot, choice: &BackendChoice) -> Vec<String> {
    choice
        .shares
        .iter()
        .zip(choice.cumulative.iter().scan(0u64, |prev, c| {
            let weight = c - *prev;
            *prev = *c;
            Some(weight)
        }))
        .filter(|(_, weight)| *weight > 0)
        .map(|(share, _)| match &share.target {
            Ok(index) => snapshot.backends[*index as usize].name.to_string(),
            Err(_) => "invalid".to_string(),
        })
        .collect()
}

/// A connection to a TLS port with SNI `request.host` ("" for none), or to a TCP port (host
/// ""): which listener and route take it, and which backends it may go to. 404 stands for
/// "refused: no route".
fn check_tls_connection(
    what: &str,
    snapshot: &Snapshot,
    request: &ExpectedRequest,
    problems: &mut Vec<String>,
) {
    let server_name = (!request.host.is_empty()).then(|| request.host.to_ascii_lowercase());
    let transport = if request.udp {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let found = snapshot
        .port_of(request.port, transport)
        .and_then(|p| p.select_for_sni(server_name.as_deref()))
        .and_then(|l| l.stream_routes.find(server_name.as_deref()));
    let expect = &request.expect;
    let Some(route) = found else {
        if expect.status != Some(404) {
            problems.push(format!(
                "{what}: no stream route matched (expected {expect:?})"
            ));
        }
        return;
    };
    if expect.status == Some(404) {
        problems.push(format!(
            "{what}: matched stream route {} (expected none)",
            route.name
        ));
    }
    if let Some(expected) = &expect.route
        && &*route.name != expected
    {
        problems.push(format!(
            "{what}: matched stream route {} (expected {expected})",
            route.name
        ));
    }
    let shares = weighted_shares(snapshot, &route.backends);
    if let Some(backends) = &expect.backends
        && &shares != backends
    {
        problems.push(format!(
            "{what}: backends {shares:?} (expected {backends:?})"
        ));
    }
}

fn check_listeners(
    owner: &str,
    listeners: &[compile::ListenerOutput],
    expected: &BTreeMap<String, ExpectedListener>,
    problems: &mut Vec<String>,
) {
    for (listener_name, expected_listener) in expected {
        let Some(listener) = listeners.iter().find(|l| l.name == *listener_name) else {
            problems.push(format!("{owner}: no listener status {listener_name}"));
            continue;
        };
        let what = format!("{owner} listener {listener_name}");
        if let Some(attached) = expected_listener.attached_routes
            && listener.attached_routes != attached
        {
            problems.push(format!(
                "{what}: attachedRoutes {} (expected {attached})",
                listener.attached_routes
            ));
        }
        if let Some(kinds) = &expected_listener.supported_kinds {
            let actual: Vec<String> = listener
                .supported_kinds
                .iter()
                .map(|k| k.kind.clone())
                .collect();
            if &actual != kinds {
                problems.push(format!(
                    "{what}: supportedKinds {actual:?} (expected {kinds:?})"
                ));
            }
        }
        check_conditions(
            &what,
            &listener.conditions,
            &expected_listener.conditions,
            problems,
        );
    }
}
