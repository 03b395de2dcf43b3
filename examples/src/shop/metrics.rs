//! `GET /metrics`: what the bus records (with cqrs-core's `metrics` feature) in the Prometheus
//! text format: `cqrs_dispatch_total` and the `cqrs_dispatch_duration_seconds` histogram per
//! message and status, `cqrs_cache_total` per query and hit/miss, `cqrs_attempts_total`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: from a cached read to a slow transaction.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process's Prometheus recorder, installed the first time it is asked for (a process has
/// one global recorder; every shop in it, e.g. in tests, shares it).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("cqrs_dispatch_duration_seconds".to_owned()),
                    BUCKETS,
                )
                .expect("the buckets are not empty")
                .install_recorder()
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "another metrics recorder is installed: /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                })
        })
        .clone()
}

/// Keeps the recorder's histograms drained between scrapes (until the runtime stops).
pub fn spawn_upkeep() {
    let handle = prometheus();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
}

/// The route handler.
pub async fn render() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}
