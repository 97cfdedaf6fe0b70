//! Webhook ingress: Fishjam POSTs one protobuf body (a notification or a
//! `NotificationBatch`) per request.
//!
//! The order of work: read the raw body under a size and time limit, verify
//! the signature over exactly those bytes, decode and normalize, admit every
//! event to the pipeline, and answer 2xx only once every sink acknowledged
//! every event of the body. Each failure has its own status (see
//! `docs/webhooks.md`) and is counted; none stops the listener.

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

/// An answer given before the body's events waited for the sinks: the body
/// was refused, or the spool answered for it. Boxed, since a `Response` is
/// too large to return in every `Result`.
type Early = Box<Response>;

struct WebhookState {
    admission: Admission,
    fishjam_id: Arc<str>,
    secret: Option<Secret>,
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
    let state = WebhookState {
        admission,
        fishjam_id,
        secret: config.secret.clone(),
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
    let response = handle(&state, request).await.unwrap_or_else(|early| *early);
    telemetry::webhook_answered(response.status().as_u16());
    response
}

/// The answer to one POST.
async fn handle(state: &WebhookState, request: Request) -> Result<Response, Early> {
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
    if let Some(problem) = unsupported_content_type(headers) {
        return Err(Box::new(reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, problem)));
    }
    if let Some(problem) = unsupported_encoding(headers) {
        return Err(Box::new(reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &problem,
        )));
    }
    let declared = declared_length(headers);
    if declared.is_some_and(|len| len > state.max_body_bytes) {
        return Err(Box::new(too_large(state.max_body_bytes)));
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
        let mut response = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook bodies in hand exceed webhook.max_body_bytes_in_flight",
        );
        retry_after(&mut response, RETRY_AFTER_FULL);
        return Err(Box::new(response));
    };
    Ok(body_room)
}

/// Checks the signature over exactly the bytes read, when a secret is set.
fn authenticate(state: &WebhookState, headers: &HeaderMap, body: &[u8]) -> Result<(), Early> {
    if let Some(secret) = &state.secret {
        match headers.get(signature::HEADER) {
            None => {
                return Err(Box::new(reply(
                    StatusCode::UNAUTHORIZED,
                    "missing x-fishjam-signature-256 header",
                )))
            }
            Some(header) => {
                if !signature::verify(secret.expose().as_bytes(), body, header.as_bytes()) {
                    return Err(Box::new(reply(
                        StatusCode::UNAUTHORIZED,
                        "invalid signature",
                    )));
                }
            }
        }
    }
    Ok(())
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
    if elements > state.max_events_per_body {
        return Err(Box::new(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "body carries {elements} notifications; the limit is {}",
                state.max_events_per_body
            ),
        )));
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
            return Err(Box::new(reply(
                StatusCode::BAD_REQUEST,
                &format!("{error}"),
            )));
        }
    };
    if normalized.events.len() > state.max_events_per_body {
        return Err(Box::new(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "body carries {} notifications; the limit is {}",
                normalized.events.len(),
                state.max_events_per_body
            ),
        )));
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
            Err(Box::new(match written {
                Ok(Ok(())) => ok(count, true),
                Ok(Err(error)) => {
                    let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
                    retry_after(&mut response, RETRY_AFTER_FULL);
                    response
                }
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the bridge is shutting down",
                ),
            }))
        }
        Err(refused) => {
            let error = refused.reason;
            telemetry::pipeline_rejected(Source::Webhook, count);
            let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
            if matches!(
                error,
                AdmissionError::Pipeline(SubmitError::Full | SubmitError::BurstyFull)
                    | AdmissionError::Spool(_)
            ) {
                retry_after(&mut response, RETRY_AFTER_FULL);
            }
            Err(Box::new(response))
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
) -> Response {
    let acknowledged = receipt.acknowledged();
    tokio::pin!(acknowledged);
    let mut waited = Duration::ZERO;
    if let Some((spool, after)) = &state.engage_spool {
        // Slow sinks: later bodies go to the spool rather than queue behind this one.
        waited = *after;
        match tokio::time::timeout(*after, &mut acknowledged).await {
            Ok(()) => return ok(count, false),
            Err(_) => spool.engage_now("a webhook waited spool.engage_after for the sinks"),
        }
        // Engaging the spool appended every body still waiting for the
        // sinks, this one among them (unless the spool is full): answered
        // once it is on disk, since Fishjam may never send it again. A sink
        // that takes it meanwhile gets it twice, with the same event ids.
        if let Some(durable) = ticket.as_ref().and_then(|(ticket, _)| ticket.spooled()) {
            if let Ok(Ok(())) = durable.await {
                return ok(count, true);
            }
        }
    }
    let left = state.ack_timeout.saturating_sub(waited);
    match tokio::time::timeout(left, acknowledged).await {
        Ok(()) => ok(count, false),
        Err(_) => {
            // The events stay in the pipeline and are still delivered: the
            // 503 only says they were not all safe within the time Fishjam waits.
            telemetry::ack_timed_out(Source::Webhook);
            let mut response = reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sinks did not acknowledge in time",
            );
            retry_after(&mut response, RETRY_AFTER_TIMEOUT);
            response
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
fn unsupported_content_type(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get(header::CONTENT_TYPE)?;
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/x-protobuf" | "application/protobuf" | "application/octet-stream") => {
            None
        }
        _ => Some("content type must be application/x-protobuf"),
    }
}

/// Fishjam posts plain protobuf; a compressed body would fail to decode
/// with a misleading reason, so it is refused by name.
fn unsupported_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let encoding = value.to_str().unwrap_or("?").trim().to_ascii_lowercase();
    (encoding != "identity" && !encoding.is_empty()).then(|| {
        format!("content-encoding {encoding} is not supported; send the protobuf body as it is")
    })
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
                Err(Box::new(too_large(limit)))
            } else {
                Err(Box::new(reply(
                    StatusCode::BAD_REQUEST,
                    "could not read the body",
                )))
            }
        }
        Err(_) => Err(Box::new(reply(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        ))),
    }
}

fn too_large(limit: usize) -> Response {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body is larger than {limit} bytes"),
    )
}

fn reply(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn retry_after(response: &mut Response, seconds: &'static str) {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
}
