//! How long one full compile takes at scale: the controller recompiles the whole cluster on
//! every change, which is only acceptable while this stays small.
//!
//!   cargo run --release -p portcullis-operator --example compile_scale -- [ROUTES] [RUNS]
//!
//! Builds ROUTES HTTPRoutes (default 5000) in 50 app namespaces, attached to 10 Gateways in
//! `infra` (each an HTTP and an HTTPS listener, the routes spread over them), each route with
//! two rules and two weighted Services with 3 endpoints each, then times `compile` RUNS times
//! (default 20) and prints min / median / max, plus the size of the largest CompiledConfig.
//! It also times the leader's status computation for every HTTPRoute of one compile (finding
//! each route's object and merging its new status; no API calls), the CPU part of a pass
//! that follows the compile.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use portcullis_operator::compile;
use portcullis_operator::controller::{by_key, status};
use portcullis_operator::distribute::gzip;
use portcullis_operator::objects::{Loaded, load_str};

const NAMESPACES: usize = 50;
const GATEWAYS: usize = 10;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let routes: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);

    let yaml = cluster(routes);
    let mut loaded = Loaded::default();
    // The loader caps documents per file (hostile-input budget); feed it one route's worth.
    for (i, chunk) in yaml.split("\n---\n").enumerate() {
        load_str(chunk, &format!("generated document {i}"), &mut loaded)?;
    }
    let input = loaded.input;

    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let (mut largest, mut largest_gzipped) = (0, 0);
    let mut accepted = 0;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let output = compile::compile(&input);
        times.push(started.elapsed());
        accepted = output
            .http_routes
            .values()
            .filter(|r| {
                r.parents
                    .iter()
                    .all(|p| p.conditions.iter().all(|c| c.is_true()))
            })
            .count();
        (largest, largest_gzipped) = output
            .gateways
            .values()
            .filter_map(|g| g.config.as_ref())
            .filter_map(|c| serde_json::to_vec(c).ok())
            .map(|json| (json.len(), gzip::compress(&json).map_or(0, |g| g.len())))
            .max()
            .unwrap_or((0, 0));
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let output = compile::compile(&input);
    let mut status_times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let routes = status::including_detached(&output.http_routes, &input.http_routes, |r| {
            status::has_our_entry(r.status.as_ref())
        });
        let existing = by_key(&input.http_routes);
        let mut written = 0;
        for (key, route) in &routes {
            if let Some(object) = existing.get(key) {
                let new = status::route_status(object.status.as_ref(), route, &now);
                written += usize::from(!new.parents.is_empty());
            }
        }
        status_times.push(started.elapsed());
        assert_eq!(
            written,
            input.http_routes.len(),
            "every route gets a status"
        );
    }
    status_times.sort();
    println!(
        "compile of {routes} HTTPRoutes ({accepted} fully accepted), {GATEWAYS} Gateways, \
         {NAMESPACES} namespaces, {} Services: min {:.1} ms, median {:.1} ms, max {:.1} ms \
         over {} runs; largest config {} KiB ({} KiB gzipped, as in the last-good Secret)",
        input.services.len(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
        times.len(),
        largest / 1024,
        largest_gzipped / 1024
    );
    println!(
        "status computation for those {} HTTPRoutes: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        input.http_routes.len(),
        ms(status_times[0]),
        ms(status_times[status_times.len() / 2]),
        ms(status_times[status_times.len() - 1]),
    );
    Ok(())
}

/// The objects of a cluster with `routes` HTTPRoutes, as one YAML stream.
fn cluster(routes: usize) -> String {
    let mut y = String::new();
    y.push_str(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
         metadata: {name: portcullis, generation: 1}\n\
         spec: {controllerName: portcullis.dev/gateway-controller}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: infra}\n---\n\
         apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\n\
         metadata: {name: wildcard, namespace: infra}\n",
    );
    let (cert, key) = certificate();
    let _ = writeln!(
        y,
        "data: {{tls.crt: {}, tls.key: {}}}\n---",
        base64(&cert),
        base64(&key)
    );
    for g in 0..GATEWAYS {
        let _ = writeln!(
            y,
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {{name: gw-{g}, namespace: infra, generation: 1}}\n\
             spec:\n  gatewayClassName: portcullis\n  listeners:\n\
             \x20 - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n\
             \x20 - name: https\n    port: 443\n    protocol: HTTPS\n    hostname: \"*.example.com\"\n\
             \x20   allowedRoutes: {{namespaces: {{from: All}}}}\n\
             \x20   tls: {{certificateRefs: [{{name: wildcard}}]}}\n---"
        );
    }
    for n in 0..NAMESPACES {
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: app-{n}}}\n---"
        );
    }
    for r in 0..routes {
        let ns = format!("app-{}", r % NAMESPACES);
        let gw = r % GATEWAYS;
        for v in 0..2 {
            let _ = writeln!(
                y,
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{r}-{v}, namespace: {ns}}}\n\
                 spec: {{ports: [{{port: 8080}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\n\
                 metadata: {{name: svc-{r}-{v}-a, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-{r}-{v}}}}}\n\
                 ports: [{{port: 8080}}]\nendpoints:\n\
                 - {{addresses: [10.1.{}.{}], conditions: {{ready: true}}}}\n\
                 - {{addresses: [10.2.{}.{}], conditions: {{ready: true}}}}\n\
                 - {{addresses: [10.3.{}.{}], conditions: {{ready: true}}}}\n---",
                r / 250,
                r % 250,
                r / 250,
                r % 250,
                r / 250,
                r % 250
            );
        }
        let _ = writeln!(
            y,
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: route-{r}, namespace: {ns}, generation: 1}}\n\
             spec:\n  parentRefs: [{{name: gw-{gw}, namespace: infra}}]\n\
             \x20 hostnames: [\"host-{r}.example.com\"]\n  rules:\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: \"on\"}}]}}]\n\
             \x20   backendRefs: [{{name: svc-{r}-1, port: 8080}}]\n\
             \x20 - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n\
             \x20   backendRefs: [{{name: svc-{r}-0, port: 8080, weight: 95}}, {{name: svc-{r}-1, port: 8080, weight: 5}}]\n---"
        );
    }
    y
}

fn certificate() -> (String, String) {
    match rcgen::generate_simple_self_signed(vec!["*.example.com".into()]) {
        Ok(c) => (c.cert.pem(), c.signing_key.serialize_pem()),
        Err(e) => panic!("generating the test certificate: {e}"),
    }
}

/// Base64, as a Secret's `data` holds it (ByteString serializes that way).
fn base64(text: &str) -> String {
    let quoted = serde_json::to_string(&k8s_openapi::ByteString(text.as_bytes().to_vec()));
    quoted.unwrap_or_default().trim_matches('"').to_string()
}
