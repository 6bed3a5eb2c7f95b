//! Routing-table tests: Gateway API precedence, listener selection, weighted picks, path
//! rewrites, header edits and snapshot build errors.
//!
//! Configs are written as JSON. Every rule sends to one backend named after the rule (its
//! "label"), so a lookup shows which rule it found.

use std::collections::BTreeSet;

use portcullis_api::CompiledConfig;
use serde_json::{Value, json};

use super::*;
use crate::http::request::{HeadLimits, RequestHead, parse};
use crate::route::{PortTable, Snapshot};

// ----- config builders -----

fn exact(path: &str) -> Value {
    json!({"path": {"type": "Exact", "value": path}})
}

fn prefix(path: &str) -> Value {
    json!({"path": {"type": "PathPrefix", "value": path}})
}

fn regex(pattern: &str) -> Value {
    json!({"path": {"type": "RegularExpression", "value": pattern}})
}

fn grpc_method(method: &str) -> Value {
    json!({"path": {"type": "GrpcMethod", "value": method}})
}

/// A match on `path` plus a method, header and query conditions (exact values).
fn conditions(
    path: Value,
    method: Option<&str>,
    headers: &[(&str, &str)],
    query: &[(&str, &str)],
) -> Value {
    let mut m = path;
    m["method"] = json!(method);
    m["headers"] = headers.iter().map(exact_value).collect();
    m["query_params"] = query.iter().map(exact_value).collect();
    m
}

fn exact_value((name, value): &(&str, &str)) -> Value {
    json!({"name": name, "value": {"type": "Exact", "value": value}})
}

/// A rule with `matches` (none: every path) whose only backend is named `label`.
fn rule(label: &str, matches: Vec<Value>) -> Value {
    json!({"matches": matches, "backends": [{"weight": 1, "target": {"backend": label}}]})
}

fn route(name: &str, hostnames: &[&str], rules: Vec<Value>) -> Value {
    json!({"name": name, "hostnames": hostnames, "rules": rules})
}

fn listener(name: &str, hostname: Option<&str>, routes: Vec<Value>) -> Value {
    json!({"name": name, "hostname": hostname, "routes": routes})
}

fn http_port(port: u16, listeners: Vec<Value>) -> Value {
    json!({"port": port, "protocol": "HTTP", "listeners": listeners})
}

/// Every `{"backend": name}` target under `value`.
fn backend_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("backend") {
                names.insert(name.clone());
            }
            map.values().for_each(|v| backend_names(v, names));
        }
        Value::Array(items) => items.iter().for_each(|v| backend_names(v, names)),
        _ => {}
    }
}

/// A config of `ports`, declaring every backend its rules name.
fn config(ports: Vec<Value>) -> CompiledConfig {
    let ports = Value::Array(ports);
    let mut names = BTreeSet::new();
    backend_names(&ports, &mut names);
    let backends: Vec<Value> = names
        .iter()
        .map(|name| json!({"name": name, "endpoints": ["127.0.0.1:8080"]}))
        .collect();
    serde_json::from_value(json!({
        "schema_version": 1,
        "generation": 1,
        "ports": ports,
        "backends": backends,
    }))
    .unwrap()
}

/// Port 80 with one listener without hostname holding `routes`.
fn single_listener(routes: Vec<Value>) -> Snapshot {
    Snapshot::build(&config(vec![http_port(
        80,
        vec![listener("l", None, routes)],
    )]))
    .unwrap()
}

// ----- lookups -----

const HOST: &str = "h.example.com";

fn with_view<R>(raw: &str, f: impl FnOnce(&RequestView<'_>) -> R) -> R {
    let raw = raw.as_bytes();
    let limits = HeadLimits {
        max_header_count: 100,
        max_header_bytes: 65536,
        max_request_line_bytes: 8192,
    };
    let mut head = RequestHead::default();
    assert!(
        parse(raw, &limits, &mut head).unwrap(),
        "incomplete request"
    );
    f(&RequestView {
        method: head.method(raw),
        path: head.path(raw),
        query: head.query(raw),
        buf: raw,
        headers: &head.headers,
    })
}

/// Looks a request up on port 80 the way the proxy does: listener first, then its routes.
fn find<'s>(
    snapshot: &'s Snapshot,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<RouteMatch<'s>> {
    let listener = snapshot.port(80)?.select(host)?;
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    with_view(&raw, |view| listener.find(host, view))
}

fn share_name(snapshot: &Snapshot, share: &BackendShare) -> String {
    match &share.target {
        Ok(index) => snapshot.backends[*index as usize].name.to_string(),
        Err(reason) => format!("invalid: {reason}"),
    }
}

/// The label of the rule a request reaches, or None.
fn lookup(
    snapshot: &Snapshot,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let found = find(snapshot, host, method, target, headers)?;
    Some(share_name(snapshot, &found.rule.backends.shares[0]))
}

/// A request to `HOST` and the label it must reach: (method, target, headers, label).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

fn check(snapshot: &Snapshot, cases: &[Case<'_>]) {
    for (method, target, headers, expected) in cases {
        assert_eq!(
            lookup(snapshot, HOST, method, target, headers).as_deref(),
            Some(*expected),
            "{method} {target} {headers:?}"
        );
    }
}

fn get(snapshot: &Snapshot, host: &str, target: &str) -> Option<String> {
    lookup(snapshot, host, "GET", target, &[])
}

/// The only rule of a one-rule config.
fn only_rule(snapshot: &Snapshot) -> &CompiledRule {
    let rules = &snapshot.ports[0].listeners[0].rules;
    assert_eq!(rules.len(), 1);
    &rules[0]
}

/// The error `Snapshot::build` returns for `config`.
fn build_error(config: &CompiledConfig) -> String {
    Snapshot::build(config).unwrap_err()
}

// ----- helpers for weights, rewrites and certificates -----

/// Port 80 with one rule that splits traffic over `backends`.
fn weighted_rule(backends: Value) -> Snapshot {
    single_listener(vec![route(
        "ns/r",
        &[],
        vec![json!({"matches": [], "backends": backends})],
    )])
}

/// Rewrites `request_path` with the URLRewrite `modifier` of a rule matching `matches`.
fn rewritten(matches: Vec<Value>, modifier: Value, request_path: &str) -> String {
    let snapshot = single_listener(vec![route(
        "ns/r",
        &[],
        vec![json!({
            "matches": matches,
            "filters": [{"type": "URLRewrite", "path": modifier}],
            "backends": [{"weight": 1, "target": {"backend": "b"}}],
        })],
    )]);
    let found = find(&snapshot, HOST, "GET", request_path, &[])
        .unwrap_or_else(|| panic!("{request_path} matched nothing"));
    let rewrite = found.rule.rewrite.as_ref().unwrap().path.as_ref().unwrap();
    let mut out = Vec::new();
    rewrite.apply(
        request_path.as_bytes(),
        found.entry.matcher.matched_prefix_len(),
        &mut out,
    );
    String::from_utf8(out).unwrap()
}

const GARBAGE_CHAIN: &str = "-----BEGIN CERTIFICATE-----\n!!garbage!!\n-----END CERTIFICATE-----\n";
const GARBAGE_KEY: &str = "-----BEGIN PRIVATE KEY-----\n!!garbage!!\n-----END PRIVATE KEY-----\n";

// ----- a reference implementation: a linear scan -----

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEGMENTS: &[&str] = &["a", "b", "ab"];
const ROUTE_HOSTS: &[&str] = &["a.example.com", "*.example.com", "*.a.example.com"];
const REQUEST_HOSTS: &[&str] = &["a.example.com", "b.a.example.com", "x.example.com", "other"];

fn random_path(rng: &mut Rng) -> String {
    let depth = rng.below(4);
    let mut path: String = (0..depth)
        .map(|_| format!("/{}", rng.pick(SEGMENTS)))
        .collect();
    if path.is_empty() || rng.below(4) == 0 {
        path.push('/');
    }
    path
}

fn random_match(rng: &mut Rng) -> Value {
    let path = random_path(rng);
    let path = match rng.below(6) {
        0 => exact(&path),
        1 => regex(&format!("{}(/.*)?", path.trim_end_matches('/'))),
        2 => grpc_method(rng.pick(SEGMENTS)),
        _ => prefix(&path),
    };
    let method = (rng.below(3) == 0).then_some("GET");
    let headers: &[(&str, &str)] =
        [&[][..], &[("x", "1")], &[("x", "1"), ("y", "1")]][rng.below(3)];
    let query: &[(&str, &str)] = [&[][..], &[("q", "1")]][rng.below(2)];
    conditions(path, method, headers, query)
}

/// One match of one rule, in declaration order, for the linear scan.
struct Candidate {
    hostnames: Vec<HostPattern>,
    matcher: CompiledMatch,
    label: String,
}

fn candidates(routes: &[Value]) -> Vec<Candidate> {
    let mut all = Vec::new();
    for route in routes {
        let hostnames: Vec<HostPattern> = route["hostnames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| HostPattern::parse(h.as_str()))
            .collect();
        for rule in route["rules"].as_array().unwrap() {
            let label = rule["backends"][0]["target"]["backend"].as_str().unwrap();
            let matches = rule["matches"].as_array().unwrap();
            let mut matchers: Vec<CompiledMatch> = matches
                .iter()
                .map(|m| CompiledMatch::compile(&serde_json::from_value(m.clone()).unwrap()))
                .collect::<Result<_, _>>()
                .unwrap();
            if matchers.is_empty() {
                matchers.push(CompiledMatch::catch_all());
            }
            all.extend(matchers.into_iter().map(|matcher| Candidate {
                hostnames: hostnames.clone(),
                matcher,
                label: label.to_string(),
            }));
        }
    }
    all
}

/// The label a linear scan over every match picks, ranking by Gateway API precedence:
/// hostname, path kind, then `CompiledMatch::precedence`, then declaration order.
fn linear_scan<'c>(
    candidates: &'c [Candidate],
    host: &str,
    view: &RequestView<'_>,
) -> Option<&'c str> {
    let ranked = candidates.iter().enumerate().filter_map(|(sequence, c)| {
        let host_rank = if c.hostnames.is_empty() {
            0
        } else {
            c.hostnames
                .iter()
                .filter(|p| p.matches(host))
                .map(HostPattern::specificity)
                .max()?
        };
        if !c.matcher.matches(view) {
            return None;
        }
        let kind = match &c.matcher.path {
            PathMatcher::Exact(_) => 0,
            PathMatcher::Regex(_) => 1,
            PathMatcher::Prefix { key, .. } if !key.is_empty() => 2,
            PathMatcher::GrpcMethod { .. } => 3,
            PathMatcher::Prefix { .. } => 4,
        };
        let rank = (
            std::cmp::Reverse(host_rank),
            kind,
            c.matcher.precedence(),
            sequence,
        );
        Some((rank, &*c.label))
    });
    ranked.min().map(|(_, label)| label)
}

// ----- 1. path, method, header and query precedence -----

#[test]
fn path_precedence() {
    let snapshot = single_listener(vec![
        route(
            "ns/prefixes",
            &[],
            vec![
                rule("prefix-foo", vec![prefix("/foo")]),
                rule("prefix-foo-bar", vec![prefix("/foo/bar")]),
                rule("prefix-slash", vec![prefix("/slash/")]),
                rule("two-matches", vec![exact("/m1"), prefix("/m2")]),
            ],
        ),
        // Listed after the prefixes: exact paths still win.
        route(
            "ns/exact",
            &[],
            vec![rule("exact-foo-bar", vec![exact("/foo/bar")])],
        ),
        route(
            "ns/exact-post",
            &[],
            vec![rule(
                "exact-post",
                vec![conditions(exact("/foo"), Some("POST"), &[], &[])],
            )],
        ),
        route("ns/root", &[], vec![rule("root", vec![])]),
    ]);
    // Exact "/foo" is POST-only: GET /foo falls back to the prefixes (see the cases).
    let post = lookup(&snapshot, HOST, "POST", "/foo", &[]);
    assert_eq!(post.as_deref(), Some("exact-post"));
    let cases = [
        ("/foo/bar", "exact-foo-bar"),
        ("/foo/bar?x=1", "exact-foo-bar"),
        ("/foo/bar/", "prefix-foo-bar"),
        ("/foo/bar/baz", "prefix-foo-bar"),
        ("/foo/barbaz", "prefix-foo"),
        ("/foo/baz", "prefix-foo"),
        ("/foo/", "prefix-foo"),
        ("/foo", "prefix-foo"),
        ("/foo?bar", "prefix-foo"),
        ("/foobar", "root"),
        ("/fo", "root"),
        ("/slash", "prefix-slash"),
        ("/slash/", "prefix-slash"),
        ("/slash/x/y", "prefix-slash"),
        ("/slashes", "root"),
        ("/m1", "two-matches"),
        ("/m1/x", "root"),
        ("/m2/x", "two-matches"),
        ("/", "root"),
        ("/anything/else", "root"),
    ];
    for (target, expected) in cases {
        assert_eq!(
            get(&snapshot, HOST, target).as_deref(),
            Some(expected),
            "GET {target}"
        );
    }
}

#[test]
fn regex_paths_rank_between_exact_and_prefix() {
    let snapshot = single_listener(vec![
        route(
            "ns/prefix",
            &[],
            vec![rule("prefix", vec![prefix("/api/v1/long/prefix")])],
        ),
        route(
            "ns/regex",
            &[],
            vec![rule("regex", vec![regex("/api/v[0-9]+(/.*)?")])],
        ),
        route("ns/exact", &[], vec![rule("exact", vec![exact("/api/v1")])]),
        route("ns/root", &[], vec![rule("root", vec![])]),
    ]);
    let cases = [
        ("/api/v1", "exact"),
        ("/api/v2", "regex"),
        ("/api/v2/items", "regex"),
        // A regex beats even a longer prefix.
        ("/api/v1/long/prefix/x", "regex"),
        // The regex must match the whole path.
        ("/api/v2x", "root"),
        ("/x/api/v2", "root"),
        ("/api/vx", "root"),
    ];
    for (target, expected) in cases {
        assert_eq!(
            get(&snapshot, HOST, target).as_deref(),
            Some(expected),
            "GET {target}"
        );
    }

    // Without a catch-all, a path only the unanchored regex would match finds nothing.
    let snapshot = single_listener(vec![route("ns/r", &[], vec![rule("r", vec![regex("/a")])])]);
    assert_eq!(get(&snapshot, HOST, "/a").as_deref(), Some("r"));
    assert_eq!(get(&snapshot, HOST, "/a/b"), None);
    assert_eq!(get(&snapshot, HOST, "/b/a"), None);
}

#[test]
fn grpc_method_only_matches_rank_below_service_matches_and_above_the_root() {
    let snapshot = single_listener(vec![
        route(
            "ns/method",
            &[],
            vec![rule("method", vec![grpc_method("Get")])],
        ),
        route(
            "ns/method-with-header",
            &[],
            vec![rule(
                "method-with-header",
                vec![conditions(
                    grpc_method("Get"),
                    None,
                    &[("x-mode", "on")],
                    &[],
                )],
            )],
        ),
        route(
            "ns/service",
            &[],
            vec![rule("service", vec![prefix("/pkg.Svc/")])],
        ),
        route(
            "ns/exact",
            &[],
            vec![rule("exact", vec![exact("/pkg.Svc/Get")])],
        ),
        route("ns/root", &[], vec![rule("root", vec![])]),
    ]);
    let on: &[(&str, &str)] = &[("x-mode", "on")];
    check(
        &snapshot,
        &[
            ("POST", "/pkg.Svc/Get", &[], "exact"),
            // GRPCRoute ranks service characters before method characters.
            ("POST", "/pkg.Svc/List", &[], "service"),
            ("POST", "/other.Svc/Get", &[], "method"),
            // Among method-only matches, more header matches first.
            ("POST", "/other.Svc/Get", on, "method-with-header"),
            ("POST", "/other.Svc/List", &[], "root"),
            // The method must be the whole last element, with a non-empty service before it.
            ("POST", "/other.Svc/Getter", &[], "root"),
            ("POST", "//Get", &[], "root"),
            ("POST", "/Get", &[], "root"),
            ("POST", "/a/b/Get", &[], "root"),
            ("POST", "/other.Svc/Get/", &[], "root"),
        ],
    );
}

#[test]
fn method_header_and_query_precedence() {
    let svc = || prefix("/svc");
    let snapshot = single_listener(vec![
        route("ns/plain", &[], vec![rule("plain", vec![svc()])]),
        route(
            "ns/queries",
            &[],
            vec![
                rule("q1", vec![conditions(svc(), None, &[], &[("a", "1")])]),
                rule(
                    "q2",
                    vec![conditions(svc(), None, &[], &[("a", "1"), ("b", "2")])],
                ),
            ],
        ),
        route(
            "ns/headers",
            &[],
            vec![
                rule("h1", vec![conditions(svc(), None, &[("x-a", "1")], &[])]),
                rule(
                    "h2",
                    vec![conditions(svc(), None, &[("x-a", "1"), ("X-B", "2")], &[])],
                ),
            ],
        ),
        route(
            "ns/method",
            &[],
            vec![rule("get", vec![conditions(svc(), Some("GET"), &[], &[])])],
        ),
        // A longer prefix beats every condition on a shorter one.
        route(
            "ns/longer",
            &[],
            vec![rule("longer", vec![prefix("/svc/v2")])],
        ),
    ]);
    let both: &[(&str, &str)] = &[("x-a", "1"), ("x-b", "2")];
    let cases: &[Case<'_>] = &[
        ("GET", "/svc?a=1&b=2", both, "get"),
        ("POST", "/svc?a=1&b=2", both, "h2"),
        ("POST", "/svc", both, "h2"),
        ("POST", "/svc", &[("X-A", "1"), ("x-B", "2")], "h2"),
        ("POST", "/svc?a=1&b=2", &[("x-a", "1")], "h1"),
        ("POST", "/svc", &[("x-a", "1"), ("x-b", "3")], "h1"),
        ("POST", "/svc?a=1&b=2", &[], "q2"),
        ("POST", "/svc?b=2&a=1", &[], "q2"),
        ("POST", "/svc?a=1", &[], "q1"),
        ("POST", "/svc?a=1&b=3", &[], "q1"),
        ("POST", "/svc?a=2&b=2", &[], "plain"),
        ("POST", "/svc", &[("x-a", "2")], "plain"),
        ("POST", "/svc", &[], "plain"),
        // The method must match exactly.
        ("get", "/svc", &[], "plain"),
        ("GET", "/svc/x", both, "get"),
        ("GET", "/svc/v2", both, "longer"),
        ("POST", "/svc/v2?a=1&b=2", both, "longer"),
    ];
    check(&snapshot, cases);
    assert_eq!(get(&snapshot, HOST, "/other"), None);
}

#[test]
fn ties_follow_route_order_then_rule_order() {
    // Route order is the listener's list order, not the names' order.
    let snapshot = single_listener(vec![
        route(
            "ns/zz-first",
            &[],
            vec![
                rule("first-0", vec![prefix("/t")]),
                rule("first-1", vec![prefix("/t"), exact("/t/exact")]),
                rule("first-2", vec![exact("/t/exact")]),
                rule(
                    "first-get",
                    vec![conditions(prefix("/m"), Some("GET"), &[], &[])],
                ),
            ],
        ),
        route(
            "ns/aa-second",
            &[],
            vec![
                rule("second-0", vec![prefix("/t"), prefix("/u")]),
                rule(
                    "second-get",
                    vec![conditions(prefix("/m"), Some("GET"), &[], &[])],
                ),
                rule("second-catch-all", vec![]),
                // Same precedence as a rule without matches, but listed later.
                rule("second-root", vec![prefix("/")]),
                rule(
                    "second-root-header",
                    vec![conditions(prefix("/"), None, &[("x", "1")], &[])],
                ),
            ],
        ),
    ]);
    let cases: &[Case<'_>] = &[
        ("GET", "/t", &[], "first-0"),
        ("GET", "/t/x", &[], "first-0"),
        ("GET", "/t/exact", &[], "first-1"),
        ("GET", "/u", &[], "second-0"),
        ("GET", "/m", &[], "first-get"),
        ("POST", "/m", &[], "second-catch-all"),
        ("GET", "/", &[], "second-catch-all"),
        ("GET", "/other", &[], "second-catch-all"),
        // A rule without matches is a prefix "/" match: more headers beat it.
        ("GET", "/other", &[("x", "1")], "second-root-header"),
    ];
    check(&snapshot, cases);
}

// ----- 2. route hostnames -----

#[test]
fn hostname_precedence_falls_through_to_less_specific_groups() {
    let snapshot = single_listener(vec![
        route(
            "ns/any",
            &[],
            vec![
                rule("any", vec![prefix("/")]),
                rule("any-c", vec![exact("/c")]),
            ],
        ),
        route(
            "ns/wild",
            &["*.example.com"],
            vec![rule("wild", vec![prefix("/w")])],
        ),
        route(
            "ns/wild-long",
            &["*.a.example.com"],
            vec![rule("wild-long", vec![prefix("/w")])],
        ),
        route(
            "ns/exact",
            &["a.example.com", "B.Example.com"],
            vec![rule("exact", vec![prefix("/a")])],
        ),
        // A more specific hostname beats a more specific path of a less specific hostname.
        route(
            "ns/exact-root",
            &["c.example.com"],
            vec![rule("exact-root", vec![prefix("/")])],
        ),
    ]);
    let cases = [
        ("a.example.com", "/a", "exact"),
        ("a.example.com", "/a/x", "exact"),
        ("b.example.com", "/a", "exact"),
        // The exact group has no "/b": fall through past the wildcard group to "any".
        ("a.example.com", "/b", "any"),
        ("a.example.com", "/w", "wild"),
        ("x.example.com", "/w", "wild"),
        ("x.y.example.com", "/w/z", "wild"),
        ("x.a.example.com", "/w", "wild-long"),
        ("x.y.a.example.com", "/w", "wild-long"),
        ("x.a.example.com", "/a", "any"),
        ("x.example.com", "/a", "any"),
        // A wildcard never matches the bare domain.
        ("example.com", "/w", "any"),
        ("a.example.org", "/a", "any"),
        ("xexample.com", "/w", "any"),
        ("c.example.com", "/c", "exact-root"),
        ("d.example.com", "/c", "any-c"),
    ];
    for (host, target, expected) in cases {
        assert_eq!(
            get(&snapshot, host, target).as_deref(),
            Some(expected),
            "GET {host}{target}"
        );
    }

    // Without a catch-all route, a host no route names finds nothing.
    let snapshot = single_listener(vec![
        route("ns/exact", &["a.example.com"], vec![rule("exact", vec![])]),
        route(
            "ns/wild",
            &["*.example.com"],
            vec![rule("wild", vec![prefix("/w")])],
        ),
    ]);
    assert_eq!(
        get(&snapshot, "a.example.com", "/x").as_deref(),
        Some("exact")
    );
    assert_eq!(
        get(&snapshot, "b.example.com", "/w").as_deref(),
        Some("wild")
    );
    assert_eq!(get(&snapshot, "b.example.com", "/x"), None);
    assert_eq!(get(&snapshot, "example.com", "/w"), None);
    assert_eq!(get(&snapshot, "other.org", "/"), None);
}

// ----- 3. listener selection -----

#[test]
fn listener_selection_isolates_listeners() {
    let catch_all = |label: &str| {
        vec![route(
            &format!("ns/{label}"),
            &[],
            vec![rule(label, vec![])],
        )]
    };
    let snapshot = Snapshot::build(&config(vec![
        http_port(
            80,
            vec![
                // Listed first: order must not matter.
                listener("any", None, catch_all("l-any")),
                listener(
                    "exact",
                    Some("a.example.com"),
                    vec![route(
                        "ns/only-a",
                        &[],
                        vec![rule("l-exact", vec![prefix("/only-a")])],
                    )],
                ),
                listener("wild", Some("*.example.com"), catch_all("l-wild")),
                listener(
                    "wild-long",
                    Some("*.b.example.com"),
                    catch_all("l-wild-long"),
                ),
            ],
        ),
        http_port(
            81,
            vec![
                listener("81-exact", Some("a.example.com"), catch_all("81-exact")),
                listener("81-wild", Some("*.example.com"), catch_all("81-wild")),
            ],
        ),
    ]))
    .unwrap();

    let port_80 = snapshot.port(80).unwrap();
    let cases = [
        ("a.example.com", "exact"),
        ("x.example.com", "wild"),
        ("b.example.com", "wild"),
        ("x.y.example.com", "wild"),
        ("x.b.example.com", "wild-long"),
        ("example.com", "any"),
        ("other.org", "any"),
    ];
    for (host, expected) in cases {
        let selected = port_80.select(host).map(|l| &*l.name);
        assert_eq!(selected, Some(expected), "port 80, host {host}");
    }

    assert_eq!(
        get(&snapshot, "a.example.com", "/only-a/x").as_deref(),
        Some("l-exact")
    );
    // No fall-through to the wildcard or catch-all listener's routes.
    assert_eq!(get(&snapshot, "a.example.com", "/other"), None);
    assert_eq!(
        get(&snapshot, "x.example.com", "/other").as_deref(),
        Some("l-wild")
    );
    assert_eq!(
        get(&snapshot, "x.b.example.com", "/").as_deref(),
        Some("l-wild-long")
    );
    assert_eq!(get(&snapshot, "other.org", "/").as_deref(), Some("l-any"));

    let port_81 = snapshot.port(81).unwrap();
    assert_eq!(
        port_81.select("a.example.com").map(|l| &*l.name),
        Some("81-exact")
    );
    assert_eq!(
        port_81.select("z.example.com").map(|l| &*l.name),
        Some("81-wild")
    );
    assert!(port_81.select("example.com").is_none());
    assert!(port_81.select("other.org").is_none());
    assert!(port_81.select("").is_none());
    assert!(snapshot.port(82).is_none());

    // TLS certificate selection uses the same rule; no SNI means the listener without hostname.
    let sni = |port: &PortTable, name| port.select_for_sni(name).map(|l| l.name.to_string());
    assert_eq!(
        sni(port_80, Some("a.example.com")).as_deref(),
        Some("exact")
    );
    assert_eq!(sni(port_80, Some("x.example.com")).as_deref(), Some("wild"));
    assert_eq!(sni(port_80, None).as_deref(), Some("any"));
    assert_eq!(sni(port_81, None), None);
}

// ----- 4. weighted backends -----

#[test]
fn weighted_pick_follows_cumulative_weights() {
    let weights = [0u32, 3, 0, 5, 0, 2, 0];
    let backends: Vec<Value> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"weight": w, "target": {"backend": format!("w{i}")}}))
        .collect();
    let snapshot = weighted_rule(Value::Array(backends));
    let choice = &only_rule(&snapshot).backends;
    assert_eq!(choice.total_weight(), 10);
    assert_eq!(choice.cumulative, [0, 3, 3, 8, 8, 10, 10]);

    let pick = |random: u64| share_name(&snapshot, choice.pick(random).unwrap());
    // Share i covers [cumulative[i-1], cumulative[i]).
    let expected = ["w1", "w1", "w1", "w3", "w3", "w3", "w3", "w3", "w5", "w5"];
    for (random, name) in expected.iter().enumerate() {
        assert_eq!(pick(random as u64), *name, "random {random}");
    }
    // Numbers past the total wrap around.
    for random in [
        10,
        13,
        1_000_000_007,
        u64::MAX - 1,
        u64::MAX,
        1 << 63,
        (1 << 63) + 9,
    ] {
        assert_eq!(
            pick(random),
            expected[(random % 10) as usize],
            "random {random}"
        );
    }
    let zero_weight: Vec<String> = (0..7).step_by(2).map(|i| format!("w{i}")).collect();
    for random in (0..1000).chain([u64::MAX, u64::MAX - 3, 1 << 40]) {
        assert!(
            !zero_weight.contains(&pick(random)),
            "random {random} picked a zero weight"
        );
    }
}

#[test]
fn weighted_pick_edge_cases() {
    // All weights zero: nothing to pick.
    let snapshot = weighted_rule(json!([
        {"weight": 0, "target": {"backend": "a"}},
        {"weight": 0, "target": {"invalid": "gone"}},
    ]));
    let choice = &only_rule(&snapshot).backends;
    assert_eq!(choice.total_weight(), 0);
    for random in [0, 1, u64::MAX] {
        assert!(choice.pick(random).is_none());
    }

    // No backends at all.
    let snapshot = weighted_rule(json!([]));
    let choice = &only_rule(&snapshot).backends;
    assert_eq!(choice.total_weight(), 0);
    assert!(choice.pick(0).is_none());
    assert!(choice.pick(u64::MAX).is_none());

    // An invalid reference keeps its share; picking it yields the reason.
    let snapshot = weighted_rule(json!([
        {"weight": 1, "target": {"backend": "a"}},
        {"weight": 2, "target": {"invalid": "service ns/gone not found"}},
        {"weight": 0, "target": {"invalid": "never"}},
    ]));
    let choice = &only_rule(&snapshot).backends;
    assert_eq!(choice.total_weight(), 3);
    assert_eq!(share_name(&snapshot, choice.pick(0).unwrap()), "a");
    assert_eq!(share_name(&snapshot, choice.pick(u64::MAX).unwrap()), "a");
    for random in [1, 2, 4, 5, u64::MAX - 1] {
        let share = choice.pick(random).unwrap();
        assert_eq!(
            share.target.as_ref().unwrap_err().as_ref(),
            "service ns/gone not found"
        );
    }
}

// ----- 5. path rewrites -----

#[test]
fn path_rewrites() {
    let replace_prefix = |p: &str| json!({"type": "ReplacePrefixMatch", "value": p});
    let replace_full = |p: &str| json!({"type": "ReplaceFullPath", "value": p});
    let cases = [
        // Gateway API conformance (HTTPRouteRewritePath).
        (
            "/prefix/one",
            replace_prefix("/one"),
            "/prefix/one/two",
            "/one/two",
        ),
        ("/prefix/one", replace_prefix("/one"), "/prefix/one", "/one"),
        (
            "/strip-prefix",
            replace_prefix("/"),
            "/strip-prefix/three",
            "/three",
        ),
        ("/strip-prefix", replace_prefix("/"), "/strip-prefix", "/"),
        ("/", replace_prefix("/api"), "/foo", "/api/foo"),
        ("/full/one", replace_full("/one"), "/full/one/two", "/one"),
        // The HTTPPathModifier table of the Gateway API spec.
        ("/foo", replace_prefix("/xyz"), "/foo/bar", "/xyz/bar"),
        ("/foo", replace_prefix("/xyz/"), "/foo/bar", "/xyz/bar"),
        ("/foo/", replace_prefix("/xyz"), "/foo/bar", "/xyz/bar"),
        ("/foo/", replace_prefix("/xyz/"), "/foo/bar", "/xyz/bar"),
        ("/foo", replace_prefix("/xyz"), "/foo", "/xyz"),
        ("/foo", replace_prefix("/xyz"), "/foo/", "/xyz/"),
        ("/foo", replace_prefix("/"), "/foo/", "/"),
        ("/foo", replace_prefix("/"), "/foo", "/"),
    ];
    for (match_prefix, modifier, path, expected) in cases {
        let got = rewritten(vec![prefix(match_prefix)], modifier.clone(), path);
        assert_eq!(
            got, expected,
            "prefix {match_prefix}, {modifier}, path {path}"
        );
    }
    // A rule without matches consumed no prefix.
    assert_eq!(
        rewritten(vec![], replace_prefix("/api"), "/foo/bar"),
        "/api/foo/bar"
    );
    // With several matches, the prefix is the one of the match that was found.
    let two = || vec![prefix("/a"), prefix("/long/prefix")];
    assert_eq!(rewritten(two(), replace_prefix("/x"), "/a/1"), "/x/1");
    assert_eq!(
        rewritten(two(), replace_prefix("/x"), "/long/prefix/1"),
        "/x/1"
    );
}

// ----- 6. header modifiers -----

#[test]
fn header_ops() {
    let snapshot = single_listener(vec![route(
        "ns/r",
        &[],
        vec![json!({
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "set": [{"name": "X-Set", "value": "s"}],
                    "add": [{"name": "X-Add", "value": "1"}, {"name": "x-add", "value": "2"},
                            {"name": "X-Other", "value": "3"}],
                    "remove": ["X-Remove"],
                },
                // A second filter of the same kind merges into the first.
                {"type": "RequestHeaderModifier", "remove": ["x-second"]},
                {"type": "ResponseHeaderModifier", "add": [{"name": "X-Resp", "value": "r"}]},
            ],
            "backends": [{
                "weight": 1,
                "target": {"backend": "b"},
                "filters": [{"type": "RequestHeaderModifier", "remove": ["X-Backend"]}],
            }],
        })],
    )]);
    let rule = only_rule(&snapshot);
    let ops = &rule.request_headers;
    for name in [
        "x-set", "X-SET", "X-Set", "x-remove", "X-REMOVE", "x-Second",
    ] {
        assert_eq!(ops.action(name.as_bytes()), HeaderAction::Drop, "{name}");
    }
    for name in [
        "x-add",
        "X-Other",
        "x-backend",
        "x-resp",
        "content-type",
        "x-set2",
        "x-sec",
    ] {
        assert_eq!(ops.action(name.as_bytes()), HeaderAction::Keep, "{name}");
    }
    let appended = |ops: &HeaderOps, name: &str| -> Vec<String> {
        ops.appended_values(name.as_bytes())
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .collect()
    };
    assert_eq!(appended(ops, "x-add"), ["1", "2"]);
    assert_eq!(appended(ops, "X-ADD"), ["1", "2"]);
    assert_eq!(appended(ops, "x-other"), ["3"]);
    assert!(appended(ops, "x-set").is_empty());
    assert!(appended(ops, "x-none").is_empty());
    // Output keeps the configured spelling.
    assert_eq!(&*ops.set[0].name, b"X-Set");
    assert_eq!(&*ops.set[0].lower, b"x-set");

    assert_eq!(appended(&rule.response_headers, "x-resp"), ["r"]);
    assert_eq!(rule.response_headers.action(b"x-resp"), HeaderAction::Keep);

    let share = &rule.backends.shares[0];
    assert_eq!(
        share.request_headers.action(b"X-backend"),
        HeaderAction::Drop
    );
    assert_eq!(share.request_headers.action(b"x-set"), HeaderAction::Keep);
    assert!(share.response_headers.is_empty());
    assert!(HeaderOps::default().is_empty());
    assert!(!ops.is_empty());
}

// ----- 7. snapshot build -----

#[test]
fn build_errors_name_the_path() {
    let with_rule = |rule: Value| {
        config(vec![http_port(
            80,
            vec![listener("l", None, vec![route("ns/r", &[], vec![rule])])],
        )])
    };

    let error = build_error(&with_rule(rule("b", vec![regex("/api/(v1")])));
    assert!(
        error.contains("ports[0].listeners[0].routes[0].rules[0].matches[0].path"),
        "{error}"
    );
    assert!(error.contains("regular expression"), "{error}");

    let bad_header = json!({"headers": [
        {"name": "x", "value": {"type": "RegularExpression", "value": "[z-a]"}},
    ]});
    let error = build_error(&with_rule(rule("b", vec![bad_header])));
    assert!(
        error.contains("ports[0].listeners[0].routes[0].rules[0].matches[0].headers[0]"),
        "{error}"
    );

    let mut unknown = with_rule(json!({
        "backends": [
            {"weight": 1, "target": {"backend": "b"}},
            {"weight": 1, "target": {"backend": "ns/missing:80"}},
        ]
    }));
    unknown.backends.retain(|b| b.name == "b");
    let error = build_error(&unknown);
    assert!(
        error.contains("ports[0].listeners[0].routes[0].rules[0].backends[1]"),
        "{error}"
    );
    assert!(
        error.contains("unknown backend") && error.contains("ns/missing:80"),
        "{error}"
    );

    let issued = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
    let (good_chain, good_key) = (issued.cert.pem(), issued.signing_key.serialize_pem());
    let mut https: CompiledConfig = serde_json::from_value(json!({
        "schema_version": 1,
        "generation": 1,
        "ports": [{"port": 443, "protocol": "HTTPS", "listeners": [{
            "name": "tls", "certificates": ["ns/good", "ns/cert"],
            "routes": [route("ns/r", &[], vec![rule("b", vec![])])],
        }]}],
        "backends": [{"name": "b", "endpoints": ["127.0.0.1:8080"]}],
        "certificates": [
            {"name": "ns/good", "cert_chain_pem": good_chain, "private_key_pem": good_key},
            {
                "name": "ns/cert",
                "cert_chain_pem": GARBAGE_CHAIN,
                "private_key_pem": GARBAGE_KEY,
            },
        ],
    }))
    .unwrap();
    let error = build_error(&https);
    assert!(
        error.contains("certificates[1]") && error.contains("ns/cert"),
        "{error}"
    );

    // With the garbage certificate fixed, it builds and the listener knows both.
    https.certificates[1].cert_chain_pem = good_chain;
    https.certificates[1].private_key_pem = good_key;
    let snapshot = Snapshot::build(&https).unwrap();
    assert_eq!(snapshot.certificates.len(), 2);
    assert_eq!(
        snapshot.port(443).unwrap().listeners[0].certificates,
        [0, 1]
    );
}

#[test]
fn valid_config_builds_with_stat_keys() {
    let snapshot = Snapshot::build(&config(vec![
        http_port(
            8080,
            vec![listener(
                "second",
                Some("*.example.com"),
                vec![route("ns/r1", &[], vec![rule("b", vec![])])],
            )],
        ),
        http_port(
            80,
            vec![listener(
                "first",
                None,
                vec![
                    route("ns/r1", &[], vec![rule("b", vec![prefix("/1")])]),
                    route(
                        "ns/r2",
                        &["a.example.com"],
                        vec![
                            rule("b", vec![prefix("/2")]),
                            rule("c", vec![exact("/2/c")]),
                        ],
                    ),
                ],
            )],
        ),
    ]))
    .unwrap();
    assert_eq!(snapshot.generation, 1);
    // Ports are sorted for binary search.
    let ports: Vec<u16> = snapshot.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [80, 8080]);

    let keys: Vec<(&str, &str)> = snapshot
        .stat_keys
        .iter()
        .map(|(l, r)| (&**l, &**r))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("first", ""),
            ("first", "ns/r1"),
            ("first", "ns/r2"),
            ("second", ""),
            ("second", "ns/r1")
        ]
    );
    let key = |slot: u32| keys[slot as usize];

    let first = &snapshot.port(80).unwrap().listeners[0];
    assert_eq!(key(first.no_route_stat_slot), ("first", ""));
    assert_eq!(first.route_count(), 3);
    let slots: Vec<_> = first.rules.iter().map(|r| key(r.stat_slot)).collect();
    assert_eq!(
        slots,
        [("first", "ns/r1"), ("first", "ns/r2"), ("first", "ns/r2")]
    );
    let second = &snapshot.port(8080).unwrap().listeners[0];
    assert_eq!(key(second.no_route_stat_slot), ("second", ""));
    assert_eq!(key(second.rules[0].stat_slot), ("second", "ns/r1"));

    let found = find(&snapshot, "a.example.com", "GET", "/2/c", &[]).unwrap();
    assert_eq!(&*found.rule.route_name, "ns/r2");
    assert_eq!(key(found.rule.stat_slot), ("first", "ns/r2"));
}

/// Validation compiles exactly what the proxy compiles, so a config that validates always
/// builds. A `(?x)` pattern ending in a comment would swallow the appended `)$` anchor; it is
/// refused at validation rather than accepted there and refused at build.
#[test]
fn regexes_validate_exactly_as_they_build() {
    let header = json!({"headers": [
        {"name": "x", "value": {"type": "RegularExpression", "value": "(?x) 1 # one"}},
    ]});
    for m in [regex("(?x) /a # the a path"), header] {
        let config = config(vec![http_port(
            80,
            vec![listener(
                "l",
                None,
                vec![route("ns/r", &[], vec![rule("r", vec![m.clone()])])],
            )],
        )]);
        let error = portcullis_api::validate::validate(&config).expect_err(&m.to_string());
        assert!(
            error.message.contains("invalid regular expression"),
            "{m}: {error}"
        );
        assert!(Snapshot::build(&config).is_err(), "{m}");
    }
    // Extended mode without a trailing comment is fine on both sides.
    let m = regex("(?x) /a (/b)?");
    let config = config(vec![http_port(
        80,
        vec![listener(
            "l",
            None,
            vec![route("ns/r", &[], vec![rule("r", vec![m])])],
        )],
    )]);
    let snapshot = Snapshot::build(&config).unwrap();
    assert_eq!(
        lookup(&snapshot, HOST, "GET", "/a/b", &[]).as_deref(),
        Some("r")
    );
}

// ----- 8. scale -----

#[test]
fn ten_thousand_routes() {
    const N: usize = 10_000;
    let one_rule = |matches: Vec<Value>| {
        vec![json!({"matches": matches, "backends": [{"weight": 1, "target": {"backend": "b"}}]})]
    };

    let routes = (0..N)
        .map(|i| {
            route(
                &format!("ns/h{i}"),
                &[&format!("h{i}.example.com")],
                one_rule(vec![]),
            )
        })
        .collect();
    let snapshot = single_listener(routes);
    assert_eq!(snapshot.port(80).unwrap().listeners[0].route_count(), N);
    for i in [0, N / 2, N - 1] {
        let found = find(&snapshot, &format!("h{i}.example.com"), "GET", "/x", &[]).unwrap();
        assert_eq!(*found.rule.route_name, *format!("ns/h{i}"));
    }
    assert!(find(&snapshot, &format!("h{N}.example.com"), "GET", "/", &[]).is_none());

    let routes = (0..N)
        .map(|i| {
            route(
                &format!("ns/p{i}"),
                &[],
                one_rule(vec![prefix(&format!("/p{i}"))]),
            )
        })
        .collect();
    let snapshot = single_listener(routes);
    let last = N - 1;
    let found = find(&snapshot, HOST, "GET", &format!("/p{last}/x"), &[]).unwrap();
    assert_eq!(*found.rule.route_name, *format!("ns/p{last}"));
    let found = find(&snapshot, HOST, "GET", "/p999", &[]).unwrap();
    assert_eq!(&*found.rule.route_name, "ns/p999");
    assert!(find(&snapshot, HOST, "GET", &format!("/p{N}"), &[]).is_none());
}

// ----- 9. the hashed index agrees with a linear scan -----

#[test]
fn index_agrees_with_a_linear_scan() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let routes: Vec<Value> = (0..1 + rng.below(5))
            .map(|r| {
                let hostnames: Vec<&str> =
                    (0..rng.below(3)).map(|_| rng.pick(ROUTE_HOSTS)).collect();
                let rules = (0..1 + rng.below(3))
                    .map(|i| {
                        let matches = (0..rng.below(3)).map(|_| random_match(&mut rng)).collect();
                        rule(&format!("r{r}-{i}"), matches)
                    })
                    .collect();
                route(&format!("ns/r{r}"), &hostnames, rules)
            })
            .collect();
        let snapshot = single_listener(routes.clone());
        let listener = &snapshot.ports[0].listeners[0];
        let candidates = candidates(&routes);
        for _ in 0..40 {
            let host = rng.pick(REQUEST_HOSTS);
            let method = rng.pick(&["GET", "POST"]);
            let mut target = random_path(&mut rng);
            if rng.below(2) == 0 {
                target.push_str("?q=1");
            }
            let headers = ["", "x: 1\r\n", "x: 1\r\ny: 1\r\n"][rng.below(3)];
            let raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n");
            with_view(&raw, |view| {
                let found = listener
                    .find(host, view)
                    .map(|m| share_name(&snapshot, &m.rule.backends.shares[0]));
                let expected = linear_scan(&candidates, host, view);
                assert_eq!(
                    found.as_deref(),
                    expected,
                    "round {round}: {raw:?}\nroutes: {routes:#?}"
                );
            });
        }
    }
}
