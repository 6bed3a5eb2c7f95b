//! Leader election on a `coordination.k8s.io` Lease. Every replica watches, compiles and serves
//! config streams; only the leader provisions and writes status, so two replicas never fight
//! over the same objects.
//!
//! The lease is taken when it is free or expired and renewed every `renew` period; updates use
//! the Lease's resourceVersion, so two candidates can never both win a round. A leader that
//! cannot renew for a whole lease duration steps down on its own.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name (its pod name).
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Runs the election in the background; the receiver says whether this replica leads.
pub fn start(client: Client, settings: LeaseSettings) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            let leading = match round(&api, &settings).await {
                Ok(true) => {
                    last_renewal = Some(std::time::Instant::now());
                    true
                }
                Ok(false) => {
                    last_renewal = None;
                    false
                }
                Err(e) => {
                    warn!(error = %e, "lease round failed");
                    // Keep leading only while the lease we last renewed is still ours.
                    last_renewal.is_some_and(|t| t.elapsed() < settings.duration)
                }
            };
            if *tx.borrow() != leading {
                info!(leading, identity = %settings.identity, "leadership changed");
                tx.send_replace(leading);
            }
            tokio::time::sleep(settings.renew).await;
        }
    });
    rx
}

/// One attempt to take or keep the lease. Ok(true): we hold it now.
async fn round(api: &Api<Lease>, settings: &LeaseSettings) -> kube::Result<bool> {
    let now = Timestamp::now();
    let current = api.get_opt(&settings.name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(held_by(settings, now, 0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == settings.identity;
    if !ours && !expired(&spec, now) && !holder.is_empty() {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquired = if ours {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(held_by(settings, now, transitions, acquired));
    // replace() sends the resourceVersion we read: a concurrent update makes it fail (409).
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn held_by(
    settings: &LeaseSettings,
    now: Timestamp,
    transitions: i32,
    acquired: Option<MicroTime>,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(settings.duration.as_secs()).unwrap_or(15)),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() > renewed.0.as_second() + duration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let renewed = Timestamp::from_second(1_000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec, Timestamp::from_second(1_010).unwrap()));
        assert!(expired(&spec, Timestamp::from_second(1_016).unwrap()));
        assert!(expired(&LeaseSpec::default(), renewed));
    }
}
