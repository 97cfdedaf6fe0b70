//! `fishjam-bridge check-config`: validates a configuration and prints it
//! with secrets masked; with `--connect`, also reaches every target it
//! names (`probe.rs`), one line each. The two failures are told apart
//! (`CheckError`) so that systemd's `ExecStartPre` and an init container
//! can tell a wrong configuration from a broker that is down.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::telemetry::Chain;

/// Why a configuration did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Valid, but some targets could not be reached; the report on stdout
    /// already says which, and this count is its last line.
    #[error("{failed} of {total} targets failed")]
    Unreachable { failed: usize, total: usize },
}

/// Checks the configuration at `path` (or the defaults, with the
/// environment); with `connect`, reaches each target within that timeout.
pub fn check_config(path: Option<&Path>, connect: Option<Duration>) -> Result<(), CheckError> {
    let config = Config::from_process(path)?;
    print!("{}", config.describe());
    println!("configuration is valid");
    let Some(timeout) = connect else {
        return Ok(());
    };
    let outcomes = super::runtime().block_on(super::probe::run(&config, timeout));
    let mut failed = 0;
    for outcome in &outcomes {
        match &outcome.result {
            Ok(reached) => println!("ok      {}: {reached}", outcome.target),
            Err(why) => {
                failed += 1;
                println!("failed  {}: {}", outcome.target, Chain(why));
            }
        }
    }
    if failed > 0 {
        let error = CheckError::Unreachable {
            failed,
            total: outcomes.len(),
        };
        println!("{error}");
        return Err(error);
    }
    println!("every target answered");
    Ok(())
}
