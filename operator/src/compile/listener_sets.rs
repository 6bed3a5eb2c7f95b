//! ListenerSets: listeners that other teams add to a Gateway that allows them.
//!
//! A Gateway admits ListenerSets through `spec.allowedListeners` (none by default). Admitted
//! ListenerSets are merged in precedence order: the Gateway's own listeners, then ListenerSets
//! oldest first (ties by namespace/name). A ListenerSet listener that clashes with one earlier
//! in that order loses (ProtocolConflict, HostnameConflict); the Gateway's listeners never
//! lose to a ListenerSet, and a ListenerSet never changes its Gateway's conditions. Routes
//! reach a ListenerSet's listeners only through a parentRef of kind ListenerSet, and the
//! Gateway's only through a parentRef of kind Gateway.

use std::collections::{BTreeMap, HashMap, HashSet};

use portcullis_api::gateway_api::gateway::{
    Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners,
    GatewayListenersAllowedRoutesNamespacesSelector,
};
use portcullis_api::gateway_api::listenerset::ListenerSet;

use super::conditions::{Condition, Status, reasons, types};
use super::gateways::{
    GatewayState, ListenerOwner, ListenerState, PortKey, Problem, Protocol, listener,
    mark_conflicts, selector_matches,
};
use super::{GATEWAY_GROUP, Index, ListenerSetOutput, ObjectKey, by_age, generation};

pub const LISTENER_SET: &str = "ListenerSet";

/// A ListenerSet whose parent is one of our Gateways.
#[derive(Debug, Clone)]
pub struct ListenerSetState {
    pub key: ObjectKey,
    pub generation: i64,
    /// Accepted=False/NotAllowed: the Gateway does not admit it. Its listeners are neither
    /// validated nor served.
    pub refused: Option<Problem>,
    pub listeners: Vec<ListenerState>,
}

impl ListenerSetState {
    pub fn admitted(&self) -> bool {
        self.refused.is_none()
    }
}

/// Which port each protocol holds and which (port, hostname) pairs are taken, by listeners
/// that come earlier in precedence order.
#[derive(Default)]
struct Claims {
    protocols: HashMap<PortKey, Protocol>,
    hostnames: HashSet<(PortKey, Option<String>)>,
}

impl Claims {
    /// Claims what an accepted listener uses.
    fn add(&mut self, listener: &ListenerState) {
        if listener.accepted() {
            self.claim(listener);
        }
    }

    fn claim(&mut self, listener: &ListenerState) {
        if let (None, Some(protocol)) = (&listener.not_accepted, listener.protocol) {
            self.protocols
                .entry(listener.port_key())
                .or_insert(protocol);
            self.hostnames
                .insert((listener.port_key(), host_key(listener)));
        }
    }

    fn conflict(&self, listener: &ListenerState) -> Option<Problem> {
        let protocol = listener.protocol?;
        if self
            .protocols
            .get(&listener.port_key())
            .is_some_and(|p| *p != protocol)
        {
            return Some((
                reasons::PROTOCOL_CONFLICT,
                format!(
                    "port {} is already used with another protocol by a listener that takes precedence",
                    listener.port
                ),
            ));
        }
        self.hostnames
            .contains(&(listener.port_key(), host_key(listener)))
            .then(|| {
                (
                    reasons::HOSTNAME_CONFLICT,
                    format!(
                        "port {} and hostname {} are already used by a listener that takes precedence",
                        listener.port,
                        listener.hostname.as_deref().unwrap_or("(none)")
                    ),
                )
            })
    }
}

fn host_key(listener: &ListenerState) -> Option<String> {
    listener.hostname.as_deref().map(str::to_ascii_lowercase)
}

/// Adds every ListenerSet whose parent is one of `gateways` to it, validated and merged.
pub fn attach_listener_sets(index: &Index<'_>, gateways: &mut BTreeMap<ObjectKey, GatewayState>) {
    let mut claims: HashMap<ObjectKey, Claims> = HashMap::new();
    for set in by_age(&index.input.listener_sets) {
        let key = ObjectKey::of(set);
        let parent = &set.spec.parent_ref;
        if parent.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gateway_key = ObjectKey::new(
            parent
                .namespace
                .clone()
                .unwrap_or_else(|| key.namespace.clone()),
            parent.name.clone(),
        );
        let Some(gateway) = gateways.get_mut(&gateway_key) else {
            continue; // not a Gateway of ours: not ours to report on
        };
        let refused = index
            .input
            .gateways
            .iter()
            .find(|g| ObjectKey::of(*g) == gateway_key)
            .and_then(|g| refusal(index, g, &key.namespace));
        let mut state = ListenerSetState {
            key: key.clone(),
            generation: generation(set),
            refused,
            listeners: Vec::new(),
        };
        if state.admitted() {
            state.listeners = listeners(index, set);
            let claims = claims.entry(gateway_key).or_insert_with(|| {
                // The Gateway's listeners come first even where they conflict among
                // themselves: what the Gateway declares is never taken over by a ListenerSet.
                let mut own = Claims::default();
                gateway.listeners.iter().for_each(|l| own.claim(l));
                own
            });
            for listener in state.listeners.iter_mut().filter(|l| l.accepted()) {
                listener.conflicted = claims.conflict(listener);
            }
            // Among its own listeners a ListenerSet follows the Gateway rule: no winner.
            mark_conflicts(&mut state.listeners);
            state.listeners.iter().for_each(|l| claims.add(l));
        }
        gateway.listener_sets.push(state);
    }
}

/// Why `gateway` does not admit a ListenerSet in `namespace`, if it does not.
fn refusal(index: &Index<'_>, gateway: &Gateway, namespace: &str) -> Option<Problem> {
    let allowed = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    let gateway_namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let admitted = match allowed.and_then(|n| n.from.clone()) {
        None | Some(GatewayAllowedListenersNamespacesFrom::None) => false,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => namespace == gateway_namespace,
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => allowed
            .and_then(|n| n.selector.as_ref())
            .and_then(|selector| {
                same_shape::<_, GatewayListenersAllowedRoutesNamespacesSelector>(selector).ok()
            })
            .is_some_and(|selector| {
                selector_matches(&selector, &index.namespace_labels(namespace))
            }),
    };
    (!admitted).then(|| {
        (
            reasons::NOT_ALLOWED,
            format!(
                "Gateway {gateway_namespace}/{} does not allow ListenerSets from namespace {namespace} (spec.allowedListeners)",
                gateway.metadata.name.as_deref().unwrap_or_default()
            ),
        )
    })
}

/// The ListenerSet's listeners, validated as a Gateway's would be, owned by the ListenerSet.
fn listeners(index: &Index<'_>, set: &ListenerSet) -> Vec<ListenerState> {
    let namespace = set.metadata.namespace.as_deref().unwrap_or_default();
    let owner = ListenerOwner {
        kind: LISTENER_SET,
        namespace,
    };
    set.spec
        .listeners
        .iter()
        .map(|entry| match same_shape::<_, GatewayListeners>(entry) {
            Ok(spec) => listener(index, owner, &spec),
            Err(message) => {
                // The generated types share one schema; this only guards a future mismatch.
                let spec = GatewayListeners {
                    name: entry.name.clone(),
                    port: entry.port,
                    protocol: String::new(),
                    hostname: None,
                    allowed_routes: None,
                    tls: None,
                };
                let mut state = listener(index, owner, &spec);
                state.not_accepted = Some((reasons::UNSUPPORTED_VALUE, message));
                state
            }
        })
        .collect()
}

/// Converts between two generated types of one schema (a ListenerSet entry and a Gateway
/// listener, or their label selectors).
fn same_shape<A: serde::Serialize, B: serde::de::DeserializeOwned>(value: &A) -> Result<B, String> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("listener cannot be read: {e}"))
}

impl GatewayState {
    /// The status of one of this Gateway's ListenerSets.
    pub fn listener_set_output(&self, set: &ListenerSetState) -> ListenerSetOutput {
        let g = set.generation;
        let parent_serves = self.serves();
        let both = |status: Status, reason: &'static str, message: String| {
            vec![
                Condition::new(types::ACCEPTED, status, reason, message.clone(), g),
                Condition::new(types::PROGRAMMED, status, reason, message, g),
            ]
        };
        let listeners = set
            .listeners
            .iter()
            .map(|listener| self.listener_output(listener, g, parent_serves))
            .collect();
        let conditions = if let Some((reason, message)) = &set.refused {
            both(Status::False, reason, message.clone())
        } else if !parent_serves {
            both(
                Status::False,
                reasons::PARENT_NOT_ACCEPTED,
                format!("Gateway {} is not accepted", self.key),
            )
        } else if !set.listeners.iter().any(ListenerState::valid) {
            both(
                Status::False,
                reasons::LISTENERS_NOT_VALID,
                "no listener is valid".into(),
            )
        } else {
            let programmed = if set.listeners.iter().any(ListenerState::programmable) {
                Condition::new(
                    types::PROGRAMMED,
                    Status::True,
                    reasons::PROGRAMMED,
                    "ListenerSet is programmed",
                    g,
                )
            } else {
                Condition::new(
                    types::PROGRAMMED,
                    Status::False,
                    reasons::INVALID,
                    "no listener can be programmed",
                    g,
                )
            };
            vec![
                Condition::new(
                    types::ACCEPTED,
                    Status::True,
                    reasons::ACCEPTED,
                    "ListenerSet is accepted",
                    g,
                ),
                programmed,
            ]
        };
        ListenerSetOutput {
            gateway: self.key.clone(),
            conditions,
            listeners,
        }
    }

    /// ListenerSets with Accepted=True (`status.attachedListenerSets`).
    pub fn attached_listener_sets(&self) -> i32 {
        if !self.serves() {
            return 0;
        }
        let accepted = self
            .listener_sets
            .iter()
            .filter(|set| set.admitted() && set.listeners.iter().any(ListenerState::valid))
            .count();
        i32::try_from(accepted).unwrap_or(i32::MAX)
    }
}
