//! `check-config --connect`: reaches every target a configuration names, once,
//! as `run` would at start-up, each within a timeout: every sink (connect,
//! authenticate, and what connecting sets up: the JetStream stream, the
//! RabbitMQ exchange, the Kafka topics) and, with the notifier on, Fishjam's
//! `GET /validate`. Connecting creates what start-up would create (a missing
//! stream, exchange or, with `create_topic`, topic), nothing else.

use std::time::Duration;

use crate::admin::Readiness;
use crate::config::Config;
use crate::net::tls::{ExtraRoots, TlsError};
use crate::sinks::{Publish, Sink, SinkError, SinkHealth};
use crate::sources::fishjam::{self, CredentialError, FishjamError};

/// One target and what reaching it gave.
#[derive(Debug)]
pub struct Outcome {
    /// `sinks[0] nats`, `fishjam`.
    pub target: String,
    /// `Ok(what was reached)`, or why not.
    pub result: Result<String, Unreachable>,
}

/// Why a target could not be reached; its causes follow as sources, so
/// print it with `telemetry::Chain`. What it holds stays private so that
/// this public type names none of the sinks' or the sources' types.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Unreachable(Why);

#[derive(Debug, thiserror::Error)]
enum Why {
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error(transparent)]
    Connect(SinkError),
    /// Connected, but the sink found something else wrong (a missing Kafka
    /// topic): the problem its readiness reports.
    #[error("{0}")]
    Unready(String),
    #[error("fishjam.management_token is not set")]
    NoToken,
    #[error(transparent)]
    CaFile(TlsError),
    #[error(transparent)]
    Client(FishjamError),
    #[error(transparent)]
    Credentials(CredentialError),
}

impl From<Why> for Unreachable {
    fn from(why: Why) -> Unreachable {
        Unreachable(why)
    }
}

/// Reaches each target of `config` in turn.
pub async fn run(config: &Config, timeout: Duration) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for (index, sink_config) in config.sinks.iter().enumerate() {
        let target = format!("sinks[{index}] {}", sink_config.name());
        let health = SinkHealth::new(sink_config.name(), Readiness::default());
        let connect = Sink::connect(sink_config, health.clone());
        let result = match tokio::time::timeout(timeout, connect).await {
            Err(_) => Err(Why::Timeout(timeout).into()),
            Ok(Err(error)) => Err(Why::Connect(error).into()),
            Ok(Ok(sink)) => {
                // Connected; what else the sink found wrong (a missing Kafka
                // topic) is its readiness problem.
                let problem = health.problem();
                let _ = tokio::time::timeout(timeout, sink.close()).await;
                match problem {
                    Some(problem) => Err(Why::Unready(problem).into()),
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
async fn fishjam(config: &Config, timeout: Duration) -> Result<String, Unreachable> {
    let token = config
        .fishjam
        .management_token
        .as_ref()
        .ok_or(Why::NoToken)?;
    let roots = config
        .notifier
        .ca_file
        .as_deref()
        .map(ExtraRoots::load)
        .transpose()
        .map_err(Why::CaFile)?;
    let client = fishjam::rest_client(timeout, roots.as_ref()).map_err(Why::Client)?;
    tokio::time::timeout(
        timeout,
        fishjam::check_credentials(&client, &config.fishjam.id, token.expose()),
    )
    .await
    .map_err(|_| Why::Timeout(timeout))?
    .map_err(Why::Credentials)?;
    Ok(format!(
        "{:?}: the credentials are valid",
        config.fishjam.id
    ))
}
