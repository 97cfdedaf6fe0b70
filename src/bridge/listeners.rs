//! The admin and webhook listeners: bound before `start` returns, served
//! with the connection limits of `net::listener`, over TLS when configured.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

use super::Wiring;
use crate::admin;
use crate::admin::tap::Tap;
use crate::net::{listener, tls};
use crate::pipeline::admission::Admission;
use crate::pipeline::spool::Spool;
use crate::sources;

/// Binds and serves `/metrics`, `/healthz`, `/readyz`, `/status` and `/tap`,
/// when enabled. It outlives the drain, so metrics stay scrapable; it ends
/// with the process.
pub(super) async fn admin(
    wiring: &Wiring,
    metrics: PrometheusHandle,
    tap: Option<Tap>,
    refresh: admin::Refresh,
) -> anyhow::Result<Option<SocketAddr>> {
    let config = &wiring.config.admin;
    if !config.enabled {
        return Ok(None);
    }
    let listener = bind(wiring, "admin", 1, config.listen).await?;
    let addr = listener.local_addr()?;
    let token = config.token.as_ref();
    let router = admin::router(metrics, wiring.readiness.clone(), tap, refresh, token);
    let tls = acceptor("admin", &config.tls)?;
    // Scrapes and probes: a few connections, never a flood.
    let limits = listener::Limits {
        max_connections: 256,
        idle_timeout: wiring.config.webhook.idle_timeout,
        handshake_timeout: std::time::Duration::from_secs(10),
    };
    tokio::spawn(async move {
        let forever = std::future::pending::<()>();
        if let Err(error) = serve(listener, tls, limits, "admin", router, forever).await {
            tracing::error!(error = %error, "admin listener failed");
        }
    });
    tracing::info!(%addr, https = config.tls.is_some(), "admin listening");
    Ok(Some(addr))
}

/// Binds and serves the webhook route, when enabled, until shutdown; a
/// listener that fails stops the bridge.
pub(super) async fn webhook(
    wiring: &Wiring,
    admission: &Admission,
    spool: &Option<Arc<Spool>>,
) -> anyhow::Result<Option<SocketAddr>> {
    let config = &wiring.config.webhook;
    if !config.enabled {
        return Ok(None);
    }
    if config.secret.is_none() {
        tracing::warn!(
            "webhook.secret is not set: webhooks are accepted unsigned; set it to the secret from the Fishjam dashboard"
        );
    }
    let listener = bind(wiring, "webhook", 0, config.listen).await?;
    let addr = listener.local_addr()?;
    let router = sources::webhook::router(
        config,
        wiring.fishjam_id.clone(),
        admission.clone(),
        spool
            .clone()
            .map(|spool| (spool, wiring.config.spool.engage_after)),
    );
    let tls = acceptor("webhook", &config.tls)?;
    let limits = listener::Limits {
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
        handshake_timeout: config.request_timeout,
    };
    let stop = wiring.shutdown.clone();
    let failed = wiring.shutdown.clone();
    wiring.tasks.spawn(async move {
        let stopped = stop.cancelled_owned();
        let served = serve(listener, tls, limits, "webhook", router, stopped).await;
        if let Err(error) = served {
            tracing::error!(error = %error, "webhook listener failed");
            failed.cancel();
        }
        tracing::info!("webhook listener stopped");
    });
    tracing::info!(
        %addr,
        path = %config.path,
        https = config.tls.is_some(),
        "webhook listening"
    );
    Ok(Some(addr))
}

/// The listener `name` (`webhook`, `admin`): the socket a supervisor handed
/// over for it, or else one bound to `listen`.
async fn bind(
    wiring: &Wiring,
    name: &str,
    index: usize,
    listen: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    let inherited = wiring
        .inherited
        .lock()
        .expect("never poisoned")
        .take(name, index);
    if let Some(socket) = inherited {
        socket.set_nonblocking(true)?;
        tracing::info!(
            listener = name,
            "listening on a socket the supervisor handed over"
        );
        return Ok(tokio::net::TcpListener::from_std(socket)?);
    }
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot bind {name}.listen {listen}"))
}

fn acceptor(
    listener: &'static str,
    tls: &Option<tls::ServerTlsConfig>,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    tls.as_ref()
        .map(|tls| {
            tls.acceptor_for(listener)
                .with_context(|| format!("{listener}.tls"))
        })
        .transpose()
}

/// Serves `router` on `listener` with `limits`, over TLS when there is an
/// acceptor, until `stop` completes.
async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: listener::Limits,
    name: &'static str,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener::Listener::new(listener, tls, limits, name)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}
