//! Object statuses as `portcullis check` and `portcullis standalone` print them: a table (or
//! YAML), the verdict a CI job exits on, and notes about objects the compiler left alone.
//!
//! The table has one row per GatewayClass, Gateway, listener, route (HTTPRoute, GRPCRoute,
//! TLSRoute, TCPRoute, UDPRoute) and route parent:
//!
//! ```text
//! KIND          NAME                STATUS  CONDITIONS
//! GatewayClass  portcullis          ok      Accepted=True SupportedVersion=True
//! Gateway       demo/demo-gateway   ok      Accepted=True Programmed=True ResolvedRefs=True
//!   listener    http                ok      Accepted=True Programmed=True ResolvedRefs=True Conflicted=False routes=1
//! HTTPRoute     shop/storefront
//!   parent      demo/demo-gateway   FAIL    Accepted=True ResolvedRefs=False(BackendNotFound)
//!                 ResolvedRefs: Service shop/storefront-v3 not found
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::compile::conditions::types;
use crate::compile::{
    ClassOutput, Condition, GatewayOutput, ListenerOutput, ListenerSetOutput, ObjectKey, Output,
    ParentRef, RouteOutput, Status,
};
use crate::objects::Loaded;

/// What a row describes; decides which conditions must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    GatewayClass,
    Gateway,
    Listener,
    ListenerSet,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    TcpRoute,
    UdpRoute,
    RouteParent,
    BackendTlsPolicy,
    PolicyAncestor,
}

impl RowKind {
    fn label(self) -> &'static str {
        match self {
            RowKind::GatewayClass => "GatewayClass",
            RowKind::Gateway => "Gateway",
            RowKind::Listener => "  listener",
            RowKind::ListenerSet => "ListenerSet",
            RowKind::HttpRoute => "HTTPRoute",
            RowKind::GrpcRoute => "GRPCRoute",
            RowKind::TlsRoute => "TLSRoute",
            RowKind::TcpRoute => "TCPRoute",
            RowKind::UdpRoute => "UDPRoute",
            RowKind::RouteParent => "  parent",
            RowKind::BackendTlsPolicy => "BackendTLSPolicy",
            RowKind::PolicyAncestor => "  ancestor",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: RowKind,
    /// Identifies the row across compilations ("Gateway demo/gw listener http").
    pub key: String,
    pub name: String,
    pub conditions: Vec<Condition>,
    /// Shown after the conditions ("routes=1").
    pub extra: String,
}

impl Row {
    /// The conditions that make this row a problem.
    pub fn problems(&self) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(|c| is_problem(self.kind, c))
    }

    pub fn is_ok(&self) -> bool {
        self.problems().next().is_none()
    }

    /// Rows without conditions (an HTTPRoute's header row) have no verdict of their own.
    fn verdict(&self) -> &'static str {
        match (self.conditions.is_empty(), self.is_ok()) {
            (true, _) => "",
            (false, true) => "ok",
            (false, false) => "FAIL",
        }
    }
}

/// Whether a condition means the object is not (fully) working: Accepted and ResolvedRefs
/// must be True everywhere, Programmed on Gateways and listeners, and PartiallyInvalid and
/// Conflicted must not be True.
pub fn is_problem(kind: RowKind, condition: &Condition) -> bool {
    let must_be_true = match condition.type_ {
        types::ACCEPTED | types::RESOLVED_REFS => true,
        types::PROGRAMMED => matches!(
            kind,
            RowKind::Gateway | RowKind::Listener | RowKind::ListenerSet
        ),
        _ => false,
    };
    let must_not_be_true = matches!(
        condition.type_,
        types::PARTIALLY_INVALID | types::CONFLICTED
    );
    (must_be_true && condition.status != Status::True)
        || (must_not_be_true && condition.status == Status::True)
}

/// The rows of `output`: classes, then Gateways with their listeners, then HTTPRoutes with
/// their parents, each group sorted by name.
pub fn rows(output: &Output) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, class) in &output.gateway_classes {
        rows.push(class_row(name, class));
    }
    for (key, gateway) in &output.gateways {
        gateway_rows(key, gateway, &mut rows);
    }
    for (key, set) in &output.listener_sets {
        listener_set_rows(key, set, &mut rows);
    }
    for (key, route) in &output.http_routes {
        route_rows(RowKind::HttpRoute, key, route, &mut rows);
    }
    for (key, route) in &output.grpc_routes {
        route_rows(RowKind::GrpcRoute, key, route, &mut rows);
    }
    for (key, route) in &output.tls_routes {
        route_rows(RowKind::TlsRoute, key, route, &mut rows);
    }
    for (key, route) in &output.tcp_routes {
        route_rows(RowKind::TcpRoute, key, route, &mut rows);
    }
    for (key, route) in &output.udp_routes {
        route_rows(RowKind::UdpRoute, key, route, &mut rows);
    }
    for (key, policy) in &output.backend_tls_policies {
        let label = RowKind::BackendTlsPolicy.label();
        rows.push(Row {
            kind: RowKind::BackendTlsPolicy,
            key: format!("{label} {key}"),
            name: key.to_string(),
            conditions: Vec::new(),
            extra: String::new(),
        });
        for ancestor in &policy.ancestors {
            rows.push(Row {
                kind: RowKind::PolicyAncestor,
                key: format!("{label} {key} ancestor {}", ancestor.gateway),
                name: ancestor.gateway.to_string(),
                conditions: ancestor.conditions.clone(),
                extra: String::new(),
            });
        }
    }
    rows
}

fn class_row(name: &str, class: &ClassOutput) -> Row {
    Row {
        kind: RowKind::GatewayClass,
        key: format!("GatewayClass {name}"),
        name: name.to_string(),
        conditions: class.conditions.clone(),
        extra: String::new(),
    }
}

fn gateway_rows(key: &ObjectKey, gateway: &GatewayOutput, rows: &mut Vec<Row>) {
    rows.push(Row {
        kind: RowKind::Gateway,
        key: format!("Gateway {key}"),
        name: key.to_string(),
        conditions: gateway.conditions.clone(),
        extra: String::new(),
    });
    listener_rows(&format!("Gateway {key}"), &gateway.listeners, rows);
}

fn listener_set_rows(key: &ObjectKey, set: &ListenerSetOutput, rows: &mut Vec<Row>) {
    rows.push(Row {
        kind: RowKind::ListenerSet,
        key: format!("ListenerSet {key}"),
        name: key.to_string(),
        conditions: set.conditions.clone(),
        extra: format!("gateway={}", set.gateway),
    });
    listener_rows(&format!("ListenerSet {key}"), &set.listeners, rows);
}

fn listener_rows(owner: &str, listeners: &[ListenerOutput], rows: &mut Vec<Row>) {
    for listener in listeners {
        rows.push(Row {
            kind: RowKind::Listener,
            key: format!("{owner} listener {}", listener.name),
            name: listener.name.clone(),
            conditions: listener.conditions.clone(),
            extra: format!("routes={}", listener.attached_routes),
        });
    }
}

fn route_rows(kind: RowKind, key: &ObjectKey, route: &RouteOutput, rows: &mut Vec<Row>) {
    let label = kind.label();
    rows.push(Row {
        kind,
        key: format!("{label} {key}"),
        name: key.to_string(),
        conditions: Vec::new(),
        extra: String::new(),
    });
    for parent in &route.parents {
        let name = parent_name(&key.namespace, &parent.parent_ref);
        rows.push(Row {
            kind: RowKind::RouteParent,
            key: format!("{label} {key} parent {name}"),
            name,
            conditions: parent.conditions.clone(),
            extra: String::new(),
        });
    }
}

/// "ns/gateway", "ns/gateway/section" or "ns/gateway:port" (the route's namespace when the
/// parentRef names none).
pub fn parent_name(route_namespace: &str, parent: &ParentRef) -> String {
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    // A Gateway is the default parent; other kinds say what they are.
    let kind = match parent.kind.as_deref() {
        Some(kind) if kind != "Gateway" => format!("{kind} "),
        _ => String::new(),
    };
    let mut name = format!("{kind}{namespace}/{}", parent.name);
    if let Some(section) = &parent.section_name {
        let _ = write!(name, "/{section}");
    }
    if let Some(port) = parent.port {
        let _ = write!(name, ":{port}");
    }
    name
}

/// One condition as shown in the table: `Type=Status`, with the reason in parentheses when
/// it says more than the type does (a problem, or True for a reason other than the type).
pub fn condition_text(kind: RowKind, condition: &Condition) -> String {
    let status = match condition.status {
        Status::True => "True",
        Status::False => "False",
        Status::Unknown => "Unknown",
    };
    let show_reason = is_problem(kind, condition)
        || (condition.status == Status::True && condition.reason != condition.type_);
    if show_reason {
        format!("{}={status}({})", condition.type_, condition.reason)
    } else {
        format!("{}={status}", condition.type_)
    }
}

/// Renders rows as an aligned table with a header; each problem condition's message follows
/// its row.
pub fn render_rows(rows: &[Row]) -> String {
    let kind_width = rows
        .iter()
        .map(|r| r.kind.label().len())
        .chain(["KIND".len()])
        .max()
        .unwrap_or(4);
    let name_width = rows
        .iter()
        .map(|r| r.name.len())
        .chain(["NAME".len()])
        .max()
        .unwrap_or(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:kind_width$}  {:name_width$}  {:6}  CONDITIONS",
        "KIND", "NAME", "STATUS"
    );
    for row in rows {
        let mut details: Vec<String> = row
            .conditions
            .iter()
            .map(|c| condition_text(row.kind, c))
            .collect();
        if !row.extra.is_empty() {
            details.push(row.extra.clone());
        }
        let line = format!(
            "{:kind_width$}  {:name_width$}  {:6}  {}",
            row.kind.label(),
            row.name,
            row.verdict(),
            details.join(" ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
        for problem in row.problems() {
            let _ = writeln!(
                out,
                "{:indent$}{}: {}",
                "",
                problem.type_,
                problem.message,
                indent = kind_width + 4
            );
        }
    }
    out
}

/// The whole table for `output`.
pub fn render(output: &Output) -> String {
    render_rows(&rows(output))
}

/// The rows that differ between two compilations (new or changed), and the keys of rows that
/// disappeared. Both empty when nothing changed.
pub fn changes(old: &Output, new: &Output) -> (Vec<Row>, Vec<String>) {
    let old_rows = rows(old);
    let new_rows = rows(new);
    let changed: Vec<Row> = new_rows
        .iter()
        .filter(|row| !old_rows.contains(row))
        .cloned()
        .collect();
    let new_keys: BTreeSet<&str> = new_rows.iter().map(|r| r.key.as_str()).collect();
    let removed = old_rows
        .iter()
        .filter(|r| !new_keys.contains(r.key.as_str()))
        .map(|r| r.key.clone())
        .collect();
    (changed, removed)
}

/// Renders [`changes`]: a table of the changed rows, then one "removed:" line per row gone.
/// Empty when nothing changed.
pub fn render_changes(old: &Output, new: &Output) -> String {
    let (changed, removed) = changes(old, new);
    let mut out = if changed.is_empty() {
        String::new()
    } else {
        render_rows(&changed)
    };
    for key in removed {
        let _ = writeln!(out, "removed: {key}");
    }
    out
}

/// How many rows have a problem.
pub fn problem_count(output: &Output) -> usize {
    rows(output).iter().filter(|r| !r.is_ok()).count()
}

/// The compiler output as YAML: the same structure as [`Output`], keyed by "namespace/name".
pub fn to_yaml(output: &Output) -> Result<String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct View<'a> {
        gateway_classes: &'a BTreeMap<String, ClassOutput>,
        gateways: BTreeMap<String, &'a GatewayOutput>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        listener_sets: BTreeMap<String, &'a ListenerSetOutput>,
        http_routes: BTreeMap<String, &'a RouteOutput>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        grpc_routes: BTreeMap<String, &'a RouteOutput>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        tls_routes: BTreeMap<String, &'a RouteOutput>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        tcp_routes: BTreeMap<String, &'a RouteOutput>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        udp_routes: BTreeMap<String, &'a RouteOutput>,
    }
    let view = View {
        gateway_classes: &output.gateway_classes,
        gateways: output
            .gateways
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        listener_sets: output
            .listener_sets
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        http_routes: output
            .http_routes
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        grpc_routes: output
            .grpc_routes
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        tls_routes: output
            .tls_routes
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        tcp_routes: output
            .tcp_routes
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        udp_routes: output
            .udp_routes
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    serde_saphyr::to_string(&view).context("serializing the statuses as YAML")
}

/// Notes about what the compiler did not look at: documents of other kinds, Gateways of
/// classes that are not ours (or not among the inputs), and routes that attach to none of
/// our Gateways. These objects get no status, so a check cannot vouch for them.
pub fn notes(loaded: &Loaded, output: &Output) -> Vec<String> {
    let mut notes: Vec<String> = loaded
        .ignored
        .iter()
        .map(|i| format!("ignored (kind not read by the compiler): {i}"))
        .collect();
    let input = &loaded.input;
    for gateway in &input.gateways {
        let key = ObjectKey::of(gateway);
        if output.gateways.contains_key(&key) {
            continue;
        }
        let class = &gateway.spec.gateway_class_name;
        let why = match input
            .gateway_classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(class.as_str()))
        {
            Some(c) => format!(
                "its GatewayClass {class} belongs to {}",
                c.spec.controller_name
            ),
            None => format!("its GatewayClass {class} is not among the inputs"),
        };
        notes.push(format!("Gateway {key} not checked: {why}"));
    }
    for set in &input.listener_sets {
        let key = ObjectKey::of(set);
        if !output.listener_sets.contains_key(&key) {
            notes.push(format!(
                "ListenerSet {key} not checked: its parentRef names no Portcullis Gateway among the inputs"
            ));
        }
    }
    let unattached = input
        .http_routes
        .iter()
        .map(|r| ("HTTPRoute", ObjectKey::of(r), &output.http_routes))
        .chain(
            input
                .grpc_routes
                .iter()
                .map(|r| ("GRPCRoute", ObjectKey::of(r), &output.grpc_routes)),
        )
        .chain(
            input
                .tls_routes
                .iter()
                .map(|r| ("TLSRoute", ObjectKey::of(r), &output.tls_routes)),
        )
        .chain(
            input
                .tcp_routes
                .iter()
                .map(|r| ("TCPRoute", ObjectKey::of(r), &output.tcp_routes)),
        )
        .chain(
            input
                .udp_routes
                .iter()
                .map(|r| ("UDPRoute", ObjectKey::of(r), &output.udp_routes)),
        );
    for (kind, key, statuses) in unattached {
        if !statuses.contains_key(&key) {
            notes.push(format!(
                "{kind} {key} not checked: no parentRef names a Portcullis Gateway among the inputs"
            ));
        }
    }
    if output.gateways.is_empty() {
        notes.push(format!(
            "no Gateway of a GatewayClass with controllerName {} among the inputs",
            crate::compile::CONTROLLER_NAME
        ));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::objects::load_str;

    const VALID: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: app}
spec:
  parentRefs: [{name: gw, namespace: infra, sectionName: http}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {ports: [{port: 80}]}
"#;

    fn load(text: &str) -> Loaded {
        let mut loaded = Loaded::default();
        load_str(text, "test.yaml", &mut loaded).unwrap();
        loaded
    }

    #[test]
    fn valid_objects_render_ok() {
        let output = compile(&load(VALID).input);
        let table = render(&output);
        assert!(table.starts_with("KIND"), "{table}");
        assert!(table.contains("GatewayClass"), "{table}");
        assert!(table.contains("infra/gw"), "{table}");
        assert!(table.contains("routes=1"), "{table}");
        assert!(table.contains("infra/gw/http"), "{table}");
        assert!(!table.contains("FAIL"), "{table}");
        assert_eq!(problem_count(&output), 0);
    }

    #[test]
    fn missing_backend_is_a_problem_with_its_message() {
        let text = VALID.replace("name: web, port: 80", "name: missing, port: 80");
        let output = compile(&load(&text).input);
        let table = render(&output);
        assert!(table.contains("FAIL"), "{table}");
        assert!(
            table.contains("ResolvedRefs=False(BackendNotFound)"),
            "{table}"
        );
        assert!(table.contains("missing"), "{table}");
        assert_eq!(problem_count(&output), 1);
    }

    #[test]
    fn a_gateway_reference_that_does_not_resolve_fails_the_gateway_row() {
        let text = VALID.replace(
            "  gatewayClassName: portcullis\n",
            "  gatewayClassName: portcullis\n  tls: {backend: {clientCertificateRef: {name: client}}}\n",
        );
        let output = compile(&load(&text).input);
        let table = render(&output);
        assert!(
            table.contains("ResolvedRefs=False(InvalidClientCertificateRef)"),
            "{table}"
        );
        assert!(table.contains("Secret infra/client not found"), "{table}");
        let rows = rows(&output);
        let gateway = rows.iter().find(|r| r.key == "Gateway infra/gw").unwrap();
        assert!(!gateway.is_ok(), "{gateway:?}");
        assert_eq!(problem_count(&output), 1, "{table}");
        let valid = render(&compile(&load(VALID).input));
        assert!(valid.contains("ResolvedRefs=True"), "{valid}");
    }

    #[test]
    fn problems_follow_the_rules() {
        let condition = |type_, status| Condition::new(type_, status, "Reason", "message", 1);
        assert!(is_problem(
            RowKind::RouteParent,
            &condition(types::ACCEPTED, Status::False)
        ));
        assert!(is_problem(
            RowKind::RouteParent,
            &condition(types::RESOLVED_REFS, Status::Unknown)
        ));
        assert!(is_problem(
            RowKind::RouteParent,
            &condition(types::PARTIALLY_INVALID, Status::True)
        ));
        assert!(!is_problem(
            RowKind::RouteParent,
            &condition(types::PROGRAMMED, Status::False)
        ));
        assert!(is_problem(
            RowKind::Gateway,
            &condition(types::PROGRAMMED, Status::False)
        ));
        assert!(is_problem(
            RowKind::Listener,
            &condition(types::CONFLICTED, Status::True)
        ));
        assert!(!is_problem(
            RowKind::Listener,
            &condition(types::CONFLICTED, Status::False)
        ));
        assert!(!is_problem(
            RowKind::GatewayClass,
            &condition(types::SUPPORTED_VERSION, Status::False)
        ));
    }

    #[test]
    fn changes_list_changed_and_removed_rows() {
        let before = compile(&load(VALID).input);
        assert_eq!(render_changes(&before, &before), "");
        let broken = VALID.replace("name: web, port: 80", "name: missing, port: 80");
        let after = compile(&load(&broken).input);
        let (changed, removed) = changes(&before, &after);
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].key, "HTTPRoute app/web parent infra/gw/http");
        assert!(removed.is_empty());

        let without_route = VALID.split("---").take(2).collect::<Vec<_>>().join("---");
        let after = compile(&load(&without_route).input);
        let text = render_changes(&before, &after);
        assert!(text.contains("removed: HTTPRoute app/web\n"), "{text}");
        assert!(text.contains("routes=0"), "{text}");
    }

    #[test]
    fn yaml_is_keyed_by_name() {
        let output = compile(&load(VALID).input);
        let yaml = to_yaml(&output).unwrap();
        assert!(yaml.contains("gatewayClasses:"), "{yaml}");
        assert!(yaml.contains("infra/gw:"), "{yaml}");
        assert!(yaml.contains("app/web:"), "{yaml}");
        assert!(yaml.contains("attachedRoutes: 1"), "{yaml}");
        let parsed: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(
            parsed.pointer("/httpRoutes/app~1web/parents/0/conditions/0/status"),
            Some(&serde_json::Value::String("True".into()))
        );
    }

    #[test]
    fn notes_name_what_was_not_checked() {
        let text = format!(
            "{VALID}---\n{}",
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: settings}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: elsewhere, namespace: infra}
spec:
  gatewayClassName: unknown
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: stray, namespace: app}
spec:
  parentRefs: [{name: elsewhere, namespace: infra}]
"#
        );
        let loaded = load(&text);
        let output = compile(&loaded.input);
        let notes = notes(&loaded, &output);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("PersistentVolumeClaim settings"),
            "{notes:?}"
        );
        assert!(notes[1].contains("GatewayClass unknown is not among the inputs"));
        assert!(notes[2].starts_with("HTTPRoute app/stray not checked"));
    }

    const TLS: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners: [{name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: db, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  hostnames: [db.example.com]
  rules: [{backendRefs: [{name: missing, port: 5432}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: stray, namespace: infra}
spec:
  parentRefs: [{name: elsewhere}]
  hostnames: [x.example.com]
  rules: [{backendRefs: [{name: missing, port: 5432}]}]
"#;

    /// Compiles `text` and checks what a route kind gets everywhere: rows (`route` and its
    /// parent `parent`), its key in the YAML, and a note for a route attached to nothing
    /// (`stray`, e.g. "TLSRoute infra/stray"). Returns every row.
    fn check_route_kind(
        text: &str,
        route: &str,
        parent: &str,
        yaml_key: &str,
        stray: &str,
    ) -> Vec<Row> {
        let loaded = load(text);
        let output = compile(&loaded.input);
        let rows = rows(&output);
        assert!(rows.iter().any(|r| r.key == route), "{rows:?}");
        assert!(rows.iter().any(|r| r.key == parent), "{rows:?}");
        let yaml = to_yaml(&output).unwrap();
        assert!(yaml.contains(yaml_key), "{yaml}");
        let notes = notes(&loaded, &output);
        let stray = format!("{stray} not checked");
        assert!(notes.iter().any(|n| n.starts_with(&stray)), "{notes:?}");
        rows
    }

    fn row<'r>(rows: &'r [Row], key: &str) -> &'r Row {
        rows.iter().find(|r| r.key == key).expect(key)
    }

    #[test]
    fn tls_routes_get_rows_yaml_and_notes() {
        let parent = "TLSRoute infra/db parent infra/gw";
        let rows = check_route_kind(
            TLS,
            "TLSRoute infra/db",
            parent,
            "tlsRoutes:",
            "TLSRoute infra/stray",
        );
        assert!(
            !row(&rows, parent).is_ok(),
            "the unresolved backend is a problem"
        );
    }

    #[test]
    fn grpc_routes_get_rows_yaml_and_notes() {
        let text = format!(
            "{VALID}---\n{}",
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: app}
spec:
  parentRefs: [{name: gw, namespace: infra}]
  hostnames: [rpc.example.com]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: stray, namespace: app}
spec:
  parentRefs: [{name: elsewhere, namespace: infra}]
"#
        );
        let parent = "GRPCRoute app/rpc parent infra/gw";
        let rows = check_route_kind(
            &text,
            "GRPCRoute app/rpc",
            parent,
            "grpcRoutes:",
            "GRPCRoute app/stray",
        );
        assert!(row(&rows, parent).is_ok(), "{rows:?}");
        // Both routes take every host of the listener; as old as each other, app/rpc comes
        // first by name and keeps the listener.
        let http = row(&rows, "HTTPRoute app/web parent infra/gw/http");
        assert!(
            render_rows(std::slice::from_ref(http)).contains("Accepted=False(HostnameConflict)"),
            "{http:?}"
        );
    }
}
