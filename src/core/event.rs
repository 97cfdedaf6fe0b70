//! The JSON event the bridge publishes: its public, versioned contract.
//!
//! An `Event` is an envelope (id, type, the ids that key it, where it came
//! from, when it arrived) around `data`, which is exactly what the official
//! JS SDK's `decodeServerNotifications` returns for the notification: the same
//! camelCase keys in proto order, the same enum strings, absent oneof members
//! and unmapped enum values left out. `docs/events.md` and
//! `schema/event.schema.json` describe the format; changing it means a new
//! `schema_version`. This module does no IO.

use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use uuid::Uuid;

/// Version of the event format, written into every event and into the
/// `Fishjam-Schema-Version` header. docs/events.md says which changes bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// `SCHEMA_VERSION` as a header value.
pub const SCHEMA_VERSION_TEXT: &str = "1";

/// The name of the JSON Schema of this `schema_version`: its `$id`, and the
/// CloudEvents `dataschema`. A URN, since no address is promised to serve
/// it: the schema ships with the bridge (`schema/event.schema.json`, and
/// `/usr/share/fishjam-bridge/` in the package). A new version gets a new
/// name.
pub const SCHEMA_URI: &str = "urn:fishjam-bridge:schema:event:v1";

/// One normalized notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique per event (UUIDv7: time-ordered). A retry of the same event keeps it.
    pub id: Uuid,
    pub event_type: EventType,
    pub source: Source,
    /// When the bridge read the body or frame that carried the notification.
    pub received_at: SystemTime,
    pub fishjam_id: Arc<str>,
    pub data: Data,
    /// Enum values the SDK cannot name (a newer Fishjam): `data` omits the key,
    /// and the raw number is kept here under its path in `data`.
    pub unmapped_enums: Vec<(&'static str, i32)>,
}

/// Which path delivered an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Webhook,
    Notifier,
    /// Derived by the bridge from Fishjam's REST API after a notifier gap.
    Reconciled,
    /// The `decode` command.
    Decode,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::Webhook,
        Source::Notifier,
        Source::Reconciled,
        Source::Decode,
    ];

    /// Its position in `ALL`, for tables indexed by source.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Notifier => "notifier",
            Source::Reconciled => "reconciled",
            Source::Decode => "decode",
        }
    }
}

/// A Fishjam peer's type, named as the SDK names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerType {
    Unspecified,
    Webrtc,
    Agent,
    Vapi,
}

impl PeerType {
    pub const ALL: [PeerType; 4] = [
        PeerType::Unspecified,
        PeerType::Webrtc,
        PeerType::Agent,
        PeerType::Vapi,
    ];

    /// Its position in `ALL`, for tables indexed by peer type.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeerType::Unspecified => "unspecified",
            PeerType::Webrtc => "webrtc",
            PeerType::Agent => "agent",
            PeerType::Vapi => "vapi",
        }
    }

    pub fn from_name(name: &str) -> Option<PeerType> {
        PeerType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The protobuf enum value.
    pub fn number(self) -> i32 {
        match self {
            PeerType::Unspecified => 0,
            PeerType::Webrtc => 1,
            PeerType::Agent => 2,
            PeerType::Vapi => 3,
        }
    }

    /// The type of a protobuf enum value, as the JS codec reads it (a
    /// 10-byte -1 is read as -1 and named like 0); None for a value this
    /// version cannot name.
    pub fn from_number(value: i32) -> Option<PeerType> {
        match value {
            -1 => Some(PeerType::Unspecified),
            _ => PeerType::ALL.into_iter().find(|t| t.number() == value),
        }
    }
}

impl Serialize for PeerType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What an event's key identifies: it orders and partitions the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Room,
    Stream,
    /// Recordings belong to neither a room nor a stream in the protocol.
    Recording,
}

impl KeyKind {
    /// The `{kind}` of subjects and routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Room => "rooms",
            KeyKind::Stream => "streams",
            KeyKind::Recording => "recordings",
        }
    }

    /// The broker header that carries the key.
    pub fn header(self) -> &'static str {
        match self {
            KeyKind::Room => "Fishjam-Room-Id",
            KeyKind::Stream => "Fishjam-Stream-Id",
            KeyKind::Recording => "Fishjam-Recording-Id",
        }
    }
}

/// How an event type arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// Room, peer, track, stream and recording lifecycle: never shed, never
    /// delayed by bursty events.
    Lifecycle,
    /// Voice activity and metadata updates: many, often, and each
    /// superseded by the next.
    Bursty,
}

macro_rules! event_types {
    ($($variant:ident => $name:literal, $kind:ident, $traffic:ident;)*) => {
        /// The event types, named as the JS SDK names them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType { $($variant,)* }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)*];

            /// Its position in `ALL`, for tables indexed by type.
            pub fn index(self) -> usize {
                self as usize
            }

            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            pub fn from_name(name: &str) -> Option<EventType> {
                match name { $($name => Some(EventType::$variant),)* _ => None }
            }

            /// What the event's key identifies.
            pub fn key_kind(self) -> KeyKind {
                match self { $(EventType::$variant => KeyKind::$kind,)* }
            }

            fn traffic(self) -> Traffic {
                match self { $(EventType::$variant => Traffic::$traffic,)* }
            }
        }
    };
}

// One row per notification type: its name, what keys it, how it arrives.
// A new type also needs its `Data` shape, its arm in `normalize` (and
// `to_notification` when reconciliation derives it) and its entry in
// `schema/event.schema.json`; the compiler finds the first two.
event_types! {
    RoomCreated => "roomCreated", Room, Lifecycle;
    RoomDeleted => "roomDeleted", Room, Lifecycle;
    RoomCrashed => "roomCrashed", Room, Lifecycle;
    PeerAdded => "peerAdded", Room, Lifecycle;
    PeerDeleted => "peerDeleted", Room, Lifecycle;
    PeerConnected => "peerConnected", Room, Lifecycle;
    PeerDisconnected => "peerDisconnected", Room, Lifecycle;
    PeerMetadataUpdated => "peerMetadataUpdated", Room, Bursty;
    PeerCrashed => "peerCrashed", Room, Lifecycle;
    StreamerConnected => "streamerConnected", Stream, Lifecycle;
    StreamerDisconnected => "streamerDisconnected", Stream, Lifecycle;
    ViewerConnected => "viewerConnected", Stream, Lifecycle;
    ViewerDisconnected => "viewerDisconnected", Stream, Lifecycle;
    TrackAdded => "trackAdded", Room, Lifecycle;
    TrackRemoved => "trackRemoved", Room, Lifecycle;
    TrackMetadataUpdated => "trackMetadataUpdated", Room, Bursty;
    TrackForwarding => "trackForwarding", Room, Lifecycle;
    TrackForwardingRemoved => "trackForwardingRemoved", Room, Lifecycle;
    VadNotification => "vadNotification", Room, Bursty;
    ChannelAdded => "channelAdded", Room, Lifecycle;
    ChannelRemoved => "channelRemoved", Room, Lifecycle;
    RecordingStatusChanged => "recordingStatusChanged", Recording, Lifecycle;
}

impl EventType {
    /// Room and peer lifecycle events: never shed, never delayed by bursty ones.
    pub fn is_lifecycle(self) -> bool {
        self.traffic() == Traffic::Lifecycle
    }

    /// Voice activity and metadata updates: they take slots of their own.
    pub fn is_bursty(self) -> bool {
        self.traffic() == Traffic::Bursty
    }
}

/// The `data` payload, one shape per group of notifications.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Data {
    Room(RoomData),
    Peer(PeerData),
    PeerCrashed(PeerCrashedData),
    PeerMetadata(PeerMetadataData),
    Streamer(StreamerData),
    Viewer(ViewerData),
    Track(TrackData),
    TrackForwarding(TrackForwardingData),
    TrackForwardingRemoved(TrackForwardingRemovedData),
    Vad(VadData),
    Channel(ChannelData),
    Recording(RecordingData),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomData {
    pub room_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerData {
    pub room_id: String,
    pub peer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerCrashedData {
    pub room_id: String,
    pub peer_id: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMetadataData {
    pub room_id: String,
    pub peer_id: String,
    pub metadata: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamerData {
    pub stream_id: String,
    pub streamer_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewerData {
    pub stream_id: String,
    pub viewer_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    pub id: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub track_type: Option<&'static str>,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackData {
    pub room_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<Track>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackForwardingData {
    pub room_id: String,
    pub peer_id: String,
    pub composition_url: String,
    pub input_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_track: Option<Track>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_track: Option<Track>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackForwardingRemovedData {
    pub room_id: String,
    pub peer_id: String,
    pub composition_url: String,
    pub input_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VadData {
    pub room_id: String,
    pub peer_id: String,
    pub track_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelData {
    pub room_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    pub channel_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordingData {
    pub recording_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub metadata: String,
}

impl Data {
    pub fn room_id(&self) -> Option<&str> {
        Some(match self {
            Data::Room(d) => &d.room_id,
            Data::Peer(d) => &d.room_id,
            Data::PeerCrashed(d) => &d.room_id,
            Data::PeerMetadata(d) => &d.room_id,
            Data::Track(d) => &d.room_id,
            Data::TrackForwarding(d) => &d.room_id,
            Data::TrackForwardingRemoved(d) => &d.room_id,
            Data::Vad(d) => &d.room_id,
            Data::Channel(d) => &d.room_id,
            Data::Streamer(_) | Data::Viewer(_) | Data::Recording(_) => return None,
        })
    }

    pub fn stream_id(&self) -> Option<&str> {
        match self {
            Data::Streamer(d) => Some(&d.stream_id),
            Data::Viewer(d) => Some(&d.stream_id),
            _ => None,
        }
    }

    pub fn peer_id(&self) -> Option<&str> {
        match self {
            Data::Peer(d) => Some(&d.peer_id),
            Data::PeerCrashed(d) => Some(&d.peer_id),
            Data::PeerMetadata(d) => Some(&d.peer_id),
            Data::TrackForwarding(d) => Some(&d.peer_id),
            Data::TrackForwardingRemoved(d) => Some(&d.peer_id),
            Data::Vad(d) => Some(&d.peer_id),
            Data::Track(d) => d.peer_id.as_deref(),
            Data::Channel(d) => d.peer_id.as_deref(),
            Data::Room(_) | Data::Streamer(_) | Data::Viewer(_) | Data::Recording(_) => None,
        }
    }

    /// The metadata strings of the payload, by their path in `data`.
    fn metadata(&self) -> Vec<(&'static str, &str)> {
        fn track<'a>(
            out: &mut Vec<(&'static str, &'a str)>,
            path: &'static str,
            track: &'a Option<Track>,
        ) {
            if let Some(track) = track {
                out.push((path, &track.metadata));
            }
        }
        let mut out = Vec::new();
        match self {
            Data::PeerMetadata(d) => out.push(("metadata", d.metadata.as_str())),
            Data::Recording(d) => out.push(("metadata", d.metadata.as_str())),
            Data::Track(d) => track(&mut out, "track.metadata", &d.track),
            Data::TrackForwarding(d) => {
                track(&mut out, "audioTrack.metadata", &d.audio_track);
                track(&mut out, "videoTrack.metadata", &d.video_track);
            }
            _ => {}
        }
        out
    }
}

impl Data {
    /// Whether the payload has metadata strings (without collecting them).
    pub fn has_metadata(&self) -> bool {
        matches!(
            self,
            Data::PeerMetadata(_) | Data::Recording(_) | Data::Track(_) | Data::TrackForwarding(_)
        )
    }

    /// Metadata strings that look like JSON but are kept as text alone,
    /// since not every consumer could read them embedded.
    pub fn unembedded_metadata(&self) -> usize {
        self.metadata()
            .into_iter()
            .filter(|(_, text)| looks_like_json(text) && embeddable(text).is_none())
            .count()
    }
}

impl Event {
    pub fn room_id(&self) -> Option<&str> {
        self.data.room_id()
    }

    pub fn stream_id(&self) -> Option<&str> {
        self.data.stream_id()
    }

    pub fn peer_id(&self) -> Option<&str> {
        self.data.peer_id()
    }

    /// What orders and partitions the event: the room id, else the stream id,
    /// else the recording id (recordings belong to neither in the protocol).
    pub fn key(&self) -> &str {
        match &self.data {
            Data::Recording(d) => &d.recording_id,
            data => data.room_id().or_else(|| data.stream_id()).unwrap_or(""),
        }
    }

    /// The event as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(384);
        serde_json::to_writer(&mut out, self).expect("an event always serializes");
        out
    }

    /// `to_json` in an allocation of exactly its size: written into a
    /// per-thread buffer, then copied once, instead of growing a buffer of
    /// a guessed size and shrinking it.
    pub fn to_json_bytes(&self) -> bytes::Bytes {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> =
                std::cell::RefCell::new(Vec::with_capacity(4096));
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            serde_json::to_writer(&mut *scratch, self).expect("an event always serializes");
            let json = bytes::Bytes::copy_from_slice(scratch);
            // One huge event must not keep a huge buffer for the thread's life.
            scratch.truncate(0);
            scratch.shrink_to(64 * 1024);
            json
        })
    }
}

/// An event with its JSON, serialized once for every sink.
#[derive(Debug, Clone)]
pub struct Message {
    pub event: Event,
    pub json: bytes::Bytes,
}

impl Message {
    pub fn new(event: Event) -> Message {
        let json = event.to_json_bytes();
        Message { event, json }
    }

    /// The messages of one body's events, their JSON written one after
    /// another into one buffer that they share: one allocation per body
    /// instead of one per event. The buffer lives as long as the last of
    /// them, which is as long as the body does.
    pub fn all(events: Vec<Event>) -> Vec<Message> {
        if events.len() < 2 {
            return events.into_iter().map(Message::new).collect();
        }
        let mut buffer = Vec::with_capacity(events.len() * 384);
        let mut ends = Vec::with_capacity(events.len());
        for event in &events {
            serde_json::to_writer(&mut buffer, event).expect("an event always serializes");
            ends.push(buffer.len());
        }
        // A guess far above the need is not kept for the body's life.
        if buffer.capacity() > buffer.len() + buffer.len() / 2 {
            buffer.shrink_to_fit();
        }
        let shared = bytes::Bytes::from(buffer);
        let mut start = 0;
        events
            .into_iter()
            .zip(ends)
            .map(|(event, end)| {
                let json = shared.slice(start..end);
                start = end;
                Message { event, json }
            })
            .collect()
    }
}

/// New time-ordered event id.
pub fn new_event_id(at: SystemTime) -> Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(unix_millis(at), &random).into_uuid()
}

/// The time-ordered id of the `index`th event of a body whose ids derive
/// from `seed`: the same arguments always give the same id.
pub fn derived_event_id(at: SystemTime, seed: u64, index: u64) -> Uuid {
    let high = mix(seed ^ mix(index));
    let low = mix(high ^ index.wrapping_add(0x9e37_79b9_7f4a_7c15));
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&high.to_le_bytes());
    random[8..].copy_from_slice(&low.to_le_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis(unix_millis(at), &random).into_uuid()
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// SplitMix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let metadata_json = parsed_metadata(&self.data);
        let mut fields = 8;
        for present in [
            self.room_id().is_some(),
            self.stream_id().is_some(),
            self.peer_id().is_some(),
            !metadata_json.is_empty(),
            !self.unmapped_enums.is_empty(),
        ] {
            fields += usize::from(present);
        }
        let mut s = serializer.serialize_struct("Event", fields)?;
        s.serialize_field("schema_version", &SCHEMA_VERSION)?;
        s.serialize_field("id", &Hyphenated(self.id))?;
        s.serialize_field("type", self.event_type.as_str())?;
        s.serialize_field("key", self.key())?;
        if let Some(room_id) = self.room_id() {
            s.serialize_field("room_id", room_id)?;
        }
        if let Some(stream_id) = self.stream_id() {
            s.serialize_field("stream_id", stream_id)?;
        }
        if let Some(peer_id) = self.peer_id() {
            s.serialize_field("peer_id", peer_id)?;
        }
        s.serialize_field("source", self.source.as_str())?;
        s.serialize_field("received_at", &*received_at_text(self.received_at))?;
        s.serialize_field("fishjam_id", &*self.fishjam_id)?;
        s.serialize_field("data", &self.data)?;
        if !metadata_json.is_empty() {
            s.serialize_field("metadata_json", &PathMap(&metadata_json))?;
        }
        if !self.unmapped_enums.is_empty() {
            s.serialize_field("unmapped_enums", &PathMap(&self.unmapped_enums))?;
        }
        s.end()
    }
}

/// `at` in RFC 3339 with microseconds. The events of one body share their
/// time, so the last formatting is kept per thread and reused.
fn received_at_text(at: SystemTime) -> Arc<str> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(SystemTime, Arc<str>)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((time, text)) if *time == at => text.clone(),
            _ => {
                let text: Arc<str> = Arc::from(humantime::format_rfc3339_micros(at).to_string());
                *last = Some((at, text.clone()));
                text
            }
        }
    })
}

/// Metadata strings that hold a JSON object or array, by path in `data`.
/// A bare string or number is left alone: it is not worth a second copy.
/// Only what every consumer can read is embedded: a number no IEEE double
/// holds (`5e64994`) is valid JSON that strict parsers refuse, and one
/// peer's metadata must not make its whole event unreadable; such a string
/// is kept as text alone (`Data::unembedded_metadata` counts them).
fn parsed_metadata(data: &Data) -> Vec<(&'static str, &serde_json::value::RawValue)> {
    data.metadata()
        .into_iter()
        .filter(|(_, text)| looks_like_json(text))
        .filter_map(|(path, text)| Some((path, embeddable(text)?)))
        .collect()
}

fn looks_like_json(text: &str) -> bool {
    let trimmed = text.trim_start();
    trimmed.starts_with('{') || trimmed.starts_with('[')
}

/// `text` as raw JSON when every number in it fits a double.
fn embeddable(text: &str) -> Option<&serde_json::value::RawValue> {
    serde_json::from_str::<Readable>(text).ok()?;
    serde_json::from_str(text).ok()
}

/// A JSON value read as a parser with IEEE doubles reads it: numbers are
/// read as numbers (serde_json refuses one out of range), nothing is kept.
struct Readable;

impl<'de> serde::Deserialize<'de> for Readable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Readable, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> serde::de::Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Readable, E> {
        if value.is_finite() {
            Ok(Readable)
        } else {
            Err(E::custom("a number no double holds"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, Readable>()?
            .is_some()
        {}
        Ok(Readable)
    }
}

struct PathMap<'a, V>(&'a [(&'static str, V)]);

impl<V: Serialize> Serialize for PathMap<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (path, value) in self.0 {
            map.serialize_entry(path, value)?;
        }
        map.end()
    }
}

struct Hyphenated(Uuid);

impl Serialize for Hyphenated {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buffer = uuid::Uuid::encode_buffer();
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut buffer))
    }
}

/// The names the bridge writes for enum values it maps (track types, voice
/// activity and recording statuses), to read them back as `Data` holds them.
const ENUM_NAMES: &[&str] = &[
    "unspecified",
    "video",
    "audio",
    "silence",
    "speech",
    "active",
    "finished",
    "available",
    "failed",
];

/// The paths under which `unmapped_enums` keeps raw numbers.
const UNMAPPED_PATHS: &[&str] = &[
    "peerType",
    "status",
    "track.type",
    "audioTrack.type",
    "videoTrack.type",
];

fn known(name: &str, names: &'static [&'static str]) -> Option<&'static str> {
    names.iter().copied().find(|known| *known == name)
}

/// Why JSON is not an event the bridge could have written: each names the
/// key it could not read. The id's and the time's parse errors are part of
/// the text, which is what callers show, so they are not sources as well:
/// a chain of causes would print them twice.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableEvent {
    #[error(transparent)]
    Json(serde_json::Error),
    #[error("{0}: missing, or not a string")]
    NotAString(&'static str),
    #[error("type: {0:?} is not an event type")]
    EventType(String),
    #[error("id: {0}")]
    Id(uuid::Error),
    #[error("source: {0:?} is not a source")]
    Source(String),
    #[error("received_at: {0}")]
    ReceivedAt(humantime::TimestampError),
    #[error("data: missing")]
    NoData,
    #[error("unmapped_enums: not an object")]
    UnmappedNotAnObject,
    #[error("unmapped_enums: {0:?} is not a path")]
    UnmappedPath(String),
    #[error("unmapped_enums.{0}: not a number")]
    UnmappedNumber(&'static str),
}

impl Event {
    /// An event read back from the JSON the bridge wrote for it (a dead
    /// letter, to publish it again): the same event, so that serializing it
    /// gives the same JSON. Anything the bridge could not have written is
    /// an error that names the key.
    pub fn from_json(json: &[u8]) -> Result<Event, UnreadableEvent> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(UnreadableEvent::Json)?;
        let event_type = parse::event_type(&value)?;
        let id = parse::id(&value)?;
        let source = parse::source(&value)?;
        let received_at = parse::received_at(&value)?;
        let fishjam_id = Arc::from(parse::text(&value, "fishjam_id")?);
        let data = parse::data(
            event_type,
            value.get("data").ok_or(UnreadableEvent::NoData)?,
        )?;
        let unmapped_enums = parse::unmapped_enums(&value)?;
        Ok(Event {
            id,
            event_type,
            source,
            received_at,
            fishjam_id,
            data,
            unmapped_enums,
        })
    }
}

/// The keys of an event's JSON, read back for `Event::from_json`: one
/// function per key of the envelope and one per shape of `data`. Each
/// error names the key it could not read.
mod parse {
    use super::*;
    use serde_json::Value;

    /// The string under `key`, which the bridge always writes.
    pub(super) fn text(v: &Value, key: &'static str) -> Result<String, UnreadableEvent> {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(UnreadableEvent::NotAString(key))
    }

    /// The string under `key`, which the bridge leaves out when it has none.
    fn optional(v: &Value, key: &str) -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_owned)
    }

    pub(super) fn event_type(value: &Value) -> Result<EventType, UnreadableEvent> {
        let name = text(value, "type")?;
        EventType::from_name(&name).ok_or(UnreadableEvent::EventType(name))
    }

    pub(super) fn id(value: &Value) -> Result<Uuid, UnreadableEvent> {
        Uuid::parse_str(&text(value, "id")?).map_err(UnreadableEvent::Id)
    }

    pub(super) fn source(value: &Value) -> Result<Source, UnreadableEvent> {
        let name = text(value, "source")?;
        Source::ALL
            .into_iter()
            .find(|source| source.as_str() == name)
            .ok_or(UnreadableEvent::Source(name))
    }

    pub(super) fn received_at(value: &Value) -> Result<SystemTime, UnreadableEvent> {
        humantime::parse_rfc3339(&text(value, "received_at")?).map_err(UnreadableEvent::ReceivedAt)
    }

    /// `unmapped_enums`, which the bridge leaves out when it is empty.
    pub(super) fn unmapped_enums(
        value: &Value,
    ) -> Result<Vec<(&'static str, i32)>, UnreadableEvent> {
        let mut unmapped_enums = Vec::new();
        if let Some(unmapped) = value.get("unmapped_enums") {
            let unmapped = unmapped
                .as_object()
                .ok_or(UnreadableEvent::UnmappedNotAnObject)?;
            for (path, number) in unmapped {
                let path = known(path, UNMAPPED_PATHS)
                    .ok_or_else(|| UnreadableEvent::UnmappedPath(path.clone()))?;
                let number = number
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or(UnreadableEvent::UnmappedNumber(path))?;
                unmapped_enums.push((path, number));
            }
        }
        Ok(unmapped_enums)
    }

    /// `data` (`d`), read as the shape of its event type.
    pub(super) fn data(event_type: EventType, d: &Value) -> Result<Data, UnreadableEvent> {
        use EventType as T;
        match event_type {
            T::RoomCreated | T::RoomDeleted | T::RoomCrashed => room(d),
            T::PeerAdded | T::PeerDeleted | T::PeerConnected | T::PeerDisconnected => peer(d),
            T::PeerMetadataUpdated => peer_metadata(d),
            T::PeerCrashed => peer_crashed(d),
            T::StreamerConnected | T::StreamerDisconnected => streamer(d),
            T::ViewerConnected | T::ViewerDisconnected => viewer(d),
            T::TrackAdded | T::TrackRemoved | T::TrackMetadataUpdated => track_event(d),
            T::TrackForwarding => track_forwarding(d),
            T::TrackForwardingRemoved => track_forwarding_removed(d),
            T::VadNotification => vad(d),
            T::ChannelAdded | T::ChannelRemoved => channel(d),
            T::RecordingStatusChanged => recording(d),
        }
    }

    /// A peer type the bridge could name; it leaves out any other.
    fn peer_type(d: &Value) -> Option<PeerType> {
        optional(d, "peerType").and_then(|n| PeerType::from_name(&n))
    }

    /// A voice activity or recording status the bridge could name; it
    /// leaves out any other.
    fn status(d: &Value) -> Option<&'static str> {
        optional(d, "status").and_then(|n| known(&n, ENUM_NAMES))
    }

    fn track(t: Option<&Value>) -> Result<Option<Track>, UnreadableEvent> {
        t.map(|t| {
            Ok(Track {
                id: text(t, "id")?,
                track_type: optional(t, "type").and_then(|n| known(&n, ENUM_NAMES)),
                metadata: text(t, "metadata")?,
            })
        })
        .transpose()
    }

    fn room(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Room(RoomData {
            room_id: text(d, "roomId")?,
        }))
    }

    fn peer(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Peer(PeerData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            peer_type: peer_type(d),
        }))
    }

    fn peer_metadata(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::PeerMetadata(PeerMetadataData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            metadata: text(d, "metadata")?,
            peer_type: peer_type(d),
        }))
    }

    fn peer_crashed(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::PeerCrashed(PeerCrashedData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            reason: text(d, "reason")?,
            peer_type: peer_type(d),
        }))
    }

    fn streamer(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Streamer(StreamerData {
            stream_id: text(d, "streamId")?,
            streamer_id: text(d, "streamerId")?,
        }))
    }

    fn viewer(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Viewer(ViewerData {
            stream_id: text(d, "streamId")?,
            viewer_id: text(d, "viewerId")?,
        }))
    }

    fn track_event(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Track(TrackData {
            room_id: text(d, "roomId")?,
            peer_id: optional(d, "peerId"),
            component_id: optional(d, "componentId"),
            track: track(d.get("track"))?,
        }))
    }

    fn track_forwarding(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::TrackForwarding(TrackForwardingData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            composition_url: text(d, "compositionUrl")?,
            input_id: text(d, "inputId")?,
            audio_track: track(d.get("audioTrack"))?,
            video_track: track(d.get("videoTrack"))?,
        }))
    }

    fn track_forwarding_removed(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::TrackForwardingRemoved(TrackForwardingRemovedData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            composition_url: text(d, "compositionUrl")?,
            input_id: text(d, "inputId")?,
        }))
    }

    fn vad(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Vad(VadData {
            room_id: text(d, "roomId")?,
            peer_id: text(d, "peerId")?,
            track_id: text(d, "trackId")?,
            status: status(d),
        }))
    }

    fn channel(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Channel(ChannelData {
            room_id: text(d, "roomId")?,
            peer_id: optional(d, "peerId"),
            component_id: optional(d, "componentId"),
            channel_id: text(d, "channelId")?,
        }))
    }

    fn recording(d: &Value) -> Result<Data, UnreadableEvent> {
        Ok(Data::Recording(RecordingData {
            recording_id: text(d, "recordingId")?,
            status: status(d),
            metadata: text(d, "metadata")?,
        }))
    }
}

#[cfg(test)]
impl Event {
    /// A `roomCreated` of `room` from a webhook, for tests elsewhere.
    pub(crate) fn room_created_for_test(room: &str) -> Event {
        Event {
            id: new_event_id(SystemTime::now()),
            event_type: EventType::RoomCreated,
            source: Source::Webhook,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("test"),
            data: Data::Room(RoomData {
                room_id: room.to_owned(),
            }),
            unmapped_enums: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(metadata: &str) -> Event {
        Event {
            event_type: EventType::RecordingStatusChanged,
            data: Data::Recording(RecordingData {
                recording_id: "rec".to_owned(),
                status: Some("active"),
                metadata: metadata.to_owned(),
            }),
            ..Event::room_created_for_test("r")
        }
    }

    /// Metadata with a number no double holds is valid JSON that strict
    /// parsers refuse: the event must stay readable by them.
    #[test]
    fn metadata_with_a_number_out_of_a_doubles_range_is_not_embedded() {
        let json = recording(r#"{"role":5e64994}"#).to_json();
        let value: serde_json::Value =
            serde_json::from_slice(&json).expect("strict parsers read the event");
        assert_eq!(value["data"]["metadata"], r#"{"role":5e64994}"#);
        assert!(value.get("metadata_json").is_none());
        // Metadata every parser reads is still embedded.
        let json = recording(r#"{"role":5e64,"n":[-1e308,12345678901234567890]}"#).to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["metadata_json"]["metadata"]["role"], 5e64);
    }
}
