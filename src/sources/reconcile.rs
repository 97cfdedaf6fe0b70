//! Gap reconciliation: what changed in Fishjam while the notifier was not
//! listening. Fishjam does not replay notifications missed while the socket
//! was down, so after a reconnect the bridge reads the rooms from Fishjam's
//! REST API and compares them with what it knows from the events it
//! published; each difference becomes an event with source `reconciled`.
//!
//! Pure: no IO. The order follows a room's life: a new room is created, then
//! its peers added and connected; in a known room, peers that left are
//! disconnected and deleted before new ones are added; a room that vanished
//! is deleted (its peers with it, as Fishjam's own `roomDeleted` implies).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use crate::core::event::{
    new_event_id, Data, Event, EventType, PeerData, PeerType, RoomData, Source,
};
use crate::pipeline::activity::{KnownPeer, KnownRooms};
use crate::sources::fishjam::FishjamRoom;

/// The events that bring `known` to what `fishjam` says, in order.
pub fn differences(
    known: &KnownRooms,
    fishjam: &[FishjamRoom],
    fishjam_id: &Arc<str>,
    now: SystemTime,
) -> Vec<Event> {
    let mut out = Differences {
        events: Vec::new(),
        fishjam_id,
        now,
    };
    let mut present: BTreeMap<&str, &FishjamRoom> = BTreeMap::new();
    for fishjam_room in fishjam {
        present.insert(&fishjam_room.id, fishjam_room);
    }
    for (room_id, fishjam_room) in &present {
        let empty = BTreeMap::new();
        let known_peers = match known.get(*room_id) {
            Some(peers) => peers,
            None => {
                out.room(EventType::RoomCreated, room_id);
                &empty
            }
        };
        let now_peers: BTreeMap<&str, KnownPeer> = fishjam_room
            .peers
            .iter()
            .map(|p| (p.id.as_str(), known_peer(p)))
            .collect();
        out.peers_gone(room_id, known_peers, &now_peers);
        out.peers_listed(room_id, known_peers, &now_peers);
    }
    for room_id in known.keys() {
        if !present.contains_key(room_id.as_str()) {
            out.room(EventType::RoomDeleted, room_id);
        }
    }
    out.events
}

/// The reconciled events of one comparison, as they are found.
struct Differences<'a> {
    events: Vec<Event>,
    fishjam_id: &'a Arc<str>,
    now: SystemTime,
}

impl Differences<'_> {
    fn push(&mut self, event_type: EventType, data: Data) {
        self.events.push(Event {
            id: new_event_id(self.now),
            event_type,
            source: Source::Reconciled,
            received_at: self.now,
            fishjam_id: self.fishjam_id.clone(),
            data,
            unmapped_enums: Vec::new(),
        })
    }

    fn room(&mut self, event_type: EventType, room_id: &str) {
        let data = Data::Room(RoomData {
            room_id: room_id.to_owned(),
        });
        self.push(event_type, data);
    }

    fn peer(
        &mut self,
        event_type: EventType,
        room_id: &str,
        peer_id: &str,
        peer_type: Option<PeerType>,
    ) {
        let data = Data::Peer(PeerData {
            room_id: room_id.to_owned(),
            peer_id: peer_id.to_owned(),
            peer_type,
        });
        self.push(event_type, data);
    }

    /// Peers known in the room that Fishjam no longer lists: disconnected
    /// (when they were connected), then deleted.
    fn peers_gone(
        &mut self,
        room_id: &str,
        known_peers: &BTreeMap<String, KnownPeer>,
        now_peers: &BTreeMap<&str, KnownPeer>,
    ) {
        for (peer_id, was) in known_peers {
            if now_peers.contains_key(peer_id.as_str()) {
                continue;
            }
            if was.connected {
                self.peer(EventType::PeerDisconnected, room_id, peer_id, was.peer_type);
            }
            self.peer(EventType::PeerDeleted, room_id, peer_id, was.peer_type);
        }
    }

    /// Peers Fishjam lists in the room: added when they are new, then
    /// connected or disconnected when that changed.
    fn peers_listed(
        &mut self,
        room_id: &str,
        known_peers: &BTreeMap<String, KnownPeer>,
        now_peers: &BTreeMap<&str, KnownPeer>,
    ) {
        for (peer_id, is) in now_peers {
            let was = known_peers.get(*peer_id);
            if was.is_none() {
                self.peer(EventType::PeerAdded, room_id, peer_id, is.peer_type);
            }
            let was_connected = was.is_some_and(|w| w.connected);
            if is.connected && !was_connected {
                self.peer(EventType::PeerConnected, room_id, peer_id, is.peer_type);
            } else if !is.connected && was_connected {
                self.peer(EventType::PeerDisconnected, room_id, peer_id, is.peer_type);
            }
        }
    }
}

/// Fishjam's rooms as the bridge keeps what it knows.
pub fn known_from(fishjam: &[FishjamRoom]) -> KnownRooms {
    fishjam
        .iter()
        .map(|room| {
            let peers = room
                .peers
                .iter()
                .map(|p| (p.id.clone(), known_peer(p)))
                .collect();
            (room.id.clone(), peers)
        })
        .collect()
}

fn known_peer(peer: &crate::sources::fishjam::FishjamPeer) -> KnownPeer {
    KnownPeer {
        peer_type: peer_type(peer.peer_type.as_deref()),
        connected: peer.status.as_deref() == Some("connected"),
    }
}

/// The REST API's peer type (`webrtc`, `agent`, `vapi`); anything else is
/// unspecified.
fn peer_type(name: Option<&str>) -> Option<PeerType> {
    Some(
        name.and_then(PeerType::from_name)
            .unwrap_or(PeerType::Unspecified),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::fishjam::FishjamPeer;

    #[test]
    fn reconciled_events_normalize_back_from_their_notifications() {
        let known = [(
            "gone".to_owned(),
            [(
                "p0".to_owned(),
                KnownPeer {
                    peer_type: Some(PeerType::Agent),
                    connected: true,
                },
            )]
            .into_iter()
            .collect(),
        )]
        .into_iter()
        .collect();
        let fishjam = [FishjamRoom {
            id: "new".to_owned(),
            peers: ["webrtc", "vapi", "odd"]
                .iter()
                .enumerate()
                .map(|(i, t)| FishjamPeer {
                    id: format!("p{i}"),
                    peer_type: Some((*t).to_owned()),
                    status: Some("connected".to_owned()),
                })
                .collect(),
        }];
        let id: Arc<str> = Arc::from("test");
        let events = differences(&known, &fishjam, &id, SystemTime::now());
        assert!(events.len() >= 8, "{events:?}");
        let origin = crate::core::normalize::Origin::now(Source::Reconciled, id);
        for event in &events {
            let body = crate::core::normalize::to_body(std::slice::from_ref(event))
                .expect("every reconciled event");
            let back = crate::core::normalize::normalize_body(&body, &origin)
                .unwrap()
                .events;
            assert_eq!(back.len(), 1);
            assert_eq!(
                (back[0].event_type, &back[0].data),
                (event.event_type, &event.data)
            );
        }
    }

    fn known(rooms: &[(&str, &[(&str, bool)])]) -> KnownRooms {
        rooms
            .iter()
            .map(|(room, peers)| {
                let peers = peers
                    .iter()
                    .map(|(id, connected)| {
                        let peer = KnownPeer {
                            peer_type: Some(PeerType::Webrtc),
                            connected: *connected,
                        };
                        (id.to_string(), peer)
                    })
                    .collect();
                (room.to_string(), peers)
            })
            .collect()
    }

    fn fishjam(rooms: &[(&str, &[(&str, bool)])]) -> Vec<FishjamRoom> {
        rooms
            .iter()
            .map(|(room, peers)| FishjamRoom {
                id: room.to_string(),
                peers: peers
                    .iter()
                    .map(|(id, connected)| FishjamPeer {
                        id: id.to_string(),
                        peer_type: Some("webrtc".to_owned()),
                        status: Some(
                            if *connected {
                                "connected"
                            } else {
                                "disconnected"
                            }
                            .to_owned(),
                        ),
                    })
                    .collect(),
            })
            .collect()
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let peer = e
                    .data
                    .peer_id()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default();
                format!(
                    "{} {}{peer}",
                    e.event_type.as_str(),
                    e.data.room_id().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn each_change_becomes_one_reconciled_event() {
        let before = known(&[
            ("a", &[("p1", false), ("p2", true), ("p3", true)]),
            ("b", &[("p4", true)]),
        ]);
        let after = fishjam(&[
            // p1 connected, p2 left, p3 unchanged, p5 joined.
            ("a", &[("p1", true), ("p3", true), ("p5", true)]),
            ("c", &[("p6", false)]),
        ]);
        let id: Arc<str> = Arc::from("f");
        let events = differences(&before, &after, &id, SystemTime::now());
        assert_eq!(
            names(&events),
            [
                "peerDisconnected a p2",
                "peerDeleted a p2",
                "peerConnected a p1",
                "peerAdded a p5",
                "peerConnected a p5",
                "roomCreated c",
                "peerAdded c p6",
                "roomDeleted b",
            ]
        );
        assert!(events.iter().all(|e| e.source == Source::Reconciled));
    }

    #[test]
    fn no_change_no_event() {
        let same = [("a", &[("p1", true)][..])];
        let id: Arc<str> = Arc::from("f");
        assert!(differences(&known(&same), &fishjam(&same), &id, SystemTime::now()).is_empty());
    }
}
