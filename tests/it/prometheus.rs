//! The dashboard and the alerts against a real Prometheus scraping a real
//! fleet: Debian's `prometheus` scrapes two bridges every second and loads
//! `deploy/prometheus/fishjam-bridge.rules.yml`, and every panel query of
//! `deploy/grafana/fishjam-bridge.json` and every rule expression is run
//! through its HTTP API.
//!
//! One bridge is healthy: the simulator plays rooms into it over the
//! notifier and as webhooks (so it deduplicates), it holds the notifier's
//! lease in a nats-server of the test's own, and it writes to a file and
//! to that server. The other struggles:
//! its sinks (HTTP, Kafka) cannot be reached, its spool is off, its pipeline
//! is tiny and its webhook listener serves TLS. The test makes the rare
//! things happen (an undecodable body, a notification of an unknown kind, a
//! dead letter, ack timeouts, a full pipeline, unsigned webhooks), so that
//! every series a query names exists. What it proves:
//! - every dashboard query parses, runs, and returns at least one series
//!   (Grafana's variables filled in as Grafana would, the template variables
//!   with the values their own queries find), so none names a metric or a
//!   label value the bridge does not export;
//! - every rule's expression runs, the part of it that names metrics (the
//!   side of each comparison, the inside of `absent`) returns series, and
//!   Prometheus reports every rule group healthy after evaluating them;
//! - the alert for each thing provoked is active on the bridge it happened
//!   to, the first occurrence included, and no other alert is;
//! - the peer join and leave panel shows the rates the simulator plays,
//!   within what its script allows over the panel's window.
//!
//! `scripts/services` installs Prometheus (Debian's package, with promtool).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::core::proto::{server_message as sm, Content, ServerMessage};
use fishjam_bridge::core::signature;
use fishjam_bridge::simulator::scenario::Scenario;
use prost::Message as _;
use serde_json::Value;

use crate::deploy::{deploy, tool};
use crate::support::*;

/// How often Prometheus scrapes and evaluates the rules.
const SCRAPE: &str = "1s";
/// What `$__rate_interval` becomes: ten scrapes, as Grafana's own choice
/// (at least four scrapes) would allow, and short enough for a test. The
/// peer panel's check waits for 12 s of samples to cover one window.
const RATE_INTERVAL: &str = "10s";
/// The job the alerts' `up{job="fishjam-bridge"}` expects.
const JOB: &str = "fishjam-bridge";
/// The simulator's notifications per second, rooms alive at once and seed.
const RATE: u64 = 300;
const ROOMS: usize = 20;
const SEED: u64 = 17;
const TOKEN: &str = "prometheus-test-token";
const SECRET: &str = "struggling-bridge-secret";
/// How long the data may take to be there: kafka statistics, the lease,
/// and a whole rate window.
const SETTLE: Duration = Duration::from_secs(40);

#[test]
fn prometheus_runs_every_dashboard_query_and_rule_against_a_live_fleet() {
    let started = Instant::now();
    let fleet = Fleet::start();
    let prometheus = Prometheus::start(&[fleet.steady.admin, fleet.struggling.admin]);
    // What the test provokes happens after Prometheus has seen the bridges
    // at rest, as in production: the alerts must see it as an increase.
    wait_for("both bridges scraped", SETTLE, POLL, || {
        match prometheus
            .series(&format!("up{{job=\"{JOB}\"}} == 1"))
            .len()
        {
            2 => Ok(()),
            up => Err(format!("{up} up")),
        }
    });
    fleet.provoke();
    let dashboard = dashboard();
    let all = template_variables(&prometheus, &dashboard, &fleet);
    let queries: Vec<(String, String)> = targets(&dashboard)
        .into_iter()
        .map(|t| (format!("{} / {}", t.panel, t.legend), fill(&t.expr, &all)))
        .collect();
    assert!(queries.len() > 40, "{} queries", queries.len());
    every_query_returns_series(&prometheus, &queries);
    let probes = rule_probes(&prometheus);
    every_query_returns_series(&prometheus, &probes);
    rules_healthy(&prometheus);
    provoked_alerts_are_active(&prometheus, &fleet);
    peer_panel_shows_the_simulated_rates(&prometheus, &dashboard, &fleet);
    eprintln!("prometheus test took {:?}", started.elapsed());
}

/// A Prometheus of the test's own on a free port, its storage in a fresh
/// temporary directory; killed on drop.
struct Prometheus {
    _child: Killed,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scraping `targets` as the job `JOB`, with the rules file loaded.
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global: {{scrape_interval: {SCRAPE}, evaluation_interval: {SCRAPE}}}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs: [{{targets: [{}]}}]\n",
            deploy("prometheus/fishjam-bridge.rules.yml").display(),
            targets.join(", ")
        );
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("prometheus.log");
        let port = free_port();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let mut child = Killed(child);
        let url = format!("http://127.0.0.1:{port}");
        wait_for("Prometheus ready", WAIT, POLL, || {
            if let Some(exit) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("prometheus exited ({exit}):\n{log}");
            }
            let ready = reqwest::blocking::get(format!("{url}/-/ready"));
            match ready {
                Ok(response) if response.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        Prometheus {
            _child: child,
            url,
            _dir: dir,
        }
    }

    /// The `data` of an API answer at `path` with `params`; Err with
    /// Prometheus's error when it refuses the request.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("{}/api/v1/{path}", self.url);
        let url = reqwest::Url::parse_with_params(&url, params).unwrap();
        let text = reqwest::blocking::get(url)
            .and_then(|response| response.text())
            .expect("Prometheus answers");
        let answer: Value = serde_json::from_str(&text).expect("Prometheus answers JSON");
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("{}: {}", answer["errorType"], answer["error"])),
        }
    }

    /// What an instant query returns now: its series (or a scalar, as one).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", expr)])?;
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().unwrap().clone(),
            _ => vec![data["result"].clone()],
        })
    }

    /// `query`, failing the test when Prometheus cannot run `expr`.
    fn series(&self, expr: &str) -> Vec<Value> {
        self.query(expr)
            .unwrap_or_else(|e| panic!("Prometheus cannot run {expr}: {e}"))
    }
}

/// The one value `expr` returns.
fn value(prometheus: &Prometheus, expr: &str) -> f64 {
    let series = prometheus.series(expr);
    assert_eq!(series.len(), 1, "{expr} returns one series: {series:?}");
    series[0]["value"][1].as_str().unwrap().parse().unwrap()
}

/// Waits until every (name, query) returns a series. A query Prometheus
/// cannot run fails the test at once; one still empty after `SETTLE` fails
/// it with the list of those.
fn every_query_returns_series(prometheus: &Prometheus, queries: &[(String, String)]) {
    wait_for("every query to return a series", SETTLE, POLL * 25, || {
        let empty: Vec<String> = queries
            .iter()
            .filter(|(name, expr)| {
                let series = prometheus.query(expr);
                let series = series.unwrap_or_else(|e| panic!("{name}: {expr}: {e}"));
                series.is_empty()
            })
            .map(|(name, expr)| format!("\n  {name}: {expr}"))
            .collect();
        match empty.is_empty() {
            true => Ok(()),
            false => Err(format!("no series for{}", empty.concat())),
        }
    });
}

/// The two bridges Prometheus scrapes, and what feeds them.
struct Fleet {
    /// Fed by the simulator over the notifier and by webhook; sinks: a
    /// file and NATS; holds the notifier's lease in NATS.
    steady: BridgeProcess,
    /// Webhooks only, over TLS and signed; sinks it cannot reach.
    struggling: BridgeProcess,
    /// When the simulator started: it cannot have played more than
    /// `RATE` notifications a second since.
    played_from: Instant,
    ca: PathBuf,
    _fishjam: Killed,
    _nats: ConfiguredNats,
    _dirs: [tempfile::TempDir; 2],
}

impl Fleet {
    fn start() -> Fleet {
        let store = tempfile::tempdir().unwrap();
        // max_payload is small so that one event can be too large for it.
        let nats = ConfiguredNats::start(&format!(
            "jetstream {{ store_dir: \"{}\" }}\nmax_payload: 65536",
            store.path().display()
        ));
        let (fishjam_port, webhook_port) = (free_port(), free_port());
        let webhook = format!("http://127.0.0.1:{webhook_port}/webhook");
        let played_from = Instant::now();
        let fishjam = simulated_fishjam(
            fishjam_port,
            &[
                &["--management-token", TOKEN, "--wait-for-subscribers", "1"][..],
                &["--rooms", &ROOMS.to_string(), "--seed", &SEED.to_string()],
                // Longer than every wait of the test together (each at most
                // `SETTLE`): the peer panels must not see it stop.
                &["--rate", &RATE.to_string(), "--duration", "900s"],
                &["--webhook-url", &webhook, "--retries", "20"],
            ]
            .concat(),
            Stdio::null(),
        );
        let steady = BridgeProcess::start(&steady(fishjam_port, webhook_port, &nats.url()));
        let certificates = tempfile::tempdir().unwrap();
        let [ca, cert, key] = private_ca(certificates.path());
        // Its sinks never connect: started without waiting for them.
        let struggling = BridgeProcess::spawn(&struggling(&cert, &key), Stdio::null(), &[]);
        Fleet {
            steady,
            struggling,
            played_from,
            ca,
            _fishjam: fishjam,
            _nats: nats,
            _dirs: [store, certificates],
        }
    }
}

/// The healthy bridge's configuration: both of Fishjam's paths, the
/// election on the NATS sink's server, dead letters kept in a file.
fn steady(fishjam: u16, webhook: u16, nats: &str) -> Conf {
    Conf::new()
        .webhook("listen", format!("127.0.0.1:{webhook}"))
        .fishjam_at(fishjam, TOKEN)
        .notifier("enabled", true)
        .notifier("required_for_readiness", true)
        .set("election", "backend", "nats")
        .set("election", "identity", "steady")
        .pipeline("dead_letter_path", "{dir}/dead-letters.jsonl")
        .sink(Sink::file("{dir}/events.jsonl"))
        .sink(
            Sink::new("nats")
                .set("url", nats)
                .set("subject", "fishjam.{kind}.{key}.{type}"),
        )
}

/// The struggling bridge's configuration: signed webhooks over TLS, no
/// spool, four events in flight at most (two a body), sinks at a port nothing listens
/// on. Kafka's statistics come every second instead of every five.
fn struggling(cert: &PathBuf, key: &PathBuf) -> Conf {
    let nowhere = format!("127.0.0.1:{}", free_port());
    Conf::new()
        .unset("webhook", "allow_unsigned")
        .webhook("secret", SECRET)
        .webhook("ack_timeout", "300ms")
        .webhook("max_events_per_body", 2)
        .set("webhook.tls", "cert_file", cert)
        .set("webhook.tls", "key_file", key)
        .without_spool()
        .pipeline("max_in_flight_events", 4)
        .pipeline("max_in_flight_bursty_events", 2)
        .sink(Sink::new("http").set("url", format!("http://{nowhere}/events")))
        .sink(
            Sink::new("kafka")
                .set("bootstrap_servers", &nowhere)
                .set_in("librdkafka", "statistics.interval.ms", "1000"),
        )
}

impl Fleet {
    /// Makes happen what only some event brings about, so that the series
    /// that count it exist: on the steady bridge an undecodable body, a
    /// notification of a kind this build does not know and an event too
    /// large for NATS (a dead letter); on the struggling one webhooks whose
    /// events no sink acknowledges (ack timeouts, then a full pipeline:
    /// 503s) and a burst of unsigned ones (401s).
    fn provoke(&self) {
        let url = self.steady.webhook_url();
        assert_eq!(post(&url, vec![0xff; 8], None).status(), 400);
        // Field 35 of ServerMessage, which no Fishjam version has used yet.
        let unknown = vec![0x9a, 0x02, 0x02, 0x0a, 0x00];
        assert_eq!(post(&url, unknown, None).status(), 200);
        assert_eq!(post(&url, too_large_for_nats(), None).status(), 200);
        wait_until("the dead letter", || {
            let metrics = self.steady.metrics();
            metrics.sum("fishjam_bridge_dead_letters_total", &[("sink", "nats")]) == 1.0
        });

        let client = crate::tls::https_client(&self.ca);
        let url = format!(
            "https://127.0.0.1:{}/webhook",
            self.struggling.webhook.port()
        );
        // Four events fill its pipeline: each of the first four bodies waits
        // out the ack timeout, the fifth is refused at once. They end rooms
        // it never knew, so it knows of no open room (which, with events
        // Prometheus saw no increase of, is an alert of its own).
        for room in 0..5 {
            let body = room_deleted(&format!("struggling-{room}"));
            assert_eq!(send(&client, &url, body, Some(SECRET)), 503);
        }
        for _ in 0..6 {
            assert_eq!(send(&client, &url, room_deleted("unsigned"), None), 401);
        }
        let metrics = self.struggling.metrics();
        assert_eq!(metrics.sum("fishjam_bridge_ack_timeouts_total", &[]), 4.0);
        assert_eq!(
            metrics.sum("fishjam_bridge_pipeline_rejected_events_total", &[]),
            1.0
        );
        assert_eq!(metrics.sum("fishjam_bridge_rooms", &[]), 0.0);
    }
}

fn room_deleted(room_id: &str) -> Vec<u8> {
    ServerMessage {
        content: Some(Content::RoomDeleted(sm::RoomDeleted {
            room_id: room_id.to_owned(),
        })),
    }
    .encode_to_vec()
}

/// A body of one `peerMetadataUpdated` whose metadata is larger than the
/// NATS server's max_payload.
fn too_large_for_nats() -> Vec<u8> {
    ServerMessage {
        content: Some(Content::PeerMetadataUpdated(sm::PeerMetadataUpdated {
            room_id: "too-large".into(),
            peer_id: "too-large".into(),
            metadata: format!("\"{}\"", "m".repeat(70_000)),
            peer_type: 1,
        })),
    }
    .encode_to_vec()
}

/// Posts `body` with `client`, signed with `secret` when given; the status.
fn send(client: &reqwest::blocking::Client, url: &str, body: Vec<u8>, secret: Option<&str>) -> u16 {
    let mut request = client
        .post(url)
        .header("content-type", "application/x-protobuf");
    if let Some(secret) = secret {
        request = request.header(signature::HEADER, signature::sign(secret.as_bytes(), &body));
    }
    request
        .body(body)
        .send()
        .expect("the bridge answers")
        .status()
        .as_u16()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/fishjam-bridge.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// One query of a dashboard panel, as written.
struct Target {
    panel: String,
    legend: String,
    expr: String,
}

/// Every query of every panel, those of panels inside rows too.
fn targets(dashboard: &Value) -> Vec<Target> {
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut targets = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            targets.push(Target {
                panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                expr: target["expr"]
                    .as_str()
                    .expect("a target is PromQL")
                    .to_owned(),
            });
        }
    }
    targets
}

/// The dashboard's template variables as its "All" fills them (each
/// one's `allValue`), once each variable's own query (`label_values`)
/// finds in Prometheus what it must: the job, and both bridges.
fn template_variables(
    prometheus: &Prometheus,
    dashboard: &Value,
    fleet: &Fleet,
) -> BTreeMap<String, String> {
    let instances = [fleet.steady.admin, fleet.struggling.admin].map(|a| a.to_string());
    let wanted = BTreeMap::from([
        ("job", vec![JOB.to_owned()]),
        ("instance", instances.into()),
    ]);
    let mut all = BTreeMap::new();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        if variable["type"] == "datasource" {
            continue;
        }
        let definition = fill(variable["definition"].as_str().unwrap(), &all);
        let (selector, label) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|rest| rest.rsplit_once(','))
            .unwrap_or_else(|| panic!("${name} is label_values(selector, label): {definition}"));
        let wanted = wanted
            .get(name)
            .unwrap_or_else(|| panic!("what should ${name} find?"));
        let path = format!("label/{}/values", label.trim());
        wait_for(&format!("the values of ${name}"), SETTLE, POLL * 25, || {
            let found = prometheus.api(&path, &[("match[]", selector)]);
            let found = found.unwrap_or_else(|e| panic!("{definition}: {e}"));
            match wanted
                .iter()
                .all(|value| found.as_array().unwrap().contains(&value.as_str().into()))
            {
                true => Ok(()),
                false => Err(format!("{definition} finds {found}")),
            }
        });
        assert_eq!(variable["includeAll"], true, "${name} offers All");
        let any = variable["allValue"]
            .as_str()
            .expect("All is a regular expression");
        all.insert(name.to_owned(), any.to_owned());
    }
    all
}

/// `expr` as Grafana sends it to Prometheus: its interval variables and
/// the template variables of `values` replaced. A `$` left over fails the
/// test: a variable this test does not fill.
fn fill(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<(&str, &str)> = vec![
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", SCRAPE),
        ("__range", "1m"),
    ];
    names.extend(
        values
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    );
    // The longest names first: `$__interval` must not take part of another.
    names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut filled = expr.to_owned();
    for (name, value) in names {
        filled = filled
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(
        !filled.contains('$'),
        "a variable this test does not fill: {expr}"
    );
    filled
}

/// The rules Prometheus loaded, each group's with its group's name.
fn loaded_rules(prometheus: &Prometheus) -> Vec<Value> {
    let data = prometheus.api("rules", &[]).expect("the rules API answers");
    let groups = data["groups"].as_array().unwrap().clone();
    assert!(
        !groups.is_empty(),
        "Prometheus loaded the rules file: {data}"
    );
    groups
}

/// For every rule of the rules file, as Prometheus loaded it, the parts
/// of its expression that name metrics (named after the rule). Prometheus
/// must have loaded every rule the file holds.
fn rule_probes(prometheus: &Prometheus) -> Vec<(String, String)> {
    let rules: Vec<Value> = loaded_rules(prometheus)
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap().clone())
        .collect();
    let text = std::fs::read_to_string(deploy("prometheus/fishjam-bridge.rules.yml")).unwrap();
    let written = text
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("- alert:") || line.starts_with("- record:"))
        .count();
    assert_eq!(rules.len(), written, "every rule of the file is loaded");
    let mut probes = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        let query = rule["query"].as_str().unwrap();
        let parts = metric_parts(query);
        assert!(
            parts
                .iter()
                .all(|part| part.contains('_') || part.contains('{')),
            "{name}: {parts:?} name metrics"
        );
        probes.extend(
            parts
                .into_iter()
                .map(|part| (format!("{name}: {query}"), part)),
        );
    }
    probes
}

/// The parts of a rule's expression that name metrics and must return
/// series whether or not the alert fires: each operand of a top-level
/// `and`, `or` or `unless` (which bind less tightly than comparisons),
/// without the threshold it is compared with, and the inside of
/// `absent(...)`. A recording rule's expression is its own part.
fn metric_parts(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for operand in split_top(expr, &[" and ", " or ", " unless "]) {
        // The matching modifier of the operator before it.
        let mut operand = operand.trim();
        for modifier in ["on", "ignoring"] {
            if let Some(rest) = operand.strip_prefix(modifier) {
                let rest = rest.trim_start();
                if rest.starts_with('(') {
                    operand = rest[rest.find(')').unwrap() + 1..].trim_start();
                }
            }
        }
        let comparisons = [" == ", " != ", " >= ", " <= ", " > ", " < "];
        let compared = split_top(operand, &comparisons)[0].trim();
        let inside = compared
            .strip_prefix("absent(")
            .and_then(|rest| rest.strip_suffix(')'))
            .filter(|inside| split_top(inside, &[")"]).len() == 1);
        parts.push(inside.unwrap_or(compared).to_owned());
    }
    parts
}

/// `expr` cut at each of `separators` that stands outside brackets and
/// quotes.
fn split_top<'a>(expr: &'a str, separators: &[&str]) -> Vec<&'a str> {
    let (mut parts, mut start, mut depth, mut quote) = (Vec::new(), 0, 0i32, None);
    let mut i = 0;
    while i < expr.len() {
        let c = expr.as_bytes()[i];
        match (quote, c) {
            (Some(_), b'\\') => i += 1,
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'' | b'`') => quote = Some(c),
            (None, b'(' | b'{' | b'[') => depth += 1,
            (None, b')' | b'}' | b']') if depth > 0 => depth -= 1,
            (None, _) if depth == 0 => {
                if let Some(sep) = separators.iter().find(|s| expr[i..].starts_with(**s)) {
                    parts.push(&expr[start..i]);
                    i += sep.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&expr[start..]);
    parts
}

/// Once Prometheus has evaluated every rule group again (after the data
/// the probes found was there), every rule is healthy: "ok", no error.
fn rules_healthy(prometheus: &Prometheus) {
    let evaluated = |groups: &[Value]| -> Vec<String> {
        groups
            .iter()
            .map(|g| g["lastEvaluation"].to_string())
            .collect()
    };
    let before = evaluated(&loaded_rules(prometheus));
    let groups = wait_for("every rule group evaluated again", SETTLE, POLL * 5, || {
        let groups = loaded_rules(prometheus);
        let again = evaluated(&groups)
            .iter()
            .zip(&before)
            .all(|(now, then)| now != then);
        if again {
            Ok(groups)
        } else {
            Err(format!("{groups:?}"))
        }
    });
    for group in &groups {
        for rule in group["rules"].as_array().unwrap() {
            let error = rule["lastError"].as_str().unwrap_or_default();
            assert!(
                rule["health"] == "ok" && error.is_empty(),
                "group {}, rule {}: health {}, {error}",
                group["name"],
                rule["name"],
                rule["health"]
            );
        }
    }
}

/// The alerts for what the test provoked are active (pending, or firing
/// for those without `for`) on the bridge it happened to, and no other
/// alert is: each sees what it is for, from its first occurrence (a
/// counter the bridge exports only once it counts shows Prometheus no
/// increase), and none fires on what it is not for.
fn provoked_alerts_are_active(prometheus: &Prometheus, fleet: &Fleet) {
    let steady = fleet.steady.admin.to_string();
    let struggling = fleet.struggling.admin.to_string();
    let provoked: BTreeSet<(String, String)> = [
        ("FishjamBridgeDecodeFailures", &steady),
        ("FishjamBridgeUnknownNotifications", &steady),
        ("FishjamBridgeDeadLetters", &steady),
        ("FishjamBridgeSinkDown", &struggling),
        ("FishjamBridgePublishFailures", &struggling),
        ("FishjamBridgeBacklogGrowing", &struggling),
        ("FishjamBridgeWebhook5xx", &struggling),
        ("FishjamBridgeWebhookUnauthorized", &struggling),
        // The test's certificate lasts two days.
        ("FishjamBridgeCertificateExpiring", &struggling),
    ]
    .into_iter()
    .map(|(alert, instance)| (alert.to_owned(), instance.clone()))
    .collect();
    let active = wait_for("the provoked alerts", SETTLE, POLL * 25, || {
        let data = prometheus
            .api("alerts", &[])
            .expect("the alerts API answers");
        let active: BTreeSet<(String, String)> = data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|alert| {
                let label = |name: &str| alert["labels"][name].as_str().unwrap_or("").to_owned();
                (label("alertname"), label("instance"))
            })
            .collect();
        match provoked.is_subset(&active) {
            true => Ok(active),
            false => {
                let missing: Vec<_> = provoked.difference(&active).collect();
                Err(format!("{missing:?} are not active"))
            }
        }
    });
    let may = [
        // The steady bridge's dead letter was a publish its sink refused.
        ("FishjamBridgePublishFailures", steady),
        // Once the struggling one's events have waited a minute.
        ("FishjamBridgeSinkBehind", struggling),
    ]
    .map(|(alert, instance)| (alert.to_owned(), instance));
    let others: Vec<_> = active
        .iter()
        .filter(|alert| !provoked.contains(*alert) && !may.contains(alert))
        .collect();
    assert!(others.is_empty(), "alerts nothing provoked: {others:?}");
}

/// The peer join and leave panel, for the steady bridge (its instance
/// chosen in the dashboard), shows what the simulator plays into it:
/// `RATE` notifications a second, of which the script's share are peer
/// joins (leaves), each counted once although it came both ways.
fn peer_panel_shows_the_simulated_rates(prometheus: &Prometheus, dashboard: &Value, fleet: &Fleet) {
    let title = "Peer joins and leaves per minute";
    let panel: Vec<Target> = targets(dashboard)
        .into_iter()
        .filter(|t| t.panel == title)
        .collect();
    let instance = fleet.steady.admin.to_string();
    let chosen = BTreeMap::from([
        ("job".to_owned(), JOB.to_owned()),
        ("instance".to_owned(), instance.clone()),
    ]);
    for (legend, event_type) in [("joins", "peerConnected"), ("leaves", "peerDisconnected")] {
        let target = panel.iter().find(|t| t.legend.starts_with(legend));
        let target = target.unwrap_or_else(|| panic!("{title} shows {legend}"));
        assert!(
            target
                .expr
                .contains(&format!("event_type=\"{event_type}\"")),
            "{}",
            target.expr
        );
        // The counter was scraped through a whole window and the second
        // before it (11 samples in 12 s): the rate is not one of a series
        // that began inside its window, which Prometheus underestimates.
        let samples = format!(
            "max(count_over_time(fishjam_bridge_room_events_total\
             {{instance=\"{instance}\", event_type=\"{event_type}\"}}[12s]))"
        );
        wait_until_within(&format!("a window of {event_type}"), SETTLE, || {
            !prometheus.series(&samples).is_empty() && value(prometheus, &samples) >= 11.0
        });
        let shown = value(prometheus, &fill(&target.expr, &chosen));
        let played = (RATE as f64 * fleet.played_from.elapsed().as_secs_f64()) as usize;
        let (mean, low, high) = per_minute(event_type, played);
        eprintln!("{legend}: {shown:.0} a minute shown, {mean:.0} played on average, {low:.0} to {high:.0} over a window");
        assert!(
            shown >= low * 0.85 && shown <= high * 1.15,
            "{title} shows {shown} {legend} a minute; the simulator played {low:.0} to {high:.0} over any window"
        );
    }
}

/// Peer `event_type`s a minute in the simulator's script over its first
/// `played` notifications at `RATE` a second: on average, and the least
/// and the most over any 7 to 10 s of it, which is what a rate over a
/// 10 s window shows (its samples, a second apart, span 8 to 10 s).
fn per_minute(event_type: &str, played: usize) -> (f64, f64, f64) {
    let origin = Origin {
        source: Source::Webhook,
        received_at: std::time::SystemTime::now(),
        fishjam_id: Arc::from("x"),
        id_seed: 0,
    };
    let mut counts = vec![0usize];
    for message in Scenario::new(SEED, ROOMS).take(played) {
        let events = normalize_body(&message.encode_to_vec(), &origin)
            .unwrap()
            .events;
        let these = events
            .iter()
            .filter(|e| e.event_type.as_str() == event_type)
            .count();
        counts.push(counts.last().unwrap() + these);
    }
    let per_minute = |count: usize, seconds: f64| count as f64 / seconds * 60.0;
    let mean = per_minute(counts[played], played as f64 / RATE as f64);
    let (mut low, mut high) = (f64::MAX, 0.0f64);
    for seconds in 7..=10 {
        let width = RATE as usize * seconds;
        for start in 0..(played + 1).saturating_sub(width) {
            let rate = per_minute(counts[start + width] - counts[start], seconds as f64);
            (low, high) = (low.min(rate), high.max(rate));
        }
    }
    assert!(
        high > 0.0,
        "the simulator played {event_type} in {played} notifications"
    );
    (mean, low, high)
}
