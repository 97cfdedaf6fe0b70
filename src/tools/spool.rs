//! `spool inspect DIR`: what a replica's spool holds, for the operator who
//! scales a replica down or rolls one back: the bodies not yet acknowledged
//! by every sink, their events and bytes, each sink's cursor and how many
//! bodies it still lacks, and the age of the oldest. Read from a copy of the
//! directory, since opening the log cuts a torn tail and deletes what is
//! delivered: the replica's own files are never written.

use std::path::Path;
use std::time::SystemTime;

use serde_json::json;

use crate::pipeline::spool::log;

/// Why a spool could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read the spool in {dir}")]
    Read {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Prints what the spool in `dir` holds, as one JSON object.
pub fn inspect(dir: &Path) -> Result<(), InspectError> {
    let failed = |source| InspectError::Read {
        dir: dir.display().to_string(),
        source,
    };
    let copy = tempfile_dir().map_err(failed)?;
    for id in log::segment_ids(dir).map_err(failed)? {
        let name = log::segment_path(dir, id);
        let target = log::segment_path(copy.path(), id);
        match std::fs::copy(&name, &target) {
            Ok(_) => {}
            // A running replica deleted it meanwhile: it was delivered.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(error)),
        }
    }
    let recovered = log::recover(copy.path()).map_err(failed)?;
    println!("{}", report(&recovered, SystemTime::now()));
    Ok(())
}

/// A folder of its own under the system's temporary directory, removed
/// when dropped.
fn tempfile_dir() -> std::io::Result<TempDir> {
    let path = std::env::temp_dir().join(format!(
        "fishjam-bridge-spool-inspect-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&path)?;
    Ok(TempDir(path))
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report(recovered: &log::Recovered, now: SystemTime) -> serde_json::Value {
    let held = &recovered.held;
    let oldest = held.iter().map(|body| body.received_at).min();
    let sinks: serde_json::Map<String, serde_json::Value> = recovered
        .cursors
        .iter()
        .map(|(sink, cursor)| {
            let lacks = held.iter().filter(|body| body.seq >= *cursor).count();
            (
                sink.clone(),
                json!({"cursor": cursor, "bodies_behind": lacks}),
            )
        })
        .collect();
    json!({
        "bodies": held.len(),
        "events": held.iter().map(|body| u64::from(body.events)).sum::<u64>(),
        "bytes": held.iter().map(|body| body.bytes).sum::<u64>(),
        "segments": recovered.segments.len(),
        "watermark": recovered.watermark,
        "next_seq": recovered.next_seq,
        "torn_entries": recovered.torn,
        "oldest_age_seconds": oldest
            .map(|at| now.duration_since(at).unwrap_or_default().as_secs_f64()),
        "sinks": sinks,
    })
}
