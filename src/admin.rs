//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (every component that must be up is up, and the
//! bridge is not shutting down).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// Named readiness checks; ready when all of them are.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Registers a check, not ready yet.
    pub fn register(&self, name: &str) {
        self.set(name, false);
    }

    pub fn set(&self, name: &str, ready: bool) {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(name.to_owned(), ready);
    }

    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .values()
            .all(|ready| *ready)
    }

    /// The checks that do not pass, by name.
    pub fn waiting_for(&self) -> Vec<String> {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn report(&self) -> String {
        let checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let body: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, ready)| (name.clone(), serde_json::Value::Bool(*ready)))
            .collect();
        serde_json::Value::Object(body).to_string()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

pub fn router(metrics: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState { metrics, readiness })
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        state.readiness.report(),
    )
}
