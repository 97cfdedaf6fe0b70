//! The sink seam: every destination is a variant of `Sink`, with the same
//! verbs (`connect`, `publish` with acknowledgement, `close` with flush).
//!
//! Adding a broker means a file here with its `...Config` and `...Sink`, and a
//! variant in `SinkConfig` and `Sink`; the compiler lists every other match to
//! extend. A sink never decides what is retried: it reports how many messages
//! of a batch are safe and why the rest are not, and the lane (`lane.rs`)
//! retries them in order.

pub mod amqp;
pub mod kafka;
pub mod nats;
pub mod nats_wire;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;

use crate::admin::Readiness;
use crate::core::cloudevents;
use crate::core::event::{Event, Message, SCHEMA_VERSION_TEXT};
use crate::core::route::{Filter, UnknownName};
use crate::telemetry;

/// One entry of `[[sinks]]`, chosen by its `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout(stdout::StdoutConfig),
    /// JSON lines appended to a file.
    File(stdout::FileConfig),
    /// NATS, core or JetStream.
    Nats(Box<nats::NatsConfig>),
    /// RabbitMQ (AMQP 0-9-1) with publisher confirms.
    #[serde(alias = "rabbitmq")]
    Amqp(Box<amqp::AmqpConfig>),
    /// Kafka, keyed by room, acks=all, idempotent.
    Kafka(Box<kafka::KafkaConfig>),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout(stdout::StdoutConfig::default())
    }
}

impl SinkConfig {
    /// The sink's name in logs and metric labels.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::Stdout(c) => c.name.as_deref().unwrap_or("stdout"),
            SinkConfig::File(c) => c.name.as_deref().unwrap_or("file"),
            SinkConfig::Nats(c) => c.name.as_deref().unwrap_or("nats"),
            SinkConfig::Amqp(c) => c.name.as_deref().unwrap_or("amqp"),
            SinkConfig::Kafka(c) => c.name.as_deref().unwrap_or("kafka"),
        }
    }

    /// The sink's lanes: its own `lanes`, else the sink type's default, else
    /// `pipeline.lanes`.
    pub fn lanes(&self, pipeline_default: usize) -> usize {
        match self {
            SinkConfig::Stdout(_) | SinkConfig::File(_) => pipeline_default,
            SinkConfig::Nats(c) if c.mode == nats::NatsMode::Core => {
                c.lanes.unwrap_or(pipeline_default)
            }
            // JetStream acks and RabbitMQ confirms wait for the server's
            // storage: more batches in flight keep it busy (measured in
            // BENCHMARKS.md).
            SinkConfig::Nats(c) => c.lanes.unwrap_or(pipeline_default.max(16)),
            SinkConfig::Amqp(c) => c.lanes.unwrap_or(pipeline_default.max(32)),
            SinkConfig::Kafka(c) => c.lanes.unwrap_or(pipeline_default),
        }
    }

    /// Problems with the values, each starting with its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = match self {
            SinkConfig::Stdout(_) => Vec::new(),
            SinkConfig::File(c) => c.validate(),
            SinkConfig::Nats(c) => c.validate(),
            SinkConfig::Amqp(c) => c.validate(),
            SinkConfig::Kafka(c) => c.validate(),
        };
        match self.route().filter() {
            Err(unknown) => problems.push(format!("route: {unknown}")),
            Ok(filter) if filter.takes_none() => {
                problems.push("route: takes no event (exclude removes all it includes)".to_owned())
            }
            Ok(_) => {}
        }
        problems
    }

    /// Which events the sink takes.
    pub fn route(&self) -> &RouteConfig {
        match self {
            SinkConfig::Stdout(c) => &c.route,
            SinkConfig::File(c) => &c.route,
            SinkConfig::Nats(c) => &c.route,
            SinkConfig::Amqp(c) => &c.route,
            SinkConfig::Kafka(c) => &c.route,
        }
    }

    /// One line for `check-config`, without secrets.
    pub fn describe(&self) -> String {
        let route = self.route();
        let mut line = self.describe_sink();
        if !route.include.is_empty() {
            line.push_str(&format!(", takes only {}", route.include.join(", ")));
        }
        if !route.exclude.is_empty() {
            line.push_str(&format!(", not {}", route.exclude.join(", ")));
        }
        line
    }

    fn describe_sink(&self) -> String {
        match self {
            SinkConfig::Stdout(_) => format!("stdout (name {:?})", self.name()),
            SinkConfig::File(c) => format!(
                "file (name {:?}, path {}, fsync {})",
                self.name(),
                c.path.display(),
                c.fsync
            ),
            SinkConfig::Nats(c) => format!("nats (name {:?}, {})", self.name(), c.describe()),
            SinkConfig::Amqp(c) => format!("amqp (name {:?}, {})", self.name(), c.describe()),
            SinkConfig::Kafka(c) => format!("kafka (name {:?}, {})", self.name(), c.describe()),
        }
    }
}

/// `[sinks.route]`: which events a sink takes, by event type (such as
/// `vadNotification`) or key kind (`rooms`, `streams`, `recordings`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only these (default: every event).
    #[serde(default)]
    pub include: Vec<String>,
    /// Not these, even when included.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl RouteConfig {
    pub fn filter(&self) -> Result<Filter, UnknownName> {
        Filter::new(&self.include, &self.exclude)
    }
}

/// What a lane needs of a sink.
pub trait Publish: Send + Sync {
    /// The sink's name in logs and metric labels.
    fn name(&self) -> &str;

    /// Publishes `batch` in order and returns once the destination holds
    /// all of it, or says how many from the start it holds.
    fn publish(&self, batch: &[&Message]) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Whether a failed batch leaves stored at most a run from its start.
    /// True where messages go in order over one stream (core NATS, files).
    /// Where the broker answers each message on its own (JetStream,
    /// RabbitMQ) or the client may drop an earlier one and send later ones
    /// (Kafka, whose producer skips a record that timed out in its queue),
    /// a later message of a room can be stored while an earlier one failed,
    /// and a retry would store the earlier one after it: the lane then never
    /// has two messages of one room unacknowledged at once.
    fn stores_prefixes(&self) -> bool {
        false
    }
}

/// A connected sink.
#[derive(Debug)]
pub enum Sink {
    Stdout(stdout::StdoutSink),
    Nats(Box<nats::NatsSink>),
    Amqp(Box<amqp::AmqpSink>),
    Kafka(Box<kafka::KafkaSink>),
}

/// Why a connect or a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or stream the sink writes: what it was doing, and where, and
    /// the OS's error.
    #[error("{doing}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid sink configuration: {0}")]
    Config(String),
    /// Reaching the broker failed: where (credentials masked), and why.
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: Cause,
    },
    #[error("publish failed")]
    Publish(#[source] Cause),
    #[error("no acknowledgement within the timeout")]
    Timeout,
    /// The broker refused this message and would refuse it again (too
    /// large, invalid): it is dead-lettered, not retried.
    #[error("the broker refused the message for good: {0}")]
    Rejected(String),
    /// The broker refused the message for now (a RabbitMQ nack): retried.
    #[error("the broker did not take the message: {0}")]
    Nacked(String),
}

/// What made a sink error: the library's or the OS's error (or a text
/// where there is none), kept so that logs print the whole chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl SinkError {
    pub fn connect(target: impl Into<String>, source: impl Into<Cause>) -> SinkError {
        SinkError::Connect {
            target: target.into(),
            source: source.into(),
        }
    }

    pub fn publish(source: impl Into<Cause>) -> SinkError {
        SinkError::Publish(source.into())
    }

    /// A short, fixed label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Io { .. } => "io",
            SinkError::Config(_) => "config",
            SinkError::Connect { .. } => "connect",
            SinkError::Publish(_) => "publish",
            SinkError::Timeout => "timeout",
            SinkError::Rejected(_) => "rejected",
            SinkError::Nacked(_) => "nacked",
        }
    }
}

/// The outcome of a batch whose messages the broker answers one by one: only
/// the unbroken run of successes from the start of the batch counts, and the
/// first failure is the batch's error.
#[derive(Debug, Default)]
pub struct Settlement {
    acknowledged: usize,
    failure: Option<SinkError>,
}

impl Settlement {
    /// Records the answer to the next message, in batch order.
    pub fn record(&mut self, answer: Result<(), SinkError>) {
        match answer {
            Ok(()) if self.failure.is_none() => self.acknowledged += 1,
            Ok(()) => {}
            Err(error) => {
                self.failure.get_or_insert(error);
            }
        }
    }

    pub fn finish(self) -> Result<(), PublishError> {
        match self.failure {
            None => Ok(()),
            Some(error) => Err(PublishError {
                acknowledged: self.acknowledged,
                error,
            }),
        }
    }
}

/// A sink's view of its own health: its readiness check and its `up` gauge.
/// The sink is up when its connection is and nothing else is wrong (a Kafka
/// topic that does not exist, say).
#[derive(Debug, Clone)]
pub struct SinkHealth {
    name: Arc<str>,
    readiness: Readiness,
    /// The connection: `UNKNOWN`, `UP` or `DOWN`, shared by the clones.
    state: Arc<std::sync::atomic::AtomicU8>,
    /// What else keeps the sink from taking events; also held while the
    /// readiness check is written, so the last writer writes the latest.
    problem: Arc<std::sync::Mutex<Option<String>>>,
    /// Whether `Sink::connect` has finished: a client's own connection
    /// event comes before what connecting sets up (a JetStream stream, a
    /// Kafka topic check), and must not make the sink up before that.
    established: Arc<std::sync::atomic::AtomicBool>,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl SinkHealth {
    pub fn new(name: &str, readiness: Readiness) -> SinkHealth {
        let health = SinkHealth {
            name: Arc::from(name),
            readiness,
            state: Arc::new(std::sync::atomic::AtomicU8::new(UNKNOWN)),
            problem: Arc::default(),
            established: Arc::default(),
        };
        health
            .readiness
            .register_as(&health.check(), crate::admin::Role::Sink);
        telemetry::sink_registered(name);
        health
    }

    fn check(&self) -> String {
        format!("sink:{}", self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Says whether the sink can take events; cheap when nothing changed,
    /// so a sink may say it after every batch.
    pub fn set(&self, up: bool) {
        let state = if up { UP } else { DOWN };
        if self.state.swap(state, std::sync::atomic::Ordering::AcqRel) == state {
            return;
        }
        self.publish(&self.problem.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The sink's connect has finished: from now on the connection's state
    /// says whether it is up.
    fn establish(&self) {
        let problem = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        self.established
            .store(true, std::sync::atomic::Ordering::Release);
        self.state.store(UP, std::sync::atomic::Ordering::Release);
        self.publish(&problem);
    }

    /// Says what else keeps the sink from taking events (`None`: nothing).
    pub fn set_problem(&self, problem: Option<String>) {
        let mut current = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if *current == problem {
            return;
        }
        *current = problem;
        self.publish(&current);
    }

    fn publish(&self, problem: &Option<String>) {
        let connected = self.established.load(std::sync::atomic::Ordering::Acquire)
            && self.state.load(std::sync::atomic::Ordering::Acquire) == UP;
        let up = connected && problem.is_none();
        self.readiness
            .set_with_problem(&self.check(), up, problem.clone());
        telemetry::sink_up(&self.name, up);
    }
}

/// Calls `add` with each header every broker message carries: the content
/// type (of `cloudevents`' mode), the event id under `id_header`
/// (`Fishjam-Event-Id`, or the broker's own deduplication header), the
/// schema version, the event type, the id that keys the event
/// (`Fishjam-Room-Id`, `Fishjam-Stream-Id` or `Fishjam-Recording-Id`) and the
/// peer id when there is one; in binary mode, the CloudEvents attributes
/// under `ce_prefix`.
pub fn each_header(
    event: &Event,
    id_header: &str,
    cloudevents: cloudevents::Mode,
    ce_prefix: &str,
    mut add: impl FnMut(&str, &str),
) {
    let mut buffer = uuid::Uuid::encode_buffer();
    let id = event.id.hyphenated().encode_lower(&mut buffer);
    add("Content-Type", cloudevents.content_type());
    add(id_header, id);
    add("Fishjam-Schema-Version", SCHEMA_VERSION_TEXT);
    add("Fishjam-Event-Type", event.event_type.as_str());
    let key_kind = event.event_type.key_kind();
    add(key_kind.header(), event.key());
    if let Some(peer_id) = event.peer_id() {
        add("Fishjam-Peer-Id", peer_id);
    }
    if cloudevents == cloudevents::Mode::Binary {
        let mut name = String::with_capacity(ce_prefix.len() + 16);
        cloudevents::each_attribute(event, |attribute, value| {
            name.clear();
            name.push_str(ce_prefix);
            name.push_str(attribute);
            add(&name, value);
        });
    }
}

/// The payload of `message` in `cloudevents`' mode: the event's JSON, or in
/// structured mode the CloudEvent that holds it.
pub fn payload(message: &Message, cloudevents: cloudevents::Mode) -> std::borrow::Cow<'_, [u8]> {
    match cloudevents {
        cloudevents::Mode::Structured => {
            std::borrow::Cow::Owned(cloudevents::structured(&message.event, &message.json))
        }
        cloudevents::Mode::Off | cloudevents::Mode::Binary => {
            std::borrow::Cow::Borrowed(&message.json[..])
        }
    }
}

/// A batch that was not wholly acknowledged: the first `acknowledged` events
/// are safe, the rest are not.
#[derive(Debug)]
pub struct PublishError {
    pub acknowledged: usize,
    pub error: SinkError,
}

impl Sink {
    /// Connects; `health` is told when the connection comes and goes.
    pub async fn connect(config: &SinkConfig, health: SinkHealth) -> Result<Sink, SinkError> {
        let sink = match config {
            SinkConfig::Stdout(c) => Sink::Stdout(stdout::StdoutSink::connect_stdout(c)),
            SinkConfig::File(c) => Sink::Stdout(stdout::StdoutSink::connect_file(c).await?),
            SinkConfig::Nats(c) => {
                Sink::Nats(Box::new(nats::NatsSink::connect(c, health.clone()).await?))
            }
            SinkConfig::Amqp(c) => {
                Sink::Amqp(Box::new(amqp::AmqpSink::connect(c, health.clone()).await?))
            }
            SinkConfig::Kafka(c) => Sink::Kafka(Box::new(
                kafka::KafkaSink::connect(c, health.clone()).await?,
            )),
        };
        health.establish();
        Ok(sink)
    }

    /// Flushes what the sink buffers and disconnects.
    pub async fn close(&self) -> Result<(), SinkError> {
        match self {
            Sink::Stdout(s) => s.close().await,
            Sink::Nats(s) => s.close().await,
            Sink::Amqp(s) => s.close().await,
            Sink::Kafka(s) => s.close().await,
        }
    }
}

impl Publish for Sink {
    fn name(&self) -> &str {
        match self {
            Sink::Stdout(s) => s.name(),
            Sink::Nats(s) => s.name(),
            Sink::Amqp(s) => s.name(),
            Sink::Kafka(s) => s.name(),
        }
    }

    fn stores_prefixes(&self) -> bool {
        match self {
            Sink::Stdout(_) => true,
            Sink::Nats(s) => s.is_core(),
            // librdkafka fails a record that timed out in its queue and
            // still sends the later ones of its partition (it skips the gap
            // with a new epoch), so a retry would store it after them.
            Sink::Amqp(_) | Sink::Kafka(_) => false,
        }
    }

    async fn publish(&self, batch: &[&Message]) -> Result<(), PublishError> {
        match self {
            Sink::Stdout(s) => s.publish(batch).await,
            Sink::Nats(s) => s.publish(batch).await,
            Sink::Amqp(s) => s.publish(batch).await,
            Sink::Kafka(s) => s.publish(batch).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_is_up_only_once_its_connect_has_finished() {
        let readiness = Readiness::default();
        let health = SinkHealth::new("nats", readiness.clone());
        // The client's own "connected" event, while the sink still sets up
        // its stream: not up yet.
        health.set(true);
        assert_eq!(readiness.waiting_for(), ["sink:nats"]);
        health.establish();
        assert!(readiness.waiting_for().is_empty());
        health.set(false);
        assert_eq!(readiness.waiting_for(), ["sink:nats"]);
        health.set(true);
        assert!(readiness.waiting_for().is_empty(), "a reconnect counts");
    }
}
