//! The meeting point of the controller and the config server.
//!
//! The controller publishes each Gateway's compiled config; every agent stream of that Gateway
//! watches it. A `watch` channel keeps only the newest value, so a slow or stuck proxy pod
//! never holds back the controller or the other pods: it simply skips to the newest config
//! when it catches up. Agents report what they applied; the controller reads the ACKs to
//! decide Programmed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use portcullis_api::CompiledConfig;
use tokio::sync::watch;

use crate::compile::ObjectKey;

/// A config as published for one Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// `CompiledConfig::content_hash`: identifies the content whatever generation it is sent as.
    pub content_hash: [u8; 32],
    pub config: Arc<CompiledConfig>,
}

/// Which proxy pod an agent speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// What one pod last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    /// Content the proxy serves (the last ACKed config).
    pub applied_hash: Option<[u8; 32]>,
    pub applied_generation: u64,
    /// The last NACK's reason, cleared by the next ACK.
    pub last_error: Option<String>,
    pub connected: bool,
    pub updated: SystemTime,
}

#[derive(Default)]
struct GatewayEntry {
    sender: Option<watch::Sender<Option<Arc<Published>>>>,
    pods: BTreeMap<PodId, PodReport>,
}

/// Shared state; cheap to clone.
#[derive(Clone, Default)]
pub struct ConfigHub {
    inner: Arc<Mutex<HashMap<ObjectKey, GatewayEntry>>>,
    synced: Arc<watch::Sender<bool>>,
    /// Woken by every agent report, so the controller can re-evaluate Programmed.
    reported: Arc<tokio::sync::Notify>,
}

impl ConfigHub {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectKey, GatewayEntry>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes a Gateway's config (None: the Gateway has none, e.g. not accepted or gone).
    /// Publishing the same content again wakes nobody.
    pub fn publish(&self, gateway: &ObjectKey, config: Option<CompiledConfig>) {
        let published = config.map(|config| {
            Arc::new(Published {
                content_hash: config.content_hash(),
                config: Arc::new(config),
            })
        });
        let mut map = self.lock();
        let entry = map.entry(gateway.clone()).or_default();
        match &entry.sender {
            Some(sender) => {
                sender.send_if_modified(|current| {
                    let same = current.as_ref().map(|p| p.content_hash)
                        == published.as_ref().map(|p| p.content_hash);
                    if !same {
                        *current = published;
                    }
                    !same
                });
            }
            None => entry.sender = Some(watch::channel(published).0),
        }
    }

    /// Forgets Gateways not in `keep` (deleted ones); their streams see None.
    pub fn retain(&self, keep: &dyn Fn(&ObjectKey) -> bool) {
        let mut map = self.lock();
        for (key, entry) in map.iter_mut() {
            if !keep(key)
                && let Some(sender) = &entry.sender
            {
                sender.send_replace(None);
            }
        }
        map.retain(|key, entry| keep(key) || entry.pods.values().any(|p| p.connected));
    }

    /// The newest config of a Gateway, as a receiver that always holds the latest value.
    pub fn subscribe(&self, gateway: &ObjectKey) -> watch::Receiver<Option<Arc<Published>>> {
        let mut map = self.lock();
        let entry = map.entry(gateway.clone()).or_default();
        entry
            .sender
            .get_or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// The config currently published for a Gateway.
    pub fn current(&self, gateway: &ObjectKey) -> Option<Arc<Published>> {
        self.lock()
            .get(gateway)
            .and_then(|e| e.sender.as_ref())
            .and_then(|s| s.borrow().clone())
    }

    /// Records an agent's report.
    pub fn report(&self, gateway: &ObjectKey, pod: &PodId, update: impl FnOnce(&mut PodReport)) {
        let mut map = self.lock();
        let entry = map.entry(gateway.clone()).or_default();
        let report = entry.pods.entry(pod.clone()).or_insert_with(|| PodReport {
            applied_hash: None,
            applied_generation: 0,
            last_error: None,
            connected: true,
            updated: SystemTime::now(),
        });
        update(report);
        report.updated = SystemTime::now();
        drop(map);
        self.reported.notify_one();
    }

    /// Resolves after the next agent report.
    pub async fn reported(&self) {
        self.reported.notified().await;
    }

    /// Every pod's last report for a Gateway.
    pub fn pods(&self, gateway: &ObjectKey) -> BTreeMap<PodId, PodReport> {
        self.lock()
            .get(gateway)
            .map(|e| e.pods.clone())
            .unwrap_or_default()
    }

    /// Drops reports of pods that no longer exist.
    pub fn forget_pods(&self, exists: &dyn Fn(&PodId) -> bool) {
        for entry in self.lock().values_mut() {
            entry.pods.retain(|pod, _| exists(pod));
        }
    }

    /// Streams are served only once the controller's caches have synced and it has
    /// published a first compilation: before that, "no config" may just mean "not known yet",
    /// and a proxy must never be handed an empty config for that reason.
    pub fn set_synced(&self) {
        self.synced.send_replace(true);
    }

    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("infra", "gw")
    }

    #[test]
    fn subscribers_see_only_the_newest_config() {
        let hub = ConfigHub::new();
        let mut rx = hub.subscribe(&key());
        assert!(rx.borrow().is_none());
        for generation in 1..=3 {
            let mut config = CompiledConfig::empty(0);
            config.settings.max_header_count = 10 + generation;
            hub.publish(&key(), Some(config));
        }
        assert!(rx.has_changed().unwrap());
        let latest = rx.borrow_and_update().clone().unwrap();
        assert_eq!(
            latest.config.settings.max_header_count, 13,
            "intermediate configs are skipped"
        );
        // The same content again wakes nobody.
        let mut same = CompiledConfig::empty(7);
        same.settings.max_header_count = 13;
        hub.publish(&key(), Some(same));
        assert!(!rx.has_changed().unwrap());
        hub.retain(&|_| false);
        assert!(
            rx.borrow_and_update().is_none(),
            "a deleted Gateway publishes None"
        );
    }

    #[test]
    fn reports_are_kept_per_pod() {
        let hub = ConfigHub::new();
        let pod = PodId {
            namespace: "infra".into(),
            name: "gw-portcullis-abc".into(),
            uid: "1".into(),
        };
        hub.report(&key(), &pod, |r| {
            r.applied_hash = Some([1; 32]);
            r.applied_generation = 4;
        });
        assert_eq!(hub.pods(&key())[&pod].applied_generation, 4);
        hub.forget_pods(&|_| false);
        assert!(hub.pods(&key()).is_empty());
    }
}
