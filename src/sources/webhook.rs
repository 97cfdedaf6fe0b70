//! Webhook ingress: Fishjam POSTs one protobuf body (a notification or a
//! `NotificationBatch`) per request.
//!
//! The order of work: read the raw body under a size and time limit, verify
//! the signature over exactly those bytes, decode and normalize, admit every
//! event to the pipeline, and answer 2xx only once every sink acknowledged
//! every event of the body. Each failure has its own status (see
//! `docs/webhooks.md`) and is counted; none stops the listener.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::{Secret, WebhookConfig};
use crate::core::event::Source;
use crate::core::normalize::{normalize_body, Normalized, Origin};
use crate::core::signature;
use crate::pipeline::admission::{self, Accepted, Admission, AdmissionError};
use crate::pipeline::fanout::{Receipt, SubmitError};
use crate::pipeline::spool::{Spool, Ticket};
use crate::telemetry;

/// Seconds a sender should wait after a 503 for a full pipeline.
const RETRY_AFTER_FULL: &str = "1";
/// Seconds a sender should wait after the sinks did not acknowledge in time.
const RETRY_AFTER_TIMEOUT: &str = "5";

/// How a POST ends: taken (every event acknowledged, or the body synced in
/// the spool), or refused.
#[derive(Debug)]
enum Answer {
    Taken { events: usize, spooled: bool },
    Refused(Refusal),
}

/// Every answer but a 200, each with its status and `Retry-After`: the
/// table of docs/webhooks.md is `Refusal::status`.
#[derive(Debug)]
enum Refusal {
    /// A content type other than protobuf's.
    ContentType,
    /// A `content-encoding` other than `identity`.
    Encoding(String),
    /// Over `webhook.max_body_bytes`.
    TooLarge {
        limit: usize,
    },
    /// More notifications than `webhook.max_events_per_body`.
    TooManyNotifications {
        count: usize,
        limit: usize,
    },
    /// The bodies in hand hold `webhook.max_body_bytes_in_flight`.
    BodiesInHand,
    /// The connection failed while the body was read.
    Unreadable,
    /// The body did not arrive within `webhook.request_timeout`.
    TooSlow,
    MissingSignature,
    InvalidSignature,
    /// Not a valid `ServerMessage`.
    Undecodable(String),
    /// Nothing of the body was admitted: the pipeline or the spool is full,
    /// or the spool could not write it.
    Full(String),
    /// Nothing of the body was admitted, for another reason.
    NotAdmitted(String),
    ShuttingDown,
    /// The sinks did not acknowledge within `webhook.ack_timeout`; the
    /// events are still delivered.
    NotInTime,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Undecodable(_) | Refusal::Unreadable => StatusCode::BAD_REQUEST,
            Refusal::MissingSignature | Refusal::InvalidSignature => StatusCode::UNAUTHORIZED,
            Refusal::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Refusal::TooLarge { .. } | Refusal::TooManyNotifications { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::ContentType | Refusal::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::BodiesInHand
            | Refusal::Full(_)
            | Refusal::NotAdmitted(_)
            | Refusal::ShuttingDown
            | Refusal::NotInTime => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a sender should wait before it sends the body again.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            Refusal::BodiesInHand | Refusal::Full(_) => Some(RETRY_AFTER_FULL),
            Refusal::NotInTime => Some(RETRY_AFTER_TIMEOUT),
            _ => None,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::ContentType => "content type must be application/x-protobuf".to_owned(),
            Refusal::Encoding(encoding) => format!(
                "content-encoding {encoding} is not supported; send the protobuf body as it is"
            ),
            Refusal::TooLarge { limit } => format!("body is larger than {limit} bytes"),
            Refusal::TooManyNotifications { count, limit } => {
                format!("body carries {count} notifications; the limit is {limit}")
            }
            Refusal::BodiesInHand => {
                "webhook bodies in hand exceed webhook.max_body_bytes_in_flight".to_owned()
            }
            Refusal::Unreadable => "could not read the body".to_owned(),
            Refusal::TooSlow => "the body did not arrive in time".to_owned(),
            Refusal::MissingSignature => "missing x-fishjam-signature-256 header".to_owned(),
            Refusal::InvalidSignature => "invalid signature".to_owned(),
            Refusal::Undecodable(reason) | Refusal::Full(reason) | Refusal::NotAdmitted(reason) => {
                reason.clone()
            }
            Refusal::ShuttingDown => "the bridge is shutting down".to_owned(),
            Refusal::NotInTime => "the sinks did not acknowledge in time".to_owned(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let refusal = match self {
            Answer::Taken { events, spooled } => return ok(events, spooled),
            Answer::Refused(refusal) => refusal,
        };
        let mut response = (
            refusal.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", refusal.message()),
        )
            .into_response();
        if let Some(seconds) = refusal.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Answer {
        Answer::Refused(refusal)
    }
}

/// An answer given before the body's events waited for the sinks: the body
/// was refused, or the spool answered for it.
type Early = Answer;

struct WebhookState {
    admission: Admission,
    fishjam_id: Arc<str>,
    /// The secrets a signature may be made with; none: unsigned webhooks
    /// are accepted.
    secrets: Option<Arc<Secrets>>,
    max_body_bytes: usize,
    max_events_per_body: usize,
    ack_timeout: Duration,
    request_timeout: Duration,
    /// Bytes of bodies being read or decoded at once, across connections.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// The spool, engaged when a body waits longer than this for the sinks.
    engage_spool: Option<(Arc<Spool>, Duration)>,
}

/// The webhook routes, posting into `admission`.
pub fn router(
    config: &WebhookConfig,
    fishjam_id: Arc<str>,
    admission: Admission,
    engage_spool: Option<(Arc<Spool>, Duration)>,
) -> Router {
    let secrets = config.secret.as_ref().map(|secret| {
        let secrets = Arc::new(Secrets::new(secret));
        if let Some(file) = &config.secret_file {
            tokio::spawn(secrets.clone().follow(file.clone()));
        }
        secrets
    });
    telemetry::webhook_secrets(secrets.as_ref().map_or(0, |s| s.count()));
    telemetry::webhook_registered();
    let state = WebhookState {
        admission,
        fishjam_id,
        secrets,
        max_body_bytes: config.max_body_bytes,
        max_events_per_body: config.max_events_per_body,
        ack_timeout: config.ack_timeout,
        request_timeout: config.request_timeout,
        body_budget: Arc::new(tokio::sync::Semaphore::new(config.max_body_bytes_in_flight)),
        engage_spool,
    };
    Router::new()
        .route(&config.path, post(receive))
        // Shared, not cloned per request.
        .with_state(Arc::new(state))
}

async fn receive(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let answer = handle(&state, request).await.unwrap_or_else(|early| early);
    let response = answer.into_response();
    telemetry::webhook_answered(response.status().as_u16());
    response
}

/// The answer to one POST.
async fn handle(state: &WebhookState, request: Request) -> Result<Answer, Early> {
    let (parts, body) = request.into_parts();
    let declared = check_headers(state, &parts.headers)?;
    let body_room = reserve_body_room(state, declared)?;
    let body = read_body(body, state.max_body_bytes, state.request_timeout).await?;
    let received_at = SystemTime::now();
    let received = Instant::now();
    authenticate(state, &parts.headers, &body)?;
    let (origin, normalized) = decode(state, &body, received_at)?;
    telemetry::body_normalized(Source::Webhook, &normalized);
    let count = normalized.events.len();
    let record = crate::pipeline::spool::record(&origin, body);
    let body = admission::Body::new(normalized.events, record, received);
    let (receipt, ticket) = admit(state, body, count, body_room).await?;
    Ok(wait_for_sinks(state, receipt, ticket, count).await)
}

/// Refuses a body the headers already rule out (its type, its encoding or
/// its declared length); otherwise the declared length, if any.
fn check_headers(state: &WebhookState, headers: &HeaderMap) -> Result<Option<usize>, Early> {
    if !supported_content_type(headers) {
        return Err(Refusal::ContentType.into());
    }
    if let Some(encoding) = unsupported_encoding(headers) {
        return Err(Refusal::Encoding(encoding).into());
    }
    let declared = declared_length(headers);
    if declared.is_some_and(|len| len > state.max_body_bytes) {
        let limit = state.max_body_bytes;
        return Err(Refusal::TooLarge { limit }.into());
    }
    Ok(declared)
}

/// Room for the body among all bodies in hand, reserved before reading
/// (a body of unknown length may use the whole limit), held until its
/// events are in the pipeline or the body is on disk: memory for bodies
/// stays bounded whatever the connections.
fn reserve_body_room(
    state: &WebhookState,
    declared: Option<usize>,
) -> Result<OwnedSemaphorePermit, Early> {
    let reserve = declared.unwrap_or(state.max_body_bytes).max(1);
    let Ok(body_room) = state
        .body_budget
        .clone()
        .try_acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
    else {
        return Err(Refusal::BodiesInHand.into());
    };
    Ok(body_room)
}

/// Checks the signature over exactly the bytes read, when a secret is set.
fn authenticate(state: &WebhookState, headers: &HeaderMap, body: &[u8]) -> Result<(), Early> {
    if let Some(secrets) = &state.secrets {
        match headers.get(signature::HEADER) {
            None => return Err(Refusal::MissingSignature.into()),
            Some(header) => {
                if !secrets.verify(body, header.as_bytes()) {
                    return Err(Refusal::InvalidSignature.into());
                }
            }
        }
    }
    Ok(())
}

/// The webhook's signing secrets: one, or during a rotation the current one
/// and the next; read again from their file when it changes and on SIGHUP,
/// so that a rotation refuses no webhook and needs no restart.
struct Secrets(std::sync::RwLock<Vec<Vec<u8>>>);

impl Secrets {
    fn new(secret: &Secret) -> Secrets {
        Secrets(std::sync::RwLock::new(Self::keys(secret.expose())))
    }

    fn keys(text: &str) -> Vec<Vec<u8>> {
        Secret::new(text)
            .lines()
            .map(|line| line.as_bytes().to_vec())
            .collect()
    }

    fn count(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether `header` is a signature of `body` by any of the secrets.
    fn verify(&self, body: &[u8], header: &[u8]) -> bool {
        let keys = self.0.read().unwrap_or_else(|e| e.into_inner());
        keys.iter().any(|key| signature::verify(key, body, header))
    }

    /// Reads `file` again every 2 s and on SIGHUP, and takes what it holds
    /// when that differs from the secrets in use (by content: a time stamp
    /// can stay the same across a rewrite). A file that cannot be read, or
    /// holds no secret, changes nothing: the secrets in use stay.
    async fn follow(self: Arc<Self>, file: PathBuf) {
        let mut hangups = crate::net::signal::hangups();
        // Said once, not every 2 s, until the file is readable again.
        let mut told = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                now = crate::net::signal::reload(hangups) => hangups = now,
            }
            let keys = match std::fs::read_to_string(&file) {
                Ok(text) => Self::keys(&text),
                Err(error) => {
                    if !std::mem::replace(&mut told, true) {
                        tracing::error!(file = %file.display(), error = %error, "cannot read the webhook secret file; the secrets in use stay");
                    }
                    continue;
                }
            };
            if keys.is_empty() {
                if !std::mem::replace(&mut told, true) {
                    tracing::error!(file = %file.display(), "the webhook secret file holds no secret; the secrets in use stay");
                }
                continue;
            }
            told = false;
            let count = keys.len();
            let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
            if *current != keys {
                *current = keys;
                drop(current);
                telemetry::webhook_secrets(count);
                tracing::info!(file = %file.display(), secrets = count, "webhook secrets read again");
            }
        }
    }
}

/// Decodes and normalizes the body, refusing one that carries more
/// notifications than `webhook.max_events_per_body`.
fn decode(
    state: &WebhookState,
    body: &[u8],
    received_at: SystemTime,
) -> Result<(Origin, Normalized), Early> {
    // Counted on the wire first: decoding allocates for every element, and
    // a 4 MiB body can hold two million empty ones.
    let elements = crate::core::decode::batch_len(body);
    let limit = state.max_events_per_body;
    if elements > limit {
        return Err(Refusal::TooManyNotifications {
            count: elements,
            limit,
        }
        .into());
    }
    let origin = Origin {
        source: Source::Webhook,
        received_at,
        fishjam_id: state.fishjam_id.clone(),
        id_seed: rand::random(),
    };
    let normalized = match normalize_body(body, &origin) {
        Ok(normalized) => normalized,
        Err(error) => {
            telemetry::decode_failed(Source::Webhook, &error);
            return Err(Refusal::Undecodable(error.to_string()).into());
        }
    };
    let count = normalized.events.len();
    if count > limit {
        return Err(Refusal::TooManyNotifications { count, limit }.into());
    }
    Ok((origin, normalized))
}

/// Offers the body to admission. Taken into fan-out, it gives the receipt
/// to wait on, with the spool's ticket and the body's room when the spool
/// may still take it over; taken by the spool or refused, the answer.
async fn admit(
    state: &WebhookState,
    body: admission::Body,
    count: usize,
    body_room: OwnedSemaphorePermit,
) -> Result<(Receipt, Option<(Ticket, OwnedSemaphorePermit)>), Early> {
    let offered = state.admission.offer(body);
    // The body stays in hand (and in the budget) until the spool has it on disk.
    match offered {
        Ok(Accepted::Receipt(receipt)) => {
            drop(body_room);
            Ok((receipt, None))
        }
        // The spool keeps the body's bytes with the ticket, to append it if
        // it engages: still in hand, in the budget, until the answer.
        Ok(Accepted::Waiting(receipt, ticket)) => Ok((receipt, Some((ticket, body_room)))),
        Ok(Accepted::Spooled(durable, body)) => {
            let written = durable.await;
            drop(body);
            drop(body_room);
            Err(match written {
                Ok(Ok(())) => Answer::Taken {
                    events: count,
                    spooled: true,
                },
                Ok(Err(error)) => Refusal::Full(error.to_string()).into(),
                Err(_) => Refusal::ShuttingDown.into(),
            })
        }
        Err(refused) => {
            let error = refused.reason;
            telemetry::pipeline_rejected(Source::Webhook, count);
            let full = matches!(
                error,
                AdmissionError::Pipeline(SubmitError::Full | SubmitError::BurstyFull)
                    | AdmissionError::Spool(_)
            );
            Err(match full {
                true => Refusal::Full(error.to_string()).into(),
                false => Refusal::NotAdmitted(error.to_string()).into(),
            })
        }
    }
}

/// Waits for the sinks to acknowledge the body's events, within
/// `webhook.ack_timeout`. With a spool, a wait longer than
/// `spool.engage_after` engages it, and the body is answered once on disk.
/// `ticket` (with the body's room in the budget) is held until the answer.
async fn wait_for_sinks(
    state: &WebhookState,
    receipt: Receipt,
    ticket: Option<(Ticket, OwnedSemaphorePermit)>,
    count: usize,
) -> Answer {
    let taken = |spooled| Answer::Taken {
        events: count,
        spooled,
    };
    let acknowledged = receipt.acknowledged();
    tokio::pin!(acknowledged);
    let mut waited = Duration::ZERO;
    if let Some((spool, after)) = &state.engage_spool {
        // Slow sinks: later bodies go to the spool rather than queue behind this one.
        waited = *after;
        match tokio::time::timeout(*after, &mut acknowledged).await {
            Ok(()) => return taken(false),
            Err(_) => spool.engage_now("a webhook waited spool.engage_after for the sinks"),
        }
        // Engaging the spool appended every body still waiting for the
        // sinks, this one among them (unless the spool is full): answered
        // once it is on disk, since Fishjam may never send it again. A sink
        // that takes it meanwhile gets it twice, with the same event ids.
        if let Some(durable) = ticket.as_ref().and_then(|(ticket, _)| ticket.spooled()) {
            if let Ok(Ok(())) = durable.await {
                return taken(true);
            }
        }
    }
    let left = state.ack_timeout.saturating_sub(waited);
    match tokio::time::timeout(left, acknowledged).await {
        Ok(()) => taken(false),
        Err(_) => {
            // The events stay in the pipeline and are still delivered: the
            // 503 only says they were not all safe within the time Fishjam waits.
            telemetry::ack_timed_out(Source::Webhook);
            Refusal::NotInTime.into()
        }
    }
}

fn ok(count: usize, spooled: bool) -> Response {
    let body = if spooled {
        format!("{{\"events\":{count},\"spooled\":true}}")
    } else {
        format!("{{\"events\":{count}}}")
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Fishjam sends `application/x-protobuf`; a body without a content type is
/// read as protobuf too, since the signature already proves its sender.
fn supported_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    matches!(
        essence.as_deref(),
        Some("application/x-protobuf" | "application/protobuf" | "application/octet-stream")
    )
}

/// Fishjam posts plain protobuf; a compressed body would fail to decode
/// with a misleading reason, so it is refused by name.
fn unsupported_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let encoding = value.to_str().unwrap_or("?").trim().to_ascii_lowercase();
    (encoding != "identity" && !encoding.is_empty()).then_some(encoding)
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<bytes::Bytes, Early> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            let over_limit = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            if over_limit {
                Err(Refusal::TooLarge { limit }.into())
            } else {
                Err(Refusal::Unreadable.into())
            }
        }
        Err(_) => Err(Refusal::TooSlow.into()),
    }
}
