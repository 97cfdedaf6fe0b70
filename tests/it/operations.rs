//! Operations surfaces of the real binary: /metrics holds every documented
//! name, /healthz and /readyz answer, and `check-config` names what is wrong
//! without printing secrets.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::notifier;
use crate::support::*;

/// docs/metrics.md's table: (name, type, labels) per row.
fn documented_metrics() -> Vec<(String, String, Vec<String>)> {
    let docs = include_str!("../../docs/metrics.md");
    docs.lines()
        .filter(|line| line.starts_with("| `fishjam_bridge_"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let labels = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            (
                cells[1].trim_matches('`').to_owned(),
                cells[2].to_owned(),
                labels,
            )
        })
        .collect()
}

#[test]
fn metrics_hold_every_documented_name() {
    // The docs' table is the code's table: names, types and labels.
    let mut documented = documented_metrics();
    documented.sort();
    let mut table: Vec<(String, String, Vec<String>)> = fishjam_bridge::telemetry::METRICS
        .iter()
        .map(|m| {
            (
                m.name.to_owned(),
                format!("{:?}", m.kind).to_lowercase(),
                m.labels.iter().map(|l| (*l).to_owned()).collect(),
            )
        })
        .collect();
    table.sort();
    assert_eq!(documented, table, "docs/metrics.md and telemetry::METRICS");

    // A healthy bridge with both sources: events, skips, unmapped enums, a
    // mended string, metadata not embedded, a decode failure.
    // Every sink type is configured, so each one's metrics are exported.
    let port = free_port();
    let mut fishjam = notifier::simulator(port, 5, 20);
    let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
    let n = rand::random::<u32>();
    let conf = notifier::notifier_config(port, notifier::TOKEN)
        .sink(Sink::new("nats").set("subject", format!("metrics-{n}.{{key}}")))
        .sink(
            Sink::new("amqp")
                .set("exchange", format!("metrics-{n}"))
                .set("declare_exchange", true),
        )
        .sink(
            Sink::new("kafka")
                .set("bootstrap_servers", kafka.bootstrap_servers())
                .set("topic", format!("metrics-{n}")),
        )
        // It also follows an election (the only holder), for its metrics.
        .set("election", "backend", "nats");
    let healthy = BridgeProcess::start(&conf);
    wait_until("the notifier's events", || {
        healthy.metrics().sum(
            "fishjam_bridge_events_received_total",
            &[("source", "notifier")],
        ) >= 20.0
    });
    let url = healthy.webhook_url();
    assert_eq!(post(&url, room_created("a"), None).status(), 200);
    // authenticated (a handshake message) is skipped.
    assert_eq!(post(&url, vec![0x32, 0x00], None).status(), 200);
    // peer_connected with peer_type 7: left out of data, counted.
    let unmapped = hex::decode("12080a01611201621807").unwrap();
    assert_eq!(post(&url, unmapped, None).status(), 200);
    // room_created whose id is not UTF-8: mended, counted.
    let mended = vec![0x0a, 0x03, 0x0a, 0x01, 0xff];
    assert_eq!(post(&url, mended, None).status(), 200);
    // recordingStatusChanged whose metadata holds a number no double
    // holds: published with the text alone, counted.
    let unreadable =
        hex::decode("9202190a0372656310011a107b22726f6c65223a356536343939347d").unwrap();
    assert_eq!(post(&url, unreadable, None).status(), 200);
    assert_eq!(post(&url, vec![0x12], None).status(), 400);

    // A failing bridge: its only sink cannot write, so nothing is acknowledged.
    let failing = BridgeProcess::start(
        &Conf::new()
            .webhook("max_events_per_body", 1)
            .webhook("ack_timeout", "200ms")
            .sink(Sink::file("/dev/full"))
            .pipeline("max_in_flight_events", 2)
            .pipeline("retry_initial_backoff", "10ms")
            .pipeline("retry_max_backoff", "50ms")
            .without_spool(),
    );
    let url = failing.webhook_url();
    assert_eq!(post(&url, room_created("b"), None).status(), 503);
    assert_eq!(post(&url, room_created("c"), None).status(), 503);
    let full = post(&url, room_created("d"), None);
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");

    // A bridge whose sink fails, with a spool: the first body holds the
    // pipeline, engages the spool after engage_after and is spooled as
    // well; the next goes to the spool at once. Both are acknowledged from
    // disk.
    let spooling = BridgeProcess::start(
        &Conf::new()
            .webhook("max_events_per_body", 1)
            .webhook("ack_timeout", "200ms")
            .sink(Sink::file("/dev/full"))
            .pipeline("max_in_flight_events", 1)
            .spool("path", "{dir}/spool")
            .spool("engage_after", "100ms"),
    );
    let url = spooling.webhook_url();
    let held = post(&url, room_created("s1"), None);
    assert_eq!(held.status(), 200);
    assert_eq!(held.text().unwrap(), r#"{"events":1,"spooled":true}"#);
    let spooled = post(&url, room_created("s2"), None);
    assert_eq!(spooled.status(), 200);
    assert_eq!(spooled.text().unwrap(), r#"{"events":1,"spooled":true}"#);

    wait_until("librdkafka's first statistics", || {
        healthy
            .metrics()
            .names()
            .contains("fishjam_bridge_kafka_broker_rtt_seconds")
    });
    // A bridge serving its webhooks over TLS: its certificate's expiry.
    let certificates = tempfile::tempdir().unwrap();
    let [_, cert, key] = private_ca(certificates.path());
    let with_tls = BridgeProcess::start(
        &Conf::new()
            .set("webhook.tls", "cert_file", &cert)
            .set("webhook.tls", "key_file", &key)
            .sink(Sink::file("{dir}/events.jsonl")),
    );
    let mut present = healthy.metrics().names();
    let failing_metrics = failing.metrics();
    present.extend(failing_metrics.names());
    present.extend(spooling.metrics().names());
    present.extend(with_tls.metrics().names());
    for (name, ..) in &documented {
        assert!(present.contains(name), "{name} is exported");
    }
    // Each has its help text in the exposition.
    let mut helped = String::new();
    for bridge in [&healthy, &failing, &spooling, &with_tls] {
        helped.push_str(&http_get(&format!("http://{}/metrics", bridge.admin)));
    }
    for metric in fishjam_bridge::telemetry::METRICS {
        assert!(
            helped.contains(&format!("# HELP {} ", metric.name)),
            "{} has HELP text",
            metric.name
        );
    }
    // What the dashboard and the alerts in deploy/ query exists.
    for name in crate::deploy::queried_metric_names() {
        assert!(
            present.contains(&name),
            "{name}, queried in deploy/, is exported"
        );
    }
    assert!(
        failing_metrics.sum(
            "fishjam_bridge_sink_events_failed_total",
            &[("reason", "io")]
        ) >= 1.0
    );
    assert_eq!(
        failing_metrics.sum("fishjam_bridge_pipeline_events_in_flight", &[]),
        2.0
    );
    assert_eq!(
        failing_metrics.sum("fishjam_bridge_pipeline_rejected_events_total", &[]),
        1.0
    );
    assert_eq!(
        failing_metrics.sum("fishjam_bridge_ack_timeouts_total", &[]),
        2.0
    );
    let healthy_metrics = healthy.metrics();
    assert_eq!(
        healthy_metrics.sum(
            "fishjam_bridge_notifications_skipped_total",
            &[("reason", "handshake")]
        ),
        1.0
    );
    assert_eq!(
        healthy_metrics.sum(
            "fishjam_bridge_events_received_total",
            &[("source", "webhook"), ("event_type", "peerConnected")]
        ),
        1.0
    );
    assert_eq!(
        healthy_metrics.sum("fishjam_bridge_unmapped_enum_values_total", &[]),
        1.0
    );
    let _ = fishjam.kill();
    let _ = fishjam.wait();
}

#[test]
fn health_and_readiness() {
    let mut bridge = BridgeProcess::start(&Conf::new());
    let health = reqwest::blocking::get(format!("http://{}/healthz", bridge.admin)).unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::blocking::get(format!("http://{}/readyz", bridge.admin)).unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&ready.text().unwrap()).unwrap();
    assert_eq!(body["sink:stdout"], true);
    assert!(bridge.terminate().success());
}

#[test]
fn check_config_names_the_bad_key_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[fishjam]\nid = \"x\"\nmanagement_token = \"tok-SECRET-1\"\n[webhook]\nack_timeout = \"soon\"\n",
    )
    .unwrap();
    let output = check_config(&path, &[]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("ack_timeout"), "{stderr}");
    assert!(stderr.contains("invalid duration"), "{stderr}");

    std::fs::write(
        &path,
        "[fishjam]\nid = \"x\"\nmanagement_token = \"tok-SECRET-1\"\n",
    )
    .unwrap();
    let output = check_config(&path, &[("FISHJAM_WEBHOOK_SECRET", "whsec-SECRET-2")]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("webhook.secret = set"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");

    let output = check_config(&dir.path().join("missing.toml"), &[]);
    assert_eq!(output.status.code(), Some(64));
}

/// What `check-config` says on stderr of a configuration `text` it refuses.
fn refusal(conf: &Conf) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, conf.to_string()).unwrap();
    let output = check_config(&path, &[]);
    assert!(!output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_config_refuses_a_kafka_topic_that_can_render_an_illegal_name() {
    let stderr = refusal(&Conf::new().sink(Sink::new("kafka").set("topic", "fishjam.{key}")));
    assert!(
        stderr.contains("sinks[0].topic: {key} can render names Kafka refuses"),
        "{stderr}"
    );
}

#[test]
fn example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let output = check_config(&example, &[("FISHJAM_WEBHOOK_SECRET", "whsec-example")]);
    assert!(output.status.success(), "{output:?}");
}

/// What `line` of config.example.toml sets, when it is a setting: a table
/// header or `key = value`, commented out or not. A line that looks like one
/// (`# name = …`) but is not valid TOML is an error, not prose.
fn setting(line: &str) -> Option<&str> {
    let text = line.strip_prefix("# ").unwrap_or(line);
    if line.starts_with('[') || text.starts_with("[[") || text.starts_with("[sinks.") {
        return Some(text);
    }
    let (key, _) = text.split_once(" = ")?;
    let key_like = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.\"-".contains(c));
    if !key_like {
        return None;
    }
    if let Err(error) = text.parse::<toml::Table>() {
        panic!("config.example.toml: `{line}` reads as a setting but is not TOML: {error}");
    }
    Some(text)
}

/// A line the example marks as not its default (a trailing comment saying
/// "no default" or "an example").
fn not_a_default(line: &str) -> bool {
    line.split_once(" # ").is_some_and(|(_, comment)| {
        comment.contains("no default") || comment.contains("an example")
    })
}

/// A configuration as it takes effect: its Debug form, with a sink's name
/// and lanes written as unset when they are what unset gives.
fn effective(config: &fishjam_bridge::config::Config) -> String {
    let mut text = format!("{config:?}");
    for sink in &config.sinks {
        let lanes = sink.lanes(config.pipeline.lanes);
        text = text
            .replace(&format!("name: Some({:?})", sink.name()), "name: None")
            .replace(&format!("lanes: Some({lanes})"), "lanes: None");
    }
    text
}

fn load(text: &str) -> Result<fishjam_bridge::config::Config, Vec<String>> {
    // What a deployment gives the example: a state directory (systemd and
    // the container image set STATE_DIRECTORY) and the webhook secret, by
    // the environment unless the text names one.
    let secret_in_text = text
        .lines()
        .any(|line| line.starts_with("secret = ") || line.starts_with("secret_file = "));
    let no_env = |name: &str| match name {
        "FISHJAM_WEBHOOK_SECRET" if !secret_in_text => Some("whsec-example".to_owned()),
        "STATE_DIRECTORY" => Some("/var/lib/fishjam-bridge".to_owned()),
        _ => None,
    };
    // Secret files and the like read as a short secret.
    let files = |_: &Path| Ok("a-secret-from-a-file".to_owned());
    fishjam_bridge::config::Config::load(text, &no_env, &[], &files).map_err(|e| e.problems)
}

/// The example's lines, and the commented blocks in it: each `# [[sinks]]`
/// block (to the next blank line) as a whole, and each other commented
/// setting on its own; the indices of the lines to uncomment.
fn example() -> (Vec<String>, Vec<Vec<usize>>) {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = &lines[index];
        if line == "# [[sinks]]" {
            let mut block = Vec::new();
            while index < lines.len() && lines[index].starts_with('#') {
                if setting(&lines[index]).is_some() {
                    block.push(index);
                }
                index += 1;
            }
            blocks.push(block);
            continue;
        }
        if line.starts_with("# ") && setting(line).is_some() {
            blocks.push(vec![index]);
        }
        index += 1;
    }
    (lines, blocks)
}

#[test]
fn each_commented_block_of_the_example_config_loads_on_its_own() {
    let (lines, blocks) = example();
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let mut failures = Vec::new();
    for block in &blocks {
        let mut edited = lines.clone();
        for &index in block {
            edited[index] = setting(&lines[index]).unwrap().to_owned();
        }
        let written: Vec<&str> = block.iter().map(|&i| lines[i].as_str()).collect();
        // A file the example names (a certificate, a CA) is the deployment's
        // to provide: only that it is missing may be the problem.
        let missing_file = |problem: &String| {
            problem.split("cannot read ").nth(1).is_some_and(|rest| {
                let path = rest.split(':').next().unwrap_or_default();
                written.iter().any(|line| line.contains(path))
            })
        };
        if let Err(problems) = load(&edited.join("\n")) {
            if !problems.iter().all(missing_file) {
                failures.push(format!("line {}: {problems:?}", block[0] + 1));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_example_config_states_the_code_defaults() {
    let (lines, blocks) = example();
    let loaded = |lines: &[String]| effective(&load(&lines.join("\n")).unwrap());
    let mut wrong = Vec::new();
    // A stated value is the default when leaving it out changes nothing.
    let mut check = |lines: &[String], index: usize| {
        let line = &lines[index];
        if line.starts_with('[') || line.starts_with("type = ") || not_a_default(line) {
            return;
        }
        let mut without = lines.to_vec();
        without.remove(index);
        let Ok(config) = load(&without.join("\n")) else {
            return; // required: there is no default to state
        };
        if effective(&config) != loaded(lines) {
            wrong.push(format!("line {}: `{line}`", index + 1));
        }
    };
    for index in 0..lines.len() {
        if !lines[index].starts_with('#') && setting(&lines[index]).is_some() {
            check(&lines, index);
        }
    }
    for block in blocks.iter().filter(|block| block.len() > 1) {
        let mut edited = lines.clone();
        for &index in block {
            edited[index] = setting(&lines[index]).unwrap().to_owned();
        }
        for &index in block {
            check(&edited, index);
        }
    }
    assert!(
        wrong.is_empty(),
        "stated as defaults, but not the code's: {wrong:#?}"
    );
}

#[test]
fn webhook_ingress_without_a_secret_needs_allow_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    let unsigned = Conf::new().unset("webhook", "allow_unsigned");
    std::fs::write(&path, unsigned.to_string()).unwrap();
    let output = check_config(&path, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("webhook.secret is not set") && stderr.contains("webhook.allow_unsigned"),
        "{stderr}"
    );
    // The same file with the secret in the environment, as a deployment gives it.
    let output = check_config(&path, &[("FISHJAM_WEBHOOK_SECRET", "whsec-x")]);
    assert!(output.status.success(), "{output:?}");
    std::fs::write(&path, Conf::new().to_string()).unwrap();
    let output = check_config(&path, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("unsigned webhooks are accepted"),
        "{output:?}"
    );
}

#[test]
fn a_state_directory_that_cannot_be_written_stops_the_bridge_and_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, Conf::new().to_string()).unwrap();
    // Nothing, not even root, creates a directory under /proc.
    let output = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("STATE_DIRECTORY", "/proc/fishjam-bridge")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spool.path /proc/fishjam-bridge/spool: cannot create")
            && stderr.contains("spool.enabled = false"),
        "{stderr}"
    );
}

#[test]
fn check_config_refuses_a_route_name_that_is_no_event_type() {
    let sink = Sink::new("stdout").set_in("route", "include", ["voiceActivity"]);
    let stderr = refusal(&Conf::new().sink(sink));
    assert!(
        stderr.contains("sinks[0].route: \"voiceActivity\" is not an event type"),
        "{stderr}"
    );
}

#[test]
fn check_config_connect_reaches_every_target_and_says_which_failed() {
    let fishjam_port = free_port();
    let _fishjam = notifier::simulator(fishjam_port, 1, 1);
    let stopped = free_port(); // a NATS that is not running
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    let connect = |nats: &str, amqp_password: &str, token: &str| {
        let conf = Conf::new()
            .fishjam_at(fishjam_port, token)
            .notifier("enabled", true)
            .sink(Sink::new("nats").set("url", nats))
            .sink(
                Sink::new("amqp")
                    .set(
                        "url",
                        format!("amqp://guest:{amqp_password}@127.0.0.1:5672/%2f"),
                    )
                    .set("exchange", unique("probe")),
            );
        std::fs::write(&path, conf.to_string()).unwrap();
        let output = std::process::Command::new(BIN)
            .args(["check-config", "--connect", "--timeout", "5s", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    // Every target up and the credentials right.
    let (code, stdout) = connect("nats://127.0.0.1:4222", "guest", notifier::TOKEN);
    assert_eq!(code, Some(0), "{stdout}");
    for line in [
        "ok      sinks[0] nats",
        "ok      sinks[1] amqp",
        "ok      fishjam",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(stdout.contains("every target answered"), "{stdout}");
    // NATS stopped, a wrong RabbitMQ password, a wrong Fishjam token: each
    // named on its own line, with its cause, and no password printed.
    let (code, stdout) = connect(
        &format!("nats://127.0.0.1:{stopped}"),
        "hunter2",
        "wrong-token",
    );
    assert_eq!(code, Some(69), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "failed  sinks[0] nats: cannot connect to nats://127.0.0.1:{stopped}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed  sinks[1] amqp: cannot connect to 127.0.0.1:5672 vhost"),
        "{stdout}"
    );
    assert!(
        stdout.contains("failed  fishjam: Fishjam refused the credentials"),
        "{stdout}"
    );
    assert!(stdout.contains("3 of 3 targets failed"), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

/// The README's first command: the simulator into the bridge, events on
/// stdout. (A default that the demo's own configuration did not meet once
/// stopped it before its first event, and no test ran it.)
#[test]
fn the_demo_prints_events_and_exits_zero() {
    let output = std::process::Command::new(BIN)
        .args(["demo", "--duration", "2s", "--rate", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line one JSON event"))
        .collect();
    assert!(events.len() >= 10, "{} events", events.len());
    assert!(events.iter().all(|e| e["source"] == "webhook"));
}

/// A bridge whose only sink cannot write (`/dev/full`) and whose spool (in
/// `spool` of its directory) engages at once, holding `bodies`, one event
/// each, each answered as spooled.
fn replica_holding<const N: usize>(bodies: [Vec<u8>; N]) -> BridgeProcess {
    let bridge = BridgeProcess::start(
        &Conf::new()
            .webhook("ack_timeout", "2s")
            .webhook("max_events_per_body", 1)
            .sink(Sink::file("/dev/full"))
            .pipeline("max_in_flight_events", 1)
            .pipeline("drain_timeout", "1s")
            .spool("path", "{dir}/spool")
            .spool("engage_after", "100ms"),
    );
    for body in bodies {
        let answer = post(&bridge.webhook_url(), body, None);
        assert_eq!(answer.text().unwrap(), r#"{"events":1,"spooled":true}"#);
    }
    bridge
}

/// What `spool inspect` reports of `spool`.
fn inspect(spool: &Path) -> Value {
    let output = succeed(Command::new(BIN).args(["spool", "inspect"]).arg(spool));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `spool drain` of `spool` with the configuration at `config`.
fn drain_command(config: &Path, spool: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["spool", "drain", "--config"])
        .arg(config)
        .arg("--dir")
        .arg(spool);
    command
}

/// `spool inspect`: what a stopped replica's spool holds, read from a copy
/// (its own files are not touched).
#[test]
fn spool_inspect_says_what_a_replica_left_and_touches_nothing() {
    let mut bridge = replica_holding(["i1", "i2", "i3"].map(room_created));
    assert!(!bridge.terminate().success(), "the sink never took them");
    let spool = bridge.dir().join("spool");
    let files = || -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(&spool)
            .unwrap()
            .map(|entry| entry.unwrap())
            .map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, entry.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    };
    let before = files();
    let report = inspect(&spool);
    assert_eq!(report["bodies"], 3, "{report}");
    assert_eq!(report["events"], 3, "{report}");
    assert_eq!(report["sinks"]["file"]["bodies_behind"], 3, "{report}");
    assert!(
        report["oldest_age_seconds"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(files(), before, "the replica's files are as they were");
}

/// `spool drain`: a stopped replica's spool delivered by a bridge with no
/// source, which exits once every sink has every body; not while a running
/// bridge still holds that spool; and, stopped before it is done, with a
/// failure that says what stays in the spool.
#[test]
fn spool_drain_delivers_what_a_replica_left_in_order_and_exits() {
    // Two rooms, each created, deleted and created again: each room's
    // events must come out in this order.
    let mut replica = replica_holding([
        room_created("d1"),
        room_created("d2"),
        room_deleted("d1"),
        room_deleted("d2"),
        room_created("d1"),
        room_created("d2"),
    ]);
    let spool = replica.dir().join("spool");
    let work = tempfile::tempdir().unwrap();
    let delivered = work.path().join("events.jsonl");
    // The same sink (its cursor is kept by name), now able to write.
    let config = work.path().join("drain.toml");
    let conf = Conf::new().sink(Sink::file(&delivered.display().to_string()));
    std::fs::write(&config, conf.text_in(work.path())).unwrap();
    let drain = || drain_command(&config, &spool);

    // A mistyped directory is not made into a new, empty spool.
    let mistyped = drain_command(&config, &work.path().join("no-such-spool"))
        .output()
        .unwrap();
    assert!(!mistyped.status.success());
    assert!(String::from_utf8_lossy(&mistyped.stderr).contains("no such directory"));
    assert!(!work.path().join("no-such-spool").exists());

    let refused = drain().output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("another fishjam-bridge uses this spool"),
        "{stderr}"
    );
    assert!(!replica.terminate().success(), "the sink never took them");

    let output = succeed(&mut drain());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["bodies"], 6, "{report}");
    assert_eq!(report["events"], 6, "{report}");
    assert_eq!(report["bodies_left"], 0, "{report}");
    assert_eq!(report["bodies_passed_over"], 0, "{report}");
    let events = read_events(&delivered);
    assert_eq!(events.len(), 6);
    for room in ["d1", "d2"] {
        let types: Vec<_> = events
            .iter()
            .filter(|e| e["room_id"] == room)
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["roomCreated", "roomDeleted", "roomCreated"],
            "{room}"
        );
    }
    let left = inspect(&spool);
    assert_eq!(left["bodies"], 0, "{left}");
}

#[test]
fn a_spool_drain_stopped_early_fails_and_leaves_the_rest_in_the_spool() {
    let mut replica = replica_holding([room_created("kept")]);
    assert!(!replica.terminate().success());
    let spool = replica.dir().join("spool");
    // The sink still cannot write: the drain runs until it is stopped.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("drain.toml");
    let conf = Conf::new()
        .sink(Sink::file("/dev/full"))
        .pipeline("drain_timeout", "1s");
    std::fs::write(&config, conf.text_in(work.path())).unwrap();
    let drain = drain_command(&config, &spool)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its signal handler is in place before it opens the spool.
    let lock = spool.join("lock");
    wait_until("the drain opened the spool", || {
        std::fs::read_dir(format!("/proc/{}/fd", drain.id()))
            .unwrap()
            .any(|fd| std::fs::read_link(fd.unwrap().path()).is_ok_and(|target| target == lock))
    });
    Command::new("kill")
        .args(["-TERM", &drain.id().to_string()])
        .status()
        .unwrap();
    let output = drain.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["bodies_left"], 1, "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stay in the spool"), "{stderr}");
    let left = inspect(&spool);
    assert_eq!(left["bodies"], 1, "{left}");
}
