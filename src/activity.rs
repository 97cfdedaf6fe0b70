//! Room activity for dashboards: counts of room and peer lifecycle events,
//! and the rooms and connected peers the bridge knows of, derived from the
//! events it publishes (after deduplication, so each notification counts
//! once).
//!
//! What is known is what the bridge saw since it started: a room appears
//! with `roomCreated` or with the first peer event that names it, and goes
//! with `roomDeleted` or `roomCrashed`, taking its peers along; a peer is
//! connected from `peerConnected` until `peerDisconnected`, `peerDeleted` or
//! `peerCrashed`. A restart starts from nothing. What is tracked is bounded
//! by `MAX_TRACKED` rooms and peers together; past it, new rooms and peers
//! are counted in the event counters but not in the gauges, and a warning
//! says so. No room or peer id ever becomes a label.

use std::collections::HashMap;

use crate::event::{Data, Event, EventType};
use crate::telemetry;

/// Rooms and connected peers tracked at most, together.
pub const MAX_TRACKED: usize = 1_000_000;

#[derive(Debug, Default)]
pub struct Activity {
    /// Room id to its connected peers (peer id to peer type).
    rooms: HashMap<String, HashMap<String, &'static str>>,
    /// Connected peers by peer type, for the gauge.
    connected: HashMap<&'static str, usize>,
    tracked: usize,
    full_warned: bool,
}

impl Activity {
    /// Counts `events` and updates the gauges.
    pub fn observe(&mut self, events: &[Event]) {
        let mut changed = false;
        for event in events {
            if let Some(peer_type) = lifecycle_label(event) {
                telemetry::room_event(event.event_type, peer_type);
                changed |= self.apply(event, peer_type);
            }
        }
        if changed {
            telemetry::rooms_known(self.rooms.len());
            for (peer_type, count) in &self.connected {
                telemetry::peers_connected(peer_type, *count);
            }
        }
    }

    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    pub fn connected_peers(&self) -> usize {
        self.connected.values().sum()
    }

    /// Returns whether the known state changed.
    fn apply(&mut self, event: &Event, peer_type: &'static str) -> bool {
        let Some(room_id) = event.data.room_id() else {
            return false;
        };
        match event.event_type {
            EventType::RoomCreated => self.room(room_id).is_some(),
            EventType::RoomDeleted | EventType::RoomCrashed => {
                let Some(peers) = self.rooms.remove(room_id) else {
                    return false;
                };
                self.tracked -= 1 + peers.len();
                for peer_type in peers.values() {
                    self.disconnected(peer_type);
                }
                true
            }
            EventType::PeerConnected => {
                let Some(peer_id) = event.data.peer_id() else {
                    return false;
                };
                let room = self.rooms.get(room_id);
                if room.is_some_and(|peers| peers.contains_key(peer_id)) {
                    return false;
                }
                // A room first seen here takes an entry of its own.
                if !self.has_space(if room.is_some() { 1 } else { 2 }) {
                    return false;
                }
                let Some(peers) = self.room(room_id) else {
                    return false;
                };
                peers.insert(peer_id.to_owned(), peer_type);
                self.tracked += 1;
                *self.connected.entry(peer_type).or_default() += 1;
                true
            }
            EventType::PeerDisconnected | EventType::PeerDeleted | EventType::PeerCrashed => {
                let Some(peer_id) = event.data.peer_id() else {
                    return false;
                };
                let removed = self
                    .rooms
                    .get_mut(room_id)
                    .and_then(|peers| peers.remove(peer_id));
                match removed {
                    Some(peer_type) => {
                        self.tracked -= 1;
                        self.disconnected(peer_type);
                        true
                    }
                    None => false,
                }
            }
            EventType::PeerAdded => self.room(room_id).is_some(),
            _ => false,
        }
    }

    /// The room's peers, tracking the room if it is new and there is space.
    fn room(&mut self, room_id: &str) -> Option<&mut HashMap<String, &'static str>> {
        if !self.rooms.contains_key(room_id) {
            if !self.has_space(1) {
                return None;
            }
            self.rooms.insert(room_id.to_owned(), HashMap::new());
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

    fn disconnected(&mut self, peer_type: &'static str) {
        if let Some(count) = self.connected.get_mut(peer_type) {
            *count = count.saturating_sub(1);
        }
    }
}

/// The `peer_type` label of a room or peer lifecycle event, or None for the
/// other events.
fn lifecycle_label(event: &Event) -> Option<&'static str> {
    use EventType::*;
    match event.event_type {
        RoomCreated | RoomDeleted | RoomCrashed => Some("none"),
        StreamerConnected | StreamerDisconnected => Some("streamer"),
        ViewerConnected | ViewerDisconnected => Some("viewer"),
        PeerAdded | PeerDeleted | PeerConnected | PeerDisconnected | PeerCrashed => {
            let peer_type = match &event.data {
                Data::Peer(peer) => peer.peer_type,
                Data::PeerCrashed(peer) => peer.peer_type,
                _ => None,
            };
            // An enum value the SDK cannot name is kept in the event, not here.
            Some(peer_type.unwrap_or("unknown"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::*;
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
                peer_type: Some("webrtc"),
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
