//! A fleet of bridges electing the notifier's holder through a lease in a
//! JetStream key-value bucket: on a three-node nats-server cluster, the
//! holder killed (and a NATS node with it) is replaced within the lease's
//! time to live plus its renew interval, and two bridges never listen at
//! the same moment; a rolling restart hands the notifier over with nothing
//! that was sent lost or repeated.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::notifier::{scenario, TOKEN};
use crate::support::*;

/// The lease's timing in these tests: a failover within 6 s + 2 s. (With
/// 3 s + 1 s, one failover in a loaded full-suite run took longer than 4 s.)
const TTL: Duration = Duration::from_secs(6);
const RENEW_EVERY: Duration = Duration::from_secs(2);
const SEED: u64 = 5;

/// nats-server processes clustered on loopback, each with JetStream.
struct Cluster {
    nodes: Vec<Option<ConfiguredNats>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let dirs: Vec<_> = (0..size).map(|_| tempfile::tempdir().unwrap()).collect();
        let name = unique("c");
        let nodes = (0..size)
            .map(|i| {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                Some(ConfiguredNats::start(&format!(
                    "server_name: n{i}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: {name}, listen: \"127.0.0.1:{}\", routes: [{}] }}\n",
                    dirs[i].path().display(),
                    routes[i],
                    others.join(", ")
                )))
            })
            .collect();
        let cluster = Cluster { nodes, _dirs: dirs };
        // JetStream answers once the cluster has elected its meta leader.
        let url = cluster.url();
        wait_until("the JetStream cluster elects its leader", || {
            runtime().block_on(async {
                let Ok(client) = async_nats::connect(url.as_str()).await else {
                    return false;
                };
                // Without a meta leader the API does not answer (or says so).
                match client.request("$JS.API.INFO", "".into()).await {
                    Ok(reply) => !String::from_utf8_lossy(&reply.payload).contains("\"error\""),
                    Err(_) => false,
                }
            })
        });
        cluster
    }

    /// The first live node's URL.
    fn url(&self) -> String {
        self.nodes.iter().flatten().next().unwrap().url()
    }

    /// Every live node's URL, comma-separated, as the bridge's `url` takes them.
    fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().flatten().map(|n| n.url()).collect();
        urls.join(",")
    }

    fn kill(&mut self, node: usize) {
        drop(self.nodes[node].take());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A bridge of the fleet: the notifier on the simulator at `port`, the
/// lease and the events in JetStream on `nats`, replicated `replicas` times.
fn fleet_member(port: u16, nats: &str, stream: &str, name: &str, replicas: usize) -> Conf {
    let prefix = stream.to_lowercase();
    notifier_member(port, name)
        .set("election", "backend", "nats")
        .set("election", "ttl", format!("{}ms", TTL.as_millis()))
        .set("election.nats", "replicas", replicas)
        .sink(
            Sink::new("nats")
                .set("url", nats)
                .set("mode", "jetstream")
                .set("subject", format!("{prefix}.{{kind}}.{{key}}.{{type}}"))
                .set_in("stream", "name", stream)
                .set_in("stream", "storage", "file")
                .set_in("stream", "replicas", replicas),
        )
}

/// A bridge of the fleet named `name`: the notifier on the simulator at
/// `port`, renewing its lease every `RENEW_EVERY`; the election's backend,
/// its lease's time to live and the sinks are the caller's.
fn notifier_member(port: u16, name: &str) -> Conf {
    Conf::new()
        .fishjam_at(port, TOKEN)
        .notifier("enabled", true)
        .notifier("backoff_initial", "50ms")
        .notifier("backoff_max", "500ms")
        .set("election", "identity", name)
        .set(
            "election",
            "renew_every",
            format!("{}ms", RENEW_EVERY.as_millis()),
        )
}

/// The simulated Fishjam: notifications at 200 a second once a bridge
/// subscribed, for longer than any test here runs.
fn fishjam(port: u16) -> Killed {
    let seed = SEED.to_string();
    let args = ["--seed", &seed, "--rate", "200", "--duration", "600s"];
    crate::notifier::simulate(port, &args, Stdio::null())
}

/// What the simulator's notifier has done: `sessions`, `forwarded` and
/// `session_log`.
fn stats(port: u16) -> Value {
    serde_json::from_str(&http_get(&format!(
        "http://127.0.0.1:{port}/simulator/stats"
    )))
    .unwrap()
}

fn session_log(port: u16) -> Vec<Value> {
    stats(port)["session_log"].as_array().unwrap().clone()
}

/// Waits (up to `within`) for a session that subscribed after `after_us`;
/// how long after.
fn next_subscription(port: u16, after_us: u64, within: Duration) -> Duration {
    let mut next = None;
    wait_until_within("another bridge subscribes", within, || {
        next = session_log(port)
            .iter()
            .map(|s| s["subscribed_us"].as_u64().unwrap())
            .find(|subscribed| *subscribed > after_us);
        next.is_some()
    });
    Duration::from_micros(next.unwrap() - after_us)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The bridges that say they hold the lease.
fn holders(bridges: &[Option<BridgeProcess>]) -> Vec<usize> {
    bridges
        .iter()
        .enumerate()
        .filter_map(|(i, bridge)| {
            let bridge = bridge.as_ref()?;
            (bridge.metrics().sum("fishjam_bridge_election_holder", &[]) == 1.0).then_some(i)
        })
        .collect()
}

/// Waits until exactly one bridge holds the lease and a session is open;
/// the holder's index.
fn settled_holder(bridges: &[Option<BridgeProcess>], port: u16) -> usize {
    let mut holder = None;
    wait_until("one bridge holds the notifier and listens", || {
        let now = holders(bridges);
        let open = session_log(port)
            .iter()
            .any(|session| session["ended_us"].is_null());
        holder = (now.len() == 1 && open).then(|| now[0]);
        holder.is_some()
    });
    holder.unwrap()
}

/// SIGKILLs the holder under load; how long until another bridge's session
/// subscribed, and the index of the session that was open when it died.
fn kill_the_holder(bridges: &mut [Option<BridgeProcess>], port: u16) -> (Duration, usize) {
    // A holder whose lease store answers: it renewed since found (a NATS
    // node just lost may first cost the lease its leader).
    let renewals = |bridge: &BridgeProcess| {
        let metrics = bridge.metrics();
        (
            metrics.sum("fishjam_bridge_election_holder", &[]) == 1.0,
            metrics.sum("fishjam_bridge_election_renewals_total", &[]),
        )
    };
    // Every follower's store answers too: it saw the holder on its last
    // beat (one whose NATS server was just killed reconnects first).
    wait_until("every bridge sees the holder", || {
        bridges.iter().flatten().all(|bridge| {
            bridge
                .metrics()
                .sum("fishjam_bridge_election_without_holder_seconds", &[])
                < 0.5
        })
    });
    let holder = loop {
        let holder = settled_holder(bridges, port);
        let bridge = bridges[holder].as_ref().unwrap();
        let (_, before) = renewals(bridge);
        let mut held = true;
        wait_until("the holder renews its lease", || {
            let (holds, now) = renewals(bridge);
            held = holds;
            !holds || now > before
        });
        if held {
            break holder;
        }
    };
    let before = stats(port)["forwarded"].as_u64().unwrap();
    wait_until("the holder is sent notifications", || {
        stats(port)["forwarded"].as_u64().unwrap() >= before + 100
    });
    let log = session_log(port);
    let open = log.iter().position(|s| s["ended_us"].is_null()).unwrap();
    let killed_at = now_us();
    drop(bridges[holder].take());
    (next_subscription(port, killed_at, WAIT), open)
}

/// No two sessions were open at the same moment, and every one has ended.
fn assert_one_at_a_time(log: &[Value]) {
    for pair in log.windows(2) {
        let ended = pair[0]["ended_us"].as_u64().expect("every session ended");
        let next = pair[1]["subscribed_us"].as_u64().unwrap();
        assert!(ended <= next, "two bridges listened at once: {pair:?}");
    }
}

/// Per key (the bridge keeps each room's order, not one order across
/// rooms), the notifier's events in `stored` are each session's
/// notifications of that key in the order they were sent, session after
/// session. A session that ended gracefully (`whole`: its bridge stopped
/// with SIGTERM, or handed over at shutdown) has all of them; any other may
/// lack a tail: what a killed bridge had read and not published, or what
/// was still in the socket of a bridge whose lease ran out when its drain
/// (half the lease's margin) ended. Nothing else is there. Returns how many
/// events each of the others lacks.
fn assert_sessions_delivered(stored: &[Value], log: &[Value], whole: &[usize]) -> Vec<usize> {
    let end = log
        .iter()
        .map(|s| s["first"].as_u64().unwrap() + s["forwarded"].as_u64().unwrap())
        .max()
        .unwrap_or(0) as usize;
    let all = scenario(SEED, end);
    // One event per notification in this scenario's mix, checked here so a
    // change to it cannot shift the indices silently.
    assert_eq!(all.len(), end, "one event per notification");
    let heard = by_key(stored.iter().filter(|event| event["source"] == "notifier"));
    let cut: Vec<usize> = (0..log.len()).filter(|i| !whole.contains(i)).collect();
    let mut lacking = vec![0; cut.len()];
    for (key, events) in &heard {
        let mut heard = events.iter().peekable();
        for (index, session) in log.iter().enumerate() {
            let first = session["first"].as_u64().unwrap() as usize;
            let forwarded = session["forwarded"].as_u64().unwrap() as usize;
            let sent: Vec<_> = by_key(&all[first..first + forwarded])
                .remove(key)
                .unwrap_or_default();
            let matched = sent
                .iter()
                .take_while(|wanted| heard.next_if(|event| event == wanted).is_some())
                .count();
            match cut.iter().position(|k| *k == index) {
                Some(k) => lacking[k] += sent.len() - matched,
                None => assert_eq!(
                    matched,
                    sent.len(),
                    "{key}: session {index} ({session}) was sent {} events of it, {matched} are in the stream in order; next in the stream {:?}",
                    sent.len(),
                    heard.peek()
                ),
            }
        }
        let extra: Vec<_> = heard.collect();
        assert!(
            extra.is_empty(),
            "{key}: events no session was sent: {extra:?}"
        );
    }
    // A key none of whose events arrived is missing from `heard`.
    for (index, session) in log.iter().enumerate() {
        if cut.contains(&index) {
            continue;
        }
        let first = session["first"].as_u64().unwrap() as usize;
        let forwarded = session["forwarded"].as_u64().unwrap() as usize;
        for key in by_key(&all[first..first + forwarded]).keys() {
            assert!(
                heard.contains_key(key),
                "{key}: sent in session {index}, not in the stream"
            );
        }
    }
    lacking
}

#[test]
fn a_killed_holder_is_replaced_within_the_lease_and_two_never_listen_at_once() {
    let mut cluster = Cluster::start(3);
    let port = free_port();
    let _fishjam = fishjam(port);
    let stream = unique("EL");
    let nats = cluster.urls();
    let mut bridges: Vec<Option<BridgeProcess>> = (0..3)
        .map(|i| {
            Some(BridgeProcess::start(&fleet_member(
                port,
                &nats,
                &stream,
                &format!("bridge-{i}"),
                3,
            )))
        })
        .collect();
    let bound = TTL + RENEW_EVERY;
    let (first, killed_first) = kill_the_holder(&mut bridges, port);
    assert!(
        first <= bound,
        "failover took {first:?}: {:?}",
        session_log(port)
    );
    // The same with one NATS node gone: the lease and the stream have their
    // other two copies.
    cluster.kill(0);
    let (second, killed_second) = kill_the_holder(&mut bridges, port);
    assert!(
        second <= bound,
        "failover with a NATS node down took {second:?}"
    );
    // The last bridge stops cleanly: its session ends, and what it read is
    // published before it exits.
    let last = settled_holder(&bridges, port);
    assert!(bridges[last].as_mut().unwrap().terminate().success());
    let log = session_log(port);
    assert_one_at_a_time(&log);
    let stored = crate::nats::stored(&cluster.url(), &stream);
    // The killed holders' sessions may lack a tail, and so may one whose
    // lease ran out while a NATS node was gone; the last one stopped cleanly.
    let lacking = assert_sessions_delivered(&stored, &log, &[log.len() - 1]);
    assert!(
        killed_first < killed_second && killed_second < log.len() - 1,
        "{log:?}"
    );
    eprintln!(
        "failover {first:?} and {second:?} (NATS node down); sessions {}; lost by the sessions that did not end cleanly: {lacking:?}",
        log.len()
    );
}

#[test]
fn a_rolling_restart_hands_the_notifier_over_with_nothing_lost_or_repeated() {
    let nats = crate::nats::PrivateNats::start();
    let port = free_port();
    let _fishjam = fishjam(port);
    let stream = unique("RR");
    let member = |name: &str| fleet_member(port, &nats.url(), &stream, name, 1);
    let mut bridges = vec![
        Some(BridgeProcess::start(&member("a"))),
        Some(BridgeProcess::start(&member("b"))),
    ];
    // Stop the holder and start it again, then stop the other (which took
    // over): each stop hands the notifier over.
    for _ in 0..2 {
        let holder = settled_holder(&bridges, port);
        let stopped_at = now_us();
        assert!(bridges[holder].as_mut().unwrap().terminate().success());
        // The released lease is taken at once, not after the TTL.
        next_subscription(port, stopped_at, RENEW_EVERY * 3);
        bridges[holder] = Some(BridgeProcess::start(&member(["a", "b"][holder])));
    }
    for bridge in bridges.iter_mut().flatten() {
        assert!(bridge.terminate().success());
    }
    let log = session_log(port);
    assert!(log.len() >= 3, "{log:?}");
    assert_one_at_a_time(&log);
    let stored = crate::nats::stored(&nats.url(), &stream);
    let every: Vec<usize> = (0..log.len()).collect();
    assert_sessions_delivered(&stored, &log, &every);
    let gaps: Vec<u64> = log
        .windows(2)
        .map(|pair| {
            (pair[1]["subscribed_us"].as_u64().unwrap() - pair[0]["ended_us"].as_u64().unwrap())
                / 1000
        })
        .collect();
    eprintln!(
        "rolling restart: {} sessions, gaps between them (ms): {gaps:?}",
        log.len()
    );
    // The follower heard the release: it did not wait for its next beat.
    assert!(
        gaps.iter().all(|gap| *gap < RENEW_EVERY.as_millis() as u64),
        "{gaps:?}"
    );
}

/// A stand-in for the Kubernetes API server: the Lease endpoints the bridge
/// uses (GET, POST to the collection, PUT checked against the
/// `resourceVersion` it carries), with the bearer token checked and faults
/// on demand.
#[derive(Default)]
struct ApiState {
    lease: Option<Value>,
    version: u64,
    /// The next PUTs answered 409, as if another write came first.
    conflicts: u32,
    /// PUTs for a holder whose identity starts with this fail with 500.
    failing: Option<String>,
    /// (method, status) of every request, in order.
    answered: Vec<(String, u16)>,
}

struct ApiServer {
    addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<ApiState>>,
    _runtime: tokio::runtime::Runtime,
}

const API_TOKEN: &str = "lease-test-token";

impl ApiServer {
    fn start() -> ApiServer {
        use axum::http::{HeaderMap, Method, StatusCode};
        type Shared = std::sync::Arc<std::sync::Mutex<ApiState>>;
        async fn lease(
            axum::extract::State(state): axum::extract::State<Shared>,
            method: Method,
            headers: HeaderMap,
            body: String,
        ) -> (StatusCode, String) {
            let mut state = state.lock().unwrap();
            let authorized = headers
                .get("authorization")
                .is_some_and(|value| value == format!("Bearer {API_TOKEN}").as_str());
            let (status, answer) = if !authorized {
                (
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"kind": "Status", "code": 401}),
                )
            } else {
                match method {
                    Method::GET => match &state.lease {
                        Some(lease) => (StatusCode::OK, lease.clone()),
                        None => (
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"kind": "Status", "code": 404}),
                        ),
                    },
                    Method::POST if state.lease.is_some() => (
                        StatusCode::CONFLICT,
                        serde_json::json!({"kind": "Status", "code": 409, "reason": "AlreadyExists"}),
                    ),
                    Method::POST | Method::PUT => {
                        let mut lease: Value = serde_json::from_str(&body).unwrap();
                        let holder = lease["spec"]["holderIdentity"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let stale = method == Method::PUT
                            && lease["metadata"]["resourceVersion"]
                                .as_str()
                                .and_then(|version| version.parse::<u64>().ok())
                                != Some(state.version);
                        if stale || (method == Method::PUT && state.conflicts > 0) {
                            state.conflicts = state.conflicts.saturating_sub(1);
                            (
                                StatusCode::CONFLICT,
                                serde_json::json!({"kind": "Status", "code": 409, "message": "the object has been modified"}),
                            )
                        } else if state
                            .failing
                            .as_ref()
                            .is_some_and(|f| holder.starts_with(f.as_str()))
                        {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                serde_json::json!({"kind": "Status", "code": 500, "message": "etcdserver: request timed out"}),
                            )
                        } else {
                            state.version += 1;
                            lease["metadata"]["resourceVersion"] = state.version.to_string().into();
                            state.lease = Some(lease.clone());
                            let created = method == Method::POST;
                            (
                                if created {
                                    StatusCode::CREATED
                                } else {
                                    StatusCode::OK
                                },
                                lease,
                            )
                        }
                    }
                    _ => (StatusCode::METHOD_NOT_ALLOWED, Value::Null),
                }
            };
            state.answered.push((method.to_string(), status.as_u16()));
            (status, answer.to_string())
        }
        let state: Shared = Default::default();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let base = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases";
        let router = axum::Router::new()
            .route(base, axum::routing::post(lease))
            .route(
                &format!("{base}/{{name}}"),
                axum::routing::get(lease).put(lease),
            )
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, router).await });
        ApiServer {
            addr,
            state,
            _runtime: runtime,
        }
    }
}

/// A bridge electing the notifier's holder through the stand-in API server
/// at `api`, its events in a file.
fn kube_member(port: u16, api: &ApiServer, token_file: &std::path::Path, name: &str) -> Conf {
    notifier_member(port, name)
        .set("election", "backend", "kubernetes")
        .set("election", "ttl", format!("{}s", TTL.as_secs()))
        .set(
            "election.kubernetes",
            "api_url",
            format!("http://{}", api.addr),
        )
        .set("election.kubernetes", "namespace", "test")
        .set("election.kubernetes", "token_file", token_file)
        .sink(Sink::file("{dir}/events.jsonl"))
}

#[test]
fn a_kubernetes_lease_survives_a_conflict_and_moves_when_renewals_fail() {
    let api = ApiServer::start();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, format!("{API_TOKEN}\n")).unwrap();
    let port = free_port();
    let _fishjam = fishjam(port);
    let names = ["pod-0", "pod-1"];
    let mut bridges: Vec<Option<BridgeProcess>> = names
        .iter()
        .map(|name| {
            Some(BridgeProcess::start(&kube_member(
                port,
                &api,
                &token_file,
                name,
            )))
        })
        .collect();
    let holder = settled_holder(&bridges, port);
    // /readyz names the holder on both replicas (the follower once it has
    // read the Lease since the holder took it).
    let named = |index: usize, bridge: &BridgeProcess| {
        let report: Value =
            serde_json::from_str(&http_get(&format!("http://{}/readyz", bridge.admin))).unwrap();
        let role = if index == holder {
            "holder"
        } else {
            "follower"
        };
        report["election"]
            == serde_json::json!({
                "backend": "kubernetes",
                "identity": names[index],
                "role": role,
                "holder": names[holder],
            })
    };
    wait_until("/readyz names the holder", || {
        bridges
            .iter()
            .flatten()
            .enumerate()
            .all(|(index, bridge)| named(index, bridge))
    });
    let renewals = |bridge: &BridgeProcess| {
        bridge
            .metrics()
            .sum("fishjam_bridge_election_renewals_total", &[])
    };
    // A write that lost a race (409): the holder reads the Lease again,
    // finds itself still its holder and goes on renewing.
    let before = renewals(bridges[holder].as_ref().unwrap());
    api.state.lock().unwrap().conflicts = 1;
    wait_until(
        "a renewal refused with 409, and two accepted after it",
        || renewals(bridges[holder].as_ref().unwrap()) >= before + 2.0,
    );
    assert!(api
        .state
        .lock()
        .unwrap()
        .answered
        .iter()
        .any(|(method, status)| method == "PUT" && *status == 409));
    assert_eq!(holders(&bridges), vec![holder]);
    assert_eq!(session_log(port).len(), 1, "the conflict cost no session");
    // The holder's renewals fail (the API server times out on them): it
    // stops holding before its lease runs out, and the other takes over.
    let failing_at = now_us();
    api.state.lock().unwrap().failing = Some(format!("{} ", names[holder]));
    let failover = next_subscription(port, failing_at, WAIT);
    assert!(failover <= TTL + RENEW_EVERY, "failover took {failover:?}");
    assert_eq!(holders(&bridges), vec![1 - holder]);
    for bridge in bridges.iter_mut().flatten() {
        assert!(bridge.terminate().success());
    }
    let log = session_log(port);
    assert_eq!(log.len(), 2, "{log:?}");
    assert_one_at_a_time(&log);
    // What each bridge wrote, the first holder's first: every notification
    // of the second session (it stopped cleanly); the first may lack what
    // its drain, cut at half the lease's margin, did not read.
    let [first, second] = [holder, 1 - holder]
        .map(|i| read_events(&bridges[i].as_ref().unwrap().dir().join("events.jsonl")));
    let stored: Vec<Value> = first.into_iter().chain(second).collect();
    let lacking = assert_sessions_delivered(&stored, &log, &[1]);
    eprintln!(
        "kubernetes lease: failover after renewals began to fail {failover:?}; the first session lacks {lacking:?}"
    );
    drop(bridges);
}
