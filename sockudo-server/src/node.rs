//! The node: everything a running Sockudo instance shares between its connections and its
//! HTTP API.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::RandomState;
use dashmap::DashMap;
use sockudo_core::adapter::{
    Adapter, Broadcast, ClusterAnswer, ClusterQuery, ControlMessage, MemberEvent, NodeHandler,
    RemovedMember,
};
use sockudo_core::app::{AppManager, AppStore};
use sockudo_core::cache::Cache;
use sockudo_core::history::HistoryStore;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::{ErrorCode, OutboundFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::NodeSettings;
use crate::dedup::RecentIds;
use crate::hot::HotLimits;
use crate::namespace::{Delivery, MemberFanout, Namespace, Positioned};

/// Shared state of one node. Cheap to clone through `Arc`.
pub struct Node {
    /// The resolved settings the node runs with.
    pub settings: NodeSettings,
    /// Where apps come from.
    pub apps: Arc<dyn AppManager>,
    /// Cross-node fanout, presence and cluster queries.
    pub adapter: Arc<dyn Adapter>,
    /// The shared cache.
    pub cache: Arc<dyn Cache>,
    namespaces: DashMap<Arc<str>, Arc<Namespace>, RandomState>,
    draining: AtomicBool,
    /// Set once the node is serving (listener accepting, adapter attached): `/ready` is 503
    /// ("starting") before.
    serving: AtomicBool,
    /// Cancelled when the node starts draining: connection tasks watch it.
    drain: CancellationToken,
    socket_seq: AtomicU64,
    socket_prefix: u64,
    /// V2 history (serials, streams, cold tier); `None` when `history.driver = "none"`.
    pub history: Option<Arc<dyn HistoryStore>>,
    /// Message ids recently delivered here (duplicate suppression).
    pub recent_ids: RecentIds,
    // webhooks: begin (set once by `build_node`; see `crate::webhooks`)
    webhooks: std::sync::OnceLock<Arc<crate::webhooks::Webhooks>>,
    /// Set once [`Node::installed_webhooks`] has waited in vain (see there).
    webhooks_waited: AtomicBool,
    // webhooks: end
    /// The cluster adapter's counters, when the adapter is one (metrics).
    cluster_stats: std::sync::OnceLock<ClusterStatsFn>,
    /// Member events dropped as stale (see `Namespace::fanout_member`).
    stale_member_events: AtomicU64,
    /// Writes to the shared app backend (SQL app managers; the admin API uses it).
    app_store: std::sync::OnceLock<Arc<dyn AppStore>>,
    /// Where the admin API listens, once it does.
    admin_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// Push notifications, when enabled (`PUSH_ENABLED`).
    #[cfg(feature = "push")]
    push: std::sync::OnceLock<Arc<crate::push::Push>>,
}

/// Reads the cluster adapter's counters.
pub type ClusterStatsFn =
    Arc<dyn Fn() -> Option<sockudo_core::adapter::ClusterStats> + Send + Sync>;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.settings.node_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Build a node and attach its local fanout to the adapter.
    pub fn new(
        settings: NodeSettings,
        apps: Arc<dyn AppManager>,
        adapter: Arc<dyn Adapter>,
        cache: Arc<dyn Cache>,
        history: Option<Arc<dyn HistoryStore>>,
    ) -> Arc<Self> {
        let recent_ids = RecentIds::new(
            Duration::from_secs(settings.message_dedup_secs),
            settings.message_dedup_capacity,
        );
        let node = Arc::new(Node {
            history,
            recent_ids,
            settings,
            apps,
            adapter,
            cache,
            namespaces: DashMap::default(),
            draining: AtomicBool::new(false),
            serving: AtomicBool::new(false),
            drain: CancellationToken::new(),
            socket_seq: AtomicU64::new(rand::random::<u32>() as u64),
            socket_prefix: rand::random::<u32>() as u64,
            webhooks: std::sync::OnceLock::new(), // webhooks
            webhooks_waited: AtomicBool::new(false),
            cluster_stats: std::sync::OnceLock::new(),
            stale_member_events: AtomicU64::new(0),
            app_store: std::sync::OnceLock::new(),
            admin_addr: std::sync::OnceLock::new(),
            #[cfg(feature = "push")]
            push: std::sync::OnceLock::new(),
        });
        node.adapter
            .attach(Arc::new(LocalHandler(Arc::downgrade(&node))));
        node
    }

    /// The node's push subsystem, when push is enabled.
    #[cfg(feature = "push")]
    pub fn push(&self) -> Option<&Arc<crate::push::Push>> {
        self.push.get()
    }

    /// Install the push subsystem (once; later calls are ignored and return false).
    #[cfg(feature = "push")]
    pub fn set_push(&self, push: Arc<crate::push::Push>) -> bool {
        self.push.set(push).is_ok()
    }

    // webhooks: begin
    /// The node's webhook pipeline, when one was installed.
    pub fn webhooks(&self) -> Option<&Arc<crate::webhooks::Webhooks>> {
        self.webhooks.get()
    }

    /// The webhook pipeline, waiting briefly for it: the removals of a previous incarnation
    /// of this node id are announced as the adapter attaches, which is before the pipeline
    /// is installed; reading it at once would lose their `channel_vacated` / `member_removed`.
    /// Waits at most once per node (1 s): a node that runs without a pipeline (an embedder
    /// that never installs one) must not pay the wait for every removed member.
    async fn installed_webhooks(&self) -> Option<&Arc<crate::webhooks::Webhooks>> {
        if self.webhooks_waited.load(Ordering::Acquire) {
            return self.webhooks();
        }
        for _ in 0..50 {
            if let Some(w) = self.webhooks() {
                return Some(w);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.webhooks_waited.store(true, Ordering::Release);
        self.webhooks()
    }

    /// Install the webhook pipeline (once; later calls are ignored and return false).
    pub fn set_webhooks(&self, webhooks: Arc<crate::webhooks::Webhooks>) -> bool {
        self.webhooks.set(webhooks).is_ok()
    }
    // webhooks: end

    /// The per-app state of `app_id` on this node (created on first use).
    pub fn namespace(&self, app_id: &str) -> Arc<Namespace> {
        if let Some(ns) = self.namespaces.get(app_id) {
            return Arc::clone(&ns);
        }
        let limits = HotLimits {
            messages: self.settings.hot_buffer_messages,
            max_age: Duration::from_secs(self.settings.hot_buffer_secs),
        };
        Arc::clone(
            &self
                .namespaces
                .entry(Arc::from(app_id))
                .or_insert_with(|| Arc::new(Namespace::new(Arc::from(app_id), limits))),
        )
    }

    /// Install the writable app backend (once; later calls return false).
    pub fn set_app_store(&self, store: Arc<dyn AppStore>) -> bool {
        self.app_store.set(store).is_ok()
    }

    /// The writable app backend, when apps come from a database.
    pub fn app_store(&self) -> Option<&Arc<dyn AppStore>> {
        self.app_store.get()
    }

    /// Record where the admin API listens (once).
    pub fn set_admin_addr(&self, addr: std::net::SocketAddr) -> bool {
        self.admin_addr.set(addr).is_ok()
    }

    /// Where the admin API listens, when it does.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin_addr.get().copied()
    }

    /// Ids of the apps that have state on this node.
    pub fn namespace_ids(&self) -> Vec<Arc<str>> {
        self.namespaces
            .iter()
            .map(|n| Arc::clone(n.key()))
            .collect()
    }

    /// The per-app state of `app_id`, if this node has any.
    pub fn existing_namespace(&self, app_id: &str) -> Option<Arc<Namespace>> {
        self.namespaces.get(app_id).map(|n| Arc::clone(&n))
    }

    /// A fresh socket id: two decimal integers joined by a dot, unique on this node and
    /// unguessable enough across nodes (random prefix per process).
    pub fn next_socket_id(&self) -> Arc<str> {
        let n = self.socket_seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}.{}", self.socket_prefix, n))
    }

    /// Whether the node has been marked serving ([`Node::mark_serving`]).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Mark the node as serving: [`crate::serve`] does this once its listener accepts. Apps
    /// that run the [`crate::router`] on their own server call it once they listen; until
    /// then `/ready` answers 503 "starting".
    pub fn mark_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// Install the reader of the cluster adapter's counters (once).
    pub fn set_cluster_stats(&self, f: ClusterStatsFn) -> bool {
        self.cluster_stats.set(f).is_ok()
    }

    /// The cluster adapter's counters, when the adapter is a cluster adapter.
    pub fn cluster_stats(&self) -> Option<sockudo_core::adapter::ClusterStats> {
        self.cluster_stats.get().and_then(|f| f())
    }

    /// Hot buffer size and evictions over every app on this node.
    pub fn hot_stats(&self) -> crate::hot::HotStats {
        let mut out = crate::hot::HotStats::default();
        for ns in self.namespaces.iter() {
            out += ns.hot.stats();
        }
        out
    }

    /// Drop the hot rings of channels idle beyond the ring's age bound, on every app; returns
    /// how many. Called periodically by the node's reaper (see `server::spawn_reaper`).
    pub fn reap_idle(&self) -> usize {
        self.namespaces.iter().map(|ns| ns.hot.reap()).sum()
    }

    /// Reclaim idle per-channel state ([`Node::reap_idle`]), shrink the maps it or a flood
    /// that ended left oversized, and give the freed memory back to the operating system
    /// when anything was. Called by the node's reaper.
    pub fn reclaim(&self) {
        let reaped = self.reap_idle();
        let shrunk = self
            .namespaces
            .iter()
            .fold(false, |any, ns| ns.shrink() | any);
        if reaped > 0 || shrunk {
            crate::memory::give_back();
        }
    }

    /// Hot rings held now, over every app (one per channel with recent messages).
    pub fn hot_rings(&self) -> usize {
        self.namespaces.iter().map(|ns| ns.hot.rings()).sum()
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop accepting connections; connection tasks see [`Node::drain_token`] fire.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ask every connection to close with 4200.
    pub fn close_all(&self) {
        self.drain.cancel();
    }

    /// A token cancelled when the node starts draining.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Open connections on this node.
    pub fn total_connections(&self) -> usize {
        self.namespaces.iter().map(|n| n.connection_count()).sum()
    }

    /// Presence member events this node dropped because a later decision about the same user
    /// had already been delivered here.
    pub fn stale_member_events(&self) -> u64 {
        self.stale_member_events.load(Ordering::Relaxed)
    }

    /// How long cache channels keep their last event.
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.cache_channel_ttl)
    }
}

fn record_fanout(app_id: &str, started: std::time::Instant, frames: usize) {
    metrics::histogram!(crate::metrics::FANOUT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::FANOUT_BROADCASTS, "app_id" => app_id.to_string())
        .increment(1);
    metrics::counter!(crate::metrics::FANOUT_FRAMES, "app_id" => app_id.to_string())
        .increment(frames as u64);
}

/// The node as its adapter sees it: local fanout, local answers, local commands.
struct LocalHandler(std::sync::Weak<Node>);

impl NodeHandler for LocalHandler {
    fn deliver(&self, msg: &Broadcast) {
        let Some(node) = self.0.upgrade() else { return };
        if let Some(mid) = &msg.message_id {
            if !node
                .recent_ids
                .first_delivery(&msg.app_id, &msg.channel, mid)
            {
                tracing::debug!(channel = %msg.channel, message_id = %mid, "duplicate delivery suppressed");
                return;
            }
        }
        let Some(ns) = node.existing_namespace(&msg.app_id) else {
            return;
        };
        let started = std::time::Instant::now();
        // Validate UTF-8 once per broadcast and variant; every recipient then shares the bytes.
        let (Ok(v1), Ok(v2)) = (
            Utf8Bytes::try_from(msg.frame.clone()),
            msg.frame_v2.clone().map(Utf8Bytes::try_from).transpose(),
        ) else {
            tracing::warn!(channel = %msg.channel, "dropping broadcast that is not UTF-8");
            return;
        };
        if let (Some(serial), Some(stream_id), Some(v2), None) =
            (msg.serial, &msg.stream_id, &v2, &msg.member)
        {
            // Positioned: through the channel's live sequence (order, repeats, gaps).
            let p = Positioned {
                v1,
                v2: v2.clone(),
                serial,
                stream_id: Arc::clone(stream_id),
                except: msg.except_socket.clone(),
            };
            let out = ns.deliver_positioned(&msg.channel, p);
            if out.unsubscribed && !node.adapter.routes_by_interest() {
                // Nobody here now, but a client may resume here later: keep the hot ring.
                // (Not with interest routing: this node does not receive the channel's
                // other publishes, so the ring would look complete while it is not.)
                ns.hot.push(&msg.channel, stream_id, serial, v2);
            }
            if out.gap_opened {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let channel = Arc::clone(&msg.channel);
                    rt.spawn(crate::live_gaps::repair(Arc::clone(&node), ns, channel));
                }
            }
            record_fanout(&msg.app_id, started, out.frames);
            return;
        }
        let d = Delivery {
            v1,
            v2,
            serial: msg.serial,
            stream_id: msg.stream_id.as_ref(),
            except: msg.except_socket.as_deref(),
        };
        let frames = match &msg.member {
            None => ns.fanout(&msg.channel, &d),
            Some(m) => match ns.fanout_member(&msg.channel, m, &d) {
                MemberFanout::Delivered(n) => n,
                MemberFanout::Stale => {
                    node.stale_member_events.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(channel = %msg.channel, user_id = %m.user_id, seq = m.seq, "stale member event dropped");
                    return;
                }
            },
        };
        record_fanout(&msg.app_id, started, frames);
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
            ControlMessage::AppChanged { app_id } => {
                // The re-read goes to the database: off the adapter's delivery path.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let app_id = app_id.clone();
                    rt.spawn(async move { node.apps.invalidate(&app_id).await });
                }
            }
        }
    }

    fn answer(&self, query: &ClusterQuery) -> ClusterAnswer {
        let Some(node) = self.0.upgrade() else {
            return ClusterAnswer::Count { count: 0 };
        };
        match query {
            ClusterQuery::SubscriptionCount { app_id, channel } => {
                let count =
                    node.existing_namespace(app_id)
                        .map_or(0, |ns| ns.subscription_count(channel)) as u64;
                ClusterAnswer::Count { count }
            }
            ClusterQuery::Channels { app_id, prefix } => {
                let channels = node
                    .existing_namespace(app_id)
                    .map(|ns| ns.channels(prefix.as_deref()))
                    .unwrap_or_default();
                ClusterAnswer::Channels { channels }
            }
            ClusterQuery::ConnectionCount { app_id } => {
                let count = node
                    .existing_namespace(app_id)
                    .map_or(0, |ns| ns.reserved_connections()) as u64;
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

    fn replicated_member_events(&self, events: Vec<sockudo_core::adapter::ReplicatedMemberEvent>) {
        let (announce, local): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.announce);
        // Decided elsewhere: our subscribers get it here too (the origin's broadcast may
        // have been missed by a subscription that started meanwhile); duplicates are
        // dropped by the member order and each subscriber's view.
        for e in &local {
            if !e.channel.starts_with(crate::webhooks::OCCUPANCY_PREFIX) {
                self.deliver(&member_broadcast(e));
            }
        }
        if announce.is_empty() {
            return;
        }
        let Some(node) = self.0.upgrade() else { return };
        // Decided here: re-additions (a removal elsewhere raced a join here) and removals
        // nobody announced (last leaves racing on two nodes).
        let (added, removed): (Vec<_>, Vec<_>) = announce
            .into_iter()
            .partition(|e| e.change == sockudo_core::adapter::MemberChange::Added);
        let removed: Vec<RemovedMember> = removed
            .into_iter()
            .map(|e| RemovedMember {
                app_id: e.app_id,
                channel: e.channel,
                user_id: e.user_id,
                seq: e.seq,
            })
            .collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                node.announce_readded(added).await;
                node.announce_removed(removed).await;
            });
        }
    }
}

/// The broadcast of a replicated store's member event.
fn member_broadcast(m: &sockudo_core::adapter::ReplicatedMemberEvent) -> Broadcast {
    use sockudo_core::adapter::MemberChange;
    let info = m
        .info
        .as_deref()
        .and_then(|s| serde_json::value::RawValue::from_string(s.to_owned()).ok());
    let frame = |f: Family| match m.change {
        MemberChange::Added => {
            OutboundFrame::member_added(f, &m.channel, &m.user_id, info.as_deref())
        }
        MemberChange::Removed => OutboundFrame::member_removed(f, &m.channel, &m.user_id),
    };
    let mut msg = Broadcast::plain(&m.app_id, &m.channel, frame(Family::Pusher).into(), None);
    msg.frame_v2 = Some(frame(Family::Sockudo).into());
    msg.member = Some(MemberEvent {
        user_id: Arc::from(m.user_id.as_str()),
        seq: m.seq,
        change: m.change,
    });
    msg
}

impl Node {
    /// Tell every subscriber that these members are back: another node announced them
    /// removed while this one still held them (replicated presence; see
    /// [`sockudo_core::adapter::ReplicatedMemberEvent`]).
    pub async fn announce_readded(&self, added: Vec<sockudo_core::adapter::ReplicatedMemberEvent>) {
        for m in added {
            if m.channel.starts_with(crate::webhooks::OCCUPANCY_PREFIX) {
                continue; // an occupancy share is no member
            }
            if let Err(e) = self.adapter.publish(member_broadcast(&m)).await {
                tracing::warn!(error = %e, channel = %m.channel, "member_added broadcast failed");
            }
            // webhooks: begin
            if let Some(w) = self.installed_webhooks().await {
                if let Ok(Some(app)) = self.apps.find_by_id(&m.app_id).await {
                    w.member_added(&app, &m.channel, &m.user_id).await;
                }
            }
            // webhooks: end
        }
    }

    /// Tell every subscriber that these members left (their last node went away).
    pub async fn announce_removed(&self, removed: Vec<RemovedMember>) {
        for m in removed {
            // A swept occupancy share (see `webhooks::OCCUPANCY_PREFIX`) is no member: the
            // channel may have been vacated with it.
            if let Some(channel) = m.channel.strip_prefix(crate::webhooks::OCCUPANCY_PREFIX) {
                if let (Ok(Some(app)), Some(w)) = (
                    self.apps.find_by_id(&m.app_id).await,
                    self.installed_webhooks().await,
                ) {
                    w.vacated(&app, channel).await;
                }
                continue;
            }
            let frame = OutboundFrame::member_removed(Family::Pusher, &m.channel, &m.user_id);
            let mut msg = Broadcast::plain(&m.app_id, &m.channel, frame.into(), None);
            msg.frame_v2 =
                Some(OutboundFrame::member_removed(Family::Sockudo, &m.channel, &m.user_id).into());
            msg.member = Some(MemberEvent {
                user_id: Arc::from(m.user_id.as_str()),
                seq: m.seq,
                change: sockudo_core::adapter::MemberChange::Removed,
            });
            if let Err(e) = self.adapter.publish(msg).await {
                tracing::warn!(error = %e, channel = %m.channel, "member_removed broadcast failed");
            }
            // webhooks: begin
            if let Some(w) = self.installed_webhooks().await {
                if let Ok(Some(app)) = self.apps.find_by_id(&m.app_id).await {
                    w.member_removed(&app, &m.channel, &m.user_id).await;
                }
            }
            // webhooks: end
        }
    }
}
