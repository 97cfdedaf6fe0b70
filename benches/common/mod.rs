//! What the broker benchmarks share: the event payloads, and the bridge run
//! in this process behind its webhook listener, fed by the simulator.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fishjam_bridge::config::Config;
use fishjam_bridge::event::Source;
use fishjam_bridge::normalize::{normalize_body, Origin};
use fishjam_bridge::simulator::scenario::Scenario;
use fishjam_bridge::simulator::webhook::{WebhookClient, WebhookTarget};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use tokio_util::sync::CancellationToken;

// The allocator the fishjam-bridge binary ships with (src/main.rs), so the
// bridge is measured as it runs; the raw clients get it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs a benchmark on a multi-threaded runtime, as the bridge runs.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
        .block_on(future)
}

/// Webhook connections of the load generator.
pub const CONNECTIONS: usize = 64;

/// (key, event JSON) for `count` notifications of the scenario.
pub fn payloads(count: usize) -> Vec<(String, Bytes)> {
    let origin = Origin {
        source: Source::Webhook,
        received_at: SystemTime::now(),
        fishjam_id: Arc::from("bench"),
        id_seed: 0,
    };
    Scenario::new(7, 50)
        .take(count)
        .flat_map(|m| normalize_body(&m.encode_to_vec(), &origin).unwrap().events)
        .map(|e| (e.key().to_owned(), Bytes::from(e.to_json())))
        .collect()
}

/// Events per second through the bridge into the sink described by `sink`
/// (a `[[sinks]]` TOML entry), webhooks in batches of 50, each answered only
/// after the sink acknowledged it.
pub async fn bridge(sink: &str, count: usize, metrics: PrometheusHandle) -> f64 {
    let text = format!(
        "[fishjam]\nid = \"bench\"\n[webhook]\nlisten = \"127.0.0.1:0\"\n[admin]\nenabled = false\n{sink}"
    );
    let config = Config::load(&text, &|_| None, &[], &|p| std::fs::read_to_string(p)).unwrap();
    let shutdown = CancellationToken::new();
    let bridge = fishjam_bridge::start(config, metrics, shutdown.clone())
        .await
        .unwrap();
    while !bridge.readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = WebhookClient::start(WebhookTarget {
        url: format!("http://{}/webhook", bridge.webhook_addr.unwrap()),
        secret: None,
        batch: 50,
        concurrency: CONNECTIONS,
        retries: 0,
    })
    .unwrap();
    let messages: Vec<_> = Scenario::new(7, 50).take(count).collect();
    let started = Instant::now();
    for message in messages {
        client.send(message).await;
    }
    let stats = client.finish().await;
    let elapsed = started.elapsed();
    assert_eq!(
        stats
            .bodies_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every webhook was acknowledged"
    );
    shutdown.cancel();
    bridge.wait().await.unwrap();
    count as f64 / elapsed.as_secs_f64()
}
