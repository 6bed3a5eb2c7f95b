//! The minimum data rate of a body in flight. An idle timeout alone cannot stop a client that
//! sends (or reads) a byte every few seconds: each byte is progress, and the connection, its
//! buffers and possibly an upstream connection stay held for as long as the client likes.
//! So a body must also average a minimum rate from its start, after a grace period for slow
//! starts. Every wait for the peer is bounded by whichever comes first: the idle timeout, or
//! the moment the average would drop below the minimum.

use std::time::{Duration, Instant};

use portcullis_api::config::ProxySettings;

#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    start: Instant,
    bytes: u64,
    bytes_per_s: u64,
    grace: Duration,
    idle: Duration,
}

impl MinRate {
    /// Starts measuring now, with the body limits of `settings`.
    pub fn start(settings: &ProxySettings, now: Instant) -> Self {
        Self {
            start: now,
            bytes: 0,
            bytes_per_s: settings.min_data_rate_bytes_per_s,
            grace: Duration::from_millis(settings.min_data_rate_grace_ms),
            idle: Duration::from_millis(settings.body_idle_timeout_ms),
        }
    }

    /// How long the next read or write may wait for the peer; `None` once the body has
    /// fallen below the minimum rate. `undelivered` is how many of the recorded bytes the peer
    /// has not taken yet: what a slow reader's kernel buffers accepted buys no time.
    pub fn next_wait(&self, now: Instant, undelivered: u64) -> Option<Duration> {
        if self.bytes_per_s == 0 {
            return Some(self.idle);
        }
        let delivered = self.bytes.saturating_sub(undelivered);
        // The time the bytes so far have bought, in whole nanoseconds (u128: no overflow).
        let earned_ns = u128::from(delivered) * 1_000_000_000 / u128::from(self.bytes_per_s);
        let earned = Duration::from_nanos(u64::try_from(earned_ns).unwrap_or(u64::MAX));
        let Some(deadline) = self.start.checked_add(self.grace.saturating_add(earned)) else {
            return Some(self.idle);
        };
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            None
        } else {
            Some(left.min(self.idle))
        }
    }

    /// Bytes recorded so far.
    pub fn recorded(&self) -> u64 {
        self.bytes
    }

    pub fn record(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u64, grace_ms: u64, idle_ms: u64) -> ProxySettings {
        ProxySettings {
            min_data_rate_bytes_per_s: rate,
            min_data_rate_grace_ms: grace_ms,
            body_idle_timeout_ms: idle_ms,
            ..ProxySettings::default()
        }
    }

    #[test]
    fn waits_are_bounded_by_the_grace_period_before_any_byte() {
        let t0 = Instant::now();
        let rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        assert_eq!(rate.next_wait(t0, 0), Some(Duration::from_secs(5)));
        assert_eq!(
            rate.next_wait(t0 + Duration::from_secs(4), 0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(rate.next_wait(t0 + Duration::from_secs(5), 0), None);
    }

    #[test]
    fn each_byte_buys_time_at_the_minimum_rate() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(100, 1_000, 60_000), t0);
        rate.record(250);
        // 1 s grace + 2.5 s for 250 bytes at 100 B/s.
        assert_eq!(
            rate.next_wait(t0 + Duration::from_secs(3), 0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(rate.next_wait(t0 + Duration::from_millis(3_500), 0), None);
    }

    #[test]
    fn the_idle_timeout_still_caps_every_wait() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(1, 5_000, 2_000), t0);
        rate.record(1_000_000);
        assert_eq!(rate.next_wait(t0, 0), Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_trickle_falls_behind_and_is_cut_off() {
        // slowhttptest's slow body: a few bytes every 10 s against 240 B/s after 5 s.
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        rate.record(24);
        assert_eq!(rate.next_wait(t0 + Duration::from_secs(10), 0), None);
    }

    #[test]
    fn bytes_the_peer_has_not_taken_buy_no_time() {
        // A slow reader's socket accepted 1 MB; it has read 100 bytes of it.
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        rate.record(1_000_000);
        assert_eq!(
            rate.next_wait(t0 + Duration::from_secs(60), 0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(rate.next_wait(t0 + Duration::from_secs(6), 999_900), None);
        assert!(
            rate.next_wait(t0 + Duration::from_secs(5), 999_900)
                .is_some()
        );
    }

    #[test]
    fn zero_rate_disables_the_minimum() {
        let t0 = Instant::now();
        let rate = MinRate::start(&settings(0, 0, 7_000), t0);
        assert_eq!(
            rate.next_wait(t0 + Duration::from_secs(3600), 0),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(1, u64::MAX, 1_000), t0);
        rate.record(usize::MAX);
        rate.record(usize::MAX);
        assert_eq!(rate.next_wait(t0, 0), Some(Duration::from_secs(1)));
    }
}
