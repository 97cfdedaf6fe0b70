//! Webhook ingress to NATS, against a minimal async-nats client with the same
//! acknowledgement settings, in one run on one machine (BENCHMARKS.md).
//!
//! `cargo bench --bench nats` (NATS_URL, default nats://127.0.0.1:4222, with
//! JetStream). The bridge runs in this process, fed by the simulator's webhook
//! client (batches of 50 over 64 connections); both share the machine with the
//! server, as the raw client does.

mod common;

use std::time::Instant;

use async_nats::jetstream;
use bytes::Bytes;

use common::{bridge, payloads};

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
    let payloads = payloads(CORE_EVENTS);
    let size = payloads.iter().map(|(_, p)| p.len()).sum::<usize>() / payloads.len();
    println!("events: JSON of the simulator's scenario, {size} bytes on average");

    let raw_core = raw_core(&url, &payloads).await;
    let raw_flushed = raw_core_flushed(&url, &payloads).await;
    let bridge_core = bridge(&sink(&url, "core", ""), CORE_EVENTS, metrics.clone()).await;
    println!(
        "core NATS:  raw client, one flush at the end {raw_core:>9.0} msgs/s   raw client, {LANES} tasks flushing every {BATCH} {raw_flushed:>9.0} msgs/s   bridge (webhook, batches of {BATCH}) {bridge_core:>9.0} events/s   ratios {:.2} and {:.2}",
        bridge_core / raw_core,
        bridge_core / raw_flushed
    );

    let raw_js = raw_jetstream(&url, &payloads[..JETSTREAM_EVENTS]).await;
    let stream = format!("BENCH{}", rand::random::<u32>());
    let extra = format!("[sinks.stream]\nname = \"{stream}\"\nstorage = \"memory\"\n");
    let bridge_js = bridge(&sink(&url, "jetstream", &extra), JETSTREAM_EVENTS, metrics).await;
    println!(
        "JetStream:  raw client {raw_js:>9.0} msgs/s   bridge (webhook, batches of 50) {bridge_js:>9.0} events/s   ratio {:.2}",
        bridge_js / raw_js
    );
    let client = async_nats::connect(&url).await.unwrap();
    let _ = jetstream::new(client).delete_stream(&stream).await;
}

/// Publish everything, then one flush: what core NATS acknowledges.
async fn raw_core(url: &str, payloads: &[(String, Bytes)]) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let started = Instant::now();
    for (key, payload) in payloads {
        client
            .publish(format!("bench.raw.{key}"), payload.clone())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    payloads.len() as f64 / started.elapsed().as_secs_f64()
}

/// Core NATS as the bridge acknowledges it: `LANES` tasks (the sink's
/// default lanes) each publish `BATCH` messages (one webhook body) and flush
/// before the next, so every message is on the server when its batch is done.
async fn raw_core_flushed(url: &str, payloads: &[(String, Bytes)]) -> f64 {
    let client = async_nats::connect(url).await.unwrap();
    let started = Instant::now();
    let share = payloads.len().div_ceil(LANES);
    let tasks: Vec<_> = payloads
        .chunks(share)
        .map(|chunk| {
            let client = client.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for batch in chunk.chunks(BATCH) {
                    for (key, payload) in batch {
                        client
                            .publish(format!("bench.raw.{key}"), payload.clone())
                            .await
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
    payloads.len() as f64 / started.elapsed().as_secs_f64()
}

/// Publish with `IN_FLIGHT` acks in flight, a sliding window, as the sink does.
async fn raw_jetstream(url: &str, payloads: &[(String, Bytes)]) -> f64 {
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
    for (key, payload) in payloads {
        if window.len() == IN_FLIGHT {
            let oldest: jetstream::context::PublishAckFuture = window.pop_front().unwrap();
            oldest.await.unwrap();
        }
        let ack = context
            .publish(format!("{name}.{key}"), payload.clone())
            .await
            .unwrap();
        window.push_back(ack);
    }
    for ack in window {
        ack.await.unwrap();
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    let _ = context.delete_stream(&name).await;
    rate
}

fn sink(url: &str, mode: &str, extra: &str) -> String {
    let prefix = format!("bench{}", rand::random::<u32>());
    format!(
        "[[sinks]]\ntype = \"nats\"\nurl = \"{url}\"\nmode = \"{mode}\"\nsubject = \"{prefix}.{{kind}}.{{key}}.{{type}}\"\n{extra}"
    )
}
