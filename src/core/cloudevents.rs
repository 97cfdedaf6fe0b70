//! An event as a CloudEvent (CloudEvents 1.0): its attributes, once, for
//! both modes a sink may use. In binary mode the attributes travel as headers
//! beside the event's JSON (`each_attribute`); in structured mode one JSON
//! object (`application/cloudevents+json`) holds the attributes and the event
//! as its `data` (`structured`). This module does no IO.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::event::{Event, SCHEMA_URI};

/// The media type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// How a sink carries CloudEvents, chosen per sink by `cloudevents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The event's JSON alone, with the bridge's own headers.
    #[default]
    Off,
    /// The event's JSON, the attributes as headers (`ce-*`, `ce_*`,
    /// `cloudEvents:*`).
    Binary,
    /// One `application/cloudevents+json` object: attributes, and the event
    /// as `data`.
    Structured,
}

impl Mode {
    /// The `Content-Type` of a message in this mode.
    pub fn content_type(self) -> &'static str {
        match self {
            Mode::Structured => STRUCTURED_CONTENT_TYPE,
            Mode::Off | Mode::Binary => "application/json",
        }
    }
}

/// `false`/`true` (as before there were two modes: off and binary) or one of
/// "off", "binary", "structured".
impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Mode, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = Mode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"off\", \"binary\" or \"structured\" (true means \"binary\")")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Mode, E> {
                Ok(if on { Mode::Binary } else { Mode::Off })
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Mode, E> {
                match text {
                    "off" => Ok(Mode::Off),
                    "binary" => Ok(Mode::Binary),
                    "structured" => Ok(Mode::Structured),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// Calls `add` with each CloudEvents attribute of `event`, by its name
/// without prefix: the required ones, `subject`, `time`, `datacontenttype`,
/// `dataschema` (the event schema of this `schema_version`) and the
/// `partitionkey` extension (the event's key, which orders it).
pub fn each_attribute(event: &Event, mut add: impl FnMut(&str, &str)) {
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = event.id.hyphenated().encode_lower(&mut buffer);
    let kind = event.event_type.key_kind();
    let time = humantime::format_rfc3339_micros(event.received_at).to_string();
    add("specversion", "1.0");
    add("id", id);
    add("source", &source(&event.fishjam_id));
    add("type", &format!("io.fishjam.{}", event.event_type.as_str()));
    add("subject", &format!("{}/{}", kind.as_str(), event.key()));
    add("time", &time);
    add("datacontenttype", "application/json");
    add("dataschema", SCHEMA_URI);
    add("partitionkey", event.key());
}

/// The structured-mode message of `event`, whose JSON is `json`: the
/// attributes, then the event as `data`.
pub fn structured(event: &Event, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 512);
    out.push(b'{');
    each_attribute(event, |name, value| {
        // Names are fixed ASCII words; values may hold anything.
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut out, value).expect("a string always serializes");
        out.push(b',');
    });
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(json);
    out.push(b'}');
    out
}

/// The CloudEvents `source`: the Fishjam base URL, as the SDKs derive it.
fn source(fishjam_id: &str) -> String {
    if fishjam_id.contains("://") {
        fishjam_id.trim_end_matches('/').to_owned()
    } else {
        format!("https://fishjam.io/api/v1/connect/{fishjam_id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::Message;
    use crate::core::normalize::{normalize_body, Origin};
    use crate::core::proto::{server_message as sm, Content, ServerMessage};
    use prost::Message as _;

    fn message(fishjam_id: &str) -> Message {
        let body = ServerMessage {
            content: Some(Content::RoomCreated(sm::RoomCreated {
                room_id: "room \"1\"".to_owned(),
            })),
        }
        .encode_to_vec();
        let origin = Origin {
            source: crate::core::event::Source::Webhook,
            received_at: std::time::UNIX_EPOCH
                + std::time::Duration::from_micros(1_700_000_000_123_456),
            fishjam_id: std::sync::Arc::from(fishjam_id),
            id_seed: 7,
        };
        let event = normalize_body(&body, &origin).unwrap().events.remove(0);
        Message::new(event)
    }

    #[test]
    fn a_structured_message_holds_the_attributes_and_the_event_as_data() {
        let message = message("my-fishjam");
        let value: serde_json::Value =
            serde_json::from_slice(&structured(&message.event, &message.json)).unwrap();
        let event: serde_json::Value = serde_json::from_slice(&message.json).unwrap();
        assert_eq!(value["data"], event);
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["id"], event["id"]);
        assert_eq!(value["type"], "io.fishjam.roomCreated");
        assert_eq!(value["subject"], "rooms/room \"1\"");
        assert_eq!(value["partitionkey"], "room \"1\"");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(value["dataschema"], SCHEMA_URI);
        assert_eq!(
            value["source"],
            "https://fishjam.io/api/v1/connect/my-fishjam"
        );
    }

    #[test]
    fn a_fishjam_url_is_the_source_as_written() {
        let message = message("https://fishjam.example.com/");
        let mut source = String::new();
        each_attribute(&message.event, |name, value| {
            if name == "source" {
                source = value.to_owned();
            }
        });
        assert_eq!(source, "https://fishjam.example.com");
    }

    #[test]
    fn the_mode_reads_a_bool_or_a_name_and_refuses_others() {
        #[derive(Deserialize)]
        struct Sink {
            cloudevents: Mode,
        }
        let read = |text: &str| toml::from_str::<Sink>(text).map(|s| s.cloudevents);
        assert_eq!(read("cloudevents = true").unwrap(), Mode::Binary);
        assert_eq!(read("cloudevents = false").unwrap(), Mode::Off);
        assert_eq!(
            read("cloudevents = \"structured\"").unwrap(),
            Mode::Structured
        );
        let error = read("cloudevents = \"json\"").unwrap_err().to_string();
        assert!(error.contains("\"structured\""), "{error}");
    }
}
