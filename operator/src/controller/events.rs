//! Kubernetes Events for what users look for in `kubectl describe`: an object was accepted or
//! refused, a Gateway became programmed or stopped being, a reference stopped resolving.
//!
//! Events follow condition changes only (status or reason differ from what the object held),
//! so a steady cluster emits nothing and a flapping one is visible. The leader emits them, in
//! the same pass that writes the status they describe.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as KubeCondition;
use kube::runtime::events::{Event, EventType};
use portcullis_api::gateway_api::httproute::{HttpRouteStatus, HttpRouteStatusParentsParentRef};

use super::status::same_parent;
use crate::compile::CONTROLLER_NAME;
use crate::compile::conditions::{reasons, types};

/// The Events API limits a note to 1 kB.
const MAX_NOTE_BYTES: usize = 1000;

/// One Event to publish about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    /// `Accepted`, `Programmed` or `ResolvedRefs` when the condition turned True; the
    /// condition's reason (`NotAllowedByListeners`, `InvalidCertificateRef`, …) otherwise.
    pub reason: String,
    pub note: String,
}

impl Notice {
    pub fn to_event(&self) -> Event {
        Event {
            type_: if self.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            note: Some(self.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        }
    }
}

/// Notices for the conditions in `after` that differ from `before`. `scope` names the part of
/// the object the conditions belong to (a route's parent), if not the object itself.
pub fn condition_changes(
    scope: Option<&str>,
    before: &[KubeCondition],
    after: &[KubeCondition],
) -> Vec<Notice> {
    let mut notices = Vec::new();
    for condition in after {
        if ![types::ACCEPTED, types::PROGRAMMED, types::RESOLVED_REFS]
            .contains(&condition.type_.as_str())
        {
            continue;
        }
        let previous = before.iter().find(|c| c.type_ == condition.type_);
        if previous.is_some_and(|p| p.status == condition.status && p.reason == condition.reason) {
            continue;
        }
        let is_true = condition.status == "True";
        // A first ResolvedRefs=True says nothing Accepted=True does not; a recovery does.
        if is_true && condition.type_ == types::RESOLVED_REFS && previous.is_none() {
            continue;
        }
        // Waiting for the first proxy to serve is progress, not a problem.
        let warning = !is_true && condition.reason != reasons::PENDING;
        let reason = if is_true {
            condition.type_.clone()
        } else {
            condition.reason.clone()
        };
        let prefix = scope.map(|s| format!("{s}: ")).unwrap_or_default();
        let note = format!(
            "{prefix}{}={} ({}): {}",
            condition.type_, condition.status, condition.reason, condition.message
        );
        notices.push(Notice {
            warning,
            reason,
            note: truncate(note),
        });
    }
    notices
}

/// Notices for an object's own conditions (a GatewayClass's or a Gateway's), before and after
/// a status write; absent conditions count as none.
pub fn object_changes(
    before: Option<&[KubeCondition]>,
    after: Option<&[KubeCondition]>,
) -> Vec<Notice> {
    condition_changes(None, before.unwrap_or_default(), after.unwrap_or_default())
}

/// Notices for a route's parents of our controller, each scoped to its parent.
pub fn route_changes(
    route_namespace: &str,
    before: Option<&HttpRouteStatus>,
    after: &HttpRouteStatus,
) -> Vec<Notice> {
    let ours = |p: &&portcullis_api::gateway_api::httproute::HttpRouteStatusParents| {
        p.controller_name == CONTROLLER_NAME
    };
    let mut notices = Vec::new();
    for parent in after.parents.iter().filter(ours) {
        let previous = before
            .into_iter()
            .flat_map(|s| s.parents.iter())
            .filter(ours)
            .find(|p| same_parent(&p.parent_ref, &parent.parent_ref))
            .map(|p| p.conditions.as_slice())
            .unwrap_or_default();
        let scope = parent_label(route_namespace, &parent.parent_ref);
        notices.extend(condition_changes(
            Some(&scope),
            previous,
            &parent.conditions,
        ));
    }
    notices
}

/// "parent Gateway infra/edge", with the section and port when the parentRef names them.
fn parent_label(route_namespace: &str, parent: &HttpRouteStatusParentsParentRef) -> String {
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    let mut label = format!("parent {kind} {namespace}/{}", parent.name);
    if let Some(section) = &parent.section_name {
        label.push_str(&format!(" section {section}"));
    }
    if let Some(port) = parent.port {
        label.push_str(&format!(" port {port}"));
    }
    label
}

fn truncate(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> KubeCondition {
        KubeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        }
    }

    #[test]
    fn a_new_object_reports_acceptance_and_refusals() {
        let after = [
            condition("Accepted", "True", "Accepted", "route is accepted"),
            condition(
                "ResolvedRefs",
                "True",
                "ResolvedRefs",
                "all references resolved",
            ),
        ];
        let notices = condition_changes(Some("parent infra/gw"), &[], &after);
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert!(!notices[0].warning);
        assert_eq!(notices[0].reason, "Accepted");
        assert_eq!(
            notices[0].note,
            "parent infra/gw: Accepted=True (Accepted): route is accepted"
        );

        let refused = [condition(
            "Accepted",
            "False",
            "NotAllowedByListeners",
            "namespace apps is not allowed",
        )];
        let notices = condition_changes(None, &[], &refused);
        assert!(notices[0].warning);
        assert_eq!(notices[0].reason, "NotAllowedByListeners");
    }

    #[test]
    fn unchanged_conditions_emit_nothing() {
        let conditions = [
            condition("Accepted", "True", "Accepted", "ok"),
            condition("Programmed", "False", "Invalid", "no listener"),
        ];
        assert!(condition_changes(None, &conditions, &conditions).is_empty());
        // A new message alone is not a change worth an Event.
        let reworded = [
            condition("Accepted", "True", "Accepted", "fine"),
            condition("Programmed", "False", "Invalid", "still no listener"),
        ];
        assert!(condition_changes(None, &conditions, &reworded).is_empty());
    }

    #[test]
    fn transitions_and_reason_changes_are_reported() {
        let before = [
            condition("Programmed", "False", "Pending", "waiting for a proxy"),
            condition(
                "ResolvedRefs",
                "False",
                "InvalidCertificateRef",
                "no secret",
            ),
        ];
        let after = [
            condition("Programmed", "True", "Programmed", "programmed"),
            condition("ResolvedRefs", "False", "RefNotPermitted", "no grant"),
        ];
        let notices = condition_changes(None, &before, &after);
        assert_eq!(notices.len(), 2);
        assert_eq!(
            (notices[0].warning, notices[0].reason.as_str()),
            (false, "Programmed")
        );
        assert_eq!(
            (notices[1].warning, notices[1].reason.as_str()),
            (true, "RefNotPermitted")
        );
        let recovered = [condition("ResolvedRefs", "True", "ResolvedRefs", "ok")];
        let notices = condition_changes(None, &before, &recovered);
        assert_eq!(notices[0].reason, "ResolvedRefs");
    }

    #[test]
    fn pending_is_not_a_warning_and_other_types_are_ignored() {
        let after = [
            condition("Programmed", "False", "Pending", "waiting"),
            condition("PartiallyInvalid", "True", "UnsupportedValue", "rule 2"),
        ];
        let notices = condition_changes(None, &[], &after);
        assert_eq!(notices.len(), 1);
        assert!(!notices[0].warning);
        assert_eq!(notices[0].reason, "Pending");
    }

    #[test]
    fn route_notices_are_scoped_to_their_parent() {
        use portcullis_api::gateway_api::httproute::HttpRouteStatusParents;
        let parent = |name: &str, section: Option<&str>, conditions: Vec<KubeCondition>| {
            HttpRouteStatusParents {
                conditions,
                controller_name: CONTROLLER_NAME.into(),
                parent_ref: HttpRouteStatusParentsParentRef {
                    name: name.into(),
                    namespace: Some("infra".into()),
                    section_name: section.map(Into::into),
                    ..Default::default()
                },
            }
        };
        let accepted = || vec![condition("Accepted", "True", "Accepted", "ok")];
        let before = HttpRouteStatus {
            parents: vec![parent("gw", Some("http"), accepted())],
        };
        let mut others = parent("gw", None, vec![]);
        others.controller_name = "example.com/other".into();
        others.conditions = vec![condition("Accepted", "False", "Whatever", "not ours")];
        let after = HttpRouteStatus {
            parents: vec![
                parent("gw", Some("http"), accepted()),
                parent(
                    "gw",
                    Some("https"),
                    vec![condition(
                        "Accepted",
                        "False",
                        "NotAllowedByListeners",
                        "no",
                    )],
                ),
                others,
            ],
        };
        let notices = route_changes("apps", Some(&before), &after);
        assert_eq!(notices.len(), 1, "{notices:?}");
        assert_eq!(
            notices[0].note,
            "parent Gateway infra/gw section https: Accepted=False (NotAllowedByListeners): no"
        );
    }

    #[test]
    fn notes_fit_the_events_api() {
        let long = "é".repeat(800);
        let after = [condition("Accepted", "False", "Invalid", &long)];
        let note = &condition_changes(None, &[], &after)[0].note;
        assert!(note.len() <= MAX_NOTE_BYTES);
        assert!(note.ends_with("..."));
    }
}
