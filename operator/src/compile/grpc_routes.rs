//! GRPCRoutes. A gRPC call is an HTTP/2 request `POST /<service>/<method>`, so a GRPCRoute is
//! compiled into the same config rules as an HTTPRoute and served by the same routing tables:
//! its method matches become path matches, its header matches are HTTPRoute's, and its
//! filters (RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, ExtensionRef) and
//! backendRefs have HTTPRoute's shape and go through HTTPRoute's translation unchanged. The
//! proxy speaks HTTP/2 to every gRPC backend (see `backends::Speaks::Grpc`).
//!
//! Method matches (`type: Exact` unless said otherwise; the data plane matches regular
//! expressions against the whole path):
//!
//! | service | method | path match |
//! |---|---|---|
//! | `S` | `M` | Exact `/S/M` |
//! | `S` | – | PathPrefix `/S/` |
//! | – | `M` | GrpcMethod `M` (`/<any service>/M`) |
//! | – | – | every path |
//! | regex `S` and/or `M` | | RegularExpression `/(?:S)/(?:M)`, `[^/]+` for the one left out |
//!
//! Precedence follows the routing tables' order (exact paths, then regular expressions, then
//! the longest prefix, then method-only matches, then the prefix "/"; then header count; then
//! route age and rule order). That is GRPCRoute's order for Exact matches: service characters
//! (a service-and-method or service-only match beats a method-only one), then method
//! characters (a method-only match beats none), then headers. RegularExpression matches rank
//! as regular expressions, which the API leaves to the implementation.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::ResourceExt;
use portcullis_api::config::{PathMatch, RouteMatch};
use portcullis_api::gateway_api::grpcroute::{
    GrpcRoute, GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType,
    GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType,
};
use portcullis_api::gateway_api::httproute::{HttpRouteParentRefs, HttpRouteRules};

use super::backends::{Referrer, Speaks};
use super::gateways::{GRPC_ROUTE, GatewayState, Problem};
use super::routes::{
    RouteSpec, RuleInput, TranslatedRoute, attach_route, header_matches, parent_refs,
    translate_rules, unsupported,
};
use super::{Index, ObjectKey, RouteOutput, generation};

/// Attaches one GRPCRoute to the listeners its parentRefs select (see `routes::attach_route`).
/// None when no parentRef names one of our Gateways.
pub fn attach(
    index: &Index<'_>,
    gateways: &mut BTreeMap<ObjectKey, GatewayState>,
    route: &GrpcRoute,
) -> Option<RouteOutput> {
    let parent_refs: Vec<HttpRouteParentRefs> = parent_refs!(route.spec.parent_refs);
    let spec = RouteSpec {
        key: ObjectKey::of(route),
        kind: GRPC_ROUTE,
        generation: generation(route),
        hostnames: route.spec.hostnames.as_deref().unwrap_or_default(),
        parent_refs: &parent_refs,
    };
    attach_route(index, gateways, &spec, || translate(index, route))
}

/// Translates a GRPCRoute's rules; see [`TranslatedRoute`].
pub fn translate(index: &Index<'_>, route: &GrpcRoute) -> TranslatedRoute {
    let namespace = route.namespace().unwrap_or_default();
    let referrer = Referrer::route(&namespace, GRPC_ROUTE, Speaks::Grpc);
    let rules = route
        .spec
        .rules
        .as_ref()
        .map(|rules| rules.iter().map(rule_input).collect());
    translate_rules(index, &referrer, rules)
}

/// A GRPCRoute rule as an HTTPRoute rule plus its matches in the config model.
fn rule_input(rule: &GrpcRouteRules) -> RuleInput<'static> {
    let matches = rule.matches.iter().flatten().map(translate_match).collect();
    match as_http_rule(rule) {
        Ok(http) => RuleInput {
            rule: Cow::Owned(http),
            matches,
        },
        Err(problem) => RuleInput {
            rule: Cow::Owned(HttpRouteRules {
                name: rule.name.clone(),
                ..HttpRouteRules::default()
            }),
            matches: Err(problem),
        },
    }
}

/// The rule's name, filters and backendRefs as an HTTPRoute rule. Every GRPCRoute filter type
/// and backendRef field exists in HTTPRoute with the same JSON shape (the generated types
/// differ only by name), so the copy is a serde round trip.
fn as_http_rule(rule: &GrpcRouteRules) -> Result<HttpRouteRules, Problem> {
    let value = serde_json::json!({
        "name": rule.name,
        "filters": rule.filters,
        "backendRefs": rule.backend_refs,
    });
    serde_json::from_value(value)
        .map_err(|e| unsupported(format!("the rule's filters or backendRefs: {e}")))
}

fn translate_match(m: &GrpcRouteRulesMatches) -> Result<RouteMatch, Problem> {
    let path = match &m.method {
        Some(method) => method_path(method)?,
        None => PathMatch::PathPrefix("/".into()),
    };
    Ok(RouteMatch {
        path,
        headers: header_matches(m.headers.iter().flatten().map(|h| {
            (
                h.name.as_str(),
                h.r#type == Some(GrpcRouteRulesMatchesHeadersType::RegularExpression),
                h.value.as_str(),
            )
        })),
        query_params: Vec::new(),
        // gRPC calls are POSTs; the API does not ask to check it.
        method: None,
    })
}

/// The path match for a gRPC method match (see the module documentation).
fn method_path(m: &GrpcRouteRulesMatchesMethod) -> Result<PathMatch, Problem> {
    // Empty or left out: any service, any method.
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let any = "[^/]+";
    match m
        .r#type
        .clone()
        .unwrap_or(GrpcRouteRulesMatchesMethodType::Exact)
    {
        GrpcRouteRulesMatchesMethodType::Exact => {
            for (what, value) in [("service", service), ("method", method)] {
                if let Some(value) = value.filter(|v| v.contains('/')) {
                    return Err(unsupported(format!(
                        "gRPC {what} {value:?} contains '/', which an Exact match cannot hold"
                    )));
                }
            }
            Ok(match (service, method) {
                (Some(service), Some(method)) => PathMatch::Exact(format!("/{service}/{method}")),
                (Some(service), None) => PathMatch::PathPrefix(format!("/{service}/")),
                (None, Some(method)) => PathMatch::GrpcMethod(method.into()),
                (None, None) => PathMatch::PathPrefix("/".into()),
            })
        }
        GrpcRouteRulesMatchesMethodType::RegularExpression => Ok(match (service, method) {
            (None, None) => PathMatch::PathPrefix("/".into()),
            (service, method) => PathMatch::RegularExpression(format!(
                "/(?:{})/(?:{})",
                service.unwrap_or(any),
                method.unwrap_or(any)
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_api::config::{HeaderMatch, StringMatch};
    use portcullis_api::gateway_api::grpcroute::GrpcRouteRulesMatchesHeaders;

    fn method(
        kind: Option<GrpcRouteRulesMatchesMethodType>,
        service: Option<&str>,
        method: Option<&str>,
    ) -> GrpcRouteRulesMatchesMethod {
        GrpcRouteRulesMatchesMethod {
            r#type: kind,
            service: service.map(String::from),
            method: method.map(String::from),
        }
    }

    #[test]
    fn exact_method_matches_become_paths() {
        let exact = Some(GrpcRouteRulesMatchesMethodType::Exact);
        let cases = [
            (
                method(exact.clone(), Some("pkg.Svc"), Some("Get")),
                PathMatch::Exact("/pkg.Svc/Get".into()),
            ),
            (
                method(None, Some("pkg.Svc"), None),
                PathMatch::PathPrefix("/pkg.Svc/".into()),
            ),
            (
                method(exact.clone(), None, Some("Get")),
                PathMatch::GrpcMethod("Get".into()),
            ),
            (
                method(exact.clone(), Some(""), Some("")),
                PathMatch::PathPrefix("/".into()),
            ),
        ];
        for (m, expected) in cases {
            assert_eq!(method_path(&m).unwrap(), expected, "{m:?}");
        }
        let slash = method(exact, Some("a/b"), Some("Get"));
        assert!(method_path(&slash).is_err());
    }

    #[test]
    fn regular_expression_method_matches() {
        let regex = Some(GrpcRouteRulesMatchesMethodType::RegularExpression);
        assert_eq!(
            method_path(&method(regex.clone(), Some(r"pkg\..*"), Some("Get|Put"))).unwrap(),
            PathMatch::RegularExpression(r"/(?:pkg\..*)/(?:Get|Put)".into())
        );
        assert_eq!(
            method_path(&method(regex.clone(), None, Some("Get.*"))).unwrap(),
            PathMatch::RegularExpression("/(?:[^/]+)/(?:Get.*)".into())
        );
        assert_eq!(
            method_path(&method(regex, Some("pkg.Svc"), None)).unwrap(),
            PathMatch::RegularExpression("/(?:pkg.Svc)/(?:[^/]+)".into())
        );
    }

    #[test]
    fn header_matches_keep_the_first_of_a_name() {
        let header = |name: &str, value: &str, regex: bool| GrpcRouteRulesMatchesHeaders {
            name: name.into(),
            value: value.into(),
            r#type: regex.then_some(GrpcRouteRulesMatchesHeadersType::RegularExpression),
        };
        let m = GrpcRouteRulesMatches {
            headers: Some(vec![
                header("version", "one", false),
                header("Version", "two", false),
                header("color", "bl.*", true),
            ]),
            method: None,
        };
        let translated = translate_match(&m).unwrap();
        assert_eq!(translated.path, PathMatch::PathPrefix("/".into()));
        assert_eq!(translated.method, None);
        assert_eq!(
            translated.headers,
            vec![
                HeaderMatch {
                    name: "version".into(),
                    value: StringMatch::Exact("one".into()),
                },
                HeaderMatch {
                    name: "color".into(),
                    value: StringMatch::RegularExpression("bl.*".into()),
                },
            ]
        );
    }

    #[test]
    fn filters_and_backend_refs_keep_their_meaning() {
        let rule: GrpcRouteRules = serde_json::from_value(serde_json::json!({
            "name": "main",
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 9000}, "percent": 10}},
                {"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Thing", "name": "t"}},
            ],
            "backendRefs": [{
                "name": "svc", "port": 8080, "weight": 3,
                "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["y"]}}],
            }],
        }))
        .unwrap();
        let http = as_http_rule(&rule).unwrap();
        assert_eq!(http.name.as_deref(), Some("main"));
        let filters = http.filters.unwrap();
        assert_eq!(filters.len(), 3);
        assert_eq!(
            filters[1].request_mirror.as_ref().unwrap().backend_ref.name,
            "shadow"
        );
        let backend = &http.backend_refs.unwrap()[0];
        assert_eq!(
            (backend.name.as_str(), backend.port, backend.weight),
            ("svc", Some(8080), Some(3))
        );
        assert_eq!(backend.filters.as_ref().unwrap().len(), 1);
        assert!(http.matches.is_none() && http.timeouts.is_none());
    }
}
