//! The simulator's webhook client: POSTs notifications as Fishjam does, one
//! protobuf body per request, signed with `x-fishjam-signature-256`, either
//! single or several wrapped in a `NotificationBatch` (in order, one level).
//!
//! Requests are spread over `concurrency` connections by room, and each
//! connection sends its requests one after another, so a room's notifications
//! arrive in order while rooms proceed in parallel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::core::proto::server_message::NotificationBatch;
use crate::core::proto::{Content, ServerMessage};
use crate::core::signature;

/// Where and how to post.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: Option<String>,
    /// Notifications per body; 1 sends them unbatched.
    pub batch: usize,
    /// Connections posting in parallel.
    pub concurrency: usize,
    /// How often a refused body is sent again (honouring Retry-After).
    pub retries: u32,
}

/// What the webhook client saw.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub bodies_ok: AtomicU64,
    pub bodies_failed: AtomicU64,
    pub notifications_ok: AtomicU64,
    pub notifications_failed: AtomicU64,
    pub retries: AtomicU64,
    /// Attempts whose connection was refused (nothing listened).
    pub refused: AtomicU64,
    /// Microseconds from sending to a 2xx answer, one per body answered 2xx
    /// at its first attempt (a retried body's wait is not a latency).
    pub latencies_us: std::sync::Mutex<Vec<u32>>,
}

impl WebhookStats {
    /// The `q` quantile (0 to 1) of the latencies, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        let mut latencies = self.latencies_us.lock().expect("never poisoned");
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let index = ((latencies.len() - 1) as f64 * q).round() as usize;
        Some(f64::from(latencies[index]) / 1000.0)
    }
}

/// A running webhook client.
pub struct WebhookClient {
    lanes: Vec<mpsc::Sender<ServerMessage>>,
    tasks: JoinSet<()>,
    pub stats: Arc<WebhookStats>,
}

impl WebhookClient {
    pub fn start(target: WebhookTarget) -> anyhow::Result<WebhookClient> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let stats = Arc::new(WebhookStats::default());
        let mut tasks = JoinSet::new();
        let mut lanes = Vec::new();
        for _ in 0..target.concurrency.max(1) {
            let (tx, rx) = mpsc::channel(1024);
            lanes.push(tx);
            tasks.spawn(run_lane(client.clone(), target.clone(), rx, stats.clone()));
        }
        Ok(WebhookClient {
            lanes,
            tasks,
            stats,
        })
    }

    /// Queues one notification; waits when the lane is full.
    pub async fn send(&self, message: ServerMessage) {
        let lane = lane_of(&message, self.lanes.len());
        let _ = self.lanes[lane].send(message).await;
    }

    /// Sends what is queued and waits for every answer.
    pub async fn finish(mut self) -> Arc<WebhookStats> {
        self.lanes.clear();
        while self.tasks.join_next().await.is_some() {}
        self.stats
    }
}

/// The key a notification is ordered by, for spreading over lanes.
fn lane_of(message: &ServerMessage, lanes: usize) -> usize {
    use crate::core::proto::Content as C;
    let key = match &message.content {
        Some(C::RoomCreated(m)) => m.room_id.as_str(),
        Some(C::RoomDeleted(m)) => &m.room_id,
        Some(C::RoomCrashed(m)) => &m.room_id,
        Some(C::PeerAdded(m)) => &m.room_id,
        Some(C::PeerDeleted(m)) => &m.room_id,
        Some(C::PeerConnected(m)) => &m.room_id,
        Some(C::PeerDisconnected(m)) => &m.room_id,
        Some(C::PeerCrashed(m)) => &m.room_id,
        Some(C::PeerMetadataUpdated(m)) => &m.room_id,
        Some(C::TrackAdded(m)) => &m.room_id,
        Some(C::TrackRemoved(m)) => &m.room_id,
        Some(C::TrackMetadataUpdated(m)) => &m.room_id,
        Some(C::TrackForwarding(m)) => &m.room_id,
        Some(C::TrackForwardingRemoved(m)) => &m.room_id,
        Some(C::VadNotification(m)) => &m.room_id,
        Some(C::ChannelAdded(m)) => &m.room_id,
        Some(C::ChannelRemoved(m)) => &m.room_id,
        Some(C::StreamerConnected(m)) => &m.stream_id,
        Some(C::StreamerDisconnected(m)) => &m.stream_id,
        Some(C::ViewerConnected(m)) => &m.stream_id,
        Some(C::ViewerDisconnected(m)) => &m.stream_id,
        Some(C::RecordingStatusChanged(m)) => &m.recording_id,
        _ => "",
    };
    let hash = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (hash % lanes as u64) as usize
}

/// The body Fishjam sends for `messages`.
pub fn encode_body(mut messages: Vec<ServerMessage>, batch: bool) -> Bytes {
    if !batch && messages.len() == 1 {
        return Bytes::from(messages.remove(0).encode_to_vec());
    }
    Bytes::from(
        ServerMessage {
            content: Some(Content::NotificationBatch(NotificationBatch {
                notifications: messages,
            })),
        }
        .encode_to_vec(),
    )
}

async fn run_lane(
    client: reqwest::Client,
    target: WebhookTarget,
    mut rx: mpsc::Receiver<ServerMessage>,
    stats: Arc<WebhookStats>,
) {
    let mut messages = Vec::with_capacity(target.batch);
    let mut latencies = Vec::new();
    while rx.recv_many(&mut messages, target.batch.max(1)).await > 0 {
        let count = messages.len() as u64;
        let body = encode_body(std::mem::take(&mut messages), target.batch > 1);
        if post(&client, &target, body, &stats, &mut latencies).await {
            stats.bodies_ok.fetch_add(1, Ordering::Relaxed);
            stats.notifications_ok.fetch_add(count, Ordering::Relaxed);
        } else {
            stats.bodies_failed.fetch_add(1, Ordering::Relaxed);
            stats
                .notifications_failed
                .fetch_add(count, Ordering::Relaxed);
        }
    }
    stats
        .latencies_us
        .lock()
        .expect("never poisoned")
        .extend(latencies);
}

/// Posts one body; true when it was answered 2xx.
async fn post(
    client: &reqwest::Client,
    target: &WebhookTarget,
    body: Bytes,
    stats: &WebhookStats,
    latencies: &mut Vec<u32>,
) -> bool {
    let mut attempt = 0;
    loop {
        let mut request = client
            .post(&target.url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(secret) = &target.secret {
            request = request.header(signature::HEADER, signature::sign(secret.as_bytes(), &body));
        }
        let sent = std::time::Instant::now();
        let (ok, retry_after) = match request.send().await {
            Ok(response) if response.status().is_success() => {
                if attempt == 0 {
                    let took = sent.elapsed().as_micros();
                    latencies.push(u32::try_from(took).unwrap_or(u32::MAX));
                }
                (true, None)
            }
            Ok(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs);
                tracing::debug!(status = %response.status(), "webhook refused");
                (false, retry_after)
            }
            Err(error) => {
                if error.is_connect() {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %error, "webhook failed");
                (false, None)
            }
        };
        if ok || attempt >= target.retries {
            return ok;
        }
        attempt += 1;
        stats.retries.fetch_add(1, Ordering::Relaxed);
        let delay = retry_after.unwrap_or(Duration::from_millis(200 * u64::from(attempt)));
        tokio::time::sleep(delay.min(Duration::from_secs(5))).await;
    }
}
