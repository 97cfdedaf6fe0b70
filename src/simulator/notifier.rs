//! The simulator's notifier: Fishjam's `/socket/server/websocket`, byte for byte.
//!
//! A client must first send `auth_request` with the management token; the
//! server answers `authenticated`, or closes with code 1000 and reason
//! `invalid token` (`invalid auth request` when the first frame is something
//! else), as Fishjam does. Then `subscribe_request` for server notifications
//! is answered with `subscribe_response`, after which every notification is
//! pushed as one binary frame. Any other client frame after authentication
//! closes the socket with 1003 `operation not allowed`. The server pings on
//! an interval, as Fishjam does every 30 s.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::{broadcast, watch};

use super::ManagementToken;
use crate::core::proto::server_message::{self as sm, EventType};
use crate::core::proto::{Content, ServerMessage};

/// The notifier's path, as Fishjam serves it.
pub const PATH: &str = "/socket/server/websocket";

/// How long a new connection may take to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by every notifier connection.
#[derive(Clone)]
pub struct NotifierHub {
    inner: Arc<Hub>,
}

struct Hub {
    token: ManagementToken,
    ping_interval: Duration,
    frames: broadcast::Sender<Bytes>,
    subscribers: watch::Sender<usize>,
    /// Half-open on purpose: after forwarding this many notifications, a
    /// connection stays up but sends (and reads) nothing more.
    silent_after: Option<u64>,
    /// While true, open sessions are closed and new ones refused (an outage).
    down: watch::Sender<bool>,
    /// Bumped when the token is replaced: open sessions end, as a revoked
    /// token's would.
    revocations: watch::Sender<u64>,
    /// Each session is closed this long after it subscribed.
    drop_every: Option<Duration>,
    /// Notifications written to subscribed sockets, over all sessions.
    forwarded: AtomicU64,
    /// Sessions that subscribed.
    sessions: AtomicU64,
    /// Each subscribed session, in the order they subscribed: a test of
    /// several bridges checks that two never listened at the same moment.
    log: std::sync::Mutex<Vec<SessionRecord>>,
    /// Notifications published so far; held while one is published and
    /// while a session subscribes, so a session knows the index of the
    /// first notification it is sent.
    published: std::sync::Mutex<u64>,
}

/// One subscribed session: when it subscribed and ended (Unix
/// microseconds, `None` while open) and which notifications it was sent.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SessionRecord {
    /// The index (from 0, over the whole play) of the first notification
    /// sent to this session; it was sent the next `forwarded` ones.
    pub first: u64,
    pub subscribed_us: u64,
    pub ended_us: Option<u64>,
    pub forwarded: u64,
}

/// What the notifier has done so far (`GET /simulator/stats`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStats {
    pub forwarded: u64,
    pub sessions: u64,
    pub session_log: Vec<SessionRecord>,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

impl NotifierHub {
    pub fn new(
        token: ManagementToken,
        ping_interval: Duration,
        silent_after: Option<u64>,
        drop_every: Option<Duration>,
    ) -> NotifierHub {
        let (frames, _) = broadcast::channel(65_536);
        NotifierHub {
            inner: Arc::new(Hub {
                token,
                ping_interval,
                frames,
                subscribers: watch::Sender::new(0),
                silent_after,
                down: watch::Sender::new(false),
                revocations: watch::Sender::new(0),
                drop_every,
                forwarded: AtomicU64::new(0),
                sessions: AtomicU64::new(0),
                log: Default::default(),
                published: Default::default(),
            }),
        }
    }

    /// Sends one notification to every subscribed connection.
    pub fn publish(&self, frame: Bytes) {
        let mut published = self.inner.published.lock().expect("never poisoned");
        // No subscriber is not an error: Fishjam, too, drops what nobody hears.
        let _ = self.inner.frames.send(frame);
        *published += 1;
    }

    /// Waits until at least `count` connections are subscribed.
    pub async fn wait_for_subscribers(&self, count: usize) {
        let mut watch = self.inner.subscribers.subscribe();
        let _ = watch.wait_for(|n| *n >= count).await;
    }

    /// Takes the notifier down (open sessions close, new ones get 503) or
    /// brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner.down.send_replace(down);
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            forwarded: self.inner.forwarded.load(Ordering::SeqCst),
            sessions: self.inner.sessions.load(Ordering::SeqCst),
            session_log: self.inner.log.lock().expect("never poisoned").clone(),
        }
    }

    /// Ends every open session: the token they authenticated with is gone.
    pub fn revoke_sessions(&self) {
        self.inner.revocations.send_modify(|n| *n += 1);
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(PATH, get(upgrade))
            .with_state(self.clone())
    }
}

async fn upgrade(State(hub): State<NotifierHub>, ws: WebSocketUpgrade) -> Response {
    use axum::response::IntoResponse;
    if *hub.inner.down.borrow() {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    ws.on_upgrade(move |socket| serve(hub, socket))
}

fn encode(content: Content) -> Bytes {
    Bytes::from(
        ServerMessage {
            content: Some(content),
        }
        .encode_to_vec(),
    )
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
type Rx = futures_util::stream::SplitStream<WebSocket>;

async fn serve(hub: NotifierHub, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    if !authenticate(&hub, &mut tx, &mut rx).await {
        return;
    }
    let mut session = Session::default();
    let result = session.run(&hub, &mut tx, &mut rx).await;
    session.end(&hub);
    drop(result);
}

/// Reads the client's first frame and answers it as Fishjam does. Returns
/// whether the client is authenticated and has been told so.
async fn authenticate(hub: &NotifierHub, tx: &mut Tx, rx: &mut Rx) -> bool {
    let first = tokio::time::timeout(AUTH_TIMEOUT, rx.next()).await;
    let token = match first {
        Ok(Some(Ok(Message::Binary(frame)))) => match ServerMessage::decode(frame) {
            Ok(ServerMessage {
                content: Some(Content::AuthRequest(sm::AuthRequest { token })),
            }) => Some(token),
            _ => None,
        },
        Ok(Some(Ok(_))) => None,
        // Closed, broken or silent before authenticating.
        _ => return false,
    };
    match token {
        Some(token) if hub.inner.token.matches(&token) => {}
        Some(_) => {
            let _ = tx.send(close(1000, "invalid token")).await;
            return false;
        }
        None => {
            let _ = tx.send(close(1000, "invalid auth request")).await;
            return false;
        }
    }
    tx.send(Message::Binary(encode(Content::Authenticated(
        sm::Authenticated {},
    ))))
    .await
    .is_ok()
}

/// One authenticated connection: what it was sent, and its place in the
/// hub's counts and log once it subscribes.
#[derive(Default)]
struct Session {
    /// The notifications to forward, once subscribed.
    frames: Option<broadcast::Receiver<Bytes>>,
    forwarded: u64,
    /// When the hub's `drop_every` closes this session.
    drop_at: Option<tokio::time::Instant>,
    /// This session's place in the log, once subscribed.
    logged: Option<usize>,
}

impl Session {
    /// Serves the session until it closes; the result of the last write.
    async fn run(
        &mut self,
        hub: &NotifierHub,
        tx: &mut Tx,
        rx: &mut Rx,
    ) -> Result<(), axum::Error> {
        let mut ping = tokio::time::interval(hub.inner.ping_interval);
        ping.tick().await;
        let mut down = hub.inner.down.subscribe();
        let mut revocations = hub.inner.revocations.subscribe();
        revocations.mark_unchanged();
        loop {
            if hub
                .inner
                .silent_after
                .is_some_and(|after| self.forwarded >= after)
            {
                // Neither read nor write again: pings go unanswered and nothing
                // arrives, while the TCP connection stays open.
                std::future::pending::<()>().await;
            }
            tokio::select! {
                incoming = rx.next() => {
                    let Some(Ok(incoming)) = incoming else { break Ok(()) };
                    if let ControlFlow::Break(result) = self.answer(hub, tx, incoming).await {
                        break result;
                    }
                }
                frame = next_frame(&mut self.frames) => {
                    if let ControlFlow::Break(result) = self.forward(hub, tx, frame).await {
                        break result;
                    }
                }
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                        break Ok(());
                    }
                }
                _ = async { drop(down.wait_for(|down| *down).await) } => {
                    break tx.send(close(1001, "going away")).await;
                }
                _ = revocations.changed() => {
                    break tx.send(close(1008, "management token revoked")).await;
                }
                _ = sleep_until(self.drop_at) => {
                    // A graceful close: every frame written before it arrives.
                    break tx.send(close(1001, "going away")).await;
                }
            }
        }
    }

    /// Answers a client frame after authentication: a subscription to
    /// server notifications is answered (the first one starts the feed);
    /// pings and pongs change nothing; anything else ends the session, with
    /// the result of the last write.
    async fn answer(
        &mut self,
        hub: &NotifierHub,
        tx: &mut Tx,
        incoming: Message,
    ) -> ControlFlow<Result<(), axum::Error>> {
        match incoming {
            Message::Binary(frame) => match ServerMessage::decode(frame) {
                Ok(ServerMessage {
                    content: Some(Content::SubscribeRequest(request)),
                }) if request.event_type == EventType::ServerNotification as i32 => {
                    if self.frames.is_none() {
                        self.subscribe(hub);
                    }
                    let response = encode(Content::SubscribeResponse(sm::SubscribeResponse {
                        event_type: request.event_type,
                    }));
                    if tx.send(Message::Binary(response)).await.is_err() {
                        return ControlFlow::Break(Ok(()));
                    }
                    ControlFlow::Continue(())
                }
                _ => ControlFlow::Break(tx.send(close(1003, "operation not allowed")).await),
            },
            Message::Pong(_) | Message::Ping(_) => ControlFlow::Continue(()),
            Message::Close(_) => ControlFlow::Break(Ok(())),
            Message::Text(_) => {
                ControlFlow::Break(tx.send(close(1003, "operation not allowed")).await)
            }
        }
    }

    /// Writes one notification to the client. A client too slow for the
    /// hub's buffer, or the hub shutting down, ends the session, with the
    /// result of the last write.
    async fn forward(
        &mut self,
        hub: &NotifierHub,
        tx: &mut Tx,
        frame: Result<Bytes, broadcast::error::RecvError>,
    ) -> ControlFlow<Result<(), axum::Error>> {
        match frame {
            Ok(frame) => {
                if tx.send(Message::Binary(frame)).await.is_err() {
                    return ControlFlow::Break(Ok(()));
                }
                self.forwarded += 1;
                hub.inner.forwarded.fetch_add(1, Ordering::SeqCst);
                ControlFlow::Continue(())
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "notifier client too slow; closing it");
                ControlFlow::Break(tx.send(close(1011, "client too slow")).await)
            }
            Err(broadcast::error::RecvError::Closed) => {
                ControlFlow::Break(tx.send(close(1001, "server shutting down")).await)
            }
        }
    }

    /// Starts the feed, and counts and logs the session.
    fn subscribe(&mut self, hub: &NotifierHub) {
        let published = hub.inner.published.lock().expect("never poisoned");
        self.frames = Some(hub.inner.frames.subscribe());
        let first = *published;
        drop(published);
        hub.inner.subscribers.send_modify(|n| *n += 1);
        hub.inner.sessions.fetch_add(1, Ordering::SeqCst);
        let mut log = hub.inner.log.lock().expect("never poisoned");
        self.logged = Some(log.len());
        log.push(SessionRecord {
            first,
            subscribed_us: unix_us(),
            ended_us: None,
            forwarded: 0,
        });
        drop(log);
        if let Some(after) = hub.inner.drop_every {
            self.drop_at = Some(tokio::time::Instant::now() + after);
        }
    }

    /// Takes the closed session out of the subscriber count and completes
    /// its log record.
    fn end(&self, hub: &NotifierHub) {
        if self.frames.is_some() {
            hub.inner.subscribers.send_modify(|n| *n -= 1);
        }
        if let Some(index) = self.logged {
            let mut log = hub.inner.log.lock().expect("never poisoned");
            log[index].ended_us = Some(unix_us());
            log[index].forwarded = self.forwarded;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_frame(
    frames: &mut Option<broadcast::Receiver<Bytes>>,
) -> Result<Bytes, broadcast::error::RecvError> {
    match frames {
        Some(frames) => frames.recv().await,
        None => std::future::pending().await,
    }
}
