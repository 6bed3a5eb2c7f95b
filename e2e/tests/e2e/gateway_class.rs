//! Scenario 1: a GatewayClass of ours is accepted; one of another controller is left alone.

use std::time::Duration;

use portcullis_e2e::cluster::{Cluster, DeleteOnDrop};
use portcullis_e2e::{eventually, objects, suffix};

use crate::STATUS;

#[tokio::test(flavor = "multi_thread")]
async fn our_class_is_accepted_and_another_controllers_class_is_ignored() {
    let cluster = Cluster::connect().await;
    let ours = format!("e2e-ours-{}", suffix());
    let theirs = format!("e2e-theirs-{}", suffix());
    let ours_yaml = objects::gateway_class(&ours);
    let theirs_yaml = objects::gateway_class_for(&theirs, "example.com/another-controller");
    let _guards = (
        DeleteOnDrop::new(ours_yaml.clone()),
        DeleteOnDrop::new(theirs_yaml.clone()),
    );
    cluster.apply(&theirs_yaml).await;
    cluster.apply(&ours_yaml).await;

    let accepted = eventually("our GatewayClass Accepted=True", STATUS, || async {
        Ok(cluster
            .gateway_class_condition(&ours, "Accepted")
            .await
            .filter(|c| c.status == "True"))
    })
    .await;
    assert_eq!(accepted.reason, "Accepted");
    assert_eq!(accepted.observed_generation, Some(1));

    // Ours is done by now; the other class had as long, and more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let foreign = cluster.gateway_class_condition(&theirs, "Accepted").await;
    assert!(
        foreign
            .as_ref()
            .is_none_or(|c| c.status == "Unknown" && c.reason == "Pending"),
        "another controller's class must keep the API server's default status, got {foreign:?}"
    );
}
