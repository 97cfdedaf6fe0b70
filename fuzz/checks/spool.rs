//! Any bytes as the newest spool segment (a crash or a bad disk left them):
//! recovery never panics, never replays an entry whose CRC fails, and the
//! log stays appendable, the next body read back after what survived.
//!
//! Shared by the fuzz target of the same name and by the replay of the
//! committed corpora in the test suite (`tests/it/fuzzing.rs`).

use std::time::SystemTime;

use bytes::Bytes;
use fishjam_bridge::core::event::Source;
use fishjam_bridge::testing::pipeline::spool::log::{self, Entry, NewRecord, Next, SegmentReader};

fn bodies(dir: &std::path::Path) -> Vec<Bytes> {
    let recovered = log::recover(dir).expect("a readable directory recovers");
    let mut out = Vec::new();
    for segment in &recovered.segments {
        let path = log::segment_path(dir, segment.id);
        let mut reader = SegmentReader::open(&path, 0).unwrap();
        loop {
            match reader.next(segment.len).unwrap() {
                Next::Entry(Entry::Body(record)) => out.push(record.body),
                Next::Entry(_) | Next::Unreadable => {}
                Next::End => break,
                Next::Torn { .. } => panic!("recovery left a torn entry in the newest segment"),
            }
        }
    }
    out
}

/// Panics when the property fails for `data`.
pub fn check(data: &[u8]) {
    let dir =
        std::env::temp_dir().join(format!("fishjam-bridge-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(log::segment_path(&dir, 0), data).unwrap();
    let survived = bodies(&dir);
    let recovered = log::recover(&dir).unwrap();
    let mut writer = log::Writer::open(&dir, &recovered, 1 << 20, false).unwrap();
    let marker = Bytes::from_static(b"appended after recovery");
    writer
        .append(&[NewRecord {
            source: Source::Webhook,
            received_at: SystemTime::UNIX_EPOCH,
            id_seed: 7,
            events: 1,
            skips: Box::default(),
            body: marker.clone(),
        }])
        .unwrap();
    drop(writer);
    let after = bodies(&dir);
    assert_eq!(after.last(), Some(&marker));
    assert_eq!(&after[..after.len() - 1], &survived[..]);
}
