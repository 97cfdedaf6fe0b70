//! Logs and metrics: the tracing subscriber, the Prometheus recorder, and
//! every metric name the bridge exports.
//!
//! Each observable happening has one function here that counts it (and logs
//! it where a log line helps), so names and labels live in one file and
//! `docs/metrics.md` can be checked against it. Labels come from small fixed
//! sets: never a room, peer or event id.

use std::time::Duration;

use std::sync::OnceLock;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::decode::{DecodeError, Skipped};
use crate::core::event::{EventType, Source};

pub const BUILD_INFO: &str = "fishjam_bridge_build_info";
pub const EVENTS_RECEIVED: &str = "fishjam_bridge_events_received_total";
pub const NOTIFICATIONS_SKIPPED: &str = "fishjam_bridge_notifications_skipped_total";
pub const UNMAPPED_ENUMS: &str = "fishjam_bridge_unmapped_enum_values_total";
pub const DECODE_FAILURES: &str = "fishjam_bridge_decode_failures_total";
pub const WEBHOOK_REQUESTS: &str = "fishjam_bridge_webhook_requests_total";
pub const PIPELINE_REJECTED: &str = "fishjam_bridge_pipeline_rejected_events_total";
pub const PIPELINE_SHED: &str = "fishjam_bridge_pipeline_shed_events_total";
pub const PIPELINE_IN_FLIGHT: &str = "fishjam_bridge_pipeline_events_in_flight";
pub const PIPELINE_CAPACITY: &str = "fishjam_bridge_pipeline_capacity_events";
pub const ACK_LATENCY: &str = "fishjam_bridge_ack_latency_seconds";
pub const ACK_TIMEOUTS: &str = "fishjam_bridge_ack_timeouts_total";
pub const SINK_ACKNOWLEDGED: &str = "fishjam_bridge_sink_events_acknowledged_total";
pub const SINK_FAILED: &str = "fishjam_bridge_sink_events_failed_total";
pub const SINK_RETRIES: &str = "fishjam_bridge_sink_retries_total";
pub const SINK_PUBLISH_DURATION: &str = "fishjam_bridge_sink_publish_duration_seconds";
pub const SINK_QUEUE: &str = "fishjam_bridge_sink_queue_events";
pub const SINK_UP: &str = "fishjam_bridge_sink_up";
pub const SINK_RETURNED: &str = "fishjam_bridge_sink_events_returned_total";
pub const DEAD_LETTERS: &str = "fishjam_bridge_dead_letters_total";
pub const SINK_RECONNECTS: &str = "fishjam_bridge_sink_reconnects_total";
pub const NOTIFIER_STATE: &str = "fishjam_bridge_notifier_state";
pub const NOTIFIER_CONNECTS: &str = "fishjam_bridge_notifier_connects_total";
pub const NOTIFIER_DISCONNECTS: &str = "fishjam_bridge_notifier_disconnects_total";
pub const NOTIFIER_BACKOFF: &str = "fishjam_bridge_notifier_backoff_seconds";
pub const NOTIFIER_LAST_MESSAGE: &str = "fishjam_bridge_notifier_last_message_timestamp_seconds";
pub const NOTIFIER_PAUSED: &str = "fishjam_bridge_notifier_pause_seconds";
pub const NOTIFIER_IGNORED: &str = "fishjam_bridge_notifier_ignored_frames_total";
pub const NOTIFIER_GAP: &str = "fishjam_bridge_notifier_gap_seconds";
pub const RECONCILIATIONS: &str = "fishjam_bridge_reconciliations_total";
pub const RECONCILED_EVENTS: &str = "fishjam_bridge_reconciled_events_total";
pub const DUPLICATES_DROPPED: &str = "fishjam_bridge_duplicates_dropped_total";
pub const DEDUP_ENTRIES: &str = "fishjam_bridge_dedup_entries";
pub const ROOM_EVENTS: &str = "fishjam_bridge_room_events_total";
pub const ROOMS: &str = "fishjam_bridge_rooms";
pub const PEERS_CONNECTED: &str = "fishjam_bridge_peers_connected";
pub const TLS_HANDSHAKE_FAILURES: &str = "fishjam_bridge_tls_handshake_failures_total";
pub const LISTENER_CONNECTIONS: &str = "fishjam_bridge_listener_connections";
pub const LISTENER_MAX_CONNECTIONS: &str = "fishjam_bridge_listener_max_connections";
pub const LISTENER_IDLE_CLOSED: &str = "fishjam_bridge_listener_idle_closed_total";
pub const SPOOL_BYTES: &str = "fishjam_bridge_spool_bytes";
pub const SPOOL_MAX_BYTES: &str = "fishjam_bridge_spool_max_bytes";
pub const SPOOL_ENGAGED: &str = "fishjam_bridge_spool_engaged";
pub const SPOOL_BODIES: &str = "fishjam_bridge_spool_bodies_total";
pub const SPOOL_TORN: &str = "fishjam_bridge_spool_torn_entries_total";
pub const SPOOL_SYNC: &str = "fishjam_bridge_spool_write_duration_seconds";
pub const KAFKA_QUEUE: &str = "fishjam_bridge_kafka_queue_messages";
pub const KAFKA_BROKER_RTT: &str = "fishjam_bridge_kafka_broker_rtt_seconds";
pub const KAFKA_BROKER_ERRORS: &str = "fishjam_bridge_kafka_broker_errors_total";
pub const KAFKA_BROKER_RETRIES: &str = "fishjam_bridge_kafka_broker_retries_total";

/// Every metric name, for docs and tests.
pub const ALL: &[&str] = &[
    BUILD_INFO,
    EVENTS_RECEIVED,
    NOTIFICATIONS_SKIPPED,
    UNMAPPED_ENUMS,
    DECODE_FAILURES,
    WEBHOOK_REQUESTS,
    PIPELINE_REJECTED,
    PIPELINE_SHED,
    PIPELINE_IN_FLIGHT,
    PIPELINE_CAPACITY,
    ACK_LATENCY,
    ACK_TIMEOUTS,
    SINK_ACKNOWLEDGED,
    SINK_FAILED,
    SINK_RETRIES,
    SINK_PUBLISH_DURATION,
    SINK_QUEUE,
    SINK_UP,
    SINK_RETURNED,
    SINK_RECONNECTS,
    DEAD_LETTERS,
    NOTIFIER_STATE,
    NOTIFIER_CONNECTS,
    NOTIFIER_DISCONNECTS,
    NOTIFIER_BACKOFF,
    NOTIFIER_LAST_MESSAGE,
    NOTIFIER_PAUSED,
    NOTIFIER_IGNORED,
    NOTIFIER_GAP,
    RECONCILIATIONS,
    RECONCILED_EVENTS,
    DUPLICATES_DROPPED,
    DEDUP_ENTRIES,
    ROOM_EVENTS,
    ROOMS,
    PEERS_CONNECTED,
    TLS_HANDSHAKE_FAILURES,
    LISTENER_CONNECTIONS,
    LISTENER_MAX_CONNECTIONS,
    LISTENER_IDLE_CLOSED,
    SPOOL_BYTES,
    SPOOL_MAX_BYTES,
    SPOOL_ENGAGED,
    SPOOL_BODIES,
    SPOOL_TORN,
    SPOOL_SYNC,
    KAFKA_QUEUE,
    KAFKA_BROKER_RTT,
    KAFKA_BROKER_ERRORS,
    KAFKA_BROKER_RETRIES,
];

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the tracing subscriber: `RUST_LOG` wins over `level`. Logs go to
/// stderr so that stdout stays free for the events of the stdout sink.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level))
        // Clients that trace what they send with the credentials in it: the
        // notifier's first frame carries the management token, NATS's
        // CONNECT the password. Never below debug for them.
        .add_directive(
            "tungstenite::protocol=debug"
                .parse()
                .expect("a valid directive"),
        )
        .add_directive(
            "async_nats::connection=debug"
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, the demo) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Installs the Prometheus recorder and describes every metric.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let latency_buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

fn describe() {
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_counter!(
        EVENTS_RECEIVED,
        "Notifications turned into events, by source and event type."
    );
    describe_counter!(
        NOTIFICATIONS_SKIPPED,
        "Messages in a body that are not published (handshake, deprecated, empty, unknown_variant, nested_batch)."
    );
    describe_counter!(
        UNMAPPED_ENUMS,
        "Enum values the official SDK cannot name, left out of data and kept in unmapped_enums."
    );
    describe_counter!(
        DECODE_FAILURES,
        "Bodies or frames that are not a valid ServerMessage, by source and reason."
    );
    describe_counter!(
        WEBHOOK_REQUESTS,
        "Webhook requests answered, by HTTP status."
    );
    describe_counter!(
        PIPELINE_REJECTED,
        "Events refused because the pipeline held its maximum in flight."
    );
    describe_counter!(
        PIPELINE_SHED,
        "Bursty events (voice activity, metadata updates) dropped because their slots were full, with bursty_when_full = shed; by event type."
    );
    describe_gauge!(
        PIPELINE_IN_FLIGHT,
        "Events accepted and not yet acknowledged by every sink."
    );
    describe_gauge!(
        PIPELINE_CAPACITY,
        "The configured bound on events in flight."
    );
    describe_histogram!(
        ACK_LATENCY,
        "From receiving a body to every sink acknowledging all its events."
    );
    describe_counter!(
        ACK_TIMEOUTS,
        "Webhook bodies answered 503 because the sinks did not acknowledge in time."
    );
    describe_counter!(SINK_ACKNOWLEDGED, "Events a sink acknowledged.");
    describe_counter!(
        SINK_FAILED,
        "Events whose publish attempt failed, by sink and reason."
    );
    describe_counter!(SINK_RETRIES, "Publish retries, by sink.");
    describe_histogram!(
        SINK_PUBLISH_DURATION,
        "Time a sink took to publish one batch."
    );
    describe_gauge!(SINK_QUEUE, "Events waiting for a sink, by sink.");
    describe_gauge!(SINK_UP, "1 when the sink is connected and publishing.");
    describe_counter!(
        SINK_RETURNED,
        "Events the broker returned as unroutable (no queue bound for the routing key), by sink."
    );
    describe_counter!(
        SINK_RECONNECTS,
        "Connections a sink opened again after losing one."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Events a sink refused for good, kept as dead letters (file or log), by sink."
    );
    describe_gauge!(SPOOL_BYTES, "Bytes of the disk spool's files.");
    describe_gauge!(
        SPOOL_MAX_BYTES,
        "The spool's cap (spool.max_bytes); 0 without a spool."
    );
    describe_gauge!(
        SPOOL_ENGAGED,
        "1 while bodies go to the disk spool instead of straight to the sinks."
    );
    describe_counter!(
        SPOOL_BODIES,
        "Bodies written to the spool, replayed from it, refused because it was full, or failed to write, by op and source."
    );
    describe_counter!(
        SPOOL_TORN,
        "Spool entries found torn or unreadable when the spool was opened (cut off, never replayed)."
    );
    describe_histogram!(
        SPOOL_SYNC,
        "Time to write (and, with spool.fsync, sync) one batch of spooled bodies."
    );
    describe_counter!(
        ROOM_EVENTS,
        "Room, peer, streamer and viewer lifecycle events published, by event type and peer type."
    );
    describe_gauge!(
        ROOMS,
        "Rooms known from the events published since the bridge started."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out on a listener, by listener and reason."
    );
    describe_gauge!(
        LISTENER_CONNECTIONS,
        "Open connections on a listener (webhook, admin), by listener."
    );
    describe_gauge!(
        LISTENER_MAX_CONNECTIONS,
        "The configured cap on a listener's open connections."
    );
    describe_counter!(
        LISTENER_IDLE_CLOSED,
        "Connections a listener closed after its idle timeout without traffic."
    );
    describe_gauge!(
        PEERS_CONNECTED,
        "Peers connected, as known from the events published since the bridge started, by peer type."
    );
}

/// The shed counters start at zero for each bursty event type.
pub fn bursty_registered() {
    for event_type in EventType::ALL {
        if event_type.is_bursty() {
            counter!(PIPELINE_SHED, "event_type" => event_type.as_str()).increment(0);
        }
    }
}

/// A bursty event dropped for want of a slot.
pub fn shed(event_type: EventType) {
    counter!(PIPELINE_SHED, "event_type" => event_type.as_str()).increment(1);
}

/// A listener starts: its cap, and its counters at zero.
/// (The handshake counters exist without TLS too, at zero, so one query
/// serves every listener.)
pub fn listener_registered(listener: &'static str, max_connections: usize) {
    gauge!(LISTENER_MAX_CONNECTIONS, "listener" => listener).set(max_connections as f64);
    gauge!(LISTENER_CONNECTIONS, "listener" => listener).set(0.0);
    counter!(LISTENER_IDLE_CLOSED, "listener" => listener).increment(0);
    for reason in ["error", "timeout"] {
        counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => reason).increment(0);
    }
}

/// A connection opened (+1) or closed (-1) on a listener.
pub fn listener_connection(listener: &'static str, delta: f64) {
    gauge!(LISTENER_CONNECTIONS, "listener" => listener).increment(delta);
}

/// A connection closed for idling.
pub fn listener_idle_closed(listener: &'static str) {
    counter!(LISTENER_IDLE_CLOSED, "listener" => listener).increment(1);
}

/// A client that did not complete its TLS handshake with a listener.
pub fn tls_handshake_failed(listener: &'static str, reason: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => reason).increment(1);
}

/// A room or peer lifecycle event, published once.
pub fn room_events(event_type: EventType, peer_type: &'static str, count: u64) {
    counter!(ROOM_EVENTS, "event_type" => event_type.as_str(), "peer_type" => peer_type)
        .increment(count);
}

pub fn rooms_known(rooms: usize) {
    gauge!(ROOMS).set(rooms as f64);
}

pub fn peers_connected(peer_type: &'static str, peers: usize) {
    gauge!(PEERS_CONNECTED, "peer_type" => peer_type).set(peers as f64);
}

/// Counts what one body carried.
/// A body's events and skipped notifications, counted once per body: one
/// increment per event type it holds, through handles resolved once.
pub fn body_normalized(
    source: Source,
    events: impl Iterator<Item = (EventType, usize)>,
    skipped: &[Skipped],
) {
    let mut per_type = [(0u64, 0u64); EVENT_TYPES];
    for (event_type, unmapped) in events {
        let (count, unmapped_count) = &mut per_type[event_type.index()];
        *count += 1;
        *unmapped_count += unmapped as u64;
    }
    for (event_type, (count, unmapped)) in EventType::ALL.iter().zip(per_type) {
        if count > 0 {
            events_received(source, *event_type).increment(count);
        }
        if unmapped > 0 {
            counter!(UNMAPPED_ENUMS, "event_type" => event_type.as_str()).increment(unmapped);
        }
    }
    for reason in skipped {
        counter!(NOTIFICATIONS_SKIPPED, "source" => source.as_str(), "reason" => reason.as_str())
            .increment(1);
        if *reason == Skipped::UnknownVariant {
            tracing::warn!(
                source = source.as_str(),
                "skipped a notification type this build does not know; a newer bridge may publish it"
            );
        }
    }
}

const EVENT_TYPES: usize = EventType::ALL.len();

/// The `events_received` counter of one source and type. Each handle is
/// registered on its first use, which comes after `init_metrics` installed
/// the recorder (a handle taken before would count nowhere), so only the
/// series that occur are exported.
fn events_received(source: Source, event_type: EventType) -> &'static Counter {
    static HANDLES: [[OnceLock<Counter>; EVENT_TYPES]; Source::ALL.len()] =
        [const { [const { OnceLock::new() }; EVENT_TYPES] }; Source::ALL.len()];
    HANDLES[source.index()][event_type.index()].get_or_init(|| {
        counter!(EVENTS_RECEIVED, "source" => source.as_str(), "event_type" => event_type.as_str())
    })
}

pub fn decode_failed(source: Source, error: &DecodeError) {
    counter!(DECODE_FAILURES, "source" => source.as_str(), "reason" => error.reason()).increment(1);
    tracing::warn!(source = source.as_str(), error = %error, "undecodable body");
}

pub fn webhook_answered(status: u16) {
    counter!(WEBHOOK_REQUESTS, "status" => status.to_string()).increment(1);
}

pub fn pipeline_rejected(source: Source, events: usize) {
    counter!(PIPELINE_REJECTED, "source" => source.as_str()).increment(events as u64);
}

pub fn pipeline_capacity(events: usize) {
    gauge!(PIPELINE_CAPACITY).set(events as f64);
}

pub fn pipeline_in_flight(events: usize) {
    gauge!(PIPELINE_IN_FLIGHT).set(events as f64);
}

pub fn acknowledged(source: Source, latency: Duration) {
    static HANDLES: [OnceLock<Histogram>; Source::ALL.len()] =
        [const { OnceLock::new() }; Source::ALL.len()];
    HANDLES[source.index()]
        .get_or_init(|| histogram!(ACK_LATENCY, "source" => source.as_str()))
        .record(latency.as_secs_f64());
}

pub fn ack_timed_out(source: Source) {
    counter!(ACK_TIMEOUTS, "source" => source.as_str()).increment(1);
}

/// The metrics a sink's lanes and fan-out update on every batch or body,
/// resolved once per sink.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    acknowledged: Counter,
    publish_duration: Histogram,
    queue: Gauge,
}

impl SinkMetrics {
    pub fn new(sink: &str) -> SinkMetrics {
        SinkMetrics {
            acknowledged: counter!(SINK_ACKNOWLEDGED, "sink" => sink.to_owned()),
            publish_duration: histogram!(SINK_PUBLISH_DURATION, "sink" => sink.to_owned()),
            queue: gauge!(SINK_QUEUE, "sink" => sink.to_owned()),
        }
    }

    /// A publish call returned with `events` acknowledged.
    pub fn published(&self, events: usize, took: Duration) {
        self.acknowledged.increment(events as u64);
        self.publish_duration.record(took.as_secs_f64());
    }

    /// Events waiting for the sink grew (or, negative, shrank) by `delta`.
    pub fn queued(&self, delta: f64) {
        self.queue.increment(delta);
    }
}

pub fn sink_failed(sink: &str, reason: &'static str, events: usize) {
    counter!(SINK_FAILED, "sink" => sink.to_owned(), "reason" => reason).increment(events as u64);
}

pub fn sink_retry(sink: &str) {
    counter!(SINK_RETRIES, "sink" => sink.to_owned()).increment(1);
}

pub fn sink_up(sink: &str, up: bool) {
    gauge!(SINK_UP, "sink" => sink.to_owned()).set(if up { 1.0 } else { 0.0 });
}

pub fn sink_returned(sink: &str) {
    counter!(SINK_RETURNED, "sink" => sink.to_owned()).increment(1);
}

pub fn sink_reconnected(sink: &str) {
    counter!(SINK_RECONNECTS, "sink" => sink.to_owned()).increment(1);
}

/// Exports a sink's counters at zero from the start, so dashboards and alerts
/// see the series before the first event.
pub fn sink_registered(sink: &str) {
    for name in [
        SINK_ACKNOWLEDGED,
        SINK_RETRIES,
        SINK_RETURNED,
        SINK_RECONNECTS,
        DEAD_LETTERS,
    ] {
        counter!(name, "sink" => sink.to_owned()).increment(0);
    }
    gauge!(SINK_QUEUE, "sink" => sink.to_owned()).increment(0.0);
    gauge!(SINK_UP, "sink" => sink.to_owned()).set(0.0);
}

/// The spool's series at zero, with or without a spool.
pub fn spool_registered() {
    gauge!(SPOOL_BYTES).set(0.0);
    gauge!(SPOOL_MAX_BYTES).set(0.0);
    gauge!(SPOOL_ENGAGED).set(0.0);
    counter!(SPOOL_TORN).increment(0);
    for op in ["written", "replayed", "refused", "failed"] {
        for source in [Source::Webhook, Source::Notifier] {
            counter!(SPOOL_BODIES, "op" => op, "source" => source.as_str()).increment(0);
        }
    }
}

pub fn spool_opened(max_bytes: u64, torn: u64) {
    gauge!(SPOOL_MAX_BYTES).set(max_bytes as f64);
    counter!(SPOOL_TORN).increment(torn);
}

pub fn spool_bytes(bytes: u64) {
    gauge!(SPOOL_BYTES).set(bytes as f64);
}

pub fn spool_engaged(engaged: bool) {
    gauge!(SPOOL_ENGAGED).set(if engaged { 1.0 } else { 0.0 });
}

pub fn spool_written(source: Source) {
    counter!(SPOOL_BODIES, "op" => "written", "source" => source.as_str()).increment(1);
}

pub fn spool_replayed(source: Source) {
    counter!(SPOOL_BODIES, "op" => "replayed", "source" => source.as_str()).increment(1);
}

/// A body refused because the spool holds `spool.max_bytes`.
pub fn spool_refused(source: Source) {
    counter!(SPOOL_BODIES, "op" => "refused", "source" => source.as_str()).increment(1);
}

/// Bodies the spool could not write (a disk error); refused with 503.
pub fn spool_failed(source: Source) {
    counter!(SPOOL_BODIES, "op" => "failed", "source" => source.as_str()).increment(1);
}

pub fn spool_synced(took: Duration) {
    histogram!(SPOOL_SYNC).record(took.as_secs_f64());
}

/// An event a sink refused for good, kept as a dead letter.
pub fn dead_lettered(sink: &str) {
    counter!(DEAD_LETTERS, "sink" => sink.to_owned()).increment(1);
}

/// librdkafka's periodic statistics for one Kafka sink.
pub fn kafka_statistics(sink: &str, statistics: &rdkafka::statistics::Statistics) {
    gauge!(KAFKA_QUEUE, "sink" => sink.to_owned()).set(statistics.msg_cnt as f64);
    for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
        let labels = [
            ("sink", sink.to_owned()),
            ("broker", broker.nodename.clone()),
        ];
        if let Some(rtt) = &broker.rtt {
            gauge!(KAFKA_BROKER_RTT, &labels).set(rtt.avg as f64 / 1_000_000.0);
        }
        counter!(KAFKA_BROKER_ERRORS, &labels).absolute(broker.txerrs + broker.req_timeouts);
        counter!(KAFKA_BROKER_RETRIES, &labels).absolute(broker.txretries);
    }
}

const NOTIFIER_STATES: &[&str] = &["connecting", "authenticating", "subscribed", "backoff"];

pub fn notifier_state(state: &'static str) {
    for candidate in NOTIFIER_STATES {
        let value = if *candidate == state { 1.0 } else { 0.0 };
        gauge!(NOTIFIER_STATE, "state" => *candidate).set(value);
    }
}

pub fn notifier_connected() {
    counter!(NOTIFIER_CONNECTS).increment(1);
}

pub fn notifier_disconnected(reason: &'static str) {
    counter!(NOTIFIER_DISCONNECTS, "reason" => reason).increment(1);
}

pub fn notifier_backoff(delay: Duration) {
    gauge!(NOTIFIER_BACKOFF).set(delay.as_secs_f64());
}

pub fn notifier_heard() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    gauge!(NOTIFIER_LAST_MESSAGE).set(now);
}

pub fn notifier_paused(paused: Duration) {
    // Most submissions find room at once; only real pauses are recorded.
    if paused >= Duration::from_millis(1) {
        histogram!(NOTIFIER_PAUSED).record(paused.as_secs_f64());
    }
}

pub fn notifier_text_frame() {
    counter!(NOTIFIER_IGNORED).increment(1);
    tracing::warn!("ignored a text frame from the notifier: the protocol sends binary frames only");
}

/// The time between losing the notifier and being subscribed again.
pub fn notifier_gap(gap: Duration) {
    histogram!(NOTIFIER_GAP).record(gap.as_secs_f64());
}

/// One reconciliation against Fishjam's REST API, and the events it made.
pub fn reconciled(result: Result<&[crate::core::event::Event], &str>) {
    match result {
        Ok(events) => {
            counter!(RECONCILIATIONS, "result" => "ok").increment(1);
            for event in events {
                counter!(RECONCILED_EVENTS, "event_type" => event.event_type.as_str()).increment(1);
            }
            if !events.is_empty() {
                tracing::info!(
                    events = events.len(),
                    "reconciled: published what changed in Fishjam while the notifier was away"
                );
            }
        }
        Err(error) => {
            counter!(RECONCILIATIONS, "result" => "failed").increment(1);
            tracing::warn!(
                error,
                "cannot reconcile with Fishjam's rooms; changes during the gap may be missing"
            );
        }
    }
}

/// Exports the notifier's series at zero from the start.
pub fn notifier_registered() {
    notifier_state("connecting");
    counter!(NOTIFIER_CONNECTS).increment(0);
    histogram!(NOTIFIER_PAUSED).record(0.0);
    counter!(NOTIFIER_IGNORED).increment(0);
    for result in ["ok", "failed"] {
        counter!(RECONCILIATIONS, "result" => result).increment(0);
    }
    counter!(RECONCILED_EVENTS, "event_type" => "roomCreated").increment(0);
    gauge!(NOTIFIER_BACKOFF).set(0.0);
    gauge!(NOTIFIER_LAST_MESSAGE).set(0.0);
    for reason in [
        "connect_failed",
        "auth_rejected",
        "handshake_failed",
        "silent",
        "closed_by_server",
        "io_error",
    ] {
        counter!(NOTIFIER_DISCONNECTS, "reason" => reason).increment(0);
    }
}

/// Exports the deduplication series at zero from the start.
pub fn dedup_registered() {
    counter!(DUPLICATES_DROPPED).increment(0);
    gauge!(DEDUP_ENTRIES).set(0.0);
}

pub fn duplicates_dropped(count: usize) {
    counter!(DUPLICATES_DROPPED).increment(count as u64);
}

pub fn dedup_entries(count: usize) {
    gauge!(DEDUP_ENTRIES).set(count as f64);
}
