//! The notifier source: one WebSocket to Fishjam, held for as long as the
//! bridge runs.
//!
//! A session connects, sends `auth_request` with the management token, waits
//! for `authenticated`, subscribes to server notifications and waits for the
//! `subscribe_response`, then reads one notification per binary frame. Each
//! frame goes through `normalize_body` and is submitted to the pipeline,
//! waiting for room when the pipeline is full: the socket is then not read,
//! and TCP pushes back on Fishjam instead of the bridge buffering. The bridge
//! pings on an interval and treats a socket that stays silent past
//! `idle_timeout` as dead, so a half-open connection is found in seconds.
//! Between sessions it waits with exponential backoff and full jitter, reset
//! once a session has been stable; a refused token backs off to the cap.
//! Only the shutdown token ends it, and it interrupts any wait at once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::admin::Check;
use crate::config::{NotifierConfig, Secret};
use crate::core::event;
use crate::core::event::Source;
use crate::core::normalize::{normalize_body, Origin};
use crate::core::proto::server_message::{self as sm, EventType};
use crate::core::proto::{Content, ServerMessage};
use crate::election::Leadership;
use crate::net::backoff::Backoff;
use crate::pipeline::admission::{self, Admission};
use crate::telemetry::{self, NotifierState};

/// The readiness check this source keeps.
pub const CHECK: &str = "notifier";

/// How long a stopping notifier waits for Fishjam to close the socket,
/// delivering what arrives meanwhile.
const DRAIN: Duration = Duration::from_secs(2);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("Fishjam refused the management token (close reason {0:?})")]
    AuthRejected(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("no frame or pong for {0:?}: the connection is dead")]
    Silent(Duration),
    #[error("Fishjam closed the connection ({0})")]
    Closed(String),
    #[error("connection lost: {0}")]
    Io(String),
    #[error("another replica holds the notifier now")]
    LeaseLost,
}

impl SessionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Connect(_) => "connect_failed",
            SessionError::AuthRejected(_) => "auth_rejected",
            SessionError::Handshake(_) => "handshake_failed",
            SessionError::Silent(_) => "silent",
            SessionError::Closed(_) => "closed_by_server",
            SessionError::Io(_) => "io_error",
            SessionError::LeaseLost => "lease_lost",
        }
    }
}

pub struct NotifierSource {
    pub url: String,
    pub token: Secret,
    pub fishjam_id: Arc<str>,
    pub config: NotifierConfig,
    pub admission: Admission,
    /// Its readiness check (`CHECK`).
    pub check: Check,
    /// Where a refused credential check is reported.
    pub fatal: crate::sources::Fatal,
    /// For the credential check and the reconciliation.
    pub rest: reqwest::Client,
    /// With `notifier.ca_file`: the TLS configuration that trusts it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether this replica may hold the socket now (always, without an
    /// election).
    pub leadership: Leadership,
    /// What this replica admitted from the socket and the sinks have not
    /// acknowledged yet.
    pub unacknowledged: Unacknowledged,
}

/// The receipts of the bodies admitted from the socket that the sinks have
/// not acknowledged yet. A session ends (and, at a handover, the lease goes
/// to the next holder) only once they are, within the drain's time: the
/// next holder's events of a room must not reach a sink before this one's.
#[derive(Debug, Default)]
pub struct Unacknowledged(
    std::sync::Mutex<std::collections::VecDeque<crate::pipeline::fanout::Receipt>>,
);

impl Unacknowledged {
    fn push(&self, receipt: crate::pipeline::fanout::Receipt) {
        let mut receipts = self.0.lock().expect("never poisoned");
        while receipts.front().is_some_and(|r| r.is_acknowledged()) {
            receipts.pop_front();
        }
        // One body stuck in a slow lane keeps the ones behind it here:
        // those acknowledged since go whenever the queue has doubled.
        if receipts.len() >= 64 && receipts.len().is_power_of_two() {
            receipts.retain(|r| !r.is_acknowledged());
        }
        receipts.push_back(receipt);
    }

    /// Waits until every receipt is acknowledged; false when `deadline`
    /// came first.
    async fn settled_by(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let oldest = {
                let mut receipts = self.0.lock().expect("never poisoned");
                while receipts.front().is_some_and(|r| r.is_acknowledged()) {
                    receipts.pop_front();
                }
                receipts.front().cloned()
            };
            let Some(oldest) = oldest else {
                return true;
            };
            if tokio::time::timeout_at(deadline, oldest.acknowledged())
                .await
                .is_err()
            {
                return false;
            }
        }
    }
}

impl NotifierSource {
    /// Holds the notifier until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.hold(&shutdown).await;
        // However the last session ended (a stop during a reconnect's
        // backoff too), the lease goes with this source only once the sinks
        // acknowledged what it read, or the drain's time is up.
        let deadline = tokio::time::Instant::now() + DRAIN;
        if !self.unacknowledged.settled_by(deadline).await {
            tracing::warn!(
                "the sinks did not acknowledge every notification read in time; stopping"
            );
        }
    }

    async fn hold(&self, shutdown: &CancellationToken) {
        let shutdown = shutdown.clone();
        if self.config.check_credentials {
            tokio::select! {
                checked = self.check_credentials() => if let Err(error) = checked {
                    tracing::error!(error = %error, "credentials refused; stopping");
                    self.fatal.set(error.to_string(), &shutdown);
                    return;
                },
                _ = shutdown.cancelled() => return,
            }
        }
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        // Since when the notifier has not been listening: from start-up, then
        // from the end of each session.
        let mut gap_since = Instant::now();
        let mut first = true;
        let mut leadership = self.leadership.clone();
        loop {
            if !leadership.is_held() {
                // Another replica holds the notifier: this one stands by,
                // which is as ready as it should be.
                telemetry::notifier_state(NotifierState::Standby);
                self.check.set(true);
                tokio::select! {
                    _ = leadership.acquired() => {}
                    _ = shutdown.cancelled() => return,
                }
                tracing::info!("notifier lease taken; connecting");
                // Another replica may have held it until now: what it saw
                // last is not known here, so the gap is reconciled as after
                // a reconnect.
                first = false;
            }
            let started = Instant::now();
            let ended = self
                .session(gap_since, &mut first, &shutdown, &mut leadership)
                .await;
            if shutdown.is_cancelled() {
                return;
            }
            if let Err(SessionError::LeaseLost) = ended {
                // Closed (and drained) before the lease can run out in the
                // store: no backoff, this replica stands by.
                tracing::warn!("notifier lease lost; socket closed");
                telemetry::notifier_disconnected(SessionError::LeaseLost.reason());
                gap_since = Instant::now();
                continue;
            }
            gap_since = Instant::now();
            self.check.set(false);
            telemetry::notifier_state(NotifierState::Backoff);
            let error = match ended {
                Ok(()) => return,
                Err(error) => error,
            };
            telemetry::notifier_disconnected(error.reason());
            if started.elapsed() >= self.config.stable_after {
                backoff.reset();
            }
            let delay = match &error {
                SessionError::AuthRejected(_) => {
                    // A revoked token is not hammered: wait the longest delay.
                    tracing::error!(error = %error, delay_ms = self.config.backoff_max.as_millis() as u64, "notifier authentication refused; check fishjam.management_token");
                    self.config.backoff_max
                }
                _ => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error, attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, "notifier disconnected; reconnecting");
                    delay
                }
            };
            telemetry::notifier_backoff(delay);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Asks Fishjam's REST API whether the id and token are valid, as the
    /// SDKs' `FishjamClient.create` does. Refused: an error (the bridge
    /// stops). Unreachable: asked again with backoff, not ready meanwhile.
    async fn check_credentials(&self) -> Result<(), crate::sources::fishjam::CredentialError> {
        let mut retry = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let checked = crate::sources::fishjam::check_credentials(
                &self.rest,
                &self.fishjam_id,
                self.token.expose(),
            )
            .await;
            match checked {
                Ok(()) => {
                    tracing::info!("Fishjam accepted the credentials");
                    return Ok(());
                }
                Err(error @ crate::sources::fishjam::CredentialError::Refused { .. }) => {
                    return Err(error)
                }
                Err(error) => {
                    let delay = retry.next_delay();
                    tracing::warn!(error = %telemetry::Chain(&error), delay_ms = delay.as_millis() as u64, "Fishjam unreachable; not ready, asking again");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection, from connect to its end. Returns Ok only at
    /// shutdown, once the socket was closed and drained.
    async fn session(
        &self,
        gap_since: Instant,
        first: &mut bool,
        shutdown: &CancellationToken,
        leadership: &mut Leadership,
    ) -> Result<(), SessionError> {
        telemetry::notifier_state(NotifierState::Connecting);
        // Until subscribed, nothing is on its way: a shutdown just goes.
        let Some(mut socket) = self.connect(shutdown, leadership).await? else {
            return Ok(());
        };
        telemetry::notifier_state(NotifierState::Authenticating);
        let handshake = self.handshake(&mut socket);
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(self.config.handshake_timeout, handshake) => handshake,
            stop = stopped(shutdown, leadership) => return stop.ended(),
        };
        handshake.map_err(|_| SessionError::Handshake("no answer in time".to_owned()))??;
        telemetry::notifier_state(NotifierState::Subscribed);
        telemetry::notifier_connected();
        self.check.set(true);
        let gap = gap_since.elapsed();
        telemetry::notifier_gap(gap);
        tracing::info!(url = %self.url, gap_ms = gap.as_millis() as u64, "notifier subscribed");
        // Subscribed first, then read Fishjam's rooms: a change after the
        // snapshot arrives on the socket, one before it is in the snapshot.
        if self.config.reconcile {
            tokio::select! {
                _ = self.reconcile(std::mem::take(first)) => {}
                stop = stopped(shutdown, leadership) => {
                    return self.close_and_drain(&mut socket, stop.drain(leadership)).await.and(stop.ended());
                }
            }
        }
        self.listen(&mut socket, shutdown, leadership).await
    }

    /// Connects to the notifier within `notifier.connect_timeout`; None
    /// when a shutdown came first.
    async fn connect(
        &self,
        shutdown: &CancellationToken,
        leadership: &mut Leadership,
    ) -> Result<Option<Socket>, SessionError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            &self.url,
            Some(config),
            true,
            connector,
        );
        let connected = tokio::select! {
            connected = tokio::time::timeout(self.config.connect_timeout, connect) => connected,
            stop = stopped(shutdown, leadership) => return stop.ended().map(|()| None),
        };
        let (socket, _) = connected
            .map_err(|_| SessionError::Connect("timed out".to_owned()))?
            .map_err(|e| SessionError::Connect(e.to_string()))?;
        Ok(Some(socket))
    }

    /// Authenticates with the management token, then subscribes to server
    /// notifications.
    async fn handshake(&self, socket: &mut Socket) -> Result<(), SessionError> {
        send(
            socket,
            Content::AuthRequest(sm::AuthRequest {
                token: self.token.expose().to_owned(),
            }),
        )
        .await?;
        expect(socket, Phase::Authenticating).await?;
        send(
            socket,
            Content::SubscribeRequest(sm::SubscribeRequest {
                event_type: EventType::ServerNotification as i32,
            }),
        )
        .await?;
        expect(socket, Phase::Subscribing).await
    }

    /// Reads and delivers notifications, pinging on an interval, until the
    /// socket ends or stays silent past `notifier.idle_timeout`, or the
    /// source stops: then the socket is closed and drained.
    async fn listen(
        &self,
        socket: &mut Socket,
        shutdown: &CancellationToken,
        leadership: &mut Leadership,
    ) -> Result<(), SessionError> {
        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            let silent_for = last_heard.elapsed();
            if silent_for >= self.config.idle_timeout {
                return Err(SessionError::Silent(silent_for));
            }
            let idle_left = self.config.idle_timeout - silent_for;
            tokio::select! {
                frame = tokio::time::timeout(idle_left, socket.next()) => {
                    let frame = match frame {
                        Err(_) => continue,
                        Ok(None) => return Err(SessionError::Closed("stream ended".to_owned())),
                        Ok(Some(Err(error))) => return Err(SessionError::Io(error.to_string())),
                        Ok(Some(Ok(frame))) => frame,
                    };
                    last_heard = Instant::now();
                    telemetry::notifier_heard();
                    match on_frame(Phase::Subscribed, &Frame::of(&frame)) {
                        Step::Deliver(_) => {
                            // The frame's own bytes, kept by the spool without a copy.
                            let Message::Binary(body) = &frame else {
                                unreachable!("only a binary frame is delivered")
                            };
                            self.deliver(body.clone()).await;
                            // Time spent waiting for the pipeline is not silence.
                            last_heard = Instant::now();
                        }
                        Step::End(error) => return Err(error),
                        Step::Text => telemetry::notifier_text_frame(),
                        // tungstenite answers pings itself on the next write or flush.
                        Step::Ping => {
                            socket.flush().await.map_err(|e| SessionError::Io(e.to_string()))?;
                        }
                        Step::Advanced(_) | Step::Nothing => {}
                    }
                }
                _ = ping.tick() => {
                    socket
                        .send(Message::Ping(Default::default()))
                        .await
                        .map_err(|e| SessionError::Io(e.to_string()))?;
                }
                stop = stopped(shutdown, leadership) => {
                    return self.close_and_drain(socket, stop.drain(leadership)).await.and(stop.ended());
                }
            }
        }
    }

    /// At shutdown or when the lease is lost: asks Fishjam to close the
    /// socket and delivers what it sent before it read the request, for up
    /// to `limit`. Notifications already on their way are not lost by a
    /// graceful stop or a handover, and the next holder of the notifier
    /// takes over once this socket is closed.
    async fn close_and_drain(
        &self,
        socket: &mut Socket,
        limit: Duration,
    ) -> Result<(), SessionError> {
        let close = Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bridge stopping".into(),
        }));
        let deadline = tokio::time::Instant::now() + limit;
        let timed_out = match tokio::time::timeout_at(deadline, socket.send(close)).await {
            Ok(Ok(())) => self.drain_until(socket, deadline).await,
            Ok(Err(_)) => false,
            Err(_) => true,
        };
        // What was read reaches the sinks before the next holder starts.
        let timed_out = !self.unacknowledged.settled_by(deadline).await || timed_out;
        if timed_out {
            tracing::warn!(
                timeout_ms = limit.as_millis() as u64,
                "Fishjam did not close the notifier, or the sinks did not acknowledge what it sent, in time; stopping"
            );
        }
        Ok(())
    }

    /// Delivers what the socket brings until it ends; true when `deadline`
    /// came first. Only reading is bounded: a frame read is delivered
    /// whole, whatever the time, since Fishjam will not send it again.
    async fn drain_until(&self, socket: &mut Socket, deadline: tokio::time::Instant) -> bool {
        loop {
            let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(Some(Ok(frame))) => frame,
                Ok(_) => return false,
                Err(_) => return true,
            };
            if let Step::Deliver(_) = on_frame(Phase::Subscribed, &Frame::of(&frame)) {
                let Message::Binary(body) = &frame else {
                    unreachable!("only a binary frame is delivered")
                };
                self.deliver(body.clone()).await;
            }
        }
    }

    /// Compares Fishjam's rooms with what the bridge knows and publishes the
    /// differences as reconciled events. At start-up the rooms are only
    /// learned, unless `reconcile_at_start` asks for events.
    async fn reconcile(&self, at_start: bool) {
        let rooms =
            crate::sources::fishjam::list_rooms(&self.rest, &self.fishjam_id, self.token.expose())
                .await;
        let rooms = match rooms {
            Ok(rooms) => rooms,
            Err(error) => return telemetry::reconciled(Err(&error)),
        };
        if at_start && !self.config.reconcile_at_start {
            self.admission
                .fanout()
                .learn_rooms(crate::sources::reconcile::known_from(&rooms));
            return telemetry::reconciled(Ok(&[]));
        }
        let events = crate::sources::reconcile::differences(
            &self.admission.fanout().known_rooms(),
            &rooms,
            &self.fishjam_id,
            SystemTime::now(),
        );
        telemetry::reconciled(Ok(&events));
        if events.is_empty() {
            return;
        }
        // In slices, so that a large snapshot never exceeds the pipeline's bound.
        for slice in events.chunks(256) {
            let count = slice.len();
            if let Err(error) = self.submit_reconciled(slice).await {
                tracing::error!(error = %error, count, "reconciled events refused by the pipeline");
            }
        }
    }

    /// Submits reconciled events as one body of their notifications, so that
    /// they take the sources' path (through the spool while it is engaged,
    /// behind what is there); events with no notification form (a peer type
    /// this version cannot name) wait for the spool to empty instead.
    async fn submit_reconciled(
        &self,
        slice: &[crate::core::event::Event],
    ) -> Result<(), crate::pipeline::admission::AdmissionError> {
        let direct = || async {
            let messages = event::Message::all(slice.to_vec());
            self.admission
                .submit_events(messages, Source::Reconciled)
                .await
                .map(drop)
                .map_err(|refused| refused.reason.into())
        };
        let Some(body) = crate::core::normalize::to_body(slice) else {
            return direct().await;
        };
        let origin = Origin::now(Source::Reconciled, self.fishjam_id.clone());
        let Ok(normalized) = normalize_body(&body, &origin) else {
            return direct().await;
        };
        let body = admission::Body::new(
            normalized.events,
            crate::pipeline::spool::record(&origin, body.into()),
            Instant::now(),
        );
        self.admission
            .offer_waiting(body)
            .await
            .map(drop)
            .map_err(|refused| refused.reason)
    }

    /// Normalizes one frame and waits until the pipeline takes its events.
    async fn deliver(&self, body: bytes::Bytes) {
        let origin = Origin::now(Source::Notifier, self.fishjam_id.clone());
        let received = Instant::now();
        let normalized = match normalize_body(&body, &origin) {
            Ok(normalized) => normalized,
            Err(error) => {
                telemetry::decode_failed(Source::Notifier, &error);
                return;
            }
        };
        telemetry::body_normalized(Source::Notifier, &normalized);
        if normalized.events.is_empty() {
            return;
        }
        let waited = Instant::now();
        // The frame was read: from here the bridge owns the events. Waiting
        // for room (in the pipeline, or in the spool while it is engaged)
        // stops the reading, which is the backpressure on Fishjam.
        let body = admission::Body::new(
            normalized.events,
            crate::pipeline::spool::record(&origin, body),
            received,
        );
        match self.admission.offer_waiting(body).await {
            Ok(receipt) => {
                telemetry::notifier_paused(waited.elapsed());
                if let Some(receipt) = receipt {
                    self.unacknowledged.push(receipt);
                }
            }
            Err(refused) => tracing::error!(
                error = %refused.reason,
                events = refused.body.messages.len(),
                "notifier events refused by the pipeline"
            ),
        }
    }
}

/// Why a session stops from the bridge's side.
enum Stop {
    Shutdown,
    LeaseLost,
}

impl Stop {
    /// How long the socket may drain: at shutdown `DRAIN`; with the lease
    /// lost, only what the lease's margin leaves.
    fn drain(&self, leadership: &Leadership) -> Duration {
        match self {
            Stop::Shutdown => DRAIN,
            Stop::LeaseLost => leadership.drain(),
        }
    }

    fn ended(&self) -> Result<(), SessionError> {
        match self {
            Stop::Shutdown => Ok(()),
            Stop::LeaseLost => Err(SessionError::LeaseLost),
        }
    }
}

async fn stopped(shutdown: &CancellationToken, leadership: &mut Leadership) -> Stop {
    tokio::select! {
        _ = shutdown.cancelled() => Stop::Shutdown,
        _ = leadership.lost() => Stop::LeaseLost,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, content: Content) -> Result<(), SessionError> {
    let frame = ServerMessage {
        content: Some(content),
    }
    .encode_to_vec();
    socket
        .send(Message::Binary(frame.into()))
        .await
        .map_err(|e| SessionError::Io(e.to_string()))
}

/// Reads frames until the handshake moves past `phase`.
async fn expect(socket: &mut Socket, phase: Phase) -> Result<(), SessionError> {
    loop {
        let message = match socket.next().await {
            None => {
                return Err(SessionError::Handshake(format!(
                    "closed before {}",
                    phase.awaits()
                )))
            }
            Some(Err(error)) => return Err(SessionError::Io(error.to_string())),
            Some(Ok(message)) => message,
        };
        match on_frame(phase, &Frame::of(&message)) {
            Step::Advanced(_) => return Ok(()),
            Step::End(error) => return Err(error),
            _ => {}
        }
    }
}

/// Where a session is in Fishjam's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `auth_request` sent, waiting for `authenticated`.
    Authenticating,
    /// `subscribe_request` sent, waiting for `subscribe_response`.
    Subscribing,
    /// Reading notifications.
    Subscribed,
}

impl Phase {
    fn awaits(self) -> &'static str {
        match self {
            Phase::Authenticating => "authenticated",
            Phase::Subscribing => "subscribe_response",
            Phase::Subscribed => "a notification",
        }
    }
}

/// A WebSocket frame as the session sees it.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Binary(&'a [u8]),
    Text,
    Ping,
    Pong,
    /// A close frame, with its code and reason when it has them.
    Close(Option<(u16, &'a str)>),
}

impl<'a> Frame<'a> {
    fn of(message: &'a Message) -> Frame<'a> {
        match message {
            Message::Binary(body) => Frame::Binary(body),
            Message::Text(_) => Frame::Text,
            Message::Ping(_) => Frame::Ping,
            Message::Pong(_) | Message::Frame(_) => Frame::Pong,
            Message::Close(close) => Frame::Close(
                close
                    .as_ref()
                    .map(|c| (u16::from(c.code), c.reason.as_str())),
            ),
        }
    }
}

/// What a session does with a frame.
#[derive(Debug)]
pub enum Step<'a> {
    /// The handshake moved on to this phase.
    Advanced(Phase),
    /// A notification body for the pipeline.
    Deliver(&'a [u8]),
    /// A text frame: Fishjam sends none; counted and ignored.
    Text,
    /// A ping, answered on the next flush.
    Ping,
    /// Nothing to do.
    Nothing,
    /// The session is over.
    End(SessionError),
}

/// The session's state machine, without the socket: what `frame` means in
/// `phase`. A handshake message other than the awaited one ends the session;
/// a close before `authenticated` that names the token is a refusal.
pub fn on_frame<'a>(phase: Phase, frame: &Frame<'a>) -> Step<'a> {
    match (phase, *frame) {
        (Phase::Subscribed, Frame::Binary(body)) => Step::Deliver(body),
        (Phase::Subscribed, Frame::Text) => Step::Text,
        (Phase::Subscribed, Frame::Ping) => Step::Ping,
        (Phase::Subscribed, Frame::Close(close)) => {
            let reason = close
                .map(|(code, reason)| format!("{code} {reason}"))
                .unwrap_or_default();
            Step::End(SessionError::Closed(reason))
        }
        (_, Frame::Binary(body)) => {
            let message = match ServerMessage::decode(body) {
                Ok(message) => message,
                Err(e) => {
                    return Step::End(SessionError::Handshake(format!("undecodable frame: {e}")))
                }
            };
            match (phase, message.content) {
                (Phase::Authenticating, Some(Content::Authenticated(_))) => {
                    Step::Advanced(Phase::Subscribing)
                }
                (Phase::Subscribing, Some(Content::SubscribeResponse(_))) => {
                    Step::Advanced(Phase::Subscribed)
                }
                (_, other) => Step::End(SessionError::Handshake(format!(
                    "expected {}, got {}",
                    phase.awaits(),
                    other.as_ref().map_or("an empty message", content_name)
                ))),
            }
        }
        (_, Frame::Close(close)) => {
            let (code, reason) = close.unwrap_or((u16::from(CloseCode::Normal), ""));
            if reason.contains("invalid token") {
                Step::End(SessionError::AuthRejected(reason.to_owned()))
            } else {
                Step::End(SessionError::Handshake(format!(
                    "closed with {code} {reason:?} before {}",
                    phase.awaits()
                )))
            }
        }
        (_, Frame::Text | Frame::Ping | Frame::Pong) => Step::Nothing,
    }
}

/// The name of a handshake or notification variant, for errors.
fn content_name(content: &Content) -> &'static str {
    match content {
        Content::AuthRequest(_) => "auth_request",
        Content::Authenticated(_) => "authenticated",
        Content::SubscribeRequest(_) => "subscribe_request",
        Content::SubscribeResponse(_) => "subscribe_response",
        _ => "a notification",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(content: Content) -> Vec<u8> {
        ServerMessage {
            content: Some(content),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_handshake_moves_in_order_and_only_then_delivers() {
        let authenticated = encoded(Content::Authenticated(sm::Authenticated {}));
        let subscribed = encoded(Content::SubscribeResponse(sm::SubscribeResponse {
            event_type: EventType::ServerNotification as i32,
        }));
        assert!(matches!(
            on_frame(Phase::Authenticating, &Frame::Binary(&subscribed)),
            Step::End(SessionError::Handshake(_))
        ));
        assert!(matches!(
            on_frame(Phase::Authenticating, &Frame::Binary(&authenticated)),
            Step::Advanced(Phase::Subscribing)
        ));
        assert!(matches!(
            on_frame(Phase::Subscribing, &Frame::Text),
            Step::Nothing
        ));
        assert!(matches!(
            on_frame(Phase::Subscribing, &Frame::Binary(&subscribed)),
            Step::Advanced(Phase::Subscribed)
        ));
        assert!(matches!(
            on_frame(Phase::Subscribed, &Frame::Binary(&authenticated)),
            Step::Deliver(_)
        ));
        assert!(matches!(
            on_frame(Phase::Subscribing, &Frame::Binary(b"\xff\xff")),
            Step::End(SessionError::Handshake(_))
        ));
    }

    #[test]
    fn a_close_naming_the_token_is_a_refusal() {
        let refused = on_frame(
            Phase::Authenticating,
            &Frame::Close(Some((1000, "invalid token"))),
        );
        assert!(matches!(refused, Step::End(SessionError::AuthRejected(_))));
        let closed = on_frame(Phase::Subscribing, &Frame::Close(None));
        assert!(matches!(closed, Step::End(SessionError::Handshake(_))));
        let later = on_frame(Phase::Subscribed, &Frame::Close(Some((1001, "going away"))));
        match later {
            Step::End(SessionError::Closed(reason)) => assert_eq!(reason, "1001 going away"),
            other => panic!("{other:?}"),
        }
    }
}
