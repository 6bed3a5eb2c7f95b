//! End-to-end tests for Portcullis. They talk to the cluster named by `KUBECONFIG` and never
//! start one themselves: `make e2e` brings the local cluster up (or uses the one `KUBECONFIG`
//! names, e.g. kind), installs the CRDs, deploys the operator and runs `cargo test -p
//! portcullis-e2e`. Each scenario works in namespaces of its own and removes them at the end.
//!
//! The harness: [`cluster`] (apply YAML, wait for conditions), [`http`] (a plain HTTP/1.1
//! client that respects `connection: close`), [`tls`] (handshakes that report the certificate
//! served), [`load`] (steady traffic in the background, counting every failure) and
//! [`objects`] (the YAML the scenarios apply).

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod http;
pub mod load;
pub mod objects;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 250 ms until it returns `Some`, for at most `timeout`.
///
/// # Panics
/// When `timeout` passes first; the message names `what` and the last error `check` reported.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => last = "not yet".into(),
            Err(error) => last = error,
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A short random suffix for names, so runs never collide with each other or with leftovers.
pub fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:06x}", hasher.finish() & 0xff_ffff)
}

/// Percentile `p` (0..=100) of `samples` (sorted in place), nearest-rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&mut samples, 99.0), Duration::from_millis(20));
        assert_eq!(percentile(&mut samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn suffixes_differ() {
        assert_ne!(suffix(), suffix());
        assert_eq!(suffix().len(), 6);
    }
}
