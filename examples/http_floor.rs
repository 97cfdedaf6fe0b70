//! The floor under the bridge's webhook path, for `bench/compare`: the same
//! runtime, allocator and HTTP stack (tokio, hyper through axum), answering
//! 200 once a body is read, and nothing else. With `--normalize` it also
//! decodes, normalizes and serializes each body's events as the bridge does,
//! and still publishes nothing. What the bridge spends above these rows is
//! its own; what Node.js spends below the first is out of reach of any
//! handler on this stack (BENCHMARKS.md).
//!
//! Usage: cargo run --release --example http_floor -- ADDR [--normalize]

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::StatusCode;
use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("usage: http_floor ADDR [--normalize]");
    let normalize = args.next().as_deref() == Some("--normalize");
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    let fishjam_id: Arc<str> = Arc::from("floor");
    let handler = move |body: Bytes| {
        let fishjam_id = fishjam_id.clone();
        async move {
            if normalize {
                let origin = Origin {
                    source: Source::Webhook,
                    received_at: SystemTime::now(),
                    fishjam_id,
                    id_seed: body.len() as u64,
                };
                match normalize_body(&body, &origin) {
                    Ok(normalized) => {
                        let bytes: usize = normalized
                            .events
                            .iter()
                            .map(|event| event.to_json_bytes().len())
                            .sum();
                        std::hint::black_box(bytes);
                    }
                    Err(_) => return StatusCode::BAD_REQUEST,
                }
            }
            StatusCode::OK
        }
    };
    let router = axum::Router::new().route("/webhook", axum::routing::post(handler));
    axum::serve(listener, router).await.unwrap();
}
