//! The commands that run a bridge until a signal stops it: `run` (the
//! configured bridge, telling systemd when it is ready, and the addresses
//! it bound to whoever asked for them) and `demo` (a bridge printing on
//! stdout what the simulator posts into it, for a first look).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::systemd;
use crate::config::{Config, ConfigError};
use crate::net::signal::cancel_on_signal;
use crate::simulator::{self, webhook::WebhookTarget, SimulateOptions};
use crate::telemetry::{self, LogFormat};

/// Why `run` ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The bridge could not start, stopped on a fatal error, or left
    /// events undelivered when it stopped.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// `run`: loads the configuration at `config` (or the defaults, with the
/// environment), logs as it says, and runs the bridge until SIGTERM or
/// SIGINT and the drain; with `addresses_file`, writes the bound addresses
/// there.
pub fn run(config: Option<&Path>, addresses_file: Option<&Path>) -> Result<(), RunError> {
    let config = Config::from_process(config)?;
    telemetry::init_logging(config.log.format, &config.log.level);
    runtime()
        .block_on(serve(config, addresses_file))
        .map_err(RunError::Failed)
}

async fn serve(config: Config, addresses_file: Option<&Path>) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let bridge = super::start(config, metrics, shutdown.clone()).await?;
    if let Some(path) = addresses_file {
        write_addresses(path, bridge.webhook_addr, bridge.admin_addr)
            .with_context(|| format!("cannot write --addresses-file {}", path.display()))?;
    }
    if let Some(notifier) = systemd::Notifier::from_env() {
        tokio::spawn(systemd::run(notifier, bridge.readiness.clone(), shutdown));
    }
    let drained = bridge.wait().await?;
    if drained.undelivered > 0 {
        anyhow::bail!(
            "{} events were not delivered before the drain timeout",
            drained.undelivered
        );
    }
    Ok(())
}

/// Writes the bound addresses beside `path` and renames the file into place,
/// so that a reader that finds the file finds it whole.
fn write_addresses(
    path: &Path,
    webhook: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) -> std::io::Result<()> {
    let text = serde_json::json!({
        "webhook": webhook.map(|a| a.to_string()),
        "admin": admin.map(|a| a.to_string()),
    })
    .to_string();
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, text + "\n")?;
    std::fs::rename(&partial, path)
}

/// What `demo` plays.
#[derive(Debug, Clone, Copy)]
pub struct Demo {
    /// Stop after this long; `None` runs until SIGTERM or SIGINT.
    pub duration: Option<Duration>,
    /// Notifications per second.
    pub rate: u64,
    /// Rooms alive at once.
    pub rooms: usize,
    pub seed: u64,
}

/// `demo`: the simulator posting signed webhooks into a bridge that prints
/// its events on stdout, logging as text.
pub fn demo(demo: Demo) -> anyhow::Result<()> {
    telemetry::init_logging(LogFormat::Text, "info");
    runtime().block_on(play_demo(demo))
}

async fn play_demo(demo: Demo) -> anyhow::Result<()> {
    let secret = "demo-webhook-secret";
    // Signed as Fishjam signs; the demo's events are made up: nothing to keep
    // on disk.
    let config = Config::load(
        &format!(
            "[fishjam]\nid = \"simulator\"\n[webhook]\nlisten = \"127.0.0.1:0\"\nsecret = \"{secret}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[spool]\nenabled = false\n"
        ),
        &|_| None,
        &[],
        &|path| std::fs::read_to_string(path),
    )?;
    let metrics = telemetry::install_metrics()?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let path = config.webhook.path.clone();
    let bridge = super::start(config, metrics, shutdown.clone()).await?;
    let webhook = bridge.webhook_addr.context("the demo enables webhooks")?;
    tracing::info!(
        admin = ?bridge.admin_addr,
        "demo: the simulator posts signed webhooks into the bridge; events follow on stdout"
    );
    let options = SimulateOptions {
        seed: demo.seed,
        rooms: demo.rooms,
        rate: demo.rate,
        duration: demo.duration,
        webhook: Some(WebhookTarget {
            url: format!("http://{webhook}{path}"),
            secret: Some(secret.to_owned()),
            batch: 1,
            concurrency: 2,
            retries: 3,
        }),
        ..SimulateOptions::default()
    };
    let report = simulator::play(&options, None, shutdown.clone()).await?;
    tracing::info!(notifications = report.notifications, "demo finished");
    shutdown.cancel();
    bridge.wait().await?;
    Ok(())
}

/// The runtime the bridge runs on: several threads, IO and timers.
pub(super) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("the tokio runtime starts")
}
