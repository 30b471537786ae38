//! The node: everything a running Sockudo instance shares between its connections and its
//! HTTP API.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::RandomState;
use dashmap::DashMap;
use sockudo_core::adapter::{Adapter, Broadcast, BroadcastSink};
use sockudo_core::app::AppManager;
use sockudo_core::cache::Cache;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::NodeSettings;
use crate::namespace::Namespace;

/// Shared state of one node. Cheap to clone through `Arc`.
pub struct Node {
    pub settings: NodeSettings,
    pub apps: Arc<dyn AppManager>,
    pub adapter: Arc<dyn Adapter>,
    pub cache: Arc<dyn Cache>,
    namespaces: DashMap<Arc<str>, Arc<Namespace>, RandomState>,
    draining: AtomicBool,
    /// Cancelled when the node starts draining: connection tasks watch it.
    drain: CancellationToken,
    socket_seq: AtomicU64,
    socket_prefix: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.settings.node_id).finish_non_exhaustive()
    }
}

impl Node {
    /// Build a node and attach its local fanout to the adapter.
    pub fn new(settings: NodeSettings, apps: Arc<dyn AppManager>, adapter: Arc<dyn Adapter>, cache: Arc<dyn Cache>) -> Arc<Self> {
        let node = Arc::new(Node {
            settings,
            apps,
            adapter,
            cache,
            namespaces: DashMap::default(),
            draining: AtomicBool::new(false),
            drain: CancellationToken::new(),
            socket_seq: AtomicU64::new(rand::random::<u32>() as u64),
            socket_prefix: rand::random::<u32>() as u64,
        });
        node.adapter.attach(Arc::new(LocalFanout(Arc::downgrade(&node))));
        node
    }

    pub fn namespace(&self, app_id: &str) -> Arc<Namespace> {
        if let Some(ns) = self.namespaces.get(app_id) {
            return Arc::clone(&ns);
        }
        Arc::clone(&self.namespaces.entry(Arc::from(app_id)).or_insert_with(|| Arc::new(Namespace::new(Arc::from(app_id)))))
    }

    pub fn existing_namespace(&self, app_id: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(app_id).map(|n| Arc::clone(&n))
    }

    /// A fresh socket id: two decimal integers joined by a dot, unique on this node and
    /// unguessable enough across nodes (random prefix per process).
    pub fn next_socket_id(&self) -> Arc<str> {
        let n = self.socket_seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}.{}", self.socket_prefix, n))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop accepting connections; connection tasks see [`Node::drained`] fire.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ask every connection to close with 4200.
    pub fn close_all(&self) {
        self.drain.cancel();
    }

    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    pub fn total_connections(&self) -> usize {
        self.namespaces.iter().map(|n| n.connection_count()).sum()
    }

    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.cache_channel_ttl)
    }
}

/// The node's sink: delivers adapter broadcasts to local subscribers.
struct LocalFanout(std::sync::Weak<Node>);

impl BroadcastSink for LocalFanout {
    fn deliver(&self, msg: &Broadcast) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(ns) = node.existing_namespace(&msg.app_id) else { return };
        // Validate UTF-8 once per broadcast; every recipient then shares the same bytes.
        let Ok(frame) = Utf8Bytes::try_from(msg.frame.clone()) else {
            tracing::warn!(channel = %msg.channel, "dropping broadcast that is not UTF-8");
            return;
        };
        ns.fanout(&msg.channel, &frame, msg.except_socket.as_deref());
    }
}
