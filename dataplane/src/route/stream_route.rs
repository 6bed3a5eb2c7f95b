//! TLSRoutes of one listener: which route a TLS connection belongs to, by its SNI.
//!
//! The route whose hostname matches the server name most specifically wins (exact, then the
//! longest wildcard, then routes without hostnames); among equally specific routes the first
//! in tie-break order (oldest, then "namespace/name"). A connection without SNI can only
//! reach a route without hostnames.

use std::sync::Arc;

use portcullis_api::config::StreamRoute;

use super::BuildContext;
use super::host::HostPattern;
use super::table::{BackendChoice, backend_choice};

#[derive(Debug)]
pub struct CompiledStreamRoute {
    pub name: Arc<str>,
    /// Index of this (listener, route) pair's counters.
    pub stat_slot: u32,
    hostnames: Vec<HostPattern>,
    pub backends: BackendChoice,
}

#[derive(Debug, Default)]
pub struct StreamRouteTable {
    routes: Vec<CompiledStreamRoute>,
}

impl StreamRouteTable {
    pub fn build<'c>(
        listener: &'c str,
        routes: &'c [StreamRoute],
        context: &mut BuildContext<'c>,
    ) -> Result<Self, String> {
        let mut compiled = Vec::with_capacity(routes.len());
        for (i, route) in routes.iter().enumerate() {
            let backends = backend_choice(&route.backends, &context.backends)
                .map_err(|e| format!("stream_routes[{i}] ({:?}): {e}", route.name))?;
            let stat_slot = context.stat_slot(listener, &route.name);
            compiled.push(CompiledStreamRoute {
                name: context.slot_route_name(stat_slot),
                stat_slot,
                hostnames: HostPattern::all_of(&route.hostnames),
                backends,
            });
        }
        Ok(Self { routes: compiled })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route named `name` ("namespace/name"), if this listener has it.
    pub fn route(&self, name: &str) -> Option<&CompiledStreamRoute> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The route for a connection whose SNI is `server_name` (normalized), if any.
    pub fn find(&self, server_name: Option<&str>) -> Option<&CompiledStreamRoute> {
        let mut best: Option<(&CompiledStreamRoute, usize)> = None;
        for route in &self.routes {
            let specificity = route
                .hostnames
                .iter()
                .filter(|pattern| match server_name {
                    Some(name) => pattern.matches(name),
                    None => **pattern == HostPattern::Any,
                })
                .map(HostPattern::specificity)
                .max();
            if let Some(specificity) = specificity
                && best.is_none_or(|(_, found)| specificity > found)
            {
                best = Some((route, specificity));
            }
        }
        best.map(|(route, _)| route)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_api::config::{BackendTarget, WeightedBackend};

    use super::*;

    fn route(name: &str, hostnames: &[&str]) -> StreamRoute {
        StreamRoute {
            name: name.into(),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            backends: vec![WeightedBackend {
                weight: 1,
                target: BackendTarget::Backend("b".into()),
                filters: vec![],
            }],
        }
    }

    fn table(routes: &[StreamRoute]) -> StreamRouteTable {
        StreamRouteTable::build("l", routes, &mut BuildContext::new([], ["b"], 0)).unwrap()
    }

    fn found(table: &StreamRouteTable, name: Option<&str>) -> Option<String> {
        table.find(name).map(|r| r.name.to_string())
    }

    #[test]
    fn most_specific_hostname_wins_then_route_order() {
        let t = table(&[
            route("ns/any", &[]),
            route("ns/wild", &["*.example.com"]),
            route("ns/deeper", &["*.a.example.com"]),
            route("ns/exact", &["db.example.com"]),
            route("ns/exact-later", &["db.example.com"]),
        ]);
        assert_eq!(
            found(&t, Some("db.example.com")).as_deref(),
            Some("ns/exact")
        );
        assert_eq!(
            found(&t, Some("x.a.example.com")).as_deref(),
            Some("ns/deeper")
        );
        assert_eq!(
            found(&t, Some("web.example.com")).as_deref(),
            Some("ns/wild")
        );
        assert_eq!(found(&t, Some("example.org")).as_deref(), Some("ns/any"));
        assert_eq!(found(&t, None).as_deref(), Some("ns/any"));
    }

    #[test]
    fn no_sni_reaches_only_routes_without_hostnames() {
        let t = table(&[route("ns/wild", &["*.example.com"])]);
        assert_eq!(found(&t, None), None);
        assert_eq!(found(&t, Some("example.com")), None);
        assert!(table(&[]).is_empty());
    }

    #[test]
    fn unknown_backends_fail_the_build() {
        let mut bad = route("ns/bad", &[]);
        bad.backends[0].target = BackendTarget::Backend("missing".into());
        let routes = [bad];
        let error =
            StreamRouteTable::build("l", &routes, &mut BuildContext::new([], [], 0)).unwrap_err();
        assert!(
            error.contains("stream_routes[0]") && error.contains("missing"),
            "{error}"
        );
    }
}
