//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (every component that must be up is up, and the
//! bridge is not shutting down). `/readyz` answers with each check's state,
//! and under `problems` what a failing check says is wrong.

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
    checks: Arc<Mutex<BTreeMap<String, Check>>>,
}

#[derive(Debug, Clone, Default)]
struct Check {
    ready: bool,
    /// Why it is not ready, when the component knows.
    problem: Option<String>,
}

impl Readiness {
    /// Registers a check, not ready yet.
    pub fn register(&self, name: &str) {
        self.set(name, false);
    }

    pub fn set(&self, name: &str, ready: bool) {
        self.set_with_problem(name, ready, None);
    }

    /// Sets a check with what is wrong, shown by `/readyz` while it fails.
    pub fn set_with_problem(&self, name: &str, ready: bool, problem: Option<String>) {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(name.to_owned(), Check { ready, problem });
    }

    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .values()
            .all(|check| check.ready)
    }

    /// The checks that do not pass, by name.
    pub fn waiting_for(&self) -> Vec<String> {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .iter()
            .filter(|(_, check)| !check.ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn report(&self) -> String {
        let checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let mut body: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, check)| (name.clone(), serde_json::Value::Bool(check.ready)))
            .collect();
        let problems: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .filter(|(_, check)| !check.ready)
            .filter_map(|(name, check)| Some((name.clone(), check.problem.clone()?.into())))
            .collect();
        if !problems.is_empty() {
            body.insert("problems".to_owned(), serde_json::Value::Object(problems));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_check_shows_its_problem_until_it_passes() {
        let readiness = Readiness::default();
        readiness.register("running");
        readiness.set("running", true);
        readiness.set_with_problem("sink:kafka", false, Some("topic t is missing".into()));
        assert!(!readiness.is_ready());
        let report: serde_json::Value = serde_json::from_str(&readiness.report()).unwrap();
        assert_eq!(report["sink:kafka"], false);
        assert_eq!(report["running"], true);
        assert_eq!(report["problems"]["sink:kafka"], "topic t is missing");
        readiness.set("sink:kafka", true);
        let report: serde_json::Value = serde_json::from_str(&readiness.report()).unwrap();
        assert_eq!(report.get("problems"), None);
        assert!(readiness.is_ready());
    }
}
