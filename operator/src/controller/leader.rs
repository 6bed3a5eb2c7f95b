//! Leader election on a `coordination.k8s.io` Lease. Every replica watches, compiles and serves
//! config streams; only the leader provisions and writes status, so two replicas never fight
//! over the same objects.
//!
//! The lease is taken when it is free or expired and renewed every `renew` period; updates use
//! the Lease's resourceVersion, so two candidates can never both win a round. A leader that
//! cannot renew steps down on its own one renew period *before* its lease could expire (as
//! other replicas see it), and a round never waits longer than that for the API server;
//! [`Leadership::holds`] answers on the spot, and the controller asks it before each write,
//! so a deposed leader stops writing before a successor can start (a write already in flight
//! can still land).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// Whether this replica leads: `changes` for waking up on a change, `holds` for asking now.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// Some(term) while leading; the term grows each time the lease is taken anew, so a
    /// step-down and a re-take between two looks are still seen as a change.
    pub changes: watch::Receiver<Option<u64>>,
    /// Until when the lease this replica last renewed is certainly still its own.
    held_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Whether this replica holds the lease at this moment.
    pub fn holds(&self) -> bool {
        held(&self.held_until, Instant::now())
    }
}

fn held_until(held_until: &Mutex<Option<Instant>>) -> Option<Instant> {
    *held_until.lock().unwrap_or_else(PoisonError::into_inner)
}

fn held(until: &Mutex<Option<Instant>>, now: Instant) -> bool {
    held_until(until).is_some_and(|until| now < until)
}

/// How long after a round began that renewed the lease it is still certainly ours: others
/// see it expire a lease duration after the renew time we wrote (which is later than the
/// round's start); one renew period is kept back for clock skew (assumed under it) and
/// whole-second expiry.
fn safe_for(settings: &LeaseSettings) -> Duration {
    settings.duration.saturating_sub(settings.renew)
}

/// Runs the election in the background.
pub fn start(client: Client, settings: LeaseSettings) -> Leadership {
    let (tx, rx) = watch::channel(None);
    let until = Arc::new(Mutex::new(None));
    let leadership = Leadership {
        changes: rx,
        held_until: until.clone(),
    };
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let mut term = 0u64;
        loop {
            let round_began = Instant::now();
            let holding = held(&until, round_began);
            // A round may not outlast the lease it would renew: a hung API call must not
            // keep this replica leading past the point where another may take over.
            let limit = match held_until(&until) {
                Some(deadline) if holding => deadline - round_began,
                _ => settings.duration,
            };
            let outcome = match tokio::time::timeout(limit, round(&api, &settings)).await {
                Ok(outcome) => outcome.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            let renewed = match outcome {
                Ok(true) => Some(Some(round_began + safe_for(&settings))),
                Ok(false) => Some(None),
                Err(e) => {
                    warn!(error = %e, "lease round failed");
                    // The lease last renewed stays ours until it runs out.
                    None
                }
            };
            if let Some(renewed) = renewed {
                *until.lock().unwrap_or_else(PoisonError::into_inner) = renewed;
            }
            let leading = held(&until, Instant::now());
            if leading && !holding {
                term += 1;
            }
            let now_leading = leading.then_some(term);
            if *tx.borrow() != now_leading {
                info!(leading, term, identity = %settings.identity, "leadership changed");
                tx.send_replace(now_leading);
            }
            // Wake up when the lease runs out, if that comes before the next round.
            let next = Instant::now() + settings.renew;
            let wake = held_until(&until)
                .filter(|deadline| *deadline > Instant::now())
                .map_or(next, |deadline| deadline.min(next));
            tokio::time::sleep_until(wake.into()).await;
        }
    });
    leadership
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

    #[test]
    fn leadership_ends_when_the_renewed_lease_is_no_longer_certainly_ours() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(2),
        };
        assert_eq!(safe_for(&settings), Duration::from_secs(13));
        let now = Instant::now();
        let until = Mutex::new(Some(now + safe_for(&settings)));
        assert!(held(&until, now));
        assert!(held(&until, now + Duration::from_secs(12)));
        assert!(!held(&until, now + Duration::from_secs(13)));
        assert!(!held(&Mutex::new(None), now));
    }
}
