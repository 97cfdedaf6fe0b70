//! SIGTERM and SIGINT as a cancelled token: how the servers of this crate
//! (the bridge's `run` and `demo`, the simulated Fishjam) learn to stop.
//! Here, below both, so that they stop alike.

use tokio_util::sync::CancellationToken;

/// How many SIGHUPs arrived: what reads files at start-up (the webhook
/// secret's file) reads them again when it moves. A count, not a wake-up,
/// so that one arriving while a reader is busy is not lost.
static HANGUPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RELOAD: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Completes once more SIGHUPs than `seen` arrived; returns their count.
pub async fn reload(seen: u64) -> u64 {
    loop {
        let notified = RELOAD.notified();
        let now = HANGUPS.load(std::sync::atomic::Ordering::Acquire);
        if now != seen {
            return now;
        }
        notified.await;
    }
}

/// SIGHUPs so far.
pub fn hangups() -> u64 {
    HANGUPS.load(std::sync::atomic::Ordering::Acquire)
}

/// Cancels `token` on SIGTERM or SIGINT; on SIGHUP, which would end the
/// process otherwise, wakes `reload`.
pub fn cancel_on_signal(token: CancellationToken) {
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: secret files are read again");
                HANGUPS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                RELOAD.notify_waiters();
            }
        });
    }
    // Both handlers are in place when this returns, not when the task first
    // runs: a SIGTERM that comes right after start-up must not find the
    // default action, which ends the process without its drain.
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let wait = |signal: Option<Signal>| async move {
        match signal {
            Some(mut signal) => {
                signal.recv().await;
            }
            // A handler that cannot be installed: the other one still stops.
            None => std::future::pending().await,
        }
    };
    let interrupt = wait(signal(SignalKind::interrupt()).ok());
    let terminate = wait(signal(SignalKind::terminate()).ok());
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = terminate => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
