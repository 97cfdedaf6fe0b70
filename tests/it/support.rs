//! Shared helpers: the real binary with a config of the test's making, the
//! conformance vectors, the event schema and a Prometheus text parser.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fishjam_bridge::core::event::Source;
use fishjam_bridge::core::normalize::{normalize_body, Origin};
use fishjam_bridge::core::proto::{server_message as sm, Content, ServerMessage};
use fishjam_bridge::core::signature;
use fishjam_bridge::simulator::scenario::Scenario;
use prost::Message as _;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fishjam-bridge");

/// How long any wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Whether to run the long versions of the scenarios that take minutes
/// (`scripts/soak-scenarios` sets `FISHJAM_BRIDGE_SOAK`); the suite runs
/// short versions that show the same behaviour in seconds.
pub fn soak() -> bool {
    std::env::var_os("FISHJAM_BRIDGE_SOAK").is_some()
}

/// The conformance vectors: the team's shared copy when it is beside the
/// repository (CI), else the copy in `tests/vectors`.
pub fn vectors() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/vectors/server-notifications.json");
    let path = std::env::var_os("FISHJAM_VECTORS")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| shared.exists().then_some(shared))
        .unwrap_or_else(|| root.join("tests/vectors/server-notifications.json"));
    let text = std::fs::read_to_string(&path).expect("the vectors file is readable");
    serde_json::from_str(&text).expect("the vectors file is JSON")
}

/// The published event schema, as open as docs/events.md's versioning
/// policy says: what a consumer validates with.
pub fn published_schema() -> Value {
    serde_json::from_str(include_str!("../../schema/event.schema.json")).unwrap()
}

/// The event schema closed to what this build may emit: every object takes
/// only the keys it lists, and every open set of strings only the values
/// its `examples` know. The tests hold each event they see to it.
pub fn schema() -> jsonschema::Validator {
    fn close(schema: &mut Value) {
        match schema {
            Value::Object(map) => {
                if map.get("type") == Some(&Value::from("object"))
                    && map.contains_key("properties")
                    && !map.contains_key("additionalProperties")
                {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                if let Some(known) = map.get("examples").cloned() {
                    map.insert("enum".into(), known);
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    let mut schema = published_schema();
    close(&mut schema);
    validator(&schema)
}

pub fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles")
}

pub fn assert_valid(validator: &jsonschema::Validator, event: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "event {event} breaks the schema: {errors:?}"
    );
}

/// A bridge process started from a config text; killed on drop.
pub struct BridgeProcess {
    pub child: Child,
    pub webhook: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<Value>>>,
    pub dir: tempfile::TempDir,
}

/// A bridge configuration, built as TOML. `Conf::new()` is the base every
/// test starts from: both listeners on port 0, JSON logs at `info`,
/// unsigned webhooks accepted, a 2 s ack timeout, no sink (the bridge's
/// default, stdout). A value may hold `{dir}`: the bridge's own temporary
/// directory, which `BridgeProcess::spawn` puts in.
#[derive(Clone, Debug)]
pub struct Conf(toml::Table);

impl Conf {
    pub fn new() -> Conf {
        Conf(toml::Table::new())
            .set("fishjam", "id", "test-fishjam")
            .webhook("listen", "127.0.0.1:0")
            .webhook("ack_timeout", "2s")
            .webhook("allow_unsigned", true)
            .admin("listen", "127.0.0.1:0")
            .log("format", "json")
            .log("level", "info")
    }

    /// `key` in `section` (a table's dotted path: `webhook.tls`) set to `value`.
    pub fn set(mut self, section: &str, key: &str, value: impl TomlValue) -> Conf {
        table_at(&mut self.0, section).insert(key.to_owned(), value.toml());
        self
    }

    /// `key` left out of `section`, where it was set.
    pub fn unset(mut self, section: &str, key: &str) -> Conf {
        let removed = table_at(&mut self.0, section).remove(key);
        assert!(removed.is_some(), "{section}.{key} is not set");
        self
    }

    pub fn webhook(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("webhook", key, value)
    }

    pub fn admin(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("admin", key, value)
    }

    pub fn log(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("log", key, value)
    }

    pub fn notifier(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("notifier", key, value)
    }

    pub fn pipeline(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("pipeline", key, value)
    }

    pub fn spool(self, key: &str, value: impl TomlValue) -> Conf {
        self.set("spool", key, value)
    }

    /// The spool (on by default) turned off: for tests of what the bridge
    /// answers when nothing durable can take a body.
    pub fn without_spool(self) -> Conf {
        self.spool("enabled", false)
    }

    /// Fishjam is the one at 127.0.0.1:`port` (the simulator), reached
    /// with `token`.
    pub fn fishjam_at(self, port: u16, token: &str) -> Conf {
        self.set("fishjam", "id", format!("http://127.0.0.1:{port}"))
            .set("fishjam", "management_token", token)
    }

    /// One more `[[sinks]]` table.
    pub fn sink(mut self, sink: Sink) -> Conf {
        let sinks = self
            .0
            .entry("sinks")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(sinks) = sinks else {
            panic!("sinks is an array of tables");
        };
        sinks.push(toml::Value::Table(sink.0));
        self
    }

    /// The TOML text with `{dir}` in its values replaced by `dir`.
    pub fn text_in(&self, dir: &Path) -> String {
        fn put_dir(value: &mut toml::Value, dir: &str) {
            match value {
                toml::Value::String(text) => *text = text.replace("{dir}", dir),
                toml::Value::Array(items) => items.iter_mut().for_each(|v| put_dir(v, dir)),
                toml::Value::Table(table) => table.iter_mut().for_each(|(_, v)| put_dir(v, dir)),
                _ => {}
            }
        }
        let mut table = self.0.clone();
        let dir = dir.to_str().expect("a temporary directory's path is UTF-8");
        table.iter_mut().for_each(|(_, value)| put_dir(value, dir));
        table.to_string()
    }
}

impl Default for Conf {
    fn default() -> Conf {
        Conf::new()
    }
}

/// The TOML text, `{dir}` as it is.
impl std::fmt::Display for Conf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The table at `path` (dotted) in `root`, made when missing.
fn table_at<'a>(root: &'a mut toml::Table, path: &str) -> &'a mut toml::Table {
    path.split('.').fold(root, |table, name| {
        match table
            .entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => inner,
            other => panic!("{name} is {other}, not a table"),
        }
    })
}

/// One sink of a `Conf`: a `[[sinks]]` table.
#[derive(Clone, Debug)]
pub struct Sink(toml::Table);

impl Sink {
    /// A sink of `kind` (its `type`).
    pub fn new(kind: &str) -> Sink {
        Sink(toml::Table::new()).set("type", kind)
    }

    /// A file sink writing to `path`.
    pub fn file(path: &str) -> Sink {
        Sink::new("file").set("path", path)
    }

    /// `key` of the sink set to `value`.
    pub fn set(mut self, key: &str, value: impl TomlValue) -> Sink {
        self.0.insert(key.to_owned(), value.toml());
        self
    }

    /// `key` in the sink's sub-table `table` (`[sinks.stream]`) set to `value`.
    pub fn set_in(mut self, table: &str, key: &str, value: impl TomlValue) -> Sink {
        table_at(&mut self.0, table).insert(key.to_owned(), value.toml());
        self
    }
}

/// What a configuration value can be given as.
pub trait TomlValue {
    fn toml(self) -> toml::Value;
}

impl TomlValue for &str {
    fn toml(self) -> toml::Value {
        toml::Value::String(self.to_owned())
    }
}

impl TomlValue for String {
    fn toml(self) -> toml::Value {
        toml::Value::String(self)
    }
}

impl TomlValue for &String {
    fn toml(self) -> toml::Value {
        self.as_str().toml()
    }
}

impl TomlValue for &Path {
    fn toml(self) -> toml::Value {
        self.to_str().expect("a path in a test is UTF-8").toml()
    }
}

impl TomlValue for &PathBuf {
    fn toml(self) -> toml::Value {
        self.as_path().toml()
    }
}

impl TomlValue for bool {
    fn toml(self) -> toml::Value {
        toml::Value::Boolean(self)
    }
}

impl TomlValue for i64 {
    fn toml(self) -> toml::Value {
        toml::Value::Integer(self)
    }
}

impl TomlValue for i32 {
    fn toml(self) -> toml::Value {
        toml::Value::Integer(self.into())
    }
}

impl TomlValue for u32 {
    fn toml(self) -> toml::Value {
        toml::Value::Integer(self.into())
    }
}

impl TomlValue for usize {
    fn toml(self) -> toml::Value {
        toml::Value::Integer(self.try_into().expect("a setting fits in an i64"))
    }
}

impl<const N: usize> TomlValue for [&str; N] {
    fn toml(self) -> toml::Value {
        toml::Value::Array(self.into_iter().map(TomlValue::toml).collect())
    }
}

impl BridgeProcess {
    /// Starts `run` with `conf` (`{dir}` is a fresh temp dir) and waits
    /// until it is listening and ready.
    pub fn start(conf: &Conf) -> BridgeProcess {
        Self::start_with(conf, Stdio::null(), &[])
    }

    pub fn start_with(conf: &Conf, stdout: Stdio, env: &[(&str, &str)]) -> BridgeProcess {
        let bridge = Self::spawn(conf, stdout, env);
        bridge.wait_ready();
        bridge
    }

    /// Starts `run` and waits until it is listening, not until it is ready.
    pub fn spawn(conf: &Conf, stdout: Stdio, env: &[(&str, &str)]) -> BridgeProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, conf.text_in(dir.path())).unwrap();
        let addresses = dir.path().join("addresses.json");
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&path)
            .arg("--addresses-file")
            .arg(&addresses)
            .env_remove("RUST_LOG")
            // The spool is on by default, in the state directory: each
            // bridge gets its own, unless the test names one in `env`.
            .env("STATE_DIRECTORY", dir.path().join("state"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the bridge binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let value =
                        serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                    logs.lock().unwrap().push(value);
                }
            });
        }
        // The bridge writes the file (whole, by a rename) once both
        // listeners are bound.
        let pause = Duration::from_millis(10);
        let bound: Value = wait_for("the bridge listening", WAIT, pause, || {
            if let Ok(text) = std::fs::read_to_string(&addresses) {
                return Ok(serde_json::from_str(&text).unwrap());
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "the bridge did not start listening ({exited:?}): {:?}",
                logs.lock().unwrap()
            );
            Err(format!("{:?}", logs.lock().unwrap()))
        });
        let addr = |name: &str| bound[name].as_str().unwrap().parse::<SocketAddr>().unwrap();
        BridgeProcess {
            child,
            webhook: addr("webhook"),
            admin: addr("admin"),
            logs,
            dir,
        }
    }

    /// Whether any log line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.to_string().contains(text))
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook", self.webhook)
    }

    /// The state of one check, as `/status` reports it (`None`: no such check).
    pub fn check(&self, name: &str) -> Option<bool> {
        let url = format!("http://{}/status", self.admin);
        let text = reqwest::blocking::get(url).ok()?.text().ok()?;
        serde_json::from_str::<Value>(&text).ok()?[name].as_bool()
    }

    pub fn is_ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.admin);
        reqwest::blocking::get(url).is_ok_and(|r| r.status() == 200)
    }

    /// Waits until `/readyz` answers 200 and every sink is connected: with
    /// the spool (on by default) the bridge is ready before its sinks are,
    /// and the tests look at the brokers (a JetStream stream the sink
    /// creates, say) as soon as it has started.
    fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        wait_for("the bridge ready", WAIT, POLL, || {
            let response = reqwest::blocking::get(&url).map_err(|e| e.to_string())?;
            let status = response.status();
            let text = response.text().ok();
            let sinks_up = text.as_deref().and_then(|text| {
                let report: Value = serde_json::from_str(text).ok()?;
                Some(
                    report
                        .as_object()?
                        .iter()
                        .filter(|(name, _)| name.starts_with("sink:"))
                        .all(|(_, up)| up == true),
                )
            });
            if status == 200 && sinks_up == Some(true) {
                Ok(())
            } else {
                Err(format!("/readyz answers {status}: {text:?}"))
            }
        });
    }

    /// The metrics page, parsed.
    pub fn metrics(&self) -> Metrics {
        let text = http_get(&format!("http://{}/metrics", self.admin));
        Metrics::parse(&text)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_for("the bridge to exit after SIGTERM", WAIT, POLL, || {
            self.child.try_wait().unwrap().ok_or("it is running")
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fishjam-bridge check-config --config <path>`, with `env` set.
pub fn check_config(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A name no other test (or run) uses: `prefix` and 16 random hex digits.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A port nothing listens on now (the caller binds it soon after). Drawn
/// below the kernel's ephemeral ports (32768 and up here), so that neither
/// an outgoing connection's own port nor a listener on port 0 can take it
/// in between, and never handed out twice by this process: two private
/// brokers given one port made one of them fail to start, or a test talk
/// to the other's.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = rand::random_range(20_000..32_000);
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
}

/// `simulate --listen 127.0.0.1:<port>` with `args`, returned once it accepts
/// connections.
pub fn simulated_fishjam(port: u16, args: &[&str], stdout: Stdio) -> Killed {
    let child = Command::new(BIN)
        .args(["simulate", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_until("the simulator listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    child
}

/// `simulate --webhook-url URL`: `count` notifications of the scenario
/// `seed` over 8 rooms, posted from 4 connections in bodies of `batch`;
/// `args` says the rest (rate, retries, secret). `summary` reads its report.
pub fn webhook_simulator(url: &str, seed: u64, count: usize, batch: usize, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["simulate", "--webhook-url", url])
        .args(["--rooms", "8", "--concurrency", "4"])
        .args(["--seed", &seed.to_string(), "--count", &count.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Plays `count` notifications (seed `seed`, `batch` per body) as fast as
/// the bridge answers, and asserts that every body was accepted.
pub fn play_all(url: &str, seed: u64, count: usize, batch: usize) -> Value {
    let report = summary(webhook_simulator(url, seed, count, batch, &["--rate", "0"]));
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    report
}

/// Waits for a webhook simulator to finish; its report (one JSON object).
pub fn summary(child: Child) -> Value {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("simulate prints a JSON summary")
}

/// Stops a webhook simulator that plays without end (SIGTERM: it stops
/// queueing, sends what it queued and waits for every answer); its report,
/// whose `notifications` says how many it played.
pub fn stop_simulator(child: Child) -> Value {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    summary(child)
}

/// A child process that is killed when the test ends, also when it fails.
pub struct Killed(pub Child);

impl std::ops::Deref for Killed {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a file sink's events: the complete lines so far (the sink may be
/// in the middle of writing the next one).
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON event"))
        .collect()
}

/// Runs `command`, failing the test with its output unless it succeeds.
pub fn succeed(command: &mut Command) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// How long the waits below pause between two looks, unless told.
pub const POLL: Duration = Duration::from_millis(20);

/// No pause between two looks: for a look that waits by itself (a receive
/// with a timeout).
pub const NO_PAUSE: Duration = Duration::ZERO;

/// Waits until `condition` holds, polling; fails the test after `WAIT`.
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(what, WAIT, condition)
}

/// `wait_until`, failing after `limit`.
pub fn wait_until_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let outcome = retry(limit, POLL, || if condition() { Ok(()) } else { Err(()) });
    assert!(outcome.is_ok(), "timed out waiting for {what}");
}

/// Looks with `attempt` until it finds a value, `pause` apart, and returns
/// the value; fails the test after `limit`, with what the last look saw
/// instead.
pub fn wait_for<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    pause: Duration,
    attempt: impl FnMut() -> Result<T, E>,
) -> T {
    retry(limit, pause, attempt)
        .unwrap_or_else(|last| panic!("timed out waiting for {what}: {last}"))
}

/// The loop of the waits: `attempt` until it gives a value, `pause` apart;
/// after `limit`, what the last attempt gave instead.
pub fn retry<T, E>(
    limit: Duration,
    pause: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + limit;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) if pause.is_zero() => {}
            Err(_) => std::thread::sleep(pause),
        }
    }
}

pub fn http_get(url: &str) -> String {
    reqwest::blocking::get(url).unwrap().text().unwrap()
}

/// Prometheus text, as a map from metric name and labels to value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().expect("a sample value is a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels close");
                    let labels = body
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label is k=\"v\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics { samples }
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Base metric names present (histogram suffixes folded).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .map(|(n, _, _)| {
                for suffix in ["_bucket", "_sum", "_count"] {
                    if let Some(base) = n.strip_suffix(suffix) {
                        if base.ends_with("_seconds") {
                            return base.to_owned();
                        }
                    }
                }
                n.clone()
            })
            .collect()
    }
}

/// Events grouped by key, each as (type, data), in the order given.
pub type ByKey = BTreeMap<String, Vec<(String, Value)>>;

pub fn by_key<'a>(events: impl IntoIterator<Item = &'a Value>) -> ByKey {
    let mut out = ByKey::new();
    for event in events {
        out.entry(event["key"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                event["type"].as_str().unwrap().to_owned(),
                event["data"].clone(),
            ));
    }
    out
}

/// After an outage, a notification may be stored twice (a webhook sent
/// again after a 503 becomes new events); none may be missing, and each
/// room's events must appear in order: every expected sequence is a
/// subsequence of what was stored for its key.
pub fn assert_each_room_complete_in_order(wanted: &ByKey, stored: &ByKey) {
    if let Some(problem) = incomplete_or_out_of_order(wanted, stored) {
        panic!("{problem}");
    }
}

/// What `assert_each_room_complete_in_order` would fail with, if anything.
pub fn incomplete_or_out_of_order(wanted: &ByKey, stored: &ByKey) -> Option<String> {
    for (key, events) in wanted {
        let held = stored.get(key).map(Vec::as_slice).unwrap_or_default();
        let mut rest = held.iter();
        if let Some(missing) = events.iter().position(|event| !rest.any(|h| h == event)) {
            return Some(format!(
                "every event of {key}, in order: {} expected, {} stored; the {}th expected, {:?}, is not there after the ones before it\nstored: {:?}",
                events.len(),
                held.len(),
                missing + 1,
                events[missing],
                held.iter().map(|(t, _)| t).collect::<Vec<_>>()
            ));
        }
    }
    None
}

/// A private CA and a certificate for 127.0.0.1 that it signed, made with
/// openssl: (CA, certificate, key).
pub fn private_ca(dir: &Path) -> [PathBuf; 3] {
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=bridge test CA",
            ],
        ]
        .concat(),
    );
    let [cert, key] = server_certificate(dir, "server");
    [dir.join("ca.pem"), cert, key]
}

/// Another certificate for 127.0.0.1 from the CA of `private_ca`, in
/// `<name>.pem` and `<name>.key`: (certificate, key).
pub fn server_certificate(dir: &Path, name: &str) -> [PathBuf; 2] {
    signed_certificate(dir, name, "serverAuth")
}

/// A client certificate from the CA of `private_ca`, for mutual TLS, in
/// `<name>.pem` and `<name>.key`: (certificate, key).
pub fn client_certificate(dir: &Path, name: &str) -> [PathBuf; 2] {
    signed_certificate(dir, name, "clientAuth")
}

fn signed_certificate(dir: &Path, name: &str, usage: &str) -> [PathBuf; 2] {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN=127.0.0.1 {name}");
    openssl(
        dir,
        &[
            &["req"][..],
            &EC_KEY,
            &["-keyout", &key, "-out", &csr, "-subj", &subject],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    [dir.join(pem), dir.join(key)]
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {output:?}");
}

/// A nats-server of a test's own, on a free port, with `conf` (nats-server's
/// configuration format) after its `listen` line.
pub struct ConfiguredNats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl ConfiguredNats {
    pub fn start(conf: &str) -> ConfiguredNats {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, format!("listen: 127.0.0.1:{port}\n{conf}\n")).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (bash scripts/services)");
        wait_until("the private nats-server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        ConfiguredNats {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Replaces the server's configuration with `conf` (after the same
    /// `listen` line) and has it reloaded (SIGHUP); the server closes the
    /// connections the new configuration no longer authorizes.
    pub fn reconfigure(&self, conf: &str) {
        let path = self._dir.path().join("nats.conf");
        std::fs::write(&path, format!("listen: 127.0.0.1:{}\n{conf}\n", self.port)).unwrap();
        succeed(Command::new("kill").args(["-HUP", &self.child.id().to_string()]));
    }

    /// Puts the server in lame-duck mode (SIGUSR2): it stops accepting
    /// connections and tells its clients to move.
    pub fn lame_duck(&self) {
        succeed(Command::new("kill").args(["-USR2", &self.child.id().to_string()]));
    }
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts `body` as Fishjam does, signed with `secret` when given.
pub fn post(url: &str, body: Vec<u8>, secret: Option<&str>) -> reqwest::blocking::Response {
    let mut request = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/x-protobuf");
    if let Some(secret) = secret {
        request = request.header(signature::HEADER, signature::sign(secret.as_bytes(), &body));
    }
    request.body(body).send().expect("the bridge answers")
}

/// A `room_created` notification for `room_id`, encoded.
pub fn room_created(room_id: &str) -> Vec<u8> {
    ServerMessage {
        content: Some(Content::RoomCreated(sm::RoomCreated {
            room_id: room_id.to_owned(),
        })),
    }
    .encode_to_vec()
}

/// A `room_deleted` notification for `room_id`, encoded.
pub fn room_deleted(room_id: &str) -> Vec<u8> {
    ServerMessage {
        content: Some(Content::RoomDeleted(sm::RoomDeleted {
            room_id: room_id.to_owned(),
        })),
    }
    .encode_to_vec()
}

/// Per key, the (type, data) the scenario must produce, in order.
pub fn expected(seed: u64, rooms: usize, count: usize) -> BTreeMap<String, Vec<(String, Value)>> {
    let origin = Origin {
        source: Source::Webhook,
        received_at: std::time::SystemTime::now(),
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

/// `notifications` in one `NotificationBatch`, encoded.
pub fn batch(notifications: Vec<ServerMessage>) -> Vec<u8> {
    ServerMessage {
        content: Some(Content::NotificationBatch(sm::NotificationBatch {
            notifications,
        })),
    }
    .encode_to_vec()
}
