//! The bridge's own listeners (webhook, admin, and the simulator's): a cap on
//! open connections, an idle timeout on each, and TLS when configured.
//!
//! At the cap the listener stops accepting, so further clients wait in the
//! kernel's backlog instead of costing descriptors and memory. A connection
//! that moves no byte either way for the idle timeout is closed, so idle or
//! abandoned connections give their place back. TLS handshakes run
//! concurrently, each within a timeout, so a client that stalls its
//! handshake holds only its own connection, never the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use crate::telemetry;

/// What bounds a listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// Connections accepted (and through their handshake), waiting for the HTTP server.
const READY_CONNECTIONS: usize = 64;

/// A connection as the HTTP server gets it.
pub type Connection = Either<Guarded, TlsStream<Guarded>>;

/// An `axum::serve` listener with the limits, and TLS with an acceptor.
pub struct Listener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(Connection, SocketAddr)>,
}

impl Listener {
    /// Starts accepting on `tcp`; `name` labels the metrics.
    pub fn new(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        limits: Limits,
        name: &'static str,
    ) -> std::io::Result<Listener> {
        let addr = tcp.local_addr()?;
        telemetry::listener_registered(name, limits.max_connections);
        let (sender, ready) = mpsc::channel(READY_CONNECTIONS);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        tokio::spawn(async move {
            loop {
                // The server is gone: stop accepting.
                let accepted = tokio::select! {
                    accepted = accept(&tcp, &slots) => accepted,
                    _ = sender.closed() => return,
                };
                let Some((stream, peer, slot)) = accepted else {
                    continue;
                };
                let stream = Guarded::new(stream, slot, limits.idle_timeout, name);
                match &tls {
                    None => {
                        if sender.send((Either::Left(stream), peer)).await.is_err() {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        let sender = sender.clone();
                        let timeout = limits.handshake_timeout;
                        tokio::spawn(async move {
                            match tokio::time::timeout(timeout, handshake).await {
                                Ok(Ok(tls)) => {
                                    let _ = sender.send((Either::Right(tls), peer)).await;
                                }
                                Ok(Err(error)) => {
                                    let reason = crate::net::tls::handshake_failure(&error);
                                    telemetry::tls_handshake_failed(name, reason);
                                    tracing::debug!(listener = name, %peer, error = %error, "TLS handshake failed");
                                }
                                Err(_) => {
                                    telemetry::tls_handshake_failed(name, "timeout");
                                    tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(Listener { addr, ready })
    }
}

/// Waits for a free slot, then for a connection. `None` after an accept
/// error, which has been logged and waited out.
async fn accept(
    tcp: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    match tcp.accept().await {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer, slot))
        }
        Err(error) => {
            // Out of descriptors and the like: wait instead of spinning.
            tracing::warn!(error = %error, "accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends once this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A TCP connection that holds one of its listener's slots until it is
/// dropped, and fails its next read once no byte moved for the idle timeout.
pub struct Guarded {
    stream: TcpStream,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    listener: &'static str,
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        idle_timeout: Duration,
        listener: &'static str,
    ) -> Guarded {
        telemetry::listener_connection(listener, 1.0);
        Guarded {
            stream,
            idle_timeout,
            deadline: Box::pin(tokio::time::sleep(idle_timeout)),
            listener,
            _slot: slot,
        }
    }

    fn moved(&mut self) {
        self.deadline
            .as_mut()
            .reset(Instant::now() + self.idle_timeout);
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        telemetry::listener_connection(self.listener, -1.0);
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > filled {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    telemetry::listener_idle_closed(self.listener);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection idle",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
