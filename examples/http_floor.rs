//! The floor under the bridge's webhook path, for `bench/compare`: the same
//! runtime, allocator and HTTP stack (tokio, hyper through axum), answering
//! 200 once a body is read, and nothing else. With `--normalize` it also
//! decodes, normalizes and serializes each body's events as the bridge does,
//! and still publishes nothing. With `--publish NATS_URL` it then publishes
//! them through the bridge's own core NATS sink (every header, one batch per
//! body, acknowledged by the server's PONG) from the request's own task and
//! answers 200 after: the least a server-acknowledged handler on this stack
//! can do, with no admission, lanes or spool. What the bridge spends above
//! these rows is its delivery core's; what Node.js spends below the first is
//! out of reach of any handler on this stack (BENCHMARKS.md).
//!
//! Usage: cargo run --release --example http_floor -- ADDR [--normalize | --publish NATS_URL]

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::StatusCode;
use fishjam_bridge::core::event::{Message, Source};
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::testing::admin::Readiness;
use fishjam_bridge::testing::sinks::nats::NatsConfig;
use fishjam_bridge::testing::sinks::{Publish, SinkHealth, SinkKind};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: http_floor ADDR [--normalize | --publish NATS_URL]";
    let addr = args.next().expect(usage);
    let mode = args.next();
    let normalize = mode.is_some();
    let sink = match mode.as_deref() {
        None | Some("--normalize") => None,
        Some("--publish") => {
            let url = args.next().expect(usage);
            let config: NatsConfig = toml::from_str(&format!(
                "url = \"{url}\"\nsubject = \"floor.{{kind}}.{{key}}.{{type}}\"\n"
            ))
            .expect("a NATS sink's configuration");
            let health = SinkHealth::new("floor", Readiness::default());
            Some(Arc::new(config.connect(health).await.expect("NATS is up")))
        }
        Some(_) => panic!("{usage}"),
    };
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    let fishjam_id: Arc<str> = Arc::from("floor");
    let handler = move |body: Bytes| {
        let fishjam_id = fishjam_id.clone();
        let sink = sink.clone();
        async move {
            if normalize {
                let origin = Origin {
                    source: Source::Webhook,
                    received_at: SystemTime::now(),
                    fishjam_id,
                    id_seed: body.len() as u64,
                };
                let events = match normalize_body(&body, &origin) {
                    Ok(normalized) => normalized.events,
                    Err(_) => return StatusCode::BAD_REQUEST,
                };
                let messages = Message::all(events);
                match &sink {
                    Some(sink) => {
                        let batch: Vec<&Message> = messages.iter().collect();
                        if sink.publish(&batch).await.is_err() {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                    }
                    None => {
                        std::hint::black_box(messages.iter().map(|m| m.json.len()).sum::<usize>());
                    }
                }
            }
            StatusCode::OK
        }
    };
    let router = axum::Router::new().route("/webhook", axum::routing::post(handler));
    axum::serve(listener, router).await.unwrap();
}
