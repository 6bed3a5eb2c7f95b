//! The cluster as the tests see it: apply and delete YAML, read Gateway API statuses, wait.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Resource};
use portcullis_api::gateway_api::gateway::Gateway;
use portcullis_api::gateway_api::gatewayclass::GatewayClass;
use portcullis_api::gateway_api::httproute::HttpRoute;
use serde::de::DeserializeOwned;

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "portcullis-e2e";
/// Label on every namespace the tests create.
pub const E2E_LABEL: &str = "portcullis.dev/e2e";
/// The class the operator is deployed for (`config/samples/cluster` uses the same name).
pub const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";

#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
}

impl Cluster {
    /// Connects to the cluster `KUBECONFIG` names.
    ///
    /// # Panics
    /// When there is no usable kubeconfig: e2e tests need a cluster (`make e2e`).
    pub async fn connect() -> Cluster {
        let client = Client::try_default()
            .await
            .expect("no cluster: run the e2e tests through `make e2e`, or set KUBECONFIG");
        Cluster { client }
    }

    /// Server-side applies every document of `yaml` (forcing conflicts: the tests own them).
    pub async fn apply(&self, yaml: &str) {
        if let Err(error) = self.try_apply(yaml).await {
            panic!("applying failed: {error:#}\n{yaml}");
        }
    }

    pub async fn try_apply(&self, yaml: &str) -> anyhow::Result<()> {
        for document in documents(yaml)? {
            let (api, name) = self.dynamic(&document).await?;
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&document),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{} {name}: {e}", document["kind"]))?;
        }
        Ok(())
    }

    /// Deletes every document of `yaml` (missing ones are fine).
    pub async fn delete(&self, yaml: &str) {
        if let Err(error) = self.try_delete(yaml).await {
            panic!("deleting failed: {error:#}\n{yaml}");
        }
    }

    pub async fn try_delete(&self, yaml: &str) -> anyhow::Result<()> {
        for document in documents(yaml)? {
            let (api, name) = self.dynamic(&document).await?;
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => anyhow::bail!("deleting {} {name}: {e}", document["kind"]),
            }
        }
        Ok(())
    }

    async fn dynamic(
        &self,
        document: &serde_json::Value,
    ) -> anyhow::Result<(Api<DynamicObject>, String)> {
        let api_version = document["apiVersion"].as_str().unwrap_or_default();
        let kind = document["kind"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, capabilities) = discovery::pinned_kind(&self.client, &gvk).await?;
        let name = document["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("a {kind} without a name"))?
            .to_string();
        let api = match capabilities.scope {
            Scope::Namespaced => {
                let namespace = document["metadata"]["namespace"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("{kind} {name} needs a namespace"))?;
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, name))
    }

    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The object, or None when it does not exist.
    pub async fn get<K>(&self, namespace: &str, name: &str) -> Option<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.api::<K>(namespace).get_opt(name).await.unwrap_or(None)
    }

    /// Creates namespace `<prefix>-<random>` with `labels`; it is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
        let name = format!("{prefix}-{}", crate::suffix());
        let mut all: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert(E2E_LABEL.into(), "true".into());
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let guard = DeleteOnDrop::new(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ));
        TestNamespace {
            name,
            _guard: guard,
        }
    }

    pub async fn gateway_class_condition(&self, name: &str, kind: &str) -> Option<Condition> {
        let class = Api::<GatewayClass>::all(self.client.clone())
            .get_opt(name)
            .await
            .ok()??;
        find(class.status?.conditions?, kind)
    }

    pub async fn gateway_condition(&self, ns: &str, name: &str, kind: &str) -> Option<Condition> {
        let gateway: Gateway = self.get(ns, name).await?;
        find(gateway.status?.conditions?, kind)
    }

    /// A condition of listener `listener` of Gateway `ns/name`.
    pub async fn listener_condition(
        &self,
        ns: &str,
        name: &str,
        listener: &str,
        kind: &str,
    ) -> Option<Condition> {
        let gateway: Gateway = self.get(ns, name).await?;
        let listener = gateway
            .status?
            .listeners?
            .into_iter()
            .find(|l| l.name == listener)?;
        find(listener.conditions, kind)
    }

    /// A condition of route `ns/name` for its parent Gateway `gateway` (name only).
    pub async fn route_condition(
        &self,
        ns: &str,
        name: &str,
        gateway: &str,
        kind: &str,
    ) -> Option<Condition> {
        let route: HttpRoute = self.get(ns, name).await?;
        let parent = route
            .status?
            .parents
            .into_iter()
            .find(|p| p.parent_ref.name == gateway)?;
        find(parent.conditions, kind)
    }

    /// The Gateway's first address, once it is Programmed.
    pub async fn programmed_address(&self, ns: &str, name: &str, timeout: Duration) -> String {
        crate::eventually(
            &format!("Gateway {ns}/{name} Programmed=True with an address"),
            timeout,
            || async {
                let gateway: Option<Gateway> = self.get(ns, name).await;
                let Some(status) = gateway.and_then(|g| g.status) else {
                    return Ok(None);
                };
                let programmed = find(status.conditions.clone().unwrap_or_default(), "Programmed");
                if programmed.as_ref().map(|c| c.status.as_str()) != Some("True") {
                    return Err(format!("Programmed is {programmed:?}"));
                }
                Ok(status
                    .addresses
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .map(|a| a.value))
            },
        )
        .await
    }
}

impl Cluster {
    /// Waits until Deployment `ns/name` has exactly `replicas` pods, all ready and updated.
    pub async fn deployment_ready(&self, ns: &str, name: &str, replicas: i32, timeout: Duration) {
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::Pod;
        crate::eventually(
            &format!("Deployment {ns}/{name} with {replicas} ready pods"),
            timeout,
            || async {
                let deployment: Deployment = self
                    .get(ns, name)
                    .await
                    .ok_or_else(|| "no Deployment yet".to_string())?;
                let status = deployment.status.clone().unwrap_or_default();
                let want = deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .unwrap_or(1);
                let selector = deployment
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.match_labels.clone())
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                // Terminating pods still count: the Deployment's status forgets them early.
                let pods = self
                    .api::<Pod>(ns)
                    .list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| e.to_string())?;
                let state = (
                    want,
                    status.ready_replicas.unwrap_or(0),
                    status.updated_replicas.unwrap_or(0),
                    pods.items.len() as i32,
                );
                if state == (replicas, replicas, replicas, replicas) {
                    Ok(Some(()))
                } else {
                    Err(format!("(spec, ready, updated, pods) = {state:?}"))
                }
            },
        )
        .await
    }

    /// Reasons of the Events (events.k8s.io) about object `name` of `kind` in `ns`.
    pub async fn event_reasons(&self, ns: &str, kind: &str, name: &str) -> Vec<String> {
        let about = |e: &k8s_openapi::api::events::v1::Event| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        };
        self.api::<k8s_openapi::api::events::v1::Event>(ns)
            .list(&kube::api::ListParams::default())
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .filter(about)
                    .filter_map(|e| e.reason)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pods of Deployment-managed `selector` (`key=value,...`) in `ns`.
    pub async fn pods(&self, ns: &str, selector: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
        self.api::<k8s_openapi::api::core::v1::Pod>(ns)
            .list(&kube::api::ListParams::default().labels(selector))
            .await
            .map(|list| list.items)
            .unwrap_or_default()
    }
}

/// Waits until `GET http://address/` with `host` answers 200 from the echo backend.
pub async fn serving(address: &str, host: &str, timeout: Duration) -> crate::http::Echo {
    let address = address.to_string();
    let host = host.to_string();
    crate::eventually(&format!("{host} served at {address}"), timeout, || {
        let (address, host) = (address.clone(), host.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let response = crate::http::HttpClient::new(&address)
                    .get(&host, "/")
                    .map_err(|e| e.to_string())?;
                if response.status != 200 {
                    return Err(format!("status {}", response.status));
                }
                Ok(response.echo())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await
}

fn find(conditions: Vec<Condition>, kind: &str) -> Option<Condition> {
    conditions.into_iter().find(|c| c.type_ == kind)
}

fn documents(yaml: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml)?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// A namespace a test created; dropping it deletes the namespace (and everything in it).
pub struct TestNamespace {
    pub name: String,
    _guard: DeleteOnDrop,
}

/// Deletes the objects of its YAML when dropped, also when the test panicked. Set
/// `E2E_KEEP_OBJECTS` to keep them for a post-mortem.
pub struct DeleteOnDrop {
    yaml: String,
}

impl DeleteOnDrop {
    pub fn new(yaml: impl Into<String>) -> DeleteOnDrop {
        DeleteOnDrop { yaml: yaml.into() }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP_OBJECTS").is_some() {
            eprintln!("keeping (E2E_KEEP_OBJECTS):\n{}", self.yaml);
            return;
        }
        let yaml = self.yaml.clone();
        // Drop cannot await, and the test's runtime may be shutting down: use a runtime of our
        // own on a thread of our own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let cluster = Cluster::connect().await;
                cluster.try_delete(&yaml).await.ok()
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(()))) {
            eprintln!("could not delete:\n{}", self.yaml);
        }
    }
}
