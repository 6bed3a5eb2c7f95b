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

/// Metrics of the controller and the config server.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabel, Counter>,
    pub reconcile_errors: Family<ControllerLabel, Counter>,
    pub reconcile_seconds: Family<ControllerLabel, Histogram>,
    pub compile_seconds: Histogram,
    pub config_publishes: Counter,
    pub connected_agents: Gauge,
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
        let mut registry = Registry::with_prefix("portcullis_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let reconcile_errors = Family::<ControllerLabel, Counter>::default();
        let reconcile_seconds = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let compile_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let config_publishes = Counter::default();
        let connected_agents = Gauge::default();
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
            connected_agents.clone(),
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
            connected_agents,
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
}
