//! The NATS sink against a real nats-server: core subjects keyed by room,
//! headers, escaping, and JetStream storing every event once through a server
//! restart. `NATS_URL` (default nats://127.0.0.1:4222) is the shared server;
//! the restart test runs a private nats-server of its own.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::support::*;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

pub async fn client(url: &str) -> async_nats::Client {
    connect(async_nats::ConnectOptions::new(), url).await
}

async fn connect(options: async_nats::ConnectOptions, url: &str) -> async_nats::Client {
    options.connect(url).await.unwrap_or_else(|e| {
        panic!("cannot reach NATS at {url} ({e}); start it with `bash scripts/services` or set NATS_URL")
    })
}

/// A client subscribed to `subject`, the subscription in place on the server.
pub async fn subscribed(
    url: &str,
    subject: String,
) -> (async_nats::Client, async_nats::Subscriber) {
    subscribed_with(async_nats::ConnectOptions::new(), url, subject).await
}

pub async fn subscribed_with(
    options: async_nats::ConnectOptions,
    url: &str,
    subject: String,
) -> (async_nats::Client, async_nats::Subscriber) {
    let client = connect(options, url).await;
    let subscription = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    (client, subscription)
}

/// The subscription's next message, within `WAIT`.
fn next_message(
    rt: &tokio::runtime::Runtime,
    subscription: &mut async_nats::Subscriber,
    what: &str,
) -> async_nats::Message {
    rt.block_on(async {
        tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap()
    })
}

/// A NATS sink publishing to `url` on `subject`.
pub fn nats_sink(url: &str, subject: &str) -> Sink {
    Sink::new("nats")
        .set("url", url)
        .set("subject", subject)
        .set("timeout", "2s")
}

/// `sink` publishing into the JetStream stream `stream`, stored in files.
pub fn jetstream(sink: Sink, stream: &str) -> Sink {
    sink.set("mode", "jetstream")
        .set_in("stream", "name", stream)
        .set_in("stream", "storage", "file")
}

#[test]
fn core_subscribers_see_every_event_once_in_room_order() {
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("it");
    let subscriber = rt.block_on(async { subscribed(&nats_url(), format!("{prefix}.>")).await });
    let (_client, mut subscription) = subscriber;
    let bridge = BridgeProcess::start(&Conf::new().sink(nats_sink(
        &nats_url(),
        &format!("{prefix}.{{kind}}.{{key}}.{{type}}"),
    )));
    play_all(&bridge.webhook_url(), 21, 600, 10);

    let messages = rt.block_on(async {
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while messages.len() < 600 {
            let message = tokio::time::timeout_at(deadline, subscription.next())
                .await
                .expect("every event reaches the subscriber")
                .unwrap();
            messages.push(message);
        }
        messages
    });
    let validator = schema();
    let mut ids = HashSet::new();
    let mut by_key: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for message in &messages {
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_valid(&validator, &event);
        let headers = message.headers.as_ref().expect("messages carry headers");
        let id = event["id"].as_str().unwrap();
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap()
                .as_str(),
            id
        );
        let key_header = match event["type"].as_str().unwrap() {
            t if t.starts_with("streamer") || t.starts_with("viewer") => "Fishjam-Stream-Id",
            "recordingStatusChanged" => "Fishjam-Recording-Id",
            _ => "Fishjam-Room-Id",
        };
        assert_eq!(
            headers.get(key_header).unwrap().as_str(),
            event["key"].as_str().unwrap()
        );
        assert_eq!(
            headers.get("Content-Type").unwrap().as_str(),
            "application/json"
        );
        assert_eq!(
            headers.get("Fishjam-Event-Type").unwrap().as_str(),
            event["type"].as_str().unwrap()
        );
        let key = event["key"].as_str().unwrap();
        let kind = match event["type"].as_str().unwrap() {
            t if t.starts_with("streamer") || t.starts_with("viewer") => "streams",
            "recordingStatusChanged" => "recordings",
            _ => "rooms",
        };
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.{kind}.{key}.{}", event["type"].as_str().unwrap())
        );
        assert!(ids.insert(id.to_owned()), "each event once");
        by_key.entry(key.to_owned()).or_default().push((
            event["type"].as_str().unwrap().to_owned(),
            event["data"].clone(),
        ));
    }
    assert_eq!(by_key, expected(21, 8, 600), "per-room order");
}

#[test]
fn a_room_id_with_dots_lands_on_its_escaped_subject() {
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("it");
    let (_client, mut subscription) = rt.block_on(async {
        let client = client(&nats_url()).await;
        let subscription = client
            .subscribe(format!("{prefix}.rooms.*.roomCreated"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        (client, subscription)
    });
    let bridge = BridgeProcess::start(
        &Conf::new().sink(
            nats_sink(&nats_url(), &format!("{prefix}.{{kind}}.{{key}}.{{type}}"))
                .set("cloudevents", true),
        ),
    );
    assert_eq!(
        post(&bridge.webhook_url(), room_created("room.with.dots"), None).status(),
        200
    );
    let message = next_message(&rt, &mut subscription, "the event reaches the server");
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.rooms.room%2Ewith%2Edots.roomCreated")
    );
    let headers = message.headers.unwrap();
    assert_eq!(
        headers.get("ce-type").unwrap().as_str(),
        "io.fishjam.roomCreated"
    );
    assert_eq!(headers.get("ce-specversion").unwrap().as_str(), "1.0");
    assert_eq!(
        headers.get("ce-subject").unwrap().as_str(),
        "rooms/room.with.dots"
    );
}

#[test]
fn structured_cloudevents_hold_the_event_and_pass_the_cloudevents_schema() {
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("it");
    let (_client, mut subscription) = rt.block_on(subscribed(&nats_url(), format!("{prefix}.>")));
    let bridge = BridgeProcess::start(
        &Conf::new().sink(
            nats_sink(&nats_url(), &format!("{prefix}.{{kind}}.{{key}}.{{type}}"))
                .set("cloudevents", "structured"),
        ),
    );
    let cloudevents = validator(
        &serde_json::from_str(include_str!("../cloudevents/cloudevents.schema.json")).unwrap(),
    );
    let events = schema();
    let published = published_schema();
    let notifications: Vec<_> = fishjam_bridge::simulator::scenario::Scenario::new(5, 2)
        .take(6)
        .collect();
    assert_eq!(
        post(&bridge.webhook_url(), batch(notifications), None).status(),
        200
    );
    for _ in 0..6 {
        let message = next_message(&rt, &mut subscription, "a structured message arrives");
        let headers = message.headers.as_ref().unwrap();
        assert_eq!(
            headers.get("Content-Type").unwrap().as_str(),
            "application/cloudevents+json"
        );
        assert_eq!(headers.get("Fishjam-Schema-Version").unwrap().as_str(), "1");
        assert!(
            headers.get("ce-id").is_none(),
            "structured mode has no ce- headers"
        );
        let cloudevent: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_valid(&cloudevents, &cloudevent);
        // The spec's naming rule for attributes, which its schema leaves out.
        for name in cloudevent.as_object().unwrap().keys() {
            assert!(
                name == "data"
                    || (name.len() <= 20
                        && name
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())),
                "{name} is not a CloudEvents attribute name"
            );
        }
        let event = &cloudevent["data"];
        assert_valid(&events, event);
        assert_eq!(cloudevent["id"], event["id"]);
        assert_eq!(
            cloudevent["type"],
            format!("io.fishjam.{}", event["type"].as_str().unwrap())
        );
        assert_eq!(cloudevent["partitionkey"], event["key"]);
        assert_eq!(cloudevent["datacontenttype"], "application/json");
        assert_eq!(cloudevent["dataschema"], published["$id"]);
        assert_eq!(
            cloudevent["source"],
            "https://fishjam.io/api/v1/connect/test-fishjam"
        );
    }
}

/// A nats-server of the test's own, so it can be restarted.
pub struct PrivateNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, dir.path());
        PrivateNats { child, port, dir }
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (Debian package nats-server)");
        wait_until("nats-server listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        child
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.port, self.dir.path());
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, until `resume` (SIGCONT).
    pub fn pause(&self) {
        succeed(Command::new("kill").args(["-STOP", &self.child.id().to_string()]));
    }

    pub fn resume(&self) {
        succeed(Command::new("kill").args(["-CONT", &self.child.id().to_string()]));
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn jetstream_stores_every_event_once_through_a_server_restart() {
    let stream = unique("S");
    every_event_through_a_server_restart(|sink| jetstream(sink, &stream), &stream, None);
}

#[test]
fn core_nats_delivers_every_acknowledged_event_through_a_server_restart() {
    // A stream the test creates keeps what the server took, so what the
    // bridge published while no subscriber was back yet is counted too.
    let stream = unique("S");
    every_event_through_a_server_restart(|sink| sink, &stream, Some(&stream));
}

/// Every event in `stream`, in stream order.
pub fn stored(nats: &str, stream: &str) -> Vec<Value> {
    stored_with(async_nats::ConnectOptions::new(), nats, stream)
}

/// As `stored`, connecting with `options`.
fn stored_with(options: async_nats::ConnectOptions, nats: &str, stream: &str) -> Vec<Value> {
    runtime().block_on(async {
        let context = async_nats::jetstream::new(connect(options, nats).await);
        let mut stream = context.get_stream(stream).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut events = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                events.push(serde_json::from_slice::<Value>(&message.payload).unwrap());
            }
        }
        assert_eq!(events.len() as u64, state.messages);
        events
    })
}

/// Webhook load into a bridge whose NATS server is stopped and started
/// again; afterwards the stream holds every event once, each room in order.
/// `sink` makes the bridge's sink what the test wants of it. With `create`,
/// the test creates the stream (core NATS publishes into it).
fn every_event_through_a_server_restart(
    sink: impl FnOnce(Sink) -> Sink,
    stream: &str,
    create: Option<&str>,
) {
    let mut server = PrivateNats::start();
    let prefix = unique("rs");
    let rt = runtime();
    if let Some(name) = create {
        rt.block_on(async {
            let context = async_nats::jetstream::new(client(&server.url()).await);
            context
                .create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: vec![format!("{prefix}.>")],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .unwrap();
        });
    }
    let subject = format!("{prefix}.{{kind}}.{{key}}.{{type}}");
    // Without the spool (tests/it/faults.rs has it): the outage shows as
    // 503s, which the simulator answers by sending again.
    let conf = Conf::new()
        .webhook("ack_timeout", "1s")
        .sink(sink(nats_sink(&server.url(), &subject)))
        .without_spool();
    let bridge = BridgeProcess::start(&conf);
    let simulator = webhook_simulator(
        &bridge.webhook_url(),
        31,
        3000,
        10,
        &["--rate", "1000", "--retries", "30"],
    );
    // Take the server away once some events are stored, and bring it back
    // once the bridge has refused a webhook it could not get acknowledged.
    wait_until("events acknowledged before the restart", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_acknowledged_total", &[])
            >= 500.0
    });
    server.stop();
    wait_until("a webhook answered 503 while NATS is down", || {
        bridge.metrics().sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "503")],
        ) >= 1.0
    });
    // Keep it down until the bridge's own publishes time out and retry:
    // those retries are what the stream must deduplicate.
    wait_until("a publish retried while NATS is down", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_retries_total", &[])
            >= 1.0
    });
    server.restart();
    let report = summary(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");

    let stored = stored(&server.url(), stream);
    // The bridge's own retries reuse the event id (Nats-Msg-Id), which the
    // stream drops.
    let ids: HashSet<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), stored.len(), "no event id is stored twice");
    // Bodies the simulator sent again after a 503 are new events (new ids).
    assert_each_room_complete_in_order(&expected(31, 8, 3000), &by_key(&stored));
}

#[test]
fn an_event_over_max_payload_is_dead_lettered_and_its_room_goes_on() {
    use fishjam_bridge::core::proto::server_message as sm;
    use fishjam_bridge::core::proto::{Content, ServerMessage};
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("dl");
    let (client, mut subscription) =
        rt.block_on(async { subscribed(&nats_url(), format!("{prefix}.>")).await });
    let max_payload = client.server_info().max_payload;
    let subject = format!("{prefix}.{{key}}.{{type}}");
    let bridge = BridgeProcess::start(
        &Conf::new()
            .pipeline("dead_letter_path", "{dir}/dead-letters.jsonl")
            .sink(nats_sink(&nats_url(), &subject)),
    );
    let message = |content| ServerMessage {
        content: Some(content),
    };
    let huge = format!("\"{}\"", "m".repeat(max_payload));
    let body = batch(vec![
        message(Content::RoomCreated(sm::RoomCreated {
            room_id: "dl-room".into(),
        })),
        message(Content::PeerMetadataUpdated(sm::PeerMetadataUpdated {
            room_id: "dl-room".into(),
            peer_id: "dl-peer".into(),
            metadata: huge,
            peer_type: 1,
        })),
        message(Content::RoomDeleted(sm::RoomDeleted {
            room_id: "dl-room".into(),
        })),
    ]);
    assert_eq!(post(&bridge.webhook_url(), body, None).status(), 200);
    // The room's other events pass the refused one, in order.
    let types: Vec<String> = rt.block_on(async {
        let mut types = Vec::new();
        while types.len() < 2 {
            let message = tokio::time::timeout(WAIT, subscription.next())
                .await
                .expect("the room's other events arrive")
                .unwrap();
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            types.push(event["type"].as_str().unwrap().to_owned());
        }
        types
    });
    assert_eq!(types, ["roomCreated", "roomDeleted"]);
    let letters = read_events(&bridge.dir().join("dead-letters.jsonl"));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["sink"], "nats");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("max_payload"),
        "{}",
        letters[0]["reason"]
    );
    assert_eq!(letters[0]["event"]["type"], "peerMetadataUpdated");
    assert_eq!(letters[0]["event"]["data"]["peerId"], "dl-peer");
    // What the person on call reads of it.
    let listed = Command::new(BIN)
        .args(["dead-letters", "list"])
        .arg(bridge.dir().join("dead-letters.jsonl"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        text.lines().next().unwrap().ends_with(": 1 entries"),
        "{text}"
    );
    assert!(
        text.contains("sink nats: 1 (peerMetadataUpdated 1)") && text.contains("max_payload"),
        "{text}"
    );
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum("fishjam_bridge_dead_letters_total", &[("sink", "nats")]),
        1.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_sink_retries_total", &[]),
        0.0,
        "a refused event is not retried"
    );
    // The connection survived: NATS never saw the oversized message.
    assert_eq!(
        metrics.sum("fishjam_bridge_sink_reconnects_total", &[]),
        0.0
    );
}

/// A TCP proxy in front of a NATS server whose client-to-server direction
/// can be cut: while `forward` is false it reads what the client sends and
/// throws it away, so the client's kernel takes every byte and the server
/// sees none.
struct SwallowingProxy {
    port: u16,
    forward: Arc<AtomicBool>,
}

impl SwallowingProxy {
    fn start(upstream: &str) -> SwallowingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forward = Arc::new(AtomicBool::new(true));
        let upstream = upstream.trim_start_matches("nats://").to_owned();
        let flag = forward.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let (mut client_read, mut server_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut server_read, mut client_write) = (server, client);
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16384];
                    while let Ok(n) = client_read.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        if flag.load(Ordering::SeqCst)
                            && server_write.write_all(&buffer[..n]).is_err()
                        {
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_read, &mut client_write);
                });
            }
        });
        SwallowingProxy { port, forward }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

#[test]
fn core_nats_is_acknowledged_by_the_server_not_by_the_kernel() {
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("it");
    let (_client, mut subscription) =
        rt.block_on(async { subscribed(&nats_url(), format!("{prefix}.>")).await });
    let proxy = SwallowingProxy::start(&nats_url());
    // Without the spool, which would take the body from the sink.
    let bridge = BridgeProcess::start(
        &Conf::new()
            .sink(nats_sink(
                &proxy.url(),
                &format!("{prefix}.{{kind}}.{{key}}.{{type}}"),
            ))
            .without_spool(),
    );
    // What the bridge writes now reaches its socket but never the server:
    // nothing may be acknowledged.
    proxy.forward.store(false, Ordering::SeqCst);
    let response = post(&bridge.webhook_url(), room_created("swallowed"), None);
    assert_eq!(
        response.status(),
        503,
        "a body the server never received was acknowledged"
    );
    // Once the path is whole again, the lane's retry delivers it.
    proxy.forward.store(true, Ordering::SeqCst);
    let message = next_message(
        &rt,
        &mut subscription,
        "the retried event reaches the server",
    );
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.rooms.swallowed.roomCreated")
    );
}

/// Posts one roomCreated through a bridge whose sink has `sink_auth` (a key
/// and its value) and checks the message a subscriber with `subscriber`
/// options got.
fn one_event_through(
    server: &ConfiguredNats,
    sink_auth: (&str, &str),
    subscriber: async_nats::ConnectOptions,
) {
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("auth");
    let (_client, mut subscription) = rt.block_on(subscribed_with(
        subscriber,
        &server.url(),
        format!("{prefix}.>"),
    ));
    let (key, value) = sink_auth;
    let subject = format!("{prefix}.{{kind}}.{{key}}.{{type}}");
    let bridge =
        BridgeProcess::start(&Conf::new().sink(nats_sink(&server.url(), &subject).set(key, value)));
    assert_eq!(
        post(&bridge.webhook_url(), room_created("authed"), None).status(),
        200
    );
    let message = next_message(&rt, &mut subscription, "the event reaches the server");
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.rooms.authed.roomCreated")
    );
}

#[test]
fn core_nats_authenticates_with_a_token_and_with_an_nkey() {
    let token = "tok-5d1e";
    let server = ConfiguredNats::start(&format!("authorization {{ token: \"{token}\" }}"));
    one_event_through(
        &server,
        ("token", token),
        async_nats::ConnectOptions::with_token(token.to_owned()),
    );

    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = ConfiguredNats::start(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ));
    one_event_through(
        &server,
        ("nkey", &seed),
        async_nats::ConnectOptions::with_nkey(seed.clone()),
    );
}

/// A nats-server configuration with JetStream in `store` and two users:
/// the bridge, with `password`, and a reader.
fn users_and_jetstream(store: &std::path::Path, password: &str) -> String {
    format!(
        "jetstream {{ store_dir: \"{}\" }}\n\
         authorization {{ users = [ {{ user: bridge, password: \"{password}\" }}, \
         {{ user: reader, password: reader-pass }} ] }}",
        store.display()
    )
}

#[test]
fn both_nats_sinks_reconnect_with_the_password_their_file_holds_now() {
    let store = tempfile::tempdir().unwrap();
    let server = ConfiguredNats::start(&users_and_jetstream(store.path(), "first-pass"));
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("nats-password");
    std::fs::write(&password_file, "first-pass\n").unwrap();
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("rotate");
    let reader = || {
        async_nats::ConnectOptions::with_user_and_password("reader".into(), "reader-pass".into())
    };
    let (_client, mut core) = rt.block_on(subscribed_with(
        reader(),
        &server.url(),
        format!("{prefix}.core.>"),
    ));
    let sink = |name: &str, subject: String| {
        nats_sink(&server.url(), &subject)
            .set("name", name)
            .set("user", "bridge")
            .set("password_file", &password_file)
    };
    let stream = unique("ROTATE");
    let conf = Conf::new()
        .sink(sink("core", format!("{prefix}.core.{{key}}")))
        .sink(jetstream(
            sink("js", format!("{prefix}.js.{{key}}")),
            &stream,
        ));
    let bridge = BridgeProcess::start(&conf);
    let mut send = |room: &str| {
        assert_eq!(
            post(&bridge.webhook_url(), room_created(room), None).status(),
            200
        );
        let message = next_message(&rt, &mut core, "the event reaches core NATS");
        assert_eq!(message.subject.as_str(), format!("{prefix}.core.{room}"));
    };
    send("before");

    // The password changes: first in the file, then on the server, which
    // drops the bridge's connections; both sinks come back with the new one.
    std::fs::write(&password_file, "second-pass\n").unwrap();
    server.reconfigure(&users_and_jetstream(store.path(), "second-pass"));
    wait_until("the server dropped the JetStream sink's connection", || {
        bridge.logged("NATS connection lost")
    });
    send("after");
    let stored = || stored_with(reader(), &server.url(), &stream);
    wait_until("both events stored by JetStream", || stored().len() == 2);
    let rooms: Vec<_> = stored().iter().map(|e| e["room_id"].clone()).collect();
    assert_eq!(rooms, ["before", "after"]);
}

#[test]
fn core_nats_with_a_wrong_token_is_not_ready_and_says_why() {
    let server = ConfiguredNats::start("authorization { token: \"right\" }");
    let bridge = BridgeProcess::spawn(
        &Conf::new().sink(nats_sink(&server.url(), "auth.{key}").set("token", "wrong")),
        Stdio::null(),
        &[],
    );
    wait_until("the sink says the server refused it", || {
        bridge.logged("Authorization Violation")
    });
    assert_eq!(
        bridge.check("sink:nats"),
        Some(false),
        "a refused sink is down"
    );
}

#[test]
fn headers_are_a_choice_per_sink() {
    let rt = runtime();
    let _context = rt.enter();
    for (choice, expected) in [("id", vec!["Nats-Msg-Id"]), ("none", vec![])] {
        let prefix = unique("hdr");
        let (_client, mut subscription) = rt.block_on(async {
            let client = client(&nats_url()).await;
            let subscription = client.subscribe(format!("{prefix}.>")).await.unwrap();
            client.flush().await.unwrap();
            (client, subscription)
        });
        let bridge = BridgeProcess::start(
            &Conf::new().sink(
                nats_sink(&nats_url(), &format!("{prefix}.{{kind}}.{{key}}.{{type}}"))
                    .set("headers", choice),
            ),
        );
        assert_eq!(
            post(&bridge.webhook_url(), room_created("h"), None).status(),
            200
        );
        let message = next_message(&rt, &mut subscription, "the event reaches the server");
        let names: Vec<String> = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter().map(|(name, _)| name.to_string()))
            .collect();
        assert_eq!(names, expected, "headers = {choice:?}");
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        if choice == "id" {
            let headers = message.headers.unwrap();
            assert_eq!(
                headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .unwrap()
                    .as_str(),
                event["id"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn core_nats_moves_to_the_next_server_when_one_goes_lame_duck() {
    let rt = runtime();
    let _context = rt.enter();
    // The first keeps its clients for a minute after going lame duck: only
    // the bridge's reading of the server's INFO can move it sooner.
    let first =
        ConfiguredNats::start("lame_duck_grace_period: \"60s\"\nlame_duck_duration: \"120s\"");
    let second = ConfiguredNats::start("");
    let prefix = unique("ldm");
    let (_a, mut on_first) = rt.block_on(subscribed(&first.url(), format!("{prefix}.>")));
    let (_b, mut on_second) = rt.block_on(subscribed(&second.url(), format!("{prefix}.>")));
    let bridge = BridgeProcess::start(&Conf::new().sink(nats_sink(
        &format!("{},{}", first.url(), second.url()),
        &format!("{prefix}.{{key}}"),
    )));
    let post_one = |n: usize| {
        assert_eq!(
            post(&bridge.webhook_url(), room_created(&format!("r{n}")), None).status(),
            200
        );
    };
    post_one(0);
    next_message(&rt, &mut on_first, "the first server gets the first event");
    first.lame_duck();
    // The server says so in an INFO; the connection that read it is retired
    // after its batch, and the next one finds the second server.
    let mut sent = 1;
    let moved = wait_for("an event on the second server", WAIT, NO_PAUSE, || {
        post_one(sent);
        sent += 1;
        let next = rt.block_on(tokio::time::timeout(
            Duration::from_millis(200),
            on_second.next(),
        ));
        match next {
            Ok(Some(message)) => Ok(message),
            _ => Err(format!("{sent} events posted, none reached it")),
        }
    });
    assert!(moved.subject.as_str().starts_with(&format!("{prefix}.r")));
    // Every event acknowledged is on one server or the other.
    let mut received = 2;
    while received < sent {
        let more = rt.block_on(tokio::time::timeout(WAIT, async {
            tokio::select! {
                m = on_first.next() => m,
                m = on_second.next() => m,
            }
        }));
        assert!(
            matches!(more, Ok(Some(_))),
            "{received} of {sent} events arrived"
        );
        received += 1;
    }
}

#[test]
fn an_existing_streams_settings_are_brought_to_the_configuration() {
    let stream = unique("U");
    let prefix = unique("up");
    // `settings` adds the stream's settings to the sink.
    let sink = |settings: fn(Sink) -> Sink| {
        let sink = nats_sink(&nats_url(), &format!("{prefix}.{{key}}"))
            .set("mode", "jetstream")
            .set_in("stream", "name", &stream);
        Conf::new().sink(settings(sink))
    };
    let rt = runtime();
    let settings = || {
        rt.block_on(async {
            let context = async_nats::jetstream::new(client(&nats_url()).await);
            let mut found = context.get_stream(&stream).await.unwrap();
            found.info().await.unwrap().config.clone()
        })
    };
    let hour = Duration::from_secs(3600);

    let mut bridge = BridgeProcess::start(&sink(|s| s.set_in("stream", "max_age", "1h")));
    assert_eq!(settings().max_age, hour);
    assert!(bridge.terminate().success());
    // The same stream, configured anew: the bridge applies the change.
    let mut bridge = BridgeProcess::start(&sink(|s| {
        s.set_in("stream", "max_age", "2h")
            .set_in("stream", "max_bytes", 1048576)
    }));
    let applied = settings();
    assert_eq!((applied.max_age, applied.max_bytes), (2 * hour, 1_048_576));
    wait_until(
        "the log says the stream was brought to the configuration",
        || bridge.logged("JetStream stream settings brought to the configuration"),
    );
    assert!(bridge.terminate().success());
    // Storage cannot change on a stream: the sink says why and stays down,
    // and the stream keeps its messages and settings.
    let bridge = BridgeProcess::spawn(
        &sink(|s| s.set_in("stream", "storage", "memory")),
        Stdio::null(),
        &[],
    );
    wait_until("the refusal logged", || {
        bridge.logged("NATS cannot change them on a stream")
    });
    assert_eq!(bridge.check("sink:nats"), Some(false));
    assert_eq!(
        settings().storage,
        async_nats::jetstream::stream::StorageType::File
    );
    rt.block_on(async {
        let context = async_nats::jetstream::new(client(&nats_url()).await);
        context.delete_stream(&stream).await.unwrap();
    });
}

/// An event over a server's max_payload is a dead letter; once a server
/// takes larger messages, `dead-letters redrive` publishes it there once,
/// with its original id, and it leaves the file.
#[test]
fn a_dead_letter_is_sent_again_once_the_limit_allows_it_and_leaves_the_file() {
    use fishjam_bridge::core::proto::server_message as sm;
    use fishjam_bridge::core::proto::{Content, ServerMessage};
    let rt = runtime();
    let _context = rt.enter();
    let small = ConfiguredNats::start("max_payload: 65536");
    let prefix = unique("rd");
    let subject = format!("{prefix}.{{key}}.{{type}}");
    let bridge = BridgeProcess::start(
        &Conf::new()
            .pipeline("dead_letter_path", "{dir}/dead-letters.jsonl")
            .sink(nats_sink(&small.url(), &subject)),
    );
    let body = ServerMessage {
        content: Some(Content::PeerMetadataUpdated(sm::PeerMetadataUpdated {
            room_id: "rd-room".into(),
            peer_id: "rd-peer".into(),
            metadata: format!("\"{}\"", "m".repeat(100_000)),
            peer_type: 1,
        })),
    };
    use prost::Message as _;
    assert_eq!(
        post(&bridge.webhook_url(), body.encode_to_vec(), None).status(),
        200
    );
    let file = bridge.dir().join("dead-letters.jsonl");
    wait_until("the event is a dead letter", || {
        read_events(&file).len() == 1
    });
    let id = read_events(&file)[0]["event"]["id"].clone();

    // A server with the limit raised, and a configuration whose sink of the
    // same name publishes there.
    let large = ConfiguredNats::start("max_payload: 1048576");
    let (client, mut subscription) =
        rt.block_on(async { subscribed(&large.url(), format!("{prefix}.>")).await });
    let config = bridge.dir().join("redrive.toml");
    let redrive_conf = Conf::new().sink(nats_sink(&large.url(), &subject));
    std::fs::write(&config, redrive_conf.to_string()).unwrap();
    let redrive = || {
        let output = Command::new(BIN)
            .args(["dead-letters", "redrive"])
            .arg(&file)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let said = redrive();
    assert!(said.contains("sink nats: 1 sent again"), "{said}");
    let message = rt
        .block_on(async { tokio::time::timeout(WAIT, subscription.next()).await })
        .expect("the dead letter arrives")
        .unwrap();
    let event: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(event["id"], id, "with its original id");
    assert_eq!(event["data"]["peerId"], "rd-peer");
    assert_eq!(
        message
            .headers
            .as_ref()
            .unwrap()
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        id.as_str().unwrap()
    );
    assert!(read_events(&file).is_empty(), "it left the file");

    // Nothing is left to send: a second redrive sends nothing, and the next
    // message on the subject is one the test publishes after it.
    let said = redrive();
    assert!(said.contains("no dead letter"), "{said}");
    rt.block_on(async {
        client
            .publish(format!("{prefix}.marker"), "after".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let next = tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next.subject.as_str(), format!("{prefix}.marker"));
    });
}

/// A subject the bridge's user may not publish to: core NATS answers
/// `-ERR 'Permissions Violation ...'` for that message alone and delivers
/// the rest of the batch. The refused event is dead-lettered and its
/// room goes on; nothing else of the batch is published again and again.
#[test]
fn a_subject_the_user_may_not_publish_to_is_dead_lettered_and_the_rest_goes_on() {
    use fishjam_bridge::core::proto::server_message as sm;
    use fishjam_bridge::core::proto::{Content, ServerMessage};
    let rt = runtime();
    let _context = rt.enter();
    let prefix = unique("perm");
    let server = ConfiguredNats::start(&format!(
        "authorization {{ users = [\n\
         {{ user: bridge, password: pw, permissions: {{ publish: {{ deny: [\"{prefix}.*.roomDeleted\"] }} }} }},\n\
         {{ user: reader, password: pw }}\n] }}"
    ));
    let (_client, mut subscription) = rt.block_on(subscribed_with(
        async_nats::ConnectOptions::with_user_and_password("reader".into(), "pw".into()),
        &server.url(),
        format!("{prefix}.>"),
    ));
    let bridge = BridgeProcess::start(
        &Conf::new()
            .pipeline("dead_letter_path", "{dir}/dead-letters.jsonl")
            .pipeline("retry_initial_backoff", "10ms")
            .pipeline("retry_max_backoff", "20ms")
            .sink(
                nats_sink(&server.url(), &format!("{prefix}.{{key}}.{{type}}"))
                    .set("user", "bridge")
                    .set("password", "pw"),
            ),
    );
    let message = |content| ServerMessage {
        content: Some(content),
    };
    let body = batch(vec![
        message(Content::RoomCreated(sm::RoomCreated {
            room_id: "p1".into(),
        })),
        message(Content::RoomDeleted(sm::RoomDeleted {
            room_id: "p1".into(),
        })),
        message(Content::RoomCreated(sm::RoomCreated {
            room_id: "p2".into(),
        })),
    ]);
    assert_eq!(post(&bridge.webhook_url(), body, None).status(), 200);
    wait_until("the refused event is dead-lettered", || {
        bridge.dir().join("dead-letters.jsonl").exists()
            && !read_events(&bridge.dir().join("dead-letters.jsonl")).is_empty()
    });
    // A last event of the first room comes after whatever its lane sent.
    assert_eq!(
        post(&bridge.webhook_url(), room_created("p1"), None).status(),
        200
    );
    let seen: Vec<String> = rt.block_on(async {
        let mut seen = Vec::new();
        loop {
            let message = tokio::time::timeout(WAIT, subscription.next())
                .await
                .expect("the room's events arrive")
                .unwrap();
            seen.push(message.subject.to_string());
            if seen
                .iter()
                .filter(|s| s.ends_with("p1.roomCreated"))
                .count()
                == 2
            {
                return seen;
            }
        }
    });
    let p2 = format!("{prefix}.p2.roomCreated");
    assert_eq!(
        seen.iter().filter(|s| **s == p2).count(),
        1,
        "each allowed event once: {seen:?}"
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    let letters = read_events(&bridge.dir().join("dead-letters.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["type"], "roomDeleted");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("Permissions Violation"),
        "{}",
        letters[0]["reason"]
    );
}
