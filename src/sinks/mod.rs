//! The sink seam: every destination is a variant of `Sink`, with the same
//! verbs (`connect`, `publish` with acknowledgement, `close` with flush).
//!
//! Adding a broker means a file here with its `...Config` and `...Sink`, and a
//! variant in `SinkConfig` and `Sink`; the compiler lists every other match to
//! extend. A sink never decides what is retried: it reports how many messages
//! of a batch are safe and why the rest are not, and the lane (`lane.rs`)
//! retries them in order.

mod nats_wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::admin::{Check, Readiness, Role};
use crate::core::cloudevents;
use crate::core::event::{Event, Message, SCHEMA_VERSION_TEXT};
use crate::core::route::{Filter, UnknownName};
use crate::telemetry;

/// What the seam needs of a sink's configuration: its common fields, its
/// checks, and how to connect. `sinks!` makes the rest.
pub trait SinkKind {
    /// The connected sink.
    type Sink: Publish + std::fmt::Debug;
    /// Name in logs and metrics, when set (default: the `type`).
    fn name(&self) -> Option<&str>;
    /// Which events the sink takes.
    fn route(&self) -> &RouteConfig;
    /// The sink's lanes: its own `lanes`, else its type's default from
    /// `pipeline.lanes`.
    fn lanes(&self, pipeline: usize) -> usize {
        pipeline
    }
    /// Problems with the values, each starting with its key.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
    /// What `check-config` prints after the name, without secrets.
    fn describe(&self) -> String {
        String::new()
    }
    /// The credentials that may come from a file (`password_file` beside
    /// `password`), read when the configuration is loaded.
    fn secret_files(&mut self) -> Vec<SecretFile<'_>> {
        Vec::new()
    }
    /// Connects; `health` is told when the connection comes and goes.
    fn connect(
        &self,
        health: SinkHealth,
    ) -> impl Future<Output = Result<Self::Sink, SinkError>> + Send;
}

/// The credential to present at a (re)connect: what `file` holds now, so a
/// rotated credential needs no restart; `configured` (read with the
/// configuration) when there is no file or it cannot be read now, which is
/// logged.
pub fn current_secret(
    configured: &crate::core::settings::Secret,
    file: Option<&std::path::Path>,
    sink: &str,
) -> crate::core::settings::Secret {
    let Some(path) = file else {
        return configured.clone();
    };
    match std::fs::read_to_string(path) {
        Ok(text) => crate::core::settings::Secret::from_file_text(&text),
        Err(e) => {
            tracing::warn!(sink, file = %path.display(), error = %e, "cannot read the credential file again; presenting the credential read at start-up");
            configured.clone()
        }
    }
}

/// A credential of a sink and the file that may hold it instead.
pub struct SecretFile<'a> {
    /// Its key, such as `password`.
    pub key: &'static str,
    pub value: &'a mut Option<crate::core::settings::Secret>,
    pub file: Option<&'a std::path::Path>,
}

/// The list of sinks: each line declares the sink's module and makes it a
/// `type` of `[[sinks]]`; every dispatch over sinks is generated from it.
macro_rules! sinks {
    ($($(#[$doc:meta])* $module:ident::$config:ident as $variant:ident($type:literal $(| $alias:literal)*),)*) => {
        $(pub mod $module;)*

        /// One entry of `[[sinks]]`, chosen by its `type`.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        pub enum SinkConfig {
            $($(#[$doc])* #[serde(rename = $type $(, alias = $alias)*)] $variant(Box<$module::$config>),)*
        }

        /// A connected sink.
        #[derive(Debug)]
        pub enum Sink {
            $($variant(Box<<$module::$config as SinkKind>::Sink>),)*
        }

        impl SinkConfig {
            /// The sink's name in logs and metric labels.
            pub fn name(&self) -> &str {
                match self {
                    $(SinkConfig::$variant(c) => c.name().unwrap_or($type),)*
                }
            }

            /// The sink's `type`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(SinkConfig::$variant(_) => $type,)*
                }
            }

            /// The sink's lanes: its own `lanes`, else the sink type's
            /// default, else `pipeline.lanes`.
            pub fn lanes(&self, pipeline_default: usize) -> usize {
                match self {
                    $(SinkConfig::$variant(c) => c.lanes(pipeline_default),)*
                }
            }

            /// Which events the sink takes.
            pub fn route(&self) -> &RouteConfig {
                match self {
                    $(SinkConfig::$variant(c) => c.route(),)*
                }
            }

            fn validate_kind(&self) -> Vec<String> {
                match self {
                    $(SinkConfig::$variant(c) => c.validate(),)*
                }
            }

            /// The credentials that may come from a file.
            pub fn secret_files(&mut self) -> Vec<SecretFile<'_>> {
                match self {
                    $(SinkConfig::$variant(c) => c.secret_files(),)*
                }
            }

            fn describe_kind(&self) -> String {
                match self {
                    $(SinkConfig::$variant(c) => c.describe(),)*
                }
            }

            async fn connect_kind(&self, health: SinkHealth) -> Result<Sink, SinkError> {
                Ok(match self {
                    $(SinkConfig::$variant(c) => Sink::$variant(Box::new(c.connect(health).await?)),)*
                })
            }
        }

        impl Publish for Sink {
            fn name(&self) -> &str {
                match self {
                    $(Sink::$variant(s) => s.name(),)*
                }
            }

            fn stores_prefixes(&self) -> bool {
                match self {
                    $(Sink::$variant(s) => s.stores_prefixes(),)*
                }
            }

            async fn publish(&self, batch: &[&Message]) -> Result<(), PublishError> {
                match self {
                    $(Sink::$variant(s) => s.publish(batch).await,)*
                }
            }

            async fn close(&self) -> Result<(), SinkError> {
                match self {
                    $(Sink::$variant(s) => s.close().await,)*
                }
            }
        }
    };
}

sinks! {
    /// JSON lines on standard output.
    stdout::StdoutConfig as Stdout("stdout"),
    /// JSON lines appended to a file.
    file::FileConfig as File("file"),
    /// NATS, core or JetStream.
    nats::NatsConfig as Nats("nats"),
    /// RabbitMQ (AMQP 0-9-1) with publisher confirms.
    amqp::AmqpConfig as Amqp("amqp" | "rabbitmq"),
    /// Kafka, keyed by room, acks=all, idempotent.
    kafka::KafkaConfig as Kafka("kafka"),
    /// HTTP POSTs signed with Standard Webhooks.
    http::HttpConfig as Http("http"),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout(Box::default())
    }
}

impl SinkConfig {
    /// Problems with the values, each starting with its key.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.validate_kind();
        match self.route().filter() {
            Err(unknown) => problems.push(format!("route: {unknown}")),
            Ok(filter) if filter.takes_none() => {
                problems.push("route: takes no event (exclude removes all it includes)".to_owned())
            }
            Ok(_) => {}
        }
        problems
    }

    /// One line for `check-config`, without secrets.
    pub fn describe(&self) -> String {
        let route = self.route();
        let mut line = format!("{} (name {:?}", self.kind(), self.name());
        let details = self.describe_kind();
        if !details.is_empty() {
            line.push_str(", ");
            line.push_str(&details);
        }
        line.push(')');
        if !route.include.is_empty() {
            line.push_str(&format!(", takes only {}", route.include.join(", ")));
        }
        if !route.exclude.is_empty() {
            line.push_str(&format!(", not {}", route.exclude.join(", ")));
        }
        line
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

    /// Flushes what the sink buffers and disconnects.
    fn close(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
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
    /// The receiver asked for a pause (a 429 or a 503 with `Retry-After`):
    /// retried, not before `retry_after`.
    #[error("{cause}; asked to retry after {}s", retry_after.as_secs())]
    Throttled {
        cause: String,
        retry_after: Duration,
    },
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
            SinkError::Throttled { .. } => "throttled",
        }
    }

    /// How long the destination asked the bridge to wait before a retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The outcome of a batch whose messages the broker answers one by one: the
/// unbroken run of successes from the start of the batch, the first
/// failure as the batch's error, the later messages that succeeded too
/// (each of another room in a lane's wave) and the longest pause any
/// failure asked for.
#[derive(Debug, Default)]
pub struct Settlement {
    answered: usize,
    acknowledged: usize,
    failure: Option<SinkError>,
    also_acknowledged: Vec<usize>,
    retry_after: Option<Duration>,
}

impl Settlement {
    /// Records the answer to the next message, in batch order.
    pub fn record(&mut self, answer: Result<(), SinkError>) {
        let index = self.answered;
        self.answered += 1;
        match answer {
            Ok(()) if self.failure.is_none() => self.acknowledged += 1,
            Ok(()) => self.also_acknowledged.push(index),
            Err(error) => {
                self.retry_after = self.retry_after.max(error.retry_after());
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
                also_acknowledged: self.also_acknowledged,
                retry_after: self.retry_after,
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
    check: Arc<Check>,
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
        let check = readiness.register_as(&format!("sink:{name}"), Role::Sink);
        telemetry::sink_registered(name);
        SinkHealth {
            name: Arc::from(name),
            check: Arc::new(check),
            state: Arc::new(std::sync::atomic::AtomicU8::new(UNKNOWN)),
            problem: Arc::default(),
            established: Arc::default(),
        }
    }

    /// What keeps the sink from taking events, while it does not.
    pub fn problem(&self) -> Option<String> {
        self.check.problem()
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
        self.check.set_with_problem(up, problem.clone());
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

/// A batch that was not wholly acknowledged: the first `acknowledged`
/// events are safe, the rest are not, but for `also_acknowledged`.
#[derive(Debug)]
pub struct PublishError {
    pub acknowledged: usize,
    pub error: SinkError,
    /// Indices past the first failure that the destination took as well.
    /// Counted only where the sink does not store prefixes: a lane's wave
    /// holds one message of each room, so each is safe on its own.
    pub also_acknowledged: Vec<usize>,
    /// The longest pause the destination asked for with any failure.
    pub retry_after: Option<Duration>,
}

impl PublishError {
    /// The first `acknowledged` messages are safe, and none after them.
    pub fn new(acknowledged: usize, error: SinkError) -> PublishError {
        PublishError {
            retry_after: error.retry_after(),
            acknowledged,
            error,
            also_acknowledged: Vec::new(),
        }
    }
}

impl Sink {
    /// Connects; `health` is told when the connection comes and goes.
    pub async fn connect(config: &SinkConfig, health: SinkHealth) -> Result<Sink, SinkError> {
        let sink = config.connect_kind(health.clone()).await?;
        health.establish();
        Ok(sink)
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
