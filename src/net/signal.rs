//! SIGTERM and SIGINT as a cancelled token: how the servers of this crate
//! (the bridge's `run` and `demo`, the simulated Fishjam) learn to stop.
//! Here, below both, so that they stop alike.

use tokio_util::sync::CancellationToken;

/// Woken on every SIGHUP: what reads files at start-up (the webhook
/// secret's file) reads them again.
static RELOAD: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Completes at the next SIGHUP.
pub async fn reload() {
    RELOAD.notified().await;
}

/// Cancels `token` on SIGTERM or SIGINT; on SIGHUP, which would end the
/// process otherwise, wakes `reload`.
pub fn cancel_on_signal(token: CancellationToken) {
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: secret files are read again");
                RELOAD.notify_waiters();
            }
        });
    }
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                // Without a SIGTERM handler, Ctrl-C alone stops.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = terminate => tracing::info!("SIGTERM received"),
        }
        token.cancel();
    });
}
