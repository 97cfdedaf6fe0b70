//! Notifications to events: the one place where a body becomes `Event`s.
//!
//! Both sources and the `decode` command hand raw bytes to `normalize_body`,
//! which decodes them (`decode`) and maps each notification to the JSON shape
//! the official JS SDK returns (`event`). Enum numbers become the SDK's
//! strings; a number the SDK cannot name is left out of `data` and kept in
//! `unmapped_enums`, so an element the SDK would throw on (an unknown
//! recording status) never costs its siblings. Pure and synchronous.

use std::sync::Arc;
use std::time::SystemTime;

use crate::core::decode::{self, DecodeError, Notification, Skipped};
use crate::core::event::*;
use crate::core::proto::{self, server_message as sm};

/// Where and when a body arrived; shared by all the events it carries.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: Source,
    pub received_at: SystemTime,
    pub fishjam_id: Arc<str>,
    /// The events' ids derive from it, so that the same body normalized
    /// again (replayed from the spool) yields the same ids.
    pub id_seed: u64,
}

impl Origin {
    /// A body from `source` received now, with a fresh seed for its ids.
    pub fn now(source: Source, fishjam_id: Arc<str>) -> Origin {
        Origin {
            source,
            received_at: SystemTime::now(),
            fishjam_id,
            id_seed: rand::random(),
        }
    }
}

/// The events one body carried, in wire order, and what was skipped.
#[derive(Debug, Default)]
pub struct Normalized {
    pub events: Vec<Event>,
    pub skipped: Vec<Skipped>,
    pub batch: bool,
    /// String fields that held invalid UTF-8, decoded with U+FFFD.
    pub mended_strings: usize,
}

/// Decodes one body and normalizes every notification in it.
pub fn normalize_body(body: &[u8], origin: &Origin) -> Result<Normalized, DecodeError> {
    let decoded = decode::decode(body)?;
    let events = decoded
        .notifications
        .into_iter()
        .enumerate()
        .map(|(index, notification)| normalize(notification, origin, index))
        .collect();
    Ok(Normalized {
        events,
        skipped: decoded.skipped,
        batch: decoded.batch,
        mended_strings: decoded.mended_strings,
    })
}

/// Maps the `index`th notification of a body to its event.
pub fn normalize(notification: Notification, origin: &Origin, index: usize) -> Event {
    let mut unmapped = Vec::new();
    let (event_type, data) = payload(notification, &mut unmapped);
    Event {
        id: derived_event_id(origin.received_at, origin.id_seed, index as u64),
        event_type,
        source: origin.source,
        received_at: origin.received_at,
        fishjam_id: origin.fishjam_id.clone(),
        data,
        unmapped_enums: unmapped,
    }
}

type Unmapped = Vec<(&'static str, i32)>;

/// The event type and `data` of a notification: one arm per notification
/// type, in families (room, peer, stream, track, voice, channel,
/// recording); the functions below build each family's `data`.
fn payload(notification: Notification, unmapped: &mut Unmapped) -> (EventType, Data) {
    use proto::Content as C;
    use EventType as T;
    match notification {
        C::RoomCreated(m) => (T::RoomCreated, room(m.room_id)),
        C::RoomDeleted(m) => (T::RoomDeleted, room(m.room_id)),
        C::RoomCrashed(m) => (T::RoomCrashed, room(m.room_id)),
        C::PeerAdded(m) => (
            T::PeerAdded,
            peer(m.room_id, m.peer_id, m.peer_type, unmapped),
        ),
        C::PeerDeleted(m) => (
            T::PeerDeleted,
            peer(m.room_id, m.peer_id, m.peer_type, unmapped),
        ),
        C::PeerConnected(m) => (
            T::PeerConnected,
            peer(m.room_id, m.peer_id, m.peer_type, unmapped),
        ),
        C::PeerDisconnected(m) => (
            T::PeerDisconnected,
            peer(m.room_id, m.peer_id, m.peer_type, unmapped),
        ),
        C::PeerCrashed(m) => (T::PeerCrashed, peer_crashed(m, unmapped)),
        C::PeerMetadataUpdated(m) => (T::PeerMetadataUpdated, peer_metadata(m, unmapped)),
        C::StreamerConnected(m) => (T::StreamerConnected, streamer(m.stream_id, m.streamer_id)),
        C::StreamerDisconnected(m) => (
            T::StreamerDisconnected,
            streamer(m.stream_id, m.streamer_id),
        ),
        C::ViewerConnected(m) => (T::ViewerConnected, viewer(m.stream_id, m.viewer_id)),
        C::ViewerDisconnected(m) => (T::ViewerDisconnected, viewer(m.stream_id, m.viewer_id)),
        C::TrackAdded(m) => (T::TrackAdded, track_added(m, unmapped)),
        C::TrackRemoved(m) => (T::TrackRemoved, track_removed(m, unmapped)),
        C::TrackMetadataUpdated(m) => (T::TrackMetadataUpdated, track_metadata(m, unmapped)),
        C::TrackForwarding(m) => (T::TrackForwarding, track_forwarding(m, unmapped)),
        C::TrackForwardingRemoved(m) => (T::TrackForwardingRemoved, track_forwarding_removed(m)),
        C::VadNotification(m) => (T::VadNotification, vad(m, unmapped)),
        C::ChannelAdded(m) => (T::ChannelAdded, channel_added(m)),
        C::ChannelRemoved(m) => (T::ChannelRemoved, channel_removed(m)),
        C::RecordingStatusChanged(m) => (T::RecordingStatusChanged, recording(m, unmapped)),
        // `decode` hands over notifications only.
        C::Authenticated(_)
        | C::AuthRequest(_)
        | C::SubscribeRequest(_)
        | C::SubscribeResponse(_)
        | C::ComponentCrashed(_)
        | C::HlsPlayable(_)
        | C::HlsUploaded(_)
        | C::HlsUploadCrashed(_)
        | C::StreamConnected(_)
        | C::StreamDisconnected(_)
        | C::NotificationBatch(_) => {
            unreachable!("decode skips handshake, deprecated and batch contents")
        }
    }
}

fn room(room_id: String) -> Data {
    Data::Room(RoomData { room_id })
}

fn peer(room_id: String, peer_id: String, peer_type_value: i32, unmapped: &mut Unmapped) -> Data {
    Data::Peer(PeerData {
        room_id,
        peer_id,
        peer_type: peer_type(peer_type_value, unmapped),
    })
}

fn peer_crashed(m: sm::PeerCrashed, unmapped: &mut Unmapped) -> Data {
    Data::PeerCrashed(PeerCrashedData {
        room_id: m.room_id,
        peer_id: m.peer_id,
        reason: m.reason,
        peer_type: peer_type(m.peer_type, unmapped),
    })
}

fn peer_metadata(m: sm::PeerMetadataUpdated, unmapped: &mut Unmapped) -> Data {
    Data::PeerMetadata(PeerMetadataData {
        room_id: m.room_id,
        peer_id: m.peer_id,
        metadata: m.metadata,
        peer_type: peer_type(m.peer_type, unmapped),
    })
}

fn streamer(stream_id: String, streamer_id: String) -> Data {
    Data::Streamer(StreamerData {
        stream_id,
        streamer_id,
    })
}

fn viewer(stream_id: String, viewer_id: String) -> Data {
    Data::Viewer(ViewerData {
        stream_id,
        viewer_id,
    })
}

fn track_added(m: sm::TrackAdded, unmapped: &mut Unmapped) -> Data {
    let endpoint = endpoint_track_added(m.endpoint_info);
    track_event(m.room_id, endpoint, m.track, unmapped)
}

fn track_removed(m: sm::TrackRemoved, unmapped: &mut Unmapped) -> Data {
    let endpoint = endpoint_track_removed(m.endpoint_info);
    track_event(m.room_id, endpoint, m.track, unmapped)
}

fn track_metadata(m: sm::TrackMetadataUpdated, unmapped: &mut Unmapped) -> Data {
    let endpoint = endpoint_track_metadata(m.endpoint_info);
    track_event(m.room_id, endpoint, m.track, unmapped)
}

fn track_event(
    room_id: String,
    (peer_id, component_id): (Option<String>, Option<String>),
    track_message: Option<proto::notifications::Track>,
    unmapped: &mut Unmapped,
) -> Data {
    Data::Track(TrackData {
        room_id,
        peer_id,
        component_id,
        track: track_message.map(|t| track(t, "track.type", unmapped)),
    })
}

fn track_forwarding(m: sm::TrackForwarding, unmapped: &mut Unmapped) -> Data {
    Data::TrackForwarding(TrackForwardingData {
        room_id: m.room_id,
        peer_id: m.peer_id,
        composition_url: m.composition_url,
        input_id: m.input_id,
        audio_track: m.audio_track.map(|t| track(t, "audioTrack.type", unmapped)),
        video_track: m.video_track.map(|t| track(t, "videoTrack.type", unmapped)),
    })
}

fn track_forwarding_removed(m: sm::TrackForwardingRemoved) -> Data {
    Data::TrackForwardingRemoved(TrackForwardingRemovedData {
        room_id: m.room_id,
        peer_id: m.peer_id,
        composition_url: m.composition_url,
        input_id: m.input_id,
    })
}

fn vad(m: sm::VadNotification, unmapped: &mut Unmapped) -> Data {
    Data::Vad(VadData {
        room_id: m.room_id,
        peer_id: m.peer_id,
        track_id: m.track_id,
        status: mapped(vad_status(m.status), "status", m.status, unmapped),
    })
}

fn channel_added(m: sm::ChannelAdded) -> Data {
    channel(
        m.room_id,
        endpoint_channel_added(m.endpoint_info),
        m.channel_id,
    )
}

fn channel_removed(m: sm::ChannelRemoved) -> Data {
    channel(
        m.room_id,
        endpoint_channel_removed(m.endpoint_info),
        m.channel_id,
    )
}

fn channel(
    room_id: String,
    (peer_id, component_id): (Option<String>, Option<String>),
    channel_id: String,
) -> Data {
    Data::Channel(ChannelData {
        room_id,
        peer_id,
        component_id,
        channel_id,
    })
}

fn recording(m: sm::RecordingStatusChanged, unmapped: &mut Unmapped) -> Data {
    Data::Recording(RecordingData {
        recording_id: m.recording_id,
        status: mapped(recording_status(m.status), "status", m.status, unmapped),
        metadata: m.metadata,
    })
}

/// The notification that normalizes to `event`, for the room and peer
/// lifecycle events the reconciliation derives (so that they can take the
/// same path as a body, through the spool); None for any other event.
fn to_notification(event: &Event) -> Option<proto::ServerMessage> {
    use proto::Content as C;
    let content = match (&event.event_type, &event.data) {
        (EventType::RoomCreated, Data::Room(d)) => C::RoomCreated(sm::RoomCreated {
            room_id: d.room_id.clone(),
        }),
        (EventType::RoomDeleted, Data::Room(d)) => C::RoomDeleted(sm::RoomDeleted {
            room_id: d.room_id.clone(),
        }),
        (event_type, Data::Peer(d)) => {
            let peer_type = d.peer_type?.number();
            let (room_id, peer_id) = (d.room_id.clone(), d.peer_id.clone());
            match event_type {
                EventType::PeerAdded => C::PeerAdded(sm::PeerAdded {
                    room_id,
                    peer_id,
                    peer_type,
                }),
                EventType::PeerDeleted => C::PeerDeleted(sm::PeerDeleted {
                    room_id,
                    peer_id,
                    peer_type,
                }),
                EventType::PeerConnected => C::PeerConnected(sm::PeerConnected {
                    room_id,
                    peer_id,
                    peer_type,
                }),
                EventType::PeerDisconnected => C::PeerDisconnected(sm::PeerDisconnected {
                    room_id,
                    peer_id,
                    peer_type,
                }),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(proto::ServerMessage {
        content: Some(content),
    })
}

/// One batch body of the notifications of `events` (see `to_notification`),
/// or None when one of them has no such form.
pub fn to_body(events: &[Event]) -> Option<Vec<u8>> {
    use prost::Message as _;
    let notifications = events.iter().map(to_notification).collect::<Option<_>>()?;
    Some(
        proto::ServerMessage {
            content: Some(proto::Content::NotificationBatch(sm::NotificationBatch {
                notifications,
            })),
        }
        .encode_to_vec(),
    )
}

fn peer_type(value: i32, unmapped: &mut Unmapped) -> Option<PeerType> {
    let peer_type = PeerType::from_number(value);
    if peer_type.is_none() {
        unmapped.push(("peerType", value));
    }
    peer_type
}

fn track_type(value: i32) -> Option<&'static str> {
    match value {
        0 | -1 => Some("unspecified"),
        1 => Some("video"),
        2 => Some("audio"),
        _ => None,
    }
}

fn vad_status(value: i32) -> Option<&'static str> {
    match value {
        // The JS SDK names an unspecified status "silence".
        -1..=1 => Some("silence"),
        2 => Some("speech"),
        _ => None,
    }
}

fn recording_status(value: i32) -> Option<&'static str> {
    // The SDKs throw on 0 and on unknown numbers; the bridge keeps the event.
    match value {
        1 => Some("active"),
        2 => Some("finished"),
        3 => Some("available"),
        4 => Some("failed"),
        _ => None,
    }
}

fn mapped(
    name: Option<&'static str>,
    path: &'static str,
    value: i32,
    unmapped: &mut Unmapped,
) -> Option<&'static str> {
    if name.is_none() {
        unmapped.push((path, value));
    }
    name
}

fn track(t: proto::notifications::Track, path: &'static str, unmapped: &mut Unmapped) -> Track {
    Track {
        track_type: mapped(track_type(t.r#type), path, t.r#type, unmapped),
        id: t.id,
        metadata: t.metadata,
    }
}

// Each message has its own generated `EndpointInfo` type with the same two
// members; one small function per type keeps the call sites plain.
macro_rules! endpoint_fn {
    ($name:ident, $module:ident) => {
        fn $name(info: Option<sm::$module::EndpointInfo>) -> (Option<String>, Option<String>) {
            match info {
                Some(sm::$module::EndpointInfo::PeerId(id)) => (Some(id), None),
                Some(sm::$module::EndpointInfo::ComponentId(id)) => (None, Some(id)),
                None => (None, None),
            }
        }
    };
}

endpoint_fn!(endpoint_track_added, track_added);
endpoint_fn!(endpoint_track_removed, track_removed);
endpoint_fn!(endpoint_track_metadata, track_metadata_updated);
endpoint_fn!(endpoint_channel_added, channel_added);
endpoint_fn!(endpoint_channel_removed, channel_removed);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::proto::server_message::{
        NotificationBatch, RecordingStatusChanged, RoomCreated,
    };
    use crate::core::proto::ServerMessage;
    use prost::Message;

    fn message(content: proto::Content) -> ServerMessage {
        ServerMessage {
            content: Some(content),
        }
    }

    #[test]
    fn an_unknown_recording_status_keeps_its_siblings() {
        // The SDKs throw for this whole body; the bridge publishes all three.
        let body = message(proto::Content::NotificationBatch(NotificationBatch {
            notifications: vec![
                message(proto::Content::RoomCreated(RoomCreated {
                    room_id: "r1".into(),
                })),
                message(proto::Content::RecordingStatusChanged(
                    RecordingStatusChanged {
                        recording_id: "rec".into(),
                        status: 9,
                        metadata: "{}".into(),
                    },
                )),
                message(proto::Content::RoomCreated(RoomCreated {
                    room_id: "r2".into(),
                })),
            ],
        }))
        .encode_to_vec();
        let origin = Origin {
            source: Source::Webhook,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("test"),
            id_seed: 0,
        };
        let normalized = normalize_body(&body, &origin).unwrap();
        let types: Vec<&str> = normalized
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        assert_eq!(
            types,
            ["roomCreated", "recordingStatusChanged", "roomCreated"]
        );
        assert_eq!(normalized.events[1].unmapped_enums, vec![("status", 9)]);
        let json: serde_json::Value =
            serde_json::from_slice(&normalized.events[1].to_json()).unwrap();
        assert!(json["data"].get("status").is_none());
        assert_eq!(json["unmapped_enums"]["status"], 9);
    }
}
