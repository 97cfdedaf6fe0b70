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
use crate::core::event::{EventType, PeerType, Source};
use crate::core::normalize::Normalized;

/// An error and its causes on one line, "what failed: why: why", for logs:
/// a library's own message often leaves out the OS error under it.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: the one place its name, kind, labels and help live.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! metrics {
    ($($constant:ident: $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $(pub const $constant: &str = $name;)*

        /// Every metric the bridge exports; `describe` registers their help
        /// text, and `tests/it/operations.rs` checks docs/metrics.md against it.
        pub const METRICS: &[Metric] = &[$(Metric {
            name: $name,
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        },)*];
    };
}

metrics! {
    BUILD_INFO: Gauge "fishjam_bridge_build_info" ["version"]
        "Always 1; the version label names the build.";
    EVENTS_RECEIVED: Counter "fishjam_bridge_events_received_total" ["source", "event_type"]
        "Notifications turned into events, by source and event type.";
    NOTIFICATIONS_SKIPPED: Counter "fishjam_bridge_notifications_skipped_total" ["source", "reason"]
        "Messages in a body that are not published (handshake, deprecated, empty, unknown_variant, nested_batch).";
    UNMAPPED_ENUMS: Counter "fishjam_bridge_unmapped_enum_values_total" ["event_type"]
        "Enum values the official SDK cannot name, left out of data and kept in unmapped_enums.";
    DECODE_FAILURES: Counter "fishjam_bridge_decode_failures_total" ["source", "reason"]
        "Bodies or frames that are not a valid ServerMessage, by source and reason.";
    STRINGS_MENDED: Counter "fishjam_bridge_strings_mended_total" ["source"]
        "String fields that held invalid UTF-8, published with U+FFFD in place of each invalid sequence, as the official SDK decodes them.";
    METADATA_UNEMBEDDED: Counter "fishjam_bridge_metadata_not_embedded_total" ["source"]
        "Metadata strings that look like JSON but hold what not every parser reads (a number no double holds, invalid JSON), published as text without metadata_json.";
    WEBHOOK_REQUESTS: Counter "fishjam_bridge_webhook_requests_total" ["status"]
        "Webhook requests answered, by HTTP status.";
    WEBHOOK_SECRETS: Gauge "fishjam_bridge_webhook_secrets" []
        "Webhook signing secrets accepted now: two during a rotation, 0 when unsigned webhooks are accepted.";
    PIPELINE_REJECTED: Counter "fishjam_bridge_pipeline_rejected_events_total" ["source"]
        "Events refused because the pipeline held its maximum in flight.";
    PIPELINE_SHED: Counter "fishjam_bridge_pipeline_shed_events_total" ["event_type"]
        "Bursty events (voice activity, metadata updates) dropped because their slots were full, with bursty_when_full = shed; by event type.";
    PIPELINE_IN_FLIGHT: Gauge "fishjam_bridge_pipeline_events_in_flight" []
        "Events in the fullest sink's bound: accepted and not yet acknowledged by that sink.";
    PIPELINE_CAPACITY: Gauge "fishjam_bridge_pipeline_capacity_events" []
        "The configured bound on events in flight, of each sink.";
    ACK_LATENCY: Histogram "fishjam_bridge_ack_latency_seconds" ["source"]
        "From receiving a body to every sink acknowledging all its events.";
    ACK_TIMEOUTS: Counter "fishjam_bridge_ack_timeouts_total" ["source"]
        "Webhook bodies answered 503 because the sinks did not acknowledge in time.";
    SINK_ACKNOWLEDGED: Counter "fishjam_bridge_sink_events_acknowledged_total" ["sink"]
        "Events a sink acknowledged.";
    SINK_FAILED: Counter "fishjam_bridge_sink_events_failed_total" ["sink", "reason"]
        "Events whose publish attempt failed, by sink and reason.";
    SINK_RETRIES: Counter "fishjam_bridge_sink_retries_total" ["sink"]
        "Publish retries, by sink.";
    SINK_PUBLISH_DURATION: Histogram "fishjam_bridge_sink_publish_duration_seconds" ["sink"]
        "Time a sink took to publish one batch.";
    SINK_QUEUE: Gauge "fishjam_bridge_sink_queue_events" ["sink"]
        "Events waiting for a sink, by sink.";
    SINK_UP: Gauge "fishjam_bridge_sink_up" ["sink"]
        "1 when the sink is connected and publishing.";
    SINK_RETURNED: Counter "fishjam_bridge_sink_events_returned_total" ["sink"]
        "Events the broker returned as unroutable (no queue bound for the routing key), by sink.";
    DEAD_LETTERS: Counter "fishjam_bridge_dead_letters_total" ["sink"]
        "Events a sink refused for good, kept as dead letters (file or log), by sink.";
    SINK_RECONNECTS: Counter "fishjam_bridge_sink_reconnects_total" ["sink"]
        "Connections a sink opened again after losing one.";
    NOTIFIER_STATE: Gauge "fishjam_bridge_notifier_state" ["state"]
        "1 for the notifier's current state (connecting, authenticating, subscribed, backoff, standby: another replica holds the lease), 0 for the others.";
    NOTIFIER_CONNECTS: Counter "fishjam_bridge_notifier_connects_total" []
        "Notifier sessions that reached subscribed.";
    NOTIFIER_DISCONNECTS: Counter "fishjam_bridge_notifier_disconnects_total" ["reason"]
        "Notifier sessions that ended: connect_failed, auth_rejected, handshake_failed, silent (no frame or pong within notifier.idle_timeout), closed_by_server, io_error, lease_lost (another replica holds the notifier now).";
    NOTIFIER_BACKOFF: Gauge "fishjam_bridge_notifier_backoff_seconds" []
        "The last delay before reconnecting.";
    NOTIFIER_SESSION_START: Gauge "fishjam_bridge_notifier_session_start_timestamp_seconds" []
        "When the notifier's current session reached subscribed (Unix seconds); 0 while there is none.";
    NOTIFIER_LAST_MESSAGE: Gauge "fishjam_bridge_notifier_last_message_timestamp_seconds" []
        "Unix time of the last frame or pong from Fishjam.";
    NOTIFIER_PAUSED: Histogram "fishjam_bridge_notifier_pause_seconds" []
        "Pauses of the notifier's reading while the pipeline was full (backpressure on Fishjam).";
    NOTIFIER_IGNORED: Counter "fishjam_bridge_notifier_ignored_frames_total" []
        "Text frames, which the protocol does not use.";
    NOTIFIER_GAP: Histogram "fishjam_bridge_notifier_gap_seconds" []
        "Time the notifier was not listening: from start-up, or the end of a session, to the next subscription.";
    RECONCILIATIONS: Counter "fishjam_bridge_reconciliations_total" ["result"]
        "Reads of Fishjam's rooms after a (re)connect: ok, failed.";
    ELECTION_HOLDER: Gauge "fishjam_bridge_election_holder" []
        "1 while this replica holds the notifier lease (election.backend), else 0.";
    ELECTION_TRANSITIONS: Counter "fishjam_bridge_election_transitions_total" ["to"]
        "Changes of this replica's part in the election: to holder, to follower.";
    ELECTION_RENEWALS: Counter "fishjam_bridge_election_renewals_total" []
        "Renewals of the notifier lease by this replica.";
    ELECTION_WITHOUT_HOLDER: Gauge "fishjam_bridge_election_without_holder_seconds" []
        "Time since this replica last saw a holder of the notifier lease (itself or another); 0 while it sees one.";
    RECONCILED_EVENTS: Counter "fishjam_bridge_reconciled_events_total" ["event_type"]
        "Events published with source reconciled: changes Fishjam made while the notifier was away.";
    DUPLICATES_DROPPED: Counter "fishjam_bridge_duplicates_dropped_total" []
        "Notifications dropped because the other source (notifier or webhook) already delivered them.";
    DEDUP_ENTRIES: Gauge "fishjam_bridge_dedup_entries" []
        "Deliveries held in the deduplication window, waiting for their twin (at most dedup.max_entries).";
    ROOM_EVENTS: Counter "fishjam_bridge_room_events_total" ["event_type", "peer_type"]
        "Room, peer, streamer and viewer lifecycle events published, by event type and peer type.";
    ROOMS: Gauge "fishjam_bridge_rooms" []
        "Rooms known from the events published since the bridge started.";
    PEERS_CONNECTED: Gauge "fishjam_bridge_peers_connected" ["peer_type"]
        "Peers connected, as known from the events published since the bridge started, by peer type.";
    TLS_HANDSHAKE_FAILURES: Counter "fishjam_bridge_tls_handshake_failures_total" ["listener", "reason"]
        "TLS handshakes that failed on a listener, by listener and reason: `timeout`, `client_certificate` (mutual TLS refused the client's certificate or its lack of one), `error` (anything else: plain HTTP, no shared protocol).";
    TLS_CERTIFICATE_EXPIRY: Gauge "fishjam_bridge_tls_certificate_expiry_timestamp_seconds" ["listener"]
        "When the certificate a listener serves expires (its not-after), in Unix seconds; exported again when a renewed certificate is read.";
    LISTENER_CONNECTIONS: Gauge "fishjam_bridge_listener_connections" ["listener"]
        "Open connections on a listener (webhook, admin), by listener.";
    LISTENER_MAX_CONNECTIONS: Gauge "fishjam_bridge_listener_max_connections" ["listener"]
        "The configured cap on a listener's open connections.";
    LISTENER_IDLE_CLOSED: Counter "fishjam_bridge_listener_idle_closed_total" ["listener"]
        "Connections a listener closed after its idle timeout without traffic.";
    SPOOL_BYTES: Gauge "fishjam_bridge_spool_bytes" []
        "Bytes of the disk spool's files.";
    SPOOL_MAX_BYTES: Gauge "fishjam_bridge_spool_max_bytes" []
        "The spool's cap (spool.max_bytes); 0 without a spool.";
    SPOOL_ENGAGED: Gauge "fishjam_bridge_spool_engaged" []
        "1 while bodies go to the disk spool instead of straight to the sinks.";
    SPOOL_BODIES: Counter "fishjam_bridge_spool_bodies_total" ["op", "source"]
        "Bodies written to the spool, replayed from it (passed on to the sinks; a body fan-out still held when the spool engaged, or a notifier frame's copy, is not sent again), refused because it was full, failed to write, or (a notifier frame's copy) not copied because copies held half the spool or waited for the disk, or not replayed after a restart in a fleet that elects the notifier's holder, by op and source.";
    SPOOL_TORN: Counter "fishjam_bridge_spool_torn_entries_total" []
        "Spool entries found torn or unreadable when the spool was opened (cut off, never replayed).";
    SPOOL_SYNC: Histogram "fishjam_bridge_spool_write_duration_seconds" []
        "Time to write (and, with spool.fsync, sync) one batch of spooled bodies.";
    TAP_CLIENTS: Gauge "fishjam_bridge_tap_clients" []
        "Clients reading /tap (fishjam-bridge tap) now.";
    TAP_DROPPED: Counter "fishjam_bridge_tap_dropped_events_total" []
        "Events a /tap client lost because it read too slowly (the pipeline never waits for it).";
    SPOOL_CURSOR: Gauge "fishjam_bridge_spool_cursor" ["sink"]
        "The sequence number below which a sink acknowledged every spooled body.";
    SINK_LAG_EVENTS: Gauge "fishjam_bridge_sink_lag_events" ["sink"]
        "Events accepted that a sink has not acknowledged: spooled behind its cursor, or in its bound, whichever is more.";
    SINK_LAG_BYTES: Gauge "fishjam_bridge_sink_lag_bytes" ["sink"]
        "Bytes of the spooled bodies a sink has not acknowledged.";
    SINK_LAG_SECONDS: Gauge "fishjam_bridge_sink_lag_seconds" ["sink"]
        "Age of the oldest spooled body a sink has not acknowledged or, with none, how long it has held events without delivering; 0 when it holds nothing.";
    KAFKA_QUEUE: Gauge "fishjam_bridge_kafka_queue_messages" ["sink"]
        "Records in librdkafka's local queue (from its statistics, every 5 s).";
    KAFKA_BROKER_RTT: Gauge "fishjam_bridge_kafka_broker_rtt_seconds" ["sink", "broker"]
        "Average round trip to each broker.";
    KAFKA_BROKER_ERRORS: Counter "fishjam_bridge_kafka_broker_errors_total" ["sink", "broker"]
        "Transmission errors and request timeouts to each broker.";
    KAFKA_BROKER_RETRIES: Counter "fishjam_bridge_kafka_broker_retries_total" ["sink", "broker"]
        "Requests librdkafka sent again to each broker.";
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
    /// For systemd's journal: each line prefixed with its syslog priority
    /// (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug), no time stamp
    /// (the journal adds its own) and no colour.
    Journald,
}

/// A line as the journal reads it from a service's stderr.
struct Journald;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Journald
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>{}: ", event.metadata().target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
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
    // Colours only for a person at a terminal: journald and log shippers
    // would store the escape codes around every field.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // A second init (tests, the demo) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Journald => builder.with_ansi(false).event_format(Journald).try_init(),
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
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.help),
            Kind::Gauge => describe_gauge!(metric.name, metric.help),
            Kind::Histogram => describe_histogram!(metric.name, metric.help),
        }
    }
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

/// The `peer_type` label of room activity: a peer's type (or `unknown`
/// when this version cannot name it), or what rooms, streamers and viewers
/// count under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerTypeLabel {
    Peer(PeerType),
    Unknown,
    None,
    Streamer,
    Viewer,
}

impl PeerTypeLabel {
    const COUNT: usize = PeerType::ALL.len() + 4;

    pub fn as_str(self) -> &'static str {
        match self {
            PeerTypeLabel::Peer(peer_type) => peer_type.as_str(),
            PeerTypeLabel::Unknown => "unknown",
            PeerTypeLabel::None => "none",
            PeerTypeLabel::Streamer => "streamer",
            PeerTypeLabel::Viewer => "viewer",
        }
    }

    /// Its position in the handle tables below.
    fn index(self) -> usize {
        let others = PeerType::ALL.len();
        match self {
            PeerTypeLabel::Peer(peer_type) => peer_type.index(),
            PeerTypeLabel::Unknown => others,
            PeerTypeLabel::None => others + 1,
            PeerTypeLabel::Streamer => others + 2,
            PeerTypeLabel::Viewer => others + 3,
        }
    }
}

/// Room or peer lifecycle events, published once, through a handle per
/// type and label resolved on first use (as `events_received`).
pub fn room_events(event_type: EventType, peer_type: PeerTypeLabel, count: u64) {
    static HANDLES: [[OnceLock<Counter>; PeerTypeLabel::COUNT]; EVENT_TYPES] =
        [const { [const { OnceLock::new() }; PeerTypeLabel::COUNT] }; EVENT_TYPES];
    HANDLES[event_type.index()][peer_type.index()]
        .get_or_init(|| {
            counter!(ROOM_EVENTS, "event_type" => event_type.as_str(), "peer_type" => peer_type.as_str())
        })
        .increment(count);
}

pub fn rooms_known(rooms: usize) {
    static HANDLE: OnceLock<Gauge> = OnceLock::new();
    HANDLE.get_or_init(|| gauge!(ROOMS)).set(rooms as f64);
}

pub fn peers_connected(peer_type: PeerTypeLabel, peers: usize) {
    static HANDLES: [OnceLock<Gauge>; PeerTypeLabel::COUNT] =
        [const { OnceLock::new() }; PeerTypeLabel::COUNT];
    HANDLES[peer_type.index()]
        .get_or_init(|| gauge!(PEERS_CONNECTED, "peer_type" => peer_type.as_str()))
        .set(peers as f64);
}

/// Counts what one body carried: its events (one increment per event type
/// it holds, through handles resolved once), skipped notifications and
/// mended strings.
pub fn body_normalized(source: Source, normalized: &Normalized) {
    let mended_strings = normalized.mended_strings;
    if mended_strings > 0 {
        counter!(STRINGS_MENDED, "source" => source.as_str()).increment(mended_strings as u64);
        tracing::warn!(
            source = source.as_str(),
            strings = mended_strings,
            "invalid UTF-8 in a string field, published with U+FFFD in its place"
        );
    }
    let unembedded: usize = normalized
        .events
        .iter()
        .filter(|event| event.data.has_metadata())
        .map(|event| event.data.unembedded_metadata())
        .sum();
    if unembedded > 0 {
        counter!(METADATA_UNEMBEDDED, "source" => source.as_str()).increment(unembedded as u64);
        tracing::warn!(
            source = source.as_str(),
            strings = unembedded,
            "metadata that looks like JSON but not every parser reads it; published as text only"
        );
    }
    let mut per_type = [(0u64, 0u64); EVENT_TYPES];
    for event in &normalized.events {
        let (count, unmapped_count) = &mut per_type[event.event_type.index()];
        *count += 1;
        *unmapped_count += event.unmapped_enums.len() as u64;
    }
    for (event_type, (count, unmapped)) in EventType::ALL.iter().zip(per_type) {
        if count > 0 {
            events_received(source, *event_type).increment(count);
        }
        if unmapped > 0 {
            counter!(UNMAPPED_ENUMS, "event_type" => event_type.as_str()).increment(unmapped);
        }
    }
    for reason in &normalized.skipped {
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

/// A source starts: its counts of what it could not publish (each reason
/// a notification is skipped, each reason a body is undecodable) at zero.
/// An alert counts their increase (`FishjamBridgeUnknownNotifications`,
/// `FishjamBridgeDecodeFailures`), and Prometheus sees none in a series
/// that first appears already counting.
pub fn source_registered(source: Source) {
    for reason in Skipped::ALL {
        counter!(NOTIFICATIONS_SKIPPED, "source" => source.as_str(), "reason" => reason.as_str())
            .increment(0);
    }
    for reason in DecodeError::REASONS {
        counter!(DECODE_FAILURES, "source" => source.as_str(), "reason" => reason).increment(0);
    }
}

/// The webhook source starts: the answers an alert counts at zero (401,
/// `FishjamBridgeWebhookUnauthorized`; 503, the only 5xx it gives,
/// `FishjamBridgeWebhook5xx`), so that the first burst of them is an
/// increase too, and the source's own counters.
pub fn webhook_registered() {
    for status in ["401", "503"] {
        counter!(WEBHOOK_REQUESTS, "status" => status).increment(0);
    }
    source_registered(Source::Webhook);
}

pub fn decode_failed(source: Source, error: &DecodeError) {
    counter!(DECODE_FAILURES, "source" => source.as_str(), "reason" => error.reason()).increment(1);
    tracing::warn!(source = source.as_str(), error = %error, "undecodable body");
}

pub fn certificate_expires(listener: &'static str, not_after: i64) {
    gauge!(TLS_CERTIFICATE_EXPIRY, "listener" => listener).set(not_after as f64);
}

pub fn webhook_secrets(count: usize) {
    gauge!(WEBHOOK_SECRETS).set(count as f64);
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
    for op in [
        "written",
        "replayed",
        "refused",
        "failed",
        "not_copied",
        "not_replayed",
    ] {
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

/// A body a previous run read from the notifier, not replayed: another
/// replica of the fleet has held the notifier since.
pub fn spool_not_replayed(source: Source) {
    counter!(SPOOL_BODIES, "op" => "not_replayed", "source" => source.as_str()).increment(1);
}

/// A body refused because the spool holds `spool.max_bytes`.
pub fn spool_refused(source: Source) {
    counter!(SPOOL_BODIES, "op" => "refused", "source" => source.as_str()).increment(1);
}

/// A body fan-out admitted that is not copied to the spool (copies hold
/// half of it, or wait for the disk): in memory only, as without a spool.
pub fn spool_copy_skipped(source: Source) {
    counter!(SPOOL_BODIES, "op" => "not_copied", "source" => source.as_str()).increment(1);
}

/// Bodies the spool could not write (a disk error); refused with 503.
pub fn spool_failed(source: Source) {
    counter!(SPOOL_BODIES, "op" => "failed", "source" => source.as_str()).increment(1);
}

pub fn tap_registered() {
    gauge!(TAP_CLIENTS).set(0.0);
    counter!(TAP_DROPPED).increment(0);
}

pub fn tap_clients(delta: f64) {
    gauge!(TAP_CLIENTS).increment(delta);
}

pub fn tap_dropped(events: u64) {
    counter!(TAP_DROPPED).increment(events);
}

/// How far sink `sink` is behind; `cursor` with a spool.
pub fn sink_lag(sink: &str, events: u64, bytes: u64, seconds: f64, cursor: Option<u64>) {
    gauge!(SINK_LAG_EVENTS, "sink" => sink.to_owned()).set(events as f64);
    gauge!(SINK_LAG_BYTES, "sink" => sink.to_owned()).set(bytes as f64);
    gauge!(SINK_LAG_SECONDS, "sink" => sink.to_owned()).set(seconds);
    if let Some(cursor) = cursor {
        gauge!(SPOOL_CURSOR, "sink" => sink.to_owned()).set(cursor as f64);
    }
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

/// The election started: not holding, no transition yet.
pub fn election_started() {
    gauge!(ELECTION_HOLDER).set(0.0);
    gauge!(ELECTION_WITHOUT_HOLDER).set(0.0);
    for to in ["holder", "follower"] {
        counter!(ELECTION_TRANSITIONS, "to" => to).increment(0);
    }
    counter!(ELECTION_RENEWALS).increment(0);
}

/// This replica became the holder (`true`) or stopped being it.
pub fn election_role(holder: bool) {
    gauge!(ELECTION_HOLDER).set(if holder { 1.0 } else { 0.0 });
    let to = if holder { "holder" } else { "follower" };
    counter!(ELECTION_TRANSITIONS, "to" => to).increment(1);
    if holder {
        gauge!(ELECTION_WITHOUT_HOLDER).set(0.0);
    }
}

pub fn election_renewed() {
    counter!(ELECTION_RENEWALS).increment(1);
}

/// How long ago this replica last saw a holder (start-up counts as seen).
pub fn election_without_holder(since_seen: Duration) {
    gauge!(ELECTION_WITHOUT_HOLDER).set(since_seen.as_secs_f64());
}

/// Where the notifier's session is, as `fishjam_bridge_notifier_state`
/// shows it: one series per state, 1 for the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierState {
    Connecting,
    Authenticating,
    Subscribed,
    /// Waiting before the next connect.
    Backoff,
    /// Another replica holds the notifier.
    Standby,
}

impl NotifierState {
    const ALL: [NotifierState; 5] = [
        NotifierState::Connecting,
        NotifierState::Authenticating,
        NotifierState::Subscribed,
        NotifierState::Backoff,
        NotifierState::Standby,
    ];

    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierState::Connecting => "connecting",
            NotifierState::Authenticating => "authenticating",
            NotifierState::Subscribed => "subscribed",
            NotifierState::Backoff => "backoff",
            NotifierState::Standby => "standby",
        }
    }
}

pub fn notifier_state(state: NotifierState) {
    for candidate in NotifierState::ALL {
        let value = if candidate == state { 1.0 } else { 0.0 };
        gauge!(NOTIFIER_STATE, "state" => candidate.as_str()).set(value);
    }
}

pub fn notifier_connected() {
    counter!(NOTIFIER_CONNECTS).increment(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(NOTIFIER_SESSION_START).set(now.as_secs_f64());
}

pub fn notifier_disconnected(reason: &'static str) {
    gauge!(NOTIFIER_SESSION_START).set(0.0);
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
pub fn reconciled(
    result: Result<&[crate::core::event::Event], &(dyn std::error::Error + 'static)>,
) {
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
                error = %Chain(error),
                "cannot reconcile with Fishjam's rooms; changes during the gap may be missing"
            );
        }
    }
}

/// Exports the notifier's series at zero from the start.
pub fn notifier_registered() {
    source_registered(Source::Notifier);
    notifier_state(NotifierState::Connecting);
    counter!(NOTIFIER_CONNECTS).increment(0);
    histogram!(NOTIFIER_PAUSED).record(0.0);
    counter!(NOTIFIER_IGNORED).increment(0);
    for result in ["ok", "failed"] {
        counter!(RECONCILIATIONS, "result" => result).increment(0);
    }
    counter!(RECONCILED_EVENTS, "event_type" => "roomCreated").increment(0);
    gauge!(NOTIFIER_BACKOFF).set(0.0);
    gauge!(NOTIFIER_LAST_MESSAGE).set(0.0);
    gauge!(NOTIFIER_SESSION_START).set(0.0);
    for reason in [
        "connect_failed",
        "auth_rejected",
        "handshake_failed",
        "silent",
        "closed_by_server",
        "io_error",
        "lease_lost",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_type_label_has_a_handle_slot_of_its_own() {
        let mut labels: Vec<PeerTypeLabel> =
            PeerType::ALL.into_iter().map(PeerTypeLabel::Peer).collect();
        labels.extend([
            PeerTypeLabel::Unknown,
            PeerTypeLabel::None,
            PeerTypeLabel::Streamer,
            PeerTypeLabel::Viewer,
        ]);
        let mut slots: Vec<usize> = labels.iter().map(|label| label.index()).collect();
        slots.sort_unstable();
        assert_eq!(slots, (0..PeerTypeLabel::COUNT).collect::<Vec<_>>());
        let names: std::collections::BTreeSet<&str> =
            labels.iter().map(|label| label.as_str()).collect();
        assert_eq!(
            names.len(),
            PeerTypeLabel::COUNT,
            "each label names one series"
        );
    }
}
