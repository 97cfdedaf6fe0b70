//! Any bytes, as a webhook body or a notifier frame: decoding and
//! normalizing never panic, and every event serializes to valid JSON.
//!
//! Shared by the fuzz target of the same name and by the replay of the
//! committed corpora in the test suite (`tests/it/fuzzing.rs`).

use std::sync::Arc;
use std::time::SystemTime;

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};

/// Panics when the property fails for `data`.
pub fn check(data: &[u8]) {
    let origin = Origin {
        source: Source::Webhook,
        received_at: SystemTime::UNIX_EPOCH,
        fishjam_id: Arc::from("fuzz"),
        id_seed: 0,
    };
    if let Ok(normalized) = normalize_body(data, &origin) {
        for event in &normalized.events {
            let json = event.to_json();
            serde_json::from_slice::<serde_json::Value>(&json).expect("an event is valid JSON");
        }
    }
}
