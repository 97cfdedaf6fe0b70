//! Webhook ingress against the real binary: the simulator posts signed
//! single and batched bodies, events land once and in order in a file sink,
//! bad requests get their status and a metric, and a sink that does not
//! acknowledge turns the answer into 503.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use fishjam_bridge::config::{Secret, WebhookConfig};
use fishjam_bridge::core::signature;
use fishjam_bridge::testing::pipeline::admission::Admission;
use fishjam_bridge::testing::pipeline::fanout::{BurstyLimit, Fanout, WhenFull};
use fishjam_bridge::testing::sources;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::*;

const SECRET: &str = "whsec-test-7f3a";

fn file_sink() -> Sink {
    Sink::file("{dir}/events.jsonl")
}

/// A bridge that takes webhooks signed with `SECRET`, its events in a file.
fn with_secret() -> Conf {
    Conf::new().webhook("secret", SECRET).sink(file_sink())
}

fn simulate(url: &str, seed: u64, count: usize, batch: usize) -> Value {
    let args = ["--webhook-secret", SECRET, "--rate", "0"];
    summary(webhook_simulator(url, seed, count, batch, &args))
}

#[test]
fn signed_single_and_batched_webhooks_arrive_once_in_order() {
    let bridge = BridgeProcess::start(&with_secret());
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

/// The webhook router in this process, without a listener: over a fan-out
/// with one sink of one lane that acknowledges each part at once, or never.
/// Its metrics go to a recorder of its own.
struct InProcess {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    recorder: metrics_exporter_prometheus::PrometheusRecorder,
    delivered: Arc<Mutex<Vec<Value>>>,
}

impl InProcess {
    fn new(config: WebhookConfig, acknowledge: bool) -> InProcess {
        // One thread: the handler runs where `with_local_recorder` is set.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let router = rt.block_on(async {
            let bursty = BurstyLimit {
                max_in_flight: 100,
                when_full: WhenFull::Wait,
            };
            let (fanout, lanes, _) = Fanout::new(
                &[fishjam_bridge::testing::pipeline::fanout::SinkSpec::all(
                    "sink", 1,
                )],
                1000,
                bursty,
                None,
            );
            for mut lane in lanes.into_iter().flatten() {
                let delivered = delivered.clone();
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Some(part) = lane.recv().await {
                        for message in part.messages() {
                            let event = serde_json::from_slice(&message.json).unwrap();
                            delivered.lock().unwrap().push(event);
                        }
                        if acknowledge {
                            part.acknowledge();
                        } else {
                            held.push(part);
                        }
                    }
                });
            }
            sources::webhook::router(
                &config,
                Arc::from("in-process"),
                Admission::new(fanout, None),
                None,
            )
        });
        InProcess {
            rt,
            router,
            recorder,
            delivered,
        }
    }

    /// Posts `body` with `headers`; the status, the headers and the text.
    fn post(
        &self,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, axum::http::HeaderMap, String) {
        let mut request = axum::http::Request::post("/webhook");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::from(body)).unwrap();
        metrics::with_local_recorder(&self.recorder, || {
            self.rt.block_on(async {
                let response = self.router.clone().oneshot(request).await.unwrap();
                let (parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                (
                    parts.status.as_u16(),
                    parts.headers,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            })
        })
    }

    /// `body` as Fishjam sends it, signed with `secret`.
    fn signed(&self, body: Vec<u8>, secret: &str) -> u16 {
        let signed = signature::sign(secret.as_bytes(), &body);
        let headers = [
            ("content-type", "application/x-protobuf"),
            (signature::HEADER, signed.as_str()),
        ];
        self.post(body, &headers).0
    }

    fn metrics(&self) -> Metrics {
        Metrics::parse(&self.recorder.handle().render())
    }
}

#[test]
fn bad_requests_get_their_status_and_a_metric() {
    let config = WebhookConfig {
        secret: Some(Secret::new(SECRET)),
        max_body_bytes: 1024,
        ..WebhookConfig::default()
    };
    let bridge = InProcess::new(config, true);
    let good = room_created("room-good");

    assert_eq!(bridge.signed(good.clone(), "another-secret"), 401);
    let unsigned = bridge.post(good.clone(), &[("content-type", "application/x-protobuf")]);
    assert_eq!(unsigned.0, 401);
    let (status, _, text) = bridge.post(
        vec![0x12, 0xff, 0x01],
        &[
            ("content-type", "application/x-protobuf"),
            (
                signature::HEADER,
                &signature::sign(SECRET.as_bytes(), &[0x12, 0xff, 0x01]),
            ),
        ],
    );
    assert_eq!(status, 400);
    assert!(text.contains("not a valid fishjam.ServerMessage"), "{text}");
    assert_eq!(bridge.signed(room_created(&"r".repeat(2000)), SECRET), 413);
    let json = [
        ("content-type", "application/json"),
        (
            signature::HEADER,
            &signature::sign(SECRET.as_bytes(), b"{}"),
        ),
    ];
    assert_eq!(bridge.post(b"{}".to_vec(), &json).0, 415);
    assert!(bridge.delivered.lock().unwrap().is_empty());

    // The router keeps serving.
    assert_eq!(bridge.signed(good, SECRET), 200);
    let delivered = bridge.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["room_id"], "room-good");

    let metrics = bridge.metrics();
    let requests = "fishjam_bridge_webhook_requests_total";
    for (status, count) in [
        ("401", 2.0),
        ("400", 1.0),
        ("413", 1.0),
        ("415", 1.0),
        ("200", 1.0),
    ] {
        assert_eq!(
            metrics.sum(requests, &[("status", status)]),
            count,
            "{status}"
        );
    }
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_decode_failures_total",
            &[("source", "webhook"), ("reason", "truncated")]
        ),
        1.0
    );
}

#[test]
fn a_body_no_sink_acknowledges_in_time_gets_503_with_retry_after() {
    let config = WebhookConfig {
        ack_timeout: std::time::Duration::from_millis(50),
        ..WebhookConfig::default()
    };
    let bridge = InProcess::new(config, false);
    let (status, headers, _) = bridge.post(
        room_created("held"),
        &[("content-type", "application/x-protobuf")],
    );
    assert_eq!(status, 503);
    assert!(headers.get("retry-after").is_some());
    // Refused, yet already with the sink: a later acknowledgement delivers
    // it, and Fishjam's copy, if it sends one, is a duplicate.
    assert_eq!(bridge.delivered.lock().unwrap().len(), 1);
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "503")]
        ),
        1.0
    );
}

#[test]
fn a_sink_that_does_not_acknowledge_gets_503_and_still_delivers() {
    // Events go to stdout, which nobody reads until later: once the pipe is
    // full, flushes block and nothing is acknowledged.
    // Without the spool (on by default), which would take these bodies.
    let conf = Conf::new().webhook("ack_timeout", "300ms").without_spool();
    let mut bridge = BridgeProcess::start_with(&conf, Stdio::piped(), &[]);
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
fn each_sink_takes_the_events_its_route_names() {
    let sink = |name: &str| Sink::file(&format!("{{dir}}/{name}.jsonl")).set("name", name);
    let conf = Conf::new()
        .sink(sink("all"))
        .sink(sink("no-voice").set_in("route", "exclude", ["vadNotification"]))
        .sink(sink("voice").set_in("route", "include", ["vadNotification"]));
    let bridge = BridgeProcess::start(&conf);
    let (seed, count) = (13, 600);
    play_all(&bridge.webhook_url(), seed, count, 10);
    let wanted = expected(seed, 8, count);
    let voice = wanted
        .values()
        .flatten()
        .filter(|(kind, _)| kind == "vadNotification")
        .count();
    let total: usize = wanted.values().map(Vec::len).sum();
    assert!(voice > 0 && voice < total, "the scenario has both kinds");
    let types = |name: &str| -> Vec<String> {
        read_events(&bridge.dir().join(format!("{name}.jsonl")))
            .iter()
            .map(|event| event["type"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_until("every sink has its events", || {
        types("all").len() == total
            && types("no-voice").len() == total - voice
            && types("voice").len() == voice
    });
    assert!(types("voice").iter().all(|t| t == "vadNotification"));
    assert!(types("no-voice").iter().all(|t| t != "vadNotification"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut bridge = BridgeProcess::start(&Conf::new().sink(file_sink()));
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

#[test]
fn a_file_sink_in_a_missing_folder_names_the_path_and_the_os_error() {
    let conf = Conf::new().sink(Sink::file("{dir}/missing/events.jsonl"));
    let bridge = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    let path = bridge.dir().join("missing/events.jsonl");
    let cause = format!("cannot open {}: No such file or directory", path.display());
    wait_until("the failure logged with its path and cause", || {
        bridge.logged(&cause)
    });
    assert_eq!(
        bridge.check("sink:file"),
        Some(false),
        "a sink that cannot open is down"
    );
    // The spool takes webhooks meanwhile: the bridge stays ready.
    assert!(bridge.is_ready());
}

/// A secret rotated under load: the file first holds the old secret, then
/// the old and the new (read again on SIGHUP), then the new only (read
/// again when it changes). Webhooks signed with either secret while both
/// are there are taken: no 401 but the one sent on purpose with the old
/// secret once it is gone, and every notification in the sink.
#[test]
fn a_secret_rotated_under_load_refuses_no_webhook() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("webhook-secret");
    std::fs::write(&file, "old-secret\n").unwrap();
    let conf = Conf::new()
        .webhook("allow_unsigned", false)
        .webhook("secret_file", file.to_str().unwrap())
        .sink(Sink::file("{dir}/events.jsonl"));
    let mut bridge = BridgeProcess::start(&conf);
    let secrets_in_use = || bridge.metrics().sum("fishjam_bridge_webhook_secrets", &[]);
    assert_eq!(secrets_in_use(), 1.0);
    let signed = |secret: &str, seed: u64| {
        webhook_simulator(
            &bridge.webhook_url(),
            seed,
            1500,
            5,
            &["--rate", "500", "--webhook-secret", secret],
        )
    };
    let before = signed("old-secret", 81);
    std::fs::write(&file, "old-secret\nnew-secret\n").unwrap();
    let pid = bridge.child.id().to_string();
    succeed(Command::new("kill").args(["-HUP", &pid]));
    wait_until("both secrets in use", || secrets_in_use() == 2.0);
    // Fishjam starts signing with the new secret while webhooks signed with
    // the old one are still on their way.
    let after = signed("new-secret", 82);
    for report in [summary(before), summary(after)] {
        assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    }
    std::fs::write(&file, "new-secret\n").unwrap();
    wait_until("the old secret dropped", || secrets_in_use() == 1.0);
    assert_eq!(
        post(
            &bridge.webhook_url(),
            room_created("late"),
            Some("old-secret")
        )
        .status(),
        401
    );
    assert_eq!(
        post(
            &bridge.webhook_url(),
            room_created("late"),
            Some("new-secret")
        )
        .status(),
        200
    );
    let metrics = bridge.metrics();
    assert_eq!(
        metrics.sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "401")]
        ),
        1.0,
        "only the webhook signed with the dropped secret was refused"
    );
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "SIGHUP did not stop it"
    );
    let played: usize = [81, 82]
        .into_iter()
        .map(|seed| {
            expected(seed, 8, 1500)
                .values()
                .map(Vec::len)
                .sum::<usize>()
        })
        .sum();
    let stored = read_events(&bridge.dir().join("events.jsonl"));
    assert_eq!(stored.len(), played + 1, "every notification stored, once");
}
