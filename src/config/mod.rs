//! Configuration: a TOML file, overridden by the environment, read once at
//! start-up and handed to each component by value.
//!
//! Loading is a pure function of the file text, an environment lookup and a
//! file reader, so tests pass maps. Every problem is reported at once, each
//! naming its key. Secrets are wrapped in `Secret` so that `Debug`, logs and
//! `check-config` never print them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::core::settings::{duration, Secret};
use crate::net::tls::ServerTlsConfig;
use crate::sinks::SinkConfig;
use crate::telemetry::LogFormat;

/// Prefix of the generic overrides: `FISHJAM_BRIDGE__WEBHOOK__LISTEN=...`
/// sets `webhook.listen`; `FISHJAM_BRIDGE__SINKS__0__PATH` the first sink's path, and
/// `FISHJAM_BRIDGE__SINKS__AUDIT__PATH` the path of the sink named `audit`.
pub const ENV_PREFIX: &str = "FISHJAM_BRIDGE__";

/// Environment variables that set a key directly, as Fishjam's docs name them.
const ENV_KEYS: &[(&str, &str)] = &[
    ("FISHJAM_ID", "fishjam.id"),
    ("FISHJAM_MANAGEMENT_TOKEN", "fishjam.management_token"),
    (
        "FISHJAM_MANAGEMENT_TOKEN_FILE",
        "fishjam.management_token_file",
    ),
    ("FISHJAM_WEBHOOK_SECRET", "webhook.secret"),
    ("FISHJAM_WEBHOOK_SECRET_FILE", "webhook.secret_file"),
    ("FISHJAM_BRIDGE_IDENTITY", "election.identity"),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub fishjam: FishjamConfig,
    #[serde(default)]
    pub webhook: WebhookConfig,
    #[serde(default)]
    pub notifier: NotifierConfig,
    #[serde(default)]
    pub election: ElectionConfig,
    #[serde(default)]
    pub dedup: DedupConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Where events go. Every event goes to every sink.
    #[serde(default = "default_sinks")]
    pub sinks: Vec<SinkConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FishjamConfig {
    /// The Fishjam id from the dashboard, or the full URL of a self-hosted
    /// Fishjam. Written into every event as `fishjam_id`. Env: `FISHJAM_ID`.
    #[serde(default)]
    pub id: String,
    /// The management token. Env: `FISHJAM_MANAGEMENT_TOKEN`.
    pub management_token: Option<Secret>,
    /// A file holding the management token. Env: `FISHJAM_MANAGEMENT_TOKEN_FILE`.
    pub management_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Whether to accept webhooks.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of the webhook listener.
    #[serde(default = "default_webhook_listen")]
    pub listen: SocketAddr,
    /// Path Fishjam posts to.
    #[serde(default = "default_webhook_path")]
    pub path: String,
    /// The webhook signing secret. When set, every request must carry a valid
    /// `x-fishjam-signature-256`. Env: `FISHJAM_WEBHOOK_SECRET`. During a
    /// rotation, a list (or one per line): a signature by any of them passes.
    #[serde(
        default,
        deserialize_with = "crate::core::settings::one_or_more_secrets"
    )]
    pub secret: Option<Secret>,
    /// A file holding the signing secret, or one per line; read again when
    /// it changes and on SIGHUP. Env: `FISHJAM_WEBHOOK_SECRET_FILE`.
    pub secret_file: Option<PathBuf>,
    /// Accept webhooks without a signature, when no secret is set. Off by
    /// default: the listener would take anyone's bodies as Fishjam's. With a
    /// secret, every webhook must be signed whatever this says.
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Largest body accepted; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Bytes of webhook bodies held at once (being read or decoded), across
    /// all connections; a request that would pass it gets 503 with
    /// Retry-After. A body without Content-Length counts as max_body_bytes.
    #[serde(default = "default_max_body_bytes_in_flight")]
    pub max_body_bytes_in_flight: usize,
    /// Most notifications one body may carry; more get 413.
    #[serde(default = "default_max_events_per_body")]
    pub max_events_per_body: usize,
    /// How long a request waits for every sink to acknowledge its events
    /// before it is answered 503. Stays below Fishjam's own client timeout
    /// (about 5 s) so Fishjam sees our answer, not its timeout.
    #[serde(default = "default_ack_timeout", deserialize_with = "duration")]
    pub ack_timeout: Duration,
    /// How long a client may take to send its body; slower ones get 408.
    /// Also bounds a TLS handshake.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Most connections open at once; at the cap, new clients wait in the
    /// kernel's backlog until one closes.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that moves no byte either way this long is closed (also
    /// the admin listener's).
    #[serde(
        default = "default_idle_timeout_listener",
        deserialize_with = "duration"
    )]
    pub idle_timeout: Duration,
    /// Serve HTTPS with this certificate (re-read when its files change).
    pub tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// Hold Fishjam's notifier WebSocket (needs fishjam.management_token).
    #[serde(default)]
    pub enabled: bool,
    /// Check fishjam.id and the token against Fishjam's REST API
    /// (`GET /validate`) at start-up; refused credentials stop the bridge.
    #[serde(default = "yes")]
    pub check_credentials: bool,
    /// Whether /readyz waits for the notifier to be subscribed. Off by
    /// default: readiness says whether a webhook can be taken, and the
    /// notifier being down must not take the webhook fallback with it; its
    /// state is in /status either way.
    #[serde(default)]
    pub required_for_readiness: bool,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Time allowed for authenticated + subscribe_response.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// How often the bridge pings Fishjam.
    #[serde(default = "default_ping_interval", deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// A connection that delivers nothing (no frame, no pong) this long is dead.
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Reconnect backoff: first delay, and the cap (full jitter in between).
    #[serde(default = "default_backoff_initial", deserialize_with = "duration")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// A session that lasted this long resets the backoff.
    #[serde(default = "default_stable_after", deserialize_with = "duration")]
    pub stable_after: Duration,
    /// Largest frame accepted.
    #[serde(default = "default_max_body_bytes")]
    pub max_frame_bytes: usize,
    /// After every reconnect, read Fishjam's rooms (`GET /room`) and publish
    /// what changed during the gap as events with source `reconciled`.
    #[serde(default = "yes")]
    pub reconcile: bool,
    /// At start-up, publish the rooms and peers Fishjam already has as
    /// reconciled events; otherwise they are only learned, silently.
    #[serde(default)]
    pub reconcile_at_start: bool,
    /// PEM file of CA certificates trusted, beside the platform's roots, for
    /// a self-hosted Fishjam's https and wss (the notifier, the credential
    /// check and the reconciliation).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

/// Which replica of a fleet holds the notifier (`election.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionConfig {
    /// `none` (one bridge: it holds the notifier), `nats` (a lease in a
    /// JetStream key-value bucket, on the servers of a NATS sink) or
    /// `kubernetes` (a `coordination.k8s.io/v1` Lease).
    #[serde(default)]
    pub backend: ElectionBackend,
    /// This replica's name in the lease and in `/readyz`. Env:
    /// `FISHJAM_BRIDGE_IDENTITY`; default: `$POD_NAME`, else `$HOSTNAME`,
    /// else the host's name, with the process id.
    pub identity: Option<String>,
    /// How long a lease lasts without renewal: after a holder dies, another
    /// replica is subscribed within about this long.
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// How often the holder renews and the others try to take over; at
    /// most a third of `ttl`.
    #[serde(default = "default_lease_renew", deserialize_with = "duration")]
    pub renew_every: Duration,
    #[serde(default)]
    pub nats: ElectionNatsConfig,
    #[serde(default)]
    pub kubernetes: ElectionKubernetesConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElectionBackend {
    #[default]
    None,
    Nats,
    Kubernetes,
}

/// The Lease, and how to reach the API server: by default as the pod's
/// service account (`/var/run/secrets/kubernetes.io/serviceaccount`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionKubernetesConfig {
    /// The Lease's name.
    #[serde(default = "default_lease_name")]
    pub lease: String,
    /// Default: the pod's own namespace.
    pub namespace: Option<String>,
    /// Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    /// A bearer token, read again before each request. Default: the service
    /// account's token.
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) the API server's certificate is checked
    /// against, beside the platform's roots. Default: the service account's.
    pub ca_file: Option<PathBuf>,
}

impl Default for ElectionKubernetesConfig {
    fn default() -> ElectionKubernetesConfig {
        ElectionKubernetesConfig {
            lease: default_lease_name(),
            namespace: None,
            api_url: None,
            token_file: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionNatsConfig {
    /// The NATS sink whose servers, credentials and TLS the lease uses;
    /// default: the only NATS sink.
    pub sink: Option<String>,
    /// The key-value bucket; its `max_age` is set to `election.ttl`.
    #[serde(default = "default_lease_bucket")]
    pub bucket: String,
    /// Copies of the bucket in a JetStream cluster (1, 3 or 5): with 3, the
    /// lease survives the loss of one server.
    #[serde(default = "default_lease_replicas")]
    pub replicas: usize,
}

impl Default for ElectionConfig {
    fn default() -> ElectionConfig {
        ElectionConfig {
            backend: ElectionBackend::None,
            identity: None,
            ttl: default_lease_ttl(),
            renew_every: default_lease_renew(),
            nats: ElectionNatsConfig::default(),
            kubernetes: ElectionKubernetesConfig::default(),
        }
    }
}

impl Default for ElectionNatsConfig {
    fn default() -> ElectionNatsConfig {
        ElectionNatsConfig {
            sink: None,
            bucket: default_lease_bucket(),
            replicas: default_lease_replicas(),
        }
    }
}

/// Why no NATS sink can hold the election's lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseSinkError {
    #[error("election.nats.sink: no NATS sink is named {0:?}")]
    NoneNamed(String),
    #[error("election.backend = \"nats\" needs a NATS sink for its servers")]
    NoNatsSink,
    #[error(
        "election.nats.sink: name the NATS sink whose servers hold the lease (there are several)"
    )]
    Several,
}

impl ElectionConfig {
    /// The NATS sink the lease uses: the one named, or the only one.
    pub fn nats_sink<'a>(
        &self,
        sinks: &'a [SinkConfig],
    ) -> Result<&'a crate::sinks::nats::NatsConfig, LeaseSinkError> {
        let nats: Vec<_> = sinks
            .iter()
            .filter_map(|sink| match sink {
                SinkConfig::Nats(config) => Some((sink.name(), &**config)),
                _ => None,
            })
            .collect();
        match &self.nats.sink {
            Some(name) => nats
                .iter()
                .find(|(sink, _)| sink == name)
                .map(|(_, config)| *config)
                .ok_or_else(|| LeaseSinkError::NoneNamed(name.clone())),
            None => match nats.as_slice() {
                [(_, config)] => Ok(config),
                [] => Err(LeaseSinkError::NoNatsSink),
                _ => Err(LeaseSinkError::Several),
            },
        }
    }
}

/// With both sources on, how notifications delivered both ways are matched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a delivery waits for its twin from the other source.
    #[serde(default = "default_dedup_window", deserialize_with = "duration")]
    pub window: Duration,
    /// Most deliveries held; the oldest are forgotten first.
    #[serde(default = "default_dedup_entries")]
    pub max_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Bound on events accepted and not yet acknowledged by every sink. When
    /// it is reached, webhooks get 503 with Retry-After.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_events: usize,
    /// Of those, most that may be bursty (voice activity, metadata updates),
    /// so that a flood of them never takes the slots lifecycle events need.
    #[serde(default = "default_max_in_flight_bursty")]
    pub max_in_flight_bursty_events: usize,
    /// When the bursty slots are full: `wait` (the body waits; a webhook gets
    /// 503 and is sent again) or `shed` (the body's oldest bursty events are
    /// dropped and counted; lifecycle events never are).
    #[serde(default)]
    pub bursty_when_full: crate::pipeline::fanout::WhenFull,
    /// Independent lanes per sink; a room always uses the same lane, so its
    /// events stay in order while rooms on other lanes publish in parallel.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// Most events a sink publishes in one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// First delay before a failed publish is retried.
    #[serde(default = "default_retry_initial", deserialize_with = "duration")]
    pub retry_initial_backoff: Duration,
    /// Longest delay between retries.
    #[serde(default = "default_retry_max", deserialize_with = "duration")]
    pub retry_max_backoff: Duration,
    /// On SIGTERM, how long in-flight events may take to reach the sinks.
    #[serde(default = "default_drain_timeout", deserialize_with = "duration")]
    pub drain_timeout: Duration,
    /// A JSON-lines file for events a sink refuses for good (too large,
    /// invalid for the broker); without it they are logged whole.
    pub dead_letter_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Whether bodies the sinks cannot take at once are kept on disk. Off,
    /// a full pipeline answers 503, and Fishjam may never send that
    /// notification again.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The spool's directory; by default `spool` in the state directory
    /// (`default_path`). After `Config::load`, set whenever `enabled` is.
    pub path: Option<PathBuf>,
    /// Cap on the spool's files; beyond it bodies are refused (webhooks get
    /// 503 with Retry-After, the notifier stops reading) and counted.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Size at which the spool starts a new segment file; a segment is
    /// deleted once every body in it was delivered.
    #[serde(default = "default_spool_segment_bytes")]
    pub segment_bytes: u64,
    /// Sync each write to disk before acknowledging it (survives power
    /// loss); `false` acknowledges once the OS has the write (survives a
    /// crash of the bridge, not of the machine).
    #[serde(default = "yes")]
    pub fsync: bool,
    /// A webhook not acknowledged by the sinks within this engages the
    /// spool, so later bodies are acknowledged from disk.
    #[serde(default = "default_spool_engage_after", deserialize_with = "duration")]
    pub engage_after: Duration,
}

impl SpoolConfig {
    /// `spool` in the state directory: `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=` and by the container image), else
    /// `$XDG_STATE_HOME/fishjam-bridge`, else `~/.local/state/fishjam-bridge`.
    pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        let set = |name: &str| env(name).filter(|value| !value.is_empty());
        let state = if let Some(dirs) = set("STATE_DIRECTORY") {
            // systemd lists several directories separated by ':' when the
            // unit names several; the first is this service's.
            PathBuf::from(dirs.split(':').next().unwrap_or(&dirs))
        } else if let Some(xdg) = set("XDG_STATE_HOME") {
            PathBuf::from(xdg).join("fishjam-bridge")
        } else {
            PathBuf::from(set("HOME")?).join(".local/state/fishjam-bridge")
        };
        Some(state.join("spool"))
    }

    pub fn options(&self) -> Option<crate::pipeline::spool::Options> {
        if !self.enabled {
            return None;
        }
        Some(crate::pipeline::spool::Options {
            dir: self.path.clone()?,
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            engage_after: self.engage_after,
            faults: crate::pipeline::spool::log::Faults::default(),
            replay_notifier: true,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve /metrics, /healthz and /readyz.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (re-read when its files change).
    pub tls: Option<ServerTlsConfig>,
    /// Serve live events at `/tap` (`fishjam-bridge tap`); off, as events
    /// carry peer metadata.
    #[serde(default)]
    pub tap: bool,
    /// A bearer token that `/metrics`, `/status` and `/tap` require; the
    /// probes (`/healthz`, `/readyz`) stay open. Prefer `token_file`.
    pub token: Option<Secret>,
    /// A file holding the token.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `fishjam_bridge=debug`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> ConfigError {
        ConfigError {
            problems: vec![problem.into()],
        }
    }
}

impl Config {
    /// Parses `text`, applies the environment, reads secret files and checks
    /// every value.
    pub fn load(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        env_names: &[String],
        read_file: &dyn Fn(&std::path::Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::one(format!("invalid TOML: {e}")))?;
        apply_env(&mut table, env, env_names)?;
        let mut config: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::one(format!("invalid configuration: {e}")))?;
        config.resolve_secret_files(read_file)?;
        if config.spool.enabled && config.spool.path.is_none() {
            config.spool.path = Some(SpoolConfig::default_path(env).ok_or_else(|| {
                ConfigError::one(
                    "spool.path: no state directory (STATE_DIRECTORY, XDG_STATE_HOME and HOME \
                     are unset); set spool.path, or spool.enabled = false to run without a spool",
                )
            })?);
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration of the process: `path` (or defaults) and the real environment.
    pub fn from_process(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::one(format!("cannot read config file {}: {e}", path.display()))
            })?,
            None => String::new(),
        };
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .collect();
        Config::load(&text, &|name| std::env::var(name).ok(), &names, &|path| {
            std::fs::read_to_string(path)
        })
    }

    fn resolve_secret_files(
        &mut self,
        read_file: &dyn Fn(&std::path::Path) -> std::io::Result<String>,
    ) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut resolve = |value: &mut Option<Secret>, file: Option<&Path>, key: &str| {
            if let Some(path) = file {
                if value.is_some() {
                    problems.push(format!("{key} and {key}_file are both set: keep one"));
                    return;
                }
                match read_file(path) {
                    Ok(text) => *value = Some(Secret::from_file_text(&text)),
                    Err(e) => {
                        problems.push(format!("{key}_file: cannot read {}: {e}", path.display()))
                    }
                }
            }
        };
        resolve(
            &mut self.fishjam.management_token,
            self.fishjam.management_token_file.as_deref(),
            "fishjam.management_token",
        );
        resolve(
            &mut self.webhook.secret,
            self.webhook.secret_file.as_deref(),
            "webhook.secret",
        );
        resolve(
            &mut self.admin.token,
            self.admin.token_file.as_deref(),
            "admin.token",
        );
        for (index, sink) in self.sinks.iter_mut().enumerate() {
            for secret in sink.secret_files() {
                let key = format!("sinks[{index}].{}", secret.key);
                resolve(secret.value, secret.file, &key);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The largest body an enabled source may take: a webhook body or a
    /// notifier frame.
    pub fn largest_body(&self) -> u64 {
        [
            (self.webhook.enabled, self.webhook.max_body_bytes),
            (self.notifier.enabled, self.notifier.max_frame_bytes),
        ]
        .into_iter()
        .filter_map(|(enabled, bytes)| enabled.then_some(bytes as u64))
        .max()
        .unwrap_or(0)
    }

    /// Checks every section and reports every problem at once. The sections
    /// are checked in a fixed order, so the problems always come out in the
    /// same order.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.validate_fishjam(&mut problems);
        self.validate_webhook(&mut problems);
        self.validate_notifier(&mut problems);
        self.validate_sources(&mut problems);
        self.validate_pipeline_bounds(&mut problems);
        self.validate_admin(&mut problems);
        self.validate_tls_files(&mut problems);
        self.validate_spool(&mut problems);
        self.validate_election(&mut problems);
        self.validate_pipeline_delivery(&mut problems);
        self.validate_sinks(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn validate_fishjam(&self, problems: &mut Vec<String>) {
        if self.fishjam.id.trim().is_empty() {
            problems.push(
                "fishjam.id is required: the Fishjam id from the dashboard or a self-hosted Fishjam's URL (or set FISHJAM_ID)".to_owned(),
            );
        }
    }

    /// The webhook listener's keys; none is checked while it is disabled.
    fn validate_webhook(&self, problems: &mut Vec<String>) {
        if !self.webhook.enabled {
            return;
        }
        if !self.webhook.path.starts_with('/') {
            problems.push(format!(
                "webhook.path must start with '/': got {:?}",
                self.webhook.path
            ));
        }
        match (&self.webhook.secret, self.webhook.allow_unsigned) {
            (Some(secret), _) if secret.lines().next().is_none() => {
                problems.push("webhook.secret is set but empty".to_owned())
            }
            (None, false) => problems.push(
                "webhook.secret is not set: set it to the webhook secret from the Fishjam \
                 dashboard (FISHJAM_WEBHOOK_SECRET, or webhook.secret_file), or set \
                 webhook.allow_unsigned = true to accept unsigned webhooks from anyone who \
                 reaches webhook.listen"
                    .to_owned(),
            ),
            _ => {}
        }
        if self.webhook.max_body_bytes_in_flight < self.webhook.max_body_bytes {
            problems.push(format!(
                "webhook.max_body_bytes_in_flight ({}) must be at least webhook.max_body_bytes ({}): a body of the largest size could never be read",
                self.webhook.max_body_bytes_in_flight, self.webhook.max_body_bytes
            ));
        }
        if self.webhook.max_body_bytes > u32::MAX as usize {
            problems.push("webhook.max_body_bytes must be below 4 GiB".to_owned());
        }
        if self.webhook.max_connections == 0 {
            problems.push("webhook.max_connections must be at least 1".to_owned());
        }
        if self.webhook.idle_timeout.is_zero() {
            problems.push("webhook.idle_timeout must be longer than zero".to_owned());
        }
        if self.webhook.max_events_per_body == 0 {
            problems.push("webhook.max_events_per_body must be at least 1".to_owned());
        }
        if self.webhook.max_events_per_body > self.pipeline.max_in_flight_events {
            problems.push(format!(
                "webhook.max_events_per_body ({}) must not exceed pipeline.max_in_flight_events ({}): such a body could never be accepted",
                self.webhook.max_events_per_body, self.pipeline.max_in_flight_events
            ));
        }
        if self.webhook.ack_timeout.is_zero() {
            problems.push("webhook.ack_timeout must be longer than zero".to_owned());
        }
    }

    /// The notifier's keys, and what it needs from `fishjam`; none is
    /// checked while it is disabled.
    fn validate_notifier(&self, problems: &mut Vec<String>) {
        if !self.notifier.enabled {
            return;
        }
        if self.fishjam.management_token.is_none() {
            problems.push(
                "notifier.enabled needs fishjam.management_token (or FISHJAM_MANAGEMENT_TOKEN)"
                    .to_owned(),
            );
        }
        if let Err(problem) = crate::core::address::notifier_url(&self.fishjam.id) {
            problems.push(format!("fishjam.id: {problem}"));
        }
        if self.notifier.ping_interval >= self.notifier.idle_timeout {
            problems.push(
                "notifier.ping_interval must be shorter than notifier.idle_timeout".to_owned(),
            );
        }
        if self.notifier.backoff_initial > self.notifier.backoff_max {
            problems
                .push("notifier.backoff_initial must not exceed notifier.backoff_max".to_owned());
        }
    }

    fn validate_sources(&self, problems: &mut Vec<String>) {
        if !self.webhook.enabled && !self.notifier.enabled {
            problems.push(
                "enable webhook or notifier (or both): with neither, nothing comes in".to_owned(),
            );
        }
    }

    /// The pipeline's in-flight bounds, and that the largest webhook body
    /// fits them.
    fn validate_pipeline_bounds(&self, problems: &mut Vec<String>) {
        if self.pipeline.max_in_flight_bursty_events == 0 {
            problems.push("pipeline.max_in_flight_bursty_events must be at least 1".to_owned());
        }
        if self.webhook.enabled
            && self.pipeline.bursty_when_full == crate::pipeline::fanout::WhenFull::Wait
            && self.webhook.max_events_per_body > self.pipeline.max_in_flight_bursty_events
        {
            problems.push(format!(
                "webhook.max_events_per_body ({}) must not exceed pipeline.max_in_flight_bursty_events ({}) with bursty_when_full = \"wait\": a body of voice activity could never be accepted",
                self.webhook.max_events_per_body, self.pipeline.max_in_flight_bursty_events
            ));
        }
        if self.pipeline.max_in_flight_events == 0 {
            problems.push("pipeline.max_in_flight_events must be at least 1".to_owned());
        }
    }

    fn validate_admin(&self, problems: &mut Vec<String>) {
        if self.admin.tap && !self.admin.enabled {
            problems.push(
                "admin.tap needs admin.enabled: /tap is served by the admin listener".to_owned(),
            );
        }
        let token = self.admin.token.as_ref().map(|token| token.expose());
        if token.is_some_and(|token| token.is_empty() || token.contains(char::is_whitespace)) {
            problems.push("admin.token must be one word, not empty".to_owned());
        }
    }

    /// The listeners' certificates and the notifier's CA file, read now so
    /// that a missing or broken one is a start-up error.
    fn validate_tls_files(&self, problems: &mut Vec<String>) {
        for (key, tls) in [
            ("webhook.tls", &self.webhook.tls),
            ("admin.tls", &self.admin.tls),
        ] {
            if let Some(Err(problem)) = tls.as_ref().map(ServerTlsConfig::acceptor) {
                problems.push(format!("{key}: {problem}"));
            }
        }
        if let Some(path) = &self.notifier.ca_file {
            if let Err(problem) = crate::net::tls::ExtraRoots::load(path) {
                problems.push(format!("notifier.ca_file: {problem}"));
            }
        }
    }

    /// The spool's keys; none is checked while it is disabled.
    fn validate_spool(&self, problems: &mut Vec<String>) {
        if !self.spool.enabled {
            return;
        }
        if self.webhook.enabled && self.spool.engage_after >= self.webhook.ack_timeout {
            problems.push(format!(
                "spool.engage_after ({}) must be shorter than webhook.ack_timeout ({})",
                humantime::format_duration(self.spool.engage_after),
                humantime::format_duration(self.webhook.ack_timeout)
            ));
        }
        let largest = self.largest_body();
        if self.spool.max_bytes < self.spool.segment_bytes.max(largest) * 2 {
            problems.push(format!(
                "spool.max_bytes ({}) must hold at least two segments (spool.segment_bytes {}) and two of the largest bodies ({largest} bytes)",
                self.spool.max_bytes, self.spool.segment_bytes
            ));
        }
        if self.spool.segment_bytes == 0 {
            problems.push("spool.segment_bytes must be at least 1".to_owned());
        }
    }

    /// The election's timing and its backend's keys.
    fn validate_election(&self, problems: &mut Vec<String>) {
        // Checked even with the notifier off, when the election is not run:
        // a deployment may set it for when the notifier is turned on.
        if self.election.backend != ElectionBackend::None
            && (self.election.renew_every.is_zero()
                || self.election.renew_every * 3 > self.election.ttl)
        {
            problems.push(format!(
                "election.renew_every ({}) must be more than zero and at most a third of election.ttl ({})",
                humantime::format_duration(self.election.renew_every),
                humantime::format_duration(self.election.ttl)
            ));
        }
        if self.election.backend == ElectionBackend::Kubernetes
            && (self.election.ttl < Duration::from_secs(1) || self.election.ttl.subsec_nanos() != 0)
        {
            problems.push(format!(
                "election.ttl ({}) must be whole seconds with the kubernetes backend (a Lease's leaseDurationSeconds)",
                humantime::format_duration(self.election.ttl)
            ));
        }
        if self.election.backend == ElectionBackend::Nats {
            if let Err(problem) = self.election.nats_sink(&self.sinks) {
                problems.push(problem.to_string());
            }
            if ![1, 3, 5].contains(&self.election.nats.replicas) {
                problems.push("election.nats.replicas must be 1, 3 or 5".to_owned());
            }
        }
    }

    /// How the pipeline hands events to the sinks: lanes, batches, retries.
    fn validate_pipeline_delivery(&self, problems: &mut Vec<String>) {
        if self.pipeline.lanes == 0 {
            problems.push("pipeline.lanes must be at least 1".to_owned());
        }
        if self.pipeline.max_batch == 0 {
            problems.push("pipeline.max_batch must be at least 1".to_owned());
        }
        if self.pipeline.retry_initial_backoff > self.pipeline.retry_max_backoff {
            problems.push(
                "pipeline.retry_initial_backoff must not exceed pipeline.retry_max_backoff"
                    .to_owned(),
            );
        }
    }

    /// At least one sink, each with a name of its own, each valid.
    fn validate_sinks(&self, problems: &mut Vec<String>) {
        if self.sinks.is_empty() {
            problems.push("sinks: at least one sink is required".to_owned());
        }
        let mut names = BTreeMap::new();
        for (index, sink) in self.sinks.iter().enumerate() {
            if sink.name().bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!(
                    "sinks[{index}]: name {:?} is a number, which an environment override would read as a place in [[sinks]]",
                    sink.name()
                ));
            }
            if let Some(previous) = names.insert(sink.name(), index) {
                problems.push(format!(
                    "sinks[{index}]: name {:?} is already used by sinks[{previous}]; give each sink its own name",
                    sink.name()
                ));
            }
            for problem in sink.validate() {
                problems.push(format!("sinks[{index}].{problem}"));
            }
        }
    }

    /// A description of the effective configuration with secrets masked.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
        self.describe_fishjam(&mut line);
        self.describe_webhook(&mut line);
        self.describe_pipeline(&mut line);
        self.describe_spool(&mut line);
        self.describe_notifier(&mut line);
        self.describe_admin(&mut line);
        self.describe_sinks(&mut line);
        out
    }

    fn describe_fishjam(&self, line: &mut impl FnMut(&str, String)) {
        line("fishjam.id", format!("{:?}", self.fishjam.id));
        line(
            "fishjam.management_token",
            describe_secret(self.fishjam.management_token.as_ref()),
        );
    }

    fn describe_webhook(&self, line: &mut impl FnMut(&str, String)) {
        line("webhook.enabled", self.webhook.enabled.to_string());
        line("webhook.listen", self.webhook.listen.to_string());
        line("webhook.path", format!("{:?}", self.webhook.path));
        line(
            "webhook.secret",
            match (&self.webhook.secret, self.webhook.allow_unsigned) {
                (None, true) => {
                    "not set: unsigned webhooks are accepted (webhook.allow_unsigned)".to_owned()
                }
                (Some(secret), _) if secret.lines().nth(1).is_some() => {
                    format!("set ({} secrets: a rotation)", secret.lines().count())
                }
                _ => describe_secret(self.webhook.secret.as_ref()),
            },
        );
        line("webhook.tls", describe_tls(self.webhook.tls.as_ref()));
        line(
            "webhook.max_body_bytes",
            self.webhook.max_body_bytes.to_string(),
        );
        line(
            "webhook.max_events_per_body",
            self.webhook.max_events_per_body.to_string(),
        );
        line(
            "webhook.ack_timeout",
            humantime::format_duration(self.webhook.ack_timeout).to_string(),
        );
    }

    fn describe_pipeline(&self, line: &mut impl FnMut(&str, String)) {
        line(
            "pipeline.max_in_flight_events",
            self.pipeline.max_in_flight_events.to_string(),
        );
        line("pipeline.lanes", self.pipeline.lanes.to_string());
        line(
            "pipeline.drain_timeout",
            humantime::format_duration(self.pipeline.drain_timeout).to_string(),
        );
    }

    fn describe_spool(&self, line: &mut impl FnMut(&str, String)) {
        line(
            "spool.path",
            match (&self.spool.path, self.spool.enabled) {
                (Some(path), true) => format!("{:?}", path.display().to_string()),
                _ => "off (spool.enabled = false): a full pipeline answers 503".to_owned(),
            },
        );
        line("spool.max_bytes", self.spool.max_bytes.to_string());
        line("spool.fsync", self.spool.fsync.to_string());
    }

    /// The notifier, and the election that decides which bridge holds it.
    fn describe_notifier(&self, line: &mut impl FnMut(&str, String)) {
        line("notifier.enabled", self.notifier.enabled.to_string());
        line(
            "election",
            match self.election.backend {
                ElectionBackend::None => "none: this bridge holds the notifier".to_owned(),
                ElectionBackend::Nats => format!(
                    "nats (bucket {:?}, {} replica(s), ttl {}, renew every {})",
                    self.election.nats.bucket,
                    self.election.nats.replicas,
                    humantime::format_duration(self.election.ttl),
                    humantime::format_duration(self.election.renew_every)
                ),
                ElectionBackend::Kubernetes => format!(
                    "kubernetes (lease {:?}, ttl {}, renew every {})",
                    self.election.kubernetes.lease,
                    humantime::format_duration(self.election.ttl),
                    humantime::format_duration(self.election.renew_every)
                ),
            },
        );
    }

    fn describe_admin(&self, line: &mut impl FnMut(&str, String)) {
        line("admin.enabled", self.admin.enabled.to_string());
        line("admin.listen", self.admin.listen.to_string());
        line("admin.tls", describe_tls(self.admin.tls.as_ref()));
        line(
            "admin.tap",
            if self.admin.tap {
                "on: /tap shows live events, peer metadata included".to_owned()
            } else {
                "off".to_owned()
            },
        );
        line(
            "admin.token",
            match &self.admin.token {
                Some(_) => "set: /metrics, /status and /tap need it".to_owned(),
                None => "not set: /metrics and /status are open to whoever reaches the listener"
                    .to_owned(),
            },
        );
    }

    fn describe_sinks(&self, line: &mut impl FnMut(&str, String)) {
        for (index, sink) in self.sinks.iter().enumerate() {
            line(&format!("sinks[{index}]"), sink.describe());
        }
    }
}

/// A secret as `describe` shows it: whether it is set and its length, never
/// its value.
fn describe_secret(secret: Option<&Secret>) -> String {
    match secret {
        Some(secret) => format!("set ({} bytes)", secret.expose().len()),
        None => "not set".to_owned(),
    }
}

fn describe_tls(tls: Option<&ServerTlsConfig>) -> String {
    match tls {
        Some(tls) => match &tls.client_ca_file {
            Some(ca) => format!(
                "cert_file {}, client certificates from {}",
                tls.cert_file.display(),
                ca.display()
            ),
            None => format!("cert_file {}", tls.cert_file.display()),
        },
        None => "off".to_owned(),
    }
}

/// Sets the keys named by the environment on the parsed table.
fn apply_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
    env_names: &[String],
) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (name, key) in ENV_KEYS {
        if let Some(value) = env(name) {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            // These are strings (ids, tokens, paths): never reinterpret them.
            if let Err(problem) = set_path(table, &path, toml::Value::String(value)) {
                problems.push(format!("{name}: {problem}"));
            }
        }
    }
    let mut generic: Vec<&String> = env_names
        .iter()
        .filter(|name| name.starts_with(ENV_PREFIX))
        .collect();
    generic.sort();
    for name in generic {
        let Some(value) = env(name) else { continue };
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|part| part.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push(format!("{name}: empty key segment"));
            continue;
        }
        // A credential is text whatever it looks like: `12345` as a number
        // would be refused, with the secret in the message.
        let secret = path.last().is_some_and(|key| {
            ["password", "secret", "token", "nkey", "url"]
                .iter()
                .any(|s| key.contains(s))
        });
        let value = if secret {
            toml::Value::String(value)
        } else {
            env_value(&value)
        };
        if let Err(problem) = set_path(table, &path, value) {
            problems.push(format!("{name}: {problem}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// An environment value as TOML: numbers, booleans and arrays keep their type,
/// anything else is a string.
fn env_value(value: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Wrapper {
        v: toml::Value,
    }
    toml::from_str::<Wrapper>(&format!("v = {value}"))
        .map(|w| w.v)
        .unwrap_or_else(|_| toml::Value::String(value.to_owned()))
}

/// Why an environment variable's key cannot be set on the table: a part of
/// its path is not what the variable takes it for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum KeyPathError {
    #[error("{0} is a list: the next segment must be an index or the name of an item")]
    NotAnIndex(String),
    #[error("{part} has no item {index}")]
    NoItem { part: String, index: usize },
    #[error("{part}[{index}] is not a table")]
    ItemNotATable { part: String, index: usize },
    #[error("{0} is not a table")]
    NotATable(String),
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), KeyPathError> {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut current = table;
    for (depth, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => {
                // `sinks__0__path`: the next segment indexes the array, or
                // names an item (`sinks__events__password`), which stays
                // right when the list is reordered.
                let index = item_index(items, &path[depth + 1])
                    .ok_or_else(|| KeyPathError::NotAnIndex(part.clone()))?;
                let item = items.get_mut(index).ok_or_else(|| KeyPathError::NoItem {
                    part: part.clone(),
                    index,
                })?;
                let toml::Value::Table(t) = item else {
                    return Err(KeyPathError::ItemNotATable {
                        part: part.clone(),
                        index,
                    });
                };
                return set_path(t, &path[depth + 2..], value);
            }
            _ => return Err(KeyPathError::NotATable(part.clone())),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// The item `segment` names: its index, or the item whose `name` (else
/// its `type`, a sink's default name) reads as `segment` in an environment
/// variable's name (lower case, `-` as `_`).
fn item_index(items: &[toml::Value], segment: &str) -> Option<usize> {
    if let Ok(index) = segment.parse() {
        return Some(index);
    }
    let named = |item: &toml::Value| {
        let name = item.get("name").or_else(|| item.get("type"))?.as_str()?;
        Some(name.to_ascii_lowercase().replace('-', "_"))
    };
    let mut matching = items
        .iter()
        .enumerate()
        .filter(|(_, item)| named(item).as_deref() == Some(segment));
    match (matching.next(), matching.next()) {
        (Some((index, _)), None) => Some(index),
        _ => None,
    }
}

fn yes() -> bool {
    true
}
fn default_sinks() -> Vec<SinkConfig> {
    vec![SinkConfig::default()]
}
fn default_webhook_listen() -> SocketAddr {
    ([0, 0, 0, 0], 8080).into()
}
fn default_webhook_path() -> String {
    "/webhook".to_owned()
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_events_per_body() -> usize {
    5_000
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(4)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_lease_renew() -> Duration {
    Duration::from_secs(2)
}
fn default_lease_bucket() -> String {
    "fishjam_bridge_leases".to_owned()
}
fn default_lease_name() -> String {
    "fishjam-bridge-notifier".to_owned()
}
fn default_lease_replicas() -> usize {
    1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(45)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_stable_after() -> Duration {
    Duration::from_secs(60)
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(60)
}
fn default_dedup_entries() -> usize {
    100_000
}
fn default_max_in_flight() -> usize {
    10_000
}
fn default_max_body_bytes_in_flight() -> usize {
    64 * 1024 * 1024
}
fn default_max_in_flight_bursty() -> usize {
    5_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_idle_timeout_listener() -> Duration {
    Duration::from_secs(60)
}
fn default_lanes() -> usize {
    4
}
fn default_max_batch() -> usize {
    512
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(20)
}
fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_spool_segment_bytes() -> u64 {
    64 << 20
}
fn default_spool_engage_after() -> Duration {
    Duration::from_secs(1)
}
fn default_admin_listen() -> SocketAddr {
    ([127, 0, 0, 1], 9090).into()
}
fn default_log_level() -> String {
    "info".to_owned()
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::deserialize(toml::Value::Table(toml::Table::new()))
            .expect("defaults deserialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Loads `text` with `env` over what a deployment gives: a state
    /// directory and the webhook secret.
    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let deployment = [
            ("STATE_DIRECTORY", "/var/lib/fishjam-bridge"),
            ("FISHJAM_WEBHOOK_SECRET", "whsec-deployed"),
        ];
        load_exactly(text, &[&deployment[..], env].concat())
    }

    fn load_exactly(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let names: Vec<String> = env.keys().cloned().collect();
        Config::load(
            text,
            &|name| env.get(name).cloned(),
            &names,
            &|path| match path.to_str() {
                Some("/run/secrets/token") => Ok("from-file\n".to_owned()),
                _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
        )
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config.example.toml");
        let config = load(text, &[]).unwrap();
        assert!(!config.sinks.is_empty());
    }

    #[test]
    fn an_election_is_checked_against_the_notifier_and_the_sinks() {
        let notifier =
            "[fishjam]\nid = \"x\"\nmanagement_token = \"t\"\n[notifier]\nenabled = true\n";
        let problems = |text: &str| load(text, &[]).unwrap_err().problems.join("\n");
        // No NATS sink to hold the lease, and too slow a beat for the TTL.
        let text = format!(
            "{notifier}[election]\nbackend = \"nats\"\nttl = \"3s\"\nrenew_every = \"2s\"\n"
        );
        let found = problems(&text);
        assert!(found.contains("needs a NATS sink"), "{found}");
        assert!(found.contains("at most a third of election.ttl"), "{found}");
        // Two NATS sinks: the lease's must be named, and exist.
        let two = "[[sinks]]\ntype = \"nats\"\nname = \"a\"\nsubject = \"a\"\n\
                   [[sinks]]\ntype = \"nats\"\nname = \"b\"\nsubject = \"b\"\n";
        let found = problems(&format!("{notifier}[election]\nbackend = \"nats\"\n{two}"));
        assert!(found.contains("name the NATS sink"), "{found}");
        let found = problems(&format!(
            "{notifier}[election]\nbackend = \"nats\"\n[election.nats]\nsink = \"c\"\n{two}"
        ));
        assert!(found.contains("no NATS sink is named \"c\""), "{found}");
        let config = load(
            &format!(
                "{notifier}[election]\nbackend = \"nats\"\n[election.nats]\nsink = \"b\"\n{two}"
            ),
            &[("FISHJAM_BRIDGE_IDENTITY", "pod-7")],
        )
        .unwrap();
        assert_eq!(
            config.election.nats_sink(&config.sinks).unwrap().subject,
            "b"
        );
        assert_eq!(config.election.identity.as_deref(), Some("pod-7"));
        // The Lease's duration is whole seconds.
        let found = problems(&format!(
            "{notifier}[election]\nbackend = \"kubernetes\"\nttl = \"2500ms\"\nrenew_every = \"500ms\"\n"
        ));
        assert!(found.contains("whole seconds"), "{found}");
    }

    #[test]
    fn env_overrides_and_secret_files() {
        let config = load(
            "[fishjam]\nid = \"file-id\"\n",
            &[
                ("FISHJAM_ID", "env-id"),
                ("FISHJAM_MANAGEMENT_TOKEN_FILE", "/run/secrets/token"),
                ("FISHJAM_WEBHOOK_SECRET", "s3cret"),
                ("FISHJAM_BRIDGE__WEBHOOK__MAX_BODY_BYTES", "1024"),
                ("FISHJAM_BRIDGE__PIPELINE__LANES", "3"),
            ],
        )
        .unwrap();
        assert_eq!(config.fishjam.id, "env-id");
        assert_eq!(
            config.fishjam.management_token.unwrap().expose(),
            "from-file"
        );
        assert_eq!(config.webhook.secret.unwrap().expose(), "s3cret");
        assert_eq!(config.webhook.max_body_bytes, 1024);
        assert_eq!(config.pipeline.lanes, 3);
    }

    #[test]
    fn env_reaches_into_sink_list() {
        let config = load(
            "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"file\"\npath = \"/a\"\n",
            &[("FISHJAM_BRIDGE__SINKS__0__PATH", "/b")],
        )
        .unwrap();
        assert!(config.sinks[0].describe().contains("/b"));
    }

    #[test]
    fn a_sink_credential_can_come_from_a_file() {
        let config = load(
            "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"nats\"\nuser = \"bridge\"\n\
             password_file = \"/run/secrets/token\"\n",
            &[],
        )
        .unwrap();
        let SinkConfig::Nats(nats) = &config.sinks[0] else {
            panic!("a NATS sink");
        };
        assert_eq!(nats.password.as_ref().unwrap().expose(), "from-file");
        let both = load(
            "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"kafka\"\n\
             sasl_password = \"p\"\nsasl_password_file = \"/run/secrets/token\"\n",
            &[],
        )
        .unwrap_err();
        assert!(
            both.to_string()
                .contains("sinks[0].sasl_password and sinks[0].sasl_password_file are both set"),
            "{both}"
        );
        let missing = load(
            "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"nats\"\ntoken_file = \"/nowhere\"\n",
            &[],
        )
        .unwrap_err();
        assert!(missing
            .to_string()
            .contains("sinks[0].token_file: cannot read /nowhere"));
    }

    #[test]
    fn a_credential_from_the_environment_stays_text_and_a_name_is_no_number() {
        let text = "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"nats\"\nuser = \"u\"\n";
        let config = load(text, &[("FISHJAM_BRIDGE__SINKS__NATS__PASSWORD", "12345")]).unwrap();
        let SinkConfig::Nats(nats) = &config.sinks[0] else {
            panic!("a NATS sink");
        };
        assert_eq!(nats.password.as_ref().unwrap().expose(), "12345");
        let numbered = load(
            "[fishjam]\nid = \"x\"\n[[sinks]]\ntype = \"file\"\nname = \"7\"\npath = \"/a\"\n",
            &[],
        )
        .unwrap_err();
        assert!(numbered.to_string().contains("is a number"), "{numbered}");
    }

    #[test]
    fn env_names_a_sink_whatever_its_place() {
        let text = "[fishjam]\nid = \"x\"\n\
                    [[sinks]]\ntype = \"file\"\nname = \"audit-log\"\npath = \"/a\"\n\
                    [[sinks]]\ntype = \"file\"\npath = \"/c\"\n";
        let config = load(
            text,
            &[
                ("FISHJAM_BRIDGE__SINKS__AUDIT_LOG__PATH", "/b"),
                ("FISHJAM_BRIDGE__SINKS__FILE__FSYNC", "true"),
            ],
        )
        .unwrap();
        assert!(config.sinks[0].describe().contains("path /b"));
        assert!(config.sinks[1].describe().contains("path /c, fsync true"));
        let unknown = load(text, &[("FISHJAM_BRIDGE__SINKS__NOPE__PATH", "/d")]).unwrap_err();
        assert!(
            unknown.to_string().contains("an index or the name"),
            "{unknown}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let error = load(
            "[webhook]\npath = \"hook\"\nmax_events_per_body = 20000\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("fishjam.id is required"), "{text}");
        assert!(text.contains("webhook.path"), "{text}");
        assert!(text.contains("webhook.max_events_per_body"), "{text}");
    }

    #[test]
    fn the_spool_is_on_by_default_in_the_state_directory() {
        let path = |env: &[(&str, &str)]| {
            load_exactly(
                "[fishjam]\nid = \"x\"\n[webhook]\nallow_unsigned = true\n",
                env,
            )
            .map(|c| c.spool.options().map(|o| o.dir))
        };
        assert_eq!(
            path(&[
                ("STATE_DIRECTORY", "/var/lib/a:/var/lib/b"),
                ("HOME", "/home/u")
            ])
            .unwrap(),
            Some(PathBuf::from("/var/lib/a/spool")),
            "systemd's own directory comes first"
        );
        assert_eq!(
            path(&[("XDG_STATE_HOME", "/x"), ("HOME", "/home/u")]).unwrap(),
            Some(PathBuf::from("/x/fishjam-bridge/spool"))
        );
        assert_eq!(
            path(&[("HOME", "/home/u")]).unwrap(),
            Some(PathBuf::from("/home/u/.local/state/fishjam-bridge/spool"))
        );
        let error = path(&[]).unwrap_err().to_string();
        assert!(
            error.contains("spool.path") && error.contains("spool.enabled = false"),
            "{error}"
        );
        let off = load_exactly(
            "[fishjam]\nid = \"x\"\n[webhook]\nallow_unsigned = true\n[spool]\nenabled = false\n",
            &[],
        )
        .unwrap();
        assert!(off.spool.options().is_none());
        assert!(off.describe().contains("spool.path = off"));
    }

    #[test]
    fn webhooks_are_signed_unless_unsigned_ones_are_allowed() {
        let env = [("STATE_DIRECTORY", "/s")];
        let error = load_exactly("[fishjam]\nid = \"x\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("webhook.secret is not set") && error.contains("allow_unsigned"),
            "{error}"
        );
        let unsigned = load_exactly(
            "[fishjam]\nid = \"x\"\n[webhook]\nallow_unsigned = true\n",
            &env,
        )
        .unwrap();
        assert!(unsigned
            .describe()
            .contains("unsigned webhooks are accepted"));
        // Without webhook ingress there is nothing to sign.
        load_exactly(
            "[fishjam]\nid = \"x\"\nmanagement_token = \"t\"\n[webhook]\nenabled = false\n[notifier]\nenabled = true\n",
            &env,
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = load("[fishjam]\nid = \"x\"\nsecret = \"y\"\n", &[]).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `secret`"),
            "{error}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = load(
            "[fishjam]\nid = \"x\"\nmanagement_token = \"tok-123456\"\n",
            &[("FISHJAM_WEBHOOK_SECRET", "whsec-abcdef")],
        )
        .unwrap();
        let shown = format!("{config:?}\n{}", config.describe());
        assert!(!shown.contains("tok-123456"));
        assert!(!shown.contains("whsec-abcdef"));
    }
}
