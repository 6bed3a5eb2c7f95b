//! `portcullis operator`: wires the controller, the config stream server and the metrics
//! endpoint together and runs them until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::info;

use crate::compile::{CONTROLLER_NAME, ObjectKey};
use crate::controller::stores::{OptionalKinds, Stores};
use crate::controller::{self, Settings, leader::LeaseSettings};
use crate::distribute::ca::{self, ServingCertificate};
use crate::distribute::hub::ConfigHub;
use crate::distribute::server::{
    self, ConfigService, ServerOptions, ServiceAccountLookup, TokenReviewAuthenticator,
};
use crate::provision::{self, ProvisionSettings};
use crate::telemetry::{self, Metrics};

#[derive(Debug, Clone)]
pub struct Options {
    /// The operator's namespace (leases, CA Secret).
    pub namespace: String,
    /// This replica's pod name (lease identity).
    pub pod_name: String,
    pub metrics_address: SocketAddr,
    pub config_address: SocketAddr,
    /// The Service agents reach the config server through (names in its certificate).
    pub config_service: String,
    pub provision: ProvisionSettings,
    pub lease_name: String,
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<()> {
    telemetry::init_logging();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let hub = ConfigHub::new();
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(Notify::new());
    let optional = OptionalKinds::discover(&client).await;
    let stores = Stores::start(&client, changed.clone(), optional);

    let authority = Arc::new(ca::load_or_create(&client, &options.namespace).await?);
    let names = vec![
        format!("{}.{}.svc", options.config_service, options.namespace),
        format!(
            "{}.{}.svc.cluster.local",
            options.config_service, options.namespace
        ),
    ];
    let serving = Arc::new(ServingCertificate::new(authority.clone(), names)?);
    let tls = Arc::new(serving.server_config()?);
    let service = ConfigService::new(
        hub.clone(),
        TokenReviewAuthenticator::new(client.clone()),
        service_account_lookup(&stores),
        ServerOptions::default(),
        metrics.streams.clone(),
    );
    let listener = TcpListener::bind(options.config_address)
        .await
        .with_context(|| format!("listening on {} for config streams", options.config_address))?;
    info!(address = %options.config_address, "config server listening");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config_server = {
        let mut stopped = stopped.clone();
        tokio::spawn(server::serve(listener, tls, service, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    };
    let telemetry_server = tokio::spawn(telemetry::serve(
        options.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));
    let settings = Settings {
        provision: options.provision.clone(),
        config_service: ObjectKey::new(options.namespace.clone(), options.config_service.clone()),
        config_port: options.config_address.port(),
        lease: LeaseSettings {
            namespace: options.namespace.clone(),
            name: options.lease_name.clone(),
            identity: options.pod_name.clone(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(2),
        },
    };
    let ca_pem = Some(authority.cert_pem().to_string());
    let parts = controller::Parts {
        client,
        stores,
        changed,
        hub,
        ca_pem,
        metrics,
        ready,
    };
    let controller = tokio::spawn(controller::run(parts, settings));

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let result = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        r = controller => r.context("the controller panicked").and_then(|r| r),
        r = config_server => r.context("the config server panicked").and_then(|r| r),
        r = telemetry_server => r.context("the metrics server panicked").and_then(|r| r),
    };
    info!("shutting down");
    stop.send_replace(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    result
}

/// The ServiceAccount a Gateway's agents must present: the one provisioned for it, for
/// Gateways of our classes only.
fn service_account_lookup(stores: &Stores) -> ServiceAccountLookup {
    let gateways = stores.gateways.clone();
    let classes = stores.gateway_classes.clone();
    Arc::new(move |key: &ObjectKey| {
        let gateway = gateways.get(&ObjectRef::new(&key.name).within(&key.namespace))?;
        let class_name = gateway.spec.gateway_class_name.clone();
        let class = classes.get(&ObjectRef::new(&class_name))?;
        (class.spec.controller_name == CONTROLLER_NAME)
            .then(|| provision::resource_name(&gateway.name_any(), &class_name))
    })
}
