//! Webhook ingress to Kafka (acks=all, idempotent), against a minimal
//! rdkafka producer with the same settings and the same broker, in one run
//! (BENCHMARKS.md).
//!
//! `cargo bench --bench kafka` with a broker at KAFKA_BOOTSTRAP (default
//! 127.0.0.1:9092), e.g. tansu:
//! `tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/`

mod common;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use common::{bridge, messages, Message};

const EVENTS: usize = 200_000;

fn main() {
    common::block_on(run());
}

async fn run() {
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let metrics = fishjam_bridge::telemetry::install_metrics().unwrap();
    let payloads = messages(EVENTS);

    let topic = format!("bench-raw-{}", rand::random::<u32>());
    create_topic(&bootstrap, &topic).await;
    let raw = raw(&bootstrap, &topic, &payloads).await;

    let topic = format!("bench-bridge-{}", rand::random::<u32>());
    create_topic(&bootstrap, &topic).await;
    let sink = format!(
        "[[sinks]]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n"
    );
    let bridged = bridge(&sink, EVENTS, metrics).await;
    println!(
        "Kafka (acks=all, idempotent):  raw rdkafka {raw:>9.0} msgs/s   bridge (webhook, batches of 50) {bridged:>9.0} events/s   ratio {:.2}",
        bridged / raw
    );
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for result in created {
        result.unwrap();
    }
}

/// The same producer settings as the sink: every record sent, then every
/// delivery report awaited.
async fn raw(bootstrap: &str, topic: &str, payloads: &[Message]) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "2")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .unwrap();
    let cpu = common::cpu_seconds();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(payloads.len());
    for Message {
        key, json: payload, ..
    } in payloads
    {
        let mut record = FutureRecord::to(topic)
            .key(key.as_str())
            .payload(&payload[..]);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => panic!("{error}"),
            }
        }
    }
    for delivery in deliveries {
        delivery.await.unwrap().unwrap();
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = (common::cpu_seconds() - cpu) / payloads.len() as f64 * 1e6;
    println!("raw rdkafka client: {cpu:.2} µs of CPU per message");
    producer.flush(Duration::from_secs(10)).unwrap();
    rate
}
