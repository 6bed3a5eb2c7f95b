//! ReferenceGrant: a reference from one namespace into another is allowed only when a grant in
//! the target namespace says so.

use kube::ResourceExt;
use portcullis_api::gateway_api::referencegrant::ReferenceGrant;

/// The referring side: group and kind of the referring object, and its namespace.
pub struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The referenced object.
pub struct To<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// Whether `from` may refer to `to`. Same-namespace references need no grant.
pub fn permitted(grants: &[ReferenceGrant], from: &From<'_>, to: &To<'_>) -> bool {
    if from.namespace == to.namespace {
        return true;
    }
    grants
        .iter()
        .filter(|grant| grant.namespace().as_deref() == Some(to.namespace))
        .any(|grant| {
            grant.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            }) && grant.spec.to.iter().any(|t| {
                t.group == to.group
                    && t.kind == to.kind
                    && t.name.as_deref().is_none_or(|name| name == to.name)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(namespace: &str, from_ns: &str, to_name: Option<&str>) -> ReferenceGrant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": namespace},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_ns}],
                "to": [{"group": "", "kind": "Service", "name": to_name}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn grants() {
        let from = From {
            group: "gateway.networking.k8s.io",
            kind: "HTTPRoute",
            namespace: "app",
        };
        let to = |namespace, name| To {
            group: "",
            kind: "Service",
            namespace,
            name,
        };
        assert!(permitted(&[], &from, &to("app", "svc")), "same namespace");
        assert!(!permitted(&[], &from, &to("backend", "svc")));
        let all = [grant("backend", "app", None)];
        assert!(permitted(&all, &from, &to("backend", "svc")));
        let specific = [grant("backend", "app", Some("svc"))];
        assert!(permitted(&specific, &from, &to("backend", "svc")));
        assert!(!permitted(&specific, &from, &to("backend", "other")));
        let wrong_namespace = [grant("elsewhere", "app", None)];
        assert!(!permitted(&wrong_namespace, &from, &to("backend", "svc")));
        let wrong_from = [grant("backend", "other-app", None)];
        assert!(!permitted(&wrong_from, &from, &to("backend", "svc")));
        let gateway = From {
            group: "gateway.networking.k8s.io",
            kind: "Gateway",
            namespace: "app",
        };
        assert!(
            !permitted(&all, &gateway, &to("backend", "svc")),
            "the grant names HTTPRoute"
        );
    }
}
