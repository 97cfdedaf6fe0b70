//! Event to destination: subject, topic and routing-key templates.
//!
//! A template such as `fishjam.{kind}.{key}.{type}` is parsed once at
//! start-up; rendering fills each placeholder with the event's value, escaped
//! so that it stays one dot-separated token. Pure and synchronous.
//!
//! Escaping (reversible, percent-encoding): `%` `.` `*` `>` `#`, whitespace and
//! control characters become `%XX` (upper-case hex of the byte); an empty or
//! missing value becomes `_`, and a value that is exactly `_` becomes `%5F`.
//! So `room.1` renders as `room%2E1` and can never land on the subject of a
//! room called `room` with a token `1` after it.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::core::event::{Event, EventType};

/// A template that cannot be used, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{template:?} holds {problem}")]
pub struct TemplateError {
    pub template: String,
    pub problem: String,
}

/// One parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Field(Field),
}

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    /// `rooms`, `streams` or `recordings`: what the key identifies.
    Kind,
    Key,
    RoomId,
    StreamId,
    PeerId,
    Type,
    FishjamId,
}

impl Field {
    const NAMES: &'static [(&'static str, Field)] = &[
        ("kind", Field::Kind),
        ("key", Field::Key),
        ("room_id", Field::RoomId),
        ("stream_id", Field::StreamId),
        ("peer_id", Field::PeerId),
        ("type", Field::Type),
        ("fishjam_id", Field::FishjamId),
    ];
}

/// The placeholders a template may use, for error messages and docs.
pub fn placeholders() -> String {
    Field::NAMES
        .iter()
        .map(|(name, _)| format!("{{{name}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Template {
    /// When every value the template can render comes from a fixed set (its
    /// placeholders are only `{kind}` and `{type}`, which both follow from
    /// the event type), every name it renders, sorted; otherwise the
    /// placeholders that take an id's value (any characters, one name per
    /// room or peer). A Kafka topic must be the former.
    pub fn names(&self) -> Result<Vec<String>, Vec<&'static str>> {
        let open: Vec<&'static str> = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Field(field) if !matches!(field, Field::Kind | Field::Type) => Some(*field),
                _ => None,
            })
            .flat_map(|field| {
                Field::NAMES
                    .iter()
                    .filter(move |(_, f)| *f == field)
                    .map(|(name, _)| *name)
            })
            .collect();
        if !open.is_empty() {
            return Err(open);
        }
        let mut names: Vec<String> = EventType::ALL
            .iter()
            .map(|event_type| {
                self.parts
                    .iter()
                    .map(|part| match part {
                        Part::Literal(text) => text.as_str(),
                        Part::Field(Field::Kind) => event_type.key_kind().as_str(),
                        Part::Field(_) => event_type.as_str(),
                    })
                    .collect()
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Parses `text`; `forbidden` lists characters the literal parts must not
    /// hold (wildcards of the broker).
    pub fn parse(text: &str, forbidden: &[char]) -> Result<Template, TemplateError> {
        let refused = |problem: String| TemplateError {
            template: text.to_owned(),
            problem,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| refused("an unclosed '{'".to_owned()))?;
                    let name = &rest[1..end];
                    let field = Field::NAMES
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| {
                            refused(format!(
                                "the unknown placeholder {{{name}}}; use {}",
                                placeholders()
                            ))
                        })?;
                    parts.push(Part::Field(field));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if let Some(bad) = literal
                        .chars()
                        .find(|c| forbidden.contains(c) || c.is_whitespace())
                    {
                        return Err(refused(format!("{bad:?}, which is not allowed")));
                    }
                    if literal.contains('}') {
                        return Err(refused("an unmatched '}'".to_owned()));
                    }
                    parts.push(Part::Literal(literal.to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        if parts.is_empty() {
            return Err(refused("nothing: it must not be empty".to_owned()));
        }
        if text.starts_with('.') || text.ends_with('.') || text.contains("..") {
            return Err(refused("an empty token".to_owned()));
        }
        Ok(Template { parts })
    }

    /// Whether the template depends on nothing but the event type and fishjam id.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Literal(_) => true,
            Part::Field(f) => matches!(f, Field::Type | Field::FishjamId),
        })
    }

    /// The destination of `event`.
    pub fn render(&self, event: &Event) -> String {
        let mut out = String::with_capacity(96);
        self.render_into(event, &mut out);
        out
    }

    /// `render`, appended to `out`: a sink that frames many messages into
    /// one buffer allocates nothing per message.
    pub fn render_into(&self, event: &Event, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(field) => {
                    let value = match field {
                        Field::Kind => event.event_type.key_kind().as_str(),
                        Field::Key => event.key(),
                        Field::RoomId => event.room_id().unwrap_or(""),
                        Field::StreamId => event.stream_id().unwrap_or(""),
                        Field::PeerId => event.peer_id().unwrap_or(""),
                        Field::Type => event.event_type.as_str(),
                        Field::FishjamId => &event.fishjam_id,
                    };
                    out.push_str(&escape_token(value));
                }
            }
        }
    }
}

/// Which events a sink takes: by event type (`vadNotification`) or by what
/// keys them (`rooms`, `streams`, `recordings`), as include and exclude
/// lists. One bit per event type, so a look-up per event is a shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    takes: u64,
}

/// A name in a route that is neither an event type nor a key kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not an event type nor a key kind (rooms, streams, recordings); event types: {}", EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownName {
    pub name: String,
}

// One bit per event type.
const _: () = assert!(EventType::ALL.len() < 64);

impl Filter {
    /// Takes every event.
    pub const ALL: Filter = Filter {
        takes: (1 << EventType::ALL.len()) - 1,
    };

    /// Events named by `include` (every event when it is empty) that
    /// `exclude` does not name.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, UnknownName> {
        let named = |names: &[String]| -> Result<u64, UnknownName> {
            names.iter().try_fold(0u64, |bits, name| {
                let matched = EventType::ALL
                    .iter()
                    .filter(|t| t.as_str() == name || t.key_kind().as_str() == name)
                    .fold(0u64, |bits, t| bits | 1 << t.index());
                if matched == 0 {
                    return Err(UnknownName { name: name.clone() });
                }
                Ok(bits | matched)
            })
        };
        let included = if include.is_empty() {
            Filter::ALL.takes
        } else {
            named(include)?
        };
        Ok(Filter {
            takes: included & !named(exclude)?,
        })
    }

    pub fn takes(&self, event_type: EventType) -> bool {
        self.takes & (1 << event_type.index()) != 0
    }

    pub fn takes_all(&self) -> bool {
        *self == Filter::ALL
    }

    pub fn takes_none(&self) -> bool {
        self.takes == 0
    }
}

/// The bytes a token keeps as they are: printable ASCII but the escape
/// character and NATS's separator and wildcards.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        table[b] = byte.is_ascii_graphic() && !matches!(byte, b'%' | b'.' | b'*' | b'>' | b'#');
        b += 1;
    }
    table
};

/// Escapes one token (see the module docs).
pub fn escape_token(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("_");
    }
    if value == "_" {
        return Cow::Borrowed("%5F");
    }
    // Ids are nearly always printable ASCII without these: one pass over
    // the bytes, a table look-up each, settles it before the per-character
    // rule.
    if value.bytes().all(|b| PLAIN[b as usize]) {
        return Cow::Borrowed(value);
    }
    let needs =
        |c: char| matches!(c, '%' | '.' | '*' | '>' | '#') || c.is_whitespace() || c.is_control();
    if !value.chars().any(needs) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if needs(c) {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Reverses `escape_token`: `_` gives the empty string.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn peer_event(room: &str, peer: &str) -> Event {
        Event {
            id: new_event_id(SystemTime::now()),
            event_type: EventType::PeerConnected,
            source: Source::Webhook,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("app.example"),
            data: Data::Peer(PeerData {
                room_id: room.to_owned(),
                peer_id: peer.to_owned(),
                peer_type: Some(PeerType::Webrtc),
            }),
            unmapped_enums: Vec::new(),
        }
    }

    #[test]
    fn a_filter_takes_what_it_includes_and_not_what_it_excludes() {
        use EventType::*;
        // include, exclude, an event type, whether the filter takes it.
        let cases: &[(&[&str], &[&str], EventType, bool)] = &[
            (&["vadNotification"], &[], VadNotification, true),
            (&["vadNotification"], &[], PeerConnected, false),
            (&[], &["vadNotification"], VadNotification, false),
            (&[], &["vadNotification"], RoomCreated, true),
            (&["streams"], &["viewerConnected"], StreamerConnected, true),
            (&["streams"], &["viewerConnected"], ViewerConnected, false),
            (&["streams"], &["viewerConnected"], RoomCreated, false),
            (&["rooms"], &[], PeerConnected, true),
            (&[], &[], TrackAdded, true),
        ];
        let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        for &(include, exclude, event_type, takes) in cases {
            let filter = Filter::new(&names(include), &names(exclude)).unwrap();
            assert_eq!(
                filter.takes(event_type),
                takes,
                "include {include:?}, exclude {exclude:?}: {event_type:?}"
            );
        }
        assert!(Filter::new(&[], &[]).unwrap().takes_all());
        assert!(Filter::new(&names(&["rooms"]), &names(&["rooms"]))
            .unwrap()
            .takes_none());
        let error = Filter::new(&names(&["voiceActivity"]), &[]).unwrap_err();
        assert_eq!(error.name, "voiceActivity");
        assert!(error.to_string().contains("vadNotification"), "{error}");
    }

    #[test]
    fn a_template_of_kind_and_type_names_every_topic_it_renders() {
        let names = Template::parse("f.{kind}", &[]).unwrap().names().unwrap();
        assert_eq!(names, ["f.recordings", "f.rooms", "f.streams"]);
        let names = Template::parse("f.{kind}.{type}", &[])
            .unwrap()
            .names()
            .unwrap();
        assert_eq!(names.len(), EventType::ALL.len());
        assert!(names.contains(&"f.streams.viewerConnected".to_owned()));
        assert!(names.contains(&"f.rooms.peerConnected".to_owned()));
        assert_eq!(
            Template::parse("events", &[]).unwrap().names().unwrap(),
            ["events"]
        );
        assert_eq!(
            Template::parse("f.{room_id}.{type}.{key}", &[])
                .unwrap()
                .names(),
            Err(vec!["room_id", "key"])
        );
    }

    #[test]
    fn renders_every_placeholder_escaped() {
        let template = Template::parse(
            "fj.{fishjam_id}.{kind}.{key}.{room_id}.{stream_id}.{peer_id}.{type}",
            &['*', '>'],
        )
        .unwrap();
        let subject = template.render(&peer_event("room.1", "p 1"));
        assert_eq!(
            subject,
            "fj.app%2Eexample.rooms.room%2E1.room%2E1._.p%201.peerConnected"
        );
    }

    #[test]
    fn escaping_is_reversible_and_never_merges_ids() {
        for value in [
            "",
            "_",
            "room.1",
            "a*b>c#d",
            "100%",
            "tab\there",
            "zażółć",
            "%2E",
        ] {
            let escaped = escape_token(value);
            assert!(!escaped.contains(['.', '*', '>', '#', ' ']), "{escaped}");
            assert_eq!(unescape_token(&escaped).as_deref(), Some(value));
        }
        assert_ne!(escape_token("room.1"), escape_token("room%2E1"));
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Template::parse("fishjam.{room}", &[])
            .unwrap_err()
            .to_string()
            .contains("\"fishjam.{room}\" holds the unknown placeholder {room}"));
        assert!(Template::parse("fishjam.*.{key}", &['*', '>']).is_err());
        assert!(Template::parse("fishjam..{key}", &[]).is_err());
        assert!(Template::parse("fishjam.{key", &[]).is_err());
        assert!(Template::parse("", &[]).is_err());
        assert!(Template::parse("events", &[]).unwrap().is_static());
        assert!(!Template::parse("e.{key}", &[]).unwrap().is_static());
    }
}
