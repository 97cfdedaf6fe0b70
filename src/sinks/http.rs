//! HTTP: events POSTed as JSON to a URL, signed with the Standard Webhooks
//! scheme, so that a service that only speaks HTTP gets Fishjam's
//! fire-once notifications retried, in order per room, and signed.
//!
//! Each event is one request (`batch = "single"`, the default), or each
//! batch one request with a JSON array (`batch = "array"`). A 2xx
//! acknowledges; a timeout, a 408, a 429 or a 5xx is retried by the lane
//! (waiting at least `Retry-After`); any other answer refuses the event for
//! good and it goes to the dead letters (an array refused is sent again
//! one event at a time, so that only what the receiver refuses alone is).
//! One event a request means one request in flight per room: the lane's
//! waves hold at most one message of each room, and this sink sends a
//! wave's requests together.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::Sha256;

use super::{each_header, Cause, PublishError, RouteConfig, Settlement, SinkError, SinkHealth};
use crate::core::cloudevents;
use crate::core::event::Message;
use crate::core::settings::{duration, masked_url, Secret};
use crate::net::tls::ExtraRoots;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Name in logs and metrics; default `http`.
    pub name: Option<String>,
    /// Where events are POSTed (`http://` or `https://`).
    pub url: String,
    /// `single` (one event a request) or `array` (one batch a request).
    #[serde(default)]
    pub batch: Batching,
    /// The Standard Webhooks signing secret (`whsec_` and base64), or
    /// `secret_file` (a file holding it) or `secret_env` (the name of an
    /// environment variable holding it). Without any, requests go unsigned.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// How long a request may take before it is retried.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Headers every request carries besides the bridge's own.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A PEM file of certificates trusted beside the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Which events this sink takes (default: all).
    #[serde(default)]
    pub route: RouteConfig,
    /// Lanes of this sink (default: pipeline.lanes).
    pub lanes: Option<usize>,
}

/// What one request carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// One event, its JSON as the body, with the Fishjam-* headers.
    #[default]
    Single,
    /// A batch, as a JSON array of events.
    Array,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The longest `Retry-After` honoured: a receiver asking for more waits
/// this long between tries, since the pause holds every room of the lane.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl HttpConfig {
    /// The signing key: `secret` (which holds `secret_file`'s content once
    /// the configuration is loaded), or the variable `secret_env` names.
    fn key(&self) -> Result<Option<Vec<u8>>, SinkError> {
        let text = match (&self.secret, &self.secret_env) {
            (Some(secret), _) => secret.expose().to_owned(),
            (None, Some(variable)) => std::env::var(variable).map_err(|_| {
                SinkError::Config(format!("secret_env: ${variable} is not set"))
            })?,
            (None, None) => return Ok(None),
        };
        signing_key(&text)
            .map(Some)
            .map_err(|problem| SinkError::Config(format!("secret: {problem}")))
    }
}

/// The key of a Standard Webhooks secret: base64, after an optional
/// `whsec_`.
fn signing_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        Ok(_) => Err(SecretError::Empty),
        Err(_) => Err(SecretError::NotBase64),
    }
}

/// What is wrong with a signing secret.
#[derive(Debug, thiserror::Error)]
enum SecretError {
    #[error("is empty")]
    Empty,
    #[error("is not base64 (a Standard Webhooks secret: whsec_ and base64)")]
    NotBase64,
}

/// `webhook-signature`'s value for `body` sent with `id` at `timestamp`.
fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("hmac takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub struct HttpSink {
    name: String,
    url: reqwest::Url,
    batch: Batching,
    key: Option<Vec<u8>>,
    headers: HeaderMap,
    client: reqwest::Client,
    health: SinkHealth,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("name", &self.name)
            .field("url", &masked_url(self.url.as_str()))
            .finish()
    }
}

impl HttpSink {
    /// Each message as an array of one, in order, up to the first failure.
    async fn post_each_alone(&self, batch: &[&Message]) -> Result<(), PublishError> {
        for (index, message) in batch.iter().enumerate() {
            if let Err(error) = self.post_array(std::slice::from_ref(message)).await {
                return Err(PublishError::new(index, error));
            }
        }
        Ok(())
    }

    async fn post_one(&self, message: &Message) -> Result<(), SinkError> {
        let mut buffer = uuid::Uuid::encode_buffer();
        let id = message.event.id.hyphenated().encode_lower(&mut buffer);
        let mut headers = self.headers.clone();
        each_header(
            &message.event,
            "Fishjam-Event-Id",
            cloudevents::Mode::Off,
            "",
            |name, value| {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(name, value);
                }
            },
        );
        self.post(id, headers, message.json.to_vec()).await
    }

    async fn post_array(&self, batch: &[&Message]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(batch.iter().map(|m| m.json.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (n, message) in batch.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&message.json);
        }
        body.push(b']');
        let id = array_id(batch.iter().map(|message| message.event.id));
        let mut headers = self.headers.clone();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.post(&id, headers, body).await
    }

    /// POSTs `body` signed as `id`, and says what the answer means.
    async fn post(&self, id: &str, mut headers: HeaderMap, body: Vec<u8>) -> Result<(), SinkError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if let Some(key) = &self.key {
            let signed = signature(key, id, timestamp, &body);
            insert(&mut headers, "webhook-signature", &signed);
        }
        insert(&mut headers, "webhook-id", id);
        insert(&mut headers, "webhook-timestamp", &timestamp.to_string());
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => return Err(SinkError::Timeout),
            Err(error) => {
                self.health.set(false);
                return Err(SinkError::connect(
                    masked_url(self.url.as_str()),
                    Cause::from(error),
                ));
            }
        };
        self.health.set(true);
        answer(response.status(), response.headers())
    }
}

/// The `webhook-id` of an array of events, from all of their ids: the same
/// batch sent again carries the same id, and any other array another one.
fn array_id(ids: impl Iterator<Item = uuid::Uuid>) -> String {
    use sha2::Digest;
    let mut digest = Sha256::new();
    for id in ids {
        digest.update(id.as_bytes());
    }
    format!("batch_{}", hex::encode(&digest.finalize()[..16]))
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// What the receiver's answer means for the events it carried.
fn answer(status: StatusCode, headers: &HeaderMap) -> Result<(), SinkError> {
    if status.is_success() {
        return Ok(());
    }
    let again = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if !again {
        return Err(SinkError::Rejected(format!("the receiver answered {status}")));
    }
    let cause = format!("the receiver answered {status}");
    match retry_after(headers) {
        Some(wait) => Err(SinkError::Throttled {
            cause,
            retry_after: wait.min(MAX_RETRY_AFTER),
        }),
        None => Err(SinkError::publish(cause)),
    }
}

/// `Retry-After` in seconds (the form receivers use for a 429 or a 503).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl super::SinkKind for HttpConfig {
    type Sink = HttpSink;

    fn secret_files(&mut self) -> Vec<super::SecretFile<'_>> {
        vec![super::SecretFile {
            key: "secret",
            value: &mut self.secret,
            file: self.secret_file.as_deref(),
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
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => problems.push(format!(
                "url: scheme {:?} is not http or https",
                url.scheme()
            )),
            Err(e) => problems.push(format!("url: {e}")),
        }
        // `secret` and `secret_file` together are refused where the file is
        // read (`SinkKind::secret_files`), which fills `secret` from it.
        let from_config = self.secret.is_some() || self.secret_file.is_some();
        if from_config && self.secret_env.is_some() {
            problems.push("secret, secret_file and secret_env: set one".to_owned());
        }
        if let Some(secret) = &self.secret {
            if let Err(problem) = signing_key(secret.expose()) {
                problems.push(format!("secret: {problem}"));
            }
        }
        if self.lanes == Some(0) {
            problems.push("lanes must be at least 1".to_owned());
        }
        if self.timeout.is_zero() {
            problems.push("timeout must be more than zero".to_owned());
        }
        for (name, value) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err()
                || HeaderValue::from_str(value).is_err()
            {
                problems.push(format!("headers: {name:?} is not a valid header"));
            }
        }
        problems
    }

    fn describe(&self) -> String {
        let signed = match (&self.secret, &self.secret_file, &self.secret_env) {
            (None, None, None) => "unsigned".to_owned(),
            (_, Some(path), _) => format!("signed, secret from {}", path.display()),
            (_, _, Some(variable)) => format!("signed, secret from ${variable}"),
            _ => "signed".to_owned(),
        };
        let batch = match self.batch {
            Batching::Single => "one event a request",
            Batching::Array => "a batch a request",
        };
        format!("url {}, {batch}, {signed}", masked_url(&self.url))
    }

    async fn connect(&self, health: SinkHealth) -> Result<HttpSink, SinkError> {
        let config = self;
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| SinkError::Config(format!("url: {e}")))?;
        // A redirect would turn the POST into a GET or send the body
        // elsewhere: the receiver's answer is what counts.
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let roots = ExtraRoots::load(path).map_err(|e| SinkError::Config(e.to_string()))?;
            builder = roots
                .trusted_by(builder)
                .map_err(|e| SinkError::Config(e.to_string()))?;
        }
        let client = builder
            .build()
            .map_err(|e| SinkError::connect(masked_url(&config.url), e))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| SinkError::Config(format!("headers: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| SinkError::Config(format!("headers: {e}")))?;
            headers.insert(name, value);
        }
        Ok(HttpSink {
            name: config.name.clone().unwrap_or_else(|| "http".to_owned()),
            url,
            batch: config.batch,
            key: config.key()?,
            headers,
            client,
            health,
        })
    }
}

impl super::Publish for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn publish(&self, batch: &[&Message]) -> Result<(), PublishError> {
        match self.batch {
            Batching::Array => match self.post_array(batch).await {
                Ok(()) => Ok(()),
                // Which event the receiver refused is not known: each goes
                // alone, in order, so that only what it refuses is a dead
                // letter.
                Err(SinkError::Rejected(_)) if batch.len() > 1 => self.post_each_alone(batch).await,
                Err(error) => Err(PublishError::new(0, error)),
            },
            Batching::Single => {
                // The lane's wave holds one message a room: their requests go
                // out together, and each room whose request was taken moves
                // on.
                let answers = futures_util::future::join_all(
                    batch.iter().map(|message| self.post_one(message)),
                )
                .await;
                let mut settlement = Settlement::default();
                for answer in answers {
                    settlement.record(answer);
                }
                settlement.finish()
            }
        }
    }

    /// Whether a failed publish leaves stored at most a run from its start:
    /// an array is one request, taken whole or not at all.
    fn stores_prefixes(&self) -> bool {
        self.batch == Batching::Array
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkKind as _;

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// A receiver that keeps the ids it has seen must not drop an array it
    /// has not seen: an event that reached the lane twice (a spooled copy,
    /// a body Fishjam sent again) can make another array with the same
    /// first event and length.
    #[test]
    fn arrays_of_other_events_have_other_ids() {
        let [a, b, c] = [1u128, 2, 3].map(uuid::Uuid::from_u128);
        assert_eq!(array_id([a, b].into_iter()), array_id([a, b].into_iter()));
        assert_ne!(array_id([a, b].into_iter()), array_id([a, c].into_iter()));
        assert_ne!(array_id([a].into_iter()), array_id([a, b].into_iter()));
    }

    #[test]
    fn answers_are_kept_retried_or_refused_for_good() {
        let none = HeaderMap::new();
        let mut later = HeaderMap::new();
        later.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        let cases: [(u16, &HeaderMap, &str); 7] = [
            (200, &none, "ok"),
            (204, &none, "ok"),
            (503, &none, "publish"),
            (503, &later, "throttled"),
            (429, &later, "throttled"),
            (408, &none, "publish"),
            (400, &none, "rejected"),
        ];
        for (status, headers, reason) in cases {
            let got = answer(StatusCode::from_u16(status).unwrap(), headers);
            assert_eq!(got.map_or_else(|e| e.reason(), |()| "ok"), reason, "{status}");
        }
        let Err(SinkError::Throttled { retry_after, .. }) =
            answer(StatusCode::SERVICE_UNAVAILABLE, &later)
        else {
            panic!("a 503 with Retry-After is throttled");
        };
        assert_eq!(retry_after, Duration::from_secs(7));
    }

    #[test]
    fn a_secret_is_one_key_from_one_place() {
        let config = |extra: &str| -> HttpConfig {
            toml::from_str(&format!("url = \"https://example.com/events\"\n{extra}")).unwrap()
        };
        assert!(config("").validate().is_empty());
        assert!(config("secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"")
            .validate()
            .is_empty());
        assert_eq!(
            config("secret = \"not base64!\"").validate(),
            ["secret: is not base64 (a Standard Webhooks secret: whsec_ and base64)"]
        );
        assert_eq!(
            config("secret = \"whsec_MfKQ\"\nsecret_env = \"X\"").validate(),
            ["secret, secret_file and secret_env: set one"]
        );
        let mut wrong = config("");
        wrong.url = "ftp://example.com".to_owned();
        assert_eq!(wrong.validate(), ["url: scheme \"ftp\" is not http or https"]);
    }
}
