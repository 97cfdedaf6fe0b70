//! `fishjam-bridge simulate`: this crate's stand-in for Fishjam as a
//! process of its own, for trying a bridge (or any Fishjam client) without
//! a Fishjam: its options, and the play, with a JSON summary on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::webhook::WebhookTarget;
use super::SimulateOptions;
use crate::net::signal::cancel_on_signal;
use crate::telemetry::{self, LogFormat};

/// The options of `simulate`, as given on the command line.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Serve the notifier WebSocket here (e.g. 127.0.0.1:5002).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The management token clients must present.
    #[arg(
        long,
        env = "FISHJAM_MANAGEMENT_TOKEN",
        default_value = "development-token",
        hide_env_values = true
    )]
    management_token: String,
    /// Post webhooks to this URL.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Sign webhooks with this secret.
    #[arg(long, env = "FISHJAM_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Notifications per webhook body; above 1 they are sent as a NotificationBatch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Webhook connections in parallel (a room always uses the same one).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Times a refused webhook is sent again.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Notifications per second; 0 for as fast as possible.
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Rooms alive at once.
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many notifications; 0 plays none, so only REST calls
    /// cause notifications.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Hold notifications until this many notifier clients subscribed.
    #[arg(long, default_value_t = 0)]
    wait_for_subscribers: usize,
    /// After this many notifications, hold notifier connections open but send
    /// nothing more (a half-open connection, for testing clients).
    #[arg(long)]
    go_silent_after: Option<u64>,
    /// Close every notifier connection this long after it subscribed (e.g.
    /// 3s), for testing clients' reconnects.
    #[arg(long, value_parser = humantime::parse_duration)]
    drop_every: Option<Duration>,
    /// Serve https and wss with this certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Interval of the notifier's WebSocket pings.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    ping_interval: Duration,
}

impl SimulateArgs {
    fn options(self) -> SimulateOptions {
        SimulateOptions {
            seed: self.seed,
            rooms: self.rooms,
            rate: self.rate,
            count: self.count,
            duration: self.duration,
            webhook_secret: self.webhook_secret.clone(),
            webhook: self.webhook_url.map(|url| WebhookTarget {
                url,
                secret: self.webhook_secret,
                batch: self.batch.max(1),
                concurrency: self.concurrency,
                retries: self.retries,
            }),
            listen: self.listen,
            management_token: self.management_token,
            ping_interval: self.ping_interval,
            wait_for_subscribers: self.wait_for_subscribers,
            go_silent_after: self.go_silent_after,
            drop_every: self.drop_every,
            tls: self.tls_cert.zip(self.tls_key),
        }
    }
}

/// `simulate`: acts as Fishjam as `args` say, logging as text, until the
/// play ends or, with `--listen`, until SIGTERM or SIGINT.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    telemetry::init_logging(LogFormat::Text, "info");
    tokio::runtime::Runtime::new()
        .expect("the tokio runtime starts")
        .block_on(run(args.options()))
}

async fn run(options: SimulateOptions) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let server = match options.listen {
        Some(listen) => {
            let server = super::serve(listen, &options, shutdown.clone()).await?;
            tracing::info!(addr = %server.addr, "simulated Fishjam listening");
            Some(server)
        }
        None => None,
    };
    let report = super::play(&options, server.as_ref(), shutdown.clone()).await?;
    tracing::info!(
        notifications = report.notifications,
        webhook_bodies_ok = report.webhook_bodies_ok,
        webhook_bodies_failed = report.webhook_bodies_failed,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "simulation finished"
    );
    let mut summary = serde_json::json!({
        "notifications": report.notifications,
        "webhook_bodies_ok": report.webhook_bodies_ok,
        "webhook_bodies_failed": report.webhook_bodies_failed,
        "webhook_connections_refused": report.webhook_connections_refused,
        "webhook_notifications_failed": report.webhook_notifications_failed,
        "elapsed_ms": report.elapsed.as_millis() as u64,
    });
    if let Some([p50, p99, p999]) = report.webhook_latency_ms {
        summary["webhook_latency_ms"] =
            serde_json::json!({ "p50": p50, "p99": p99, "p99_9": p999 });
    }
    println!("{summary}");
    // A simulated Fishjam keeps serving its notifier (and REST API) after
    // the play, as Fishjam would, until it is stopped.
    if server.is_some() {
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    Ok(())
}
