//! [`TcpProxy`]: a loopback TCP proxy for fault injection.
//!
//! Point one client (say, one node's Redis URL) at the proxy instead of the real server, then
//! [`cut`](TcpProxy::cut) the link and [`restore`](TcpProxy::restore) it. Cutting drops every
//! live connection at once and refuses new ones (accepted, then closed immediately), which is
//! what a client sees when the network between it and the server fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::TestkitError;

/// The link state every connection task watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkState {
    Open,
    Cut,
    /// The owner was dropped: everything ends.
    Closed,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicUsize,
}

/// A TCP proxy from a loopback port to one upstream address. Stops (and drops every
/// connection) when dropped. Must be created inside a tokio runtime, which runs its tasks.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<LinkState>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on `127.0.0.1:0` and forward every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<TcpProxy, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TestkitError::io("bind the proxy listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("read the proxy address", e))?;
        let (state, _) = watch::channel(LinkState::Open);
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            upstream,
            state.clone(),
            Arc::clone(&counters),
        ));
        Ok(TcpProxy {
            addr,
            upstream,
            state,
            counters,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections go.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `redis://127.0.0.1:P` for the proxy's port: handy when the upstream is Redis.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Drop every live connection and refuse new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.send_replace(LinkState::Cut);
    }

    /// Accept and forward connections again.
    pub fn restore(&self) {
        self.state.send_replace(LinkState::Open);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        *self.state.borrow() == LinkState::Cut
    }

    /// Connections accepted and forwarded since start.
    pub fn connections_accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections accepted and closed at once because the link was cut (or upstream refused).
    pub fn connections_refused(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// Connections being forwarded right now.
    pub fn connections_active(&self) -> usize {
        self.counters.active.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.send_replace(LinkState::Closed);
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Sender<LinkState>,
    counters: Arc<Counters>,
) {
    loop {
        let (client, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if *state.borrow() != LinkState::Open {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let rx = state.subscribe();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            counters.active.fetch_add(1, Ordering::Relaxed);
            splice(client, server, rx).await;
            counters.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Copy bytes both ways until either side closes or the link leaves [`LinkState::Open`];
/// then drop both sockets.
pub(crate) async fn splice(
    mut a: TcpStream,
    mut b: TcpStream,
    mut state: watch::Receiver<LinkState>,
) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        _ = state.wait_for(|s| *s != LinkState::Open) => {}
    }
}
