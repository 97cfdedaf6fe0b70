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
