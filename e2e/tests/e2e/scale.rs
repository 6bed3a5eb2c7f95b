//! Scenario 6: GatewayParameters replicas 1 → 3 → 1 under traffic loses no request; with
//! replicas unset, a `kubectl scale` of the Deployment is not reverted by the operator.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use portcullis_e2e::cluster::serving;
use portcullis_e2e::load::Load;
use portcullis_e2e::objects;

use crate::{READY, provisioned_name, setup};

const HOST: &str = "scale.example.com";

fn parameters(namespace: &str, replicas: Option<i32>) -> String {
    let replicas = replicas
        .map(|r| format!("  replicas: {r}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: portcullis.dev/v1alpha1\nkind: GatewayParameters\nmetadata:\n  name: scaled\n  namespace: {namespace}\nspec:\n{replicas}  proxy:\n    drainTimeoutSeconds: 10\n"
    )
}

/// The Gateway, pointing at GatewayParameters `scaled`; `note` lands in its infrastructure
/// annotations (a change that makes the operator re-apply the Deployment).
fn gateway(namespace: &str, class: &str, note: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: scaled
  namespace: {namespace}
spec:
  gatewayClassName: {class}
  infrastructure:
    annotations: {{e2e.portcullis.dev/note: "{note}"}}
    parametersRef: {{group: portcullis.dev, kind: GatewayParameters, name: scaled}}
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: Same}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_loses_no_request_and_manual_scale_is_respected() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let ns = cluster.namespace("e2e-scale", &[]).await;
    let name = provisioned_name("scaled", &setup.class);
    cluster.apply(&parameters(&ns.name, Some(1))).await;
    cluster
        .apply(&gateway(&ns.name, &setup.class, "first"))
        .await;
    cluster
        .apply(&objects::echo_backend(&ns.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &ns.name,
            "web",
            &ns.name,
            "scaled",
            HOST,
            &[("web", 1)],
        ))
        .await;
    cluster.deployment_ready(&ns.name, &name, 1, READY).await;
    let address = cluster.programmed_address(&ns.name, "scaled", READY).await;
    serving(&address, HOST, READY).await;

    let load = Load::start(&address, HOST, "/", 2, Duration::from_millis(5));
    cluster.apply(&parameters(&ns.name, Some(3))).await;
    cluster.deployment_ready(&ns.name, &name, 3, READY).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.apply(&parameters(&ns.name, Some(1))).await;
    cluster.deployment_ready(&ns.name, &name, 1, READY).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tally = tokio::task::spawn_blocking(move || load.stop())
        .await
        .unwrap();
    println!("scaling 1 → 3 → 1: {}", tally.summary());
    assert!(tally.ok > 100, "{}", tally.summary());
    assert!(tally.failures.is_empty(), "{}", tally.summary());

    // Replicas unset: the count belongs to whoever scales the Deployment.
    cluster.apply(&parameters(&ns.name, None)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster
        .api::<Deployment>(&ns.name)
        .patch_scale(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    cluster.deployment_ready(&ns.name, &name, 2, READY).await;
    // Make the operator apply the Deployment again; the replica count must survive it.
    cluster
        .apply(&gateway(&ns.name, &setup.class, "second"))
        .await;
    portcullis_e2e::eventually("the Deployment re-applied", READY, || async {
        let deployment: Option<Deployment> = cluster.get(&ns.name, &name).await;
        Ok(deployment.filter(|d| {
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("e2e.portcullis.dev/note"))
                .is_some_and(|v| v == "second")
        }))
    })
    .await;
    cluster.deployment_ready(&ns.name, &name, 2, READY).await;
}
