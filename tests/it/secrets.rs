//! Secrets never leave the bridge: with the management token, the webhook
//! secret and broker passwords set to marker values, a bridge logging at
//! trace level runs a whole session (credential check, notifier handshake,
//! reconciliation, signed and badly signed webhooks, a broker that refuses
//! its SASL login, a RabbitMQ that refuses the password in its URL) and
//! shuts down; neither its logs, its stdout, /metrics,
//! /readyz nor `check-config` hold any of the markers.

use std::process::Stdio;

use crate::support::*;

const TOKEN: &str = "tok-MARKER-7f3a";
const WEBHOOK_SECRET: &str = "whsec-MARKER-91c2";
const NATS_PASSWORD: &str = "nats-MARKER-55d0";
const KAFKA_PASSWORD: &str = "kafka-MARKER-0be4";
/// Passwords written into broker URLs (`scheme://user:password@host`).
const NATS_URL_PASSWORD: &str = "natsurl-MARKER-3c1e";
const AMQP_URL_PASSWORD: &str = "amqpurl-MARKER-a7d9";
const MARKERS: &[&str] = &[
    TOKEN,
    WEBHOOK_SECRET,
    NATS_PASSWORD,
    KAFKA_PASSWORD,
    NATS_URL_PASSWORD,
    AMQP_URL_PASSWORD,
];

fn assert_clean(what: &str, text: &str) {
    for marker in MARKERS {
        let leak = text.lines().find(|line| line.contains(marker));
        assert!(leak.is_none(), "{what} holds a secret ({marker}): {leak:?}");
    }
    // The markers' distinctive part, in case a secret is cut or quoted.
    assert!(!text.contains("MARKER"), "{what} holds part of a secret");
}

#[test]
fn no_secret_reaches_logs_metrics_or_check_config() {
    let port = free_port();
    let _fishjam = simulated_fishjam(
        port,
        &[
            "--management-token",
            TOKEN,
            "--count",
            "20",
            "--rate",
            "0",
            "--wait-for-subscribers",
            "1",
        ],
        Stdio::null(),
    );
    let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
    let n = rand::random::<u32>();
    let conf = Conf::new()
        .fishjam_at(port, TOKEN)
        .webhook("secret", WEBHOOK_SECRET)
        .webhook("ack_timeout", "200ms")
        .log("level", "trace")
        .notifier("enabled", true)
        .pipeline("drain_timeout", "1s")
        .sink(Sink::file("{dir}/events.jsonl"))
        .sink(
            Sink::new("nats")
                .set("user", "bridge")
                .set("password", NATS_PASSWORD)
                .set("subject", format!("secrets-{n}.{{key}}")),
        )
        .sink(
            Sink::new("kafka")
                .set("bootstrap_servers", kafka.bootstrap_servers())
                .set("topic", "secrets")
                .set("security_protocol", "sasl_plaintext")
                .set("sasl_mechanism", "PLAIN")
                .set("sasl_username", "bridge")
                .set("sasl_password", KAFKA_PASSWORD),
        )
        .sink(
            Sink::new("nats")
                .set("name", "nats-url")
                .set(
                    "url",
                    format!("nats://bridge:{NATS_URL_PASSWORD}@127.0.0.1:4222"),
                )
                .set("subject", format!("secrets-url-{n}.{{key}}")),
        )
        .sink(
            Sink::new("amqp")
                .set(
                    "url",
                    format!("amqp://guest:{AMQP_URL_PASSWORD}@127.0.0.1:5672/%2f"),
                )
                .set("exchange", format!("secrets-{n}")),
        )
        // Without the spool, the unreachable Kafka sink answers the signed
        // webhook 503 within the short ack_timeout.
        .without_spool();

    let mut bridge = BridgeProcess::spawn(&conf, Stdio::piped(), &[]);
    wait_until("the notifier's events", || {
        read_events(&bridge.dir().join("events.jsonl")).len() >= 20
    });
    // A badly signed webhook, a signed one (the Kafka sink never logs in, so
    // it is answered 503), and the admin surfaces.
    let url = bridge.webhook_url();
    assert_eq!(
        post(&url, room_created("x"), Some("not-the-secret")).status(),
        401
    );
    assert_eq!(
        post(&url, room_created("y"), Some(WEBHOOK_SECRET)).status(),
        503
    );
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", bridge.admin))
        .unwrap()
        .text()
        .unwrap();
    assert_clean("/metrics", &metrics);
    let ready = reqwest::blocking::get(format!("http://{}/readyz", bridge.admin))
        .unwrap()
        .text()
        .unwrap();
    assert_clean("/readyz", &ready);

    bridge.terminate();
    let stdout = {
        use std::io::Read;
        let mut text = String::new();
        bridge
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    assert_clean("stdout", &stdout);
    let logs: Vec<String> = bridge
        .logs
        .lock()
        .unwrap()
        .iter()
        .map(|line| line.to_string())
        .collect();
    assert!(
        logs.len() > 100,
        "trace logging was on: {} lines",
        logs.len()
    );
    assert!(
        logs.iter().any(|l| l.contains("notifier subscribed")),
        "a whole notifier session ran"
    );
    assert_clean("the logs", &logs.join("\n"));

    let path = bridge.dir().join("bridge.toml");
    let output = check_config(&path, &[]);
    assert!(output.status.success(), "{output:?}");
    assert_clean("check-config", &String::from_utf8_lossy(&output.stdout));
    assert_clean("check-config", &String::from_utf8_lossy(&output.stderr));
}
