//! [`LoadBalancer`]: a round-robin TCP load balancer in front of a cluster.
//!
//! It splices bytes (`tokio::io::copy_bidirectional`), so WebSocket upgrades and the HTTP API
//! pass through untouched. A backend whose connect fails (a killed node) is skipped and the
//! next one tried, like a balancer with instant health checks; live connections stay pinned to
//! the backend they were opened on until either side closes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::{splice, LinkState};
use crate::TestkitError;

/// How long one backend gets to accept before the next is tried.
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Shared {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// Connections routed to each backend since start.
    routed: Mutex<HashMap<SocketAddr, u64>>,
}

impl Shared {
    fn backends(&self) -> MutexGuard<'_, Vec<SocketAddr>> {
        self.backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn routed(&self) -> MutexGuard<'_, HashMap<SocketAddr, u64>> {
        self.routed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A round-robin TCP load balancer on a loopback port. Stops (and drops every connection)
/// when dropped. Must be created inside a tokio runtime, which runs its tasks.
#[derive(Debug)]
pub struct LoadBalancer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
    accept_task: JoinHandle<()>,
}

impl LoadBalancer {
    /// Listen on `127.0.0.1:0` and spread connections over `backends` in turn.
    pub async fn start(backends: Vec<SocketAddr>) -> Result<LoadBalancer, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(|e| TestkitError::io("bind the load balancer listener", e))?;
        let addr = listener.local_addr().map_err(|e| TestkitError::io("read the load balancer address", e))?;
        let shared = Arc::new(Shared { backends: Mutex::new(backends), ..Shared::default() });
        let (state, _) = watch::channel(LinkState::Open);
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), state.clone()));
        Ok(LoadBalancer { addr, shared, state, accept_task })
    }

    /// The balancer's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:P`: the base URL for the HTTP API through the balancer.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Pusher WebSocket URL of app `key` through the balancer.
    pub fn ws_url(&self, key: &str) -> String {
        crate::ws_url(self.addr, key)
    }

    /// Replace the backend list; live connections are not touched.
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.shared.backends() = backends;
    }

    /// The current backend list.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared.backends().clone()
    }

    /// How many connections went to each backend since start.
    pub fn routed(&self) -> HashMap<SocketAddr, u64> {
        self.shared.routed().clone()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.state.send_replace(LinkState::Closed);
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, state: watch::Sender<LinkState>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::warn!(error = %e, "load balancer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let rx = state.subscribe();
        tokio::spawn(async move {
            match connect_backend(&shared).await {
                Some(backend) => splice(client, backend, rx).await,
                None => tracing::debug!("load balancer: no backend accepted the connection"),
            }
        });
    }
}

/// Try every backend once, starting at the next round-robin position.
async fn connect_backend(shared: &Shared) -> Option<TcpStream> {
    let backends = shared.backends().clone();
    if backends.is_empty() {
        return None;
    }
    let start = shared.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..backends.len() {
        let backend = backends[(start + offset) % backends.len()];
        if let Ok(Ok(stream)) = tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend)).await {
            *shared.routed().entry(backend).or_insert(0) += 1;
            return Some(stream);
        }
    }
    None
}
