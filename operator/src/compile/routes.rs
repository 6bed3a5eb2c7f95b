//! HTTPRoutes: which listeners each parentRef attaches to, and the route's rules translated
//! into the config model. GRPCRoutes (`grpc_routes`) become the same rules and attach here,
//! in one pass with HTTPRoutes.
//!
//! A route is translated once; an attachment pairs it with the hostnames it serves on one
//! listener. Invalid rules are dropped and reported (`PartiallyInvalid`), invalid backendRefs
//! keep their weight share and answer 500 (`ResolvedRefs=False`), and a route whose every rule
//! is invalid is not accepted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

use kube::ResourceExt;
use portcullis_api::config::{
    Backend, BackendTarget, Cors, DEFAULT_CORS_MAX_AGE_SECONDS, Filter, HeaderMatch,
    HeaderModifier, HeaderValue, MAX_RETRY_ATTEMPTS, PathMatch, PathModifier, QueryParamMatch,
    RequestMirror, RequestRedirect, RetryPolicy, RouteMatch, RouteRule, RuleTimeouts, StringMatch,
    UrlRewrite, WeightedBackend,
};
use portcullis_api::gateway_api::grpcroute::GrpcRoute;
use portcullis_api::gateway_api::httproute::*;
use portcullis_api::validate::validate_rule;

use super::backend_tls;
use super::backends::{self, BackendRef, Referrer, Speaks};
use super::conditions::{Condition, Status, reasons, types};
use super::gateways::{GRPC_ROUTE, GatewayState, HTTP_ROUTE, ListenerState, Problem};
use super::listener_sets::LISTENER_SET;
use super::{
    GATEWAY_GROUP, Index, ObjectKey, ParentRef, RouteOutput, RouteParentOutput, age, generation,
    grpc_routes, hostnames,
};

/// Copies another route kind's generated parentRef type into the HTTPRoute one (the same
/// fields with the same meaning, generated apart).
macro_rules! parent_refs {
    ($refs:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| HttpRouteParentRefs {
                group: p.group.clone(),
                kind: p.kind.clone(),
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                port: p.port,
                section_name: p.section_name.clone(),
            })
            .collect()
    };
}
pub(crate) use parent_refs;

/// Translates a RequestHeaderModifier or ResponseHeaderModifier (rule-level and
/// backend-level filters are distinct generated types of the same shape).
macro_rules! header_modifier {
    ($m:expr) => {
        HeaderModifier {
            set: $m
                .set
                .iter()
                .flatten()
                .map(|h| HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            add: $m
                .add
                .iter()
                .flatten()
                .map(|h| HeaderValue {
                    name: h.name.clone(),
                    value: h.value.clone(),
                })
                .collect(),
            remove: $m.remove.clone().unwrap_or_default(),
        }
    };
}

/// A route accepted on one listener.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub route: ObjectKey,
    /// The route's kind (HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute).
    pub kind: &'static str,
    /// Effective hostnames on this listener; empty: any host the listener accepts.
    pub hostnames: Vec<String>,
    pub translated: Rc<TranslatedRoute>,
}

/// A route's rules in the config model, with the backends they use.
#[derive(Debug, Clone, Default)]
pub struct TranslatedRoute {
    pub rules: Vec<RouteRule>,
    pub backends: Vec<Backend>,
    /// ResolvedRefs=False: the first unresolved backendRef.
    pub unresolved: Option<Problem>,
    /// Rules left out, with why.
    pub dropped: Vec<String>,
    /// Accepted=False: no rule could be implemented.
    pub rejected: Option<Problem>,
    /// BackendTLSPolicy targets that govern the backends used (for the policies' status).
    pub tls_targets: Vec<backend_tls::Target>,
}

impl TranslatedRoute {
    /// The config target for a resolved backendRef, keeping the backend (once) or, when it did
    /// not resolve, the first problem for ResolvedRefs.
    pub fn target(&mut self, resolved: Result<Backend, Problem>) -> BackendTarget {
        match resolved {
            Ok(backend) => {
                let name = backend.name.clone();
                if !self.backends.iter().any(|b| b.name == name) {
                    self.backends.push(backend);
                }
                BackendTarget::Backend(name)
            }
            Err((reason, message)) => {
                if self.unresolved.is_none() {
                    self.unresolved = Some((reason, message.clone()));
                }
                BackendTarget::Invalid(message)
            }
        }
    }

    /// [`Self::target`] for a backend the proxy speaks HTTP to, under the BackendTLSPolicy
    /// governing its Service port. A policy that cannot be applied makes the backend fail
    /// with a 5xx; the reference itself stays resolved.
    pub fn http_target(
        &mut self,
        index: &Index<'_>,
        reference: &BackendRef<'_>,
        route_namespace: &str,
        resolved: Result<Backend, Problem>,
    ) -> BackendTarget {
        let (Ok(backend), Some(port)) = (&resolved, reference.port) else {
            return self.target(resolved);
        };
        let service = ObjectKey::new(
            reference.namespace.unwrap_or(route_namespace),
            reference.name,
        );
        let port_name = backend_tls::port_name(index, &service, port);
        let Some(target) = index.backend_tls.target_for(&service, port_name.as_deref()) else {
            if backends::expects_tls(index, &service, port) {
                return self.target(Err((
                    reasons::UNSUPPORTED_PROTOCOL,
                    format!(
                        "Service {service} port {port} expects TLS (appProtocol) and no \
                         BackendTLSPolicy says how to verify it"
                    ),
                )));
            }
            return self.target(resolved);
        };
        if !self.tls_targets.contains(&target) {
            self.tls_targets.push(target.clone());
        }
        match index.backend_tls.secure(backend.clone(), &target) {
            Ok(secured) => self.target(Ok(secured)),
            Err(why) => BackendTarget::Invalid(why),
        }
    }
}

/// Route statuses of the HTTP route kinds.
#[derive(Debug, Default)]
pub struct HttpRouteOutputs {
    pub http_routes: BTreeMap<ObjectKey, RouteOutput>,
    pub grpc_routes: BTreeMap<ObjectKey, RouteOutput>,
}

/// Attaches every HTTPRoute and GRPCRoute to the listeners its parentRefs select and returns
/// route statuses. Both kinds go through one pass in tie-break order (oldest first, then
/// namespace/name), because an HTTPRoute and a GRPCRoute must not share a hostname on a
/// listener: the older keeps it (see [`cross_serving_conflict`]).
pub fn attach_http_routes(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
) -> HttpRouteOutputs {
    enum Route<'a> {
        Http(&'a HttpRoute),
        Grpc(&'a GrpcRoute),
    }
    let mut routes: Vec<(_, &str, Route<'_>)> = index
        .input
        .http_routes
        .iter()
        .map(|r| (age(r), HTTP_ROUTE, Route::Http(r)))
        .chain(
            index
                .input
                .grpc_routes
                .iter()
                .map(|r| (age(r), GRPC_ROUTE, Route::Grpc(r))),
        )
        .collect();
    routes.sort_by(|(a, a_kind, _), (b, b_kind, _)| a.cmp(b).then_with(|| a_kind.cmp(b_kind)));
    let mut out = HttpRouteOutputs::default();
    for (_, _, route) in routes {
        match route {
            Route::Http(route) => {
                let spec = RouteSpec {
                    key: ObjectKey::of(route),
                    kind: HTTP_ROUTE,
                    generation: generation(route),
                    hostnames: route.spec.hostnames.as_deref().unwrap_or_default(),
                    parent_refs: route.spec.parent_refs.as_deref().unwrap_or_default(),
                };
                if let Some(output) =
                    attach_route(index, gateways, &spec, || translate(index, route))
                {
                    out.http_routes.insert(spec.key, output);
                }
            }
            Route::Grpc(route) => {
                if let Some(output) = grpc_routes::attach(index, gateways, route) {
                    out.grpc_routes.insert(ObjectKey::of(route), output);
                }
            }
        }
    }
    out
}

/// What attachment needs of a route of any kind.
pub struct RouteSpec<'r> {
    pub key: ObjectKey,
    /// HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute: a listener must list it among its
    /// supported kinds.
    pub kind: &'static str,
    pub generation: i64,
    pub hostnames: &'r [String],
    pub parent_refs: &'r [HttpRouteParentRefs],
}

/// Attaches one route to the listeners its parentRefs select. `translate` runs once, when
/// the first parentRef names one of our Gateways. None when no parentRef does.
pub fn attach_route(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
    route: &RouteSpec<'_>,
    translate: impl FnOnce() -> TranslatedRoute,
) -> Option<RouteOutput> {
    let key = &route.key;
    let generation = route.generation;
    let mut translate = Some(translate);
    let mut translated: Option<Rc<TranslatedRoute>> = None;
    let mut parents = Vec::new();
    for parent in route.parent_refs {
        let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
        let kind = parent.kind.as_deref().unwrap_or("Gateway");
        if group != GATEWAY_GROUP {
            continue;
        }
        let parent_key = ObjectKey::new(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone()),
            parent.name.clone(),
        );
        // Only the listeners of the object the parentRef names: a Gateway's own, or one
        // ListenerSet's.
        let target = match kind {
            "Gateway" => gateways
                .get_mut(&parent_key)
                .map(|g| (&mut g.listeners, None)),
            LISTENER_SET => gateways
                .values_mut()
                .flat_map(|g| g.listener_sets.iter_mut())
                .find(|set| set.key == parent_key)
                .map(|set| (&mut set.listeners, set.refused.clone())),
            _ => None,
        };
        let Some((listeners, refused)) = target else {
            continue; // not a parent of ours: not ours to report on
        };
        let translation = match (&translated, translate.take()) {
            (Some(done), _) => done.clone(),
            (None, Some(translate)) => translated.insert(Rc::new(translate())).clone(),
            (None, None) => continue,
        };
        let accepted = match refused {
            Some((_, why)) => Condition::new(
                types::ACCEPTED,
                Status::False,
                reasons::NO_MATCHING_PARENT,
                format!("ListenerSet {parent_key} is not attached to its Gateway: {why}"),
                generation,
            ),
            None => attach(index, listeners, route, parent, &translation),
        };
        let mut conditions = vec![accepted];
        conditions.push(match &translation.unresolved {
            Some((reason, message)) => Condition::new(
                types::RESOLVED_REFS,
                Status::False,
                reason,
                message.clone(),
                generation,
            ),
            None => Condition::new(
                types::RESOLVED_REFS,
                Status::True,
                reasons::RESOLVED_REFS,
                "all backendRefs are resolved",
                generation,
            ),
        });
        if !translation.dropped.is_empty() && translation.rejected.is_none() {
            conditions.push(Condition::new(
                types::PARTIALLY_INVALID,
                Status::True,
                reasons::UNSUPPORTED_VALUE,
                format!("Dropped Rule(s): {}", translation.dropped.join("; ")),
                generation,
            ));
        }
        for condition in &mut conditions {
            condition.observed_generation = generation;
        }
        parents.push(RouteParentOutput {
            parent_ref: ParentRef {
                group: parent.group.clone(),
                kind: parent.kind.clone(),
                namespace: parent.namespace.clone(),
                name: parent.name.clone(),
                section_name: parent.section_name.clone(),
                port: parent.port,
            },
            controller_name: super::CONTROLLER_NAME,
            conditions,
        });
    }
    (!parents.is_empty()).then_some(RouteOutput { parents })
}

/// Attaches the route to the listeners `parent` selects and returns its Accepted condition.
fn attach(
    index: &Index<'_>,
    listeners: &mut [ListenerState],
    spec: &RouteSpec<'_>,
    parent: &HttpRouteParentRefs,
    translated: &Rc<TranslatedRoute>,
) -> Condition {
    let route = &spec.key;
    let generation = 0; // stamped by the caller
    let selected: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .map(|(i, _)| i)
        .collect();
    if selected.is_empty() {
        let what = match (&parent.section_name, parent.port) {
            (Some(section), Some(port)) => format!("no listener named {section:?} on port {port}"),
            (Some(section), None) => format!("no listener named {section:?}"),
            (None, Some(port)) => format!("no listener on port {port}"),
            (None, None) => "the parent has no listeners".into(),
        };
        return Condition::new(
            types::ACCEPTED,
            Status::False,
            reasons::NO_MATCHING_PARENT,
            what,
            generation,
        );
    }
    let mut reason = reasons::NOT_ALLOWED_BY_LISTENERS;
    let mut message = "no selected listener allows this route (namespace or kind)".to_string();
    let mut matched: Vec<(usize, Vec<String>)> = Vec::new();
    for i in selected {
        let listener = &listeners[i];
        // Attachment depends only on allowedRoutes and the parentRef, not on the listener's
        // own status (ListenerStatus.AttachedRoutes); only programmable listeners serve.
        if !listener.allows_kind(GATEWAY_GROUP, spec.kind)
            || !listener.allows_namespace(index, &route.namespace)
        {
            continue;
        }
        match hostnames::effective(listener.hostname.as_deref(), spec.hostnames) {
            Some(hosts) => match cross_serving_conflict(listener, spec.kind, &hosts) {
                None => matched.push((i, hosts)),
                Some(older) => {
                    reason = reasons::HOSTNAME_CONFLICT;
                    message = format!(
                        "listener {:?} already serves {} {} on a hostname this route also \
                         names; an HTTPRoute and a GRPCRoute cannot share a hostname on a \
                         listener, and the older route keeps it",
                        listener.name, older.kind, older.route
                    );
                }
            },
            None => {
                reason = reasons::NO_MATCHING_LISTENER_HOSTNAME;
                message = "no hostname of the route matches a selected listener's hostname".into();
            }
        }
    }
    if matched.is_empty() {
        return Condition::new(types::ACCEPTED, Status::False, reason, message, generation);
    }
    if let Some((reason, message)) = &translated.rejected {
        return Condition::new(
            types::ACCEPTED,
            Status::False,
            reason,
            message.clone(),
            generation,
        );
    }
    for (i, hosts) in matched {
        let attachments = &mut listeners[i].attachments;
        match attachments
            .iter_mut()
            .find(|a| a.route == *route && a.kind == spec.kind)
        {
            // Two parentRefs reaching one listener: one attachment, the union of hostnames.
            Some(existing) => {
                if existing.hostnames.is_empty() || hosts.is_empty() {
                    existing.hostnames.clear();
                } else {
                    existing.hostnames.extend(hosts);
                    existing.hostnames.sort();
                    existing.hostnames.dedup();
                }
            }
            None => attachments.push(Attachment {
                route: route.clone(),
                kind: spec.kind,
                hostnames: hosts,
                translated: translated.clone(),
            }),
        }
    }
    Condition::new(
        types::ACCEPTED,
        Status::True,
        reasons::ACCEPTED,
        "route is accepted",
        generation,
    )
}

/// Cross serving: an HTTPRoute and a GRPCRoute attached to one listener with hostnames in
/// common would compete for the same requests (a gRPC call is an HTTP/2 POST), and their rules
/// are never merged. The API makes the listener accept exactly one of them: the older route,
/// then the first by namespace/name. Routes attach in that order, so a route meeting an
/// attachment of the other kind on overlapping hostnames is the one refused there (reason
/// `HostnameConflict`: no canonical route reason covers it). Returns that older attachment.
fn cross_serving_conflict<'l>(
    listener: &'l ListenerState,
    kind: &str,
    hosts: &[String],
) -> Option<&'l Attachment> {
    let http_kinds = [HTTP_ROUTE, GRPC_ROUTE];
    if !http_kinds.contains(&kind) {
        return None;
    }
    listener.attachments.iter().find(|a| {
        a.kind != kind && http_kinds.contains(&a.kind) && hostnames::overlap(&a.hostnames, hosts)
    })
}

/// Translates a route's rules; see [`TranslatedRoute`].
pub fn translate(index: &Index<'_>, route: &HttpRoute) -> TranslatedRoute {
    let namespace = route.namespace().unwrap_or_default();
    let referrer = Referrer::route(&namespace, HTTP_ROUTE, Speaks::Http);
    let rules = route.spec.rules.as_ref().map(|rules| {
        rules
            .iter()
            .map(|rule| RuleInput {
                rule: Cow::Borrowed(rule),
                matches: rule.matches.iter().flatten().map(translate_match).collect(),
            })
            .collect()
    });
    translate_rules(index, &referrer, rules)
}

/// One rule to translate: its name, filters, backendRefs and timeouts as an HTTPRoute rule
/// (its `matches` are not read), and its matches already in the config model, or why the rule
/// cannot be implemented.
pub struct RuleInput<'r> {
    pub rule: Cow<'r, HttpRouteRules>,
    pub matches: Result<Vec<RouteMatch>, Problem>,
}

/// Translates the rules of an HTTPRoute, or of another kind written as HTTPRoute rules
/// (GRPCRoute). No rules: one rule matching everything, without backends (500).
pub fn translate_rules(
    index: &Index<'_>,
    referrer: &Referrer<'_>,
    rules: Option<Vec<RuleInput<'_>>>,
) -> TranslatedRoute {
    let rules = rules.unwrap_or_else(|| {
        vec![RuleInput {
            rule: Cow::Owned(HttpRouteRules::default()),
            matches: Ok(Vec::new()),
        }]
    });
    let mut out = TranslatedRoute::default();
    let mut last_problem: Option<Problem> = None;
    for (i, RuleInput { rule, matches }) in rules.into_iter().enumerate() {
        match matches.and_then(|matches| translate_rule(index, referrer, &rule, matches, &mut out))
        {
            Ok(translated) => out.rules.push(translated),
            Err((reason, message)) => {
                let label = rule
                    .name
                    .as_deref()
                    .map(|n| format!("rules[{i}] ({n})"))
                    .unwrap_or(format!("rules[{i}]"));
                out.dropped.push(format!("{label}: {message}"));
                last_problem = Some((reason, message));
            }
        }
    }
    if out.rules.is_empty() {
        out.rejected = Some(
            last_problem.unwrap_or((reasons::UNSUPPORTED_VALUE, "the route has no rules".into())),
        );
    }
    out
}

/// The share of requests a RequestMirror copies, as numerator / denominator.
fn mirror_share(m: &HttpRouteRulesFiltersRequestMirror) -> Result<(u32, u32), Problem> {
    let (numerator, denominator) = match (m.percent, &m.fraction) {
        (Some(_), Some(_)) => {
            return Err(unsupported(
                "a RequestMirror sets either percent or fraction, not both",
            ));
        }
        (Some(percent), None) => (percent, 100),
        (None, Some(fraction)) => (fraction.numerator, fraction.denominator.unwrap_or(100)),
        (None, None) => (100, 100),
    };
    match (u32::try_from(numerator), u32::try_from(denominator)) {
        (Ok(n), Ok(d)) if d > 0 && n <= d => Ok((n, d)),
        _ => Err(unsupported(format!(
            "RequestMirror share {numerator}/{denominator} is not between 0 and 1"
        ))),
    }
}

fn translate_rule(
    index: &Index<'_>,
    referrer: &Referrer<'_>,
    rule: &HttpRouteRules,
    matches: Vec<RouteMatch>,
    out: &mut TranslatedRoute,
) -> Result<RouteRule, Problem> {
    let mut filters = Vec::new();
    // A filter the proxy cannot apply must not be skipped: the requests it would have handled
    // get an error response (500). Its description and the reason reported for it.
    let mut unservable_filter: Option<(String, &'static str)> = None;
    for filter in rule.filters.iter().flatten() {
        match filter.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m = filter
                    .request_header_modifier
                    .as_ref()
                    .ok_or_else(missing("requestHeaderModifier"))?;
                filters.push(Filter::RequestHeaderModifier(header_modifier!(m)));
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = filter
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(missing("responseHeaderModifier"))?;
                filters.push(Filter::ResponseHeaderModifier(header_modifier!(m)));
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = filter
                    .request_redirect
                    .as_ref()
                    .ok_or_else(missing("requestRedirect"))?;
                filters.push(Filter::RequestRedirect(RequestRedirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                        HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                    }),
                    hostname: r.hostname.clone(),
                    port: match r.port {
                        Some(p) => Some(
                            u16::try_from(p)
                                .map_err(|_| unsupported(format!("redirect port {p}")))?,
                        ),
                        None => None,
                    },
                    path: match &r.path {
                        Some(p) => Some(path_modifier(
                            p.r#type
                                == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                            &p.replace_full_path,
                            &p.replace_prefix_match,
                        )?),
                        None => None,
                    },
                    status_code: match r.status_code {
                        Some(code) => u16::try_from(code)
                            .map_err(|_| unsupported(format!("redirect status {code}")))?,
                        None => 302,
                    },
                }));
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = filter
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(missing("urlRewrite"))?;
                filters.push(Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path: match &r.path {
                        Some(p) => Some(path_modifier(
                            p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                            &p.replace_full_path,
                            &p.replace_prefix_match,
                        )?),
                        None => None,
                    },
                }));
            }
            HttpRouteRulesFiltersType::ExtensionRef => {
                let name = filter
                    .extension_ref
                    .as_ref()
                    .map(|e| format!("{}/{} {}", e.group, e.kind, e.name));
                unservable_filter = Some((
                    format!("ExtensionRef filter {}", name.unwrap_or_default()),
                    reasons::INVALID_KIND,
                ));
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = filter
                    .request_mirror
                    .as_ref()
                    .ok_or_else(missing("requestMirror"))?;
                let (numerator, denominator) = mirror_share(m)?;
                let reference = &m.backend_ref;
                let reference = BackendRef {
                    group: reference.group.as_deref(),
                    kind: reference.kind.as_deref(),
                    name: &reference.name,
                    namespace: reference.namespace.as_deref(),
                    port: reference.port,
                };
                let resolved = backends::resolve(index, referrer, reference);
                // A mirror that does not resolve is left out (and reported in ResolvedRefs);
                // the rule keeps serving.
                if let BackendTarget::Backend(backend) =
                    out.http_target(index, &reference, referrer.namespace, resolved)
                {
                    filters.push(Filter::RequestMirror(RequestMirror {
                        backend,
                        numerator,
                        denominator,
                    }));
                }
            }
            HttpRouteRulesFiltersType::ExternalAuth => {
                // Dropping the rule would hand its requests to a broader rule, without the
                // authorization asked for.
                unservable_filter = Some((
                    "the ExternalAuth filter".to_string(),
                    reasons::UNSUPPORTED_VALUE,
                ));
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = filter.cors.as_ref().ok_or_else(missing("cors"))?;
                filters.push(Filter::Cors(Cors {
                    allow_origins: c.allow_origins.clone().unwrap_or_default(),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age_seconds: match c.max_age {
                        Some(seconds) => u32::try_from(seconds)
                            .ok()
                            .filter(|s| *s > 0)
                            .ok_or_else(|| unsupported(format!("CORS maxAge {seconds}")))?,
                        None => DEFAULT_CORS_MAX_AGE_SECONDS,
                    },
                }));
            }
        }
    }
    let has_redirect = filters
        .iter()
        .any(|f| matches!(f, Filter::RequestRedirect(_)));
    let has_rewrite = filters.iter().any(|f| matches!(f, Filter::UrlRewrite(_)));
    if has_redirect && has_rewrite {
        return Err((
            reasons::INCOMPATIBLE_FILTERS,
            "RequestRedirect and URLRewrite cannot be used together".into(),
        ));
    }

    let mut weighted = Vec::new();
    for reference in rule.backend_refs.iter().flatten() {
        let weight = u32::try_from(reference.weight.unwrap_or(1)).unwrap_or(0);
        let backend_ref = BackendRef {
            group: reference.group.as_deref(),
            kind: reference.kind.as_deref(),
            name: &reference.name,
            namespace: reference.namespace.as_deref(),
            port: reference.port,
        };
        let resolved = backends::resolve(index, referrer, backend_ref);
        let mut backend_filters = Vec::new();
        let mut backend_problem = None;
        for filter in reference.filters.iter().flatten() {
            match filter.r#type {
                HttpRouteRulesBackendRefsFiltersType::RequestHeaderModifier => {
                    match filter.request_header_modifier.as_ref() {
                        Some(m) => {
                            backend_filters.push(Filter::RequestHeaderModifier(header_modifier!(m)))
                        }
                        None => {
                            backend_problem = Some("requestHeaderModifier is missing".to_string())
                        }
                    }
                }
                HttpRouteRulesBackendRefsFiltersType::ResponseHeaderModifier => {
                    match filter.response_header_modifier.as_ref() {
                        Some(m) => backend_filters
                            .push(Filter::ResponseHeaderModifier(header_modifier!(m))),
                        None => {
                            backend_problem = Some("responseHeaderModifier is missing".to_string())
                        }
                    }
                }
                ref other => {
                    backend_problem = Some(format!(
                        "the {other:?} filter is not supported on backendRefs"
                    ))
                }
            }
        }
        let target = match (resolved, backend_problem, &unservable_filter) {
            (_, _, Some((filter, _))) => {
                BackendTarget::Invalid(format!("{filter} is not supported"))
            }
            (_, Some(problem), None) => {
                if out.unresolved.is_none() {
                    out.unresolved = Some((reasons::UNSUPPORTED_VALUE, problem.clone()));
                }
                BackendTarget::Invalid(problem)
            }
            (resolved, None, None) => {
                out.http_target(index, &backend_ref, referrer.namespace, resolved)
            }
        };
        weighted.push(WeightedBackend {
            weight,
            target,
            filters: backend_filters,
        });
    }
    if let (Some((filter, reason)), None) = (&unservable_filter, &out.unresolved) {
        out.unresolved = Some((
            reason,
            format!("{filter} is not supported; its requests are answered 500"),
        ));
    }
    if let Some((filter, _)) = &unservable_filter
        && weighted.is_empty()
    {
        weighted.push(WeightedBackend {
            weight: 1,
            target: BackendTarget::Invalid(format!("{filter} is not supported")),
            filters: Vec::new(),
        });
    }

    let timeouts = match &rule.timeouts {
        Some(t) => RuleTimeouts {
            request_ms: t.request.as_deref().map(parse_duration).transpose()?,
            backend_request_ms: t
                .backend_request
                .as_deref()
                .map(parse_duration)
                .transpose()?,
        },
        None => RuleTimeouts::default(),
    };
    let retry = rule.retry.as_ref().map(translate_retry).transpose()?;
    let translated = RouteRule {
        name: rule.name.clone(),
        matches,
        filters,
        backends: weighted,
        timeouts,
        retry,
    };
    validate_rule(&translated).map_err(|e| {
        let message = if e.path.is_empty() {
            e.message
        } else {
            format!("{}: {}", e.path.trim_start_matches('.'), e.message)
        };
        unsupported(message)
    })?;
    Ok(translated)
}

fn missing(field: &'static str) -> impl Fn() -> Problem {
    move || unsupported(format!("filter {field} is missing"))
}

pub fn unsupported(message: impl Into<String>) -> Problem {
    (reasons::UNSUPPORTED_VALUE, message.into())
}

fn path_modifier(
    full: bool,
    full_path: &Option<String>,
    prefix: &Option<String>,
) -> Result<PathModifier, Problem> {
    if full {
        full_path
            .clone()
            .map(PathModifier::ReplaceFullPath)
            .ok_or_else(|| unsupported("ReplaceFullPath without replaceFullPath"))
    } else {
        prefix
            .clone()
            .map(PathModifier::ReplacePrefixMatch)
            .ok_or_else(|| unsupported("ReplacePrefixMatch without replacePrefixMatch"))
    }
}

fn translate_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, Problem> {
    let path = match &m.path {
        None => PathMatch::PathPrefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p
                .r#type
                .clone()
                .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
                HttpRouteRulesMatchesPathType::PathPrefix => PathMatch::PathPrefix(value),
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    PathMatch::RegularExpression(value)
                }
            }
        }
    };
    Ok(RouteMatch {
        path,
        headers: header_matches(m.headers.iter().flatten().map(|h| {
            (
                h.name.as_str(),
                h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression),
                h.value.as_str(),
            )
        })),
        query_params: m
            .query_params
            .iter()
            .flatten()
            .map(|q| QueryParamMatch {
                name: q.name.clone(),
                value: string_match(
                    q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression),
                    &q.value,
                ),
            })
            .collect(),
        method: m.method.as_ref().map(method_name),
    })
}

/// An exact or regular-expression value match.
fn string_match(regex: bool, value: &str) -> StringMatch {
    if regex {
        StringMatch::RegularExpression(value.into())
    } else {
        StringMatch::Exact(value.into())
    }
}

/// Header matches from (name, is a regular expression, value). Of entries naming the same
/// header (names are case-insensitive) only the first counts, as HTTPRoute and GRPCRoute say.
pub fn header_matches<'h>(
    headers: impl IntoIterator<Item = (&'h str, bool, &'h str)>,
) -> Vec<HeaderMatch> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for (name, regex, value) in headers {
        if out.iter().any(|h| h.name.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.push(HeaderMatch {
            name: name.to_string(),
            value: string_match(regex, value),
        });
    }
    out
}

fn method_name(method: &HttpRouteRulesMatchesMethod) -> String {
    let name = match method {
        HttpRouteRulesMatchesMethod::Get => "GET",
        HttpRouteRulesMatchesMethod::Head => "HEAD",
        HttpRouteRulesMatchesMethod::Post => "POST",
        HttpRouteRulesMatchesMethod::Put => "PUT",
        HttpRouteRulesMatchesMethod::Delete => "DELETE",
        HttpRouteRulesMatchesMethod::Connect => "CONNECT",
        HttpRouteRulesMatchesMethod::Options => "OPTIONS",
        HttpRouteRulesMatchesMethod::Trace => "TRACE",
        HttpRouteRulesMatchesMethod::Patch => "PATCH",
    };
    name.to_string()
}

/// Wait before the first retry when the rule names none (as Envoy's default base interval).
const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;
/// Retries when the rule names no count.
const DEFAULT_RETRY_ATTEMPTS: u32 = 1;

/// A rule's `retry`. Without codes it still retries attempts that got no response (see
/// `RetryPolicy`), as the API's backoff text describes retrying after a timeout.
fn translate_retry(retry: &HttpRouteRulesRetry) -> Result<RetryPolicy, Problem> {
    let codes = retry
        .codes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|code| {
            u16::try_from(*code)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| unsupported(format!("retry code {code} is not between 400 and 599")))
        })
        .collect::<Result<Vec<u16>, Problem>>()?;
    let attempts = match retry.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_RETRY_ATTEMPTS).contains(n))
            .ok_or_else(|| {
                unsupported(format!(
                    "retry attempts {n} is not between 1 and {MAX_RETRY_ATTEMPTS}"
                ))
            })?,
    };
    let backoff_ms = match retry.backoff.as_deref() {
        Some(text) => parse_duration(text)?,
        None => DEFAULT_RETRY_BACKOFF_MS,
    };
    Ok(RetryPolicy {
        codes,
        attempts,
        backoff_ms,
    })
}

/// Gateway API Duration ("1h", "30s", "500ms", "1m30s"; up to four parts) in milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, Problem> {
    let invalid = || unsupported(format!("invalid duration {text:?}"));
    let mut total: u64 = 0;
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(invalid());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[len..];
        total += value * unit_ms;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(invalid());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), 3_600_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500);
        assert_eq!(parse_duration("0s").unwrap(), 0);
        assert_eq!(parse_duration("1h2m3s4ms").unwrap(), 3_723_004);
        for bad in ["", "1", "1d", "s", "123456s", "1h2m3s4ms5ms", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
