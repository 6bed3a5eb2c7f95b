//! Scenario 7: with the operator scaled to 0 for 60 s under traffic, no request fails; a proxy
//! pod deleted meanwhile comes back serving the last good config. When the operator returns,
//! no proxy restarts and no config is pushed (the content hash is unchanged).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use portcullis_e2e::cluster::{Cluster, serving};
use portcullis_e2e::http::HttpClient;
use portcullis_e2e::load::Load;
use portcullis_e2e::objects;

use crate::{OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE, READY, provisioned_name, setup};

const HOST: &str = "steady.example.com";
const ADMIN_PORT: u16 = 19000;

/// Scales the operator back to its replica count when dropped, whatever happened.
struct OperatorAway {
    replicas: i32,
}

impl Drop for OperatorAway {
    fn drop(&mut self) {
        let replicas = self.replicas;
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let cluster = Cluster::connect().await;
                scale_operator(&cluster, replicas).await;
                Some(())
            })
        })
        .join();
    }
}

async fn scale_operator(cluster: &Cluster, replicas: i32) {
    cluster
        .api::<Deployment>(OPERATOR_NAMESPACE)
        .patch_scale(
            OPERATOR_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await
        .expect("scaling the operator");
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s: &PodStatus| s.container_statuses.as_ref())
        .map(|statuses| statuses.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

/// A value of the proxy's admin /metrics, read from the pod IP.
async fn proxy_metric(pod: &Pod, name: &str) -> Option<i64> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let response = HttpClient::new(&format!("{ip}:{ADMIN_PORT}"))
            .get("admin", "/metrics")
            .ok()?;
        String::from_utf8_lossy(&response.body)
            .lines()
            .find_map(|line| {
                line.strip_prefix(&name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
    })
    .await
    .ok()?
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_plane_keeps_serving_without_the_operator() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let ns = cluster.namespace("e2e-steady", &[]).await;
    let name = provisioned_name("steady", &setup.class);
    let selector =
        format!("gateway.networking.k8s.io/gateway-name=steady,app.kubernetes.io/instance={name}");
    cluster
        .apply(&format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: GatewayParameters\nmetadata:\n  name: two\n  namespace: {}\nspec:\n  replicas: 2\n  proxy:\n    drainTimeoutSeconds: 10\n",
            ns.name
        ))
        .await;
    cluster
        .apply(&format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: steady, namespace: {ns}}}
spec:
  gatewayClassName: {class}
  infrastructure:
    parametersRef: {{group: portcullis.dev, kind: GatewayParameters, name: two}}
  listeners:
  - {{name: http, port: 80, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}
"#,
            ns = ns.name,
            class = setup.class
        ))
        .await;
    cluster
        .apply(&objects::echo_backend(&ns.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &ns.name,
            "web",
            &ns.name,
            "steady",
            HOST,
            &[("web", 1)],
        ))
        .await;
    cluster.deployment_ready(&ns.name, &name, 2, READY).await;
    let address = cluster.programmed_address(&ns.name, "steady", READY).await;
    serving(&address, HOST, READY).await;
    // The last-good Secret exists once a pod served the config.
    portcullis_e2e::eventually("the last-good Secret", READY, || async {
        Ok(cluster
            .get::<k8s_openapi::api::core::v1::Secret>(&ns.name, &format!("{name}-last-good"))
            .await)
    })
    .await;

    let operator: Deployment = cluster
        .get(OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT)
        .await
        .unwrap();
    let operator_replicas = operator.spec.and_then(|s| s.replicas).unwrap_or(1);
    let away = OperatorAway {
        replicas: operator_replicas,
    };
    scale_operator(cluster, 0).await;
    cluster
        .deployment_ready(OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT, 0, READY)
        .await;
    let gone = Instant::now();
    let load = Load::start(&address, HOST, "/", 2, Duration::from_millis(10));

    tokio::time::sleep(Duration::from_secs(10)).await;
    let victim = cluster.pods(&ns.name, &selector).await.remove(0);
    let deleted_at = Instant::now();
    cluster
        .api::<Pod>(&ns.name)
        .delete(&victim.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    cluster.deployment_ready(&ns.name, &name, 2, READY).await;
    let newcomer = cluster
        .pods(&ns.name, &selector)
        .await
        .into_iter()
        .find(|p| p.uid() != victim.uid() && p.metadata.deletion_timestamp.is_none())
        .expect("a replacement pod");
    // It serves the route by itself, from the last-good Secret.
    let ip = newcomer
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap();
    let echo = serving(&ip, HOST, Duration::from_secs(10)).await;
    assert_eq!(echo.backend, "web");

    let left = Duration::from_secs(60).saturating_sub(gone.elapsed());
    tokio::time::sleep(left).await;
    let tally = tokio::task::spawn_blocking(move || load.stop())
        .await
        .unwrap();
    println!(
        "60 s without the operator, one proxy pod replaced: {}",
        tally.summary()
    );
    for (at, failure) in &tally.failures {
        let offset = at.saturating_duration_since(deleted_at).as_secs_f64()
            - deleted_at.saturating_duration_since(*at).as_secs_f64();
        println!("  failure {offset:+.3} s after the proxy pod's deletion: {failure}");
    }
    assert!(tally.ok > 500, "{}", tally.summary());
    assert!(tally.failures.is_empty(), "{}", tally.summary());

    // The operator returns: nothing restarts, nothing is pushed.
    let before: BTreeMap<String, (i32, Option<i64>)> = {
        let mut map = BTreeMap::new();
        for pod in cluster.pods(&ns.name, &selector).await {
            let swaps = proxy_metric(&pod, "portcullis_config_swaps_total").await;
            map.insert(pod.name_any(), (restarts(&pod), swaps));
        }
        map
    };
    assert!(
        before.values().all(|(_, swaps)| swaps.is_some()),
        "{before:?}"
    );
    drop(away);
    cluster
        .deployment_ready(
            OPERATOR_NAMESPACE,
            OPERATOR_DEPLOYMENT,
            operator_replicas,
            READY,
        )
        .await;
    // Agents reconnect within their backoff (at most 10 s); give them that and more.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut after = BTreeMap::new();
    for pod in cluster.pods(&ns.name, &selector).await {
        let swaps = proxy_metric(&pod, "portcullis_config_swaps_total").await;
        after.insert(pod.name_any(), (restarts(&pod), swaps));
    }
    assert_eq!(before, after, "(restarts, config swaps) per proxy pod");
    let programmed = cluster
        .gateway_condition(&ns.name, "steady", "Programmed")
        .await
        .unwrap();
    assert_eq!(programmed.status, "True");
}
