//! `check-config --connect`: reaches every target a configuration names, once,
//! as `run` would at start-up, each within a timeout: every sink (connect,
//! authenticate, and what connecting sets up: the JetStream stream, the
//! RabbitMQ exchange, the Kafka topics) and, with the notifier on, Fishjam's
//! `GET /validate`. Connecting creates what start-up would create (a missing
//! stream, exchange or, with `create_topic`, topic), nothing else.

use std::time::Duration;

use crate::admin::Readiness;
use crate::config::Config;
use crate::sinks::{Publish, Sink, SinkHealth};
use crate::telemetry::Chain;

/// One target and what reaching it gave.
#[derive(Debug)]
pub struct Outcome {
    /// `sinks[0] nats`, `fishjam`.
    pub target: String,
    /// `Ok(what was reached)`, or why not.
    pub result: Result<String, String>,
}

/// Reaches each target of `config` in turn.
pub async fn run(config: &Config, timeout: Duration) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let target = format!("sinks[{index}] {}", sink_config.name());
        let health = SinkHealth::new(sink_config.name(), Readiness::default());
        let connect = Sink::connect(sink_config, health.clone());
        let result = match tokio::time::timeout(timeout, connect).await {
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
            Ok(Err(error)) => Err(Chain(&error).to_string()),
            Ok(Ok(sink)) => {
                // Connected; what else the sink found wrong (a missing Kafka
                // topic) is its readiness problem.
                let problem = health.problem();
                let _ = tokio::time::timeout(timeout, sink.close()).await;
                match problem {
                    Some(problem) => Err(problem),
                    None => Ok(sink_config.describe()),
                }
            }
        };
        outcomes.push(Outcome { target, result });
    }
    if config.notifier.enabled {
        outcomes.push(Outcome {
            target: "fishjam".to_owned(),
            result: fishjam(config, timeout).await,
        });
    }
    outcomes
}

/// Fishjam's answer to `GET /validate` with the management token.
async fn fishjam(config: &Config, timeout: Duration) -> Result<String, String> {
    let token = config
        .fishjam
        .management_token
        .as_ref()
        .ok_or("fishjam.management_token is not set")?;
    let roots = config
        .notifier
        .ca_file
        .as_deref()
        .map(crate::net::tls::ExtraRoots::load)
        .transpose()
        .map_err(|e| Chain(&e).to_string())?;
    let client = crate::sources::fishjam::rest_client(timeout, roots.as_ref())
        .map_err(|e| Chain(&e).to_string())?;
    let checked = tokio::time::timeout(
        timeout,
        crate::sources::fishjam::check_credentials(&client, &config.fishjam.id, token.expose()),
    )
    .await
    .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?;
    match checked {
        Ok(()) => Ok(format!(
            "{:?}: the credentials are valid",
            config.fishjam.id
        )),
        Err(error) => Err(Chain(&error).to_string()),
    }
}
