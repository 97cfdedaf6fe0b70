//! Webhook ingress against the real binary: the simulator posts signed
//! single and batched bodies, events land once and in order in a file sink,
//! bad requests get their status and a metric, and a sink that does not
//! acknowledge turns the answer into 503.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::core::proto::server_message as sm;
use fishjam_bridge::core::proto::{Content, ServerMessage};
use fishjam_bridge::core::signature;
use fishjam_bridge::simulator::scenario::Scenario;
use prost::Message;
use serde_json::Value;

use crate::support::*;

const SECRET: &str = "whsec-test-7f3a";

fn file_sink() -> String {
    "[[sinks]]\ntype = \"file\"\npath = \"{dir}/events.jsonl\"\n".to_owned()
}

fn with_secret(extra: &str) -> String {
    config(&format!("{extra}\n{}", file_sink())).replace(
        "[webhook]\n",
        &format!("[webhook]\nsecret = \"{SECRET}\"\n"),
    )
}

pub fn post(url: &str, body: Vec<u8>, secret: Option<&str>) -> reqwest::blocking::Response {
    let mut request = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/x-protobuf");
    if let Some(secret) = secret {
        request = request.header(signature::HEADER, signature::sign(secret.as_bytes(), &body));
    }
    request.body(body).send().expect("the bridge answers")
}

pub fn room_created(room_id: &str) -> Vec<u8> {
    ServerMessage {
        content: Some(Content::RoomCreated(sm::RoomCreated {
            room_id: room_id.to_owned(),
        })),
    }
    .encode_to_vec()
}

/// Per key, the (type, data) the scenario must produce, in order.
pub fn expected(seed: u64, rooms: usize, count: usize) -> BTreeMap<String, Vec<(String, Value)>> {
    let origin = Origin {
        source: Source::Webhook,
        received_at: SystemTime::now(),
        fishjam_id: Arc::from("x"),
        id_seed: 0,
    };
    let mut by_key: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for message in Scenario::new(seed, rooms).take(count) {
        for event in normalize_body(&message.encode_to_vec(), &origin)
            .unwrap()
            .events
        {
            let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
            by_key.entry(event.key().to_owned()).or_default().push((
                json["type"].as_str().unwrap().to_owned(),
                json["data"].clone(),
            ));
        }
    }
    by_key
}

fn simulate(url: &str, seed: u64, count: usize, batch: usize) -> Value {
    let output = Command::new(BIN)
        .args(["simulate", "--webhook-url", url, "--webhook-secret", SECRET])
        .args(["--rate", "0", "--rooms", "8", "--concurrency", "4"])
        .args(["--seed", &seed.to_string(), "--count", &count.to_string()])
        .args(["--batch", &batch.to_string()])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("simulate prints a JSON summary")
}

#[test]
fn signed_single_and_batched_webhooks_arrive_once_in_order() {
    let bridge = BridgeProcess::start(&with_secret(""));
    let single = simulate(&bridge.webhook_url(), 11, 400, 1);
    let batched = simulate(&bridge.webhook_url(), 12, 600, 25);
    for summary in [&single, &batched] {
        assert_eq!(summary["webhook_bodies_failed"], 0, "{summary}");
    }
    assert!(
        batched["webhook_bodies_ok"].as_u64().unwrap() < 600,
        "bodies were batched"
    );

    let path = bridge.dir().join("events.jsonl");
    let events = read_events(&path);
    assert_eq!(events.len(), 1000, "every notification once");
    let validator = schema();
    let mut ids = HashSet::new();
    let mut seen: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for event in &events {
        assert_valid(&validator, event);
        assert_eq!(event["source"], "webhook");
        assert_eq!(event["fishjam_id"], "test-fishjam");
        assert!(
            ids.insert(event["id"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        seen.entry(event["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["type"].as_str().unwrap().to_owned(),
                event["data"].clone(),
            ));
    }
    let mut wanted = expected(11, 8, 400);
    wanted.extend(expected(12, 8, 600));
    assert_eq!(seen.len(), wanted.len());
    for (key, events) in &wanted {
        assert_eq!(seen.get(key), Some(events), "events of {key} in order");
    }
}

#[test]
fn bad_requests_get_their_status_and_a_metric() {
    let bridge = BridgeProcess::start(
        &with_secret("").replace("[webhook]\n", "[webhook]\nmax_body_bytes = 1024\n"),
    );
    let url = bridge.webhook_url();
    let good = room_created("room-good");

    let wrong = post(&url, good.clone(), Some("another-secret"));
    assert_eq!(wrong.status(), 401);
    let unsigned = post(&url, good.clone(), None);
    assert_eq!(unsigned.status(), 401);
    let garbage = post(&url, vec![0x12, 0xff, 0x01], Some(SECRET));
    assert_eq!(garbage.status(), 400);
    assert!(garbage
        .text()
        .unwrap()
        .contains("not a valid fishjam.ServerMessage"));
    let oversized = post(&url, room_created(&"r".repeat(2000)), Some(SECRET));
    assert_eq!(oversized.status(), 413);
    let wrong_type = reqwest::blocking::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header(signature::HEADER, signature::sign(SECRET.as_bytes(), b"{}"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(wrong_type.status(), 415);

    // The daemon keeps serving.
    let ok = post(&url, good, Some(SECRET));
    assert_eq!(ok.status(), 200);
    wait_until("the good event in the sink", || {
        read_events(&bridge.dir().join("events.jsonl")).len() == 1
    });
    let events = read_events(&bridge.dir().join("events.jsonl"));
    assert_eq!(events[0]["room_id"], "room-good");

    let metrics = bridge.metrics();
    let requests = "fishjam_bridge_webhook_requests_total";
    assert_eq!(metrics.sum(requests, &[("status", "401")]), 2.0);
    assert_eq!(metrics.sum(requests, &[("status", "400")]), 1.0);
    assert_eq!(metrics.sum(requests, &[("status", "413")]), 1.0);
    assert_eq!(metrics.sum(requests, &[("status", "415")]), 1.0);
    assert_eq!(metrics.sum(requests, &[("status", "200")]), 1.0);
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_decode_failures_total",
            &[("source", "webhook"), ("reason", "truncated")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_sink_events_acknowledged_total",
            &[("sink", "file")]
        ),
        1.0
    );
}

#[test]
fn a_sink_that_does_not_acknowledge_gets_503_and_still_delivers() {
    // Events go to stdout, which nobody reads until later: once the pipe is
    // full, flushes block and nothing is acknowledged.
    let text = config("").replace("ack_timeout = \"2s\"", "ack_timeout = \"300ms\"");
    let mut bridge = BridgeProcess::start_with(&text, Stdio::piped(), &[]);
    let url = bridge.webhook_url();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for index in 0..20_000 {
        let room = format!("room-{index:05}-{}", "p".repeat(200));
        let response = post(&url, room_created(&room), None);
        match response.status().as_u16() {
            200 => accepted.push(room),
            503 => {
                assert!(response.headers().get("retry-after").is_some());
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(refused, 3, "an unread stdout must turn answers into 503");
    assert!(!accepted.is_empty());

    // Read stdout from now on: the backlog drains and answers are 2xx again.
    let mut stdout = bridge.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).unwrap();
        text
    });
    wait_until("a 2xx after the reader came back", || {
        post(&url, room_created("room-after"), None).status() == 200
    });
    assert!(bridge.terminate().success());
    let text = reader.join().unwrap();
    let delivered: HashSet<String> = text
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["room_id"].as_str().unwrap().to_owned()
        })
        .collect();
    for room in &accepted {
        assert!(
            delivered.contains(room),
            "an acknowledged event is delivered"
        );
    }
    assert!(delivered.contains("room-after"));
    let logs = bridge.logs.lock().unwrap();
    assert!(logs
        .iter()
        .any(|l| l["message"] == "drained: every accepted event was acknowledged"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut bridge = BridgeProcess::start(&config(&file_sink()));
    for index in 0..50 {
        let response = post(
            &bridge.webhook_url(),
            room_created(&format!("r{index}")),
            None,
        );
        assert_eq!(response.status(), 200);
    }
    let status = bridge.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(read_events(&bridge.dir().join("events.jsonl")).len(), 50);
}
