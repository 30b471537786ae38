//! The node: everything a running Sockudo instance shares between its connections and its
//! HTTP API.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::RandomState;
use dashmap::DashMap;
use sockudo_core::adapter::{Adapter, Broadcast, ClusterAnswer, ClusterQuery, ControlMessage, NodeHandler, RemovedMember};
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::{ErrorCode, OutboundFrame};
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
        node.adapter.attach(Arc::new(LocalHandler(Arc::downgrade(&node))));
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

/// The node as its adapter sees it: local fanout, local answers, local commands.
struct LocalHandler(std::sync::Weak<Node>);

impl NodeHandler for LocalHandler {
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

    fn control(&self, msg: &ControlMessage) {
        let Some(node) = self.0.upgrade() else { return };
        match msg {
            ControlMessage::TerminateUser { app_id, user_id } => {
                if let Some(ns) = node.existing_namespace(app_id) {
                    for conn in ns.user_connections(user_id) {
                        conn.close(ErrorCode::Unauthorized);
                    }
                }
            }
        }
    }

    fn answer(&self, query: &ClusterQuery) -> ClusterAnswer {
        let Some(node) = self.0.upgrade() else { return ClusterAnswer::Count { count: 0 } };
        match query {
            ClusterQuery::SubscriptionCount { app_id, channel } => {
                let count = node.existing_namespace(app_id).map_or(0, |ns| ns.subscription_count(channel)) as u64;
                ClusterAnswer::Count { count }
            }
            ClusterQuery::Channels { app_id, prefix } => {
                let channels = node.existing_namespace(app_id).map(|ns| ns.channels(prefix.as_deref())).unwrap_or_default();
                ClusterAnswer::Channels { channels }
            }
            ClusterQuery::ConnectionCount { app_id } => {
                let count = node.existing_namespace(app_id).map_or(0, |ns| ns.reserved_connections()) as u64;
                ClusterAnswer::Count { count }
            }
        }
    }

    fn members_removed(&self, removed: Vec<RemovedMember>) {
        let Some(node) = self.0.upgrade() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { node.announce_removed(removed).await });
        }
    }
}

impl Node {
    /// Tell every subscriber that these members left (their last node went away).
    pub async fn announce_removed(&self, removed: Vec<RemovedMember>) {
        for m in removed {
            let frame = OutboundFrame::member_removed(Family::Pusher, &m.channel, &m.user_id);
            let msg = Broadcast { app_id: Arc::from(m.app_id.as_str()), channel: Arc::from(m.channel.as_str()), frame: frame.into(), except_socket: None };
            if let Err(e) = self.adapter.publish(msg).await {
                tracing::warn!(error = %e, channel = %m.channel, "member_removed broadcast failed");
            }
        }
    }
}
