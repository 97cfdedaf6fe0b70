//! The simulator's REST API: the part of Fishjam's server API that a backend
//! uses to manage rooms and peers (`GET /validate`, `POST`/`GET /room`,
//! `GET`/`DELETE /room/{room_id}`, `POST /room/{room_id}/peer`,
//! `DELETE /room/{room_id}/peer/{peer_id}`), with Fishjam's paths, bodies,
//! statuses and `{"errors": ...}` error bodies, so that the official SDKs
//! work against it unchanged.
//!
//! Every change emits the notification Fishjam would (`roomCreated`,
//! `peerAdded`, `peerDeleted`, `roomDeleted`), in the order the changes
//! happened, to every subscribed notifier socket and by webhook: to the
//! room's `webhookUrl`, or else to the simulator's own webhook URL (Fishjam's
//! app-wide URL), batched when the room asked for it.
//!
//! Under `/simulator/` are the simulator's own controls: a client joining or
//! leaving with its peer token (`POST /simulator/room/{room_id}/peer/{peer_id}/connect`
//! and `.../disconnect`: `peerConnected`, `peerDisconnected`), a notifier
//! outage (`POST /simulator/notifier/down` and `.../up`), a revoked token
//! (`PUT /simulator/management-token`), and what the notifier sent
//! (`GET /simulator/stats`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::notifier::NotifierHub;
use super::webhook::{WebhookClient, WebhookTarget};
use super::ManagementToken;
use crate::core::proto::server_message as sm;
use crate::core::proto::{Content, ServerMessage};

/// The simulated Fishjam's rooms, shared by the REST handlers.
#[derive(Clone)]
pub struct RestApi {
    inner: Arc<Inner>,
}

struct Inner {
    token: ManagementToken,
    hub: NotifierHub,
    rooms: Mutex<BTreeMap<String, Room>>,
    /// Notifications in the order the changes happened, to `deliver`.
    outbox: mpsc::UnboundedSender<Outgoing>,
}

struct Outgoing {
    message: ServerMessage,
    /// The room's own webhook URL and whether it batches.
    webhook: Option<(String, bool)>,
}

struct Room {
    id: String,
    config: RoomConfig,
    /// In the order they were added.
    peers: Vec<Peer>,
}

struct Peer {
    id: String,
    peer_type: PeerKind,
    metadata: Value,
    subscribe_mode: String,
    connected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    WebRtc,
    Agent,
    Vapi,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::WebRtc => "webrtc",
            PeerKind::Agent => "agent",
            PeerKind::Vapi => "vapi",
        }
    }

    fn proto(self) -> i32 {
        match self {
            PeerKind::WebRtc => sm::PeerType::Webrtc as i32,
            PeerKind::Agent => sm::PeerType::Agent as i32,
            PeerKind::Vapi => sm::PeerType::Vapi as i32,
        }
    }
}

/// `RoomConfig` as Fishjam takes it; unknown fields are refused with 400.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RoomConfig {
    max_peers: Option<u32>,
    video_codec: Option<String>,
    webhook_url: Option<String>,
    room_type: Option<String>,
    public: Option<bool>,
    batch_webhook_notifications: Option<bool>,
}

const ROOM_TYPES: &[&str] = &[
    "conference",
    "audio_only",
    "livestream",
    "full_feature",
    "broadcaster",
    "audio_only_livestream",
];

/// A `RoomConfig` value Fishjam refuses with 400, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RoomConfigError {
    #[error("videoCodec must be h264 or vp8, not {0:?}")]
    VideoCodec(String),
    #[error("roomType {0:?} is not one of {ROOM_TYPES:?}")]
    RoomType(String),
    #[error("webhookUrl {0:?} is not a valid http(s) URL")]
    WebhookUrl(String),
}

impl RoomConfig {
    fn check(&self) -> Result<(), RoomConfigError> {
        if let Some(codec) = &self.video_codec {
            if codec != "h264" && codec != "vp8" {
                return Err(RoomConfigError::VideoCodec(codec.clone()));
            }
        }
        if let Some(kind) = &self.room_type {
            if !ROOM_TYPES.contains(&kind.as_str()) {
                return Err(RoomConfigError::RoomType(kind.clone()));
            }
        }
        if let Some(url) = &self.webhook_url {
            let valid = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !valid {
                return Err(RoomConfigError::WebhookUrl(url.clone()));
            }
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "maxPeers": self.max_peers,
            "videoCodec": self.video_codec.as_deref().unwrap_or("h264"),
            "webhookUrl": self.webhook_url,
            "roomType": self.room_type.as_deref().unwrap_or("conference"),
            "public": self.public.unwrap_or(false),
            "batchWebhookNotifications": self.batch_webhook_notifications.unwrap_or(false),
        })
    }
}

impl Room {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "config": self.config.to_json(),
            "peers": self.peers.iter().map(Peer::to_json).collect::<Vec<_>>(),
        })
    }

    fn webhook(&self) -> Option<(String, bool)> {
        let url = self.config.webhook_url.clone()?;
        Some((url, self.config.batch_webhook_notifications == Some(true)))
    }
}

impl Peer {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.peer_type.name(),
            "status": if self.connected { "connected" } else { "disconnected" },
            "metadata": self.metadata,
            "subscribeMode": self.subscribe_mode,
            "subscriptions": { "peers": [], "tracks": [] },
            "tracks": [],
        })
    }
}

/// What one room looks like from `GET /room`, for other parts of the
/// simulator and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub id: String,
    /// (peer id, connected)
    pub peers: Vec<(String, bool)>,
}

impl RestApi {
    /// A REST API whose notifications go to `hub` and by webhook: to a
    /// room's own URL, or else to `default_webhook`; signed with `secret`.
    pub fn new(
        token: ManagementToken,
        hub: NotifierHub,
        default_webhook: Option<WebhookTarget>,
        secret: Option<String>,
    ) -> RestApi {
        let (outbox, pending) = mpsc::unbounded_channel();
        tokio::spawn(deliver(pending, hub.clone(), default_webhook, secret));
        RestApi {
            inner: Arc::new(Inner {
                token,
                hub,
                rooms: Mutex::new(BTreeMap::new()),
                outbox,
            }),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/validate", get(validate))
            .route("/room", post(create_room).get(list_rooms))
            .route("/room/{room_id}", get(get_room).delete(delete_room))
            .route("/room/{room_id}/peer", post(add_peer))
            .route(
                "/room/{room_id}/peer/{peer_id}",
                axum::routing::delete(delete_peer),
            )
            .route(
                "/simulator/room/{room_id}/peer/{peer_id}/{action}",
                post(peer_action),
            )
            .route("/simulator/notifier/{state}", post(notifier_state))
            .route("/simulator/stats", get(stats))
            .route(
                "/simulator/management-token",
                axum::routing::put(replace_token),
            )
            .with_state(self.clone())
    }

    /// Keeps the rooms in step with a notification the simulator played
    /// (not caused by a REST call), so that `GET /room` shows what the
    /// notifications said.
    pub fn observe(&self, message: &ServerMessage) {
        let mut rooms = self.lock();
        let peer = |peer_id: &str, peer_type: i32| Peer {
            id: peer_id.to_owned(),
            peer_type: match sm::PeerType::try_from(peer_type) {
                Ok(sm::PeerType::Agent) => PeerKind::Agent,
                Ok(sm::PeerType::Vapi) => PeerKind::Vapi,
                _ => PeerKind::WebRtc,
            },
            metadata: Value::Null,
            subscribe_mode: "auto".to_owned(),
            connected: false,
        };
        match &message.content {
            Some(Content::RoomCreated(m)) => {
                rooms.entry(m.room_id.clone()).or_insert_with(|| Room {
                    id: m.room_id.clone(),
                    config: RoomConfig::default(),
                    peers: Vec::new(),
                });
            }
            Some(Content::RoomDeleted(sm::RoomDeleted { room_id }))
            | Some(Content::RoomCrashed(sm::RoomCrashed { room_id })) => {
                rooms.remove(room_id);
            }
            Some(Content::PeerAdded(m)) => {
                if let Some(room) = rooms.get_mut(&m.room_id) {
                    room.peers.push(peer(&m.peer_id, m.peer_type));
                }
            }
            Some(Content::PeerConnected(m)) => {
                if let Some(room) = rooms.get_mut(&m.room_id) {
                    match room.peers.iter_mut().find(|p| p.id == m.peer_id) {
                        Some(found) => found.connected = true,
                        None => {
                            let mut new = peer(&m.peer_id, m.peer_type);
                            new.connected = true;
                            room.peers.push(new);
                        }
                    }
                }
            }
            Some(Content::PeerDisconnected(m)) => {
                if let Some(room) = rooms.get_mut(&m.room_id) {
                    if let Some(found) = room.peers.iter_mut().find(|p| p.id == m.peer_id) {
                        found.connected = false;
                    }
                }
            }
            Some(Content::PeerDeleted(sm::PeerDeleted {
                room_id, peer_id, ..
            }))
            | Some(Content::PeerCrashed(sm::PeerCrashed {
                room_id, peer_id, ..
            })) => {
                if let Some(room) = rooms.get_mut(room_id) {
                    room.peers.retain(|p| &p.id != peer_id);
                }
            }
            _ => {}
        }
    }

    /// The rooms and their peers now.
    pub fn rooms(&self) -> Vec<RoomState> {
        self.lock()
            .values()
            .map(|room| RoomState {
                id: room.id.clone(),
                peers: room
                    .peers
                    .iter()
                    .map(|p| (p.id.clone(), p.connected))
                    .collect(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Room>> {
        self.inner
            .rooms
            .lock()
            .expect("the room map is never poisoned")
    }

    /// Queues a notification; called under the rooms lock so that
    /// notifications leave in the order of the changes.
    fn emit(&self, content: Content, webhook: Option<(String, bool)>) {
        let message = ServerMessage {
            content: Some(content),
        };
        let _ = self.inner.outbox.send(Outgoing { message, webhook });
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|presented| self.inner.token.matches(presented))
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "errors": message.into() }))).into_response()
}

fn unauthorized(headers: &HeaderMap) -> Response {
    let message = if headers.contains_key(header::AUTHORIZATION) {
        "Invalid token"
    } else {
        "Missing token"
    };
    error(StatusCode::UNAUTHORIZED, message)
}

/// The address the client reached the simulator at, as Fishjam names
/// itself in `fishjam_address` and `peer_websocket_url` (no scheme).
fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_owned()
}

fn no_room(room_id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("Room {room_id} does not exist"),
    )
}

/// `GET /validate`: 200 for the management token; 404 otherwise, as
/// Fishjam's OpenAPI documents it (and the SDKs read it).
async fn validate(State(api): State<RestApi>, headers: HeaderMap) -> Response {
    if api.authorized(&headers) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "Invalid Fishjam management token")
    }
}

async fn create_room(State(api): State<RestApi>, headers: HeaderMap, body: Bytes) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let config: RoomConfig = if body.is_empty() {
        RoomConfig::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(config) => config,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid request body: {e}"),
                )
            }
        }
    };
    if let Err(problem) = config.check() {
        return error(StatusCode::BAD_REQUEST, problem.to_string());
    }
    let room = Room {
        id: uuid::Uuid::now_v7().simple().to_string(),
        config,
        peers: Vec::new(),
    };
    let mut rooms = api.lock();
    api.emit(
        Content::RoomCreated(sm::RoomCreated {
            room_id: room.id.clone(),
        }),
        room.webhook(),
    );
    let host = host(&headers);
    let body = json!({ "data": { "room": room.to_json(), "fishjam_address": host } });
    rooms.insert(room.id.clone(), room);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn list_rooms(State(api): State<RestApi>, headers: HeaderMap) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let rooms: Vec<Value> = api.lock().values().map(Room::to_json).collect();
    Json(json!({ "data": rooms })).into_response()
}

async fn get_room(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    match api.lock().get(&room_id) {
        Some(room) => Json(json!({ "data": room.to_json() })).into_response(),
        None => no_room(&room_id),
    }
}

async fn delete_room(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let mut rooms = api.lock();
    let Some(room) = rooms.remove(&room_id) else {
        return no_room(&room_id);
    };
    api.emit(
        Content::RoomDeleted(sm::RoomDeleted {
            room_id: room.id.clone(),
        }),
        room.webhook(),
    );
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
struct PeerRequest {
    #[serde(rename = "type")]
    peer_type: String,
    #[serde(default)]
    options: PeerOptions,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PeerOptions {
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    subscribe_mode: Option<String>,
}

async fn add_peer(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path(room_id): Path<String>,
    body: Bytes,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let request: PeerRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid request body: {e}"),
            )
        }
    };
    let peer_type = match request.peer_type.as_str() {
        "webrtc" => PeerKind::WebRtc,
        "agent" => PeerKind::Agent,
        "vapi" => PeerKind::Vapi,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid peer type {other:?}"),
            )
        }
    };
    let subscribe_mode = request
        .options
        .subscribe_mode
        .unwrap_or_else(|| "auto".to_owned());
    if subscribe_mode != "auto" && subscribe_mode != "manual" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("subscribeMode must be auto or manual, not {subscribe_mode:?}"),
        );
    }
    let host = host(&headers);
    let mut rooms = api.lock();
    let Some(room) = rooms.get_mut(&room_id) else {
        return no_room(&room_id);
    };
    if let Some(max) = room.config.max_peers {
        if room.peers.len() >= max as usize {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Reached peer limit in room {room_id}"),
            );
        }
    }
    let peer = Peer {
        id: uuid::Uuid::now_v7().simple().to_string(),
        peer_type,
        metadata: request.options.metadata.unwrap_or(Value::Null),
        subscribe_mode,
        connected: false,
    };
    api.emit(
        Content::PeerAdded(sm::PeerAdded {
            room_id: room_id.clone(),
            peer_id: peer.id.clone(),
            peer_type: peer_type.proto(),
        }),
        room.webhook(),
    );
    let body = json!({
        "data": {
            "peer": peer.to_json(),
            "token": format!("simulated-peer-token-{}", peer.id),
            "peer_websocket_url": format!("{host}/socket/peer/websocket"),
        }
    });
    room.peers.push(peer);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn delete_peer(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path((room_id, peer_id)): Path<(String, String)>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let mut rooms = api.lock();
    let Some(room) = rooms.get_mut(&room_id) else {
        return no_room(&room_id);
    };
    let Some(at) = room.peers.iter().position(|p| p.id == peer_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Peer {peer_id} does not exist in room {room_id}"),
        );
    };
    let peer = room.peers.remove(at);
    let webhook = room.webhook();
    if peer.connected {
        api.emit(
            Content::PeerDisconnected(sm::PeerDisconnected {
                room_id: room_id.clone(),
                peer_id: peer.id.clone(),
                peer_type: peer.peer_type.proto(),
            }),
            webhook.clone(),
        );
    }
    api.emit(
        Content::PeerDeleted(sm::PeerDeleted {
            room_id,
            peer_id: peer.id,
            peer_type: peer.peer_type.proto(),
        }),
        webhook,
    );
    StatusCode::NO_CONTENT.into_response()
}

/// The simulator's stand-in for a client joining (`connect`) or leaving
/// (`disconnect`) with its peer token.
async fn peer_action(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path((room_id, peer_id, action)): Path<(String, String, String)>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let connect = match action.as_str() {
        "connect" => true,
        "disconnect" => false,
        _ => return error(StatusCode::NOT_FOUND, format!("No action {action:?}")),
    };
    let mut rooms = api.lock();
    let Some(room) = rooms.get_mut(&room_id) else {
        return no_room(&room_id);
    };
    let webhook = room.webhook();
    let Some(peer) = room.peers.iter_mut().find(|p| p.id == peer_id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("Peer {peer_id} does not exist in room {room_id}"),
        );
    };
    if peer.connected == connect {
        return error(
            StatusCode::CONFLICT,
            format!("Peer {peer_id} is already {action}ed"),
        );
    }
    peer.connected = connect;
    let (room_id, peer_id, peer_type) = (room_id, peer.id.clone(), peer.peer_type.proto());
    let content = if connect {
        Content::PeerConnected(sm::PeerConnected {
            room_id,
            peer_id,
            peer_type,
        })
    } else {
        Content::PeerDisconnected(sm::PeerDisconnected {
            room_id,
            peer_id,
            peer_type,
        })
    };
    api.emit(content, webhook);
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /simulator/notifier/down` closes every notifier session and refuses
/// new ones (503) until `POST /simulator/notifier/up`: an outage, during
/// which REST changes still happen and their notifications reach nobody.
async fn notifier_state(
    State(api): State<RestApi>,
    headers: HeaderMap,
    Path(state): Path<String>,
) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    match state.as_str() {
        "down" => api.inner.hub.set_down(true),
        "up" => api.inner.hub.set_down(false),
        _ => return error(StatusCode::NOT_FOUND, format!("No state {state:?}")),
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /simulator/stats`: notifications written to notifier sockets and
/// sessions subscribed so far.
async fn stats(State(api): State<RestApi>) -> Response {
    Json(api.inner.hub.stats()).into_response()
}

/// `PUT /simulator/management-token` with the new token as the body: the old
/// one stops working at once and open notifier sessions end, as a revoked
/// token's would.
async fn replace_token(State(api): State<RestApi>, headers: HeaderMap, body: String) -> Response {
    if !api.authorized(&headers) {
        return unauthorized(&headers);
    }
    let token = body.trim();
    if token.is_empty() {
        return error(StatusCode::BAD_REQUEST, "The new token is empty");
    }
    api.inner.token.replace(token.to_owned());
    api.inner.hub.revoke_sessions();
    StatusCode::NO_CONTENT.into_response()
}

/// Sends the notifications in order: to the notifier sockets, and by webhook
/// to the room's URL (batched as the room asked) or the default target.
async fn deliver(
    mut pending: mpsc::UnboundedReceiver<Outgoing>,
    hub: NotifierHub,
    default_webhook: Option<WebhookTarget>,
    secret: Option<String>,
) {
    let default_client = default_webhook.and_then(start_client);
    let mut room_clients: HashMap<(String, bool), WebhookClient> = HashMap::new();
    while let Some(Outgoing { message, webhook }) = pending.recv().await {
        hub.publish(Bytes::from(message.encode_to_vec()));
        let client = match webhook {
            Some((url, batch)) => {
                let key = (url.clone(), batch);
                if !room_clients.contains_key(&key) {
                    let target = WebhookTarget {
                        url,
                        secret: secret.clone(),
                        batch: if batch { 100 } else { 1 },
                        // One connection: Fishjam posts a room's notifications one by one.
                        concurrency: 1,
                        retries: 3,
                    };
                    if let Some(client) = start_client(target) {
                        room_clients.insert(key.clone(), client);
                    }
                }
                room_clients.get(&key)
            }
            None => default_client.as_ref(),
        };
        if let Some(client) = client {
            client.send(message).await;
        }
    }
}

fn start_client(target: WebhookTarget) -> Option<WebhookClient> {
    let url = target.url.clone();
    WebhookClient::start(target)
        .inspect_err(|e| tracing::error!(url, error = %e, "cannot start a webhook client"))
        .ok()
}
