//! `dead-letters redrive`: publishes the events of a dead-letter file again,
//! each through the configured sink that refused it, with its original
//! event id, and keeps in the file only what was not acknowledged. Lines
//! that are not dead letters, entries of other sinks (or of a sink the
//! configuration lacks), and events a sink refuses again stay as they were.
//!
//! A running bridge may append to the file meanwhile: the file is rewritten
//! under an exclusive lock, keeping whatever was appended since it was
//! read, and the bridge's appends take the same lock (`dead_letter.rs`) and
//! reopen the path when it was replaced under them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::admin::Readiness;
use crate::config::Config;
use crate::core::event::{Event, Message};
use crate::sinks::{Publish, Sink, SinkHealth};
use crate::telemetry::Chain;

/// What happened to one sink's dead letters.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub sink: String,
    /// Published again and acknowledged: gone from the file.
    pub sent: usize,
    /// Still in the file.
    pub left: usize,
    /// Why some were left.
    pub problem: Option<String>,
}

#[derive(serde::Deserialize)]
struct Entry<'a> {
    sink: String,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// Redrives `file`'s dead letters (only those of the sink `only`, when
/// given) through `config`'s sinks, each step within `timeout`.
pub async fn redrive(
    config: &Config,
    file: &Path,
    only: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Vec<Outcome>> {
    use anyhow::Context as _;
    let original =
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = String::from_utf8_lossy(&original);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let chosen = choose(&lines, only);
    let mut outcomes = Vec::new();
    let mut sent_lines = BTreeSet::new();
    for (name, messages) in chosen {
        outcomes.push(redrive_sink(config, name, messages, timeout, &mut sent_lines).await);
    }
    if !sent_lines.is_empty() {
        let kept: String = lines
            .iter()
            .enumerate()
            .filter(|(n, _)| !sent_lines.contains(n))
            .map(|(_, line)| *line)
            .collect();
        rewrite(file, original.len(), kept.as_bytes())
            .with_context(|| format!("cannot rewrite {}", file.display()))?;
    }
    Ok(outcomes)
}

/// The dead letters among `lines` whose events can be read (only those of
/// the sink `only`, when given), with their line numbers, by sink.
fn choose(lines: &[&str], only: Option<&str>) -> BTreeMap<String, Vec<(usize, Message)>> {
    // Line numbers to send, by sink.
    let mut chosen: BTreeMap<String, Vec<(usize, Message)>> = BTreeMap::new();
    for (number, line) in lines.iter().enumerate() {
        let Ok(entry) = serde_json::from_str::<Entry>(line.trim_end()) else {
            continue;
        };
        if only.is_some_and(|only| only != entry.sink) {
            continue;
        }
        let json = entry.event.get().as_bytes();
        let Ok(event) = Event::from_json(json) else {
            continue;
        };
        let message = Message {
            event,
            json: bytes::Bytes::copy_from_slice(json),
        };
        chosen
            .entry(entry.sink)
            .or_default()
            .push((number, message));
    }
    chosen
}

/// Publishes the dead letters of the sink `name` again through the sink
/// of that name in `config`; adds the lines it acknowledged to
/// `sent_lines`.
async fn redrive_sink(
    config: &Config,
    name: String,
    messages: Vec<(usize, Message)>,
    timeout: Duration,
    sent_lines: &mut BTreeSet<usize>,
) -> Outcome {
    let Some(sink_config) = config.sinks.iter().find(|s| s.name() == name) else {
        return Outcome {
            left: messages.len(),
            sink: name,
            sent: 0,
            problem: Some("the configuration has no sink of this name".to_owned()),
        };
    };
    let health = SinkHealth::new(&name, Readiness::default());
    let sink = match tokio::time::timeout(timeout, Sink::connect(sink_config, health)).await {
        Ok(Ok(sink)) => sink,
        Ok(Err(error)) => {
            return Outcome {
                left: messages.len(),
                sink: name,
                sent: 0,
                problem: Some(format!("cannot connect: {}", Chain(&error))),
            };
        }
        Err(_) => {
            return Outcome {
                left: messages.len(),
                sink: name,
                sent: 0,
                problem: Some("cannot connect: no answer in time".to_owned()),
            };
        }
    };
    let batch_size = config.pipeline.max_batch.max(1);
    let (sent, problem) = publish_batches(&sink, &messages, batch_size, timeout, sent_lines).await;
    let _ = tokio::time::timeout(timeout, sink.close()).await;
    Outcome {
        left: messages.len() - sent,
        sink: name,
        sent,
        problem,
    }
}

/// Publishes `messages` through `sink` in batches of `batch_size`, each
/// within `timeout`, until a batch is not acknowledged whole; adds the
/// lines acknowledged to `sent_lines`. Returns how many were acknowledged
/// and why the rest were not.
async fn publish_batches(
    sink: &Sink,
    messages: &[(usize, Message)],
    batch_size: usize,
    timeout: Duration,
    sent_lines: &mut BTreeSet<usize>,
) -> (usize, Option<String>) {
    let mut sent = 0;
    let mut problem = None;
    for batch in messages.chunks(batch_size) {
        let refs: Vec<&Message> = batch.iter().map(|(_, m)| m).collect();
        let acknowledged = match tokio::time::timeout(timeout, sink.publish(&refs)).await {
            Ok(Ok(())) => batch.len(),
            Ok(Err(error)) => {
                problem = Some(Chain(&error.error).to_string());
                error.acknowledged
            }
            Err(_) => {
                problem = Some("no acknowledgement in time".to_owned());
                0
            }
        };
        sent += acknowledged;
        sent_lines.extend(batch[..acknowledged].iter().map(|(n, _)| *n));
        if acknowledged < batch.len() {
            break;
        }
    }
    (sent, problem)
}

/// Replaces `file` with `kept` and whatever was appended after its first
/// `read` bytes, under the lock the bridge's appends take.
fn rewrite(file: &Path, read: usize, kept: &[u8]) -> std::io::Result<()> {
    let mut current = std::fs::File::open(file)?;
    current.lock()?;
    let mut now = Vec::new();
    current.read_to_end(&mut now)?;
    let appended = now.get(read..).unwrap_or_default();
    let temporary = file.with_extension("redrive");
    let mut replacement = std::fs::File::create(&temporary)?;
    replacement.write_all(kept)?;
    replacement.write_all(appended)?;
    replacement.sync_all()?;
    std::fs::rename(&temporary, file)?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_keeps_what_was_appended_after_the_file_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dead-letters.jsonl");
        std::fs::write(&file, "sent\nkept\n").unwrap();
        let read = std::fs::read(&file).unwrap().len();
        // A bridge appends while the redrive publishes.
        let mut appending = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        appending.write_all(b"new\n").unwrap();
        rewrite(&file, read, b"kept\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept\nnew\n");
        assert!(!dir.path().join("dead-letters.redrive").exists());
    }
}
