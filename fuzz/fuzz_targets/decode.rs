//! Any bytes, as a webhook body or a notifier frame: decoding and
//! normalizing never panic, and every event serializes to valid JSON.
#![no_main]

use std::sync::Arc;
use std::time::SystemTime;

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
