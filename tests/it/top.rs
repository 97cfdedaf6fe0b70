//! `fishjam-bridge top` in a real terminal: tmux runs it against a bridge
//! under load, and its screen is read with capture-pane.

use std::process::Command;

use crate::support::*;

/// A tmux server of the test's own, so tests never share one.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        Tmux {
            socket: unique("top"),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// The `events/s` figure on the screen.
    fn rate(&self) -> Option<String> {
        let screen = self.screen().replace('│', " ");
        let line = screen
            .lines()
            .find(|l| l.trim_start().starts_with("events/s"))?;
        line.split_whitespace().nth(1).map(str::to_owned)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

#[test]
fn top_shows_the_rates_moving_a_stopped_sink_down_and_gives_the_terminal_back() {
    let mut nats = crate::nats::PrivateNats::start();
    let bridge = BridgeProcess::start(&Conf::new().sink(crate::nats::nats_sink(
        &nats.url(),
        &format!("{}.{{kind}}.{{key}}", unique("top")),
    )));
    let load = Killed(webhook_simulator(
        &bridge.webhook_url(),
        3,
        usize::MAX,
        10,
        &["--rate", "300", "--retries", "0"],
    ));
    let tmux = Tmux::new();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "110",
        "-y",
        "32",
        "sh",
    ]);
    let command = format!(
        "{BIN} top --admin http://{} --every 500ms; echo top-exited-$?",
        bridge.admin
    );
    tmux.run(&["send-keys", "-t", "top", &command, "Enter"]);
    wait_until("top shows the sink and a rate", || {
        let screen = tmux.screen();
        screen.contains("sinks")
            && screen.contains("nats")
            && screen.contains(" up ")
            && tmux.rate().is_some_and(|r| r != "0")
    });
    let first = tmux.rate().unwrap();
    wait_until("the rate moves", || tmux.rate().is_some_and(|r| r != first));

    nats.stop();
    wait_until("the stopped sink is shown down", || {
        tmux.screen()
            .lines()
            .any(|line| line.contains("nats") && line.contains("DOWN"))
    });

    // A smaller window is drawn again, not broken.
    tmux.run(&["resize-window", "-t", "top", "-x", "72", "-y", "20"]);
    wait_until("top redrawn at the new size", || {
        let screen = tmux.screen();
        screen.lines().all(|line| line.chars().count() <= 72)
            && screen.contains("fishjam-bridge top")
            && screen.contains("sinks")
    });

    tmux.run(&["send-keys", "-t", "top", "q"]);
    wait_until("top quits and the shell is back", || {
        tmux.screen().contains("top-exited-0")
    });
    assert_eq!(
        tmux.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "0",
        "the terminal left the alternate screen"
    );
    drop(load);
}
