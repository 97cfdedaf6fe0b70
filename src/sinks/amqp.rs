//! RabbitMQ (AMQP 0-9-1): a topic exchange, routing keys by room, publisher
//! confirms, persistent messages.
//!
//! A batch is published without waiting between messages and then every
//! confirm is awaited, so throughput is not one round trip per event. A
//! message is safe when the broker confirmed it: a nack fails the batch from
//! that message on (the lane retries it). Messages are published `mandatory`,
//! so a message no queue is bound for comes back as a `basic.return`: it is
//! counted and, by `unroutable = "drop"`, dropped (or, with an alternate
//! exchange, routed there by the broker, never returned). lapin does not
//! reconnect on its own here: a connection or channel error drops the
//! connection, the lane's retry reconnects (with its backoff), the topology is
//! declared again, and the unconfirmed messages are published again.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{each_header, payload, PublishError, Settlement, SinkError, SinkHealth};
use crate::core::cloudevents;
use crate::core::event::Message;
use crate::core::route::Template;
use crate::core::settings::{duration, Secret};
use crate::telemetry;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Name in logs and metrics; default `amqp`.
    pub name: Option<String>,
    /// `amqp://user:password@host:5672/vhost` (`%2f` for the default vhost), or
    /// `amqps://` for TLS. Keep the password out of it with `password` or
    /// `password_file`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The password, instead of the one in `url` (whose user it goes with).
    pub password: Option<Secret>,
    /// A file holding the password, read again at each reconnect.
    pub password_file: Option<PathBuf>,
    /// Exchange to publish to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    #[serde(default)]
    pub exchange_type: ExchangeType,
    /// Declare the exchange (durable) at connect time.
    #[serde(default = "yes")]
    pub declare_exchange: bool,
    /// Routing-key template; placeholders as for NATS subjects.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Delivery mode 2: the broker writes messages to disk in durable queues.
    #[serde(default = "yes")]
    pub persistent: bool,
    /// What happens to a message no queue is bound for: `drop` (counted in
    /// fishjam_bridge_sink_events_returned_total) or `alternate` (the
    /// exchange is declared with `alternate_exchange`, which receives it).
    #[serde(default)]
    pub unroutable: Unroutable,
    /// The alternate exchange, with `unroutable = "alternate"`; declared as a
    /// durable fanout exchange.
    pub alternate_exchange: Option<String>,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: super::RouteConfig,
    /// Lanes of this sink (default: 32, or pipeline.lanes if larger).
    pub lanes: Option<usize>,
    /// How long publisher confirms may take before the batch is retried.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Shown in the RabbitMQ management UI.
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    /// CloudEvents: `"off"` (the default), `"binary"` (or `true`:
    /// `cloudEvents:*` headers) or `"structured"` (an
    /// `application/cloudevents+json` body).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
    #[serde(default)]
    pub tls: AmqpTlsConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unroutable {
    #[default]
    Drop,
    Alternate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpTlsConfig {
    /// PEM file of the CA that signed the server's certificate (amqps).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
}
fn default_exchange() -> String {
    "fishjam".to_owned()
}
fn default_routing_key() -> String {
    "{kind}.{key}.{type}".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_connection_name() -> String {
    "fishjam-bridge".to_owned()
}
fn yes() -> bool {
    true
}

/// Characters a routing key's literal parts must not hold (binding wildcards).
const KEY_WILDCARDS: &[char] = &['*', '#'];

impl AmqpConfig {
    /// Where the sink publishes, without the URL's credentials.
    pub fn target(&self) -> String {
        self.url
            .parse::<lapin::uri::AMQPUri>()
            .map(|u| {
                format!(
                    "{}:{} vhost {:?}",
                    u.authority.host, u.authority.port, u.vhost
                )
            })
            .unwrap_or_else(|_| "an invalid url".to_owned())
    }

}

/// The kind of exchange the bridge declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    #[default]
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl ExchangeType {
    fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Headers => ExchangeKind::Headers,
        }
    }
}

pub struct AmqpSink {
    name: String,
    config: AmqpConfig,
    routing_key: Template,
    health: SinkHealth,
    /// The open channel, or none after a failure until the next publish.
    channel: Mutex<Option<Link>>,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("name", &self.name)
            .finish()
    }
}

impl AmqpSink {
    /// The open channel, reconnecting first if the last one failed.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut slot = self.channel.lock().await;
        if let Some(link) = &*slot {
            if link.channel.status().connected() && link.connection.status().connected() {
                return Ok(link.channel.clone());
            }
            tracing::warn!(sink = %self.name, "AMQP channel closed; reconnecting");
            *slot = None;
            self.health.set(false);
        }
        let link = open(&self.config).await?;
        telemetry::sink_reconnected(&self.name);
        tracing::info!(sink = %self.name, "AMQP connection re-established");
        self.health.set(true);
        let channel = link.channel.clone();
        *slot = Some(link);
        Ok(channel)
    }

    async fn drop_link(&self) {
        if self.channel.lock().await.take().is_some() {
            self.health.set(false);
        }
    }

    /// What one publisher confirm means for its message.
    fn answer(&self, confirmation: lapin::Result<Confirmation>) -> Result<(), SinkError> {
        match confirmation {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                // Unroutable: no queue is bound for its key. The broker took
                // it and has nowhere to put it.
                tracing::warn!(
                    sink = %self.name,
                    routing_key = %returned.delivery.routing_key,
                    reply = %returned.reply_text,
                    "unroutable event dropped: no queue is bound for its routing key"
                );
                telemetry::sink_returned(&self.name);
                Ok(())
            }
            // RabbitMQ nacks on overflow or a queue's internal error: both pass.
            Ok(Confirmation::Nack(_)) => Err(SinkError::Nacked("nack".to_owned())),
            Err(error) => Err(SinkError::connect(self.config.target(), error)),
        }
    }

    fn properties(&self, job: &Message) -> BasicProperties {
        let event = &job.event;
        let mut headers = FieldTable::default();
        each_header(
            event,
            "Fishjam-Event-Id",
            self.config.cloudevents,
            "cloudEvents:",
            |name, value| {
                if name != "Content-Type" {
                    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
                }
            },
        );
        let timestamp = event
            .received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut buffer = uuid::Uuid::encode_buffer();
        let id: &str = event.id.hyphenated().encode_lower(&mut buffer);
        let properties = BasicProperties::default()
            .with_content_type(self.config.cloudevents.content_type().into())
            .with_message_id(id.into())
            .with_type(event.event_type.as_str().into())
            .with_timestamp(timestamp)
            .with_app_id("fishjam-bridge".into())
            .with_headers(headers);
        if self.config.persistent {
            properties.with_delivery_mode(2)
        } else {
            properties
        }
    }

}

/// The URL to connect to now: with `password` (what its file holds now,
/// so a rotated password is what a reconnect presents) in place of the
/// URL's own.
fn uri(config: &AmqpConfig) -> Result<lapin::uri::AMQPUri, SinkError> {
    let mut uri: lapin::uri::AMQPUri = config
        .url
        .parse()
        .map_err(|e| SinkError::Config(format!("url: {e}")))?;
    if let Some(password) = &config.password {
        let name = config.name.as_deref().unwrap_or("amqp");
        let password = super::current_secret(password, config.password_file.as_deref(), name);
        uri.authority.userinfo.password = password.expose().to_owned();
    }
    Ok(uri)
}

/// Connects, opens a channel in confirm mode and declares the topology.
async fn open(config: &AmqpConfig) -> Result<Link, SinkError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(config.connection_name.as_str().into());
    let tls = tls_config(&config.tls)?;
    let target = config.target();
    let runtime = lapin::runtime::default_runtime().map_err(|e| SinkError::connect(&target, e))?;
    let connect = Connection::connect_uri_with_config(uri(config)?, properties, tls, runtime);
    let connection = tokio::time::timeout(config.timeout, connect)
        .await
        .map_err(|_| {
            SinkError::connect(
                &target,
                format!("no connection within the timeout ({:?})", config.timeout),
            )
        })?
        .map_err(|e| SinkError::connect(&target, e))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| SinkError::connect(&target, e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| SinkError::connect(&target, e))?;
    if config.declare_exchange {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let mut arguments = FieldTable::default();
        if let (Unroutable::Alternate, Some(alternate)) =
            (config.unroutable, &config.alternate_exchange)
        {
            channel
                .exchange_declare(
                    alternate.as_str().into(),
                    ExchangeKind::Fanout,
                    durable,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    SinkError::connect(format!("{target} (alternate exchange {alternate})"), e)
                })?;
            arguments.insert(
                "alternate-exchange".into(),
                AMQPValue::LongString(LongString::from(alternate.as_str())),
            );
        }
        let kind = config.exchange_type.kind();
        channel
            .exchange_declare(config.exchange.as_str().into(), kind, durable, arguments)
            .await
            .map_err(|e| {
                SinkError::connect(format!("{target} (exchange {})", config.exchange), e)
            })?;
    }
    Ok(Link {
        connection,
        channel,
    })
}

fn tls_config(tls: &AmqpTlsConfig) -> Result<OwnedTLSConfig, SinkError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| SinkError::Config(format!("{}: {e}", path.display())))
    };
    let cert_chain = match &tls.ca_file {
        Some(path) => Some(
            String::from_utf8(read(path)?)
                .map_err(|_| SinkError::Config(format!("{} is not PEM text", path.display())))?,
        ),
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert)?,
            key: read(key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

impl super::SinkKind for AmqpConfig {
    type Sink = AmqpSink;

    fn secret_files(&mut self) -> Vec<super::SecretFile<'_>> {
        vec![super::SecretFile {
            key: "password",
            value: &mut self.password,
            file: self.password_file.as_deref(),
        }]
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn route(&self) -> &super::RouteConfig {
        &self.route
    }

    fn lanes(&self, pipeline: usize) -> usize {
        // RabbitMQ's confirms wait for the queue's storage: more batches in
        // flight keep it busy (measured in BENCHMARKS.md).
        self.lanes.unwrap_or(pipeline.max(32))
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = Template::parse(&self.routing_key, KEY_WILDCARDS) {
            problems.push(format!("routing_key: {problem}"));
        }
        if let Err(problem) = self.url.parse::<lapin::uri::AMQPUri>() {
            problems.push(format!("url: {problem}"));
        }
        let user_in_url = self
            .url
            .parse::<lapin::uri::AMQPUri>()
            .is_ok_and(|uri| self.url.contains('@') && !uri.authority.userinfo.username.is_empty());
        if (self.password.is_some() || self.password_file.is_some()) && !user_in_url {
            problems.push(
                "password: name its user in url (amqp://user@host/vhost); without one it would go with the user guest"
                    .to_owned(),
            );
        }
        if self.unroutable == Unroutable::Alternate && self.alternate_exchange.is_none() {
            problems.push("unroutable = \"alternate\" needs alternate_exchange".to_owned());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push("tls.cert_file and tls.key_file go together".to_owned());
        }
        if self.lanes == Some(0) {
            problems.push("lanes must be at least 1".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("timeout must be longer than zero".to_owned());
        }
        problems
    }

    fn describe(&self) -> String {
        // The URL holds the password: show only where it points.
        let target = self.target();
        format!(
            "{target}, exchange {:?} ({:?}), routing key {:?}, persistent {}, unroutable {:?}",
            self.exchange, self.exchange_type, self.routing_key, self.persistent, self.unroutable
        )
    }

    async fn connect(&self, health: SinkHealth) -> Result<AmqpSink, SinkError> {
        let config = self;
        let name = config.name.clone().unwrap_or_else(|| "amqp".to_owned());
        let routing_key = Template::parse(&config.routing_key, KEY_WILDCARDS)
            .map_err(|e| SinkError::Config(e.to_string()))?;
        let link = open(config).await?;
        Ok(AmqpSink {
            name,
            config: config.clone(),
            routing_key,
            health,
            channel: Mutex::new(Some(link)),
        })
    }
}

impl super::Publish for AmqpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, jobs: &[&Message]) -> Result<(), PublishError> {
        let channel = self.channel().await.map_err(|error| PublishError::new(0, error))?;
        let exchange: ShortString = self.config.exchange.as_str().into();
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let mut confirms = Vec::with_capacity(jobs.len());
        let mut send_failure = None;
        for job in jobs {
            let routing_key: ShortString = self.routing_key.render(&job.event).into();
            match channel
                .basic_publish(
                    exchange.clone(),
                    routing_key,
                    options,
                    &payload(job, self.config.cloudevents),
                    self.properties(job),
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(error) => {
                    send_failure = Some(SinkError::connect(self.config.target(), error));
                    break;
                }
            }
        }
        let settled = tokio::time::timeout(
            self.config.timeout,
            futures_util::future::join_all(
                confirms
                    .into_iter()
                    .map(std::future::IntoFuture::into_future),
            ),
        )
        .await;
        let mut settlement = Settlement::default();
        match settled {
            Err(_) => settlement.record(Err(SinkError::Timeout)),
            Ok(confirmations) => {
                for confirmation in confirmations {
                    settlement.record(self.answer(confirmation));
                }
            }
        }
        if let Some(error) = send_failure {
            settlement.record(Err(error));
        }
        let result = settlement.finish();
        if let Err(PublishError { error, .. }) = &result {
            if !matches!(error, SinkError::Rejected(_) | SinkError::Nacked(_)) {
                // The channel's state is unknown: start again on a new one.
                self.drop_link().await;
            }
        }
        result
    }

    async fn close(&self) -> Result<(), SinkError> {
        if let Some(link) = self.channel.lock().await.take() {
            let _ = link.channel.close(200, "bridge shutting down".into()).await;
            link.connection
                .close(200, "bridge shutting down".into())
                .await
                .map_err(|e| SinkError::connect(self.config.target(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkKind as _;

    #[test]
    fn each_connect_presents_the_password_its_file_holds_then() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        let mut config: AmqpConfig = toml::from_str(&format!(
            "url = \"amqp://bridge:in-url@broker:5672/%2f\"\npassword_file = \"{}\"",
            file.display()
        ))
        .unwrap();
        std::fs::write(&file, "first\n").unwrap();
        for secret in config.secret_files() {
            let text = std::fs::read_to_string(secret.file.unwrap()).unwrap();
            *secret.value = Some(Secret::from_file_text(&text));
        }
        assert_eq!(uri(&config).unwrap().authority.userinfo.password, "first");
        std::fs::write(&file, "second\n").unwrap();
        let uri_now = uri(&config).unwrap();
        assert_eq!(uri_now.authority.userinfo.username, "bridge");
        assert_eq!(uri_now.authority.userinfo.password, "second");
        // A file gone missing leaves the password read with the
        // configuration in use.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(uri(&config).unwrap().authority.userinfo.password, "first");
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        // Without a user in the URL, the password would go with guest.
        config.url = "amqp://broker:5672/%2f".to_owned();
        let problems = config.validate().join("\n");
        assert!(problems.contains("name its user in url"), "{problems}");
    }

    #[test]
    fn defaults_are_safe_and_valid() {
        let config: AmqpConfig = toml::from_str("").unwrap();
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert!(config.persistent);
        assert_eq!(config.exchange_type, ExchangeType::Topic);
        assert_eq!(config.unroutable, Unroutable::Drop);
        assert!(!config.describe().contains("guest:guest"));
    }

    #[test]
    fn validation_names_the_problem() {
        let config: AmqpConfig = toml::from_str(
            "routing_key = \"rooms.#.{key}\"\nunroutable = \"alternate\"\nurl = \"http://x\"\n",
        )
        .unwrap();
        let problems = config.validate().join("\n");
        assert!(problems.contains("routing_key"), "{problems}");
        assert!(problems.contains("alternate_exchange"), "{problems}");
        assert!(problems.contains("url"), "{problems}");
    }

    #[test]
    fn an_unknown_exchange_type_is_refused_with_the_choices() {
        let error = toml::from_str::<AmqpConfig>("exchange_type = \"fanfare\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("exchange_type"), "{error}");
        assert!(
            error.contains("`topic`, `direct`, `fanout`, `headers`"),
            "{error}"
        );
    }
}
