//! Per-listener routing tables, built once per config generation and then only read.
//!
//! Lookup order follows the Gateway API precedence rules:
//! 1. hostname: the route hostname that matches the request host most specifically (exact,
//!    then longer wildcards, then routes without hostnames);
//! 2. path: Exact, then RegularExpression (implementation-specific, as in Envoy Gateway), then
//!    PathPrefix by declared length, the root prefix "/" last (after gRPC method-only
//!    matches, which GRPCRoute ranks below service matches);
//! 3. method match, then more header matches, then more query parameter matches;
//! 4. route order as compiled (oldest route, then "namespace/name"), then rule order.
//!
//! Exact paths and prefixes are hashed, so a lookup costs a handful of hash probes however
//! many routes a listener has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_api::config::{
    BackendTarget, Filter, HeaderModifier, HttpRoute, Listener, PathModifier, RouteRule,
    WeightedBackend,
};

use super::cors::CorsPolicy;
use super::host::HostPattern;
use super::matcher::{CompiledMatch, PathMatcher, RequestView, grpc_method_of, prefix_matches};
use super::stream_route::StreamRouteTable;
use super::{BuildContext, ConfigMap};

pub type EntryId = u32;

/// One (match, rule) pair: what a lookup returns.
#[derive(Debug)]
pub struct Entry {
    pub matcher: CompiledMatch,
    pub rule: u32,
}

/// Header edits of one RequestHeaderModifier or ResponseHeaderModifier filter.
#[derive(Debug, Default)]
pub struct HeaderOps {
    pub set: Vec<HeaderOp>,
    pub add: Vec<HeaderOp>,
    /// Lowercase names.
    pub remove: Vec<Box<[u8]>>,
}

#[derive(Debug)]
pub struct HeaderOp {
    /// Lowercase, for comparisons.
    pub lower: Box<[u8]>,
    /// As configured, for output.
    pub name: Box<[u8]>,
    pub value: Box<[u8]>,
}

/// What a filter does to one existing header.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderAction {
    Keep,
    /// Removed, or replaced by a `set` written later.
    Drop,
}

impl HeaderOps {
    pub fn compile(modifier: &HeaderModifier) -> Self {
        let op = |name: &str, value: &str| HeaderOp {
            lower: name.to_ascii_lowercase().into_bytes().into(),
            name: name.as_bytes().into(),
            value: value.as_bytes().into(),
        };
        Self {
            set: modifier.set.iter().map(|h| op(&h.name, &h.value)).collect(),
            add: modifier.add.iter().map(|h| op(&h.name, &h.value)).collect(),
            remove: modifier
                .remove
                .iter()
                .map(|n| n.to_ascii_lowercase().into_bytes().into())
                .collect(),
        }
    }

    fn merge(&mut self, other: HeaderOps) {
        self.set.extend(other.set);
        self.add.extend(other.add);
        self.remove.extend(other.remove);
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn action(&self, name: &[u8]) -> HeaderAction {
        let named = |lower: &[u8]| lower.eq_ignore_ascii_case(name);
        if self.remove.iter().any(|r| named(r)) || self.set.iter().any(|s| named(&s.lower)) {
            HeaderAction::Drop
        } else {
            HeaderAction::Keep
        }
    }

    /// Values `add` appends to an existing header of this name (Gateway API: "add" appends
    /// to the existing value, separated by a comma).
    pub fn appended_values(&self, name: &[u8]) -> impl Iterator<Item = &[u8]> {
        self.add
            .iter()
            .filter(move |a| a.lower.eq_ignore_ascii_case(name))
            .map(|a| &*a.value)
    }
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    Full(Box<[u8]>),
    /// Replaces the part of the path the rule's PathPrefix match consumed.
    Prefix(Box<[u8]>),
}

impl PathRewrite {
    fn compile(m: &PathModifier) -> Self {
        match m {
            PathModifier::ReplaceFullPath(p) => PathRewrite::Full(p.as_bytes().into()),
            PathModifier::ReplacePrefixMatch(p) => PathRewrite::Prefix(p.as_bytes().into()),
        }
    }

    /// Applies the rewrite to `path`, of which the first `matched_prefix_len` bytes were the
    /// matched prefix.
    pub fn apply(&self, path: &[u8], matched_prefix_len: usize, out: &mut Vec<u8>) {
        match self {
            PathRewrite::Full(p) => out.extend_from_slice(p),
            PathRewrite::Prefix(replacement) => {
                let rest = &path[matched_prefix_len.min(path.len())..];
                let replacement: &[u8] = replacement;
                if replacement.ends_with(b"/") && rest.starts_with(b"/") {
                    out.extend_from_slice(replacement);
                    out.extend_from_slice(&rest[1..]);
                } else {
                    out.extend_from_slice(replacement);
                    out.extend_from_slice(rest);
                }
                if out.is_empty() {
                    out.push(b'/');
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

#[derive(Debug)]
pub struct Rewrite {
    pub hostname: Option<Box<[u8]>>,
    pub path: Option<PathRewrite>,
}

/// One weighted share of a rule's traffic.
#[derive(Debug)]
pub struct BackendShare {
    /// Index into the snapshot's backends, or why the reference is invalid (answered 500).
    pub target: Result<u32, Arc<str>>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Default)]
pub struct BackendChoice {
    pub shares: Vec<BackendShare>,
    /// Running sums of the weights; share i covers [cumulative[i-1], cumulative[i]).
    pub cumulative: Vec<u64>,
}

impl BackendChoice {
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Maps a uniform random number to a share; zero-weight shares are never chosen. None
    /// when the rule has no backends or all weights are zero.
    pub fn pick(&self, random: u64) -> Option<&BackendShare> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let point = random % total;
        let index = self.cumulative.partition_point(|&c| c <= point);
        self.shares.get(index)
    }
}

#[derive(Debug)]
pub struct CompiledRule {
    pub route_name: Arc<str>,
    /// Index of this (listener, route) pair's request counters.
    pub stat_slot: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub cors: Option<Box<CorsPolicy>>,
    pub mirrors: Vec<MirrorTarget>,
    pub backends: BackendChoice,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Box<Retry>>,
}

/// A rule's retry policy (see [`portcullis_api::config::RetryPolicy`]).
#[derive(Debug)]
pub struct Retry {
    /// Response statuses retried; an attempt that got no response is retried regardless.
    pub codes: Box<[u16]>,
    pub attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    pub backoff: Duration,
}

/// How one attempt at a backend ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response head with this status arrived.
    Responded(u16),
    /// No response: the connect failed, the connection closed or reset before a response
    /// head, or the backend request timeout passed.
    Unanswered,
}

impl Retry {
    /// How long to wait before sending a request again after an attempt that ended with
    /// `outcome`, as retry number `retry` (1 for the first); None when the outcome is not
    /// retried, the attempts are spent, or the request's `deadline` would pass first.
    pub fn wait_before(
        &self,
        outcome: AttemptOutcome,
        retry: u32,
        deadline: Option<Instant>,
    ) -> Option<Duration> {
        let retried = match outcome {
            AttemptOutcome::Responded(status) => self.codes.contains(&status),
            AttemptOutcome::Unanswered => true,
        };
        if !retried || retry == 0 || retry > self.attempts {
            return None;
        }
        let wait = self
            .backoff
            .saturating_mul(1 << (retry - 1).min(MAX_BACKOFF_DOUBLINGS));
        match (deadline, Instant::now().checked_add(wait)) {
            (_, None) => None,
            (Some(deadline), Some(end)) if end >= deadline => None,
            _ => Some(wait),
        }
    }
}

/// Backoff stops growing after this many doublings (32 × the first wait).
const MAX_BACKOFF_DOUBLINGS: u32 = 5;

/// A RequestMirror filter: copies numerator / denominator of the rule's requests to the
/// backend at index `backend`.
#[derive(Debug, Clone, Copy)]
pub struct MirrorTarget {
    pub backend: u32,
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorTarget {
    /// Whether the request drawn as `random` is copied.
    pub fn samples(&self, random: u64) -> bool {
        self.numerator >= self.denominator
            || random % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }
}

/// The rules for one host group, indexed by path.
#[derive(Debug, Default)]
pub struct RuleIndex {
    exact: ConfigMap<Box<[u8]>, Vec<EntryId>>,
    regex: Vec<EntryId>,
    prefixes: ConfigMap<Box<[u8]>, Vec<EntryId>>,
    longest_prefix: usize,
    /// gRPC method-only matches by `/<method>`.
    grpc_methods: ConfigMap<Box<[u8]>, Vec<EntryId>>,
}

impl RuleIndex {
    fn insert(&mut self, id: EntryId, matcher: &CompiledMatch) {
        match &matcher.path {
            PathMatcher::Exact(p) => self.exact.entry(p.clone()).or_default().push(id),
            PathMatcher::Regex(_) => self.regex.push(id),
            PathMatcher::GrpcMethod { suffix } => self
                .grpc_methods
                .entry(suffix.clone())
                .or_default()
                .push(id),
            PathMatcher::Prefix { key, .. } => {
                self.longest_prefix = self.longest_prefix.max(key.len());
                self.prefixes.entry(key.clone()).or_default().push(id);
            }
        }
    }

    fn sort(&mut self, entries: &[Entry]) {
        let key = |id: &EntryId| entries[*id as usize].matcher.precedence();
        for bucket in self
            .exact
            .values_mut()
            .chain(self.prefixes.values_mut())
            .chain(self.grpc_methods.values_mut())
        {
            bucket.sort_by_key(key);
        }
        self.regex.sort_by_key(key);
    }

    fn find(&self, entries: &[Entry], request: &RequestView<'_>) -> Option<EntryId> {
        let first_match = |bucket: &[EntryId]| {
            bucket
                .iter()
                .copied()
                .find(|id| entries[*id as usize].matcher.matches_conditions(request))
        };
        if !self.exact.is_empty()
            && let Some(found) = self.exact.get(request.path).and_then(|b| first_match(b))
        {
            return Some(found);
        }
        for id in &self.regex {
            let matcher = &entries[*id as usize].matcher;
            if let PathMatcher::Regex(regex) = &matcher.path
                && regex.is_match(request.path)
                && matcher.matches_conditions(request)
            {
                return Some(*id);
            }
        }
        // Candidate keys, longest first: the whole path, then the path cut before each '/';
        // the gRPC method-only matches come after every key but the root's.
        let path = request.path;
        let mut end = path.len().min(self.longest_prefix);
        if end < path.len() && path[end] != b'/' {
            // Shorten to the last element boundary at or before the longest key.
            end = path[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
        }
        if !self.prefixes.is_empty() {
            while end > 0 {
                let candidate = &path[..end];
                if prefix_matches(candidate, path)
                    && let Some(found) = self.prefixes.get(candidate).and_then(|b| first_match(b))
                {
                    return Some(found);
                }
                end = path[..end].iter().rposition(|&b| b == b'/').unwrap_or(0);
            }
        }
        if !self.grpc_methods.is_empty()
            && let Some(found) = grpc_method_of(path)
                .and_then(|method| self.grpc_methods.get(method))
                .and_then(|b| first_match(b))
        {
            return Some(found);
        }
        if !prefix_matches(b"", path) {
            return None;
        }
        self.prefixes.get(&[][..]).and_then(|b| first_match(b))
    }
}

/// One Gateway listener's routes.
#[derive(Debug)]
pub struct ListenerTable {
    pub name: Arc<str>,
    pub hostname: HostPattern,
    /// Indices into the snapshot's certificates (HTTPS, and TLS listeners that terminate).
    pub certificates: Vec<u32>,
    /// TLS ports: the client's TLS stream goes to the backend unopened.
    pub passthrough: bool,
    /// TLS ports: the routes, chosen by SNI.
    pub stream_routes: StreamRouteTable,
    /// Counters for requests on this listener that matched no route.
    pub no_route_stat_slot: u32,
    pub entries: Vec<Entry>,
    pub rules: Vec<CompiledRule>,
    /// Position in `exact_host_indexes` of each exact hostname's rules. The indexes live apart
    /// so the map's buckets stay small: a 10 000-host build spent a sixth of its time in cache
    /// misses writing 168-byte buckets into a map of 1.7 MB.
    exact_hosts: ConfigMap<Box<str>, u32>,
    exact_host_indexes: Vec<RuleIndex>,
    /// Longest suffix first.
    wildcard_hosts: Vec<(HostPattern, RuleIndex)>,
    any_host: RuleIndex,
}

/// What a successful lookup found.
pub struct RouteMatch<'t> {
    pub rule: &'t CompiledRule,
    pub entry: &'t Entry,
}

impl ListenerTable {
    /// Builds a listener's table; `context` resolves names and hands out counter slots.
    pub fn build<'c>(
        listener: &'c Listener,
        context: &mut BuildContext<'c>,
    ) -> Result<Self, String> {
        let routes = &listener.routes;
        let rules = routes.iter().map(|r| r.rules.len()).sum();
        let entries = routes
            .iter()
            .flat_map(|r| &r.rules)
            .map(|rule| rule.matches.len().max(1))
            .sum();
        // At most this many distinct exact hostnames: sized once instead of rehashed.
        let exact_hosts = routes
            .iter()
            .flat_map(|r| &r.hostnames)
            .filter(|h| !h.starts_with('*'))
            .count();
        let mut table = ListenerTable {
            name: listener.name.as_str().into(),
            hostname: HostPattern::parse(listener.hostname.as_deref()),
            certificates: listener
                .certificates
                .iter()
                .filter_map(|c| context.certificates.get(c.as_str()).copied())
                .collect(),
            passthrough: listener.passthrough,
            stream_routes: StreamRouteTable::build(
                &listener.name,
                &listener.stream_routes,
                context,
            )?,
            no_route_stat_slot: context.stat_slot(&listener.name, ""),
            entries: Vec::with_capacity(entries),
            rules: Vec::with_capacity(rules),
            exact_hosts: ConfigMap::with_capacity_and_hasher(exact_hosts, Default::default()),
            exact_host_indexes: Vec::with_capacity(exact_hosts),
            wildcard_hosts: Vec::new(),
            any_host: RuleIndex::default(),
        };
        for (route_index, route) in routes.iter().enumerate() {
            table
                .add_route(&listener.name, route, context)
                .map_err(|e| format!("routes[{route_index}] ({:?}): {e}", route.name))?;
        }
        table
            .wildcard_hosts
            .sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.specificity()));
        let entries = &table.entries;
        for index in &mut table.exact_host_indexes {
            index.sort(entries);
        }
        for (_, index) in &mut table.wildcard_hosts {
            index.sort(entries);
        }
        table.any_host.sort(entries);
        Ok(table)
    }

    fn add_route<'c>(
        &mut self,
        listener_name: &'c str,
        route: &'c HttpRoute,
        context: &mut BuildContext<'c>,
    ) -> Result<(), String> {
        let slot = context.stat_slot(listener_name, &route.name);
        let route_name = context.slot_route_name(slot);
        let patterns = HostPattern::all_of(&route.hostnames);
        for (rule_index, rule) in route.rules.iter().enumerate() {
            let compiled = compile_rule(rule, route_name.clone(), slot, &context.backends)
                .map_err(|e| format!("rules[{rule_index}]: {e}"))?;
            let rule_id = self.rules.len() as u32;
            self.rules.push(compiled);
            let first_entry = self.entries.len();
            if rule.matches.is_empty() {
                self.entries.push(Entry {
                    matcher: CompiledMatch::catch_all(),
                    rule: rule_id,
                });
            } else {
                for m in &rule.matches {
                    let matcher = CompiledMatch::compile(m)
                        .map_err(|e| format!("rules[{rule_index}]: {e}"))?;
                    self.entries.push(Entry {
                        matcher,
                        rule: rule_id,
                    });
                }
            }
            // Each host's index gets the rule's entries in entry order, as the lookup's
            // tie-break (route order, then rule order) expects.
            for pattern in &patterns {
                let (index, entries) = self.index_for(pattern);
                for (id, entry) in entries.iter().enumerate().skip(first_entry) {
                    index.insert(id as EntryId, &entry.matcher);
                }
            }
        }
        Ok(())
    }

    /// The rule index of a host pattern, created when the pattern is new, and the entries it
    /// points into.
    fn index_for(&mut self, pattern: &HostPattern) -> (&mut RuleIndex, &[Entry]) {
        let index = match pattern {
            HostPattern::Exact(host) => {
                let position = match self.exact_hosts.get(host) {
                    Some(position) => *position as usize,
                    None => {
                        let position = self.exact_host_indexes.len();
                        self.exact_hosts.insert(host.clone(), position as u32);
                        self.exact_host_indexes.push(RuleIndex::default());
                        position
                    }
                };
                &mut self.exact_host_indexes[position]
            }
            HostPattern::Any => &mut self.any_host,
            HostPattern::Wildcard(_) => {
                let position = self.wildcard_hosts.iter().position(|(p, _)| p == pattern);
                let position = match position {
                    Some(p) => p,
                    None => {
                        self.wildcard_hosts
                            .push((pattern.clone(), RuleIndex::default()));
                        self.wildcard_hosts.len() - 1
                    }
                };
                &mut self.wildcard_hosts[position].1
            }
        };
        (index, &self.entries)
    }

    /// Finds the rule for a request to `host` (normalized).
    pub fn find(&self, host: &str, request: &RequestView<'_>) -> Option<RouteMatch<'_>> {
        let found = self
            .exact_hosts
            .get(host)
            .and_then(|position| self.exact_host_indexes.get(*position as usize))
            .and_then(|index| index.find(&self.entries, request))
            .or_else(|| {
                self.wildcard_hosts
                    .iter()
                    .filter(|(pattern, _)| pattern.matches(host))
                    .find_map(|(_, index)| index.find(&self.entries, request))
            })
            .or_else(|| self.any_host.find(&self.entries, request))?;
        let entry = &self.entries[found as usize];
        Some(RouteMatch {
            rule: &self.rules[entry.rule as usize],
            entry,
        })
    }

    pub fn route_count(&self) -> usize {
        self.rules.len()
    }
}

fn compile_rule(
    rule: &RouteRule,
    route_name: Arc<str>,
    stat_slot: u32,
    backend_index: &ConfigMap<&str, u32>,
) -> Result<CompiledRule, String> {
    let mut compiled = CompiledRule {
        route_name,
        stat_slot,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        redirect: None,
        rewrite: None,
        cors: None,
        mirrors: Vec::new(),
        backends: BackendChoice::default(),
        request_timeout: rule
            .timeouts
            .request_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        backend_timeout: rule
            .timeouts
            .backend_request_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        retry: rule.retry.as_ref().map(|retry| {
            Box::new(Retry {
                codes: retry.codes.clone().into_boxed_slice(),
                attempts: retry.attempts,
                backoff: Duration::from_millis(retry.backoff_ms),
            })
        }),
    };
    for filter in &rule.filters {
        match filter {
            Filter::RequestHeaderModifier(m) => {
                compiled.request_headers.merge(HeaderOps::compile(m))
            }
            Filter::ResponseHeaderModifier(m) => {
                compiled.response_headers.merge(HeaderOps::compile(m))
            }
            Filter::RequestRedirect(r) => {
                compiled.redirect = Some(Redirect {
                    scheme: r.scheme.as_deref().map(Into::into),
                    hostname: r.hostname.as_deref().map(Into::into),
                    port: r.port,
                    path: r.path.as_ref().map(PathRewrite::compile),
                    status: r.status_code,
                })
            }
            Filter::UrlRewrite(r) => {
                compiled.rewrite = Some(Rewrite {
                    hostname: r.hostname.as_ref().map(|h| h.as_bytes().into()),
                    path: r.path.as_ref().map(PathRewrite::compile),
                })
            }
            Filter::Cors(c) => compiled.cors = Some(Box::new(CorsPolicy::compile(c)?)),
            Filter::RequestMirror(m) => compiled.mirrors.push(MirrorTarget {
                backend: *backend_index
                    .get(m.backend.as_str())
                    .ok_or_else(|| format!("unknown backend {:?}", m.backend))?,
                numerator: m.numerator,
                denominator: m.denominator,
            }),
        }
    }
    compiled.backends = backend_choice(&rule.backends, backend_index)?;
    Ok(compiled)
}

/// The weighted shares of `backends`, with their per-backend header filters.
pub fn backend_choice(
    backends: &[WeightedBackend],
    backend_index: &ConfigMap<&str, u32>,
) -> Result<BackendChoice, String> {
    let mut choice = BackendChoice {
        shares: Vec::with_capacity(backends.len()),
        cumulative: Vec::with_capacity(backends.len()),
    };
    let mut running = 0u64;
    for backend in backends {
        let target = match &backend.target {
            BackendTarget::Backend(name) => match backend_index.get(name.as_str()) {
                Some(index) => Ok(*index),
                None => return Err(format!("unknown backend {name:?}")),
            },
            BackendTarget::Invalid(reason) => Err(Arc::from(reason.as_str())),
        };
        let mut share = BackendShare {
            target,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        };
        for filter in &backend.filters {
            match filter {
                Filter::RequestHeaderModifier(m) => {
                    share.request_headers.merge(HeaderOps::compile(m))
                }
                Filter::ResponseHeaderModifier(m) => {
                    share.response_headers.merge(HeaderOps::compile(m))
                }
                _ => return Err("only header modifiers are allowed on a backend".into()),
            }
        }
        running += u64::from(backend.weight);
        choice.cumulative.push(running);
        choice.shares.push(share);
    }
    Ok(choice)
}

#[cfg(test)]
mod tests;
