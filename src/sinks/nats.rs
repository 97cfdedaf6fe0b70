//! NATS: core publish on the bridge's own connection (`nats_wire.rs`,
//! acknowledged by the server's PONG after the batch) or JetStream on
//! async-nats (acknowledged by the stream's publish ack), on subjects keyed
//! by room.
//!
//! A batch is published without waiting between messages: core NATS writes
//! it at once and makes one round trip at the end; JetStream keeps every
//! publish ack in flight and awaits them together, so throughput is not one
//! round trip per event. Every message carries `Nats-Msg-Id` = the event id
//! (with `headers = "all"` or `"id"`, and always on JetStream), so a retry
//! inside a stream's duplicate window is stored once. Both reconnect: a
//! batch that meets a lost connection fails within the timeout and the lane
//! retries it, so nothing unacknowledged is ever counted as sent.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::header::{HeaderName, IntoHeaderName};
use async_nats::jetstream;
use async_nats::{HeaderMap, ServerAddr};
use serde::Deserialize;

use super::nats_wire::{self, Auth, Wire};
use super::{each_header, payload, PublishError, Settlement, SinkError, SinkHealth};
use crate::core::cloudevents;
use crate::core::event::Message;
use crate::core::route::Template;
use crate::core::settings::{duration, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Name in logs and metrics; default `nats`.
    pub name: Option<String>,
    /// Server URL, or several separated by commas.
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject template; placeholders {kind}, {key}, {room_id}, {stream_id},
    /// {peer_id}, {type}, {fishjam_id}, each escaped to one token.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// `core` (acknowledged once the server answered a round trip) or `jetstream`
    /// (acknowledged by the stream).
    #[serde(default)]
    pub mode: NatsMode,
    /// How long a flush or a JetStream ack may take before the batch is retried.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: super::RouteConfig,
    /// Lanes of this sink (default: pipeline.lanes for core, 16 for JetStream).
    pub lanes: Option<usize>,
    /// JetStream publish acks in flight at once, per lane.
    #[serde(default = "default_max_ack_inflight")]
    pub max_ack_inflight: usize,
    /// User and password.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password, read again at each reconnect.
    pub password_file: Option<PathBuf>,
    /// Token authentication.
    pub token: Option<Secret>,
    /// A file holding the token, read again at each reconnect.
    pub token_file: Option<PathBuf>,
    /// NKey seed.
    pub nkey: Option<Secret>,
    /// A file holding the NKey seed, read again at each reconnect.
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// TLS settings; `nats+tls://` or `tls://` URLs also turn TLS on.
    #[serde(default)]
    pub tls: NatsTlsConfig,
    /// CloudEvents: `"off"` (the default), `"binary"` (or `true`: `ce-*`
    /// headers) or `"structured"` (an `application/cloudevents+json` body).
    #[serde(default)]
    pub cloudevents: cloudevents::Mode,
    /// Which headers each message carries: `all` (the default), `id` (the
    /// event id as `Nats-Msg-Id` only) or `none`. JetStream always gets
    /// `Nats-Msg-Id`, its deduplication key.
    #[serde(default)]
    pub headers: HeaderSet,
    /// Create or update this JetStream stream at start-up.
    pub stream: Option<StreamConfig>,
}

/// The headers a NATS message carries. The event type and key are in the
/// subject already; the headers spare consumers a parse of the JSON, and
/// cost the bridge (and the server) bytes per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderSet {
    /// Every header of `each_header` (and the CloudEvents ones when asked).
    #[default]
    All,
    /// `Nats-Msg-Id` only.
    Id,
    /// None (JetStream still gets `Nats-Msg-Id`).
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsMode {
    #[default]
    Core,
    Jetstream,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// Refuse a connection without TLS.
    #[serde(default)]
    pub required: bool,
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    /// Subjects the stream captures; default: the subject template's literal
    /// prefix followed by `>`.
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    /// How long messages are kept; "0s" keeps them until other limits apply.
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    #[serde(default)]
    pub storage: Storage,
    /// Window in which a repeated `Nats-Msg-Id` is dropped.
    #[serde(default = "default_duplicate_window", deserialize_with = "duration")]
    pub duplicate_window: Duration,
    /// Bytes the stream may hold; beyond them its oldest messages go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}
fn default_subject() -> String {
    "fishjam.{kind}.{key}.{type}".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_ack_inflight() -> usize {
    1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_replicas() -> usize {
    1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}
fn default_max_bytes() -> i64 {
    10 << 30
}

/// Characters a subject's literal parts must not hold.
const SUBJECT_WILDCARDS: &[char] = &['*', '>'];

/// What is wrong with `url`.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{url:?}: {source}")]
    Invalid {
        url: String,
        source: std::io::Error,
    },
    #[error("no server URL")]
    Empty,
}

impl NatsConfig {
    /// Where the sink publishes, without the URL's credentials.
    pub fn target(&self) -> String {
        crate::core::settings::masked_url(&self.url)
    }

    fn addresses(&self) -> Result<Vec<ServerAddr>, UrlError> {
        let addresses = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse::<ServerAddr>().map_err(|source| UrlError::Invalid {
                    url: u.to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addresses.is_empty() {
            return Err(UrlError::Empty);
        }
        Ok(addresses)
    }

    /// The subject filter a default stream captures: the literal prefix, then `>`.
    fn default_stream_subject(&self) -> String {
        let literal: Vec<&str> = self
            .subject
            .split('.')
            .take_while(|token| !token.contains('{'))
            .collect();
        if literal.is_empty() {
            ">".to_owned()
        } else {
            format!("{}.>", literal.join("."))
        }
    }
}

/// What a stream keeps its messages for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Until a limit (age, bytes) removes them.
    #[default]
    Limits,
    /// While a consumer is interested.
    Interest,
    /// Until one consumer acknowledges them.
    Workqueue,
}

impl Retention {
    fn policy(self) -> jetstream::stream::RetentionPolicy {
        use jetstream::stream::RetentionPolicy as R;
        match self {
            Retention::Limits => R::Limits,
            Retention::Interest => R::Interest,
            Retention::Workqueue => R::WorkQueue,
        }
    }
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

impl Storage {
    fn kind(self) -> jetstream::stream::StorageType {
        match self {
            Storage::File => jetstream::stream::StorageType::File,
            Storage::Memory => jetstream::stream::StorageType::Memory,
        }
    }
}

pub struct NatsSink {
    name: String,
    transport: Transport,
    subject: Template,
    timeout: Duration,
    max_ack_inflight: usize,
    cloudevents: cloudevents::Mode,
    headers: HeaderSet,
    health: SinkHealth,
}

/// Core NATS on the bridge's own connection; JetStream on async-nats.
enum Transport {
    Core(Wire),
    JetStream {
        client: async_nats::Client,
        context: jetstream::Context,
    },
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .finish()
    }
}

impl NatsSink {
    /// Core NATS: one connection that the server reads in order.
    pub fn is_core(&self) -> bool {
        matches!(self.transport, Transport::Core(_))
    }

    /// The subject and headers of `job`'s message; an error when the message
    /// (headers and payload) exceeds the server's `max_payload`. The server
    /// would close the connection over it, and every retry again, so it is
    /// refused for good here instead.
    fn message(
        &self,
        job: &Message,
        max_payload: usize,
    ) -> Result<(String, HeaderMap, bytes::Bytes), SinkError> {
        let payload = match payload(job, self.cloudevents) {
            Cow::Borrowed(_) => job.json.clone(),
            Cow::Owned(structured) => bytes::Bytes::from(structured),
        };
        let mut map = HeaderMap::new();
        // "NATS/1.0\r\n", each "name: value\r\n", then "\r\n".
        let mut size = 12 + payload.len();
        // The event id goes in Nats-Msg-Id only: JetStream drops a repeated
        // one inside its duplicate window, and every header costs a map entry.
        self.each_header(&job.event, |name, value| {
            size += name.len() + value.len() + 4;
            map.insert(header_name(name), value);
        });
        if max_payload > 0 && size > max_payload {
            return Err(over_max_payload(size, max_payload));
        }
        Ok((self.subject.render(&job.event), map, payload))
    }

    /// Calls `add` with each header `self.headers` asks for; the event id
    /// goes in `Nats-Msg-Id` only, which JetStream deduplicates on.
    fn each_header(&self, event: &crate::core::event::Event, mut add: impl FnMut(&str, &str)) {
        match self.headers {
            HeaderSet::All => each_header(event, "Nats-Msg-Id", self.cloudevents, "ce-", add),
            HeaderSet::Id | HeaderSet::None => {
                let mut buffer = uuid::Uuid::encode_buffer();
                add(
                    "Nats-Msg-Id",
                    event.id.hyphenated().encode_lower(&mut buffer),
                );
            }
        }
    }

    /// Frames the batch into one buffer and writes it on one connection,
    /// followed by a PING: the server's PONG acknowledges all of it. A
    /// message over the server's `max_payload` ends the batch before it;
    /// what came before is published, and it is refused for good.
    async fn publish_core(&self, wire: &Wire, jobs: &[&Message]) -> Result<(), PublishError> {
        let max_payload = wire.max_payload();
        let mut frames =
            Vec::with_capacity(jobs.iter().map(|m| m.json.len() + 512).sum::<usize>() + 8);
        let mut subject = String::with_capacity(128);
        let mut headers = Vec::with_capacity(256);
        let mut refused = None;
        for (index, job) in jobs.iter().enumerate() {
            headers.clear();
            if self.headers != HeaderSet::None {
                nats_wire::header_block(&mut headers, |add| self.each_header(&job.event, add));
            }
            let payload = payload(job, self.cloudevents);
            let size = headers.len() + payload.len();
            if max_payload > 0 && size > max_payload {
                refused = Some(PublishError::new(index, over_max_payload(size, max_payload)));
                break;
            }
            subject.clear();
            self.subject.render_into(&job.event, &mut subject);
            nats_wire::frame(&mut frames, &subject, &headers, &payload);
        }
        if !frames.is_empty() {
            frames.extend_from_slice(nats_wire::PING);
            let denied = match wire.publish(&frames).await {
                Ok(denied) => denied,
                Err(error) => {
                    self.health.set(false);
                    return Err(PublishError::new(0, match error {
                            nats_wire::WireError::Timeout => SinkError::Timeout,
                            other => SinkError::publish(other),
                        }));
                }
            };
            self.health.set(true);
            if let Some(error) = self.first_denied(jobs, &denied) {
                return Err(error);
            }
            if !denied.is_empty() {
                // The server names a subject no message here renders to
                // (it quotes some characters its own way): which message it
                // refused is not known, so none counts as published.
                return Err(PublishError::new(0, SinkError::publish(format!(
                        "the server refused a message for a permission on {denied:?}"
                    ))));
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// The first message of `jobs` to a subject in `denied`, refused for
    /// good: the lane dead-letters it and publishes again from the next
    /// (what followed it in the batch may arrive twice).
    fn first_denied(&self, jobs: &[&Message], denied: &[String]) -> Option<PublishError> {
        if denied.is_empty() {
            return None;
        }
        let mut subject = String::with_capacity(128);
        jobs.iter().enumerate().find_map(|(index, job)| {
            subject.clear();
            self.subject.render_into(&job.event, &mut subject);
            denied.contains(&subject).then(|| PublishError::new(index, SinkError::Rejected(format!(
                    "the server refused it: Permissions Violation for Publish to \"{subject}\""
                ))))
        })
    }

    async fn publish_jetstream(
        &self,
        context: &jetstream::Context,
        max_payload: usize,
        jobs: &[&Message],
    ) -> Result<(), PublishError> {
        let mut window = std::collections::VecDeque::with_capacity(self.max_ack_inflight);
        let mut settlement = Settlement::default();
        let answer = |ack: Result<jetstream::publish::PublishAck, _>| {
            ack.map(|_| ()).map_err(classify_ack_error)
        };
        // A failure to send ends the batch; it is recorded after the acks of
        // the messages sent before it, so the settlement stays in batch order.
        let mut stopped = None;
        for job in jobs {
            if window.len() >= self.max_ack_inflight {
                let oldest: jetstream::context::PublishAckFuture =
                    window.pop_front().expect("the window is full");
                settlement.record(answer(oldest.await));
            }
            let (subject, headers, payload) = match self.message(job, max_payload) {
                Ok(message) => message,
                Err(refused) => {
                    stopped = Some(refused);
                    break;
                }
            };
            let sent = tokio::time::timeout(
                self.timeout,
                context.publish_with_headers(subject, headers, payload),
            )
            .await;
            match sent {
                Ok(Ok(ack)) => window.push_back(ack),
                Ok(Err(error)) => {
                    stopped = Some(SinkError::publish(error));
                    break;
                }
                Err(_) => {
                    stopped = Some(SinkError::Timeout);
                    break;
                }
            }
        }
        // Every sent message's ack is awaited, also after a failure, so none
        // is left dangling.
        while let Some(ack) = window.pop_front() {
            settlement.record(answer(ack.await));
        }
        if let Some(error) = stopped {
            settlement.record(Err(error));
        }
        settlement.finish()
    }

}

/// The server would close the connection over such a message, and again
/// on every retry, so it is refused for good instead.
fn over_max_payload(size: usize, max_payload: usize) -> SinkError {
    SinkError::Rejected(format!(
        "{size} bytes with headers, over the server's max_payload of {max_payload}"
    ))
}

/// The header names every message carries, built once: a name from a
/// `&str` is copied into a new allocation for each message.
const FIXED_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("Content-Type"),
    HeaderName::from_static("Nats-Msg-Id"),
    HeaderName::from_static("Fishjam-Event-Type"),
    HeaderName::from_static("Fishjam-Room-Id"),
    HeaderName::from_static("Fishjam-Stream-Id"),
    HeaderName::from_static("Fishjam-Recording-Id"),
    HeaderName::from_static("Fishjam-Peer-Id"),
];

fn header_name(name: &str) -> HeaderName {
    FIXED_HEADERS
        .iter()
        .find(|fixed| <HeaderName as AsRef<[u8]>>::as_ref(fixed) == name.as_bytes())
        .cloned()
        .unwrap_or_else(|| name.into_header_name())
}

/// An async-nats client for JetStream; `health` follows its connection.
async fn connect_client(
    config: &NatsConfig,
    name: &str,
    health: &SinkHealth,
) -> Result<async_nats::Client, SinkError> {
    let options = connect_options(config, name).await?.event_callback({
        let health = health.clone();
        move |event| {
            let health = health.clone();
            async move {
                match event {
                    async_nats::Event::Connected => health.set(true),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        tracing::warn!(sink = %health.name(), %event, "NATS connection lost");
                        health.set(false)
                    }
                    other => {
                        tracing::info!(sink = %health.name(), event = %other, "NATS event")
                    }
                }
            }
        }
    });
    connect_with(config, options).await
}

/// The async-nats options for a sink's servers: its name, timeout,
/// credentials and TLS, reconnecting forever. Shared with the election's
/// lease store, which reaches the same servers as the sink it names.
pub async fn connect_options(
    config: &NatsConfig,
    name: &str,
) -> Result<async_nats::ConnectOptions, SinkError> {
    let mut options = credentials(config)?
        .name(format!("fishjam-bridge/{name}"))
        .connection_timeout(config.timeout)
        // Reconnect forever: a broker outage must not end the sink.
        .max_reconnects(None);
    if config.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Options carrying the sink's user and password, token, nkey or `.creds`
/// file. Those that come from a file are read from it again at every
/// (re)connect (`AuthFiles::current`, as the core writer does), so a
/// rotated credential is what the next reconnect presents.
fn credentials(config: &NatsConfig) -> Result<async_nats::ConnectOptions, SinkError> {
    let (auth, files) = (configured_auth(config)?, auth_files(config));
    let from_files = [
        &files.password,
        &files.token,
        &files.nkey,
        &files.credentials,
    ];
    if from_files.iter().all(|file| file.is_none()) {
        let mut options = async_nats::ConnectOptions::new();
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(seed) = &config.nkey {
            options = options.nkey(seed.expose().to_owned());
        }
        return Ok(options);
    }
    let name = config.name.clone().unwrap_or_else(|| "nats".to_owned());
    Ok(async_nats::ConnectOptions::with_auth_callback(
        move |nonce| {
            let auth = presented(&files.current(&auth, &name), &nonce);
            async move { auth }
        },
    ))
}

/// The credentials as read with the configuration (a `.creds` file now:
/// one that cannot be used is a configuration error).
fn configured_auth(config: &NatsConfig) -> Result<Auth, SinkError> {
    Ok(match (&config.user, &config.password) {
        (Some(user), Some(password)) => Auth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        _ => match (&config.token, &config.nkey, &config.credentials_file) {
            (Some(token), _, _) => Auth::Token(token.clone()),
            (_, Some(seed), _) => Auth::Nkey(seed.clone()),
            (_, _, Some(path)) => nats_wire::read_credentials(path).map_err(|e| {
                SinkError::Config(format!("credentials_file: {}", crate::telemetry::Chain(&e)))
            })?,
            _ => Auth::None,
        },
    })
}

/// The files the credentials came from, read again at each connect.
fn auth_files(config: &NatsConfig) -> nats_wire::AuthFiles {
    nats_wire::AuthFiles {
        password: config.password_file.clone(),
        token: config.token_file.clone(),
        nkey: config.nkey_file.clone(),
        credentials: config.credentials_file.clone(),
    }
}

/// `auth` as async-nats presents it, the server's `nonce` signed with the
/// nkey or the `.creds` seed when there is one.
fn presented(auth: &Auth, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
    let mut presented = async_nats::Auth::new();
    match auth {
        Auth::UserPassword { user, password } => {
            presented.username = Some(user.clone());
            presented.password = Some(password.expose().to_owned());
        }
        Auth::Token(token) => presented.token = Some(token.expose().to_owned()),
        Auth::Nkey(seed) => {
            let (public, signature) = sign(seed, nonce)?;
            presented.nkey = Some(public);
            presented.signature = Some(signature);
        }
        Auth::Credentials { jwt, seed } => {
            presented.signature = Some(sign(seed, nonce)?.1);
            presented.jwt = Some(jwt.clone());
        }
        Auth::None => {}
    }
    Ok(presented)
}

/// The public key of an nkey `seed` and its signature of `nonce`.
fn sign(seed: &Secret, nonce: &[u8]) -> Result<(String, Vec<u8>), async_nats::AuthError> {
    let pair = nkeys::KeyPair::from_seed(seed.expose())
        .map_err(|e| async_nats::AuthError::new(format!("the nkey seed is not valid: {e}")))?;
    let signature = pair
        .sign(nonce)
        .map_err(|e| async_nats::AuthError::new(format!("cannot sign the nonce: {e}")))?;
    Ok((pair.public_key(), signature))
}

/// Connects with `options` to the sink's servers.
pub async fn connect_with(
    config: &NatsConfig,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, SinkError> {
    let addresses = config
        .addresses()
        .map_err(|e| SinkError::Config(e.to_string()))?;
    options
        .connect(addresses)
        .await
        .map_err(|e| SinkError::connect(config.target(), e))
}

/// The bridge's own publish connection for core NATS.
async fn connect_core(config: &NatsConfig, name: &str) -> Result<Wire, SinkError> {
    let auth = configured_auth(config)?;
    let identity = config
        .tls
        .cert_file
        .as_deref()
        .zip(config.tls.key_file.as_deref());
    let tls = crate::net::tls::client_config(config.tls.ca_file.as_deref(), identity)
        .map_err(|e| SinkError::Config(format!("tls: {}", crate::telemetry::Chain(&e))))?;
    let options = nats_wire::Options {
        servers: config
            .addresses()
            .map_err(|e| SinkError::Config(e.to_string()))?,
        name: format!("fishjam-bridge/{name}"),
        auth,
        auth_files: auth_files(config),
        tls,
        tls_required: config.tls.required,
        timeout: config.timeout,
    };
    Wire::connect(options)
        .await
        .map_err(|e| SinkError::connect(config.target(), e))
}

fn classify_ack_error(error: jetstream::context::PublishError) -> SinkError {
    use jetstream::context::PublishErrorKind as K;
    match error.kind() {
        K::TimedOut => SinkError::Timeout,
        K::StreamNotFound => SinkError::publish(format!(
            "no JetStream stream captures the subject ({error}); create one or set the sink's stream"
        )),
        _ => SinkError::publish(error),
    }
}

/// Creates the stream, or brings an existing one's settings to the
/// configuration. Storage and retention cannot change on a stream: when they
/// differ, the sink does not connect and says so.
async fn ensure_stream(
    context: &jetstream::Context,
    config: &NatsConfig,
    stream: &StreamConfig,
) -> Result<(), SinkError> {
    let subjects = if stream.subjects.is_empty() {
        vec![config.default_stream_subject()]
    } else {
        stream.subjects.clone()
    };
    let wanted = jetstream::stream::Config {
        name: stream.name.clone(),
        subjects,
        retention: stream.retention.policy(),
        storage: stream.storage.kind(),
        max_age: stream.max_age,
        max_bytes: stream.max_bytes,
        num_replicas: stream.replicas,
        duplicate_window: stream.duplicate_window,
        ..Default::default()
    };
    let found = context
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| {
            SinkError::connect(format!("{} stream {}", config.target(), stream.name), e)
        })?;
    let current = &found.cached_info().config;
    if (current.storage, current.retention) != (wanted.storage, wanted.retention) {
        return Err(SinkError::Config(format!(
            "stream {} has storage {:?} and retention {:?}, the configuration says {:?} and {:?}: \
             NATS cannot change them on a stream; configure what it has, or move its \
             messages to a new stream",
            stream.name, current.storage, current.retention, stream.storage, stream.retention
        )));
    }
    let updated = jetstream::stream::Config {
        subjects: wanted.subjects,
        max_age: wanted.max_age,
        max_bytes: wanted.max_bytes,
        num_replicas: wanted.num_replicas,
        duplicate_window: wanted.duplicate_window,
        ..current.clone()
    };
    if &updated != current {
        context.update_stream(&updated).await.map_err(|e| {
            SinkError::connect(
                format!("{} (updating stream {})", config.target(), stream.name),
                e,
            )
        })?;
        tracing::info!(stream = %stream.name, "JetStream stream settings brought to the configuration");
    }
    tracing::info!(stream = %stream.name, "JetStream stream ready");
    Ok(())
}

impl super::SinkKind for NatsConfig {
    type Sink = NatsSink;

    fn secret_files(&mut self) -> Vec<super::SecretFile<'_>> {
        vec![
            super::SecretFile {
                key: "password",
                value: &mut self.password,
                file: self.password_file.as_deref(),
            },
            super::SecretFile {
                key: "token",
                value: &mut self.token,
                file: self.token_file.as_deref(),
            },
            super::SecretFile {
                key: "nkey",
                value: &mut self.nkey,
                file: self.nkey_file.as_deref(),
            },
        ]
    }

    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn route(&self) -> &super::RouteConfig {
        &self.route
    }

    fn lanes(&self, pipeline: usize) -> usize {
        // JetStream acks wait for the server's storage: more batches in flight
        // keep it busy (measured in BENCHMARKS.md).
        match self.mode {
            NatsMode::Core => self.lanes.unwrap_or(pipeline),
            NatsMode::Jetstream => self.lanes.unwrap_or(pipeline.max(16)),
        }
    }

    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = Template::parse(&self.subject, SUBJECT_WILDCARDS) {
            problems.push(format!("subject: {problem}"));
        }
        if let Err(problem) = self.addresses() {
            problems.push(format!("url: {problem}"));
        }
        if self.password.is_some() != self.user.is_some() {
            problems.push("user and password go together".to_owned());
        }
        let methods = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey.is_some(),
            self.credentials_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            problems
                .push("choose one of user/password, token, nkey and credentials_file".to_owned());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push("tls.cert_file and tls.key_file go together".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("timeout must be longer than zero".to_owned());
        }
        if self.lanes == Some(0) {
            problems.push("lanes must be at least 1".to_owned());
        }
        if self.max_ack_inflight == 0 {
            problems.push("max_ack_inflight must be at least 1".to_owned());
        }
        if let Some(stream) = &self.stream {
            if self.mode != NatsMode::Jetstream {
                problems.push("stream needs mode = \"jetstream\"".to_owned());
            }
            if stream.name.is_empty() || stream.name.contains(['.', ' ', '*', '>']) {
                problems.push(format!(
                    "stream.name {:?} must be non-empty, without '.', ' ', '*' or '>'",
                    stream.name
                ));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        let auth = if self.user.is_some() {
            "user/password"
        } else if self.token.is_some() {
            "token"
        } else if self.nkey.is_some() {
            "nkey"
        } else if self.credentials_file.is_some() {
            "credentials file"
        } else {
            "none"
        };
        format!(
            "url {}, subject {:?}, mode {:?}, auth {auth}, tls required {}",
            self.target(),
            self.subject,
            self.mode,
            self.tls.required
        )
    }

    async fn connect(&self, health: SinkHealth) -> Result<NatsSink, SinkError> {
        let config = self;
        let name = config.name.clone().unwrap_or_else(|| "nats".to_owned());
        let subject = Template::parse(&config.subject, SUBJECT_WILDCARDS)
            .map_err(|e| SinkError::Config(e.to_string()))?;
        let transport = match config.mode {
            NatsMode::Core => Transport::Core(connect_core(config, &name).await?),
            NatsMode::Jetstream => {
                let client = connect_client(config, &name, &health).await?;
                // The client's own in-flight limit holds a permit until an ack
                // future is awaited, which deadlocks a batch larger than it; each
                // lane keeps its own window of `max_ack_inflight` instead.
                let context = jetstream::context::ContextBuilder::new()
                    .timeout(config.timeout)
                    .ack_timeout(config.timeout)
                    .max_ack_inflight(1 << 24)
                    .build(client.clone());
                if let Some(stream) = &config.stream {
                    ensure_stream(&context, config, stream).await?;
                }
                Transport::JetStream { client, context }
            }
        };
        Ok(NatsSink {
            name,
            transport,
            subject,
            timeout: config.timeout,
            max_ack_inflight: config.max_ack_inflight,
            cloudevents: config.cloudevents,
            headers: config.headers,
            health,
        })
    }
}

impl super::Publish for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn stores_prefixes(&self) -> bool {
        self.is_core()
    }

    async fn publish(&self, jobs: &[&Message]) -> Result<(), PublishError> {
        match &self.transport {
            Transport::Core(wire) => self.publish_core(wire, jobs).await,
            Transport::JetStream { client, context } => {
                // Read once a batch: the client hands out its whole server
                // info as a copy.
                let max_payload = client.server_info().max_payload;
                self.publish_jetstream(context, max_payload, jobs).await
            }
        }
    }

    async fn close(&self) -> Result<(), SinkError> {
        match &self.transport {
            // Every batch was written whole and acknowledged.
            Transport::Core(wire) => {
                wire.close();
                Ok(())
            }
            Transport::JetStream { client, .. } => client.flush().await.map_err(SinkError::publish),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.creds` file holding `jwt` and a new user seed; returns the seed.
    fn write_creds(path: &std::path::Path, jwt: &str) -> String {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        std::fs::write(
            path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        seed
    }

    #[test]
    fn each_connect_of_async_nats_presents_what_the_credential_files_hold_then() {
        let dir = tempfile::tempdir().unwrap();
        let (password, creds) = (dir.path().join("password"), dir.path().join("user.creds"));
        std::fs::write(&password, "first\n").unwrap();
        let mut config: NatsConfig = toml::from_str(&format!(
            "user = \"bridge\"\npassword_file = \"{}\"",
            password.display()
        ))
        .unwrap();
        config.password = Some(Secret::new("first"));
        // What the auth callback presents at a connect now.
        let at_connect = |config: &NatsConfig, configured: &Auth| {
            presented(&auth_files(config).current(configured, "nats"), b"nonce").unwrap()
        };
        let configured = configured_auth(&config).unwrap();
        let auth = at_connect(&config, &configured);
        assert_eq!(auth.password.as_deref(), Some("first"));
        std::fs::write(&password, "second\n").unwrap();
        let auth = at_connect(&config, &configured);
        assert_eq!(auth.password.as_deref(), Some("second"));

        // A .creds file: the JWT and the seed that signs the nonce, as the
        // file holds them at each connect.
        write_creds(&creds, "jwt-one");
        let config: NatsConfig =
            toml::from_str(&format!("credentials_file = \"{}\"", creds.display())).unwrap();
        let first = configured_auth(&config).unwrap();
        let seed = write_creds(&creds, "jwt-two");
        let auth = at_connect(&config, &first);
        assert_eq!(auth.jwt.as_deref(), Some("jwt-two"));
        let signer = nkeys::KeyPair::from_seed(&seed).unwrap();
        let signature = auth.signature.unwrap();
        signer.verify(b"nonce", &signature).unwrap();
        // Gone: the file read at start-up is presented.
        std::fs::remove_file(&creds).unwrap();
        let auth = at_connect(&config, &first);
        assert_eq!(auth.jwt.as_deref(), Some("jwt-one"));
    }
    use crate::sinks::SinkKind as _;

    fn config(text: &str) -> NatsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn stream_settings_are_read_once_and_an_unknown_one_is_refused_with_the_choices() {
        let c = config("mode = \"jetstream\"\n[stream]\nname = \"S\"\nretention = \"workqueue\"\nstorage = \"memory\"\n");
        let stream = c.stream.unwrap();
        assert_eq!(stream.retention, Retention::Workqueue);
        assert_eq!(stream.storage, Storage::Memory);
        let error =
            toml::from_str::<NatsConfig>("[stream]\nname = \"S\"\nretention = \"forever\"\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("retention"), "{error}");
        assert!(
            error.contains("`limits`, `interest`, `workqueue`"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_connect_error_names_the_server_without_its_password_and_the_os_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = config(&format!(
            "url = \"nats://bridge:hunter2@127.0.0.1:{closed}\"\ntimeout = \"1s\"\n"
        ));
        let health = SinkHealth::new("nats", crate::admin::Readiness::default());
        let error = config.connect(health).await.unwrap_err();
        let chain = crate::telemetry::Chain(&error).to_string();
        assert!(
            chain.starts_with(&format!("cannot connect to nats://***@127.0.0.1:{closed}")),
            "{chain}"
        );
        assert!(chain.contains("refused"), "the OS error is kept: {chain}");
        assert!(!chain.contains("hunter2"), "{chain}");
    }

    #[test]
    fn defaults_and_stream_subject() {
        let c = config("");
        assert_eq!(c.mode, NatsMode::Core);
        assert!(c.validate().is_empty());
        assert_eq!(c.default_stream_subject(), "fishjam.>");
        let c = config("subject = \"{fishjam_id}.{key}\"");
        assert_eq!(c.default_stream_subject(), ">");
    }

    #[test]
    fn fixed_header_names_are_the_names_asked_for() {
        for name in [
            "Content-Type",
            "Nats-Msg-Id",
            "Fishjam-Room-Id",
            "Fishjam-Peer-Id",
            "ce-id",
        ] {
            assert_eq!(AsRef::<[u8]>::as_ref(&header_name(name)), name.as_bytes());
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let c = config(
            "subject = \"a.*.{key}\"\nuser = \"u\"\ntoken = \"t\"\n[stream]\nname = \"a.b\"\n",
        );
        let problems = c.validate().join("\n");
        assert!(problems.contains("subject"), "{problems}");
        assert!(problems.contains("user and password"), "{problems}");
        assert!(problems.contains("choose one"), "{problems}");
        assert!(problems.contains("stream needs mode"), "{problems}");
        assert!(problems.contains("stream.name"), "{problems}");
    }
}
