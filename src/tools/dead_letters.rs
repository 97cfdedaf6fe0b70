//! `fishjam-bridge dead-letters`: what a dead-letter file
//! (`pipeline.dead_letter_path`) holds (`list`), and sending its events
//! again (`redrive`, the work of `redrive.rs`). Both print a report on
//! stdout; their errors tell `main` which exit status fits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::pipeline::dead_letter;
use crate::telemetry::{self, LogFormat};

/// Why `list` failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// After the summary of what could be read: these lines (1-based) are
    /// not dead letters.
    #[error(
        "not dead letters (a sink, a reason, a time and an event each): lines {}",
        lines.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
    )]
    NotDeadLetters { lines: Vec<usize> },
}

/// Why `redrive` failed.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file could not be read or rewritten.
    #[error(transparent)]
    File(anyhow::Error),
    /// Some dead letters are still in the file; the report on stdout says
    /// which sinks kept them and why.
    #[error("{left} dead letters left in the file")]
    Left { left: usize },
}

/// `dead-letters list`: prints the entries of `file` by sink and reason:
/// how many, of which event types, first and last.
pub fn list(file: &Path) -> Result<(), ListError> {
    let text = std::fs::read_to_string(file).map_err(|source| ListError::Read {
        path: file.to_owned(),
        source,
    })?;
    let summary = dead_letter::summarize(&text);
    let total: usize = summary.groups.values().map(|g| g.count).sum();
    println!("{}: {total} entries", file.display());
    for ((sink, reason), group) in &summary.groups {
        let types: Vec<String> = group
            .types
            .iter()
            .map(|(event_type, count)| format!("{event_type} {count}"))
            .collect();
        println!(
            "sink {sink}: {} ({}), {} to {}: {reason}",
            group.count,
            types.join(", "),
            group.first,
            group.last
        );
    }
    if summary.unreadable.is_empty() {
        return Ok(());
    }
    Err(ListError::NotDeadLetters {
        lines: summary.unreadable,
    })
}

/// `dead-letters redrive`: publishes the dead letters of `file` again
/// through the sinks of the configuration at `config` (only those of the
/// sink `only`, when given), each step within `timeout`, and says, per
/// sink, what was sent and what is left.
pub fn redrive(
    file: &Path,
    config: Option<&Path>,
    only: Option<&str>,
    timeout: Duration,
) -> Result<(), RedriveError> {
    let config = Config::from_process(config)?;
    // Only what goes wrong: the report is the output.
    telemetry::init_logging(LogFormat::Text, "warn");
    let outcomes = super::runtime()
        .block_on(super::redrive::redrive(&config, file, only, timeout))
        .map_err(RedriveError::File)?;
    if outcomes.is_empty() {
        println!("{}: no dead letter to send again", file.display());
    }
    let mut left = 0;
    for outcome in &outcomes {
        left += outcome.left;
        match &outcome.problem {
            None => println!(
                "sink {}: {} sent again, acknowledged, removed from the file",
                outcome.sink, outcome.sent
            ),
            Some(problem) => println!(
                "sink {}: {} sent again, {} left in the file: {problem}",
                outcome.sink, outcome.sent, outcome.left
            ),
        }
    }
    if left > 0 {
        return Err(RedriveError::Left { left });
    }
    Ok(())
}
