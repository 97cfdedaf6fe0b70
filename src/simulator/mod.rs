//! A stand-in for Fishjam: it plays realistic room lifecycles (`scenario`)
//! and delivers them the way Fishjam does, over the notifier WebSocket
//! (`notifier`) and as signed webhooks, single or batched (`webhook`).
//!
//! Used by `fishjam-bridge simulate` (`simulate.rs`), by the demo, by the
//! tests and by the benchmarks. Every notification goes to both paths when
//! both are on, which is what a Fishjam app with a notifier and a webhook
//! URL sees.

pub mod notifier;
pub mod rest;
pub mod scenario;
pub mod simulate;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use self::notifier::NotifierHub;
use self::rest::RestApi;
use self::scenario::Scenario;
use self::webhook::{WebhookClient, WebhookTarget};

/// What to play and where to deliver it.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub seed: u64,
    /// Rooms (and livestreams) alive at once.
    pub rooms: usize,
    /// Notifications per second; 0 is as fast as the receivers take them.
    pub rate: u64,
    /// Stop after this many notifications.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub webhook: Option<WebhookTarget>,
    /// Signs the webhooks of rooms created over REST with their own URL.
    pub webhook_secret: Option<String>,
    /// Serve the notifier and the REST API here.
    pub listen: Option<SocketAddr>,
    pub management_token: String,
    pub ping_interval: Duration,
    /// Hold notifications until this many notifier clients subscribed.
    pub wait_for_subscribers: usize,
    /// After forwarding this many notifications, a notifier connection stays
    /// open but sends and reads nothing more (a half-open connection).
    pub go_silent_after: Option<u64>,
    /// Close every notifier connection this long after it subscribed.
    pub drop_every: Option<Duration>,
    /// Serve https and wss with this certificate chain and key (PEM files).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            seed: 1,
            rooms: 5,
            rate: 20,
            count: None,
            duration: None,
            webhook: None,
            webhook_secret: None,
            listen: None,
            management_token: "development-token".to_owned(),
            ping_interval: Duration::from_secs(30),
            wait_for_subscribers: 0,
            go_silent_after: None,
            drop_every: None,
            tls: None,
        }
    }
}

/// What a simulation delivered.
#[derive(Debug, Default, Clone)]
pub struct SimulationReport {
    pub notifications: u64,
    pub webhook_bodies_ok: u64,
    pub webhook_bodies_failed: u64,
    pub webhook_notifications_failed: u64,
    /// Webhook attempts whose connection was refused.
    pub webhook_connections_refused: u64,
    /// Webhook latency (send to 2xx) at p50, p99 and p99.9, in milliseconds.
    pub webhook_latency_ms: Option<[f64; 3]>,
    pub elapsed: Duration,
}

/// The management token the simulated Fishjam accepts; it can be replaced
/// while running (`PUT /simulator/management-token`), as a revocation.
#[derive(Clone)]
pub struct ManagementToken(Arc<std::sync::RwLock<String>>);

impl ManagementToken {
    pub fn new(token: String) -> ManagementToken {
        ManagementToken(Arc::new(std::sync::RwLock::new(token)))
    }

    pub fn matches(&self, presented: &str) -> bool {
        *self.0.read().expect("never poisoned") == presented
    }

    pub fn replace(&self, token: String) {
        *self.0.write().expect("never poisoned") = token;
    }
}

/// A bound listener (notifier and REST API), started before the play so
/// callers learn its address.
pub struct Server {
    pub addr: SocketAddr,
    pub rest: RestApi,
    hub: NotifierHub,
}

/// Binds the simulator's listener and serves it until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    options: &SimulateOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    let token = ManagementToken::new(options.management_token.clone());
    let hub = NotifierHub::new(
        token.clone(),
        options.ping_interval,
        options.go_silent_after,
        options.drop_every,
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let tls = options
        .tls
        .as_ref()
        .map(|(cert, key)| {
            crate::net::tls::ServerTlsConfig {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: None,
            }
            .acceptor()
            .map_err(anyhow::Error::msg)
        })
        .transpose()?;
    let secret = options
        .webhook_secret
        .clone()
        .or_else(|| options.webhook.as_ref().and_then(|w| w.secret.clone()));
    let rest = RestApi::new(token, hub.clone(), options.webhook.clone(), secret);
    let router = hub.router().merge(rest.router());
    // The JS SDK joins a base URL that ends in '/' with "/socket/...";
    // Fishjam accepts the doubled slash, so the simulator does too.
    let app = tower::Layer::layer(&tower::util::MapRequestLayer::new(collapse_slashes), router);
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
    // The simulator stands in for Fishjam in tests and benchmarks: no cap
    // worth reaching, and idle clients are the tests' business.
    let limits = crate::net::listener::Limits {
        max_connections: 1 << 20,
        idle_timeout: Duration::from_secs(24 * 3600),
        handshake_timeout: Duration::from_secs(10),
    };
    let listener = crate::net::listener::Listener::new(listener, tls, limits, "simulator")?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(error = %error, "simulator listener failed");
        }
    });
    Ok(Server { addr, rest, hub })
}

fn collapse_slashes(mut request: axum::extract::Request) -> axum::extract::Request {
    let uri = request.uri();
    if !uri.path().contains("//") {
        return request;
    }
    let mut path = String::with_capacity(uri.path().len());
    for c in uri.path().chars() {
        if !(c == '/' && path.ends_with('/')) {
            path.push(c);
        }
    }
    if let Some(query) = uri.query() {
        path = format!("{path}?{query}");
    }
    let mut parts = uri.clone().into_parts();
    if let Ok(path_and_query) = path.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Plays the scenario until the count, the duration or `shutdown`.
pub async fn play(
    options: &SimulateOptions,
    server: Option<&Server>,
    shutdown: CancellationToken,
) -> anyhow::Result<SimulationReport> {
    if let (Some(server), true) = (server, options.wait_for_subscribers > 0) {
        tokio::select! {
            _ = server.hub.wait_for_subscribers(options.wait_for_subscribers) => {}
            _ = shutdown.cancelled() => return Ok(SimulationReport::default()),
        }
    }
    let client = options
        .webhook
        .clone()
        .map(WebhookClient::start)
        .transpose()?;
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut scenario = Scenario::new(options.seed, options.rooms);
    let mut sent = 0u64;
    // Paced in 10 ms slices: a timer per notification would cost more than
    // the notification at high rates.
    let slice = Duration::from_millis(10);
    let mut ticker = tokio::time::interval(slice);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'play: loop {
        let allowance = if options.rate == 0 {
            1024
        } else {
            ticker.tick().await;
            let due = (started.elapsed().as_secs_f64() * options.rate as f64) as u64;
            due.saturating_sub(sent)
        };
        for _ in 0..allowance {
            if options.count.is_some_and(|count| sent >= count)
                || deadline.is_some_and(|deadline| Instant::now() >= deadline)
                || shutdown.is_cancelled()
            {
                break 'play;
            }
            let message = scenario.next().expect("the scenario never ends");
            if let Some(server) = server {
                server.rest.observe(&message);
                server.hub.publish(Bytes::from(message.encode_to_vec()));
            }
            if let Some(client) = &client {
                tokio::select! {
                    _ = client.send(message) => {}
                    _ = shutdown.cancelled() => break 'play,
                }
            }
            sent += 1;
        }
    }
    let mut report = SimulationReport {
        notifications: sent,
        ..SimulationReport::default()
    };
    if let Some(client) = client {
        let stats = client.finish().await;
        report.webhook_bodies_ok = stats.bodies_ok.load(Ordering::Relaxed);
        report.webhook_bodies_failed = stats.bodies_failed.load(Ordering::Relaxed);
        report.webhook_notifications_failed = stats.notifications_failed.load(Ordering::Relaxed);
        report.webhook_connections_refused = stats.refused.load(Ordering::Relaxed);
        report.webhook_latency_ms = [0.5, 0.99, 0.999]
            .map(|q| stats.latency_ms(q))
            .into_iter()
            .collect::<Option<Vec<f64>>>()
            .map(|v| [v[0], v[1], v[2]]);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
