//! Fault injection with the real binary, a real JetStream and the disk
//! spool: a broker down under load (3 s here, 30 s under
//! `scripts/soak-scenarios`), `kill -9` of the
//! bridge at random moments, a full spool. In each, every body the
//! simulator got a 2xx for (it sends each until it does) ends up in the
//! stream, each room's events in order; duplicates are counted. (A sink that
//! refuses one event for good is `nats::an_event_over_max_payload_...` and
//! `kafka::...dead_letter...`.)

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fishjam_bridge::core::proto::{server_message as sm, Content, ServerMessage};
use serde_json::Value;

use crate::nats::{jetstream, nats_sink, stored, PrivateNats};
use crate::support::*;

const ROOMS: usize = 8;

/// A bridge into the JetStream `stream` with a spool in `spool`.
fn spooled(nats: &str, stream: &str, spool: &Path) -> Conf {
    let subject = format!("{}.{{kind}}.{{key}}.{{type}}", unique("f"));
    Conf::new()
        .sink(jetstream(nats_sink(nats, &subject), stream))
        .spool("path", spool)
}

/// Waits until the bridge has nothing in its spool or pipeline.
fn wait_settled(bridge: &BridgeProcess) {
    let outcome = retry(WAIT, POLL, || {
        let metrics = bridge.metrics();
        let engaged = metrics.sum("fishjam_bridge_spool_engaged", &[]);
        let in_flight = metrics.sum("fishjam_bridge_pipeline_events_in_flight", &[]);
        if engaged == 0.0 && in_flight == 0.0 {
            Ok(())
        } else {
            Err((engaged, in_flight))
        }
    });
    if let Err((engaged, in_flight)) = outcome {
        let status = http_get(&format!("http://{}/status", bridge.admin));
        panic!("the spool and the pipeline are not empty: engaged {engaged}, in flight {in_flight}, status {status}");
    }
}

/// Asserts that every expected event is stored, each room in order, and
/// returns how many stored events are extra copies.
fn assert_complete(stored: &[Value], seed: u64, count: usize) -> usize {
    let ids: HashSet<&str> = stored.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        stored.len(),
        "the stream keeps each event id once"
    );
    assert_each_room_complete_in_order(&expected(seed, ROOMS, count), &by_key(stored));
    stored.len() - count
}

/// The simulator posting `count` notifications to `bridge` at 1,000 a
/// second in bodies of 10, each sent again until it gets a 2xx.
fn load(bridge: &BridgeProcess, seed: u64, count: usize) -> std::process::Child {
    let args = ["--rate", "1000", "--retries", "1000"];
    webhook_simulator(&bridge.webhook_url(), seed, count, 10, &args)
}

fn ok_answers(bridge: &BridgeProcess) -> f64 {
    bridge.metrics().sum(
        "fishjam_bridge_webhook_requests_total",
        &[("status", "200")],
    )
}

#[test]
fn a_broker_down_under_load_costs_no_acknowledged_event() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let stream = unique("FA");
    let bridge = BridgeProcess::start(&spooled(&server.url(), &stream, spool.path()));
    // What an outage shows (the spool engages, takes the webhooks, replays
    // them all in order once the broker is back) takes seconds; the soak
    // keeps the broker away for half a minute.
    let (count, rate, outage_length) = if soak() {
        (12_000, "300", Duration::from_secs(30))
    } else {
        (6_000, "1000", Duration::from_secs(3))
    };
    let seed = 41;
    let simulator = webhook_simulator(
        &bridge.webhook_url(),
        seed,
        count,
        10,
        &["--rate", rate, "--retries", "1000"],
    );
    wait_until("events stored before the outage", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_acknowledged_total", &[])
            >= 1000.0
    });
    server.stop();
    let outage = Instant::now();
    wait_until("the spool engages", || {
        bridge.metrics().sum("fishjam_bridge_spool_engaged", &[]) == 1.0
    });
    // With the broker away, webhooks are acknowledged once on disk.
    let before = ok_answers(&bridge);
    wait_until("webhooks acknowledged from the spool", || {
        ok_answers(&bridge) >= before + 100.0
    });
    assert!(
        bridge.metrics().sum(
            "fishjam_bridge_spool_bodies_total",
            &[("op", "written"), ("source", "webhook")]
        ) >= 100.0
    );
    // The outage itself is what is being tested: it lasts its length.
    std::thread::sleep(outage_length.saturating_sub(outage.elapsed()));
    server.restart();
    let report = summary(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    wait_settled(&bridge);
    let metrics = bridge.metrics();
    let written = metrics.sum(
        "fishjam_bridge_spool_bodies_total",
        &[("op", "written"), ("source", "webhook")],
    );
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_spool_bodies_total",
            &[("op", "replayed"), ("source", "webhook")]
        ),
        written,
        "every spooled body was replayed"
    );
    let duplicates = assert_complete(&stored(&server.url(), &stream), seed, count);
    eprintln!(
        "broker outage: {written} bodies spooled, {} 503s, {duplicates} duplicate events (bodies sent again after a 503)",
        metrics.sum("fishjam_bridge_webhook_requests_total", &[("status", "503")])
    );
}

/// A webhook body held for its sinks keeps its place in
/// `webhook.max_body_bytes_in_flight` until it is answered: the spool keeps
/// its bytes, to append it if it engages, so they are still in memory.
#[test]
fn a_held_webhook_body_keeps_its_bytes_in_the_budget_until_it_is_answered() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let body = room_created("held");
    let limit = body.len();
    // The body waits for the sink (the spool engages only after 50 s), and
    // the budget has room for one body of its size.
    let conf = spooled(&server.url(), &unique("FH"), spool.path())
        .spool("engage_after", "50s")
        .webhook("ack_timeout", "60s")
        .webhook("max_body_bytes", limit)
        .webhook("max_body_bytes_in_flight", limit);
    let bridge = BridgeProcess::start(&conf);
    server.stop();
    let url = bridge.webhook_url();
    let held = {
        let (url, body) = (url.clone(), body.clone());
        std::thread::spawn(move || post(&url, body, None).status().as_u16())
    };
    wait_until("the first body is held for the sink", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_pipeline_events_in_flight", &[])
            == 1.0
    });
    let refused = post(&url, room_created("hel2"), None);
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        refused.text().unwrap().contains("max_body_bytes_in_flight"),
        "refused for the budget"
    );
    server.restart();
    assert_eq!(held.join().unwrap(), 200);
    assert_eq!(
        post(&url, room_created("hel3"), None).status().as_u16(),
        200
    );
}

/// JetStream's server killed (SIGKILL) and started again, again and again,
/// under webhook load: a publish can then fail while a later one of the
/// same batch was stored. Every acknowledged notification is in the stream
/// once, each room in the order it arrived.
#[test]
fn a_jetstream_server_killed_again_and_again_keeps_every_room_in_order() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let stream = unique("FR");
    let bridge = BridgeProcess::start(&spooled(&server.url(), &stream, spool.path()));
    let (seed, count, kills) = if soak() {
        (53, 30_000, 20)
    } else {
        (53, 6_000, 4)
    };
    let simulator = load(&bridge, seed, count);
    let acknowledged = || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_acknowledged_total", &[])
    };
    let failed = || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_failed_total", &[])
    };
    for _ in 0..kills {
        let before = acknowledged();
        wait_until("events stored since the last kill", || {
            acknowledged() >= before + 300.0
        });
        let failures = failed();
        server.stop();
        wait_until("a publish fails with the server gone", || {
            failed() > failures
        });
        server.restart();
    }
    let report = summary(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    wait_settled(&bridge);
    let duplicates = assert_complete(&stored(&server.url(), &stream), seed, count);
    eprintln!(
        "{kills} server kills: {duplicates} duplicate events (bodies sent again after a 503)"
    );
}

/// The spool is on by default, in the state directory: a bridge with no
/// `[spool]` section keeps what it acknowledged while its only sink was down
/// through `kill -9`, and the next run delivers it.
#[test]
fn with_the_defaults_a_killed_bridge_delivers_what_it_acknowledged_while_its_sink_was_down() {
    let mut server = PrivateNats::start();
    let stream = unique("FD");
    let subject = format!("{}.{{kind}}.{{key}}.{{type}}", unique("d"));
    let conf = Conf::new().sink(jetstream(nats_sink(&server.url(), &subject), &stream));
    assert!(!conf.to_string().contains("[spool]"));
    let state = tempfile::tempdir().unwrap();
    let env = [("STATE_DIRECTORY", state.path().to_str().unwrap())];
    let mut bridge = BridgeProcess::start_with(&conf, std::process::Stdio::null(), &env);
    server.stop();
    let (seed, count) = (47, 600);
    let report = summary(load(&bridge, seed, count));
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    assert!(
        state.path().join("spool").is_dir(),
        "the spool is in the state directory"
    );
    bridge.child.kill().unwrap();
    bridge.child.wait().unwrap();
    server.restart();
    let bridge = BridgeProcess::start_with(&conf, std::process::Stdio::null(), &env);
    wait_until(
        "the restart replays what the killed bridge had spooled",
        || bridge.logged("replaying bodies a previous run accepted"),
    );
    wait_settled(&bridge);
    let duplicates = assert_complete(&stored(&server.url(), &stream), seed, count);
    eprintln!("default spool through kill -9: {duplicates} duplicate events");
}

#[test]
fn kill_9_at_random_moments_under_load_loses_no_acknowledged_event() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let stream = unique("FK");
    let port = free_port();
    let conf = spooled(&server.url(), &stream, spool.path())
        .webhook("listen", format!("127.0.0.1:{port}"));
    let mut bridge = BridgeProcess::start(&conf);
    let (seed, count) = (43, 9000);
    let simulator = load(&bridge, seed, count);
    let mut kills = Vec::new();
    for round in 0..4 {
        let broker_down = round == 2;
        if broker_down {
            // This kill finds bodies in the spool, not yet delivered.
            server.stop();
            wait_until("bodies spooled while the broker is down", || {
                bridge.metrics().sum(
                    "fishjam_bridge_spool_bodies_total",
                    &[("op", "written"), ("source", "webhook")],
                ) >= 50.0
            });
        } else {
            wait_until("webhooks acknowledged", || ok_answers(&bridge) >= 100.0);
        }
        // A random moment within the next 300 ms of load.
        let at = Duration::from_millis(rand::random::<u64>() % 300);
        std::thread::sleep(at);
        bridge.child.kill().unwrap();
        bridge.child.wait().unwrap();
        kills.push(at);
        bridge = BridgeProcess::spawn(&conf, std::process::Stdio::null(), &[]);
        if broker_down {
            // The spool is read before the listeners open; its log line
            // reaches the test's reader of stderr when it does.
            wait_until(
                "the restart replays what the killed bridge had spooled",
                || bridge.logged("replaying bodies a previous run accepted"),
            );
            server.restart();
        }
    }
    let report = summary(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    wait_settled(&bridge);
    let duplicates = assert_complete(&stored(&server.url(), &stream), seed, count);
    eprintln!("4 kills (at +{kills:?}): {duplicates} duplicate events");
}

#[test]
fn a_full_spool_refuses_with_503_and_loses_nothing() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let stream = unique("FF");
    let max_bytes = 64 * 1024;
    let conf = spooled(&server.url(), &stream, spool.path())
        .spool("max_bytes", max_bytes)
        .spool("segment_bytes", 8192)
        .webhook("max_body_bytes", 16384);
    let bridge = BridgeProcess::start(&conf);
    server.stop();
    let (seed, count) = (45, 3000);
    let simulator = load(&bridge, seed, count);
    let mut largest = 0.0f64;
    wait_until("the spool fills and refuses", || {
        let metrics = bridge.metrics();
        largest = largest.max(metrics.sum("fishjam_bridge_spool_bytes", &[]));
        metrics.sum(
            "fishjam_bridge_spool_bodies_total",
            &[("op", "refused"), ("source", "webhook")],
        ) >= 10.0
    });
    assert!(
        largest <= max_bytes as f64,
        "spool at {largest} bytes, cap {max_bytes}"
    );
    let refused_503 = bridge.metrics().sum(
        "fishjam_bridge_webhook_requests_total",
        &[("status", "503")],
    );
    assert!(refused_503 >= 10.0);
    server.restart();
    let report = summary(simulator);
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    wait_settled(&bridge);
    let duplicates = assert_complete(&stored(&server.url(), &stream), seed, count);
    // Once delivered, the segments are deleted.
    wait_until("the spool's segments are deleted", || {
        bridge.metrics().sum("fishjam_bridge_spool_bytes", &[]) < 8192.0 * 2.0
    });
    eprintln!("full spool: {refused_503} answers 503, {duplicates} duplicate events");
}

/// `/readyz` says whether a webhook can be taken durably: with the only
/// broker down it stays 200 while the spool has room (Kubernetes keeps
/// sending webhooks to the pod, which is what the spool is for), and turns
/// 503 once the spool cannot take the largest body; `/status` names the sink
/// that is down all along.
#[test]
fn readiness_follows_whether_a_webhook_can_be_taken_durably() {
    let mut server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let subject = format!("{}.{{key}}", unique("r"));
    let conf = Conf::new()
        .webhook("max_body_bytes", 16384)
        .sink(nats_sink(&server.url(), &subject))
        .spool("path", spool.path())
        .spool("max_bytes", 65536)
        .spool("segment_bytes", 8192)
        .spool("engage_after", "100ms")
        .pipeline("retry_max_backoff", "200ms");
    let bridge = BridgeProcess::start(&conf);
    let readyz = || {
        let response = reqwest::blocking::get(format!("http://{}/readyz", bridge.admin)).unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().unwrap()).unwrap();
        (status, body)
    };
    server.stop();
    // Each body about 8 KiB (60 rooms, each id 128 bytes: a subject must
    // stay under the server's control line): a few fit in the spool.
    let body = |n: usize| {
        let room = |i: usize| ServerMessage {
            content: Some(Content::RoomCreated(sm::RoomCreated {
                room_id: format!("{n:04}-{i:03}-{}", "r".repeat(119)),
            })),
        };
        batch((0..60).map(room).collect())
    };
    let mut answers = Vec::new();
    let mut n = 0;
    wait_until("the sink seen down", || {
        answers.push(post(&bridge.webhook_url(), body(n), None).status().as_u16());
        n += 1;
        readyz().1["sink:nats"] == false
    });
    let (status, report) = readyz();
    assert_eq!(status, 200, "the spool has room: {report}");
    assert_eq!(report["spool_has_room"], true);
    let shown = reqwest::blocking::get(format!("http://{}/status", bridge.admin))
        .unwrap()
        .text()
        .unwrap();
    assert!(shown.contains("\"sink:nats\":false"), "{shown}");
    wait_until("the spool full", || {
        answers.push(post(&bridge.webhook_url(), body(n), None).status().as_u16());
        n += 1;
        readyz().0 == 503
    });
    assert_eq!(readyz().1["spool_has_room"], false);
    assert!(answers.contains(&200), "bodies were spooled: {answers:?}");
    server.restart();
    wait_until("ready again once the broker is back", || readyz().0 == 200);
}

/// What the notifier read is on disk before a crash can take it: with its
/// only sink paused (SIGSTOP), so that everything read is held in memory,
/// the bridge is killed (SIGKILL) and started again on its spool, and every
/// notification it had read is in the stream, each room in order.
#[test]
fn a_killed_notifier_holder_delivers_what_it_had_read_after_a_restart() {
    use crate::notifier::{notifier_source, scenario, simulate, TOKEN};
    let seed = 61;
    let port = free_port();
    let _fishjam = simulate(
        port,
        &[
            "--seed",
            &seed.to_string(),
            "--rate",
            "200",
            "--duration",
            "600s",
        ],
        std::process::Stdio::null(),
    );
    let server = PrivateNats::start();
    let spool = tempfile::tempdir().unwrap();
    let stream = unique("FN");
    let subject = format!("{}.{{kind}}.{{key}}.{{type}}", unique("n"));
    let conf = notifier_source(port, TOKEN)
        .sink(jetstream(nats_sink(&server.url(), &subject), &stream))
        .spool("path", spool.path());
    let mut bridge = BridgeProcess::start(&conf);
    let read = |bridge: &BridgeProcess| {
        bridge.metrics().sum(
            "fishjam_bridge_events_received_total",
            &[("source", "notifier")],
        )
    };
    wait_until("notifications read", || read(&bridge) >= 100.0);
    server.pause();
    let before = read(&bridge);
    wait_until("notifications read while the sink is paused", || {
        read(&bridge) >= before + 100.0
    });
    let read_then = read(&bridge);
    wait_until("what was read is written to the spool", || {
        bridge.metrics().sum(
            "fishjam_bridge_spool_bodies_total",
            &[("op", "written"), ("source", "notifier")],
        ) >= read_then
    });
    bridge.child.kill().unwrap();
    bridge.child.wait().unwrap();
    server.resume();
    // The next run replays the spool while Fishjam keeps sending: the
    // notifications read before the kill arrive among the new ones.
    let _bridge = BridgeProcess::start(&conf);
    let sent = by_key(scenario(seed, read_then as usize).iter());
    wait_until(
        "every notification read before the kill in the stream, each room in order",
        || {
            let stored = crate::nats::stored(&server.url(), &stream);
            let heard = stored.iter().filter(|event| event["source"] == "notifier");
            incomplete_or_out_of_order(&sent, &by_key(heard)).is_none()
        },
    );
}
