//! Realistic, deterministic notification streams.
//!
//! A `Scenario` keeps a number of rooms (and now and then a livestream) alive
//! at once. Each room plays a whole life as Fishjam reports it: created, peers
//! added and connected, tracks, voice activity, metadata updates, now and then
//! a channel, a forwarding, a recording or a crash, then everything torn down
//! and the room deleted; a new room takes its place. Scripts are interleaved
//! at random, so rooms overlap as in production. The same seed always gives
//! the same stream. Metadata strings carry `seq`, the message's position in
//! its key's script, so consumers can check per-room order.

use std::collections::VecDeque;

use crate::core::proto::notifications::Track;
use crate::core::proto::server_message::{self as sm, PeerType};
use crate::core::proto::{Content, ServerMessage};

/// A small, fast generator with a fixed algorithm (SplitMix64), so a seed
/// gives the same stream whatever the versions of other crates.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A random version-4 UUID string.
    pub fn uuid(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

/// An endless, interleaved stream of notifications over `rooms` live rooms.
#[derive(Debug)]
pub struct Scenario {
    rng: Rng,
    rooms: usize,
    scripts: Vec<VecDeque<ServerMessage>>,
}

impl Scenario {
    pub fn new(seed: u64, rooms: usize) -> Scenario {
        Scenario {
            rng: Rng::new(seed),
            rooms: rooms.max(1),
            scripts: Vec::new(),
        }
    }
}

impl Iterator for Scenario {
    type Item = ServerMessage;

    fn next(&mut self) -> Option<ServerMessage> {
        while self.scripts.len() < self.rooms {
            let script = if self.rng.chance(15) {
                stream_script(&mut self.rng)
            } else {
                room_script(&mut self.rng)
            };
            self.scripts.push(script.into());
        }
        let index = self.rng.below(self.scripts.len() as u64) as usize;
        let message = self.scripts[index]
            .pop_front()
            .expect("scripts are never empty while listed");
        if self.scripts[index].is_empty() {
            self.scripts.swap_remove(index);
        }
        Some(message)
    }
}

fn message(content: Content) -> ServerMessage {
    ServerMessage {
        content: Some(content),
    }
}

const NAMES: &[&str] = &["Ala", "Bartek", "Chen", "Dalia", "Emeka", "Freya", "Goran"];
const ROLES: &[&str] = &["host", "guest", "moderator", "agent"];

struct Peer {
    id: String,
    peer_type: i32,
    tracks: Vec<Track>,
}

fn room_script(rng: &mut Rng) -> Vec<ServerMessage> {
    let mut script = RoomScript::create(rng);
    let mut peers = script.add_peers();
    for peer in &mut peers {
        script.connect_peer(peer);
        script.publish_tracks(peer);
    }
    // The middle of the meeting: voice activity and the odd update.
    script.talk(&mut peers);
    if script.rng.chance(20) {
        script.open_and_close_channel(&peers[0]);
    }
    if script.rng.chance(10) {
        script.forward_tracks(&peers[0]);
    }
    if script.rng.chance(10) {
        script.record();
    }
    script.end(&peers)
}

/// One room's script as it is written: its messages so far and the `seq`
/// of the last one that counts in the room's order.
struct RoomScript<'a> {
    rng: &'a mut Rng,
    room_id: String,
    out: Vec<ServerMessage>,
    seq: u64,
}

impl RoomScript<'_> {
    /// A new room's script, opening with `roomCreated`.
    fn create(rng: &mut Rng) -> RoomScript<'_> {
        let room_id = rng.uuid();
        let mut script = RoomScript {
            rng,
            room_id,
            out: Vec::new(),
            seq: 0,
        };
        script.push(Content::RoomCreated(sm::RoomCreated {
            room_id: script.room_id.clone(),
        }));
        script.next_seq();
        script
    }

    fn push(&mut self, content: Content) {
        self.out.push(message(content));
    }

    /// Counts one more message of the room and returns its `seq`.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// One to four peers, added; now and then an agent.
    fn add_peers(&mut self) -> Vec<Peer> {
        let peer_count = 1 + self.rng.below(4);
        let mut peers = Vec::new();
        for _ in 0..peer_count {
            let peer_type = if self.rng.chance(20) {
                PeerType::Agent
            } else {
                PeerType::Webrtc
            } as i32;
            let peer = Peer {
                id: self.rng.uuid(),
                peer_type,
                tracks: Vec::new(),
            };
            self.push(Content::PeerAdded(sm::PeerAdded {
                room_id: self.room_id.clone(),
                peer_id: peer.id.clone(),
                peer_type,
            }));
            self.next_seq();
            peers.push(peer);
        }
        peers
    }

    /// The peer connects and sets its metadata: a name and a role.
    fn connect_peer(&mut self, peer: &Peer) {
        self.push(Content::PeerConnected(sm::PeerConnected {
            room_id: self.room_id.clone(),
            peer_id: peer.id.clone(),
            peer_type: peer.peer_type,
        }));
        self.next_seq();
        let name = NAMES[self.rng.below(NAMES.len() as u64) as usize];
        let role = ROLES[self.rng.below(ROLES.len() as u64) as usize];
        let metadata = format!(
            r#"{{"name":"{name}","role":"{role}","seq":{}}}"#,
            self.next_seq()
        );
        self.push(Content::PeerMetadataUpdated(sm::PeerMetadataUpdated {
            room_id: self.room_id.clone(),
            peer_id: peer.id.clone(),
            metadata,
            peer_type: peer.peer_type,
        }));
    }

    /// The peer's microphone, and often its camera: the audio track first.
    fn publish_tracks(&mut self, peer: &mut Peer) {
        let kinds: &[(i32, &str)] = if self.rng.chance(60) {
            &[(2, "microphone"), (1, "camera")]
        } else {
            &[(2, "microphone")]
        };
        for &(track_type, source) in kinds {
            let track = Track {
                id: format!("{}:{}", peer.id, self.rng.uuid()),
                r#type: track_type,
                metadata: format!(
                    r#"{{"source":"{source}","paused":false,"seq":{}}}"#,
                    self.next_seq()
                ),
            };
            self.push(Content::TrackAdded(sm::TrackAdded {
                room_id: self.room_id.clone(),
                endpoint_info: Some(sm::track_added::EndpointInfo::PeerId(peer.id.clone())),
                track: Some(track.clone()),
            }));
            peer.tracks.push(track);
        }
    }

    /// Peers taking turns to speak, now and then pausing a track.
    fn talk(&mut self, peers: &mut [Peer]) {
        let talk = 2 + self.rng.below(10);
        for _ in 0..talk {
            let index = self.rng.below(peers.len() as u64) as usize;
            let peer = &mut peers[index];
            let audio = peer.tracks[0].id.clone();
            for status in [2, 1] {
                self.push(Content::VadNotification(sm::VadNotification {
                    room_id: self.room_id.clone(),
                    peer_id: peer.id.clone(),
                    track_id: audio.clone(),
                    status,
                }));
                self.next_seq();
            }
            if self.rng.chance(20) {
                self.pause_track(peer);
            }
        }
    }

    fn pause_track(&mut self, peer: &mut Peer) {
        let index = self.rng.below(peer.tracks.len() as u64) as usize;
        let track = &mut peer.tracks[index];
        track.metadata = format!(r#"{{"paused":true,"seq":{}}}"#, self.next_seq());
        self.push(Content::TrackMetadataUpdated(sm::TrackMetadataUpdated {
            room_id: self.room_id.clone(),
            endpoint_info: Some(sm::track_metadata_updated::EndpointInfo::PeerId(
                peer.id.clone(),
            )),
            track: Some(track.clone()),
        }));
    }

    fn open_and_close_channel(&mut self, peer: &Peer) {
        let channel_id = self.rng.uuid();
        self.push(Content::ChannelAdded(sm::ChannelAdded {
            room_id: self.room_id.clone(),
            endpoint_info: Some(sm::channel_added::EndpointInfo::PeerId(peer.id.clone())),
            channel_id: channel_id.clone(),
        }));
        self.push(Content::ChannelRemoved(sm::ChannelRemoved {
            room_id: self.room_id.clone(),
            endpoint_info: Some(sm::channel_removed::EndpointInfo::PeerId(peer.id.clone())),
            channel_id,
        }));
        self.next_seq();
        self.next_seq();
    }

    /// The peer's tracks forwarded to a composition, then no longer.
    fn forward_tracks(&mut self, peer: &Peer) {
        let composition_url = format!("https://composition.example.test/{}", self.rng.uuid());
        let input_id = format!("input-{:08x}", self.rng.next_u64() as u32);
        self.push(Content::TrackForwarding(sm::TrackForwarding {
            room_id: self.room_id.clone(),
            peer_id: peer.id.clone(),
            composition_url: composition_url.clone(),
            input_id: input_id.clone(),
            audio_track: peer.tracks.first().cloned(),
            video_track: peer.tracks.get(1).cloned(),
        }));
        self.push(Content::TrackForwardingRemoved(
            sm::TrackForwardingRemoved {
                room_id: self.room_id.clone(),
                peer_id: peer.id.clone(),
                composition_url,
                input_id,
            },
        ));
        self.next_seq();
        self.next_seq();
    }

    /// A recording's statuses. A recording is keyed by its own id, so its
    /// messages carry their place in its script, not in the room's.
    fn record(&mut self) {
        let recording_id = self.rng.uuid();
        for (index, status) in [1, 2, 3].into_iter().enumerate() {
            self.push(Content::RecordingStatusChanged(
                sm::RecordingStatusChanged {
                    recording_id: recording_id.clone(),
                    status,
                    metadata: format!(r#"{{"room":"{}","seq":{}}}"#, self.room_id, index + 1),
                },
            ));
        }
    }

    /// The room's end, and the script: now and then the room crashes with
    /// its peers in it; otherwise every peer leaves and the room is deleted.
    fn end(mut self, peers: &[Peer]) -> Vec<ServerMessage> {
        let crash_room = self.rng.chance(3);
        if crash_room {
            let room_id = std::mem::take(&mut self.room_id);
            self.push(Content::RoomCrashed(sm::RoomCrashed { room_id }));
        } else {
            for peer in peers {
                self.leave(peer);
            }
            let room_id = std::mem::take(&mut self.room_id);
            self.push(Content::RoomDeleted(sm::RoomDeleted { room_id }));
        }
        self.out
    }

    /// The peer's tracks removed, then the peer disconnected (now and then
    /// crashed) and deleted.
    fn leave(&mut self, peer: &Peer) {
        for track in &peer.tracks {
            self.push(Content::TrackRemoved(sm::TrackRemoved {
                room_id: self.room_id.clone(),
                endpoint_info: Some(sm::track_removed::EndpointInfo::PeerId(peer.id.clone())),
                track: Some(track.clone()),
            }));
            self.next_seq();
        }
        if self.rng.chance(5) {
            self.push(Content::PeerCrashed(sm::PeerCrashed {
                room_id: self.room_id.clone(),
                peer_id: peer.id.clone(),
                reason: "ICE connection failed".to_owned(),
                peer_type: peer.peer_type,
            }));
        } else {
            self.push(Content::PeerDisconnected(sm::PeerDisconnected {
                room_id: self.room_id.clone(),
                peer_id: peer.id.clone(),
                peer_type: peer.peer_type,
            }));
        }
        self.push(Content::PeerDeleted(sm::PeerDeleted {
            room_id: self.room_id.clone(),
            peer_id: peer.id.clone(),
            peer_type: peer.peer_type,
        }));
        self.next_seq();
        self.next_seq();
    }
}

fn stream_script(rng: &mut Rng) -> Vec<ServerMessage> {
    let stream_id = rng.uuid();
    let streamer_id = rng.uuid();
    let mut out = vec![message(Content::StreamerConnected(sm::StreamerConnected {
        stream_id: stream_id.clone(),
        streamer_id: streamer_id.clone(),
    }))];
    let viewers: Vec<String> = (0..1 + rng.below(5)).map(|_| rng.uuid()).collect();
    for viewer_id in &viewers {
        out.push(message(Content::ViewerConnected(sm::ViewerConnected {
            stream_id: stream_id.clone(),
            viewer_id: viewer_id.clone(),
        })));
    }
    for viewer_id in viewers {
        out.push(message(Content::ViewerDisconnected(
            sm::ViewerDisconnected {
                stream_id: stream_id.clone(),
                viewer_id,
            },
        )));
    }
    out.push(message(Content::StreamerDisconnected(
        sm::StreamerDisconnected {
            stream_id,
            streamer_id,
        },
    )));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<_> = Scenario::new(7, 5).take(500).collect();
        let b: Vec<_> = Scenario::new(7, 5).take(500).collect();
        let c: Vec<_> = Scenario::new(8, 5).take(500).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rooms_live_whole_lives() {
        use std::collections::HashSet;
        let mut open = HashSet::new();
        let mut deleted = 0;
        for message in Scenario::new(1, 3).take(5_000) {
            match message.content.unwrap() {
                Content::RoomCreated(m) => assert!(open.insert(m.room_id)),
                Content::RoomDeleted(sm::RoomDeleted { room_id })
                | Content::RoomCrashed(sm::RoomCrashed { room_id }) => {
                    assert!(
                        open.remove(&room_id),
                        "a room ends once, after it was created"
                    );
                    deleted += 1;
                }
                _ => {}
            }
        }
        assert!(deleted > 10);
        assert!(open.len() <= 3);
    }
}
