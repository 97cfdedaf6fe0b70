//! The HTTP sink against a real receiver (`tests/http/receiver.py`) that
//! checks every request with the official Standard Webhooks library: signed
//! events, each room in order, through a receiver's outage and refusals,
//! over TLS with a private CA.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::*;

/// A Standard Webhooks secret (`whsec_` and base64).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running receiver; killed when dropped.
struct Receiver {
    _process: Killed,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start(args: &[&str]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/receiver.py");
        let mut child = Command::new(crate::sdk::python_with_sdk(dir.path()))
            .arg(script)
            .args(["--secret", SECRET, "--out"])
            .arg(&out)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the receiver prints its port");
        Receiver {
            _process: Killed(child),
            port,
            out,
            _dir: dir,
        }
    }

    /// The events it took, in the order it took them.
    fn events(&self) -> Vec<Value> {
        read_events(&self.out)
            .into_iter()
            .map(|line| line["event"].clone())
            .collect()
    }

    /// The rooms of the events it took, in the order it took them.
    fn rooms(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["room_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// How many lines `<out>.<what>` has (`unverified`, `refused`).
    fn count(&self, what: &str) -> usize {
        let path = self.out.with_extension(format!("jsonl.{what}"));
        std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
    }
}

/// An HTTP sink to `receiver` (by `scheme`), whose secret is in a file.
fn http_sink(receiver: &Receiver, scheme: &str) -> Sink {
    let secret = receiver._dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    Sink::new("http")
        .set(
            "url",
            format!("{scheme}://127.0.0.1:{}/events", receiver.port),
        )
        .set("secret_file", &secret)
}

/// Starts a bridge with `sink`, its dead letters in a file.
fn start(sink: Sink) -> BridgeProcess {
    BridgeProcess::start(
        &Conf::new()
            .pipeline("dead_letter_path", "{dir}/dead-letters.jsonl")
            .sink(sink),
    )
}

/// Plays `count` notifications of `seed` and waits until the receiver has
/// every one, each room in order.
fn delivered_in_order(bridge: &BridgeProcess, receiver: &Receiver, seed: u64, count: usize) {
    play_all(&bridge.webhook_url(), seed, count, 10);
    let wanted = expected(seed, 8, count);
    wait_until("every event at the receiver, each room in order", || {
        incomplete_or_out_of_order(&wanted, &by_key(&receiver.events())).is_none()
    });
    assert_eq!(receiver.count("unverified"), 0, "every signature verifies");
}

#[test]
fn events_reach_a_receiver_signed_and_each_room_in_order() {
    let receiver = Receiver::start(&[]);
    let bridge = start(http_sink(&receiver, "http"));
    delivered_in_order(&bridge, &receiver, 71, 400);
    // One event a request: the receiver saw each id once, as webhook-id.
    let lines = read_events(&receiver.out);
    assert!(lines
        .iter()
        .all(|line| line["webhook_id"] == line["event"]["id"]));
}

#[test]
fn batches_as_arrays_reach_a_receiver_through_ten_seconds_of_503s() {
    let receiver = Receiver::start(&["--down-for", "10", "--retry-after", "1"]);
    let bridge = start(http_sink(&receiver, "http").set("batch", "array"));
    delivered_in_order(&bridge, &receiver, 72, 600);
    assert!(receiver.count("refused") > 0, "the outage was met");
    assert!(
        bridge.metrics().sum(
            "fishjam_bridge_sink_events_failed_total",
            &[("reason", "throttled")]
        ) > 0.0
    );
}

#[test]
fn a_400_sends_the_event_to_the_dead_letters_and_its_room_goes_on() {
    let receiver = Receiver::start(&["--refuse", "refused-room"]);
    let bridge = start(http_sink(&receiver, "http"));
    for room in ["before", "refused-room", "after"] {
        assert_eq!(
            post(&bridge.webhook_url(), room_created(room), None).status(),
            200
        );
    }
    wait_until("the other rooms at the receiver", || {
        receiver.events().len() == 2
    });
    assert_eq!(receiver.rooms(), ["before", "after"]);
    let letters = read_events(&bridge.dir().join("dead-letters.jsonl"));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["sink"], "http");
    assert_eq!(letters[0]["event"]["room_id"], "refused-room");
}

/// In an array the receiver refused, only the event it refuses alone is a
/// dead letter: the others of its request are taken.
#[test]
fn an_array_the_receiver_refuses_costs_only_the_event_it_refuses() {
    use fishjam_bridge::core::proto::{server_message as sm, Content, ServerMessage};
    let receiver = Receiver::start(&["--refuse", "refused-room"]);
    // One lane: the three events go in one request.
    let bridge = start(
        http_sink(&receiver, "http")
            .set("batch", "array")
            .set("lanes", 1),
    );
    let created = |room: &str| ServerMessage {
        content: Some(Content::RoomCreated(sm::RoomCreated {
            room_id: room.to_owned(),
        })),
    };
    let body = batch(vec![
        created("before"),
        created("refused-room"),
        created("after"),
    ]);
    assert_eq!(post(&bridge.webhook_url(), body, None).status(), 200);
    assert_eq!(receiver.rooms(), ["before", "after"]);
    let letters = read_events(&bridge.dir().join("dead-letters.jsonl"));
    let refused: Vec<&Value> = letters.iter().map(|l| &l["event"]["room_id"]).collect();
    assert_eq!(refused, ["refused-room"]);
}

#[test]
fn a_receiver_behind_a_private_ca_is_reached_over_tls() {
    let certificates = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certificates.path());
    let receiver = Receiver::start(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let bridge = start(http_sink(&receiver, "https").set("ca_file", &ca));
    delivered_in_order(&bridge, &receiver, 73, 100);
}
