//! The HTTP plane on its own port: `/metrics` (Prometheus text), `/healthz` (the process is alive and serving),
//! `/readyz` (200 only when the node can decide: bundles loaded, gRPC serving, and — in a cluster — membership
//! joined; 503 with the reason otherwise).
//!
//! - [`metrics`]: the Prometheus recorder, every metric's description, the process series;
//! - [`readiness`]: the conditions `/readyz` reports.

pub mod metrics;
pub mod readiness;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use readiness::Readiness;

#[derive(Clone)]
struct Plane {
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
    sessions: aisle_session::Sessions,
}

/// The HTTP routes.
pub fn router(
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
    sessions: aisle_session::Sessions,
) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Plane {
            metrics,
            readiness,
            sessions,
        })
}

async fn render_metrics(State(p): State<Plane>) -> String {
    ::metrics::gauge!("aisle_active_sessions").set(p.sessions.active_sessions() as f64);
    p.metrics.run_upkeep();
    metrics::render(&p.metrics)
}

async fn healthz(State(p): State<Plane>) -> (StatusCode, &'static str) {
    if p.readiness.alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    }
}

async fn readyz(State(p): State<Plane>) -> (StatusCode, String) {
    match p.readiness.not_ready_reason() {
        None => match p.readiness.degraded_reason() {
            None => (StatusCode::OK, "ready\n".into()),
            // Still serving: a degraded node takes traffic, and says what is wrong.
            Some(what) => (StatusCode::OK, format!("ready; degraded: {what}\n")),
        },
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
