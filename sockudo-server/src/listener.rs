//! The node's HTTP/1 listener: accepts TCP connections and serves the router on them with
//! bounds a public endpoint needs, which `axum::serve` does not set.
//!
//! - **Header read timeout** ([`ListenerLimits::header_read_timeout`]): a connection that does
//!   not deliver a complete request head in time (a half-sent upgrade, an idle socket that
//!   never sends a request) is closed.
//! - **Header size** ([`ListenerLimits::max_header_bytes`]): a longer request head is answered
//!   `431 Request Header Fields Too Large` and the connection closed.
//! - **Pending handshakes** ([`ListenerLimits::max_pending`]): connections accepted but whose
//!   first request head has not arrived yet are counted; beyond the cap a new connection is
//!   closed at once (counted in `sockudo_connections_refused_total{code="pending_cap"}`), so
//!   slow or silent peers cannot hold every file descriptor.
//!
//! Upgraded WebSocket connections leave hyper (and these bounds) once the upgrade is done;
//! their own timeouts live in the connection task.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bounds of the listener (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Longest wait for a complete request head (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (default 16 KiB; hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Most connections waiting for their first request head at once (default 1,024).
    pub max_pending: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_pending: 1024,
        }
    }
}

/// One connection's share of the count of connections that have not yet sent a complete
/// request head, given back once (first request, or the end).
#[derive(Debug)]
struct PendingSlot {
    pending: Arc<AtomicUsize>,
    held: AtomicBool,
}

impl PendingSlot {
    fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    fn release(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Serve `app` on `listener` until `stop` is cancelled; then stop accepting, let every HTTP
/// connection finish its request in flight, and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    // HTTP/1 only: HTTP/2 connections (prior knowledge) would have no idle bound here.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let builder = Arc::new(builder);
    let pending = Arc::new(AtomicUsize::new(0));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if pending.fetch_add(1, Ordering::AcqRel) >= limits.max_pending {
            pending.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "code" => "pending_cap")
                .increment(1);
            drop(stream);
            continue;
        }
        let slot = Arc::new(PendingSlot {
            pending: Arc::clone(&pending),
            held: AtomicBool::new(true),
        });
        tracker.spawn(serve_one(
            Arc::clone(&builder),
            stream,
            peer,
            app.clone(),
            slot,
            limits.header_read_timeout,
            stop.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_one(
    builder: Arc<Builder<TokioExecutor>>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Arc<PendingSlot>,
    first_request_within: Duration,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let request_slot = Arc::clone(&slot);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        request_slot.release();
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // hyper's header timer starts with the first byte: a socket that sends nothing at all is
    // closed by this deadline instead.
    let first_request = tokio::time::sleep(first_request_within);
    tokio::pin!(first_request);
    let (mut armed, mut stopping) = (true, false);
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut first_request, if armed => {
                armed = false;
                if slot.is_held() {
                    tracing::debug!(%peer, "no request head in time: closing");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
    drop(slot);
}
