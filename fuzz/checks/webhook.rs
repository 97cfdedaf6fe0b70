//! Any webhook request: the first byte picks the headers (content type,
//! content encoding, signature valid, missing or garbage), the rest is the
//! body. The handler always answers, with a status it documents.
//!
//! Shared by the fuzz target of the same name and by the replay of the
//! committed corpora in the test suite (`tests/it/fuzzing.rs`).

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use fishjam_bridge::config::{Secret, WebhookConfig};
use fishjam_bridge::core::signature;
use fishjam_bridge::testing::pipeline::admission::Admission;
use fishjam_bridge::testing::pipeline::fanout::{BurstyLimit, Fanout, WhenFull};
use tower::ServiceExt;

const SECRET: &str = "fuzz-secret";
const ANSWERS: &[u16] = &[200, 400, 401, 408, 413, 415, 503];

fn bridge() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static BRIDGE: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    BRIDGE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let router = rt.block_on(async {
            let bursty = BurstyLimit {
                max_in_flight: 5_000,
                when_full: WhenFull::Wait,
            };
            let (fanout, lanes, _) = Fanout::new(
                &[fishjam_bridge::testing::pipeline::fanout::SinkSpec::all(
                    "sink", 1,
                )],
                10_000,
                bursty,
                None,
            );
            // A sink that takes everything at once.
            for mut lane in lanes.into_iter().flatten() {
                tokio::spawn(async move {
                    while let Some(part) = lane.recv().await {
                        part.acknowledge();
                    }
                });
            }
            let config = WebhookConfig {
                secret: Some(Secret::new(SECRET)),
                max_body_bytes: 1 << 16,
                ..WebhookConfig::default()
            };
            fishjam_bridge::testing::sources::webhook::router(
                &config,
                Arc::from("fuzz"),
                Admission::new(fanout, None),
                None,
            )
        });
        (rt, router)
    })
}

/// Panics when the property fails for `data`.
pub fn check(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let (rt, router) = bridge();
    let mut request = Request::post("/webhook");
    request = match flags & 0b11 {
        0 => request.header("content-type", "application/x-protobuf"),
        1 => request.header("content-type", "application/octet-stream; charset=x"),
        2 => request.header("content-type", "text/plain"),
        _ => request,
    };
    if flags & 0b100 != 0 {
        request = request.header("content-encoding", "gzip");
    }
    request = match (flags >> 3) & 0b11 {
        0 => request.header(signature::HEADER, signature::sign(SECRET.as_bytes(), body)),
        1 => request.header(signature::HEADER, &body[..body.len().min(80)]),
        2 => request.header(signature::HEADER, "sha256=00"),
        _ => request,
    };
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let response = rt
        .block_on(router.clone().oneshot(request))
        .expect("the router is infallible");
    let status = response.status().as_u16();
    assert!(ANSWERS.contains(&status), "undocumented status {status}");
}
