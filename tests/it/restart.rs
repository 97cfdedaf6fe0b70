//! A restart under load that refuses no connection: the test holds the
//! listening sockets, as systemd's socket units do, and hands them to each
//! bridge it starts (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), so that
//! while one bridge drains and the next starts, connections wait in the
//! kernel's backlog. Every notification Fishjam got a 2xx for is delivered.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// Starts `run` with `webhook` and `admin` as descriptors 3 and 4, named.
fn activated(config: &Path, state: &Path, webhook: RawFd, admin: RawFd) -> Child {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        // $$ is the shell's pid, which exec hands to the bridge.
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=webhook:admin exec "$0" run --config "$1""#)
        .arg(BIN)
        .arg(config)
        .env("STATE_DIRECTORY", state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; between fork and exec the child
    // only moves the two descriptors to 3 and 4 (dup2 clears close-on-exec
    // on the copies).
    unsafe {
        command.pre_exec(move || {
            for (from, to) in [(webhook, 3), (admin, 4)] {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// A copy of `fd` above the descriptors a child is handed, so that moving
/// it to 3 or 4 never lands on itself.
fn high(fd: RawFd) -> RawFd {
    // SAFETY: duplicating a descriptor this test owns; the copy is closed
    // on exec and lives as long as the test.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(copy >= 100, "{}", std::io::Error::last_os_error());
    copy
}

#[test]
fn a_restart_with_handed_over_sockets_refuses_no_webhook() {
    let webhook = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let (webhook_fd, admin_fd) = (high(webhook.as_raw_fd()), high(admin.as_raw_fd()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    // The listen addresses are not used: the sockets are handed over.
    let conf = Conf::new().sink(Sink::file("{dir}/events.jsonl"));
    std::fs::write(&config, conf.text_in(dir.path())).unwrap();
    let state = dir.path().join("state");
    let ready = format!("http://{}/readyz", admin.local_addr().unwrap());
    let wait_ready = || {
        wait_until("the bridge ready", || {
            reqwest::blocking::get(&ready).is_ok_and(|r| r.status() == 200)
        })
    };
    let mut bridge = activated(&config, &state, webhook_fd, admin_fd);
    wait_ready();
    let url = format!("http://{}/webhook", webhook.local_addr().unwrap());
    let (seed, count) = (91, 3000);
    let load = webhook_simulator(&url, seed, count, 5, &["--rate", "400", "--retries", "20"]);
    let file = dir.path().join("events.jsonl");
    wait_until("events stored before the restart", || {
        read_events(&file).len() >= 300
    });
    // A restart: the old bridge drains and exits, the new one starts on the
    // same sockets.
    succeed(Command::new("kill").args(["-TERM", &bridge.id().to_string()]));
    assert!(bridge.wait().unwrap().success());
    let mut bridge = Killed(activated(&config, &state, webhook_fd, admin_fd));
    let report = summary(load);
    assert_eq!(report["webhook_connections_refused"], 0, "{report}");
    assert_eq!(report["webhook_bodies_failed"], 0, "{report}");
    let wanted = expected(seed, 8, count);
    wait_until("every notification stored, each room in order", || {
        incomplete_or_out_of_order(&wanted, &by_key(&read_events(&file))).is_none()
    });
    assert!(bridge.0.try_wait().unwrap().is_none());
}
