//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! serves) and `/readyz` (every component that must be up is up, and the
//! bridge is not shutting down; see `Readiness`) and `/status` (the same
//! report, always 200). The report holds each check's state, under
//! `problems` what a failing check says is wrong, and `ready`. With
//! `admin.tap`, `/tap` streams live events (`tap.rs`) as JSON lines.

pub mod systemd;
pub mod tap;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::broadcast::error::RecvError;

use self::tap::Tap;
use crate::core::settings::Secret;
use crate::telemetry;

/// Named readiness checks. `/readyz` answers whether the bridge can take a
/// webhook durably now: every required check passes, and either every sink
/// takes events or the spool has room (a broker outage with the spool on
/// keeps the bridge ready; that is what the spool is for). Informational
/// checks (the notifier, unless required) are shown and never pull it.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, CheckState>>>,
    /// Whether the spool can take a body now; set when there is a spool.
    spool_has_room: Arc<Mutex<Option<SpoolRoom>>>,
    /// Reports shown beside the checks, by key (each sink's lag).
    details: Arc<Mutex<BTreeMap<String, Detail>>>,
}

type SpoolRoom = Arc<dyn Fn() -> bool + Send + Sync>;
type Detail = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("checks", &self.checks)
            .finish()
    }
}

/// A readiness check, held by the part it speaks for: only its holder sets
/// it, and once the holder is gone (the handle dropped) it does not pass.
#[derive(Debug)]
pub struct Check {
    readiness: Readiness,
    name: Arc<str>,
}

impl Check {
    pub fn set(&self, ready: bool) {
        self.readiness.set_with_problem(&self.name, ready, None);
    }

    /// Sets the check with what is wrong, shown by `/readyz` while it fails.
    pub fn set_with_problem(&self, ready: bool, problem: Option<String>) {
        self.readiness.set_with_problem(&self.name, ready, problem);
    }

    /// What the check says is wrong, while it fails.
    pub fn problem(&self) -> Option<String> {
        self.readiness.problem(&self.name)
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        self.readiness.set_with_problem(&self.name, false, None);
    }
}

/// What a check counts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Must pass.
    #[default]
    Required,
    /// A sink: must pass, unless the spool has room.
    Sink,
    /// Shown, never required.
    Info,
}

#[derive(Debug, Clone, Default)]
struct CheckState {
    role: Role,
    ready: bool,
    /// Why it is not ready, when the component knows.
    problem: Option<String>,
}

impl Readiness {
    /// Registers a required check, not passing yet.
    pub fn register(&self, name: &str) -> Check {
        self.register_as(name, Role::Required)
    }

    /// Registers a check of `role`, not passing yet; the part it speaks for
    /// holds the handle.
    pub fn register_as(&self, name: &str, role: Role) -> Check {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(
                name.to_owned(),
                CheckState {
                    role,
                    ..CheckState::default()
                },
            );
        Check {
            readiness: self.clone(),
            name: Arc::from(name),
        }
    }

    /// Says whether the spool has room; with it, a sink that is down does
    /// not make the bridge unready.
    pub fn set_spool(&self, has_room: impl Fn() -> bool + Send + Sync + 'static) {
        *self
            .spool_has_room
            .lock()
            .expect("readiness lock is never poisoned") = Some(Arc::new(has_room));
    }

    /// Shows what `detail` says under `key` in every report; it never
    /// changes readiness.
    pub fn set_detail(
        &self,
        key: &str,
        detail: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) {
        self.details
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(key.to_owned(), Arc::new(detail));
    }

    /// Sets a check with what is wrong, shown by `/readyz` while it fails.
    fn set_with_problem(&self, name: &str, ready: bool, problem: Option<String>) {
        let mut checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let check = checks.entry(name.to_owned()).or_default();
        check.ready = ready;
        check.problem = problem;
    }

    fn spool_room(&self) -> Option<bool> {
        let has_room = self
            .spool_has_room
            .lock()
            .expect("readiness lock is never poisoned")
            .clone()?;
        Some(has_room())
    }

    pub fn is_ready(&self) -> bool {
        let spool_room = self.spool_room();
        all_pass(
            &self
                .checks
                .lock()
                .expect("readiness lock is never poisoned"),
            spool_room,
        )
    }

    /// What the check `name` says is wrong, while it fails.
    fn problem(&self, name: &str) -> Option<String> {
        let checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let check = checks.get(name)?;
        if check.ready {
            return None;
        }
        check.problem.clone()
    }

    /// The required checks and sinks that do not pass, by name.
    pub fn waiting_for(&self) -> Vec<String> {
        self.checks
            .lock()
            .expect("readiness lock is never poisoned")
            .iter()
            .filter(|(_, check)| !check.ready && check.role != Role::Info)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether ready, and every check with its state (and the spool's room,
    /// and the problems of failing checks) as JSON.
    fn report(&self) -> (bool, String) {
        let spool_room = self.spool_room();
        let details: Vec<(String, Detail)> = self
            .details
            .lock()
            .expect("readiness lock is never poisoned")
            .iter()
            .map(|(key, detail)| (key.clone(), detail.clone()))
            .collect();
        let details: Vec<(String, serde_json::Value)> = details
            .into_iter()
            .map(|(key, detail)| (key, detail()))
            .collect();
        let checks = self
            .checks
            .lock()
            .expect("readiness lock is never poisoned");
        let ready = all_pass(&checks, spool_room);
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
        if let Some(room) = spool_room {
            body.insert("spool_has_room".to_owned(), room.into());
        }
        body.extend(details);
        body.insert("ready".to_owned(), ready.into());
        (ready, serde_json::Value::Object(body).to_string())
    }
}

/// Every required check passes, and every sink does or the spool has room.
fn all_pass(checks: &BTreeMap<String, CheckState>, spool_room: Option<bool>) -> bool {
    let spool_room = spool_room.unwrap_or(false);
    checks.values().all(|check| match check.role {
        Role::Required => check.ready,
        Role::Sink => check.ready || spool_room,
        Role::Info => true,
    })
}

/// What brings the gauges that are read off the pipeline's state (events
/// in flight, each sink's lag) up to date, run before every scrape: a
/// scrape shows the state at that moment, never the last value some task
/// happened to write.
#[derive(Clone, Default)]
pub struct Refresh(Arc<Mutex<Vec<Update>>>);

type Update = Box<dyn Fn() + Send + Sync>;

impl Refresh {
    /// Runs `update` before every scrape from now on.
    pub fn add(&self, update: impl Fn() + Send + Sync + 'static) {
        self.0
            .lock()
            .expect("never poisoned")
            .push(Box::new(update));
    }

    fn run(&self) {
        for update in self.0.lock().expect("never poisoned").iter() {
            update();
        }
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: Readiness,
    tap: Option<Tap>,
    refresh: Refresh,
}

/// The bearer token `/metrics`, `/status` and `/tap` require, when set.
#[derive(Clone)]
struct Token(Arc<[u8]>);

impl Token {
    /// Whether `headers` carry `Authorization: Bearer <token>`, compared in
    /// constant time.
    fn admits(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else {
            return false;
        };
        // The scheme's name is case-insensitive (RFC 9110).
        let Some(given) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| &value[7..])
        else {
            return false;
        };
        given.len() == self.0.len()
            && given
                .iter()
                .zip(self.0.iter())
                .fold(0, |d, (a, b)| d | (a ^ b))
                == 0
    }
}

/// Answers 401 to a request without the token.
async fn require_token(
    State(token): State<Token>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if token.admits(request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this needs admin.token as a bearer token\n",
    )
        .into_response()
}

/// The admin routes; `/tap` only with `tap`. With `token`, `/metrics`,
/// `/status` and `/tap` need it; the probes never do.
pub fn router(
    metrics: PrometheusHandle,
    readiness: Readiness,
    tap: Option<Tap>,
    refresh: Refresh,
    token: Option<&Secret>,
) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/status", get(status));
    let guarded = if tap.is_some() {
        guarded.route("/tap", get(tap_events))
    } else {
        guarded
    };
    let guarded = match token {
        Some(token) => guarded.route_layer(axum::middleware::from_fn_with_state(
            Token(Arc::from(token.expose().as_bytes())),
            require_token,
        )),
        None => guarded,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(guarded)
        .with_state(AdminState {
            metrics,
            readiness,
            tap,
            refresh,
        })
}

/// A quiet tap still sends an empty line this often, so that the
/// listener's idle timeout never closes it.
const TAP_HEARTBEAT: Duration = Duration::from_secs(15);

/// Counts a tap client while its stream lives.
struct TapClient;

impl TapClient {
    fn new() -> TapClient {
        telemetry::tap_clients(1.0);
        TapClient
    }
}

impl Drop for TapClient {
    fn drop(&mut self) {
        telemetry::tap_clients(-1.0);
    }
}

/// `/tap?room=&type=&source=`: the events that pass the filter, one JSON
/// object per line, and `{"tap":{"dropped":N}}` when this client fell
/// behind and lost N events.
async fn tap_events(
    State(state): State<AdminState>,
    Query(filter): Query<tap::Filter>,
) -> axum::response::Response {
    let Some(tap) = state.tap else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let filter = match filter.check() {
        Ok(filter) => filter,
        Err(problem) => return (StatusCode::BAD_REQUEST, format!("{problem}\n")).into_response(),
    };
    let client = (tap.subscribe(), filter, TapClient::new());
    let lines = futures_util::stream::unfold(client, |(mut events, filter, client)| async move {
        loop {
            let line = match tokio::time::timeout(TAP_HEARTBEAT, events.recv()).await {
                Err(_) => Bytes::from_static(b"\n"),
                Ok(Ok(event)) if filter.passes(&event) => {
                    let mut line = Vec::with_capacity(event.json.len() + 1);
                    line.extend_from_slice(&event.json);
                    line.push(b'\n');
                    Bytes::from(line)
                }
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(lost))) => {
                    telemetry::tap_dropped(lost);
                    Bytes::from(format!("{{\"tap\":{{\"dropped\":{lost}}}}}\n"))
                }
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((
                Ok::<_, std::convert::Infallible>(line),
                (events, filter, client),
            ));
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    state.refresh.run();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    let (ready, report) = state.readiness.report();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], report)
}

/// The same report as `/readyz`, always 200: for people and alerts, which
/// want to read which sink is down even while the spool keeps the bridge
/// ready.
async fn status(State(state): State<AdminState>) -> impl IntoResponse {
    let (_, report) = state.readiness.report();
    ([(header::CONTENT_TYPE, "application/json")], report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_check_shows_its_problem_until_it_passes() {
        let readiness = Readiness::default();
        let running = readiness.register("running");
        running.set(true);
        let kafka = readiness.register_as("sink:kafka", Role::Sink);
        kafka.set_with_problem(false, Some("topic t is missing".into()));
        assert!(!readiness.is_ready());
        let report: serde_json::Value = serde_json::from_str(&readiness.report().1).unwrap();
        assert_eq!(report["sink:kafka"], false);
        assert_eq!(report["running"], true);
        assert_eq!(report["problems"]["sink:kafka"], "topic t is missing");
        kafka.set(true);
        let report: serde_json::Value = serde_json::from_str(&readiness.report().1).unwrap();
        assert_eq!(report.get("problems"), None);
        assert!(readiness.is_ready());
        // A detail is shown and changes nothing.
        readiness.set_detail("lag", || serde_json::json!({"kafka": {"events": 3}}));
        let (ready, report) = readiness.report();
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert!(ready);
        assert_eq!(report["lag"]["kafka"]["events"], 3);
    }

    #[test]
    fn a_sink_that_is_down_keeps_the_bridge_ready_while_the_spool_has_room() {
        let readiness = Readiness::default();
        let running = readiness.register("running");
        running.set(true);
        let nats = readiness.register_as("sink:nats", Role::Sink);
        let _notifier = readiness.register_as("notifier", Role::Info);
        assert!(
            !readiness.is_ready(),
            "no spool: a sink that is down counts"
        );
        let room = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let has_room = room.clone();
        readiness.set_spool(move || has_room.load(std::sync::atomic::Ordering::Relaxed));
        let (ready, report) = readiness.report();
        assert!(ready, "{report}");
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["sink:nats"], false);
        assert_eq!(report["notifier"], false);
        assert_eq!(report["spool_has_room"], true);
        room.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(!readiness.is_ready(), "a full spool takes nothing more");
        nats.set(true);
        assert!(readiness.is_ready(), "the sinks take events");
        running.set(false);
        assert!(!readiness.is_ready(), "shutting down");
        assert_eq!(readiness.waiting_for(), ["running"]);
    }

    #[tokio::test]
    async fn with_a_token_only_the_probes_answer_without_it() {
        use tower::ServiceExt;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let token = Secret::new("s3cret");
        let router = router(
            recorder.handle(),
            Readiness::default(),
            Some(Tap::default()),
            Refresh::default(),
            Some(&token),
        );
        let status = |path: &str, bearer: Option<&str>| {
            let mut request = axum::http::Request::get(path);
            if let Some(bearer) = bearer {
                request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
            }
            let request = request.body(axum::body::Body::empty()).unwrap();
            let router = router.clone();
            async move { router.oneshot(request).await.unwrap().status().as_u16() }
        };
        for path in ["/metrics", "/status", "/tap"] {
            assert_eq!(status(path, None).await, 401, "{path}");
            assert_eq!(status(path, Some("wrong")).await, 401, "{path}");
        }
        assert_eq!(status("/metrics", Some("s3cret")).await, 200);
        assert_eq!(status("/status", Some("s3cret")).await, 200);
        assert_eq!(status("/healthz", None).await, 200);
        // Not ready (nothing registered as running), but answered.
        assert_ne!(status("/readyz", None).await, 401);
    }

    #[test]
    fn a_check_whose_holder_is_gone_does_not_pass() {
        let readiness = Readiness::default();
        let running = readiness.register("running");
        running.set(true);
        assert!(readiness.is_ready());
        drop(running);
        assert!(!readiness.is_ready());
        assert_eq!(readiness.waiting_for(), ["running"]);
    }
}
