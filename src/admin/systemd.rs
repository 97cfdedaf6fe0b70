//! The service manager's notification protocol (`sd_notify`): `READY=1` once
//! the bridge is ready as `/readyz` says, `STATUS=` with what it waits for,
//! `WATCHDOG=1` at half the interval systemd asks for, `STOPPING=1` when the
//! drain begins. Without `NOTIFY_SOCKET` (not under systemd `Type=notify`)
//! nothing is sent.
//!
//! The protocol is one datagram per message on a Unix socket, so it is
//! written here rather than pulled in as a dependency.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;

/// Where the service manager listens, from `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: PathBuf,
}

impl Notifier {
    /// The notifier of this process, when it runs under a service manager
    /// that asked for notifications.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        if socket.is_empty() {
            return None;
        }
        Some(Notifier {
            socket: PathBuf::from(socket),
        })
    }

    /// Sends one message, such as `READY=1`. Failures are logged: the
    /// bridge keeps running when the service manager is gone.
    pub fn send(&self, message: &str) {
        if let Err(error) = self.try_send(message) {
            tracing::warn!(socket = %self.socket.display(), error = %error, "cannot notify the service manager");
        }
    }

    fn try_send(&self, message: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        let path = self.socket.as_os_str().as_encoded_bytes();
        // A leading '@' names a socket in the abstract namespace.
        if let Some(name) = path.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message.as_bytes(), &address)?;
        } else {
            socket.send_to(message.as_bytes(), &self.socket)?;
        }
        Ok(())
    }
}

/// The watchdog interval systemd set for this process (`WATCHDOG_USEC`,
/// for this pid when `WATCHDOG_PID` is set).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How often readiness is looked at for `READY=1` and `STATUS=`.
const POLL: Duration = Duration::from_millis(200);

/// Runs until shutdown: reports readiness changes, pings the watchdog, and
/// says `STOPPING=1` once shutdown begins.
pub async fn run(notifier: Notifier, readiness: Readiness, shutdown: CancellationToken) {
    let watchdog = watchdog_interval();
    if let Some(interval) = watchdog {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog on"
        );
    }
    let mut ping = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |i| i / 2));
    let mut poll = tokio::time::interval(POLL);
    let mut ready_sent = false;
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                notifier.send("STOPPING=1\nSTATUS=draining in-flight events");
                return;
            }
            _ = ping.tick(), if watchdog.is_some() => notifier.send("WATCHDOG=1"),
            _ = poll.tick() => {
                let waiting = readiness.waiting_for();
                let status = if waiting.is_empty() {
                    "running".to_owned()
                } else {
                    format!("waiting for: {}", waiting.join(", "))
                };
                // Ready as /readyz is (a sink may still be connecting while
                // the spool takes bodies); the status names what is not up.
                if readiness.is_ready() && !ready_sent {
                    notifier.send(&format!("READY=1\nSTATUS={status}"));
                    ready_sent = true;
                    last_status = status;
                } else if status != last_status {
                    notifier.send(&format!("STATUS={status}"));
                    last_status = status;
                }
            }
        }
    }
}
