//! The `route_match` target: the route matcher against a brute-force reference.

use std::cell::OnceCell;

use portcullis_api::CompiledConfig;
use portcullis_api::config::Listener;

use super::request_head::default_limits;
use crate::http::request::{self, RequestHead};
use crate::http::{HeaderKind, HeaderSpan};
use crate::route::Snapshot;
use crate::route::host::{HostPattern, MAX_HOST_LEN, normalize};
use crate::route::matcher::{PathMatcher, RequestView};
use crate::route::table::{EntryId, ListenerTable};

/// The routes the matcher is fuzzed against: exact and wildcard hostnames on routes and
/// listeners, exact, prefix, regex and gRPC method paths, header, query and method conditions.
pub(super) const ROUTES_CONFIG: &str = r#"{
  "schema_version": 1,
  "generation": 1,
  "gateway": {"namespace": "fuzz", "name": "routes"},
  "ports": [{"port": 80, "protocol": "HTTP", "listeners": [
    {"name": "any", "routes": [
      {"name": "fuzz/exact-host", "hostnames": ["exact.test", "Mixed.Case.test"], "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/"}},
                     {"path": {"type": "PathPrefix", "value": "/a"}}],
         "backends": [{"weight": 1, "target": {"backend": "b"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b/"}},
                     {"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}],
         "backends": [{"weight": 1, "target": {"backend": "b"}}]}
      ]},
      {"name": "fuzz/wild", "hostnames": ["*.test", "*.sub.test"], "rules": [
        {"matches": [{"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/(x|y)+/.*"},
                      "headers": [{"name": "X-Mode", "value": {"type": "Exact", "value": "on"}}]}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a//b"}},
                     {"path": {"type": "PathPrefix", "value": "/a/b/c/"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                      "query_params": [{"name": "q", "value": {"type": "Exact", "value": "1"}}]}]}
      ]},
      {"name": "fuzz/any", "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                      "headers": [{"name": "X-Version", "value": {"type": "Exact", "value": "2"}},
                                  {"name": "x-version", "value": {"type": "Exact", "value": "3"}}],
                      "query_params": [{"name": "v", "value": {"type": "RegularExpression", "value": "[0-9]+"}}]}]},
        {"matches": [{"path": {"type": "Exact", "value": "/exact"}, "method": "POST"},
                     {"path": {"type": "Exact", "value": "/exact"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/foo/"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/foo"}, "method": "PUT"}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/foo/bar"},
                      "headers": [{"name": "h", "value": {"type": "RegularExpression", "value": "a.*"}}]}]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/r[a-z]*/?.*"},
                      "method": "DELETE"}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/%2F"}},
                     {"path": {"type": "Exact", "value": "/foo/bar/"}},
                     {"path": {"type": "PathPrefix", "value": "/long/path/with/many/elements"}}]}
      ]},
      {"name": "fuzz/grpc", "hostnames": ["grpc.test"], "rules": [
        {"matches": [{"path": {"type": "GrpcMethod", "value": "Get"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/pkg.Svc/"}}]},
        {"matches": [{"path": {"type": "GrpcMethod", "value": "Get"},
                      "headers": [{"name": "x-mode", "value": {"type": "Exact", "value": "on"}}]}]},
        {"matches": [{"path": {"type": "Exact", "value": "/pkg.Svc/Get"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
      ]},
      {"name": "fuzz/empty", "rules": []},
      {"name": "fuzz/catch", "hostnames": ["catch.test"], "rules": [{}]}
    ]},
    {"name": "wild-listener", "hostname": "*.example.com", "routes": [
      {"name": "fuzz/w1", "hostnames": ["a.example.com", "*.b.example.com"], "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
      ]},
      {"name": "fuzz/w2", "rules": [
        {"matches": [{"path": {"type": "Exact", "value": "/only"}},
                     {"path": {"type": "PathPrefix", "value": "/x"},
                      "query_params": [{"name": "a", "value": {"type": "RegularExpression", "value": "b|c"}},
                                       {"name": "a", "value": {"type": "Exact", "value": "ignored"}}]}]}
      ]}
    ]},
    {"name": "exact-listener", "hostname": "exact.example.com", "routes": [
      {"name": "fuzz/e1", "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/e"}}]}]}
    ]}
  ]}],
  "backends": [{"name": "b", "endpoints": ["127.0.0.1:9"]}]
}"#;

struct RouteFixture {
    snapshot: Snapshot,
    /// Per listener (config order), per entry: the host patterns its route was indexed under.
    entry_hosts: Vec<Vec<Vec<HostPattern>>>,
}

impl RouteFixture {
    fn new() -> Self {
        let config: CompiledConfig = serde_json::from_str(ROUTES_CONFIG)
            .unwrap_or_else(|e| panic!("the route fixture does not decode: {e}"));
        let snapshot = Snapshot::build(&config)
            .unwrap_or_else(|e| panic!("the route fixture does not build: {e}"));
        let entry_hosts = config.ports[0]
            .listeners
            .iter()
            .map(entry_host_patterns)
            .collect();
        Self {
            snapshot,
            entry_hosts,
        }
    }
}

/// The host patterns of each entry, in the order `ListenerTable::build` creates entries.
fn entry_host_patterns(listener: &Listener) -> Vec<Vec<HostPattern>> {
    let mut out = Vec::new();
    for route in &listener.routes {
        let patterns = HostPattern::all_of(&route.hostnames);
        for rule in &route.rules {
            for _ in 0..rule.matches.len().max(1) {
                out.push(patterns.clone());
            }
        }
    }
    out
}

thread_local! {
    static ROUTES: OnceCell<RouteFixture> = const { OnceCell::new() };
}

/// Matches a request against the fixed table. The input is a request head if it parses as
/// one, else `method\0host\0target\0name\0value\0…`. The result must be deterministic and
/// equal to a brute-force reference of the precedence rules.
pub fn route_match(data: &[u8]) {
    let mut head = RequestHead::default();
    let limits = default_limits();
    let parsed = request::parse(data, &limits, &mut head) == Ok(true);
    let mut spans = Vec::new();
    let (view, host) = if parsed {
        let view = RequestView {
            method: head.method(data),
            path: head.path(data),
            query: head.query(data),
            buf: data,
            headers: &head.headers,
        };
        (view, head.host(data))
    } else {
        let base = data.as_ptr() as usize;
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let mut fields = data.split(|&b| b == 0);
        let method = fields.next().unwrap_or_default();
        let host = fields.next().unwrap_or_default();
        let target = fields.next().unwrap_or_default();
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], Some(&target[q + 1..])),
            None => (target, None),
        };
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            spans.push(HeaderSpan {
                name: range(name),
                value: range(value),
                kind: HeaderKind::classify(name),
            });
        }
        let view = RequestView {
            method,
            path,
            query,
            buf: data,
            headers: &spans,
        };
        (view, host)
    };
    let mut host_buf = [0u8; MAX_HOST_LEN + 1];
    let host = normalize(host, &mut host_buf).unwrap_or("");

    ROUTES.with(|fixture| {
        let fixture = fixture.get_or_init(RouteFixture::new);
        let Some(port) = fixture.snapshot.port(80) else {
            panic!("the fixture port is missing");
        };
        let Some(listener) = port.select(host) else {
            // The fixture has a listener without hostname: every host selects one.
            panic!("no listener for host {host:?}");
        };
        let index = port
            .listeners
            .iter()
            .position(|l| std::ptr::eq(l, listener))
            .unwrap_or(usize::MAX);
        let expected_listener = reference_listener(&port.listeners, host);
        assert_eq!(index, expected_listener, "listener for host {host:?}");

        let find = || {
            listener.find(host, &view).map(|found| {
                let id = listener
                    .entries
                    .iter()
                    .position(|e| std::ptr::eq(e, found.entry))
                    .unwrap_or(usize::MAX);
                assert!(
                    std::ptr::eq(found.rule, &listener.rules[found.entry.rule as usize]),
                    "rule does not belong to the entry"
                );
                id
            })
        };
        let found = find();
        assert_eq!(found, find(), "lookup is not deterministic");
        let expected = reference_find(listener, &fixture.entry_hosts[index], host, &view);
        assert_eq!(
            found,
            expected,
            "host {host:?} method {:?} path {:?} query {:?}",
            String::from_utf8_lossy(view.method),
            String::from_utf8_lossy(view.path),
            view.query.map(String::from_utf8_lossy),
        );
    });
}

/// The listener for `host`: exact hostname, else the longest matching wildcard, else none.
fn reference_listener(listeners: &[ListenerTable], host: &str) -> usize {
    let rank = |p: &HostPattern| match p {
        HostPattern::Exact(_) => 2,
        HostPattern::Wildcard(_) => 1,
        HostPattern::Any => 0,
    };
    let mut best: Option<(usize, (u8, usize))> = None;
    for (i, listener) in listeners.iter().enumerate() {
        let pattern = &listener.hostname;
        if pattern.matches(host) {
            let key = (rank(pattern), pattern.specificity());
            if best.is_none_or(|(_, b)| key > b) {
                best = Some((i, key));
            }
        }
    }
    best.map_or(usize::MAX, |(i, _)| i)
}

/// Brute force: the most specific host group with any matching entry, and in it the entry
/// first by path kind (exact, regex, longer prefixes, gRPC methods, the root prefix), then by
/// the match's precedence, then by configuration order.
fn reference_find(
    listener: &ListenerTable,
    entry_hosts: &[Vec<HostPattern>],
    host: &str,
    view: &RequestView<'_>,
) -> Option<usize> {
    assert_eq!(entry_hosts.len(), listener.entries.len(), "fixture entries");
    let mut wildcards: Vec<&HostPattern> = entry_hosts
        .iter()
        .flatten()
        .filter(|p| matches!(p, HostPattern::Wildcard(_)) && p.matches(host))
        .collect();
    wildcards.sort_by_key(|p| std::cmp::Reverse(p.specificity()));
    wildcards.dedup();
    let exact = HostPattern::Exact(host.into());
    let groups = std::iter::once(&exact)
        .chain(wildcards)
        .chain(std::iter::once(&HostPattern::Any));
    for group in groups {
        let best = listener
            .entries
            .iter()
            .enumerate()
            .filter(|(id, entry)| entry_hosts[*id].contains(group) && entry.matcher.matches(view))
            .min_by_key(|(id, entry)| {
                let (kind, prefix_len) = match &entry.matcher.path {
                    PathMatcher::Exact(_) => (0, 0),
                    PathMatcher::Regex(_) => (1, 0),
                    PathMatcher::Prefix { key, .. } if !key.is_empty() => (2, key.len()),
                    PathMatcher::GrpcMethod { .. } => (3, 0),
                    PathMatcher::Prefix { .. } => (4, 0),
                };
                (
                    kind,
                    std::cmp::Reverse(prefix_len),
                    entry.matcher.precedence(),
                    *id as EntryId,
                )
            });
        if let Some((id, _)) = best {
            return Some(id);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::fuzzing::tests::replay;

    #[test]
    fn fuzzing_route_match_replays() {
        replay("route_match");
    }
}
