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
    /// With [`LoadBalancer::probe_readiness`]: the last `/ready` status of each backend
    /// (`None`: no answer) and every change seen.
    probe: Mutex<Option<Probe>>,
}

#[derive(Debug, Default)]
struct Probe {
    last: HashMap<SocketAddr, Option<u16>>,
    log: Vec<ProbeRecord>,
}

/// One change of a backend's `/ready` answer seen by the readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// The backend.
    pub backend: SocketAddr,
    /// When the probe saw it.
    pub at: std::time::Instant,
    /// The status (`None`: no HTTP answer, e.g. the port refuses connections).
    pub status: Option<u16>,
    /// The body (the reason, when unready).
    pub body: String,
}

impl Shared {
    fn backends(&self) -> MutexGuard<'_, Vec<SocketAddr>> {
        self.backends
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn routed(&self) -> MutexGuard<'_, HashMap<SocketAddr, u64>> {
        self.routed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn probe(&self) -> MutexGuard<'_, Option<Probe>> {
        self.probe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The backends to try: with probing, those whose last `/ready` was 200 (all of them
    /// when none is, as balancers fail open).
    fn eligible(&self) -> Vec<SocketAddr> {
        let backends = self.backends().clone();
        let probe = self.probe();
        let Some(probe) = probe.as_ref() else {
            return backends;
        };
        let ready: Vec<SocketAddr> = backends
            .iter()
            .copied()
            .filter(|b| probe.last.get(b).copied().flatten() == Some(200))
            .collect();
        if ready.is_empty() {
            backends
        } else {
            ready
        }
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
    probe_task: Mutex<Option<JoinHandle<()>>>,
}

impl LoadBalancer {
    /// Listen on `127.0.0.1:0` and spread connections over `backends` in turn.
    pub async fn start(backends: Vec<SocketAddr>) -> Result<LoadBalancer, TestkitError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| TestkitError::io("bind the load balancer listener", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| TestkitError::io("read the load balancer address", e))?;
        let shared = Arc::new(Shared {
            backends: Mutex::new(backends),
            ..Shared::default()
        });
        let (state, _) = watch::channel(LinkState::Open);
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), state.clone()));
        Ok(LoadBalancer {
            addr,
            shared,
            state,
            accept_task,
            probe_task: Mutex::new(None),
        })
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

    /// Probe every backend's `GET /ready` each `interval` (like a Kubernetes readiness probe
    /// behind a Service) and route new connections only to backends that answered 200 last
    /// (to every backend when none did). Changes are kept for [`probe_log`](Self::probe_log).
    /// Calling it again restarts the probe with the new interval.
    pub fn probe_readiness(&self, interval: Duration) {
        {
            let mut probe = self.shared.probe();
            if probe.is_none() {
                *probe = Some(Probe::default());
            }
        }
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            let Ok(http) = reqwest::Client::builder()
                .timeout(interval.max(Duration::from_millis(200)))
                .build()
            else {
                return;
            };
            loop {
                let backends = shared.backends().clone();
                for backend in backends {
                    let (status, body) =
                        match http.get(format!("http://{backend}/ready")).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                (Some(status), r.text().await.unwrap_or_default())
                            }
                            Err(_) => (None, String::new()),
                        };
                    if let Some(probe) = shared.probe().as_mut() {
                        if probe.last.get(&backend) != Some(&status) {
                            probe.last.insert(backend, status);
                            probe.log.push(ProbeRecord {
                                backend,
                                at: std::time::Instant::now(),
                                status,
                                body,
                            });
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        let mut slot = self
            .probe_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(old) = slot.replace(task) {
            old.abort();
        }
    }

    /// Every change of a backend's `/ready` answer the probe saw, in order.
    pub fn probe_log(&self) -> Vec<ProbeRecord> {
        self.shared
            .probe()
            .as_ref()
            .map(|p| p.log.clone())
            .unwrap_or_default()
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.state.send_replace(LinkState::Closed);
        self.accept_task.abort();
        if let Some(task) = self
            .probe_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
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
    let backends = shared.eligible();
    if backends.is_empty() {
        return None;
    }
    let start = shared.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..backends.len() {
        let backend = backends[(start + offset) % backends.len()];
        if let Ok(Ok(stream)) =
            tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(backend)).await
        {
            *shared.routed().entry(backend).or_insert(0) += 1;
            return Some(stream);
        }
    }
    None
}
