//! `fishjam-bridge tap` against a running bridge: the filters, a client
//! that does not read, and the endpoint's absence when tap is off.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A bridge with the tap on, its events going to `sink`.
fn with_tap(sink: Sink) -> Conf {
    Conf::new().admin("tap", true).sink(sink)
}

fn tap_clients(bridge: &BridgeProcess) -> f64 {
    bridge.metrics().sum("fishjam_bridge_tap_clients", &[])
}

#[test]
fn a_filtered_tap_prints_exactly_the_matching_events() {
    let mut bridge = BridgeProcess::start(&with_tap(Sink::file("{dir}/events.jsonl")));
    // A room of the scenario with peers connecting in it.
    let (seed, count) = (7, 2000);
    let wanted = expected(seed, 8, count);
    let room = wanted
        .iter()
        .find(|(_, events)| events.iter().filter(|(t, _)| t == "peerConnected").count() >= 2)
        .map(|(room, _)| room.clone())
        .expect("a room where peers connect");
    let tap = Killed(
        Command::new(BIN)
            .args(["tap", "--admin", &format!("http://{}", bridge.admin)])
            .args(["--room", &room, "--type", "peerConnected"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the tap client connected", || tap_clients(&bridge) == 1.0);
    play_all(&bridge.webhook_url(), seed, count, 10);
    let file = bridge.dir().join("events.jsonl");
    wait_until("every event in the file", || {
        read_events(&file).len() >= count
    });
    // The bridge ends the stream when it stops: what the tap printed is all
    // it will ever print.
    assert!(bridge.terminate().success());
    let mut tap = tap;
    let mut printed = String::new();
    tap.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    let tapped: Vec<Value> = printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let matching: Vec<Value> = read_events(&file)
        .into_iter()
        .filter(|e| e["type"] == "peerConnected" && e["data"]["roomId"] == room.as_str())
        .collect();
    assert!(matching.len() >= 2);
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&tapped), ids(&matching));
}

#[test]
fn a_tap_client_that_does_not_read_slows_nothing_and_is_told_what_it_lost() {
    let bridge = BridgeProcess::start(&with_tap(Sink::file("{dir}/events.jsonl")));
    // A client that asks for every event and then reads nothing.
    let mut stalled = TcpStream::connect(bridge.admin).unwrap();
    stalled
        .write_all(b"GET /tap HTTP/1.1\r\nhost: bridge\r\n\r\n")
        .unwrap();
    wait_until("the tap client connected", || tap_clients(&bridge) == 1.0);
    let count = 80_000;
    play_all(&bridge.webhook_url(), 11, count, 50);
    // Every event reached the sink: the tap held nothing back.
    let received = bridge
        .metrics()
        .sum("fishjam_bridge_events_received_total", &[]);
    wait_until("every event acknowledged", || {
        bridge
            .metrics()
            .sum("fishjam_bridge_sink_events_acknowledged_total", &[])
            >= received
    });
    // Reading at last, the client finds how many it lost in its stream.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let marker = b"{\"tap\":{\"dropped\":";
    let mut seen = Vec::new();
    let mut buffer = vec![0; 1 << 16];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let n = stalled.read(&mut buffer).expect("the stream goes on");
        assert!(n > 0, "the stream ended before saying what was lost");
        // Keep only a tail long enough to hold the marker across reads.
        seen.extend_from_slice(&buffer[..n]);
        let keep = seen.len().saturating_sub(1 << 16);
        seen.drain(..keep);
    }
    let dropped = bridge
        .metrics()
        .sum("fishjam_bridge_tap_dropped_events_total", &[]);
    assert!(dropped > 0.0, "what the client lost is counted");
}

#[test]
fn without_admin_tap_there_is_no_tap() {
    let bridge = BridgeProcess::start(&Conf::new().sink(Sink::new("stdout")));
    let response = reqwest::blocking::get(format!("http://{}/tap", bridge.admin)).unwrap();
    assert_eq!(response.status(), 404);
    let output = Command::new(BIN)
        .args(["tap", "--admin", &format!("http://{}", bridge.admin)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("admin.tap = true"), "{said}");
    // An unknown type is refused by name.
    let tapping = BridgeProcess::start(&with_tap(Sink::new("stdout")));
    let output = Command::new(BIN)
        .args(["tap", "--admin", &format!("http://{}", tapping.admin)])
        .args(["--type", "roomMade"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("roomMade"), "{said}");
}

#[test]
fn tap_reads_an_admin_listener_served_with_tls_under_a_private_ca() {
    use std::io::BufRead;
    let certificates = tempfile::tempdir().unwrap();
    let [ca, cert, key] = private_ca(certificates.path());
    let conf = with_tap(Sink::new("stdout"))
        .set("admin.tls", "cert_file", &cert)
        .set("admin.tls", "key_file", &key);
    let bridge = BridgeProcess::spawn(&conf, Stdio::null(), &[]);
    let mut tap = Killed(
        Command::new(BIN)
            .args(["tap", "--admin", &format!("https://{}", bridge.admin)])
            .arg("--ca-file")
            .arg(&ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines, printed) = std::sync::mpsc::channel();
    let stdout = tap.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    // Bodies are posted until the tap, once connected, prints one.
    let event: Value = wait_for("an event printed by the tap", WAIT, NO_PAUSE, || {
        let _ = reqwest::blocking::Client::new()
            .post(bridge.webhook_url())
            .header("content-type", "application/x-protobuf")
            .body(room_created("over-tls"))
            .send();
        match printed.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => Ok(serde_json::from_str(&line).unwrap()),
            Err(_) => Err("the tap printed nothing"),
        }
    });
    assert_eq!(event["data"]["roomId"], "over-tls");
}

/// With `admin.token_file`, `/metrics`, `/status` and `/tap` need the token
/// as a bearer token, the probes do not, and `tap --token-file` reads with it.
#[test]
fn an_admin_token_guards_all_but_the_probes() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("admin-token");
    std::fs::write(&token, "t0ken-of-the-test\n").unwrap();
    let conf =
        with_tap(Sink::file("{dir}/events.jsonl")).admin("token_file", token.to_str().unwrap());
    let bridge = BridgeProcess::start(&conf);
    let status = |path: &str, bearer: Option<&str>| {
        let mut request =
            reqwest::blocking::Client::new().get(format!("http://{}{path}", bridge.admin));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send().unwrap().status().as_u16()
    };
    for path in ["/metrics", "/status", "/tap"] {
        assert_eq!(status(path, None), 401, "{path}");
        assert_eq!(status(path, Some("not-the-token")), 401, "{path}");
    }
    assert_eq!(status("/metrics", Some("t0ken-of-the-test")), 200);
    assert_eq!(status("/healthz", None), 200);
    assert_eq!(status("/readyz", None), 200);
    let tap = |with_token: bool| {
        let mut command = Command::new(BIN);
        command.args(["tap", "--admin", &format!("http://{}", bridge.admin)]);
        if with_token {
            command.arg("--token-file").arg(&token);
        }
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        command
    };
    assert!(
        !tap(false).status().unwrap().success(),
        "refused without it"
    );
    let mut reader = Killed(tap(true).spawn().unwrap());
    let mut stdout = std::io::BufReader::new(reader.0.stdout.take().unwrap());
    let seen = std::thread::spawn(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        line
    });
    // Until the client is connected, an event reaches no one: post until
    // one reaches it.
    wait_until("an event through the tap", || {
        let _ = post(&bridge.webhook_url(), room_created("tapped"), None);
        seen.is_finished()
    });
    let event: Value = serde_json::from_str(&seen.join().unwrap()).unwrap();
    assert_eq!(event["data"]["roomId"], "tapped");
}
