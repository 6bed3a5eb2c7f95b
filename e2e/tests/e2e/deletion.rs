//! Scenario 9: deleting a Gateway removes everything the operator created for it, and a
//! ListenerSet that was attached to it no longer claims to be accepted.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use portcullis_api::gateway_api::listenerset::ListenerSet;
use portcullis_e2e::cluster::serving;
use portcullis_e2e::{eventually, objects};

use crate::{READY, provisioned_name, setup};

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_gateway_removes_what_was_created_for_it() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let ns = cluster.namespace("e2e-delete", &[]).await;
    let gateway = format!(
        "{}  allowedListeners:\n    namespaces: {{from: Same}}\n",
        objects::http_gateway(&ns.name, "doomed", &setup.class, "{from: Same}")
    );
    cluster.apply(&gateway).await;
    let listener_set = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata:
  name: extra
  namespace: {ns}
spec:
  parentRef: {{name: doomed}}
  listeners:
  - {{name: extra, port: 8080, protocol: HTTP}}
"#,
        ns = ns.name
    );
    cluster.apply(&listener_set).await;
    let accepted = |wanted: &'static str| {
        let ns = ns.name.clone();
        move || {
            let ns = ns.clone();
            async move {
                let set = cluster.get::<ListenerSet>(&ns, "extra").await;
                let condition = set
                    .and_then(|s| s.status)
                    .and_then(|s| s.conditions)
                    .and_then(|c| c.into_iter().find(|c| c.type_ == "Accepted"));
                match condition {
                    Some(c) if c.status == wanted => Ok(Some(c)),
                    other => Err(format!("Accepted is {other:?}")),
                }
            }
        }
    };
    eventually("the ListenerSet Accepted=True", READY, accepted("True")).await;
    cluster
        .apply(&objects::echo_backend(&ns.name, "web", "web", 1))
        .await;
    cluster
        .apply(&objects::http_route(
            &ns.name,
            "web",
            &ns.name,
            "doomed",
            "doomed.example.com",
            &[("web", 1)],
        ))
        .await;
    let address = cluster.programmed_address(&ns.name, "doomed", READY).await;
    serving(&address, "doomed.example.com", READY).await;
    let name = provisioned_name("doomed", &setup.class);
    let last_good = format!("{name}-last-good");
    eventually("the last-good Secret", READY, || async {
        Ok(cluster.get::<Secret>(&ns.name, &last_good).await)
    })
    .await;
    assert!(
        cluster
            .get::<ConfigMap>(&ns.name, "portcullis-ca")
            .await
            .is_some()
    );

    cluster.delete(&gateway).await;
    eventually("everything the operator created gone", READY, || async {
        let left = [
            cluster
                .get::<Deployment>(&ns.name, &name)
                .await
                .map(|_| "Deployment"),
            cluster
                .get::<Service>(&ns.name, &name)
                .await
                .map(|_| "Service"),
            cluster
                .get::<ServiceAccount>(&ns.name, &name)
                .await
                .map(|_| "ServiceAccount"),
            cluster
                .get::<Secret>(&ns.name, &last_good)
                .await
                .map(|_| "Secret (last good)"),
            cluster
                .get::<ConfigMap>(&ns.name, "portcullis-ca")
                .await
                .map(|_| "ConfigMap portcullis-ca"),
        ];
        let left: Vec<&str> = left.into_iter().flatten().collect();
        if left.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("still there: {left:?}"))
        }
    })
    .await;
    let released = eventually(
        "the ListenerSet back to Accepted=Unknown",
        READY,
        accepted("Unknown"),
    )
    .await;
    assert_eq!(released.reason, "Pending");
    // The app's own objects are untouched.
    assert!(cluster.get::<Deployment>(&ns.name, "web").await.is_some());
}
