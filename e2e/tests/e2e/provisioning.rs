//! Scenario 2: a Gateway gets a Deployment, Service and ServiceAccount named `<gw>-<class>`,
//! becomes Programmed with an address, and that address answers.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use portcullis_e2e::http::HttpClient;
use std::time::Duration;

use portcullis_e2e::{eventually, objects};

use crate::{READY, provisioned_name, setup};

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_gets_its_proxies_and_an_address_that_answers() {
    let setup = setup().await;
    let cluster = &setup.cluster;
    let infra = cluster.namespace("e2e-infra", &[]).await;
    cluster
        .apply(&objects::http_gateway(
            &infra.name,
            "edge",
            &setup.class,
            "{from: Same}",
        ))
        .await;

    let name = provisioned_name("edge", &setup.class);
    cluster.deployment_ready(&infra.name, &name, 1, READY).await;
    let deployment: Deployment = cluster.get(&infra.name, &name).await.unwrap();
    let owner = &deployment.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Gateway", "edge")
    );
    assert!(cluster.get::<Service>(&infra.name, &name).await.is_some());
    assert!(
        cluster
            .get::<ServiceAccount>(&infra.name, &name)
            .await
            .is_some()
    );

    let address = cluster.programmed_address(&infra.name, "edge", READY).await;
    // No routes yet: the proxy itself answers, with a 404 (once kube-proxy has caught up with
    // the Service's endpoints).
    let status = eventually("the address answering", Duration::from_secs(10), || {
        let address = address.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                HttpClient::new(&address)
                    .get("anything.example.com", "/")
                    .map(|r| Some(r.status))
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await;
    assert_eq!(status, 404);
}
