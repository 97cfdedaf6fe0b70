//! The official Fishjam server SDKs against the simulator, unchanged: the
//! Python SDK (from PyPI, in a throwaway virtual environment) runs the
//! getting-started flow with a room whose webhooks go to a running bridge,
//! and the JS SDK (from npm) drives rooms and peers while its notifier
//! listens. Scripts and the pinned SDK versions: `tests/sdk/`.
//!
//! `scripts/services` installs both SDKs once into
//! `/opt/fishjam-bridge-tools/sdk/`; a test uses that copy when it was made
//! from the same pins, and installs into a temporary folder otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::*;

/// Where `scripts/services` installs the SDKs; each install ends by keeping
/// a copy of the pins it was made from, `<pins>.installed`.
const INSTALLED: &str = "/opt/fishjam-bridge-tools/sdk";
const TOKEN: &str = "sdk-test-token";
const SECRET: &str = "sdk-webhook-secret";

fn scripts() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk"))
}

/// The folder `scripts/services` installed `language`'s SDK into, when it
/// was installed from the pins in `tests/sdk/<pins>`.
fn installed(language: &str, pins: &str) -> Option<PathBuf> {
    let dir = Path::new(INSTALLED).join(language);
    let wanted = std::fs::read(scripts().join(pins)).unwrap();
    let made_from = std::fs::read(dir.join(format!("{pins}.installed"))).ok()?;
    (made_from == wanted).then_some(dir)
}

/// A Python with the pinned SDK: the installed one, or a fresh virtual
/// environment in `scratch`.
pub fn python_with_sdk(scratch: &Path) -> PathBuf {
    if let Some(venv) = installed("python", "requirements.txt") {
        return venv.join("bin/python");
    }
    succeed(Command::new("python3").args(["-m", "venv"]).arg(scratch));
    let python = scratch.join("bin/python");
    succeed(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("-r")
            .arg(scripts().join("requirements.txt")),
    );
    python
}

/// Makes `project` a Node.js project with the pinned SDK: linked to the
/// installed one, or installed there.
fn node_project_with_sdk(project: &Path) {
    if let Some(installed) = installed("js", "package.json") {
        std::os::unix::fs::symlink(installed.join("node_modules"), project.join("node_modules"))
            .unwrap();
        return;
    }
    std::fs::copy(scripts().join("package.json"), project.join("package.json")).unwrap();
    succeed(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(project),
    );
}

/// A simulated Fishjam with no scripted play: only REST calls cause
/// notifications. Returns it and its base URL.
fn fishjam(extra: &[&str]) -> (Killed, String) {
    let port = free_port();
    let mut args = vec!["--count", "0", "--management-token", TOKEN];
    args.extend_from_slice(extra);
    let child = simulated_fishjam(port, &args, Stdio::null());
    (child, format!("http://127.0.0.1:{port}"))
}

/// (type, room id, peer id) of each notification an SDK's notifier heard.
fn heard(notifications: &Value) -> Vec<(&str, &str, Option<&str>)> {
    notifications
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap(),
                n["roomId"].as_str().unwrap(),
                n["peerId"].as_str(),
            )
        })
        .collect()
}

fn last_json_line(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_python_sdk_runs_its_getting_started_flow_into_the_bridge() {
    let bridge = BridgeProcess::start(
        &Conf::new()
            .webhook("secret", SECRET)
            .sink(Sink::file("{dir}/events.jsonl")),
    );
    let (_fishjam, url) = fishjam(&["--webhook-secret", SECRET]);

    let venv = tempfile::tempdir().unwrap();
    let python = python_with_sdk(venv.path());
    let output = succeed(
        Command::new(&python)
            .arg(scripts().join("python_flow.py"))
            .args([&url, TOKEN, &bridge.webhook_url()]),
    );
    let report = last_json_line(&output);

    assert_eq!(
        report["wrong_token"], "refused: Invalid Fishjam credentials",
        "{report}"
    );
    let room_id = report["room_id"].as_str().unwrap();
    let peer_id = report["peer_id"].as_str().unwrap();
    assert_eq!(report["room_config"]["batchWebhookNotifications"], true);
    assert_eq!(report["room_config"]["webhookUrl"], bridge.webhook_url());
    assert_eq!(
        report["peers_read_back"],
        serde_json::json!([{
            "id": peer_id,
            "metadata": {"realName": "Tom Reeves"},
            "status": "disconnected",
        }])
    );
    // The SDK's own notifier heard the four changes, in order.
    let heard = heard(&report["notifications"]);
    assert_eq!(
        heard,
        [
            ("ServerMessageRoomCreated", room_id, None),
            ("ServerMessagePeerAdded", room_id, Some(peer_id)),
            ("ServerMessagePeerDeleted", room_id, Some(peer_id)),
            ("ServerMessageRoomDeleted", room_id, None),
        ]
    );

    // The room's signed webhooks reached the bridge, which published each
    // notification once, in order.
    let path = bridge.dir().join("events.jsonl");
    wait_until("the room's four events", || read_events(&path).len() >= 4);
    let events = read_events(&path);
    let published: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["roomId"].as_str().unwrap(),
                e["data"]["peerId"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        published,
        [
            ("roomCreated", room_id, None),
            ("peerAdded", room_id, Some(peer_id)),
            ("peerDeleted", room_id, Some(peer_id)),
            ("roomDeleted", room_id, None),
        ]
    );
    assert!(events.iter().all(|e| e["source"] == "webhook"));
    assert_eq!(events[1]["data"]["peerType"], "webrtc");
    assert_eq!(
        bridge.metrics().sum(
            "fishjam_bridge_webhook_requests_total",
            &[("status", "401")]
        ),
        0.0,
        "every webhook was signed with the secret"
    );
}

#[test]
fn the_js_sdk_manages_rooms_and_hears_them_on_its_notifier() {
    let (_fishjam, url) = fishjam(&[]);
    let project = tempfile::tempdir().unwrap();
    node_project_with_sdk(project.path());
    let script = project.path().join("js_flow.mjs");
    std::fs::copy(scripts().join("js_flow.mjs"), &script).unwrap();
    let output = succeed(
        Command::new("node")
            .arg("--experimental-websocket")
            .arg(&script)
            .args([&url, TOKEN])
            .current_dir(project.path()),
    );
    let report = last_json_line(&output);

    assert_eq!(report["wrongToken"], "unauthorized", "{report}");
    let room_id = report["roomId"].as_str().unwrap();
    let peer_id = report["peerId"].as_str().unwrap();
    assert_eq!(report["roomConfig"]["maxPeers"], 4);
    assert_eq!(report["roomConfig"]["videoCodec"], "vp8");
    assert_eq!(report["peersReadBack"][0]["metadata"]["name"], "Ala");
    let heard = heard(&report["notifications"]);
    assert_eq!(
        heard,
        [
            ("roomCreated", room_id, None),
            ("peerAdded", room_id, Some(peer_id)),
            ("peerDeleted", room_id, Some(peer_id)),
            ("roomDeleted", room_id, None),
        ]
    );
}
