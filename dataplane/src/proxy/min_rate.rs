//! The minimum data rate of a body in flight. An idle timeout alone cannot stop a client that
//! sends (or reads) a byte every few seconds: each byte is progress, and the connection, its
//! buffers and possibly an upstream connection stay held for as long as the client likes.
//!
//! So once a grace period for slow starts has passed, the body must have averaged the minimum
//! rate from its start: each delivered byte buys 1/rate of waiting, and the grace period only
//! delays the check (as Kestrel's MinDataRate does). It does not add to what the bytes bought:
//! with that, a slow reader's first TCP window (1–2 KiB taken at once) bought it 4–8 s beyond
//! the grace. An average from the start, not over a sliding window: a window would also cut
//! off clients well above the rate whose progress comes in steps (a TLS record is counted when
//! rustls takes it, the socket only later) or who pause reading longer than a window after
//! taking megabytes (a media player with a full buffer).
//!
//! The clock runs only while the proxy waits for this peer (`resume` .. `pause`): time spent
//! waiting for the upstream, such as the gaps of a server-sent event stream or a long poll, is
//! not the client's to make up. Waits are rechecks of at most a second, so bytes the peer
//! acknowledges while a write stays blocked still count; a wait that ends without progress is
//! a recheck, not a failure. No progress at all for the idle timeout ends the body too.

use std::time::{Duration, Instant};

use portcullis_api::config::ProxySettings;

/// The longest wait between two rate checks.
const RECHECK_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct MinRate {
    start: Instant,
    bytes: u64,
    bytes_per_s: u64,
    grace: Duration,
    idle: Duration,
    /// Bytes the peer had taken at the last check, and when that count last grew.
    delivered: u64,
    last_progress: Instant,
    /// Time spent waiting for the peer before the current wait, and when the current wait
    /// began (None while paused). `start` and `last_progress` are on this clock: `start` plus
    /// waiting.
    waited: Duration,
    resumed: Option<Instant>,
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
            delivered: 0,
            last_progress: now,
            waited: Duration::ZERO,
            resumed: Some(now),
        }
    }

    /// The clock stops: the proxy is about to wait for something other than this peer.
    pub fn pause(&mut self, now: Instant) {
        if let Some(since) = self.resumed.take() {
            self.waited += now.saturating_duration_since(since);
        }
    }

    /// The clock runs again: the proxy waits for this peer.
    pub fn resume(&mut self, now: Instant) {
        self.resumed.get_or_insert(now);
    }

    /// `now` on the waiting clock.
    fn clock(&self, now: Instant) -> Instant {
        let running = self
            .resumed
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        self.start + self.waited + running
    }

    /// How long the next read or write may wait for the peer before the rate is checked
    /// again; `None` once the body has fallen below the minimum rate or made no progress for
    /// the idle timeout. `undelivered` is how many of the recorded bytes the peer has not
    /// taken yet: what a slow reader's kernel buffers accepted buys no time.
    pub fn next_wait(&mut self, now: Instant, undelivered: u64) -> Option<Duration> {
        let now = self.clock(now);
        let delivered = self.bytes.saturating_sub(undelivered);
        if delivered > self.delivered {
            self.delivered = delivered;
            self.last_progress = now;
        }
        let idle_left = self
            .idle
            .saturating_sub(now.saturating_duration_since(self.last_progress));
        if idle_left.is_zero() {
            return None;
        }
        if self.bytes_per_s == 0 {
            return Some(idle_left);
        }
        // The time the bytes so far have bought, in whole nanoseconds (u128: no overflow).
        let earned_ns = u128::from(delivered) * 1_000_000_000 / u128::from(self.bytes_per_s);
        let earned = Duration::from_nanos(u64::try_from(earned_ns).unwrap_or(u64::MAX));
        let Some(deadline) = self.start.checked_add(self.grace.max(earned)) else {
            return Some(idle_left.min(RECHECK_MAX));
        };
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            None
        } else {
            Some(left.min(idle_left).min(RECHECK_MAX))
        }
    }

    /// The bytes not taken by the peer at the last check, counted against what is recorded
    /// now: `next_wait` given this answers from the last check, with no new count from the
    /// socket. Delivery only grows, so that one wait is never longer than a fresh check's,
    /// and only its `None` (cut off) needs a fresh count to confirm. Progress is only seen
    /// by fresh counts, though: a caller whose wait timed out should count afresh, or a peer
    /// that stalls gets up to twice the idle timeout.
    pub fn undelivered_at_last_check(&self) -> u64 {
        self.bytes.saturating_sub(self.delivered)
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

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Drives `rate` the way a connection does: a check whenever a wait ends (at least every
    /// 100 ms), the peer having delivered `delivered(t)` bytes by time `t`. Returns when it
    /// was cut off, or None if it lasted `until` seconds.
    fn lifetime(rate: &mut MinRate, until: f64, delivered: impl Fn(f64) -> u64) -> Option<f64> {
        let t0 = rate.start;
        let mut t = 0.0;
        let mut recorded = 0u64;
        while t <= until {
            let want = delivered(t);
            if want > recorded {
                rate.record((want - recorded) as usize);
                recorded = want;
            }
            match rate.next_wait(t0 + secs(t), 0) {
                None => return Some(t),
                Some(wait) => t += wait.min(secs(0.1)).as_secs_f64().max(0.001),
            }
        }
        None
    }

    #[test]
    fn the_last_checks_count_never_waits_longer_than_a_fresh_one() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(100, 1_000, 3_000), t0);
        rate.record(1_000);
        // The peer took 400 bytes by 1 s: they bought 4 s from the start.
        assert_eq!(rate.next_wait(t0 + secs(1.0), 600), Some(secs(1.0)));
        rate.record(500);
        assert_eq!(rate.undelivered_at_last_check(), 1_100);
        // By 3.5 s it took everything. The last check's count (400, last grown at 1 s) has
        // 0.5 s left; the fresh count (1 500: 15 s bought) allows the full recheck interval.
        let stale = rate.next_wait(t0 + secs(3.5), rate.undelivered_at_last_check());
        assert_eq!(stale, Some(secs(0.5)));
        // At 4.5 s the last check's count says too slow; the fresh one, confirming, says fine.
        let stale = rate.next_wait(t0 + secs(4.5), rate.undelivered_at_last_check());
        assert_eq!(stale, None);
        assert_eq!(rate.next_wait(t0 + secs(4.5), 0), Some(secs(1.0)));
        assert_eq!(rate.undelivered_at_last_check(), 0);
    }

    #[test]
    fn waits_are_bounded_by_the_grace_period_before_any_byte() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(1.0)));
        assert_eq!(rate.next_wait(t0 + secs(4.5), 0), Some(secs(0.5)));
        assert_eq!(rate.next_wait(t0 + secs(5.0), 0), None);
    }

    #[test]
    fn each_byte_buys_time_at_the_minimum_rate() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(100, 1_000, 60_000), t0);
        rate.record(250);
        // 250 bytes at 100 B/s buy 2.5 s from the start; the 1 s grace is inside them.
        assert_eq!(rate.next_wait(t0 + secs(2.0), 0), Some(secs(0.5)));
        assert_eq!(rate.next_wait(t0 + secs(2.5), 0), None);
    }

    #[test]
    fn the_grace_period_delays_the_check_and_adds_no_time() {
        // slowhttptest's slow read: 1 KiB of a first TCP window at once, then 32 B/s, against
        // 240 B/s after 5 s. The 1 KiB bought 4.3 s, inside the grace: cut off at 5 s.
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        let cut = lifetime(&mut rate, 30.0, |t| 1024 + (t * 32.0) as u64);
        assert_eq!(cut.map(|c| (c * 10.0).round() / 10.0), Some(5.0));
    }

    #[test]
    fn a_peer_at_the_rate_is_never_cut_off() {
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        assert_eq!(lifetime(&mut rate, 60.0, |t| (t * 250.0) as u64), None);
    }

    #[test]
    fn a_fast_peer_that_pauses_keeps_what_it_earned() {
        // 1 MB in the first second, then 30 s without reading (a media player's full buffer).
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        assert_eq!(
            lifetime(&mut rate, 31.0, |t| if t < 1.0 { 0 } else { 1_000_000 }),
            None
        );
    }

    #[test]
    fn a_trickle_falls_behind_and_is_cut_off() {
        // slowhttptest's slow body: a few bytes every 10 s against 240 B/s after 5 s.
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        let cut = lifetime(&mut rate, 30.0, |t| ((t / 10.0).floor() as u64 + 1) * 24);
        assert_eq!(cut.map(|c| (c * 10.0).round() / 10.0), Some(5.0));
    }

    #[test]
    fn time_spent_waiting_for_the_upstream_does_not_count() {
        // An event stream: 100 bytes, a 30 s gap while the upstream has nothing, 100 more.
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        rate.record(100);
        assert!(rate.next_wait(t0 + secs(0.01), 0).is_some());
        rate.pause(t0 + secs(0.02));
        rate.resume(t0 + secs(30.0));
        rate.record(100);
        assert!(rate.next_wait(t0 + secs(30.01), 0).is_some());
        // While it waits for the client the clock runs again, up to the grace period (200
        // bytes bought only 0.83 s).
        assert!(rate.next_wait(t0 + secs(34.9), 0).is_some());
        assert_eq!(rate.next_wait(t0 + secs(35.0), 0), None);
    }

    #[test]
    fn no_progress_for_the_idle_timeout_ends_the_body_even_without_a_minimum_rate() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(0, 0, 7_000), t0);
        rate.record(10);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(7.0)));
        assert_eq!(rate.next_wait(t0 + secs(3.0), 0), Some(secs(4.0)));
        assert_eq!(rate.next_wait(t0 + secs(7.0), 0), None);
        let mut rate = MinRate::start(&settings(1, 5_000, 2_000), t0);
        rate.record(1_000_000);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(1.0)));
        assert_eq!(rate.next_wait(t0 + secs(1.5), 0), Some(secs(0.5)));
        assert_eq!(rate.next_wait(t0 + secs(2.0), 0), None);
    }

    #[test]
    fn bytes_the_peer_has_not_taken_buy_no_time() {
        // A slow reader's socket accepted 1 MB; it has read 100 bytes of it.
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        rate.record(1_000_000);
        assert!(rate.next_wait(t0 + secs(4.9), 999_900).is_some());
        assert_eq!(rate.next_wait(t0 + secs(5.0), 999_900), None);
    }

    #[test]
    fn bytes_acknowledged_during_a_blocked_write_extend_it_at_the_next_recheck() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(1_000, 1_000, 60_000), t0);
        rate.record(1_000_000);
        // 1 500 bytes taken: the deadline is 1.5 s.
        assert_eq!(rate.next_wait(t0 + secs(1.0), 998_500), Some(secs(0.5)));
        // By then 1 500 more were taken while the write waited: 3 s.
        assert_eq!(rate.next_wait(t0 + secs(1.5), 997_000), Some(secs(1.0)));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(1, u64::MAX, 1_000), t0);
        rate.record(usize::MAX);
        rate.record(usize::MAX);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(1.0)));
    }
}
