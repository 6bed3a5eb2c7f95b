//! Counters. Each core counts in its own `Cell`s (no atomics shared between cores); the
//! control thread asks every core for a copy when `/metrics` is scraped and adds them up.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests answered for one (listener, route), by status class 1xx..5xx.
#[derive(Debug, Default)]
pub struct RouteCounters {
    by_class: [Cell<u64>; 5],
}

impl RouteCounters {
    pub fn record(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let cell = &self.by_class[class];
        cell.set(cell.get() + 1);
    }

    fn copy(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.by_class[i].get())
    }
}

/// Why talking to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Reset,
    Protocol,
}

impl UpstreamError {
    const ALL: [UpstreamError; 4] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Reset,
        UpstreamError::Protocol,
    ];

    fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Reset => "reset",
            UpstreamError::Protocol => "protocol",
        }
    }
}

/// (listener, route) naming a request counter.
pub type StatKey = (Arc<str>, Arc<str>);

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Kept across config generations so counters never reset.
    routes: RefCell<HashMap<StatKey, Rc<RouteCounters>>>,
    upstream_errors: [Cell<u64>; 4],
    pub connections_accepted: Cell<u64>,
    pub connections_rejected: Cell<u64>,
    pub active_connections: Cell<u64>,
    pub tls_handshake_errors: Cell<u64>,
    pub invalid_requests: Cell<u64>,
    pub panics: Cell<u64>,
    /// Connections served as HTTP/2 (h2c or ALPN h2), and the streams they opened.
    pub http2_connections: Cell<u64>,
    pub http2_streams: Cell<u64>,
    /// Requests sent to a backend again after a response with one of their rule's retry codes.
    pub retries: Cell<u64>,
    /// Client certificates that did not verify on ports in AllowInsecureFallback mode, let
    /// through all the same. An atomic only because rustls requires its verifiers to be
    /// `Sync`: each core's verifiers hold this core's counter alone, so no other core ever
    /// touches it.
    pub client_certificates_unverified: Arc<AtomicU64>,
    /// Shared with the core's detached mirror tasks.
    pub mirrors: Rc<MirrorCounters>,
    /// UDP sessions open now, and datagrams dropped because a new session would have
    /// exceeded the per-core limit.
    pub udp_sessions: Cell<u64>,
    pub udp_datagrams_refused: Cell<u64>,
}

/// Copies sent by RequestMirror filters on one core.
#[derive(Debug, Default)]
pub struct MirrorCounters {
    pub in_flight: Cell<u64>,
    /// Copies whose backend answered (the answer itself is dropped).
    pub completed: Cell<u64>,
    /// Copies that could not be delivered: connect, write or read failed or timed out.
    pub failed: Cell<u64>,
    /// Copies never sent: too many in flight, a body over the copy limit, no endpoint.
    pub skipped: Cell<u64>,
}

impl CoreCounters {
    /// Counters for each stat slot of a new snapshot, reusing existing ones by key.
    pub fn slots(&self, keys: &[StatKey]) -> Vec<Rc<RouteCounters>> {
        let mut routes = self.routes.borrow_mut();
        keys.iter()
            .map(|key| routes.entry(key.clone()).or_default().clone())
            .collect()
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        let cell = &self.upstream_errors[kind as usize];
        cell.set(cell.get() + 1);
    }

    pub fn copy(&self, core: usize) -> CoreStats {
        CoreStats {
            core,
            routes: self
                .routes
                .borrow()
                .iter()
                .map(|((listener, route), c)| ((listener.to_string(), route.to_string()), c.copy()))
                .collect(),
            upstream_errors: std::array::from_fn(|i| self.upstream_errors[i].get()),
            connections_accepted: self.connections_accepted.get(),
            connections_rejected: self.connections_rejected.get(),
            active_connections: self.active_connections.get(),
            tls_handshake_errors: self.tls_handshake_errors.get(),
            invalid_requests: self.invalid_requests.get(),
            panics: self.panics.get(),
            http2_connections: self.http2_connections.get(),
            http2_streams: self.http2_streams.get(),
            retries: self.retries.get(),
            client_certificates_unverified: self
                .client_certificates_unverified
                .load(Ordering::Relaxed),
            mirrors: [
                self.mirrors.completed.get(),
                self.mirrors.failed.get(),
                self.mirrors.skipped.get(),
                self.mirrors.in_flight.get(),
            ],
            udp_sessions: self.udp_sessions.get(),
            udp_datagrams_refused: self.udp_datagrams_refused.get(),
        }
    }
}

pub fn increment(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// A copy of one core's counters, sent to the control thread.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    pub core: usize,
    pub routes: Vec<((String, String), [u64; 5])>,
    pub upstream_errors: [u64; 4],
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub active_connections: u64,
    pub tls_handshake_errors: u64,
    pub invalid_requests: u64,
    pub panics: u64,
    pub http2_connections: u64,
    pub http2_streams: u64,
    pub retries: u64,
    pub client_certificates_unverified: u64,
    /// Mirror copies completed, failed, skipped, and in flight now.
    pub mirrors: [u64; 4],
    pub udp_sessions: u64,
    pub udp_datagrams_refused: u64,
}

/// Figures the control thread owns.
#[derive(Debug, Clone, Default)]
pub struct ControlStats {
    pub generation: Option<u64>,
    pub swaps: u64,
    pub rejections: u64,
    pub swap_seconds: Histogram,
    pub last_swap_seconds: f64,
    pub ready: bool,
}

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

const SWAP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            bounds: SWAP_BUCKETS,
            counts: vec![0; SWAP_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// Renders the Prometheus text exposition format.
pub fn render(control: &ControlStats, cores: &[CoreStats]) -> String {
    let mut out = String::with_capacity(4096);
    let mut requests: BTreeMap<(String, String), [u64; 5]> = BTreeMap::new();
    for core in cores {
        for (key, counts) in &core.routes {
            let total = requests.entry(key.clone()).or_default();
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
    }
    let sum = |f: fn(&CoreStats) -> u64| cores.iter().map(f).sum::<u64>();

    header(
        &mut out,
        "portcullis_requests_total",
        "counter",
        "Requests answered, by listener, route and status class (route=\"\" matched no route).",
    );
    for ((listener, route), counts) in &requests {
        for (class, count) in counts.iter().enumerate() {
            if *count > 0 {
                let _ = writeln!(
                    out,
                    "portcullis_requests_total{{listener=\"{}\",route=\"{}\",status_class=\"{}xx\"}} {count}",
                    escape(listener),
                    escape(route),
                    class + 1
                );
            }
        }
    }
    header(
        &mut out,
        "portcullis_upstream_errors_total",
        "counter",
        "Failed upstream exchanges, by kind.",
    );
    for kind in UpstreamError::ALL {
        let total: u64 = cores.iter().map(|c| c.upstream_errors[kind as usize]).sum();
        let _ = writeln!(
            out,
            "portcullis_upstream_errors_total{{kind=\"{}\"}} {total}",
            kind.label()
        );
    }
    header(
        &mut out,
        "portcullis_mirror_requests_total",
        "counter",
        "Request copies made by RequestMirror filters, by outcome.",
    );
    for (i, outcome) in ["completed", "failed", "skipped"].iter().enumerate() {
        let total: u64 = cores.iter().map(|c| c.mirrors[i]).sum();
        let _ = writeln!(
            out,
            "portcullis_mirror_requests_total{{outcome=\"{outcome}\"}} {total}"
        );
    }
    let simple = [
        (
            "portcullis_mirror_requests_in_flight",
            "gauge",
            "Request copies sent and not yet answered.",
            sum(|c| c.mirrors[3]),
        ),
        (
            "portcullis_active_connections",
            "gauge",
            "Open downstream connections.",
            sum(|c| c.active_connections),
        ),
        (
            "portcullis_connections_accepted_total",
            "counter",
            "Downstream connections accepted.",
            sum(|c| c.connections_accepted),
        ),
        (
            "portcullis_connections_rejected_total",
            "counter",
            "Downstream connections refused at the per-core limit.",
            sum(|c| c.connections_rejected),
        ),
        (
            "portcullis_udp_sessions",
            "gauge",
            "Open UDP sessions (client address and port on a UDP port).",
            sum(|c| c.udp_sessions),
        ),
        (
            "portcullis_udp_datagrams_refused_total",
            "counter",
            "Datagrams dropped because their new UDP session would exceed the per-core limit.",
            sum(|c| c.udp_datagrams_refused),
        ),
        (
            "portcullis_tls_handshake_errors_total",
            "counter",
            "TLS handshakes that failed.",
            sum(|c| c.tls_handshake_errors),
        ),
        (
            "portcullis_tls_client_certificates_unverified_total",
            "counter",
            "Client certificates that did not verify, let through by AllowInsecureFallback.",
            sum(|c| c.client_certificates_unverified),
        ),
        (
            "portcullis_invalid_requests_total",
            "counter",
            "Requests refused as malformed or over a limit.",
            sum(|c| c.invalid_requests),
        ),
        (
            "portcullis_connection_panics_total",
            "counter",
            "Connections (or HTTP/2 streams) closed because their handler panicked.",
            sum(|c| c.panics),
        ),
        (
            "portcullis_http2_connections_total",
            "counter",
            "Downstream connections served as HTTP/2.",
            sum(|c| c.http2_connections),
        ),
        (
            "portcullis_http2_streams_total",
            "counter",
            "HTTP/2 streams (requests) accepted from clients.",
            sum(|c| c.http2_streams),
        ),
        (
            "portcullis_retries_total",
            "counter",
            "Requests sent again after a response with one of their rule's retry codes.",
            sum(|c| c.retries),
        ),
        (
            "portcullis_cores",
            "gauge",
            "Worker cores.",
            cores.len() as u64,
        ),
        (
            "portcullis_config_swaps_total",
            "counter",
            "Configs applied.",
            control.swaps,
        ),
        (
            "portcullis_config_rejections_total",
            "counter",
            "Configs refused (NACK).",
            control.rejections,
        ),
        (
            "portcullis_ready",
            "gauge",
            "1 once a config is served on every core.",
            u64::from(control.ready),
        ),
    ];
    for (name, kind, help, value) in simple {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "portcullis_config_generation",
        "gauge",
        "Generation of the config being served (-1 before the first).",
    );
    match control.generation {
        Some(g) => writeln!(out, "portcullis_config_generation {g}"),
        None => writeln!(out, "portcullis_config_generation -1"),
    }
    .ok();
    header(
        &mut out,
        "portcullis_config_swap_duration_seconds",
        "histogram",
        "From receiving a config to every core serving it.",
    );
    let h = &control.swap_seconds;
    for (bound, count) in h.bounds.iter().zip(&h.counts) {
        let _ = writeln!(
            out,
            "portcullis_config_swap_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "portcullis_config_swap_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "portcullis_config_swap_duration_seconds_sum {}", h.sum);
    let _ = writeln!(
        out,
        "portcullis_config_swap_duration_seconds_count {}",
        h.count
    );
    header(
        &mut out,
        "portcullis_config_last_swap_duration_seconds",
        "gauge",
        "Duration of the last config swap.",
    );
    let _ = writeln!(
        out,
        "portcullis_config_last_swap_duration_seconds {}",
        control.last_swap_seconds
    );
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_generations_and_render() {
        let counters = CoreCounters::default();
        let key = (Arc::from("http"), Arc::from("ns/web"));
        let first = counters.slots(std::slice::from_ref(&key));
        first[0].record(200);
        first[0].record(503);
        let second = counters.slots(&[key]);
        second[0].record(204);
        counters.upstream_error(UpstreamError::Connect);
        let mut control = ControlStats {
            generation: Some(3),
            swaps: 2,
            ..Default::default()
        };
        control.swap_seconds.observe(0.004);
        let text = render(&control, &[counters.copy(0), counters.copy(1)]);
        assert!(text.contains(
            "portcullis_requests_total{listener=\"http\",route=\"ns/web\",status_class=\"2xx\"} 4"
        ));
        assert!(text.contains("status_class=\"5xx\"} 2"));
        assert!(text.contains("portcullis_upstream_errors_total{kind=\"connect\"} 2"));
        assert!(text.contains("portcullis_config_generation 3"));
        assert!(text.contains("portcullis_config_swap_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("portcullis_config_swap_duration_seconds_bucket{le=\"0.0025\"} 0"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
