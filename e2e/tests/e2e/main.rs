//! The end-to-end scenarios, one module each. They need a cluster with Portcullis deployed
//! (`make e2e`) and run one at a time (`--test-threads=1`): some take the operator away.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod allowed_routes;
mod canary;
mod deletion;
mod gateway_class;
mod propagation;
mod provisioning;
mod scale;
mod static_stability;
mod tls;

use std::time::Duration;

use portcullis_e2e::cluster::{Cluster, DeleteOnDrop};
use portcullis_e2e::{eventually, objects, suffix};

/// Where `make deploy` puts the operator.
pub const OPERATOR_NAMESPACE: &str = "portcullis-system";
pub const OPERATOR_DEPLOYMENT: &str = "portcullis-operator";
/// Generous bounds for a 2-core machine that runs the cluster and the tests.
pub const READY: Duration = Duration::from_secs(120);
pub const STATUS: Duration = Duration::from_secs(30);

/// A cluster connection and a GatewayClass of our controller, accepted, for one scenario.
pub struct Setup {
    pub cluster: Cluster,
    pub class: String,
    _class: DeleteOnDrop,
}

pub async fn setup() -> Setup {
    let cluster = Cluster::connect().await;
    let class = format!("e2e-{}", suffix());
    let yaml = objects::gateway_class(&class);
    let guard = DeleteOnDrop::new(yaml.clone());
    cluster.apply(&yaml).await;
    eventually(
        &format!("GatewayClass {class} Accepted"),
        STATUS,
        || async {
            Ok(cluster
                .gateway_class_condition(&class, "Accepted")
                .await
                .filter(|c| c.status == "True"))
        },
    )
    .await;
    Setup {
        cluster,
        class,
        _class: guard,
    }
}

/// `<gateway>-<class>`: what the operator names a Gateway's Deployment, Service and
/// ServiceAccount (short, valid names only; the operator rewrites others with a hash).
/// Written out here rather than taken from the operator crate: the scenarios check the
/// documented naming, not whatever the code computes.
pub fn provisioned_name(gateway: &str, class: &str) -> String {
    format!("{gateway}-{class}")
}
