//! `spool drain`: delivers what a stopped replica's spool holds and exits
//! once every sink has acknowledged every body in it, for the operator who
//! scales a replica down or rolls one back. It is the configured bridge
//! without its sources (no webhook listener, no notifier, no admin
//! listener), so it runs beside the fleet on the replica's volume; the
//! spool's lock keeps it off a spool that a running bridge still uses.
//! What the notifier read is replayed as the replica's own restart would
//! replay it: not when the configuration elects the notifier's holder
//! (`spool::Options::replay_notifier`), so the drain's configuration must
//! carry the fleet's `[election]`; bodies passed over are counted in what
//! it prints. SIGTERM or SIGINT stops it early, and what is left stays in
//! the spool.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::run::RunError;
use crate::config::{Config, ConfigError};
use crate::net::signal::cancel_on_signal;
use crate::pipeline::spool::Lag;
use crate::telemetry;

/// How often the spool is looked at for what is left.
const CHECK: Duration = Duration::from_millis(200);

/// Loads the configuration at `config`, takes the spool in `dir` (else the
/// configured one), delivers it, and prints what was delivered as JSON.
pub fn drain(config: Option<&Path>, dir: Option<&Path>) -> Result<(), RunError> {
    let mut config = Config::from_process(config)?;
    if let Some(dir) = dir {
        // A mistyped path must not become a new, empty spool.
        if !dir.is_dir() {
            return Err(RunError::Config(ConfigError {
                problems: vec![format!("--dir {}: no such directory", dir.display())],
            }));
        }
        config.spool.enabled = true;
        config.spool.path = Some(dir.to_owned());
    }
    if !config.spool.enabled {
        return Err(RunError::Config(ConfigError {
            problems: vec![
                "spool.enabled = false: name the spool's directory with --dir".to_owned(),
            ],
        }));
    }
    config.webhook.enabled = false;
    config.notifier.enabled = false;
    config.admin.enabled = false;
    telemetry::init_logging(config.log.format, &config.log.level);
    super::run::runtime()
        .block_on(deliver(config))
        .map_err(RunError::Failed)
}

async fn deliver(config: Config) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let bridge = super::start(config, metrics, shutdown.clone()).await?;
    let (spool, at_open) = bridge
        .spool
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the spool is off"))?;
    let before = behind(&at_open);
    tracing::info!(bodies = before.0, events = before.1, "draining the spool");
    let mut check = tokio::time::interval(CHECK);
    loop {
        tokio::select! {
            _ = check.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if behind(&spool.lag()).0 == 0 {
            shutdown.cancel();
            break;
        }
    }
    let drained = bridge.wait().await?;
    let left = behind(&spool.lag());
    println!(
        "{}",
        json!({
            "bodies": before.0,
            "events": before.1,
            "bodies_left": left.0,
            "events_left": left.1,
            "bodies_passed_over": spool.passed_over(),
        })
    );
    if left.0 > 0 || drained.undelivered > 0 {
        anyhow::bail!(
            "stopped with {} bodies ({} events) not delivered to every sink; they stay in the spool",
            left.0,
            left.1
        );
    }
    Ok(())
}

/// The bodies and events the sink furthest behind still lacks.
fn behind(lag: &[Lag]) -> (u64, u64) {
    lag.iter()
        .map(|sink| (sink.bodies, sink.events))
        .max()
        .unwrap_or((0, 0))
}
