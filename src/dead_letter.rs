//! Where an event goes that a sink refuses for good (too large for the
//! broker, invalid for it): a JSON line in `pipeline.dead_letter_path`, with
//! the sink and the reason, written and synced before the event counts as
//! done, so it never blocks its room and is never lost silently. Without a
//! path, the whole event is logged at error level instead.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::core::event::Message;
use crate::telemetry;

#[derive(Debug, Clone, Default)]
pub struct DeadLetters {
    path: Option<PathBuf>,
}

impl DeadLetters {
    pub fn new(path: Option<PathBuf>) -> DeadLetters {
        DeadLetters { path }
    }

    /// Keeps `job`'s event with why `sink` refused it. An error means the
    /// event is not kept, and must not be counted as done.
    pub async fn store(&self, sink: &str, reason: &str, job: &Message) -> std::io::Result<()> {
        let line = line(sink, reason, job);
        match &self.path {
            None => {
                tracing::error!(
                    sink,
                    reason,
                    dead_letter = %String::from_utf8_lossy(&line),
                    "a sink refused an event for good; set pipeline.dead_letter_path to keep such events in a file"
                );
            }
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || append(&path, &line))
                    .await
                    .map_err(std::io::Error::other)??;
                tracing::error!(
                    sink,
                    reason,
                    event_id = %job.event.id,
                    path = %self.path.as_deref().unwrap_or_else(|| "".as_ref()).display(),
                    "a sink refused an event for good; kept as a dead letter"
                );
            }
        }
        telemetry::dead_lettered(sink);
        Ok(())
    }
}

/// `{"sink":..,"reason":..,"dead_lettered_at":..,"event":<the event>}`
fn line(sink: &str, reason: &str, job: &Message) -> Vec<u8> {
    let at = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
    let head = serde_json::json!({ "sink": sink, "reason": reason, "dead_lettered_at": at });
    let mut line = serde_json::to_vec(&head).expect("a JSON object serializes");
    // The event's own JSON goes in as it is, with no second parse.
    line.pop();
    line.extend_from_slice(b",\"event\":");
    line.extend_from_slice(&job.json);
    line.extend_from_slice(b"}\n");
    line
}

fn append(path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(line)?;
    file.sync_data()
}
