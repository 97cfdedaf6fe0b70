//! Webhook ingress to NATS, against a minimal async-nats client with the same
//! acknowledgement settings, in one run on one machine (BENCHMARKS.md).
//!
//! `cargo bench --bench nats` (NATS_URL, default nats://127.0.0.1:4222, with
//! JetStream). The bridge runs in this process, fed by the simulator's webhook
//! client (batches of 50 over 64 connections); both share the machine with the
//! server, as the raw client does.

mod common;

use std::time::Instant;

use async_nats::header::HeaderName;
use async_nats::jetstream;
use async_nats::HeaderMap;

use common::{bridge, messages, Message};

const CORE_EVENTS: usize = 300_000;
const JETSTREAM_EVENTS: usize = 60_000;
/// Publish acks in flight for the raw JetStream client: the sink's default per lane.
const IN_FLIGHT: usize = 1024;
/// Notifications per webhook body, as the bridge is fed.
const BATCH: usize = 50;
/// The core NATS sink's default lanes (pipeline.lanes).
const LANES: usize = 4;

fn main() {
    common::block_on(run());
}

async fn run() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let metrics = fishjam_bridge::telemetry::install_metrics().unwrap();
    let messages = messages(CORE_EVENTS);
    let size = messages.iter().map(|m| m.json.len()).sum::<usize>() / messages.len();
    println!("events: JSON of the simulator's scenario, {size} bytes on average");

    let raw_core = raw_core(&url, &messages).await;
    let raw_flushed = raw_core_flushed(&url, &messages, false).await;
    let raw_headers = raw_core_flushed(&url, &messages, true).await;
    let bridge_core = bridge(&sink(&url, "core", ""), CORE_EVENTS, metrics.clone()).await;
    println!(
        "core NATS:  raw client, one flush at the end {raw_core:>9.0} msgs/s   raw client, {LANES} tasks flushing every {BATCH} {raw_flushed:>9.0} msgs/s   the same with the bridge's headers {raw_headers:>9.0} msgs/s   bridge (webhook, batches of {BATCH}) {bridge_core:>9.0} events/s   ratios {:.2}, {:.2} and {:.2}",
        bridge_core / raw_core,
        bridge_core / raw_flushed,
        bridge_core / raw_headers
    );

    let raw_js = raw_jetstream(&url, &messages[..JETSTREAM_EVENTS], false).await;
    let raw_js_headers = raw_jetstream(&url, &messages[..JETSTREAM_EVENTS], true).await;
    let stream = format!("BENCH{}", rand::random::<u32>());
    let extra = format!("[sinks.stream]\nname = \"{stream}\"\nstorage = \"memory\"\n");
    let bridge_js = bridge(&sink(&url, "jetstream", &extra), JETSTREAM_EVENTS, metrics).await;
    println!(
        "JetStream:  raw client {raw_js:>9.0} msgs/s   the same with the bridge's headers (Nats-Msg-Id: the stream checks each for a duplicate) {raw_js_headers:>9.0} msgs/s   bridge (webhook, batches of 50) {bridge_js:>9.0} events/s   ratios {:.2} and {:.2}",
        bridge_js / raw_js,
        bridge_js / raw_js_headers
    );
    let client = async_nats::connect(&url).await.unwrap();
    let _ = jetstream::new(client).delete_stream(&stream).await;
}

/// The headers the bridge sends with `message`, built per message as it does.
fn headers(message: &Message) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in &message.headers {
        map.insert(HeaderName::from_static(name), value.as_str());
    }
    map
}

/// Publish everything, then one flush: what core NATS acknowledges.
async fn raw_core(url: &str, messages: &[Message]) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let started = Instant::now();
    for message in messages {
        client
            .publish(format!("bench.raw.{}", message.key), message.json.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    messages.len() as f64 / started.elapsed().as_secs_f64()
}

/// Core NATS as the bridge acknowledges it: `LANES` tasks (the sink's
/// default lanes) each publish `BATCH` messages (one webhook body) and flush
/// before the next, so every message is on the server when its batch is done;
/// with `with_headers`, each message carries the headers the bridge sends.
async fn raw_core_flushed(url: &str, messages: &[Message], with_headers: bool) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let share = messages.len().div_ceil(LANES);
    let chunks: Vec<Vec<Message>> = messages.chunks(share).map(<[Message]>::to_vec).collect();
    let cpu = common::cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let client = client.clone();
            tokio::spawn(async move {
                for batch in chunk.chunks(BATCH) {
                    for message in batch {
                        let subject = format!("bench.raw.{}", message.key);
                        if with_headers {
                            let headers = headers(message);
                            client
                                .publish_with_headers(subject, headers, message.json.clone())
                                .await
                        } else {
                            client.publish(subject, message.json.clone()).await
                        }
                        .unwrap();
                    }
                    client.flush().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rate = messages.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = (common::cpu_seconds() - cpu) / messages.len() as f64 * 1e6;
    let what = if with_headers { "with" } else { "without" };
    println!("raw core client {what} the bridge's headers: {cpu:.2} µs of CPU per message");
    rate
}

/// Publish with `IN_FLIGHT` acks in flight, a sliding window, as the sink
/// does; with `with_headers`, each message carries the bridge's headers.
async fn raw_jetstream(url: &str, messages: &[Message], with_headers: bool) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let name = format!("BENCHRAW{}", rand::random::<u32>());
    let context = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(1 << 24)
        .build(client);
    context
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let mut window = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for message in messages {
        if window.len() == IN_FLIGHT {
            let oldest: jetstream::context::PublishAckFuture = window.pop_front().unwrap();
            oldest.await.unwrap();
        }
        let subject = format!("{name}.{}", message.key);
        let ack = if with_headers {
            context
                .publish_with_headers(subject, headers(message), message.json.clone())
                .await
        } else {
            context.publish(subject, message.json.clone()).await
        }
        .unwrap();
        window.push_back(ack);
    }
    for ack in window {
        ack.await.unwrap();
    }
    let rate = messages.len() as f64 / started.elapsed().as_secs_f64();
    let info = context
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(info as usize, messages.len(), "every message stored once");
    let _ = context.delete_stream(&name).await;
    rate
}

fn sink(url: &str, mode: &str, extra: &str) -> String {
    let prefix = format!("bench{}", rand::random::<u32>());
    format!(
        "[[sinks]]\ntype = \"nats\"\nurl = \"{url}\"\nmode = \"{mode}\"\nsubject = \"{prefix}.{{kind}}.{{key}}.{{type}}\"\n{extra}"
    )
}
