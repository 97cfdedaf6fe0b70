//! Where an event goes that a sink refuses for good (too large for the
//! broker, invalid for it): a JSON line in `pipeline.dead_letter_path`, with
//! the sink and the reason, written and synced before the event counts as
//! done, so it never blocks its room and is never lost silently. Without a
//! path, the whole event is logged at error level instead. `redrive.rs`
//! publishes them again.

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

/// Appends `line` under a shared lock: `dead-letters redrive` rewrites the
/// file under an exclusive one, and a file it replaced between this open and
/// the lock is opened again, so no line goes to a file that is gone.
fn append(path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    loop {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.lock_shared()?;
        let opened = file.metadata()?;
        let replaced = std::fs::metadata(path)
            .map(|now| (now.dev(), now.ino()) != (opened.dev(), opened.ino()))
            .unwrap_or(true);
        if replaced {
            continue;
        }
        file.write_all(line)?;
        return file.sync_data();
    }
}

/// What a dead-letter file holds: its entries by sink and reason, and the
/// lines that are not dead letters (1-based), which are reported, not skipped
/// in silence.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub groups: std::collections::BTreeMap<(String, String), Group>,
    pub unreadable: Vec<usize>,
}

/// The dead letters of one sink and reason.
#[derive(Debug, Default, PartialEq)]
pub struct Group {
    pub count: usize,
    /// Event types and how many of each.
    pub types: std::collections::BTreeMap<String, usize>,
    /// `dead_lettered_at` of the first and the last entry, as written.
    pub first: String,
    pub last: String,
}

/// Reads a dead-letter file's text.
pub fn summarize(text: &str) -> Summary {
    let mut summary = Summary::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: Option<(String, String, String, String)> =
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    Some((
                        v["sink"].as_str()?.to_owned(),
                        v["reason"].as_str()?.to_owned(),
                        v["dead_lettered_at"].as_str()?.to_owned(),
                        v["event"]["type"].as_str()?.to_owned(),
                    ))
                });
        let Some((sink, reason, at, event_type)) = entry else {
            summary.unreadable.push(index + 1);
            continue;
        };
        let group = summary.groups.entry((sink, reason)).or_default();
        if group.count == 0 {
            group.first = at.clone();
        }
        group.count += 1;
        group.last = at;
        *group.types.entry(event_type).or_default() += 1;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_summed_by_sink_and_reason_and_bad_lines_are_named() {
        let entry = |sink: &str, reason: &str, at: &str, event_type: &str| {
            format!(
                "{{\"sink\":\"{sink}\",\"reason\":\"{reason}\",\"dead_lettered_at\":\"{at}\",\"event\":{{\"type\":\"{event_type}\"}}}}"
            )
        };
        let text = [
            entry(
                "nats",
                "too large",
                "2026-12-01T10:00:00Z",
                "peerMetadataUpdated",
            ),
            "not json".to_owned(),
            entry("nats", "too large", "2026-12-01T11:00:00Z", "trackAdded"),
            String::new(),
            entry(
                "kafka",
                "too large",
                "2026-12-01T12:00:00Z",
                "peerMetadataUpdated",
            ),
            "{\"sink\":\"nats\"}".to_owned(),
        ]
        .join("\n");
        let summary = summarize(&text);
        assert_eq!(summary.unreadable, [2, 6]);
        assert_eq!(summary.groups.len(), 2);
        let nats = &summary.groups[&("nats".to_owned(), "too large".to_owned())];
        assert_eq!(nats.count, 2);
        assert_eq!(nats.first, "2026-12-01T10:00:00Z");
        assert_eq!(nats.last, "2026-12-01T11:00:00Z");
        assert_eq!(nats.types["trackAdded"], 1);
    }
}
