//! The operator's permissions, as one table. `make manifests` renders it into
//! `config/rbac/role.yaml`; a test holds it to an allow-list, so widening a permission is a
//! deliberate change in two places.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub const CLUSTER_ROLE: &str = "portcullis-operator";
pub const NAMESPACE_ROLE: &str = "portcullis-operator";

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
/// Server-side apply creates and updates with PATCH (a missing object also needs create); the
/// orphan sweep deletes what no Gateway of ours wants.
const APPLY: &[&str] = &["create", "patch", "delete"];
/// What is provisioned but never watched: the orphan sweep lists it (metadata only).
const APPLY_AND_SWEEP: &[&str] = &["list", "create", "patch", "delete"];

/// Cluster-wide: read the Gateway API and what routes point at, write their status, provision
/// each Gateway's objects in its namespace, and check agents' tokens.
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "gateway.networking.k8s.io",
            &[
                "gatewayclasses",
                "gateways",
                "listenersets",
                "httproutes",
                "grpcroutes",
                "tlsroutes",
                "tcproutes",
                "udproutes",
                "referencegrants",
                "backendtlspolicies",
            ],
            READ,
        ),
        rule(
            "gateway.networking.k8s.io",
            &[
                "gatewayclasses/status",
                "gateways/status",
                "listenersets/status",
                "httproutes/status",
                "grpcroutes/status",
                "tlsroutes/status",
                "tcproutes/status",
                "udproutes/status",
                "backendtlspolicies/status",
            ],
            // Statuses are written by merge patch only.
            &["patch"],
        ),
        rule("portcullis.dev", &["gatewayparameters"], READ),
        // Secrets and ConfigMaps are watched as metadata only; the referenced ones are read.
        rule(
            "",
            &["namespaces", "services", "secrets", "configmaps"],
            READ,
        ),
        rule("discovery.k8s.io", &["endpointslices"], READ),
        rule("", &["services", "configmaps"], APPLY),
        rule("", &["serviceaccounts"], APPLY_AND_SWEEP),
        rule("apps", &["deployments"], APPLY_AND_SWEEP),
        // Each Gateway's last-good Secret (server-side apply; deleted by garbage collection
        // with its Gateway, emptied by a patch when the Gateway is no longer ours).
        rule("", &["secrets"], &["create", "patch"]),
        // Proxy pods: readiness, and the annotation recording which config each serves.
        rule("", &["pods"], &["get", "list", "watch", "patch"]),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        rule("authentication.k8s.io", &["tokenreviews"], &["create"]),
    ]
}

/// In the operator's namespace: the leader-election Lease and the CA Secret.
pub fn namespace_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "coordination.k8s.io",
            &["leases"],
            &["get", "create", "update"],
        ),
        // The CA Secret: read, or created by the first replica.
        rule("", &["secrets"], &["get", "create"]),
    ]
}

pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(CLUSTER_ROLE.into()),
            ..ObjectMeta::default()
        },
        rules: Some(cluster_rules()),
        ..ClusterRole::default()
    }
}

pub fn namespace_role() -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(NAMESPACE_ROLE.into()),
            ..ObjectMeta::default()
        },
        rules: Some(namespace_rules()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (group, resource, verb) triples the operator may hold. Keep in sync deliberately.
    const ALLOWED: &[(&str, &str, &str)] = &[
        (
            "gateway.networking.k8s.io",
            "gatewayclasses",
            "get|list|watch",
        ),
        ("gateway.networking.k8s.io", "gateways", "get|list|watch"),
        (
            "gateway.networking.k8s.io",
            "listenersets",
            "get|list|watch",
        ),
        ("gateway.networking.k8s.io", "httproutes", "get|list|watch"),
        ("gateway.networking.k8s.io", "grpcroutes", "get|list|watch"),
        ("gateway.networking.k8s.io", "tlsroutes", "get|list|watch"),
        ("gateway.networking.k8s.io", "tcproutes", "get|list|watch"),
        ("gateway.networking.k8s.io", "udproutes", "get|list|watch"),
        (
            "gateway.networking.k8s.io",
            "referencegrants",
            "get|list|watch",
        ),
        (
            "gateway.networking.k8s.io",
            "backendtlspolicies",
            "get|list|watch",
        ),
        (
            "gateway.networking.k8s.io",
            "backendtlspolicies/status",
            "patch",
        ),
        (
            "gateway.networking.k8s.io",
            "gatewayclasses/status",
            "patch",
        ),
        ("gateway.networking.k8s.io", "gateways/status", "patch"),
        ("gateway.networking.k8s.io", "listenersets/status", "patch"),
        ("gateway.networking.k8s.io", "httproutes/status", "patch"),
        ("gateway.networking.k8s.io", "grpcroutes/status", "patch"),
        ("gateway.networking.k8s.io", "tlsroutes/status", "patch"),
        ("gateway.networking.k8s.io", "tcproutes/status", "patch"),
        ("gateway.networking.k8s.io", "udproutes/status", "patch"),
        ("portcullis.dev", "gatewayparameters", "get|list|watch"),
        ("", "namespaces", "get|list|watch"),
        ("", "secrets", "get|list|watch|create|patch"),
        ("", "services", "get|list|watch|create|patch|delete"),
        ("discovery.k8s.io", "endpointslices", "get|list|watch"),
        ("", "serviceaccounts", "list|create|patch|delete"),
        ("", "configmaps", "get|list|watch|create|patch|delete"),
        ("apps", "deployments", "list|create|patch|delete"),
        ("", "pods", "get|list|watch|patch"),
        ("events.k8s.io", "events", "create|patch"),
        ("authentication.k8s.io", "tokenreviews", "create"),
    ];
    const ALLOWED_NAMESPACED: &[(&str, &str, &str)] = &[
        ("coordination.k8s.io", "leases", "get|create|update"),
        ("", "secrets", "get|create"),
    ];

    fn check(rules: &[PolicyRule], allowed: &[(&str, &str, &str)]) {
        for rule in rules {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(!groups.iter().any(|g| g == "*"), "no wildcard groups");
            assert!(
                !resources.iter().any(|r| r.contains('*')),
                "no wildcard resources"
            );
            assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
            for group in &groups {
                for resource in &resources {
                    for verb in &rule.verbs {
                        assert_ne!(verb, "*", "no wildcard verbs");
                        assert!(
                            allowed.iter().any(|(g, r, verbs)| g == group
                                && r == resource
                                && verbs.split('|').any(|v| v == verb)),
                            "{verb} on {group}/{resource} is not in the allow-list"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rules_stay_within_the_allow_list() {
        check(&cluster_rules(), ALLOWED);
        check(&namespace_rules(), ALLOWED_NAMESPACED);
    }

    #[test]
    fn the_operator_never_updates_or_deletes_secrets_cluster_wide() {
        for rule in cluster_rules() {
            if rule
                .resources
                .unwrap_or_default()
                .iter()
                .any(|r| r == "secrets")
            {
                assert!(rule.verbs.iter().all(|v| {
                    ["get", "list", "watch", "create", "patch"].contains(&v.as_str())
                }));
            }
        }
    }
}
