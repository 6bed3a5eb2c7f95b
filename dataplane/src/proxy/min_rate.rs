//! The minimum data rate of a body in flight. An idle timeout alone cannot stop a client that
//! sends (or reads) a byte every few seconds: each byte is progress, and the connection, its
//! buffers and possibly an upstream connection stay held for as long as the client likes.
//!
//! So once a grace period for slow starts has passed, the bytes the peer delivered over the
//! last grace period (measured from the newest checkpoint at least that old) must average the
//! minimum rate. A window rather than an average from the start: a slow reader's first TCP
//! window arrives at once, and counted from the start it would buy many more seconds of
//! trickling. Waits are cut into rechecks (a sixteenth of the grace period, at most a
//! second), so a peer is cut off soon after it falls below the rate; a wait that ends without
//! progress is a recheck, not a failure. No progress at all for the idle timeout ends the
//! body too.
//!
//! The clock runs only while the proxy waits for this peer (`resume` .. `pause`): time spent
//! waiting for the upstream, such as the gaps of a server-sent event stream or a long poll,
//! is not the client's to make up.

use std::time::{Duration, Instant};

use portcullis_api::config::ProxySettings;

/// Samples of (time, bytes delivered) kept, one per sixteenth of the grace period: they reach
/// back one and a half grace periods, and a window ends within a sixteenth of where it should.
const CHECKPOINTS: usize = 24;
const SAMPLES_PER_GRACE: u32 = 16;
/// The longest wait between two rate checks.
const RECHECK_MAX: Duration = Duration::from_secs(1);
/// The shortest, so a tiny grace period does not turn waits into a busy loop.
const RECHECK_MIN: Duration = Duration::from_millis(50);

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
    /// A ring of (time, delivered) samples; `newest` indexes the latest, `len` how many exist.
    checkpoints: [(Instant, u64); CHECKPOINTS],
    newest: usize,
    len: usize,
    /// Time spent waiting for the peer before the current wait, and when the current wait
    /// began (None while paused). Every instant above is on this clock: `start` plus waiting.
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
            checkpoints: [(now, 0); CHECKPOINTS],
            newest: 0,
            len: 1,
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
        self.checkpoint(now, delivered);
        let Some(grace_end) = self.start.checked_add(self.grace) else {
            return Some(idle_left);
        };
        if now < grace_end {
            // Keep sampling during the grace period too: the windows after it start there.
            return Some(idle_left.min(grace_end - now).min(self.recheck()));
        }
        let (since, base) = self.window_start(now);
        let window = now.saturating_duration_since(since);
        let needed = u128::from(self.bytes_per_s) * window.as_nanos() / 1_000_000_000;
        if u128::from(delivered.saturating_sub(base)) < needed {
            return None;
        }
        Some(idle_left.min(self.recheck()))
    }

    /// Bytes recorded so far.
    pub fn recorded(&self) -> u64 {
        self.bytes
    }

    pub fn record(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    fn spacing(&self) -> Duration {
        (self.grace / SAMPLES_PER_GRACE).max(RECHECK_MIN)
    }

    fn recheck(&self) -> Duration {
        self.spacing().min(RECHECK_MAX)
    }

    fn checkpoint(&mut self, now: Instant, delivered: u64) {
        let (latest, _) = self.checkpoints[self.newest];
        if now.saturating_duration_since(latest) < self.spacing() {
            return;
        }
        self.newest = (self.newest + 1) % CHECKPOINTS;
        self.checkpoints[self.newest] = (now, delivered);
        self.len = (self.len + 1).min(CHECKPOINTS);
    }

    /// The newest checkpoint at least one grace period old, or the oldest one kept.
    fn window_start(&self, now: Instant) -> (Instant, u64) {
        let oldest = (self.newest + CHECKPOINTS + 1 - self.len) % CHECKPOINTS;
        let mut found = self.checkpoints[oldest];
        for step in 0..self.len {
            let sample = self.checkpoints[(oldest + step) % CHECKPOINTS];
            if now.saturating_duration_since(sample.0) >= self.grace {
                found = sample;
            } else {
                break;
            }
        }
        found
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
    fn waits_are_bounded_by_the_grace_period_before_any_byte() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        // Rechecks every sixteenth of the grace period while it runs.
        assert_eq!(rate.next_wait(t0, 0), Some(secs(5.0 / 16.0)));
        assert_eq!(rate.next_wait(t0 + secs(4.9), 0), Some(secs(0.1)));
        assert_eq!(rate.next_wait(t0 + secs(5.0), 0), None);
    }

    #[test]
    fn a_peer_at_the_rate_is_never_cut_off() {
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        assert_eq!(lifetime(&mut rate, 60.0, |t| (t * 250.0) as u64), None);
    }

    #[test]
    fn a_bursty_peer_above_the_rate_is_kept() {
        // 1 000 bytes every 2 s: stalls of 2 s, 500 B/s on average.
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        assert_eq!(
            lifetime(&mut rate, 60.0, |t| ((t / 2.0).floor() as u64 + 1) * 1_000),
            None
        );
    }

    #[test]
    fn a_slow_reader_s_first_window_buys_no_more_than_the_grace_period() {
        // slowhttptest's slow read: 1.5 KB taken at once, then 32 B/s, against 240 B/s after
        // 5 s. Counted from the start it would last 7.2 s; the window cuts it off within
        // about a sixteenth of the grace period after the grace period.
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        let cut = lifetime(&mut rate, 30.0, |t| 1_500 + (t * 32.0) as u64);
        let cut = cut.expect("a 32 B/s reader was never cut off");
        assert!((5.0..=5.75).contains(&cut), "cut off at {cut} s");
    }

    #[test]
    fn a_trickle_falls_behind_and_is_cut_off_at_the_end_of_the_grace_period() {
        // slowhttptest's slow body: a few bytes every 10 s.
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), Instant::now());
        let cut = lifetime(&mut rate, 30.0, |t| ((t / 10.0).floor() as u64 + 1) * 24);
        assert_eq!(cut.map(|c| (c * 10.0).round() / 10.0), Some(5.0));
    }

    #[test]
    fn no_progress_for_the_idle_timeout_ends_the_body_even_without_a_minimum_rate() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(0, 0, 7_000), t0);
        rate.record(10);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(7.0)));
        assert_eq!(rate.next_wait(t0 + secs(3.0), 0), Some(secs(4.0)));
        assert_eq!(rate.next_wait(t0 + secs(7.0), 0), None);
        let mut rate = MinRate::start(&settings(240, 5_000, 2_000), t0);
        rate.record(1_000_000);
        assert_eq!(rate.next_wait(t0 + secs(1.0), 0), Some(secs(5.0 / 16.0)));
        assert_eq!(rate.next_wait(t0 + secs(3.5), 0), None);
    }

    #[test]
    fn bytes_the_peer_has_not_taken_buy_no_time() {
        // A slow reader's socket accepted 1 MB; it has read 100 bytes of it.
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(240, 5_000, 60_000), t0);
        rate.record(1_000_000);
        assert!(rate.next_wait(t0 + secs(4.0), 999_900).is_some());
        assert_eq!(rate.next_wait(t0 + secs(6.0), 999_900), None);
    }

    #[test]
    fn every_wait_is_a_recheck_of_at_most_a_second() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(1, 600_000, 3_600_000), t0);
        rate.record(1_000_000);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(1.0)));
        let mut rate = MinRate::start(&settings(1, 0, 3_600_000), t0);
        rate.record(1_000_000);
        assert_eq!(rate.next_wait(t0, 0), Some(RECHECK_MIN));
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
        // While it waits for the client, the clock runs again: 5 s later the grace is over
        // and 200 bytes are short of 5 s at 240 B/s.
        assert_eq!(rate.next_wait(t0 + secs(35.1), 0), None);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut rate = MinRate::start(&settings(u64::MAX, u64::MAX, 1_000), t0);
        rate.record(usize::MAX);
        rate.record(usize::MAX);
        assert_eq!(rate.next_wait(t0, 0), Some(secs(1.0)));
        let mut rate = MinRate::start(&settings(u64::MAX, 0, 1_000), t0);
        rate.record(usize::MAX);
        assert!(rate.next_wait(t0 + secs(0.5), 0).is_some());
    }
}
