//! What the bridge writes to stderr when it is not a terminal (journald, a
//! container runtime, a log shipper): plain text, no colour codes.

use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let output = Command::new(BIN)
        .args(["demo", "--duration", "1s", "--rate", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INFO"), "the demo logs: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "an escape sequence in logs to a pipe: {:?}",
        stderr.lines().next()
    );
}

/// `log.format = "journald"`: each line starts with its syslog priority,
/// which the journal reads as the entry's level, with no time stamp of its
/// own and no colour.
#[test]
fn journald_lines_carry_their_priority() {
    let bridge = BridgeProcess::start(
        &Conf::new()
            .log("format", "journald")
            .sink(Sink::file("{dir}/events.jsonl")),
    );
    let lines: Vec<String> = wait_for("the start-up lines", WAIT, POLL, || {
        let logs = bridge.logs.lock().unwrap();
        let lines: Vec<String> = logs
            .iter()
            .filter_map(|line| line.as_str().map(str::to_owned))
            .collect();
        if lines.iter().any(|line| line.contains("webhook listening")) {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    });
    let listening = lines
        .iter()
        .find(|line| line.contains("webhook listening"))
        .unwrap();
    assert!(
        listening.starts_with("<6>fishjam_bridge::bridge::listeners: webhook listening"),
        "{listening}"
    );
    for line in &lines {
        assert!(line.starts_with('<') && !line.contains('\u{1b}'), "{line}");
    }
}
