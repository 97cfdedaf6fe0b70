//! What the broker benchmarks share: the event payloads, and the bridge run
//! in this process behind its webhook listener, fed by the simulator.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fishjam_bridge::config::Config;
use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::simulator::scenario::Scenario;
use fishjam_bridge::simulator::webhook::{WebhookClient, WebhookTarget};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message as _;
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

/// CPU seconds this process has used, user and system.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Webhook connections of the load generator.
pub const CONNECTIONS: usize = 64;

/// One event as the bridge publishes it: key, JSON, and the headers it
/// carries (event id as `Nats-Msg-Id`, as the NATS sink sends it).
#[derive(Clone)]
pub struct Message {
    pub key: String,
    pub json: Bytes,
    // Only the NATS benchmark sends them: its baselines are measured both
    // without headers and with these.
    #[allow(dead_code)]
    pub headers: Vec<(&'static str, String)>,
}

/// `count` notifications of the scenario, each event with an id of its own.
pub fn messages(count: usize) -> Vec<Message> {
    Scenario::new(7, 50)
        .take(count)
        .enumerate()
        .flat_map(|(index, m)| {
            let origin = Origin {
                source: Source::Webhook,
                received_at: SystemTime::now(),
                fishjam_id: Arc::from("bench"),
                id_seed: index as u64,
            };
            normalize_body(&m.encode_to_vec(), &origin).unwrap().events
        })
        .map(|e| {
            let mut headers = Vec::new();
            fishjam_bridge::testing::sinks::each_header(
                &e,
                "Nats-Msg-Id",
                fishjam_bridge::core::cloudevents::Mode::Off,
                "",
                |name, value| {
                    let name = HEADER_NAMES
                        .iter()
                        .find(|known| **known == name)
                        .expect("a header the bridge sends");
                    headers.push((*name, value.to_owned()));
                },
            );
            Message {
                key: e.key().to_owned(),
                json: Bytes::from(e.to_json()),
                headers,
            }
        })
        .collect()
}

const HEADER_NAMES: [&str; 8] = [
    "Content-Type",
    "Nats-Msg-Id",
    "Fishjam-Schema-Version",
    "Fishjam-Event-Type",
    "Fishjam-Room-Id",
    "Fishjam-Stream-Id",
    "Fishjam-Recording-Id",
    "Fishjam-Peer-Id",
];

/// Events per second through the bridge into the sink described by `sink`
/// (a `[[sinks]]` TOML entry), webhooks in batches of 50, each answered only
/// after the sink acknowledged it.
pub async fn bridge(sink: &str, count: usize, metrics: PrometheusHandle) -> f64 {
    let text = format!(
        // Unsigned, as the load is; without the spool, so that these figures
        // measure the pipeline alone (bench/compare runs the default).
        "[fishjam]\nid = \"bench\"\n[webhook]\nlisten = \"127.0.0.1:0\"\nallow_unsigned = true\n\
         [spool]\nenabled = false\n[admin]\nenabled = false\n{sink}"
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
