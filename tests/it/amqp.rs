//! The RabbitMQ sink against a real broker: a queue bound with `#` gets every
//! event once in room order with the documented properties, bindings by room
//! and by type get exactly their share, an unroutable event is counted, and a
//! broker restart loses no acknowledged event; AMQPS with a private CA.
//! `AMQP_URL` (default amqp://guest:guest@127.0.0.1:5672/%2f) is the shared
//! broker; the restart and TLS tests run private RabbitMQ nodes of their own.

use std::collections::{BTreeMap, HashSet};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::support::*;

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

async fn channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach RabbitMQ at {url} ({e}); start it with `bash scripts/services` or set AMQP_URL")
        });
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn declare_exchange(channel: &Channel, exchange: &str) {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn bound_queue(channel: &Channel, exchange: &str, binding: &str, durable: bool) -> String {
    let name = unique("q");
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable,
                // Gone with the test's connection; auto-delete would drop it
                // as soon as the first consumer leaves.
                exclusive: !durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    name
}

/// Takes `count` messages from `queue`, failing after `WAIT`.
async fn take(channel: &Channel, queue: &str, count: usize) -> Vec<lapin::message::Delivery> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            unique("c").as_str().into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < count {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("{queue}: {} of {count} messages arrived", out.len()))
            .unwrap()
            .unwrap();
        out.push(delivery);
    }
    out
}

async fn queue_length(channel: &Channel, queue: &str) -> usize {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count() as usize
}

/// An AMQP sink publishing to `exchange` at `url`.
fn amqp_sink(url: &str, exchange: &str) -> Sink {
    Sink::new("amqp")
        .set("url", url)
        .set("exchange", exchange)
        .set("timeout", "2s")
}

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a str> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        _ => None,
    }
}

#[test]
fn bindings_get_every_event_once_in_room_order_with_properties() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _context = rt.enter();
    let exchange = unique("fishjam-it");
    let wanted = expected(41, 8, 500);
    let room = wanted
        .keys()
        .find(|key| wanted[*key][0].0 == "roomCreated")
        .unwrap()
        .clone();
    let (_connection, channel, all, by_room, by_type) = rt.block_on(async {
        let (connection, channel) = channel(&amqp_url()).await;
        declare_exchange(&channel, &exchange).await;
        let all = bound_queue(&channel, &exchange, "#", false).await;
        let by_room = bound_queue(&channel, &exchange, &format!("rooms.{room}.#"), false).await;
        let by_type = bound_queue(&channel, &exchange, "rooms.*.peerConnected", false).await;
        (connection, channel, all, by_room, by_type)
    });
    let bridge = BridgeProcess::start(&Conf::new().sink(amqp_sink(&amqp_url(), &exchange)));
    play_all(&bridge.webhook_url(), 41, 500, 10);

    let validator = schema();
    let deliveries = rt.block_on(take(&channel, &all, 500));
    let mut ids = HashSet::new();
    let mut seen: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for delivery in &deliveries {
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_valid(&validator, &event);
        let properties = &delivery.properties;
        let id = event["id"].as_str().unwrap();
        assert_eq!(
            properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(properties.message_id().as_ref().unwrap().as_str(), id);
        assert_eq!(
            properties.kind().as_ref().unwrap().as_str(),
            event["type"].as_str().unwrap()
        );
        assert_eq!(
            properties.app_id().as_ref().unwrap().as_str(),
            "fishjam-bridge"
        );
        assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
        assert!(properties.timestamp().unwrap() > 1_700_000_000);
        assert_eq!(header(delivery, "Fishjam-Event-Id"), Some(id));
        assert_eq!(
            header(delivery, "Fishjam-Peer-Id"),
            event["peer_id"].as_str()
        );
        if let Some(room_id) = event["room_id"].as_str() {
            assert_eq!(header(delivery, "Fishjam-Room-Id"), Some(room_id));
        }
        assert!(ids.insert(id.to_owned()), "each event once");
        seen.entry(event["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["type"].as_str().unwrap().to_owned(),
                event["data"].clone(),
            ));
    }
    assert_eq!(seen, wanted, "every event, in room order");

    let room_share = wanted[&room].len();
    let room_events = rt.block_on(take(&channel, &by_room, room_share));
    for delivery in &room_events {
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(event["key"].as_str(), Some(room.as_str()));
    }
    let connected = wanted
        .values()
        .flatten()
        .filter(|(kind, _)| kind == "peerConnected")
        .count();
    let connected_events = rt.block_on(take(&channel, &by_type, connected));
    for delivery in &connected_events {
        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(event["type"], "peerConnected");
    }
    rt.block_on(async {
        assert_eq!(
            queue_length(&channel, &by_room).await,
            0,
            "nothing beyond the room's share"
        );
        assert_eq!(
            queue_length(&channel, &by_type).await,
            0,
            "nothing beyond the type's share"
        );
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    });
}

#[test]
fn an_unroutable_event_is_counted() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _context = rt.enter();
    let exchange = unique("fishjam-unroutable");
    let bridge = BridgeProcess::start(&Conf::new().sink(amqp_sink(&amqp_url(), &exchange)));
    assert_eq!(
        post(&bridge.webhook_url(), room_created("nobody-listens"), None).status(),
        200
    );
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_sink_events_returned_total",
            &[("sink", "amqp")]
        ),
        1.0
    );
    rt.block_on(async {
        let (_connection, channel) = channel(&amqp_url()).await;
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    });
}

/// A RabbitMQ node of the test's own, so it can be stopped and started.
struct PrivateRabbit {
    node: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Dropped last, after the node has stopped.
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Private nodes run one at a time: an Erlang VM booting beside another and
/// the rest of the suite (8 tests at once on 2 cores) was once not listening
/// after half a minute.
static PRIVATE_NODES: Mutex<()> = Mutex::new(());

/// How long a private node may take to boot: as long as `rabbitmqctl
/// await_startup` is given below.
const BOOT: Duration = Duration::from_secs(120);

impl PrivateRabbit {
    fn start() -> PrivateRabbit {
        Self::start_with(|_| String::new())
    }

    /// `extra` returns more lines for rabbitmq.conf; it may write files into
    /// the node's directory (given), which the rabbitmq user can then read.
    fn start_with(extra: impl FnOnce(&Path) -> String) -> PrivateRabbit {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\n{}",
                extra(dir.path())
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("plugins"), "[].\n").unwrap();
        // rabbitmq-server runs as the rabbitmq user.
        Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .unwrap();
        let mut rabbit = PrivateRabbit {
            node: format!("bridge-it-{port}@localhost"),
            port,
            dir,
            child: None,
            // A test that failed holding it poisoned it; the node it ran is gone.
            _one_at_a_time: PRIVATE_NODES.lock().unwrap_or_else(|e| e.into_inner()),
        };
        rabbit.child = Some(rabbit.spawn(free_port()));
        rabbit
    }

    fn spawn(&self, dist_port: u16) -> Child {
        let dir = self.dir.path();
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server is installed (Debian package rabbitmq-server)");
        wait_until_within("the private RabbitMQ node listening", BOOT, || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        // The listener opens before the node has finished booting, and a
        // connection made in between is aborted: wait for the whole boot.
        let booted = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "await_startup", "--timeout", "120"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmqctl is installed with rabbitmq-server");
        assert!(
            booted.success(),
            "the private RabbitMQ node {} did not boot",
            self.node
        );
        child
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn stop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        let dist_port = free_port();
        self.child = Some(self.spawn(dist_port));
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_broker_restart_loses_no_acknowledged_event() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _context = rt.enter();
    let mut rabbit = PrivateRabbit::start();
    assert!(rabbit.dir().exists());
    let exchange = "fishjam";
    let queue = rt.block_on(async {
        let (_connection, channel) = channel(&rabbit.url()).await;
        declare_exchange(&channel, exchange).await;
        bound_queue(&channel, exchange, "#", true).await
    });
    // Without the spool, so that the outage shows as 503s the simulator
    // answers by sending again.
    let conf = Conf::new()
        .webhook("ack_timeout", "1s")
        .sink(amqp_sink(&rabbit.url(), exchange))
        .without_spool();
    let bridge = BridgeProcess::start(&conf);
    // The simulator plays until it is stopped, so that notifications are
    // still arriving however long the node takes to stop and boot again (a
    // fixed count once ran out before the node had stopped: no 503 came).
    let simulator = webhook_simulator(
        &bridge.webhook_url(),
        51,
        usize::MAX,
        10,
        &["--rate", "1000", "--retries", "60"],
    );
    let acknowledged = || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_acknowledged_total", &[])
    };
    wait_until("events confirmed before the restart", || {
        acknowledged() >= 300.0
    });
    rabbit.stop();
    wait_until("a webhook answered 503 while RabbitMQ is down", || {
        bridge.metrics().sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "503")],
        ) >= 1.0
    });
    rabbit.restart();
    let before = acknowledged();
    wait_until("events confirmed after the restart", || {
        acknowledged() >= before + 300.0
    });
    let report = stop_simulator(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    let played = report["notifications"].as_u64().unwrap() as usize;
    assert!(
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_reconnects_total", &[])
            >= 1.0
    );

    let stored = rt.block_on(async {
        let (_connection, channel) = channel(&rabbit.url()).await;
        let count = queue_length(&channel, &queue).await;
        take(&channel, &queue, count).await
    });
    let events: Vec<Value> = stored
        .iter()
        .map(|delivery| serde_json::from_slice(&delivery.data).unwrap())
        .collect();
    // Webhooks refused during the outage were sent again (new events), and
    // unconfirmed publishes were republished: duplicates are allowed, losses
    // and reordering are not.
    assert_each_room_complete_in_order(&expected(51, 8, played), &by_key(&events));
    println!(
        "stored {} messages for {played} notifications",
        stored.len()
    );
}

#[test]
fn amqps_with_a_private_ca_gets_every_event() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _context = rt.enter();
    let tls_port = free_port();
    let rabbit = PrivateRabbit::start_with(|dir| {
        let [ca, cert, key] = private_ca(dir);
        format!(
            "listeners.ssl.default = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            ca.display(),
            cert.display(),
            key.display()
        )
    });
    wait_until("the TLS listener open", || {
        TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    let exchange = "fishjam";
    let queue = rt.block_on(async {
        let (_connection, channel) = channel(&rabbit.url()).await;
        declare_exchange(&channel, exchange).await;
        bound_queue(&channel, exchange, "#", true).await
    });
    let ca = rabbit.dir().join("ca.pem");
    let sink = amqp_sink(
        &format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"),
        exchange,
    );
    let bridge = BridgeProcess::start(&Conf::new().sink(sink.set_in("tls", "ca_file", &ca)));
    for room in ["a", "b", "c"] {
        assert_eq!(
            post(&bridge.webhook_url(), room_created(room), None).status(),
            200
        );
    }
    let rooms: Vec<String> = rt.block_on(async {
        let (_connection, channel) = channel(&rabbit.url()).await;
        take(&channel, &queue, 3)
            .await
            .iter()
            .map(|d| serde_json::from_slice::<Value>(&d.data).unwrap()["room_id"].to_string())
            .collect()
    });
    assert_eq!(rooms, ["\"a\"", "\"b\"", "\"c\""]);
}
