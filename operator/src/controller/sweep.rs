//! Removes provisioned infrastructure that no Gateway of ours wants any more.
//!
//! Deleting a Gateway deletes what was provisioned for it through owner references
//! (Kubernetes' garbage collector). Owner references cannot help while the Gateway still
//! exists, though, and then objects can outlive their purpose:
//! - the Gateway moved to another controller's GatewayClass (or its class to another
//!   controller): its proxies would keep serving the last config on the Gateway's address;
//! - it moved to another GatewayClass of ours: the objects are named after the class, so new
//!   ones are made and the old ones would keep running;
//! - its last listener went away: its Service is no longer wanted.
//!
//! The leader lists what carries our managed-by label and removes what is owned by Gateways
//! only, at least one of which still exists, and is not among the objects the pass wanted.
//! Objects whose Gateways are all gone are the garbage collector's. A last-good Secret is
//! emptied rather than deleted: the operator deliberately holds no permission to delete
//! Secrets cluster-wide, and emptying it removes what matters, the copy of the config and its
//! private keys; the garbage collector deletes it with its Gateway. Listing costs an API
//! call per kind, so a sweep runs only when what is wanted (or which Gateways exist) changed
//! since the last complete sweep, or after a failed one, or on becoming leader.

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::provision::{CONTENT_HASH_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};

/// One object the pass applied (or would have): kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// What one leader pass wants to exist.
#[derive(Debug, Default)]
pub struct Wanted {
    objects: BTreeSet<ObjectRef>,
}

impl Wanted {
    pub fn insert(&mut self, kind: &'static str, namespace: &str, name: &str) {
        self.objects.insert(ObjectRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
    }

    pub fn contains(&self, object: &ObjectRef) -> bool {
        self.objects.contains(object)
    }
}

/// Remembers when the last complete sweep ran, to skip sweeps that cannot find anything new.
#[derive(Debug, Default)]
pub struct Sweeper {
    swept: Option<[u8; 32]>,
}

impl Sweeper {
    /// Forgets the last sweep: the next pass sweeps (a new leader knows nothing).
    pub fn reset(&mut self) {
        self.swept = None;
    }

    /// Removes the orphans among our objects when `wanted` or `gateway_uids` changed since
    /// the last complete sweep. Returns the removed objects and how many calls failed.
    pub async fn sweep(
        &mut self,
        client: &Client,
        wanted: &Wanted,
        gateway_uids: &HashSet<String>,
    ) -> (Vec<ObjectRef>, usize) {
        let fingerprint = fingerprint(wanted, gateway_uids);
        if self.swept == Some(fingerprint) {
            return (Vec::new(), 0);
        }
        let mut deleted = Vec::new();
        let mut failures = 0;
        let found = [
            sweep_kind::<Deployment>(client, wanted, gateway_uids).await,
            sweep_kind::<Service>(client, wanted, gateway_uids).await,
            sweep_kind::<ServiceAccount>(client, wanted, gateway_uids).await,
            sweep_kind::<Secret>(client, wanted, gateway_uids).await,
            sweep_kind::<ConfigMap>(client, wanted, gateway_uids).await,
        ];
        for (objects, failed) in found {
            deleted.extend(objects);
            failures += failed;
        }
        if failures == 0 {
            self.swept = Some(fingerprint);
        }
        (deleted, failures)
    }
}

fn fingerprint(wanted: &Wanted, gateway_uids: &HashSet<String>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for object in &wanted.objects {
        for part in [object.kind, &object.namespace, &object.name] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    let mut uids: Vec<&String> = gateway_uids.iter().collect();
    uids.sort();
    for uid in uids {
        hash.update(uid.as_bytes());
        hash.update([1]);
    }
    hash.finalize().into()
}

/// Whether an object of `kind` with `meta` is ours, owned only by Gateways of which at least
/// one still exists, not wanted, and not already emptied (a Secret).
pub fn is_orphan(
    kind: &'static str,
    meta: &ObjectMeta,
    wanted: &Wanted,
    gateway_uids: &HashSet<String>,
) -> bool {
    let ours = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGED_BY);
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owned_by_gateways_only = !owners.is_empty()
        && owners.iter().all(|owner| {
            owner.kind == "Gateway" && owner.api_version.starts_with("gateway.networking.k8s.io/")
        });
    let an_owner_exists = owners.iter().any(|owner| gateway_uids.contains(&owner.uid));
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return false;
    };
    let object = ObjectRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let emptied = kind == "Secret"
        && !meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(CONTENT_HASH_ANNOTATION));
    ours && owned_by_gateways_only && an_owner_exists && !emptied && !wanted.contains(&object)
}

async fn sweep_kind<K>(
    client: &Client,
    wanted: &Wanted,
    gateway_uids: &HashSet<String>,
) -> (Vec<ObjectRef>, usize)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned,
    K: std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = kind_name::<K>();
    let listed = Api::<K>::all(client.clone())
        .list_metadata(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await;
    let objects: Vec<PartialObjectMeta<K>> = match listed {
        Ok(list) => list.items,
        Err(e) => {
            warn!(kind, error = %e, "listing our objects for the orphan sweep failed");
            return (Vec::new(), 1);
        }
    };
    let mut deleted = Vec::new();
    let mut failures = 0;
    for object in objects {
        if !is_orphan(kind, &object.metadata, wanted, gateway_uids) {
            continue;
        }
        let (Some(namespace), Some(name)) = (object.metadata.namespace, object.metadata.name)
        else {
            continue;
        };
        let api: Api<K> = Api::namespaced(client.clone(), &namespace);
        let removed = if kind == "Secret" {
            let empty = serde_json::json!({
                "metadata": {"annotations": {CONTENT_HASH_ANNOTATION: null}},
                "data": null,
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&empty))
                .await
                .map(drop)
        } else {
            api.delete(&name, &DeleteParams::background())
                .await
                .map(drop)
        };
        match removed {
            Ok(()) => {
                info!(
                    kind,
                    namespace, name, "removed infrastructure no Gateway of ours wants"
                );
                deleted.push(ObjectRef {
                    kind,
                    namespace,
                    name,
                });
            }
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(e) => {
                warn!(kind, namespace, name, error = %e, "removing an orphaned object failed");
                failures += 1;
            }
        }
    }
    (deleted, failures)
}

/// The kind's name as a `'static` str (the ones swept are all known here).
fn kind_name<K: Resource>() -> &'static str
where
    K::DynamicType: Default,
{
    match K::kind(&K::DynamicType::default()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "ServiceAccount" => "ServiceAccount",
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        _ => "Object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owner(kind: &str, api_version: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "owner".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn meta(name: &str, labelled: bool, owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("infra".into()),
            labels: labelled
                .then(|| [(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_unwanted_objects_of_ours_owned_by_existing_gateways_are_orphans() {
        const V1: &str = "gateway.networking.k8s.io/v1";
        let gateway = || owner("Gateway", V1, "gw-uid");
        let mut wanted = Wanted::default();
        wanted.insert("Deployment", "infra", "gw-ours");
        let uids: HashSet<String> = ["gw-uid".to_string()].into();
        let mut cases: Vec<(&str, &'static str, ObjectMeta, bool)> = vec![
            (
                "wanted",
                "Deployment",
                meta("gw-ours", true, vec![gateway()]),
                false,
            ),
            (
                "same name, other kind",
                "Service",
                meta("gw-ours", true, vec![gateway()]),
                true,
            ),
            (
                "old class's name",
                "Deployment",
                meta("gw-old", true, vec![gateway()]),
                true,
            ),
            (
                "not labelled ours",
                "Deployment",
                meta("gw-old", false, vec![gateway()]),
                false,
            ),
            (
                "no owner",
                "Deployment",
                meta("gw-old", true, vec![]),
                false,
            ),
            (
                "owner Gateway gone (the garbage collector's)",
                "Deployment",
                meta("gw-old", true, vec![owner("Gateway", V1, "gone-uid")]),
                false,
            ),
            (
                "also owned by something else",
                "Deployment",
                meta(
                    "gw-old",
                    true,
                    vec![gateway(), owner("ReplicaSet", "apps/v1", "rs")],
                ),
                false,
            ),
            (
                "a Gateway of another API group",
                "Deployment",
                meta(
                    "gw-old",
                    true,
                    vec![owner("Gateway", "example.com/v1", "gw-uid")],
                ),
                false,
            ),
            (
                "shared ConfigMap, one owner left",
                "ConfigMap",
                meta(
                    "portcullis-ca",
                    true,
                    vec![gateway(), owner("Gateway", V1, "gone-uid")],
                ),
                true,
            ),
        ];
        let mut hashed = meta("gw-old-last-good", true, vec![gateway()]);
        hashed.annotations = Some([(CONTENT_HASH_ANNOTATION.to_string(), "ab".to_string())].into());
        cases.push(("a last-good Secret with a config", "Secret", hashed, true));
        cases.push((
            "a last-good Secret already emptied",
            "Secret",
            meta("gw-old-last-good", true, vec![gateway()]),
            false,
        ));
        for (case, kind, meta, expected) in cases {
            assert_eq!(is_orphan(kind, &meta, &wanted, &uids), expected, "{case}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_what_is_wanted_and_which_gateways_exist() {
        let mut wanted = Wanted::default();
        wanted.insert("Deployment", "infra", "a");
        let uids: HashSet<String> = ["1".to_string(), "2".to_string()].into();
        let base = fingerprint(&wanted, &uids);
        assert_eq!(base, fingerprint(&wanted, &["2".into(), "1".into()].into()));
        assert_ne!(base, fingerprint(&wanted, &["1".into()].into()));
        let mut more = Wanted::default();
        more.insert("Deployment", "infra", "a");
        more.insert("Service", "infra", "a");
        assert_ne!(base, fingerprint(&more, &uids));
        let mut moved = Wanted::default();
        moved.insert("Deployment", "infr", "aa");
        assert_ne!(base, fingerprint(&moved, &uids));
    }
}
