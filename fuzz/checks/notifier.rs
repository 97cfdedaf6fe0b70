//! Any sequence of frames from a notifier server, fed to the session's state
//! machine: it never panics, moves through the handshake in order, hands a
//! body to the pipeline only once subscribed, and every delivered body
//! decodes or fails cleanly.
//!
//! Input: frames of [kind, length (u16 little-endian), payload]; kind % 5 is
//! binary, text, ping, pong or close (payload: code u16 LE, reason).
//!
//! Shared by the fuzz target of the same name and by the replay of the
//! committed corpora in the test suite (`tests/it/fuzzing.rs`).

use std::sync::Arc;
use std::time::SystemTime;

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::testing::sources::notifier::{on_frame, Frame, Phase, Step};

/// Panics when the property fails for `data`.
pub fn check(data: &[u8]) {
    let origin = Origin {
        source: Source::Notifier,
        received_at: SystemTime::UNIX_EPOCH,
        fishjam_id: Arc::from("fuzz"),
        id_seed: 0,
    };
    let mut phase = Phase::Authenticating;
    let mut rest = data;
    while rest.len() >= 3 {
        let kind = rest[0] % 5;
        let length = u16::from_le_bytes([rest[1], rest[2]]) as usize;
        let payload = &rest[3..(3 + length).min(rest.len())];
        rest = &rest[3 + payload.len()..];
        let frame = match kind {
            0 => Frame::Binary(payload),
            1 => Frame::Text,
            2 => Frame::Ping,
            3 => Frame::Pong,
            _ if payload.len() >= 2 => Frame::Close(Some((
                u16::from_le_bytes([payload[0], payload[1]]),
                std::str::from_utf8(&payload[2..]).unwrap_or(""),
            ))),
            _ => Frame::Close(None),
        };
        match on_frame(phase, &frame) {
            Step::Advanced(next) => {
                let expected = match phase {
                    Phase::Authenticating => Phase::Subscribing,
                    Phase::Subscribing => Phase::Subscribed,
                    Phase::Subscribed => panic!("the handshake advanced after it ended"),
                };
                assert_eq!(next, expected);
                phase = next;
            }
            Step::Deliver(body) => {
                assert_eq!(
                    phase,
                    Phase::Subscribed,
                    "a body delivered before subscribing"
                );
                if let Ok(normalized) = normalize_body(body, &origin) {
                    for event in &normalized.events {
                        let json = event.to_json();
                        serde_json::from_slice::<serde_json::Value>(&json)
                            .expect("an event is valid JSON");
                    }
                }
            }
            Step::End(error) => {
                assert!(!error.to_string().is_empty());
                return;
            }
            Step::Text | Step::Ping => assert_eq!(phase, Phase::Subscribed),
            Step::Nothing => {}
        }
    }
}
