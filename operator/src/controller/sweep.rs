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
//! Objects whose Gateways are all gone are the garbage collector's. Removal needs every
//! existing owner to be *decided*: a Gateway of ours whose objects were rendered (so what it
//! wants is known), or one whose GatewayClass exists and names another controller. A Gateway
//! whose class is missing (deleted and about to be recreated, or not yet synced) or whose
//! objects could not be rendered keeps everything it owns. A last-good Secret is
//! emptied rather than deleted: the operator deliberately holds no permission to delete
//! Secrets cluster-wide, and emptying it removes what matters, the copy of the config and its
//! private keys; the garbage collector deletes it with its Gateway. Listing costs an API
//! call per kind, so a sweep runs only when what is wanted (or which Gateways exist) changed
//! since the last complete sweep, after a failed one, on becoming leader, and every
//! [`RESWEEP`] in case something recreated an object behind our back. Every removal first
//! checks that this replica still holds the lease, so a leader stepping down mid-sweep stops.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{
    Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, Preconditions,
};
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

/// The existing Gateways that own things, by uid.
#[derive(Debug, Default)]
pub struct GatewayOwners {
    /// What they want is known: ours and rendered, or another controller's.
    pub decided: HashSet<String>,
    /// What they want is not known: their class is missing, or rendering failed.
    pub undecided: HashSet<String>,
}

/// How an orphan of a kind is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Delete,
    /// Its data and content-hash annotation are removed (a last-good Secret); one without
    /// the annotation is already empty.
    Empty,
}

/// How often a sweep runs even when nothing it knows of changed.
pub const RESWEEP: Duration = Duration::from_secs(600);

/// Remembers the last complete sweep, to skip sweeps that cannot find anything new.
#[derive(Debug, Default)]
pub struct Sweeper {
    swept: Option<([u8; 32], Instant)>,
}

impl Sweeper {
    /// Forgets the last sweep: the next pass sweeps (a new leader knows nothing).
    pub fn reset(&mut self) {
        self.swept = None;
    }

    /// Removes the orphans among our objects when `wanted` or `owners` changed since the last
    /// complete sweep, or that was [`RESWEEP`] ago. `still_leading` is asked before each
    /// removal. Returns the removed objects and how many calls failed.
    pub async fn sweep(
        &mut self,
        client: &Client,
        wanted: &Wanted,
        owners: &GatewayOwners,
        still_leading: &(dyn Fn() -> bool + Send + Sync),
    ) -> (Vec<ObjectRef>, usize) {
        let fingerprint = fingerprint(wanted, owners);
        if self
            .swept
            .is_some_and(|(swept, at)| swept == fingerprint && at.elapsed() < RESWEEP)
        {
            return (Vec::new(), 0);
        }
        let context = SweepContext {
            client,
            wanted,
            owners,
            still_leading,
        };
        let mut deleted = Vec::new();
        let mut failures = 0;
        let found = [
            context.sweep_kind::<Deployment>(Removal::Delete).await,
            context.sweep_kind::<Service>(Removal::Delete).await,
            context.sweep_kind::<ServiceAccount>(Removal::Delete).await,
            context.sweep_kind::<Secret>(Removal::Empty).await,
            context.sweep_kind::<ConfigMap>(Removal::Delete).await,
        ];
        for (objects, failed) in found {
            deleted.extend(objects);
            failures += failed;
        }
        if failures == 0 {
            self.swept = Some((fingerprint, Instant::now()));
        }
        (deleted, failures)
    }
}

fn fingerprint(wanted: &Wanted, owners: &GatewayOwners) -> [u8; 32] {
    let mut hash = Sha256::new();
    for object in &wanted.objects {
        for part in [object.kind, &object.namespace, &object.name] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    for (set, separator) in [(&owners.decided, 1), (&owners.undecided, 2)] {
        let mut uids: Vec<&String> = set.iter().collect();
        uids.sort();
        for uid in uids {
            hash.update(uid.as_bytes());
            hash.update([separator]);
        }
    }
    hash.finalize().into()
}

/// Whether an object of `kind` with `meta` is ours, owned only by Gateways, at least one of
/// which still exists, all existing ones decided, not wanted, and not already removed.
pub fn is_orphan(
    kind: &'static str,
    removal: Removal,
    meta: &ObjectMeta,
    wanted: &Wanted,
    owners: &GatewayOwners,
) -> bool {
    let ours = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGED_BY);
    let owner_refs = meta.owner_references.as_deref().unwrap_or_default();
    let owned_by_gateways_only = !owner_refs.is_empty()
        && owner_refs.iter().all(|owner| {
            owner.kind == "Gateway" && owner.api_version.starts_with("gateway.networking.k8s.io/")
        });
    let a_decided_owner = owner_refs
        .iter()
        .any(|owner| owners.decided.contains(&owner.uid));
    let an_undecided_owner = owner_refs
        .iter()
        .any(|owner| owners.undecided.contains(&owner.uid));
    let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return false;
    };
    let object = ObjectRef {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    let already_empty = removal == Removal::Empty
        && !meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(CONTENT_HASH_ANNOTATION));
    ours && owned_by_gateways_only
        && a_decided_owner
        && !an_undecided_owner
        && !already_empty
        && !wanted.contains(&object)
}

struct SweepContext<'a> {
    client: &'a Client,
    wanted: &'a Wanted,
    owners: &'a GatewayOwners,
    still_leading: &'a (dyn Fn() -> bool + Send + Sync),
}

impl SweepContext<'_> {
    async fn sweep_kind<K>(&self, removal: Removal) -> (Vec<ObjectRef>, usize)
    where
        K: k8s_openapi::Resource,
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        K: Clone + DeserializeOwned + std::fmt::Debug,
    {
        let kind = <K as k8s_openapi::Resource>::KIND;
        let listed = Api::<K>::all(self.client.clone())
            .list_metadata(
                &ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
            )
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
            if !is_orphan(kind, removal, &object.metadata, self.wanted, self.owners) {
                continue;
            }
            let resource_version = object.metadata.resource_version;
            let uid = object.metadata.uid;
            let (Some(namespace), Some(name)) = (object.metadata.namespace, object.metadata.name)
            else {
                continue;
            };
            if !(self.still_leading)() {
                warn!(kind, namespace, name, "no longer leading; the sweep stops");
                return (deleted, failures + 1);
            }
            let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
            let removed = match removal {
                // Both conditional on the object as listed: one changed since (a new last-good
                // config persisted, say) fails with 409 and is judged again next sweep.
                Removal::Empty => {
                    let empty = serde_json::json!({
                        "metadata": {
                            "annotations": {CONTENT_HASH_ANNOTATION: null},
                            "resourceVersion": resource_version,
                        },
                        "data": null,
                    });
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&empty))
                        .await
                        .map(drop)
                }
                Removal::Delete => {
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            resource_version,
                            uid,
                        }),
                        ..DeleteParams::background()
                    };
                    api.delete(&name, &params).await.map(drop)
                }
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
    fn only_unwanted_objects_of_ours_owned_by_decided_gateways_are_orphans() {
        const V1: &str = "gateway.networking.k8s.io/v1";
        let gateway = || owner("Gateway", V1, "gw-uid");
        let undecided = || owner("Gateway", V1, "class-missing-uid");
        let mut wanted = Wanted::default();
        wanted.insert("Deployment", "infra", "gw-ours");
        wanted.insert("ConfigMap", "infra", "portcullis-ca");
        let owners = GatewayOwners {
            decided: ["gw-uid".to_string()].into(),
            undecided: ["class-missing-uid".to_string()].into(),
        };
        use Removal::{Delete, Empty};
        let mut cases: Vec<(&str, &'static str, Removal, ObjectMeta, bool)> = vec![
            (
                "wanted",
                "Deployment",
                Delete,
                meta("gw-ours", true, vec![gateway()]),
                false,
            ),
            (
                "same name, other kind",
                "Service",
                Delete,
                meta("gw-ours", true, vec![gateway()]),
                true,
            ),
            (
                "old class's name",
                "Deployment",
                Delete,
                meta("gw-old", true, vec![gateway()]),
                true,
            ),
            (
                "not labelled ours",
                "Deployment",
                Delete,
                meta("gw-old", false, vec![gateway()]),
                false,
            ),
            (
                "no owner",
                "Deployment",
                Delete,
                meta("gw-old", true, vec![]),
                false,
            ),
            (
                "owner Gateway gone (the garbage collector's)",
                "Deployment",
                Delete,
                meta("gw-old", true, vec![owner("Gateway", V1, "gone-uid")]),
                false,
            ),
            (
                "owner Gateway's class missing: what it wants is unknown",
                "Deployment",
                Delete,
                meta("gw-old", true, vec![undecided()]),
                false,
            ),
            (
                "also owned by something else",
                "Deployment",
                Delete,
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
                Delete,
                meta(
                    "gw-old",
                    true,
                    vec![owner("Gateway", "example.com/v1", "gw-uid")],
                ),
                false,
            ),
            (
                "shared ConfigMap still wanted",
                "ConfigMap",
                Delete,
                meta("portcullis-ca", true, vec![gateway()]),
                false,
            ),
        ];
        let mut in_other = meta("portcullis-ca", true, vec![gateway()]);
        in_other.namespace = Some("apps".into());
        cases.push((
            "shared ConfigMap of a namespace left, one owner left",
            "ConfigMap",
            Delete,
            {
                let mut m = in_other.clone();
                m.owner_references = Some(vec![gateway(), owner("Gateway", V1, "gone-uid")]);
                m
            },
            true,
        ));
        cases.push((
            "shared ConfigMap, one owner undecided",
            "ConfigMap",
            Delete,
            {
                let mut m = in_other;
                m.owner_references = Some(vec![gateway(), undecided()]);
                m
            },
            false,
        ));
        let mut hashed = meta("gw-old-last-good", true, vec![gateway()]);
        hashed.annotations = Some([(CONTENT_HASH_ANNOTATION.to_string(), "ab".to_string())].into());
        cases.push((
            "a last-good Secret with a config",
            "Secret",
            Empty,
            hashed.clone(),
            true,
        ));
        cases.push((
            "a last-good Secret already emptied",
            "Secret",
            Empty,
            meta("gw-old-last-good", true, vec![gateway()]),
            false,
        ));
        hashed.owner_references = Some(vec![undecided()]);
        cases.push((
            "a last-good Secret of a Gateway whose class is missing",
            "Secret",
            Empty,
            hashed,
            false,
        ));
        for (case, kind, removal, meta, expected) in cases {
            assert_eq!(
                is_orphan(kind, removal, &meta, &wanted, &owners),
                expected,
                "{case}"
            );
        }
    }

    fn owners(decided: &[&str], undecided: &[&str]) -> GatewayOwners {
        GatewayOwners {
            decided: decided.iter().map(|u| u.to_string()).collect(),
            undecided: undecided.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn the_fingerprint_changes_with_what_is_wanted_and_which_gateways_exist() {
        let mut wanted = Wanted::default();
        wanted.insert("Deployment", "infra", "a");
        let base = fingerprint(&wanted, &owners(&["1", "2"], &[]));
        assert_eq!(base, fingerprint(&wanted, &owners(&["2", "1"], &[])));
        assert_ne!(base, fingerprint(&wanted, &owners(&["1"], &[])));
        assert_ne!(base, fingerprint(&wanted, &owners(&["1"], &["2"])));
        let mut more = Wanted::default();
        more.insert("Deployment", "infra", "a");
        more.insert("Service", "infra", "a");
        assert_ne!(base, fingerprint(&more, &owners(&["1", "2"], &[])));
        let mut moved = Wanted::default();
        moved.insert("Deployment", "infr", "aa");
        assert_ne!(base, fingerprint(&moved, &owners(&["1", "2"], &[])));
    }
}
