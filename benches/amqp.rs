//! Webhook ingress to RabbitMQ with publisher confirms, against a minimal
//! lapin publisher with the same settings, in one run (BENCHMARKS.md).
//!
//! `cargo bench --bench amqp` (AMQP_URL, default the local broker). Both
//! publish persistent, mandatory messages to a durable topic exchange bound
//! to one durable queue, with confirms pipelined: the raw publisher keeps a
//! sliding window of unconfirmed messages, the bridge confirms each lane batch.

mod common;

use std::collections::VecDeque;
use std::time::Instant;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use common::{bridge, messages, Message};

const EVENTS: usize = 40_000;
/// Unconfirmed messages the raw publisher keeps in flight.
const IN_FLIGHT: usize = 2_000;

fn main() {
    common::block_on(run());
}

async fn run() {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let metrics = fishjam_bridge::telemetry::install_metrics().unwrap();
    let payloads = messages(EVENTS);
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();

    let exchange = format!("bench-raw-{}", rand::random::<u32>());
    let queue = topology(&channel, &exchange).await;
    let raw = raw(&connection, &exchange, &payloads).await;
    cleanup(&channel, &exchange, &queue).await;

    let exchange = format!("bench-bridge-{}", rand::random::<u32>());
    let queue = topology(&channel, &exchange).await;
    let sink = format!("[[sinks]]\ntype = \"amqp\"\nurl = \"{url}\"\nexchange = \"{exchange}\"\n");
    let bridged = bridge(&sink, EVENTS, metrics).await;
    cleanup(&channel, &exchange, &queue).await;
    println!(
        "RabbitMQ (confirms, persistent):  raw lapin {raw:>8.0} msgs/s   bridge (webhook, batches of 50) {bridged:>8.0} events/s   ratio {:.2}",
        bridged / raw
    );
}

async fn topology(channel: &Channel, exchange: &str) -> String {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = format!("{exchange}-all");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    queue
}

async fn cleanup(channel: &Channel, exchange: &str, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

async fn raw(connection: &Connection, exchange: &str, payloads: &[Message]) -> f64 {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let cpu = common::cpu_seconds();
    let started = Instant::now();
    let mut window = VecDeque::with_capacity(IN_FLIGHT);
    for Message {
        key, json: payload, ..
    } in payloads
    {
        if window.len() == IN_FLIGHT {
            let oldest: lapin::PublisherConfirm = window.pop_front().unwrap();
            assert!(oldest.await.unwrap().is_ack());
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                format!("rooms.{key}").as_str().into(),
                options,
                payload,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .unwrap();
        window.push_back(confirm);
    }
    for confirm in window {
        assert!(confirm.await.unwrap().is_ack());
    }
    let rate = payloads.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = (common::cpu_seconds() - cpu) / payloads.len() as f64 * 1e6;
    println!("raw lapin client: {cpu:.2} µs of CPU per message");
    rate
}
