//! From compiled conditions to the status objects the API holds.
//!
//! Rules (Gateway API §status): conditions are keyed by type; conditions of other types are
//! left alone; `lastTransitionTime` changes only when a condition's status changes; route
//! parent entries of other controllers are kept as they are; GatewayClass supported features
//! are sorted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition as KubeCondition, ObjectMeta, Time,
};
use portcullis_api::gateway_api::backendtlspolicy::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors,
    BackendTlsPolicyStatusAncestorsAncestorRef,
};
use portcullis_api::gateway_api::gateway::{
    GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use portcullis_api::gateway_api::gatewayclass::{
    GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use portcullis_api::gateway_api::httproute::{
    HttpRouteStatus, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use portcullis_api::gateway_api::listenerset::ListenerSetStatus;

use crate::compile::backend_tls::PolicyOutput;
use crate::compile::conditions::{reasons, types};
use std::collections::BTreeMap;

use crate::compile::{
    CONTROLLER_NAME, ClassOutput, Condition, GatewayOutput, ListenerOutput, ListenerSetOutput,
    ObjectKey, RouteOutput, Status,
};

/// Merges `ours` into `existing`.
pub fn merge_conditions(
    existing: &[KubeCondition],
    ours: &[Condition],
    now: &Time,
) -> Vec<KubeCondition> {
    let mut merged: Vec<KubeCondition> = existing
        .iter()
        .filter(|c| !ours.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    for condition in ours {
        let status = status_text(condition.status);
        let previous = existing.iter().find(|c| c.type_ == condition.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        merged.push(KubeCondition {
            type_: condition.type_.to_string(),
            status: status.to_string(),
            reason: condition.reason.to_string(),
            message: truncate(&condition.message, 32_768),
            observed_generation: Some(condition.observed_generation),
            last_transition_time,
        });
    }
    merged.sort_by(|a, b| a.type_.cmp(&b.type_));
    merged
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::True => "True",
        Status::False => "False",
        Status::Unknown => "Unknown",
    }
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_string();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_string()
}

pub fn class_status(
    existing: Option<&GatewayClassStatus>,
    class: &ClassOutput,
    now: &Time,
) -> GatewayClassStatus {
    let current = existing
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    GatewayClassStatus {
        conditions: Some(merge_conditions(&current, &class.conditions, now)),
        supported_features: Some(
            class
                .supported_features
                .iter()
                .map(|name| GatewayClassStatusSupportedFeatures {
                    name: name.to_string(),
                })
                .collect(),
        ),
    }
}

/// Whether the proxies serve the Gateway's current config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// At least one ready proxy pod applied the current config.
    Served,
    /// Not yet; the message says what is missing.
    Waiting(String),
}

/// The Gateway's status: compiled conditions, with Programmed held at Pending until a proxy
/// serves the config, and the Service's addresses.
pub fn gateway_status(
    existing: Option<&GatewayStatus>,
    output: &GatewayOutput,
    delivery: &Delivery,
    addresses: &[GatewayStatusAddresses],
    now: &Time,
) -> GatewayStatus {
    let mut current = existing
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions = held(&output.conditions, delivery);
    if addresses.is_empty() {
        without_address(&mut conditions);
    }
    // Present only while some port lets clients through without a valid certificate; the API
    // says it is removed, not set False, once that stops.
    let insecure = types::INSECURE_FRONTEND_VALIDATION_MODE;
    if !conditions.iter().any(|c| c.type_ == insecure) {
        current.retain(|c| c.type_ != insecure);
    }
    let listeners = listener_statuses(
        existing.and_then(|s| s.listeners.as_deref()),
        &output.listeners,
        delivery,
        now,
    );
    GatewayStatus {
        addresses: (!addresses.is_empty()).then(|| addresses.to_vec()),
        attached_listener_sets: Some(output.attached_listener_sets),
        conditions: Some(merge_conditions(&current, &conditions, now)),
        listeners: Some(listeners),
    }
}

/// Programmed=True becomes False/AddressNotAssigned while the Gateway's Service has none.
fn without_address(conditions: &mut [Condition]) {
    if let Some(programmed) = conditions
        .iter_mut()
        .find(|c| c.type_ == types::PROGRAMMED && c.is_true())
    {
        programmed.status = Status::False;
        programmed.reason = reasons::ADDRESS_NOT_ASSIGNED;
        programmed.message = "the Gateway's Service has no address yet".into();
    }
}

/// Programmed=True is held at False/Pending until a proxy serves the config.
fn held(conditions: &[Condition], delivery: &Delivery) -> Vec<Condition> {
    conditions
        .iter()
        .map(|c| match delivery {
            Delivery::Waiting(message) if c.type_ == types::PROGRAMMED && c.is_true() => {
                Condition {
                    status: Status::False,
                    reason: reasons::PENDING,
                    message: message.clone(),
                    ..c.clone()
                }
            }
            _ => c.clone(),
        })
        .collect()
}

/// Listener entries (a Gateway's, or a ListenerSet's in the same shape).
fn listener_statuses(
    existing: Option<&[GatewayStatusListeners]>,
    listeners: &[ListenerOutput],
    delivery: &Delivery,
    now: &Time,
) -> Vec<GatewayStatusListeners> {
    listeners
        .iter()
        .map(|listener| {
            let previous = existing
                .and_then(|ls| ls.iter().find(|l| l.name == listener.name))
                .map(|l| l.conditions.clone())
                .unwrap_or_default();
            GatewayStatusListeners {
                name: listener.name.clone(),
                attached_routes: listener.attached_routes,
                supported_kinds: Some(
                    listener
                        .supported_kinds
                        .iter()
                        .map(|k| GatewayStatusListenersSupportedKinds {
                            group: Some(k.group.clone()),
                            kind: k.kind.clone(),
                        })
                        .collect(),
                ),
                conditions: merge_conditions(&previous, &held(&listener.conditions, delivery), now),
            }
        })
        .collect()
}

/// A ListenerSet's status: its conditions and listeners, with Programmed held like its
/// Gateway's until a proxy serves the config and the Gateway has an address.
pub fn listener_set_status(
    existing: Option<&ListenerSetStatus>,
    output: &ListenerSetOutput,
    delivery: &Delivery,
    gateway_has_address: bool,
    now: &Time,
) -> Option<ListenerSetStatus> {
    let current = existing
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let previous: Option<Vec<GatewayStatusListeners>> = existing
        .and_then(|s| s.listeners.as_ref())
        .and_then(same_shape);
    let listeners = listener_statuses(previous.as_deref(), &output.listeners, delivery, now);
    let mut conditions = held(&output.conditions, delivery);
    if !gateway_has_address {
        without_address(&mut conditions);
    }
    Some(ListenerSetStatus {
        conditions: Some(merge_conditions(&current, &conditions, now)),
        listeners: Some(same_shape(&listeners)?),
    })
}

/// The status a ListenerSet gets back once no Gateway of ours is its parent: what the API
/// server puts there before any controller looked (Accepted and Programmed Unknown/Pending, no
/// listeners), so nothing keeps claiming listeners that no proxy serves. None when it already
/// reads that way.
pub fn released_listener_set_status(
    existing: Option<&ListenerSetStatus>,
    now: &Time,
) -> Option<ListenerSetStatus> {
    let conditions = existing
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[]);
    let pending = |type_: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "Unknown" && c.reason == reasons::PENDING)
    };
    let listeners = existing.and_then(|s| s.listeners.as_ref());
    if conditions.len() == 2
        && pending(types::ACCEPTED)
        && pending(types::PROGRAMMED)
        && listeners.is_none_or(|l| l.is_empty())
    {
        return None;
    }
    let condition = |type_: &str| KubeCondition {
        type_: type_.into(),
        status: "Unknown".into(),
        reason: reasons::PENDING.into(),
        message: "Waiting for controller".into(),
        last_transition_time: now.clone(),
        observed_generation: None,
    };
    Some(ListenerSetStatus {
        conditions: Some(vec![
            condition(types::ACCEPTED),
            condition(types::PROGRAMMED),
        ]),
        listeners: Some(Vec::new()),
    })
}

/// Whether `manager` made the object's latest status write, as its managed fields record it.
pub fn last_status_writer_is(meta: &ObjectMeta, manager: &str) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.subresource.as_deref() == Some("status"))
        .max_by_key(|entry| entry.time.as_ref().map(|t| t.0))
        .is_some_and(|entry| entry.manager.as_deref() == Some(manager))
}

/// The route's status: our parent entries replaced, other controllers' kept.
pub fn route_status(
    existing: Option<&HttpRouteStatus>,
    output: &RouteOutput,
    now: &Time,
) -> HttpRouteStatus {
    let existing_parents = existing.map(|s| s.parents.clone()).unwrap_or_default();
    let mut parents: Vec<HttpRouteStatusParents> = existing_parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for parent in &output.parents {
        let parent_ref = HttpRouteStatusParentsParentRef {
            group: parent.parent_ref.group.clone(),
            kind: parent.parent_ref.kind.clone(),
            name: parent.parent_ref.name.clone(),
            namespace: parent.parent_ref.namespace.clone(),
            port: parent.parent_ref.port,
            section_name: parent.parent_ref.section_name.clone(),
        };
        let previous = existing_parents
            .iter()
            .find(|p| {
                p.controller_name == CONTROLLER_NAME && same_parent(&p.parent_ref, &parent_ref)
            })
            .map(|p| p.conditions.clone())
            .unwrap_or_default();
        parents.push(HttpRouteStatusParents {
            conditions: merge_conditions(&previous, &parent.conditions, now),
            controller_name: CONTROLLER_NAME.to_string(),
            parent_ref,
        });
    }
    HttpRouteStatus { parents }
}

/// The route outputs to write: the compiler's, plus an empty one for every route whose status
/// still holds an entry of ours although none of its parentRefs names a parent of ours any
/// more (detached, or its Gateway deleted), so that entry is removed and other controllers'
/// entries stay.
pub fn including_detached<K: kube::Resource>(
    outputs: &BTreeMap<ObjectKey, RouteOutput>,
    objects: &[K],
    has_our_entry: impl Fn(&K) -> bool,
) -> BTreeMap<ObjectKey, RouteOutput> {
    let mut all = outputs.clone();
    for object in objects {
        let key = ObjectKey::of(object);
        if !all.contains_key(&key) && has_our_entry(object) {
            all.insert(
                key,
                RouteOutput {
                    parents: Vec::new(),
                },
            );
        }
    }
    all
}

/// A BackendTLSPolicy's status: one ancestor entry of ours per Gateway that routes to its
/// targets (replacing our earlier ones), other controllers' entries kept.
pub fn policy_status(
    existing: Option<&BackendTlsPolicyStatus>,
    output: &PolicyOutput,
    now: &Time,
) -> BackendTlsPolicyStatus {
    let existing_ancestors = existing.map(|s| s.ancestors.clone()).unwrap_or_default();
    let mut ancestors: Vec<BackendTlsPolicyStatusAncestors> = existing_ancestors
        .iter()
        .filter(|a| a.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for ancestor in &output.ancestors {
        let ancestor_ref = BackendTlsPolicyStatusAncestorsAncestorRef {
            group: Some(crate::compile::GATEWAY_GROUP.into()),
            kind: Some("Gateway".into()),
            name: ancestor.gateway.name.clone(),
            namespace: Some(ancestor.gateway.namespace.clone()),
            port: None,
            section_name: None,
        };
        let previous = existing_ancestors
            .iter()
            .find(|a| a.controller_name == CONTROLLER_NAME && a.ancestor_ref == ancestor_ref)
            .map(|a| a.conditions.clone())
            .unwrap_or_default();
        ancestors.push(BackendTlsPolicyStatusAncestors {
            ancestor_ref,
            conditions: merge_conditions(&previous, &ancestor.conditions, now),
            controller_name: CONTROLLER_NAME.to_string(),
        });
    }
    BackendTlsPolicyStatus { ancestors }
}

/// The policy outputs to write: the compiler's, plus an empty one for every policy whose status
/// still holds an entry of ours although no Gateway of ours routes to its targets any more.
pub fn policies_including_detached(
    outputs: &BTreeMap<ObjectKey, PolicyOutput>,
    policies: &[BackendTlsPolicy],
) -> BTreeMap<ObjectKey, PolicyOutput> {
    let mut all = outputs.clone();
    for policy in policies {
        let ours = policy.status.as_ref().is_some_and(|s| {
            s.ancestors
                .iter()
                .any(|a| a.controller_name == CONTROLLER_NAME)
        });
        if ours {
            all.entry(ObjectKey::of(policy)).or_insert(PolicyOutput {
                ancestors: Vec::new(),
            });
        }
    }
    all
}

/// Whether a route status (in HTTPRoute's shape) holds a parent entry of ours.
pub fn has_our_entry(status: Option<&HttpRouteStatus>) -> bool {
    status.is_some_and(|s| {
        s.parents
            .iter()
            .any(|p| p.controller_name == CONTROLLER_NAME)
    })
}

/// ParentRefs compare with API defaults applied (group and kind may be omitted).
pub fn same_parent(
    a: &HttpRouteStatusParentsParentRef,
    b: &HttpRouteStatusParentsParentRef,
) -> bool {
    let group = |r: &HttpRouteStatusParentsParentRef| {
        r.group
            .clone()
            .unwrap_or_else(|| crate::compile::GATEWAY_GROUP.into())
    };
    let kind =
        |r: &HttpRouteStatusParentsParentRef| r.kind.clone().unwrap_or_else(|| "Gateway".into());
    group(a) == group(b)
        && kind(a) == kind(b)
        && a.name == b.name
        && a.namespace == b.namespace
        && a.section_name == b.section_name
        && a.port == b.port
}

/// `value` re-read as another type of the same JSON shape (TLSRoute and HTTPRoute statuses).
pub fn same_shape<A: serde::Serialize, B: serde::de::DeserializeOwned>(value: &A) -> Option<B> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Statuses equal apart from transition times (which only move when a status changes).
pub fn same_status<T: serde::Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{ListenerOutput, ParentRef, RouteKind, RouteParentOutput};

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn condition(type_: &'static str, status: Status, reason: &'static str) -> Condition {
        Condition::new(type_, status, reason, "m", 4)
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let first = merge_conditions(
            &[],
            &[condition("Accepted", Status::True, "Accepted")],
            &time(100),
        );
        assert_eq!(first[0].last_transition_time, time(100));
        let foreign = KubeCondition {
            type_: "example.com/Other".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: time(50),
        };
        let mut existing = first.clone();
        existing.push(foreign.clone());
        let same = merge_conditions(
            &existing,
            &[condition("Accepted", Status::True, "Accepted")],
            &time(200),
        );
        assert_eq!(
            same.iter()
                .find(|c| c.type_ == "Accepted")
                .unwrap()
                .last_transition_time,
            time(100)
        );
        assert!(same.contains(&foreign), "other types are kept");
        let flipped = merge_conditions(
            &existing,
            &[condition("Accepted", Status::False, "Invalid")],
            &time(300),
        );
        let accepted = flipped.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert_eq!(accepted.last_transition_time, time(300));
        assert_eq!(accepted.observed_generation, Some(4));
    }

    fn gateway_output() -> GatewayOutput {
        GatewayOutput {
            attached_listener_sets: 0,
            class_name: "portcullis".into(),
            conditions: vec![
                condition("Accepted", Status::True, "Accepted"),
                condition("Programmed", Status::True, "Programmed"),
            ],
            listeners: vec![ListenerOutput {
                name: "http".into(),
                supported_kinds: vec![RouteKind {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "HTTPRoute".into(),
                }],
                attached_routes: 2,
                conditions: vec![condition("Programmed", Status::True, "Programmed")],
            }],
            config: None,
            parameters: Default::default(),
            parameters_resolved: true,
            static_addresses: Vec::new(),
            service_ports: vec![crate::compile::ExposedPort::tcp(80)],
        }
    }

    #[test]
    fn listener_set_status_replaces_the_pending_defaults_and_waits_like_its_gateway() {
        let gateway = gateway_output();
        let output = ListenerSetOutput {
            gateway: crate::compile::ObjectKey::new("infra", "gw"),
            conditions: gateway.conditions.clone(),
            listeners: gateway.listeners.clone(),
        };
        // What the API server puts there before any controller looked.
        let pending = |type_: &str| KubeCondition {
            type_: type_.into(),
            status: "Unknown".into(),
            reason: "Pending".into(),
            message: "Waiting for controller".into(),
            last_transition_time: time(0),
            observed_generation: None,
        };
        let defaulted = ListenerSetStatus {
            conditions: Some(vec![pending("Accepted"), pending("Programmed")]),
            listeners: None,
        };
        let condition = |s: &ListenerSetStatus, type_: &str| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == type_)
                .unwrap()
                .clone()
        };
        let waiting = listener_set_status(
            Some(&defaulted),
            &output,
            &Delivery::Waiting("no proxy yet".into()),
            true,
            &time(1),
        )
        .unwrap();
        assert_eq!(waiting.conditions.as_ref().unwrap().len(), 2);
        assert_eq!(condition(&waiting, "Accepted").status, "True");
        assert!(
            condition(&waiting, "Accepted")
                .observed_generation
                .is_some()
        );
        assert_eq!(condition(&waiting, "Programmed").reason, "Pending");
        let served =
            listener_set_status(Some(&waiting), &output, &Delivery::Served, true, &time(2))
                .unwrap();
        assert_eq!(condition(&served, "Programmed").status, "True");
        let listener = &served.listeners.as_ref().unwrap()[0];
        assert_eq!(
            (listener.name.as_str(), listener.attached_routes),
            ("http", 2)
        );
        let no_address =
            listener_set_status(Some(&served), &output, &Delivery::Served, false, &time(3))
                .unwrap();
        assert_eq!(
            condition(&no_address, "Programmed").reason,
            "AddressNotAssigned"
        );
    }

    #[test]
    fn a_released_listener_set_reads_as_no_controller_left_it() {
        let gateway = gateway_output();
        let output = ListenerSetOutput {
            gateway: crate::compile::ObjectKey::new("infra", "gw"),
            conditions: gateway.conditions.clone(),
            listeners: gateway.listeners.clone(),
        };
        let served = listener_set_status(None, &output, &Delivery::Served, true, &time(1)).unwrap();
        let released = released_listener_set_status(Some(&served), &time(2)).unwrap();
        let conditions = released.conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 2);
        for condition in conditions {
            assert_eq!(
                (condition.status.as_str(), condition.reason.as_str()),
                ("Unknown", "Pending"),
                "{condition:?}"
            );
            assert_eq!(condition.observed_generation, None);
        }
        assert_eq!(released.listeners, Some(Vec::new()));
        // Released once: the next pass writes nothing.
        assert_eq!(
            released_listener_set_status(Some(&released), &time(3)),
            None
        );
        // A status that never had anything of ours in it (the API server's defaults) too.
        let defaulted = ListenerSetStatus {
            listeners: None,
            ..released
        };
        assert_eq!(
            released_listener_set_status(Some(&defaulted), &time(3)),
            None
        );
        assert!(released_listener_set_status(None, &time(3)).is_some());
    }

    #[test]
    fn the_last_status_writer_is_read_from_managed_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let entry = |manager: &str, subresource: Option<&str>, at: i64| ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: subresource.map(Into::into),
            time: Some(time(at)),
            ..Default::default()
        };
        let meta = |entries: Vec<ManagedFieldsEntry>| ObjectMeta {
            managed_fields: Some(entries),
            ..Default::default()
        };
        let ours = meta(vec![
            entry("kubectl", None, 5),
            entry("other-controller", Some("status"), 1),
            entry("portcullis", Some("status"), 2),
        ]);
        assert!(last_status_writer_is(&ours, "portcullis"));
        let theirs = meta(vec![
            entry("portcullis", Some("status"), 2),
            entry("other-controller", Some("status"), 3),
        ]);
        assert!(!last_status_writer_is(&theirs, "portcullis"));
        assert!(!last_status_writer_is(&ObjectMeta::default(), "portcullis"));
    }

    #[test]
    fn programmed_waits_for_a_proxy_and_an_address() {
        let address = GatewayStatusAddresses {
            r#type: Some("IPAddress".into()),
            value: "10.96.0.10".into(),
        };
        let waiting = gateway_status(
            None,
            &gateway_output(),
            &Delivery::Waiting("no proxy yet".into()),
            std::slice::from_ref(&address),
            &time(1),
        );
        let programmed = |s: &GatewayStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Programmed")
                .unwrap()
                .clone()
        };
        assert_eq!(programmed(&waiting).status, "False");
        assert_eq!(programmed(&waiting).reason, "Pending");
        assert_eq!(
            waiting.listeners.as_ref().unwrap()[0].conditions[0].reason,
            "Pending"
        );
        let served = gateway_status(
            Some(&waiting),
            &gateway_output(),
            &Delivery::Served,
            &[address],
            &time(2),
        );
        assert_eq!(programmed(&served).status, "True");
        assert_eq!(served.addresses.as_ref().unwrap()[0].value, "10.96.0.10");
        assert_eq!(served.listeners.as_ref().unwrap()[0].attached_routes, 2);
        let no_address = gateway_status(None, &gateway_output(), &Delivery::Served, &[], &time(3));
        assert_eq!(programmed(&no_address).reason, "AddressNotAssigned");
    }

    #[test]
    fn insecure_frontend_mode_is_removed_once_no_port_falls_back() {
        let mut insecure = gateway_output();
        insecure.conditions.push(condition(
            "InsecureFrontendValidationMode",
            Status::True,
            "ConfigurationChanged",
        ));
        let types = |s: &GatewayStatus| -> Vec<String> {
            s.conditions
                .iter()
                .flatten()
                .map(|c| c.type_.clone())
                .collect()
        };
        let address = GatewayStatusAddresses {
            r#type: Some("IPAddress".into()),
            value: "10.96.0.10".into(),
        };
        let addresses = std::slice::from_ref(&address);
        let with = gateway_status(None, &insecure, &Delivery::Served, addresses, &time(1));
        assert!(types(&with).contains(&"InsecureFrontendValidationMode".to_string()));
        let mut foreign = with.clone();
        if let Some(conditions) = foreign.conditions.as_mut() {
            conditions.push(KubeCondition {
                type_: "example.com/Other".into(),
                status: "True".into(),
                reason: "Other".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: time(1),
            });
        }
        let without = gateway_status(
            Some(&foreign),
            &gateway_output(),
            &Delivery::Served,
            addresses,
            &time(2),
        );
        assert_eq!(
            types(&without),
            ["Accepted", "Programmed", "example.com/Other"],
            "ours removed, another controller's kept"
        );
    }

    #[test]
    fn the_gateway_resolved_refs_is_written_as_compiled() {
        let address = GatewayStatusAddresses {
            r#type: Some("IPAddress".into()),
            value: "10.96.0.10".into(),
        };
        let addresses = std::slice::from_ref(&address);
        let resolved_refs = |s: &GatewayStatus| {
            s.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ResolvedRefs")
                .cloned()
                .unwrap()
        };
        let mut unresolved = gateway_output();
        unresolved.conditions.push(condition(
            "ResolvedRefs",
            Status::False,
            "InvalidClientCertificateRef",
        ));
        let first = gateway_status(None, &unresolved, &Delivery::Served, addresses, &time(1));
        let written = resolved_refs(&first);
        assert_eq!(
            (written.status.as_str(), written.reason.as_str()),
            ("False", "InvalidClientCertificateRef")
        );
        assert_eq!(written.observed_generation, Some(4));
        let mut resolved = gateway_output();
        resolved
            .conditions
            .push(condition("ResolvedRefs", Status::True, "ResolvedRefs"));
        let waiting = Delivery::Waiting("no proxy yet".into());
        let second = gateway_status(Some(&first), &resolved, &waiting, addresses, &time(2));
        let written = resolved_refs(&second);
        assert_eq!(
            (written.status.as_str(), written.reason.as_str()),
            ("True", "ResolvedRefs"),
            "not held back while the proxies catch up, unlike Programmed"
        );
        assert_eq!(written.last_transition_time, time(2));
    }

    #[test]
    fn detached_routes_lose_only_our_entries() {
        use portcullis_api::gateway_api::httproute::HttpRoute;
        let parent = |controller: &str, name: &str| HttpRouteStatusParents {
            conditions: vec![],
            controller_name: controller.into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                name: name.into(),
                ..Default::default()
            },
        };
        let route = |name: &str, parents: Vec<HttpRouteStatusParents>| {
            let mut route = HttpRoute::new(name, Default::default());
            route.metadata.namespace = Some("apps".into());
            route.status = Some(HttpRouteStatus { parents });
            route
        };
        let objects = vec![
            route(
                "detached",
                vec![parent(CONTROLLER_NAME, "gw"), parent("other/ctl", "theirs")],
            ),
            route("theirs-only", vec![parent("other/ctl", "theirs")]),
        ];
        let all = including_detached(&BTreeMap::new(), &objects, |r| {
            has_our_entry(r.status.as_ref())
        });
        assert_eq!(
            all.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["apps/detached"]
        );
        let cleaned = route_status(
            objects[0].status.as_ref(),
            &all[&ObjectKey::new("apps", "detached")],
            &time(1),
        );
        assert_eq!(cleaned.parents.len(), 1);
        assert_eq!(cleaned.parents[0].controller_name, "other/ctl");
    }

    #[test]
    fn route_parents_of_other_controllers_are_kept() {
        let other = HttpRouteStatusParents {
            conditions: vec![],
            controller_name: "example.com/other".into(),
            parent_ref: HttpRouteStatusParentsParentRef {
                name: "theirs".into(),
                ..Default::default()
            },
        };
        let existing = HttpRouteStatus {
            parents: vec![other.clone()],
        };
        let output = RouteOutput {
            parents: vec![RouteParentOutput {
                parent_ref: ParentRef {
                    group: None,
                    kind: None,
                    namespace: Some("infra".into()),
                    name: "gw".into(),
                    section_name: Some("http".into()),
                    port: None,
                },
                controller_name: CONTROLLER_NAME,
                conditions: vec![condition("Accepted", Status::True, "Accepted")],
            }],
        };
        let status = route_status(Some(&existing), &output, &time(1));
        assert_eq!(status.parents.len(), 2);
        assert!(status.parents.contains(&other));
        let ours = status
            .parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME)
            .unwrap();
        assert_eq!(ours.parent_ref.section_name.as_deref(), Some("http"));
        assert_eq!(
            ours.parent_ref.group, None,
            "the spec's parentRef is echoed as written"
        );
        let again = route_status(Some(&status), &output, &time(9));
        assert!(
            same_status(&status, &again),
            "re-rendering an unchanged route changes nothing"
        );

        // A TLSRoute's status is merged through the same shape and comes back unchanged.
        use portcullis_api::gateway_api::tlsroute::TlsRouteStatus;
        let as_tls: TlsRouteStatus = same_shape(&status).expect("the shapes agree");
        assert_eq!(as_tls.parents.len(), 2);
        assert_eq!(
            as_tls.parents[1].parent_ref.section_name.as_deref(),
            Some("http")
        );
        let back: HttpRouteStatus = same_shape(&as_tls).expect("and back");
        assert_eq!(back, status);
    }
}
