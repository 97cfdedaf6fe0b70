//! Kafka: records keyed by room, `acks=all`, idempotent, acknowledged by
//! their delivery reports.
//!
//! The record key is the event's key, so a room's events land on one
//! partition, and the idempotent producer keeps them in order there even when
//! librdkafka retries. A batch is handed to librdkafka without waiting; a full
//! local queue is backpressure (wait and hand it over again), not a failure.
//! An event counts as safe only when its delivery report says the broker has
//! it; a failed report (including librdkafka giving up after
//! `message.timeout.ms`) fails the batch from that event on, and the lane
//! publishes it again: nothing is dropped here, unlike sinks that count a
//! message as sent once it is queued. Dropping a producer purges its queue,
//! so `close` flushes first, off the async runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use serde::Deserialize;

use super::{each_header, payload, PublishError, Settlement, SinkError, SinkHealth};
use crate::core::cloudevents;
use crate::core::event::Message;
use crate::core::route::Template;
use crate::core::settings::{duration, Secret};
use crate::telemetry;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Name in logs and metrics; default `kafka`.
    pub name: Option<String>,
    /// `host:port[,host:port...]`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Topic template; `{type}` gives one topic per event type.
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub compression: Compression,
    /// How long librdkafka may try to deliver a record before it reports a
    /// failure; the lane then publishes it again.
    #[serde(default = "default_message_timeout", deserialize_with = "duration")]
    pub message_timeout: Duration,
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password.
    pub sasl_password_file: Option<PathBuf>,
    /// PEM CA file for SSL.
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub ssl_certificate_location: Option<PathBuf>,
    pub ssl_key_location: Option<PathBuf>,
    /// CloudEvents: `"off"` (the default), `"binary"` (or `true`: `ce_*`
    /// headers) or `"structured"` (an `application/cloudevents+json` value).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: super::RouteConfig,
    /// Lanes of this sink (default: pipeline.lanes).
    pub lanes: Option<usize>,
    /// Create the topics the template renders when they do not exist; when
    /// absent, a missing topic is reported (log, `/readyz`) and its records
    /// wait until someone creates it.
    pub create_topic: Option<CreateTopic>,
    /// Any other librdkafka setting, e.g. `"linger.ms" = "10"`. These win over
    /// the settings above.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

/// How the bridge creates a missing topic.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    pub partitions: i32,
    pub replication_factor: i32,
}

fn default_bootstrap() -> String {
    "127.0.0.1:9092".to_owned()
}
fn default_topic() -> String {
    "fishjam.events".to_owned()
}
fn default_client_id() -> String {
    "fishjam-bridge".to_owned()
}
fn default_message_timeout() -> Duration {
    Duration::from_secs(30)
}

/// How records are compressed; librdkafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How the producer reaches the brokers; librdkafka's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// How SASL authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Characters a topic may hold besides its placeholders.
fn valid_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl KafkaConfig {
    /// Where the sink publishes, without credentials.
    pub fn target(&self) -> String {
        crate::core::settings::masked_url(&self.bootstrap_servers)
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", self.compression.as_str())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            // A lane's batch is handed over at once; a short linger lets
            // librdkafka put it in few produce requests (chosen by measurement,
            // BENCHMARKS.md).
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            // The pipeline bounds what is in flight; this only has to hold it.
            .set("queue.buffering.max.messages", "200000")
            .set("statistics.interval.ms", "5000")
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        for (key, path) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ] {
            if let Some(path) = path {
                config.set(key, path.display().to_string());
            }
        }
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
    }
}

/// librdkafka's callbacks: statistics into metrics, broker reachability
/// into readiness.
struct BridgeContext {
    health: SinkHealth,
}

impl ClientContext for BridgeContext {
    fn stats(&self, statistics: Statistics) {
        telemetry::kafka_statistics(self.health.name(), &statistics);
        let up = statistics
            .brokers
            .values()
            .any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        self.health.set(up);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.set(false);
        }
        tracing::warn!(sink = %self.health.name(), error = %error, reason, "kafka client error");
    }
}

pub struct KafkaSink {
    name: String,
    /// Replaced by a new one after a fatal error (`renew`).
    producer: std::sync::RwLock<FutureProducer<BridgeContext>>,
    /// What a new producer is made from.
    client_config: rdkafka::ClientConfig,
    health: SinkHealth,
    topic: Template,
    cloudevents: cloudevents::Mode,
    timeout: Duration,
    /// Checks, while the sink lives, that its topics exist.
    topics_watch: tokio::task::AbortHandle,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.topics_watch.abort();
    }
}

/// How often the sink asks whether its topics exist: a topic created or
/// deleted by hand, or a broker back after an outage, shows within this.
const TOPIC_CHECK: Duration = Duration::from_secs(10);

/// Every topic `template` renders (validated to be a fixed set), and what
/// the sink does about the ones that do not exist.
struct Topics {
    sink: String,
    wanted: Vec<String>,
    create: Option<CreateTopic>,
    config: ClientConfig,
    timeout: Duration,
    health: SinkHealth,
}

impl Topics {
    /// Which of the wanted topics `metadata` (the whole cluster's) does not
    /// list.
    fn missing(&self, metadata: &rdkafka::metadata::Metadata) -> Vec<String> {
        let existing: std::collections::HashSet<&str> = metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none())
            .map(|topic| topic.name())
            .collect();
        self.wanted
            .iter()
            .filter(|name| !existing.contains(name.as_str()))
            .cloned()
            .collect()
    }

    /// Creates `missing` as configured; what could not be created stays
    /// missing.
    async fn create(&self, create: CreateTopic, missing: Vec<String>) -> Vec<String> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = match self.config.create() {
            Ok(admin) => admin,
            Err(error) => {
                tracing::error!(sink = %self.sink, error = %telemetry::Chain(&error), "cannot create a Kafka admin client");
                return missing;
            }
        };
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    create.partitions,
                    TopicReplication::Fixed(create.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = match admin.create_topics(&new, &options).await {
            Ok(results) => results,
            Err(error) => {
                tracing::error!(sink = %self.sink, error = %telemetry::Chain(&error), "cannot create the Kafka topics");
                return missing;
            }
        };
        let mut left = Vec::new();
        for result in results {
            match result {
                Ok(name) => tracing::info!(
                    sink = %self.sink,
                    topic = %name,
                    partitions = create.partitions,
                    replication_factor = create.replication_factor,
                    "created the Kafka topic"
                ),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    tracing::error!(sink = %self.sink, topic = %name, error = %code, "cannot create the Kafka topic");
                    left.push(name);
                }
            }
        }
        left
    }

    /// Looks once at the cluster: see `settle`. A cluster that cannot be
    /// asked changes nothing: the connection's own health says so.
    async fn check(&self, producer: &FutureProducer<BridgeContext>, reported: &mut Vec<String>) {
        if let Ok(metadata) = fetch_metadata(producer, self.timeout).await {
            self.settle(&metadata, reported).await;
        }
    }

    /// Creates what `metadata` lacks when configured, and says what is still
    /// missing in the log (when it changed) and in readiness.
    async fn settle(&self, metadata: &rdkafka::metadata::Metadata, reported: &mut Vec<String>) {
        let mut missing = self.missing(metadata);
        if let (false, Some(create)) = (missing.is_empty(), self.create) {
            missing = self.create(create, missing).await;
        }
        if missing != *reported {
            if missing.is_empty() {
                tracing::info!(sink = %self.sink, "every Kafka topic of the sink exists");
            } else {
                tracing::error!(
                    sink = %self.sink,
                    topics = %missing.join(", "),
                    "Kafka topics do not exist and the broker does not create them: create them, \
                     or set create_topic; their records wait until they exist"
                );
            }
            *reported = missing.clone();
        }
        self.health.set_problem((!missing.is_empty()).then(|| {
            format!(
                "Kafka topic {} does not exist (create it, or set create_topic)",
                missing.join(", ")
            )
        }));
    }
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .finish()
    }
}

impl KafkaSink {
    /// After a fatal error (a fenced or refused idempotent producer)
    /// librdkafka refuses every record for good: the next batch goes
    /// through a new producer, with a new producer id.
    fn renew_if_fatal(&self, failed: &FutureProducer<BridgeContext>) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        let mut current = self.producer.write().expect("never poisoned");
        if current.client().native_ptr() != failed.client().native_ptr() {
            // Another lane renewed it already.
            return;
        }
        match new_producer(&self.client_config, &self.health) {
            Ok(renewed) => {
                tracing::error!(sink = %self.name, error = %code, reason, "kafka producer failed for good; a new producer takes over and its records are published again");
                *current = renewed;
            }
            Err(error) => {
                tracing::error!(sink = %self.name, error = %telemetry::Chain(&error), "kafka producer failed for good and a new one cannot be made; retrying");
            }
        }
    }

    async fn publish_with(
        &self,
        producer: &FutureProducer<BridgeContext>,
        jobs: &[&Message],
    ) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(jobs.len());
        for job in jobs {
            let topic = self.topic.render(&job.event);
            let mut headers = Some(OwnedHeaders::new_with_capacity(8));
            each_header(
                &job.event,
                "Fishjam-Event-Id",
                self.cloudevents,
                "ce_",
                |name, value| {
                    let header = Header {
                        key: name,
                        value: Some(value),
                    };
                    headers = headers.take().map(|h| h.insert(header));
                },
            );
            let payload = payload(job, self.cloudevents);
            let mut record = FutureRecord::to(&topic)
                .key(job.event.key())
                .payload(&payload[..])
                .headers(headers.expect("headers are always rebuilt"));
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((delivery, *job));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: wait for it to drain.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => {
                        // librdkafka refuses a record over message.max.bytes
                        // here, before it is queued: classified like a report.
                        let error = classify(error, self.timeout);
                        return self.settle(deliveries, Some(error)).await;
                    }
                }
            }
        }
        self.settle(deliveries, None).await
    }

    /// Awaits the delivery reports; `failure` is an error met before the
    /// last record was handed over.
    async fn settle(
        &self,
        deliveries: Vec<(rdkafka::producer::DeliveryFuture, &Message)>,
        failure: Option<SinkError>,
    ) -> Result<(), PublishError> {
        let mut settlement = Settlement::default();
        let (futures, jobs): (Vec<_>, Vec<_>) = deliveries.into_iter().unzip();
        let reports = futures_util::future::join_all(futures).await;
        for (report, job) in reports.into_iter().zip(jobs) {
            settlement.record(match report {
                Ok(Ok(delivery)) => {
                    tracing::trace!(
                        partition = delivery.partition,
                        offset = delivery.offset,
                        event_id = %job.event.id,
                        key = job.event.key(),
                        "kafka delivered"
                    );
                    Ok(())
                }
                Ok(Err((error, _))) => Err(classify(error, self.timeout)),
                Err(_) => Err(SinkError::publish("delivery report lost")),
            });
        }
        if let Some(error) = failure {
            settlement.record(Err(error));
        }
        settlement.finish()
    }

}

fn new_producer(
    config: &rdkafka::ClientConfig,
    health: &SinkHealth,
) -> Result<FutureProducer<BridgeContext>, SinkError> {
    config
        .create_with_context(BridgeContext {
            health: health.clone(),
        })
        .map_err(|e| SinkError::Config(e.to_string()))
}

/// The whole cluster's metadata, asked on a blocking thread (librdkafka
/// blocks its caller until the answer or `timeout`).
async fn fetch_metadata(
    producer: &FutureProducer<BridgeContext>,
    timeout: Duration,
) -> Result<rdkafka::metadata::Metadata, Box<dyn std::error::Error + Send + Sync>> {
    let producer = producer.clone();
    Ok(
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
            .await??,
    )
}

fn classify(error: KafkaError, timeout: Duration) -> SinkError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "kafka delivery timed out in librdkafka; the record is published again"
            );
            SinkError::Timeout
        }
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => SinkError::Rejected(error.to_string()),
        _ => SinkError::publish(error),
    }
}

impl super::SinkKind for KafkaConfig {
    type Sink = KafkaSink;

    fn secret_files(&mut self) -> Vec<super::SecretFile<'_>> {
        vec![super::SecretFile {
            key: "sasl_password",
            value: &mut self.sasl_password,
            file: self.sasl_password_file.as_deref(),
        }]
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn route(&self) -> &super::RouteConfig {
        &self.route
    }

    fn lanes(&self, pipeline: usize) -> usize {
        self.lanes.unwrap_or(pipeline)
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match Template::parse(&self.topic, &[]) {
            Ok(template) => {
                let literal: String = self.topic.split(['{', '}']).step_by(2).collect();
                if let Some(bad) = literal.chars().find(|c| !valid_topic_char(*c)) {
                    problems.push(format!(
                        "topic: {bad:?} is not allowed in a Kafka topic name (letters, digits, '.', '_', '-')"
                    ));
                }
                // Every name the template renders must be one Kafka takes:
                // `{kind}` and `{type}` are a few legal words; an id's value
                // may hold any character, and makes a topic per room.
                match template.names() {
                    Ok(names) => {
                        let longest = names.iter().map(String::len).max().unwrap_or(0);
                        if longest > 249 {
                            problems.push(format!(
                                "topic: can render names of {longest} characters; Kafka takes at most 249"
                            ));
                        }
                    }
                    Err(open) => {
                        problems.push(format!(
                        "topic: {} can render names Kafka refuses (any character of an id) and a \
                         topic per value; a topic may use {{kind}} and {{type}} (records are keyed \
                         by room already)",
                        open.iter().map(|name| format!("{{{name}}}")).collect::<Vec<_>>().join(", ")
                    ))
                    }
                }
            }
            Err(problem) => problems.push(format!("topic: {problem}")),
        }
        if self.bootstrap_servers.trim().is_empty() {
            problems.push("bootstrap_servers must not be empty".to_owned());
        }
        if self.security_protocol.uses_sasl()
            && (self.sasl_username.is_none() || self.sasl_password.is_none())
        {
            problems.push("sasl security needs sasl_username and sasl_password".to_owned());
        }
        if self.message_timeout.is_zero() {
            problems.push("message_timeout must be longer than zero".to_owned());
        }
        if self.lanes == Some(0) {
            problems.push("lanes must be at least 1".to_owned());
        }
        if let Some(create) = self.create_topic {
            if create.partitions < 1 || create.replication_factor < 1 {
                problems.push(
                    "create_topic.partitions and create_topic.replication_factor must be at least 1"
                        .to_owned(),
                );
            }
        }
        // Settings that would break the delivery promise are not overridable.
        for key in ["acks", "enable.idempotence"] {
            if self.librdkafka.contains_key(key) {
                problems.push(format!(
                    "librdkafka.{key}: fixed by the bridge (acks=all, idempotence on), so nothing acknowledged can be lost"
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        format!(
            "bootstrap {}, topic {:?}, compression {}, security {}, sasl user {}",
            self.target(),
            self.topic,
            self.compression.as_str(),
            self.security_protocol.as_str(),
            self.sasl_username.as_deref().unwrap_or("none")
        )
    }

    async fn connect(&self, health: SinkHealth) -> Result<KafkaSink, SinkError> {
        let config = self;
        let name = config.name.clone().unwrap_or_else(|| "kafka".to_owned());
        let topic =
            Template::parse(&config.topic, &[]).map_err(|e| SinkError::Config(e.to_string()))?;
        let client_config = config.client_config();
        let producer = new_producer(&client_config, &health)?;
        // Creating a producer does not contact the cluster: ask for metadata
        // once, so that a wrong address is reported at start-up.
        let timeout = config.message_timeout.min(Duration::from_secs(10));
        let metadata = fetch_metadata(&producer, timeout)
            .await
            .map_err(|e| SinkError::connect(config.target(), e))?;
        // The same answer says whether its topics exist (a broker with
        // auto-creation off, as most production clusters are, would hold
        // their records forever); asked again from time to time while the
        // sink lives.
        let topics = Topics {
            sink: name.clone(),
            wanted: topic.names().map_err(|_| {
                SinkError::Config(format!("topic {:?} renders open names", config.topic))
            })?,
            create: config.create_topic,
            config: client_config.clone(),
            timeout,
            health: health.clone(),
        };
        let mut reported = Vec::new();
        topics.settle(&metadata, &mut reported).await;
        let watched = producer.clone();
        let topics_watch = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TOPIC_CHECK).await;
                topics.check(&watched, &mut reported).await;
            }
        })
        .abort_handle();
        Ok(KafkaSink {
            name,
            topics_watch,
            producer: std::sync::RwLock::new(producer),
            client_config,
            health,
            topic,
            cloudevents: config.cloudevents,
            timeout: config.message_timeout,
        })
    }
}

impl super::Publish for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, jobs: &[&Message]) -> Result<(), PublishError> {
        let producer = self.producer.read().expect("never poisoned").clone();
        let published = self.publish_with(&producer, jobs).await;
        if published.is_err() {
            self.renew_if_fatal(&producer);
        }
        published
    }

    /// Flushes what librdkafka still holds, within `grace`.
    async fn close(&self) -> Result<(), SinkError> {
        let producer = self.producer.read().expect("never poisoned").clone();
        let grace = self.timeout;
        // flush blocks its thread until delivered or timed out.
        let flushing = producer.clone();
        let flushed = tokio::task::spawn_blocking(move || flushing.flush(grace))
            .await
            .map_err(SinkError::publish)?;
        let left = producer.in_flight_count();
        match flushed {
            Ok(()) => Ok(()),
            Err(error) => Err(SinkError::publish(format!(
                "{left} records not delivered at shutdown: {error}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkKind as _;

    #[test]
    fn defaults_are_safe_and_valid() {
        let config: KafkaConfig = toml::from_str("").unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        let client = config.client_config();
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn the_delivery_promise_cannot_be_configured_away() {
        let config: KafkaConfig = toml::from_str(
            "topic = \"fishjam events\"\nsecurity_protocol = \"sasl_ssl\"\n[librdkafka]\nacks = \"1\"\n",
        )
        .unwrap();
        let problems = config.validate().join("\n");
        assert!(problems.contains("topic"), "{problems}");
        assert!(problems.contains("sasl_username"), "{problems}");
        assert!(problems.contains("librdkafka.acks"), "{problems}");
    }

    #[test]
    fn named_choices_are_read_once_and_an_unknown_one_is_refused_with_the_choices() {
        let config: KafkaConfig = toml::from_str(
            "compression = \"zstd\"\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n",
        )
        .unwrap();
        let client = config.client_config();
        assert_eq!(client.get("compression.type"), Some("zstd"));
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        for (text, choices) in [
            (
                "compression = \"brotli\"",
                "`none`, `gzip`, `snappy`, `lz4`, `zstd`",
            ),
            (
                "security_protocol = \"tls\"",
                "`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`",
            ),
            (
                "sasl_mechanism = \"GSSAPI\"",
                "`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`",
            ),
        ] {
            let error = toml::from_str::<KafkaConfig>(text).unwrap_err().to_string();
            let key = text.split(' ').next().unwrap();
            assert!(error.contains(key) && error.contains(choices), "{error}");
        }
    }

    #[test]
    fn a_topic_renders_only_names_kafka_takes() {
        let problems = |topic: &str| {
            let config: KafkaConfig = toml::from_str(&format!("topic = {topic:?}")).unwrap();
            config.validate().join("\n")
        };
        for good in ["fishjam.events", "fishjam.{kind}", "fishjam.{kind}.{type}"] {
            assert_eq!(problems(good), "", "{good}");
        }
        for (bad, says) in [
            ("fishjam.{key}", "{key} can render names Kafka refuses"),
            ("{fishjam_id}.events", "{fishjam_id} can render"),
            ("f.{room_id}.{peer_id}", "{room_id}, {peer_id} can render"),
            (
                &format!("{}.{{type}}", "t".repeat(240)),
                "Kafka takes at most 249",
            ),
        ] {
            assert!(problems(bad).contains(says), "{bad}: {}", problems(bad));
        }
    }

    #[test]
    fn raw_settings_reach_librdkafka() {
        let config: KafkaConfig = toml::from_str("[librdkafka]\n\"linger.ms\" = \"20\"\n").unwrap();
        assert_eq!(config.client_config().get("linger.ms"), Some("20"));
    }
}
