//! The operator's own observability: JSON logs, Prometheus metrics, health and readiness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Logs as JSON lines on stderr; the level comes from `RUST_LOG` (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .try_init();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

/// The `result` of an agent's Report: `ack` (the proxy applied the config) or `nack`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabel {
    pub result: &'static str,
}

impl ReportLabel {
    pub const ACK: Self = Self { result: "ack" };
    pub const NACK: Self = Self { result: "nack" };
}

/// The config server's metrics: handles that a [`Metrics`] registry exposes and the server
/// updates (cheap to clone; clones share the values).
#[derive(Clone, Debug)]
pub struct StreamMetrics {
    /// Agent config streams open on this replica (authenticated and authorized).
    pub connected_agents: Gauge,
    /// Update messages sent to agents.
    pub config_pushes: Counter,
    /// Agents' Reports, by result.
    pub config_reports: Family<ReportLabel, Counter>,
}

impl Default for StreamMetrics {
    fn default() -> Self {
        let config_reports = Family::<ReportLabel, Counter>::default();
        // Both series exist from the start, so rates work before the first NACK.
        drop(config_reports.get_or_create(&ReportLabel::ACK));
        drop(config_reports.get_or_create(&ReportLabel::NACK));
        Self {
            connected_agents: Gauge::default(),
            config_pushes: Counter::default(),
            config_reports,
        }
    }
}

impl StreamMetrics {
    /// Counts an open agent stream until the returned guard is dropped.
    pub fn agent_connected(&self) -> ConnectedAgent {
        self.connected_agents.inc();
        ConnectedAgent(self.connected_agents.clone())
    }

    /// Counts an agent's Report.
    pub fn reported(&self, ok: bool) {
        let label = if ok {
            &ReportLabel::ACK
        } else {
            &ReportLabel::NACK
        };
        self.config_reports.get_or_create(label).inc();
    }
}

/// One open agent stream in `connected_agents`; dropping it (however the stream ends) takes
/// it out.
#[derive(Debug)]
#[must_use = "the agent counts as connected only while the guard lives"]
pub struct ConnectedAgent(Gauge);

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Metrics of the controller and the config server.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ControllerLabel, Counter>,
    pub reconcile_seconds: Family<ControllerLabel, Histogram>,
    pub compile_seconds: Histogram,
    pub config_publishes: Counter,
    /// The config server's metrics (`connected_agents`, `config_pushes`, `config_reports`):
    /// hand a clone to the `ConfigService`.
    pub streams: StreamMetrics,
    pub leader: Gauge,
    pub gateways: Gauge,
    pub http_routes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_streams(StreamMetrics::default())
    }

    /// Metrics exposing `streams` as the config server's.
    pub fn with_streams(streams: StreamMetrics) -> Self {
        let mut registry = Registry::with_prefix("portcullis_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let reconcile_errors = Family::<ControllerLabel, Counter>::default();
        let reconcile_seconds = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let compile_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let config_publishes = Counter::default();
        let leader = Gauge::default();
        let gateways = Gauge::default();
        let http_routes = Gauge::default();
        registry.register(
            "reconciles",
            "Reconcile passes, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed, by controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_seconds.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Duration of one compilation of the whole cluster",
            compile_seconds.clone(),
        );
        registry.register(
            "config_publishes",
            "Configs published to proxies (changed content only)",
            config_publishes.clone(),
        );
        registry.register(
            "connected_agents",
            "Proxy pods connected to this replica's config server",
            streams.connected_agents.clone(),
        );
        registry.register(
            "config_pushes",
            "Config updates sent to agents (one per Update message on a stream)",
            streams.config_pushes.clone(),
        );
        registry.register(
            "config_reports",
            "Agents' reports of the configs sent to them, by result (ack: the proxy applied it, nack: it rejected it)",
            streams.config_reports.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica holds the lease",
            leader.clone(),
        );
        registry.register("gateways", "Gateways of our classes", gateways.clone());
        registry.register(
            "http_routes",
            "HTTPRoutes with a parent of ours",
            http_routes.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            compile_seconds,
            config_publishes,
            streams,
            leader,
            gateways,
            http_routes,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves /metrics, /healthz (the process runs) and /readyz (watches synced).
pub async fn serve(
    address: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready\n").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render() {
        let metrics = Metrics::new();
        metrics
            .reconciles
            .get_or_create(&ControllerLabel {
                controller: "gateway",
            })
            .inc();
        metrics.compile_seconds.observe(0.002);
        let text = metrics.render();
        assert!(
            text.contains("portcullis_operator_reconciles_total{controller=\"gateway\"} 1"),
            "{text}"
        );
        assert!(text.contains("portcullis_operator_compile_duration_seconds_count 1"));
    }

    #[test]
    fn stream_metrics_render() {
        let streams = StreamMetrics::default();
        let metrics = Metrics::with_streams(streams.clone());
        let text = metrics.render();
        for line in [
            "portcullis_operator_connected_agents 0",
            "portcullis_operator_config_pushes_total 0",
            "portcullis_operator_config_reports_total{result=\"ack\"} 0",
            "portcullis_operator_config_reports_total{result=\"nack\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let first = streams.agent_connected();
        let second = streams.agent_connected();
        streams.config_pushes.inc();
        streams.reported(true);
        streams.reported(true);
        streams.reported(false);
        drop(first);
        let text = metrics.render();
        for line in [
            "portcullis_operator_connected_agents 1",
            "portcullis_operator_config_pushes_total 1",
            "portcullis_operator_config_reports_total{result=\"ack\"} 2",
            "portcullis_operator_config_reports_total{result=\"nack\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        drop(second);
        assert_eq!(metrics.streams.connected_agents.get(), 0);
    }
}
