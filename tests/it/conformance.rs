//! The shared vectors against the decoder, in process and through
//! `fishjam-bridge decode`: `type` and `data` equal the official JS SDK's
//! output, every event fits the schema, and each case the SDK throws on or
//! that no conforming Fishjam sends ends as docs/events.md says.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::core::signature;
use serde_json::{json, Value};

use crate::support::{assert_valid, published_schema, schema, validator, vectors, BIN};

/// What the bridge does where it parts from the SDK, by case id prefix.
enum Expected {
    /// Same notifications as the JS SDK.
    SameAsSdk,
    /// The SDK throws for the whole body on an unknown recording status; the
    /// bridge keeps the event, leaves `status` out and records the number.
    RecordingStatusUnmapped(i64),
    /// Not valid protobuf: the whole body is refused with this reason.
    Refused(&'static str),
}

fn expected(case: &Value) -> Expected {
    let id = case["id"].as_str().unwrap();
    if case["js"]["outcome"] == "ok" {
        // prost refuses a known field with the wrong wire type, where the JS
        // codec skips it: documented in docs/events.md.
        if id == "edge/wrong_wire_type_for_known_field" {
            return Expected::Refused("wrong_wire_type");
        }
        return Expected::SameAsSdk;
    }
    let class = case["js"]["error"]["class"].as_str().unwrap();
    match class {
        "StaleSdkException" => {
            let status = case["input"]["recording_status_changed"]["status"]
                .as_i64()
                .expect("the stale-SDK cases are recording statuses");
            Expected::RecordingStatusUnmapped(status)
        }
        "RangeError" => Expected::Refused("truncated"),
        other => panic!("case {id}: no documented outcome for an SDK {other}"),
    }
}

fn sdk_notifications(case: &Value) -> Vec<(String, Value)> {
    case["js"]["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_owned(),
                n["notification"].clone(),
            )
        })
        .collect()
}

fn check(case: &Value, events: Result<Vec<Value>, String>) {
    let id = case["id"].as_str().unwrap();
    match expected(case) {
        Expected::SameAsSdk => {
            let events = events.unwrap_or_else(|e| panic!("case {id}: refused: {e}"));
            let ours: Vec<(String, Value)> = events
                .iter()
                .map(|e| (e["type"].as_str().unwrap().to_owned(), e["data"].clone()))
                .collect();
            assert_eq!(ours, sdk_notifications(case), "case {id}");
        }
        Expected::RecordingStatusUnmapped(status) => {
            let events = events.unwrap_or_else(|e| panic!("case {id}: refused: {e}"));
            assert_eq!(events.len(), 1, "case {id}");
            let event = &events[0];
            assert_eq!(event["type"], "recordingStatusChanged", "case {id}");
            assert!(event["data"].get("status").is_none(), "case {id}");
            assert_eq!(event["unmapped_enums"]["status"], status, "case {id}");
            let input = &case["input"]["recording_status_changed"];
            assert_eq!(
                event["data"]["recordingId"], input["recording_id"],
                "case {id}"
            );
        }
        Expected::Refused(reason) => {
            let error = events.expect_err(&format!("case {id}: must be refused"));
            assert!(error.contains(reason), "case {id}: {error} names {reason}");
        }
    }
}

fn origin() -> Origin {
    Origin {
        source: Source::Webhook,
        received_at: SystemTime::now(),
        fishjam_id: Arc::from("vectors"),
        id_seed: 0,
    }
}

#[test]
fn every_vector_decodes_as_the_sdk_does() {
    let vectors = vectors();
    let validator = schema();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 80, "the vectors file holds the whole suite");
    for case in cases {
        let body = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let events = normalize_body(&body, &origin())
            .map(|n| {
                n.events
                    .iter()
                    .map(|e| serde_json::from_slice::<Value>(&e.to_json()).unwrap())
                    .collect::<Vec<_>>()
            })
            .map_err(|e| format!("{e} ({})", e.reason()));
        if let Ok(events) = &events {
            for event in events {
                assert_valid(&validator, event);
                assert_eq!(event["fishjam_id"], "vectors");
                assert_eq!(event["source"], "webhook");
            }
        }
        check(case, events);
    }
}

#[test]
fn every_vector_decodes_the_same_through_the_command() {
    let vectors = vectors();
    for case in vectors["cases"].as_array().unwrap() {
        let mut child = Command::new(BIN)
            .args(["decode", "--input-format", "hex", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(case["hex"].as_str().unwrap().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        let events = if output.status.success() {
            Ok(stdout
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap())
                .collect())
        } else {
            assert_eq!(output.status.code(), Some(65), "{}: {stderr}", case["id"]);
            assert!(stdout.is_empty());
            Err(stderr)
        };
        check(case, events);
    }
}

#[test]
fn skipped_messages_are_named() {
    let vectors = vectors();
    let case = vectors["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "batch/nested")
        .unwrap();
    let body = hex::decode(case["hex"].as_str().unwrap()).unwrap();
    let normalized = normalize_body(&body, &origin()).unwrap();
    let skipped: Vec<&str> = normalized.skipped.iter().map(|s| s.as_str()).collect();
    assert_eq!(skipped, vec!["nested_batch"]);
}

#[test]
fn signatures_verify_as_the_sdk_verifies_them() {
    let vectors = vectors();
    for case in vectors["signature_cases"].as_array().unwrap() {
        let body = hex::decode(case["body_hex"].as_str().unwrap()).unwrap();
        let secret = case["secret"].as_str().unwrap();
        let header = case["header"].as_str().unwrap();
        let expected = case["js"]["valid"].as_bool().unwrap();
        assert_eq!(
            signature::verify(secret.as_bytes(), &body, header.as_bytes()),
            expected,
            "signature case {}",
            case["id"]
        );
    }
}

#[test]
fn handshake_frames_are_encoded_byte_for_byte() {
    use fishjam_bridge::core::proto::server_message as sm;
    use fishjam_bridge::core::proto::{Content, ServerMessage};
    use prost::Message;
    let vectors = vectors();
    for frame in vectors["handshake_frames"].as_array().unwrap() {
        let input = &frame["input"];
        let content = if let Some(auth) = input.get("auth_request") {
            Content::AuthRequest(sm::AuthRequest {
                token: auth["token"].as_str().unwrap().to_owned(),
            })
        } else if input.get("authenticated").is_some() {
            Content::Authenticated(sm::Authenticated {})
        } else if let Some(request) = input.get("subscribe_request") {
            Content::SubscribeRequest(sm::SubscribeRequest {
                event_type: request["event_type"].as_i64().unwrap() as i32,
            })
        } else if let Some(response) = input.get("subscribe_response") {
            Content::SubscribeResponse(sm::SubscribeResponse {
                event_type: response["event_type"].as_i64().unwrap() as i32,
            })
        } else {
            panic!("unknown handshake frame {input}");
        };
        let bytes = ServerMessage {
            content: Some(content),
        }
        .encode_to_vec();
        assert_eq!(hex::encode(bytes), frame["hex"], "frame {}", frame["id"]);
    }
}

/// docs/events.md, Versioning: a key added to the envelope or to `data`, a
/// new event type and a new enum string are additive; the published schema
/// takes them, so consumers that validate keep working. The tests' closed
/// schema refuses them, so nothing unlisted slips out of this build.
#[test]
fn the_published_schema_takes_additive_changes_and_the_closed_one_refuses_them() {
    let published = validator(&published_schema());
    let closed = schema();
    let event = json!({
        "schema_version": 1,
        "id": "019a5f3c-8e21-7c4a-9d2e-6b1f0a7c3d55",
        "type": "peerConnected",
        "key": "r",
        "room_id": "r",
        "peer_id": "p",
        "source": "webhook",
        "received_at": "2026-11-28T00:21:32.377708Z",
        "fishjam_id": "f",
        "data": {"roomId": "r", "peerId": "p", "peerType": "webrtc"}
    });
    assert_valid(&published, &event);
    assert_valid(&closed, &event);
    let mut additions = Vec::new();
    let mut added_key = event.clone();
    added_key["region"] = json!("eu");
    additions.push(added_key);
    let mut added_data = event.clone();
    added_data["data"]["joinedAt"] = json!(12);
    additions.push(added_data);
    let mut new_type = event.clone();
    new_type["type"] = json!("peerPromoted");
    additions.push(new_type);
    let mut new_value = event.clone();
    new_value["data"]["peerType"] = json!("sip");
    additions.push(new_value);
    for addition in &additions {
        assert_valid(&published, addition);
        assert!(!closed.is_valid(addition), "closed schema took {addition}");
    }
    // What would need a new schema_version is refused by both.
    let mut removed = event.clone();
    removed.as_object_mut().unwrap().remove("key");
    let mut other_version = event.clone();
    other_version["schema_version"] = json!(2);
    for breaking in [removed, other_version] {
        assert!(
            !published.is_valid(&breaking),
            "published schema took {breaking}"
        );
    }
}

#[test]
fn the_schema_names_the_version_the_bridge_writes() {
    let published = published_schema();
    assert_eq!(published["$id"], fishjam_bridge::core::event::SCHEMA_URI);
    assert_eq!(
        published["properties"]["schema_version"]["const"],
        fishjam_bridge::core::event::SCHEMA_VERSION
    );
    assert_eq!(
        fishjam_bridge::core::event::SCHEMA_VERSION_TEXT,
        fishjam_bridge::core::event::SCHEMA_VERSION.to_string()
    );
}

/// What a dead letter is published again from: each event read back from
/// its JSON is the same event, byte for byte once serialized again. Over
/// every vector (unknown enum values included) and a long scenario.
#[test]
fn every_event_reads_back_from_its_json() {
    use fishjam_bridge::core::event::Event;
    use fishjam_bridge::simulator::scenario::Scenario;
    use prost::Message as _;
    let vectors = vectors();
    let mut bodies: Vec<Vec<u8>> = vectors["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| hex::decode(case["hex"].as_str().unwrap()).unwrap())
        .collect();
    bodies.extend(Scenario::new(5, 6).take(5000).map(|m| m.encode_to_vec()));
    let mut read = 0;
    for body in bodies {
        let Ok(normalized) = normalize_body(&body, &origin()) else {
            continue;
        };
        for event in normalized.events {
            let json = event.to_json();
            let back = Event::from_json(&json)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
            assert_eq!(
                String::from_utf8(back.to_json()).unwrap(),
                String::from_utf8(json).unwrap()
            );
            read += 1;
        }
    }
    assert!(read > 5000, "{read} events read back");
    for (json, problem) in [
        (r#"{"id":"x"}"#, "type"),
        (
            r#"{"type":"roomMade","id":"0190b5ce-0000-7000-8000-000000000000"}"#,
            "roomMade",
        ),
    ] {
        let error = Event::from_json(json.as_bytes()).unwrap_err();
        assert!(error.to_string().contains(problem), "{error}");
    }
}
