//! The notifier source against the simulator's notifier over real sockets:
//! events in order, a refused token stops the bridge at once, and the bridge
//! reconnects after every drop without losing what was sent while it was
//! connected.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::simulator::scenario::Scenario;
use prost::Message;
use serde_json::Value;

use crate::support::*;

pub const TOKEN: &str = "notifier-test-token";

/// `simulate` serving the notifier on `port`, playing `count` notifications
/// once a client subscribed.
pub fn simulator(port: u16, seed: u64, count: usize) -> Killed {
    simulator_with(port, seed, count, &[])
}

/// The same, with more `simulate` arguments.
fn simulator_with(port: u16, seed: u64, count: usize, extra: &[&str]) -> Killed {
    let (seed, count) = (seed.to_string(), count.to_string());
    let mut args = vec!["--rate", "0", "--seed", &seed, "--count", &count];
    args.extend_from_slice(extra);
    simulate(port, &args, Stdio::null())
}

/// `simulate` serving on `port` with `TOKEN`, six rooms, holding its play
/// until a client subscribed; `args` says the rest.
pub fn simulate(port: u16, args: &[&str], stdout: Stdio) -> Killed {
    let mut all = vec![
        "--management-token",
        TOKEN,
        "--wait-for-subscribers",
        "1",
        "--rooms",
        "6",
    ];
    all.extend_from_slice(args);
    simulated_fishjam(port, &all, stdout)
}

/// Reads the simulator's closing report (one JSON line on stdout): the play
/// is over and every webhook was answered.
fn play_report(fishjam: &mut Killed) -> Value {
    use std::io::BufRead;
    let stdout = fishjam.0.stdout.as_mut().expect("stdout is piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Every room's events appear in `stored` in the order `wanted` has them,
/// with none invented; some may be missing.
fn in_order_within_rooms(wanted: &ByKey, stored: &ByKey) {
    for (key, events) in stored {
        let mut expected = wanted[key].iter();
        for event in events {
            assert!(
                expected.any(|e| e == event),
                "room {key}: {event:?} is out of order or unknown"
            );
        }
    }
}

/// A bridge whose notifier reads the simulator on `port` with `token`; no
/// sink yet.
pub fn notifier_source(port: u16, token: &str) -> Conf {
    Conf::new()
        .fishjam_at(port, token)
        .notifier("enabled", true)
        // Ready means subscribed here: the tests start sending then.
        .notifier("required_for_readiness", true)
        .notifier("backoff_initial", "50ms")
        .notifier("backoff_max", "500ms")
}

/// `notifier_source`, its events in `{dir}/events.jsonl`.
pub fn notifier_config(port: u16, token: &str) -> Conf {
    notifier_source(port, token).sink(Sink::file("{dir}/events.jsonl"))
}

/// The scenario's notifications as events, in order.
pub fn scenario(seed: u64, count: usize) -> Vec<Value> {
    let origin = Origin {
        source: Source::Notifier,
        received_at: SystemTime::now(),
        fishjam_id: "x".into(),
        id_seed: 0,
    };
    Scenario::new(seed, 6)
        .take(count)
        .flat_map(|m| normalize_body(&m.encode_to_vec(), &origin).unwrap().events)
        .map(|event| serde_json::from_slice(&event.to_json()).unwrap())
        .collect()
}

fn delivered(bridge: &BridgeProcess) -> Vec<Value> {
    read_events(&bridge.dir().join("events.jsonl"))
}

#[test]
fn notifications_arrive_in_order_from_the_socket() {
    let port = free_port();
    let mut fishjam = simulator(port, 81, 400);
    let bridge = BridgeProcess::start(&notifier_config(port, TOKEN));
    wait_until("400 events", || delivered(&bridge).len() >= 400);
    let events = delivered(&bridge);
    assert_eq!(events.len(), 400);
    let validator = schema();
    for event in &events {
        assert_valid(&validator, event);
        assert_eq!(event["source"], "notifier");
    }
    assert!(
        by_key(&events) == by_key(&scenario(81, 400)),
        "every room's events, in the order Fishjam sent them"
    );
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_state", &[("state", "subscribed")]),
        1.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_connects_total", &[]),
        1.0
    );
    // When the session began, for `top`: within the last minute.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = metrics.sum(
        "fishjam_bridge_notifier_session_start_timestamp_seconds",
        &[],
    );
    assert!(started <= now && now - started < 60.0, "{started} {now}");
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

#[test]
fn a_refused_token_stops_the_bridge_at_once() {
    let port = free_port();
    let mut fishjam = simulator(port, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(
        &path,
        notifier_config(port, "wrong-token").text_in(dir.path()),
    )
    .unwrap();
    let started = Instant::now();
    let output = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("STATE_DIRECTORY", dir.path())
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("fishjam.management_token"), "{stderr}");
    assert!(
        !stderr.contains("wrong-token"),
        "the token is never printed"
    );
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

#[test]
fn the_bridge_reconnects_after_every_drop_and_loses_nothing_sent() {
    let port = free_port();
    let mut fishjam = simulator(port, 100, 100);
    // Each simulator process is a Fishjam that restarted empty: without this,
    // the bridge would rightly publish the old rooms' deletion after each
    // reconnect. This test is about what the socket delivers.
    let bridge = BridgeProcess::start(&notifier_config(port, TOKEN).notifier("reconcile", false));
    let mut wanted = Vec::new();
    for round in 0..5u64 {
        wanted.extend(scenario(100 + round, 100));
        let expected_len = 100 * (round as usize + 1);
        wait_until("this round's events", || {
            delivered(&bridge).len() >= expected_len
        });
        // Drop the connection the hard way, then serve again on the same port.
        let _ = fishjam.kill();
        let _ = fishjam.wait();
        if round < 4 {
            fishjam = simulator(port, 101 + round, 100);
        }
    }
    let events = delivered(&bridge);
    assert_eq!(events.len(), 500, "each event once");
    assert!(
        by_key(&events) == by_key(&wanted),
        "every room's events, in order"
    );
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_connects_total", &[]),
        5.0
    );
    assert!(metrics.sum("fishjam_bridge_notifier_disconnects_total", &[]) >= 4.0);
}

#[test]
fn with_both_sources_each_notification_is_published_once() {
    let fishjam_port = free_port();
    let webhook_port = free_port();
    // The simulator delivers every notification both ways, once the
    // bridge's notifier has subscribed.
    let webhook_url = format!("http://127.0.0.1:{webhook_port}/webhook");
    let mut fishjam = simulator_with(fishjam_port, 91, 300, &["--webhook-url", &webhook_url]);
    let conf =
        notifier_config(fishjam_port, TOKEN).webhook("listen", format!("127.0.0.1:{webhook_port}"));
    let bridge = BridgeProcess::start(&conf);
    wait_until("every notification seen twice", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_duplicates_dropped_total", &[])
            >= 300.0
    });
    let events = delivered(&bridge);
    assert_eq!(events.len(), 300, "each notification once");
    assert!(by_key(&events) == by_key(&scenario(91, 300)));
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

#[test]
fn a_half_open_connection_is_found_within_the_idle_timeout() {
    let port = free_port();
    let mut fishjam = simulator_with(port, 95, 100, &["--go-silent-after", "50"]);
    let conf = notifier_config(port, TOKEN)
        .notifier("ping_interval", "200ms")
        .notifier("idle_timeout", "1s");
    let bridge = BridgeProcess::start(&conf);
    let started = Instant::now();
    wait_until("the silent connection given up", || {
        bridge.metrics().sum(
            "fishjam_bridge_notifier_disconnects_total",
            &[("reason", "silent")],
        ) >= 1.0
    });
    // Found after about the idle timeout, not after TCP's own timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // After the reconnect, the reconciliation may add what the silence hid.
    let heard = delivered(&bridge)
        .into_iter()
        .filter(|e| e["source"] == "notifier")
        .count();
    assert_eq!(heard, 50, "what came before the silence");
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

#[test]
fn fishjam_down_at_start_up_then_up() {
    let port = free_port();
    // Nothing listens on the port yet: not ready, asking again.
    let bridge = BridgeProcess::spawn(&notifier_config(port, TOKEN), Stdio::null(), &[]);
    wait_until("the bridge reporting Fishjam unreachable", || {
        bridge
            .logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| line["message"] == "Fishjam unreachable; not ready, asking again")
    });
    assert!(!bridge.is_ready());
    let mut fishjam = simulator(port, 97, 60);
    wait_until("the bridge ready", || bridge.is_ready());
    wait_until("the events", || delivered(&bridge).len() >= 60);
    assert!(by_key(&delivered(&bridge)) == by_key(&scenario(97, 60)));
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

/// The simulated Fishjam's REST API, as a backend calls it.
struct Rest {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl Rest {
    fn new(port: u16) -> Rest {
        Rest {
            base: format!("http://127.0.0.1:{port}"),
            token: TOKEN.to_owned(),
            client: reqwest::blocking::Client::new(),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().unwrap();
        let status = response.status();
        let text = response.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn create_room(&self) -> String {
        let created = self.call(reqwest::Method::POST, "/room", Some(serde_json::json!({})));
        created["data"]["room"]["id"].as_str().unwrap().to_owned()
    }

    fn add_peer(&self, room: &str) -> String {
        let body = serde_json::json!({"type": "webrtc", "options": {}});
        let created = self.call(
            reqwest::Method::POST,
            &format!("/room/{room}/peer"),
            Some(body),
        );
        created["data"]["peer"]["id"].as_str().unwrap().to_owned()
    }

    fn post(&self, path: &str) {
        self.call(reqwest::Method::POST, path, None);
    }
}

/// (type, room id, peer id) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["data"]["roomId"].as_str().unwrap().to_owned(),
                e["data"]["peerId"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn changes_during_a_gap_are_published_as_reconciled_events() {
    let port = free_port();
    let _fishjam = simulator(port, 1, 0);
    let bridge = BridgeProcess::start(&notifier_config(port, TOKEN));
    let fishjam = Rest::new(port);
    let a = fishjam.create_room();
    let b = fishjam.create_room();
    let peer = fishjam.add_peer(&a);
    wait_until("the three notifications", || delivered(&bridge).len() >= 3);

    fishjam.post("/simulator/notifier/down");
    wait_until("the bridge losing the notifier", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_notifier_disconnects_total", &[])
            >= 1.0
    });
    // Changes nobody hears about.
    let c = fishjam.create_room();
    fishjam.post(&format!("/simulator/room/{a}/peer/{peer}/connect"));
    fishjam.call(reqwest::Method::DELETE, &format!("/room/{b}"), None);
    fishjam.post("/simulator/notifier/up");

    wait_until("the reconciled events", || delivered(&bridge).len() >= 6);
    let events = delivered(&bridge);
    let heard: Vec<_> = events
        .iter()
        .filter(|e| e["source"] == "notifier")
        .cloned()
        .collect();
    let reconciled: Vec<_> = events
        .iter()
        .filter(|e| e["source"] == "reconciled")
        .cloned()
        .collect();
    let own = |t: &str, room: &str, peer: Option<&str>| {
        (t.to_owned(), room.to_owned(), peer.map(str::to_owned))
    };
    // Rooms publish on parallel lanes: order holds within a room only.
    let room_a: Vec<_> = summary(&heard).into_iter().filter(|e| e.1 == a).collect();
    assert_eq!(
        room_a,
        [
            own("roomCreated", &a, None),
            own("peerAdded", &a, Some(&peer))
        ]
    );
    assert!(summary(&heard).contains(&own("roomCreated", &b, None)));
    assert_eq!(heard.len(), 3);
    let mut got = summary(&reconciled);
    got.sort();
    let mut wanted = vec![
        own("peerConnected", &a, Some(&peer)),
        own("roomCreated", &c, None),
        own("roomDeleted", &b, None),
    ];
    wanted.sort();
    assert_eq!(got, wanted, "exactly the changes made during the gap");
    let connected = reconciled
        .iter()
        .find(|e| e["type"] == "peerConnected")
        .unwrap();
    assert_eq!(connected["data"]["peerType"], "webrtc");
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum("fishjam_bridge_reconciled_events_total", &[]),
        3.0
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_reconciliations_total", &[("result", "ok")]),
        2.0,
        "at start-up (learning) and after the reconnect"
    );
    assert_eq!(
        metrics.sum("fishjam_bridge_notifier_gap_seconds_count", &[]),
        2.0
    );
    // Nothing more arrives: the socket did not replay, and what the
    // reconciliation published is what the bridge knows.
    assert_eq!(delivered(&bridge).len(), 6);
}

#[test]
fn a_token_revoked_while_running_is_retried_at_the_cap_never_spun() {
    let port = free_port();
    let _fishjam = simulator(port, 1, 0);
    let bridge = BridgeProcess::start(&notifier_config(port, TOKEN));
    let mut fishjam = Rest::new(port);
    let client = reqwest::blocking::Client::new();
    let replace = |with: &str, token: &str| {
        let response = client
            .put(format!(
                "http://127.0.0.1:{port}/simulator/management-token"
            ))
            .bearer_auth(with)
            .body(token.to_owned())
            .send()
            .unwrap();
        assert_eq!(response.status(), 204);
    };
    replace(TOKEN, "the-new-token");
    let revoked = Instant::now();
    let refusals = || {
        bridge.metrics().sum(
            "fishjam_bridge_notifier_disconnects_total",
            &[("reason", "auth_rejected")],
        )
    };
    wait_until("three refusals", || refusals() >= 3.0);
    assert!(!bridge.is_ready(), "a refused notifier is not ready");
    // Each refusal waits the cap (backoff_max = 500ms) before trying again:
    // a client that spun would have tried hundreds of times by now.
    let attempts = refusals();
    let allowed = revoked.elapsed().as_secs_f64() / 0.5 + 1.0;
    assert!(
        attempts <= allowed,
        "{attempts} attempts, at most {allowed}"
    );
    let logged = bridge
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l["level"] == "ERROR"
                && l["message"] == "notifier authentication refused; check fishjam.management_token"
        })
        .count();
    assert!(logged >= 3, "each refusal is logged as an error");

    // The token is restored: the bridge gets back in by itself.
    replace("the-new-token", TOKEN);
    fishjam.token = TOKEN.to_owned();
    wait_until("the bridge ready again", || bridge.is_ready());
    let room = fishjam.create_room();
    wait_until("a notification after the restore", || {
        delivered(&bridge)
            .iter()
            .any(|e| e["data"]["roomId"] == room.as_str())
    });
}

#[test]
fn dropped_again_and_again_the_bridge_reconnects_each_time_and_loses_nothing_sent() {
    // A drop every 0.5 s for six seconds shows what a drop every four
    // seconds for a minute does (the soak, scripts/soak-scenarios): each
    // reconnect is a first attempt, nothing sent is lost or repeated. It
    // gives twelve sessions, fewer on a loaded machine (each session has its
    // handshake and reconciliation first): `min_sessions` is the floor.
    let (rate, duration, drop_every, stable_after, min_sessions) = if soak() {
        (50, 60, "4s", "3s", 14)
    } else {
        (500, 6, "500ms", "200ms", 5)
    };
    let port = free_port();
    let (rate_arg, duration_arg) = (rate.to_string(), format!("{duration}s"));
    let mut fishjam = simulate(
        port,
        &[
            "--seed",
            "7",
            "--rate",
            &rate_arg,
            "--duration",
            &duration_arg,
            "--drop-every",
            drop_every,
        ],
        Stdio::piped(),
    );
    // A session that lasted `stable_after` resets the backoff: each
    // reconnect is a first attempt, at most backoff_initial (50 ms) away.
    let bridge =
        BridgeProcess::start(&notifier_config(port, TOKEN).notifier("stable_after", stable_after));
    let report = play_report(&mut fishjam);
    assert!(
        report["notifications"].as_u64().unwrap() >= rate * duration * 4 / 5,
        "{report}"
    );
    let stats: Value = serde_json::from_str(
        &reqwest::blocking::get(format!("http://127.0.0.1:{port}/simulator/stats"))
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let forwarded = stats["forwarded"].as_u64().unwrap() as usize;
    let sessions = stats["sessions"].as_f64().unwrap();
    // The play is over; stop the simulator so that no session starts after
    // the count was read (one may have started in between).
    let _ = fishjam.0.kill();
    let _ = fishjam.0.wait();
    let heard = || -> Vec<Value> {
        delivered(&bridge)
            .into_iter()
            .filter(|e| e["source"] == "notifier")
            .collect()
    };
    wait_until("every notification written to the bridge's sockets", || {
        heard().len() >= forwarded
    });
    let heard = heard();
    assert_eq!(
        heard.len(),
        forwarded,
        "each notification sent while connected, once"
    );
    let played = scenario(7, report["notifications"].as_u64().unwrap() as usize);
    in_order_within_rooms(&by_key(&played), &by_key(&heard));

    assert!(
        sessions >= f64::from(min_sessions),
        "dropped every {drop_every} for {duration} s: {stats}"
    );
    let metrics = bridge.metrics();
    let connects = metrics.sum("fishjam_bridge_notifier_connects_total", &[]);
    assert!(
        connects == sessions || connects == sessions + 1.0,
        "{connects} connects, {sessions} sessions"
    );
    assert!(
        metrics.sum(
            "fishjam_bridge_notifier_disconnects_total",
            &[("reason", "closed_by_server")]
        ) >= sessions - 1.0
    );
    let logs = bridge.logs.lock().unwrap();
    // Once the simulator is stopped, connection refusals back off as usual.
    let reconnects: Vec<&Value> = logs
        .iter()
        .filter(|l| l["message"] == "notifier disconnected; reconnecting")
        .filter(|l| {
            l["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("Fishjam closed the connection"))
        })
        .collect();
    assert!(reconnects.len() as f64 >= sessions - 1.0);
    for line in reconnects {
        assert_eq!(line["attempt"], 1, "the backoff was reset: {line}");
        assert!(
            line["delay_ms"].as_u64().unwrap() <= 50,
            "full jitter under the first delay: {line}"
        );
    }
}

#[test]
fn webhooks_cover_a_notifier_outage_and_nothing_is_missing() {
    let fishjam_port = free_port();
    let webhook_port = free_port();
    let webhook_url = format!("http://127.0.0.1:{webhook_port}/webhook");
    let mut fishjam = simulate(
        fishjam_port,
        &[
            "--seed",
            "93",
            "--rate",
            "300",
            "--count",
            "1200",
            "--webhook-url",
            &webhook_url,
            "--retries",
            "20",
        ],
        Stdio::piped(),
    );
    let conf =
        notifier_config(fishjam_port, TOKEN).webhook("listen", format!("127.0.0.1:{webhook_port}"));
    let bridge = BridgeProcess::start(&conf);
    let outside = Rest::new(fishjam_port);
    wait_until("some notifications both ways", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_duplicates_dropped_total", &[])
            >= 100.0
    });
    outside.post("/simulator/notifier/down");
    let report = play_report(&mut fishjam);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    // A webhook's copy of what the notifier delivered first is answered at
    // once; the notifier's own may still be on its way to the sink.
    wait_until("every notification", || delivered(&bridge).len() >= 1200);
    let events = delivered(&bridge);
    assert_eq!(events.len(), 1200, "each notification once");
    assert!(
        by_key(&events) == by_key(&scenario(93, 1200)),
        "every room complete, in order"
    );
    assert!(
        bridge.metrics().sum(
            "fishjam_bridge_events_received_total",
            &[("source", "notifier")]
        ) < 1200.0,
        "the notifier missed part of the play"
    );

    // Back up: the webhooks told the bridge everything, so the
    // reconciliation finds nothing to add.
    outside.post("/simulator/notifier/up");
    wait_until("the reconciliation after the outage", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_reconciliations_total", &[("result", "ok")])
            >= 2.0
    });
    assert_eq!(
        bridge
            .metrics()
            .sum("fishjam_bridge_reconciled_events_total", &[]),
        0.0
    );
    assert_eq!(delivered(&bridge).len(), 1200);
}

#[test]
fn a_fishjam_behind_a_private_ca_is_trusted_through_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(dir.path());
    let port = free_port();
    let _fishjam = simulator_with(
        port,
        61,
        50,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let conf =
        notifier_config(port, TOKEN).set("fishjam", "id", format!("https://127.0.0.1:{port}"));

    // The platform's roots do not know the CA: never ready, and the logs
    // say why.
    let untrusting = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    wait_until("the refused certificate in the logs", || {
        untrusting.logged("UnknownIssuer")
    });
    assert!(!untrusting.is_ready());
    drop(untrusting);

    let bridge = BridgeProcess::start(&conf.notifier("ca_file", &ca));
    wait_until("the play over wss", || delivered(&bridge).len() >= 50);
    assert!(by_key(&delivered(&bridge)) == by_key(&scenario(61, 50)));
}

/// A notifier that cannot reach Fishjam does not take webhook ingress with
/// it: `/readyz` stays 200 (webhooks can be taken), and `/readyz` and
/// `/status` show the notifier as not subscribed. (It used to be 503 even with
/// `required_for_readiness = false`, which was read only at registration.)
#[test]
fn a_notifier_that_is_down_leaves_the_webhook_ready() {
    let port = free_port(); // nothing listens: Fishjam is unreachable
    let conf = notifier_config(port, TOKEN).unset("notifier", "required_for_readiness");
    let bridge = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    wait_until("ready without the notifier", || bridge.is_ready());
    let status: Value = serde_json::from_str(
        &reqwest::blocking::get(format!("http://{}/status", bridge.admin))
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["notifier"], false, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(
        post(&bridge.webhook_url(), room_created("r"), None).status(),
        200
    );
}
