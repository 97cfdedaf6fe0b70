//! Room activity: counts of room and peer lifecycle events for dashboards,
//! and the rooms, their peers and whether each is connected, as known from
//! the events the bridge publishes (after deduplication, so each
//! notification counts once). The notifier's reconciliation compares this
//! with Fishjam's own view after a gap.
//!
//! What is known is what the bridge saw since it started: a room appears
//! with `roomCreated` or with the first peer event that names it, and goes
//! with `roomDeleted` or `roomCrashed`, taking its peers along; a peer is
//! known from `peerAdded` (or `peerConnected`) until `peerDeleted` or
//! `peerCrashed`, and connected from `peerConnected` until
//! `peerDisconnected`. A restart starts from nothing. What is tracked is bounded
//! by `MAX_TRACKED` rooms and peers together; past it, new rooms and peers
//! are counted in the event counters but not in the gauges, and a warning
//! says so. No room or peer id ever becomes a label.

use std::collections::BTreeMap;

// foldhash, not the standard SipHash: every room and peer event looks its
// room up here, and the ids come from Fishjam, not from an attacker.
use foldhash::HashMap;

use crate::core::event::{Data, Event, EventType, PeerType};
use crate::telemetry::{self, PeerTypeLabel};

/// Rooms and connected peers tracked at most, together.
pub const MAX_TRACKED: usize = 1_000_000;

/// A peer as known from events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownPeer {
    /// None for a value this version cannot name.
    pub peer_type: Option<PeerType>,
    pub connected: bool,
}

/// The `peer_type` label of a peer: its type, or `unknown`.
fn peer_label(peer_type: Option<PeerType>) -> PeerTypeLabel {
    peer_type.map_or(PeerTypeLabel::Unknown, PeerTypeLabel::Peer)
}

/// Room id to its peers (peer id to what is known of it), sorted.
pub type KnownRooms = BTreeMap<String, BTreeMap<String, KnownPeer>>;

#[derive(Debug, Default)]
pub struct Activity {
    /// Room id to its peers.
    rooms: HashMap<String, HashMap<String, KnownPeer>>,
    /// Connected peers by peer type, for the gauge.
    connected: HashMap<PeerTypeLabel, usize>,
    tracked: usize,
    full_warned: bool,
}

impl Activity {
    /// Counts `events` and updates the gauges.
    pub fn observe<'a>(&mut self, events: impl IntoIterator<Item = &'a Event>) {
        let mut changed = false;
        // Counted once per body and label pair, not once per event.
        let mut counts: Vec<(EventType, PeerTypeLabel, u64)> = Vec::new();
        for event in events {
            if let Some(label) = lifecycle_label(event) {
                match counts
                    .iter_mut()
                    .find(|(t, p, _)| *t == event.event_type && *p == label)
                {
                    Some((_, _, count)) => *count += 1,
                    None => counts.push((event.event_type, label, 1)),
                }
                changed |= self.apply(event, event_peer_type(event));
            }
        }
        for (event_type, peer_type, count) in counts {
            telemetry::room_events(event_type, peer_type, count);
        }
        if changed {
            self.report();
        }
    }

    fn report(&self) {
        telemetry::rooms_known(self.rooms.len());
        for (peer_type, count) in &self.connected {
            telemetry::peers_connected(*peer_type, *count);
        }
    }

    #[cfg(test)]
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    #[cfg(test)]
    pub fn connected_peers(&self) -> usize {
        self.connected.values().sum()
    }

    /// Learns rooms and peers known from elsewhere (Fishjam's REST API at
    /// start-up) without counting events; what is known already stays.
    pub fn learn(&mut self, rooms: KnownRooms) {
        for (room_id, peers) in rooms {
            if self.rooms.contains_key(&room_id) || !self.has_space(1 + peers.len()) {
                continue;
            }
            self.tracked += 1 + peers.len();
            for peer in peers.values().filter(|p| p.connected) {
                *self
                    .connected
                    .entry(peer_label(peer.peer_type))
                    .or_default() += 1;
            }
            self.rooms.insert(room_id, peers.into_iter().collect());
        }
        self.report();
    }

    /// Everything known now.
    pub fn snapshot(&self) -> KnownRooms {
        self.rooms
            .iter()
            .map(|(room, peers)| {
                let peers = peers.iter().map(|(id, peer)| (id.clone(), *peer)).collect();
                (room.clone(), peers)
            })
            .collect()
    }

    /// Returns whether the known state changed.
    fn apply(&mut self, event: &Event, peer_type: Option<PeerType>) -> bool {
        let Some(room_id) = event.data.room_id() else {
            return false;
        };
        let peer_id = event.data.peer_id();
        match event.event_type {
            EventType::RoomCreated => self.room(room_id).is_some(),
            EventType::RoomDeleted | EventType::RoomCrashed => self.room_ended(room_id),
            EventType::PeerAdded | EventType::PeerConnected => peer_id.is_some_and(|peer_id| {
                let connect = event.event_type == EventType::PeerConnected;
                self.peer_arrived(room_id, peer_id, peer_type, connect)
            }),
            EventType::PeerDisconnected => {
                peer_id.is_some_and(|peer_id| self.peer_disconnected(room_id, peer_id))
            }
            EventType::PeerDeleted | EventType::PeerCrashed => {
                peer_id.is_some_and(|peer_id| self.peer_left(room_id, peer_id))
            }
            // Streams and everything inside a peer leave rooms and peers as
            // they are.
            EventType::StreamerConnected
            | EventType::StreamerDisconnected
            | EventType::ViewerConnected
            | EventType::ViewerDisconnected
            | EventType::PeerMetadataUpdated
            | EventType::TrackAdded
            | EventType::TrackRemoved
            | EventType::TrackMetadataUpdated
            | EventType::TrackForwarding
            | EventType::TrackForwardingRemoved
            | EventType::VadNotification
            | EventType::ChannelAdded
            | EventType::ChannelRemoved
            | EventType::RecordingStatusChanged => false,
        }
    }

    /// The room and its peers are gone. Returns whether it was known.
    fn room_ended(&mut self, room_id: &str) -> bool {
        let Some(peers) = self.rooms.remove(room_id) else {
            return false;
        };
        self.tracked -= 1 + peers.len();
        for peer in peers.values().filter(|p| p.connected) {
            self.disconnected(peer.peer_type);
        }
        true
    }

    /// A peer was added (`connect` false) or connected (`connect` true):
    /// a new peer is tracked, a known one marked connected. Returns whether
    /// the known state changed.
    fn peer_arrived(
        &mut self,
        room_id: &str,
        peer_id: &str,
        peer_type: Option<PeerType>,
        connect: bool,
    ) -> bool {
        if let Some(peer) = self
            .rooms
            .get_mut(room_id)
            .and_then(|peers| peers.get_mut(peer_id))
        {
            if !connect || peer.connected {
                return false;
            }
            peer.connected = true;
            *self.connected.entry(peer_label(peer_type)).or_default() += 1;
            return true;
        }
        // A room first seen here takes an entry of its own.
        let new_room = !self.rooms.contains_key(room_id);
        if !self.has_space(if new_room { 2 } else { 1 }) {
            return false;
        }
        let Some(peers) = self.room(room_id) else {
            return false;
        };
        peers.insert(
            peer_id.to_owned(),
            KnownPeer {
                peer_type,
                connected: connect,
            },
        );
        self.tracked += 1;
        if connect {
            *self.connected.entry(peer_label(peer_type)).or_default() += 1;
        }
        true
    }

    /// Returns whether a known, connected peer was marked disconnected.
    fn peer_disconnected(&mut self, room_id: &str, peer_id: &str) -> bool {
        let peer = self
            .rooms
            .get_mut(room_id)
            .and_then(|peers| peers.get_mut(peer_id));
        match peer {
            Some(peer) if peer.connected => {
                peer.connected = false;
                let peer_type = peer.peer_type;
                self.disconnected(peer_type);
                true
            }
            _ => false,
        }
    }

    /// The peer was deleted or crashed. Returns whether it was known.
    fn peer_left(&mut self, room_id: &str, peer_id: &str) -> bool {
        let removed = self
            .rooms
            .get_mut(room_id)
            .and_then(|peers| peers.remove(peer_id));
        match removed {
            Some(peer) => {
                self.tracked -= 1;
                if peer.connected {
                    self.disconnected(peer.peer_type);
                }
                true
            }
            None => false,
        }
    }

    /// The room's peers, tracking the room if it is new and there is space.
    fn room(&mut self, room_id: &str) -> Option<&mut HashMap<String, KnownPeer>> {
        if !self.rooms.contains_key(room_id) {
            if !self.has_space(1) {
                return None;
            }
            self.rooms.insert(room_id.to_owned(), HashMap::default());
            self.tracked += 1;
        }
        self.rooms.get_mut(room_id)
    }

    fn has_space(&mut self, entries: usize) -> bool {
        if self.tracked + entries <= MAX_TRACKED {
            return true;
        }
        if !self.full_warned {
            tracing::warn!(
                limit = MAX_TRACKED,
                "room activity tracks its maximum of rooms and peers; the rooms and peers gauges undercount"
            );
            self.full_warned = true;
        }
        false
    }

    fn disconnected(&mut self, peer_type: Option<PeerType>) {
        if let Some(count) = self.connected.get_mut(&peer_label(peer_type)) {
            *count = count.saturating_sub(1);
        }
    }
}

/// The `peer_type` label of a room or peer lifecycle event, or None for the
/// other events.
fn lifecycle_label(event: &Event) -> Option<PeerTypeLabel> {
    use EventType::*;
    match event.event_type {
        RoomCreated | RoomDeleted | RoomCrashed => Some(PeerTypeLabel::None),
        StreamerConnected | StreamerDisconnected => Some(PeerTypeLabel::Streamer),
        ViewerConnected | ViewerDisconnected => Some(PeerTypeLabel::Viewer),
        // An enum value the SDK cannot name is kept in the event, not here.
        PeerAdded | PeerDeleted | PeerConnected | PeerDisconnected | PeerCrashed => {
            Some(peer_label(event_peer_type(event)))
        }
        PeerMetadataUpdated
        | TrackAdded
        | TrackRemoved
        | TrackMetadataUpdated
        | TrackForwarding
        | TrackForwardingRemoved
        | VadNotification
        | ChannelAdded
        | ChannelRemoved
        | RecordingStatusChanged => None,
    }
}

/// The peer type a peer lifecycle event carries.
fn event_peer_type(event: &Event) -> Option<PeerType> {
    match &event.data {
        Data::Peer(peer) => peer.peer_type,
        Data::PeerCrashed(peer) => peer.peer_type,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::*;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn event(event_type: EventType, room: &str, peer: Option<&str>) -> Event {
        let data = match peer {
            None => Data::Room(RoomData {
                room_id: room.to_owned(),
            }),
            Some(peer) => Data::Peer(PeerData {
                room_id: room.to_owned(),
                peer_id: peer.to_owned(),
                peer_type: Some(PeerType::Webrtc),
            }),
        };
        Event {
            id: new_event_id(SystemTime::now()),
            event_type,
            source: Source::Notifier,
            received_at: SystemTime::now(),
            fishjam_id: Arc::from("test"),
            data,
            unmapped_enums: Vec::new(),
        }
    }

    #[test]
    fn rooms_and_connected_peers_follow_the_events() {
        use EventType::*;
        let mut activity = Activity::default();
        activity.observe(&[
            event(RoomCreated, "r1", None),
            event(PeerAdded, "r1", Some("p1")),
            event(PeerConnected, "r1", Some("p1")),
            event(PeerConnected, "r1", Some("p2")),
            // A room first seen through a peer event.
            event(PeerConnected, "r2", Some("p3")),
        ]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (2, 3));
        // Connected twice (both sources, or a replay) counts once.
        activity.observe(&[event(PeerConnected, "r1", Some("p1"))]);
        assert_eq!(activity.connected_peers(), 3);
        activity.observe(&[
            event(PeerDisconnected, "r1", Some("p1")),
            event(PeerDeleted, "r1", Some("p1")),
        ]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (2, 2));
        // Deleting a room takes its connected peers along.
        activity.observe(&[event(RoomDeleted, "r1", None)]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (1, 1));
        activity.observe(&[event(RoomCrashed, "r2", None)]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (0, 0));
        assert_eq!(activity.tracked, 0);
        // Events about what is not known change nothing.
        activity.observe(&[
            event(PeerDisconnected, "r9", Some("p9")),
            event(RoomDeleted, "r9", None),
        ]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (0, 0));
    }

    #[test]
    fn learned_rooms_count_and_change_with_later_events() {
        let mut activity = Activity::default();
        activity.observe(&[event(EventType::RoomCreated, "r1", None)]);
        let peer = |connected| KnownPeer {
            peer_type: Some(PeerType::Webrtc),
            connected,
        };
        let learned: KnownRooms = [
            ("r1".to_owned(), [("p9".to_owned(), peer(true))].into()),
            (
                "r2".to_owned(),
                [
                    ("p1".to_owned(), peer(true)),
                    ("p2".to_owned(), peer(false)),
                ]
                .into(),
            ),
        ]
        .into();
        activity.learn(learned);
        // r1 was known from events: it stays as it was.
        assert_eq!(activity.snapshot()["r1"].len(), 0);
        assert_eq!((activity.rooms(), activity.connected_peers()), (2, 1));
        activity.observe(&[event(EventType::PeerConnected, "r2", Some("p2"))]);
        assert_eq!(activity.connected_peers(), 2);
        activity.observe(&[event(EventType::RoomDeleted, "r2", None)]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (1, 0));
        assert_eq!(activity.tracked, 1);
    }

    #[test]
    fn tracking_is_bounded() {
        let mut activity = Activity {
            tracked: MAX_TRACKED - 1,
            ..Default::default()
        };
        activity.observe(&[
            event(EventType::RoomCreated, "r1", None),
            event(EventType::RoomCreated, "r2", None),
            event(EventType::PeerConnected, "r1", Some("p1")),
        ]);
        assert_eq!((activity.rooms(), activity.connected_peers()), (1, 0));
        assert_eq!(activity.tracked, MAX_TRACKED);
    }
}
