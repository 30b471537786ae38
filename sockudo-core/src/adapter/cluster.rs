//! [`ClusterAdapter`]: the [`Adapter`] for several nodes over any [`Transport`].
//!
//! # Lifecycle
//! 1. [`ClusterAdapter::start`] validates the options, sweeps presence contributions left by
//!    a previous life of this node id (a crash followed by a restart under the same id), and
//!    subscribes to every topic. Nothing is consumed yet: messages that arrive now wait in the
//!    transport's bounded per-topic queues.
//! 2. [`Adapter::attach`] registers the handler and spawns the consumers and the heartbeat
//!    task. Nothing reaches the handler before `attach`.
//! 3. [`Adapter::leave_cluster`] stops the heartbeats, withdraws this node's presence, and
//!    tells the peers to forget it. Dropping the adapter aborts its tasks (peers then see the
//!    node as dead after `node_timeout`, exactly like a crash).
//!
//! # Topics (for prefix `P`)
//! | topic | content |
//! |---|---|
//! | `P.broadcast` | every [`Broadcast`], from every node (without interest routing) |
//! | `P.ch.{app}.{channel}` | the broadcasts of one channel (interest routing; app and channel escaped by [`super::names::channel_token`]) |
//! | `P.control` | every [`ControlMessage`] |
//! | `P.requests` | every [`ClusterQuery`], with the asker's node id and a request id |
//! | `P.responses.{node}` | answers to `node`'s requests |
//! | `P.heartbeat` | "alive" every `heartbeat_interval`, "leaving" once, and start-up probes |
//!
//! Prefix and node id are checked against the alphabet every broker accepts
//! (`[A-Za-z0-9._-]`, see [`super::names`]), so these names are valid topic names, subjects
//! and routing keys everywhere.
//!
//! # Interest routing
//! When the transport declares [`super::TransportCapabilities::per_channel_topics`] (memory, Redis,
//! NATS) and [`ClusterOptions::interest_routing`] is on (the server turns it on), a broadcast goes to its
//! channel's own topic, and a node subscribes to that topic only while it has local
//! subscribers of the channel ([`Adapter::watch_channel`] / [`Adapter::unwatch_channel`]):
//! a node receives nothing for channels nobody on it listens to. `watch_channel` returns once
//! the broker confirmed the subscription, so a subscriber acknowledged afterwards misses
//! nothing published after that. Without the capability every broadcast goes to
//! `P.broadcast`, which every node always reads (and still does with routing on, so a node
//! without routing is heard by the others).
//!
//! # One node id, one live node
//! Each adapter instance has an epoch (start time + random bits). At start, before sweeping
//! its id's presence, a node publishes a probe and listens for a short window
//! (`heartbeat_interval`, at most 1 s): a live node with the same id answers at once. Then the
//! newcomer steps back: it logs an error, does not sweep (nothing of the other is deleted),
//! refuses presence joins and reports [`Adapter::unready_reason`] `duplicate node id` (so
//! `/ready` is 503) until the other leaves or falls silent for `node_timeout`; it then sweeps
//! the id's leftovers and becomes ready. The older node logs the conflict and keeps serving.
//! Echoes are recognised by node id *and* epoch, so twins never drop each other's messages.
//!
//! Every message is one envelope: a compact JSON header line, `\n`, then the raw payload (for
//! a broadcast, the V1 frame itself). A node decodes each incoming message once and hands the
//! same `Bytes` slice to its handler; nothing is re-encoded per recipient.
//!
//! # Exactly once
//! `publish` delivers to the local handler first, then publishes; the echo of a node's own
//! broadcast or control message (same origin id) is dropped on receipt. Transports deliver at
//! most once per subscriber, so each handler sees each message exactly once while the
//! transport is up. During an outage `publish` fails (the caller knows other nodes may have
//! missed the message) and readiness ([`Adapter::is_healthy`]) turns false.
//!
//! # Liveness
//! Each node publishes a heartbeat every `heartbeat_interval` and records when it last heard
//! each peer. A peer unheard for `node_timeout` is dead: it is dropped from the live set (so
//! queries stop waiting for it) and its presence contributions are swept from the shared
//! store; the removals the sweep reports go to this node's [`NodeHandler::members_removed`].
//! Several survivors may sweep the same node: the store reports each removal to exactly one
//! sweep (a replicated store: to the smallest live survivor), so each `member_removed` is
//! announced once. A failed sweep is retried every tick
//! until it succeeds or the node shows up again.
//!
//! Safeguards:
//! - A node that does not hear its *own* heartbeat echo (its subscription is down) does not
//!   declare anyone dead, and when the echo comes back it restarts every peer's clock: a
//!   transport outage must not look like the death of every other node.
//! - A node that hears a heartbeat from a node it did not know answers at once with its own,
//!   so a new node learns its peers within a round trip instead of a full interval.
//! - Orphans: a node that died while nobody was watching (e.g. the only node, restarted under
//!   a new id) is found through [`PresenceStore::nodes`]: a node that holds contributions,
//!   is not live and is seen so in two consecutive checks (`node_timeout` apart) is swept.
//!
//! # Queries
//! `query` answers locally, publishes the request with a fresh id, and waits for an answer
//! from every node live at that moment (answers of other nodes that happen to answer are
//! merged too). When `request_timeout` passes and some node still considered live has not
//! answered, the query fails with [`AdapterError::Timeout`] rather than under-count; nodes
//! declared dead meanwhile are not waited for. With no live peer the request is not published
//! at all. A node learns its peers within a round trip of its first heartbeat (see above), so
//! a query issued in that first instant after `attach` may miss nodes it has not heard yet.
//!
//! Detection latency: a silent node is declared dead between `node_timeout` and
//! `node_timeout + heartbeat_interval` after its last heartbeat.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::envelope::{self, Header, Kind};
use super::interest::{Interests, Key};
use super::names;
use super::twin::{self, Heard, Twins};
use super::{
    Adapter, AdapterError, Broadcast, ClusterAnswer, ClusterQuery, ControlMessage, MemberChange,
    MemberEvent, NodeHandler, PresenceJoin, PresenceJoinOutcome, PresenceLeave, PresenceSnapshot,
    PresenceStore, RemovedMember, Transport, TransportStream,
};

/// Settings of a [`ClusterAdapter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    /// Prefix of every topic (default `sockudo`; `[A-Za-z0-9._-]`, at most 64 characters).
    /// Clusters sharing a broker need distinct prefixes.
    pub prefix: String,
    /// How often a node announces it is alive (default 2 s).
    pub heartbeat_interval: Duration,
    /// How long a silent node stays live (default 10 s; at most 30 s, more than
    /// `heartbeat_interval`). This is the bound on how long a crashed node's presence members
    /// linger.
    pub node_timeout: Duration,
    /// How long a query waits for the other nodes (default 2 s).
    pub request_timeout: Duration,
    /// Route broadcasts per channel when the transport can (default false: every node
    /// receives every broadcast, nothing to call; the Sockudo server turns it on and calls
    /// [`Adapter::watch_channel`] for each local subscription). See the module docs. Every
    /// node of a cluster must use the same value: a node with routing publishes to
    /// per-channel topics, which a node without it does not read.
    pub interest_routing: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            prefix: "sockudo".to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(2),
            interest_routing: false,
        }
    }
}

impl ClusterOptions {
    /// The largest accepted `node_timeout`.
    pub const MAX_NODE_TIMEOUT: Duration = Duration::from_secs(30);

    /// Check the bounds documented on each field.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad = |why: &str| {
            Err(AdapterError::Malformed(format!(
                "invalid cluster options: {why}"
            )))
        };
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval must be positive");
        }
        if self.node_timeout <= self.heartbeat_interval {
            return bad("node_timeout must be longer than heartbeat_interval");
        }
        if self.node_timeout > Self::MAX_NODE_TIMEOUT {
            return bad("node_timeout must be at most 30 s");
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be positive");
        }
        names::validate_name("cluster prefix", &self.prefix)
    }
}

/// Counters of one adapter (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Broadcasts this node published (accepted by the transport).
    pub published: u64,
    /// Transport publishes that failed (broadcast, control, request, response), except those
    /// counted in `oversize`.
    pub publish_errors: u64,
    /// Publishes the transport refused before sending because the broker would refuse them
    /// (over its message size limit; [`AdapterError::Malformed`] from `publish`).
    pub oversize: u64,
    /// Times the heartbeat tick found the transport down after it had been up (outages
    /// shorter than one `heartbeat_interval` can go unseen; their failed publishes are still
    /// counted in `publish_errors`).
    pub transport_down: u64,
    /// Broadcasts from other nodes handed to the handler.
    pub received: u64,
    /// This node's own broadcasts and control messages dropped when they came back.
    pub echoes_dropped: u64,
    /// Incoming messages that could not be decoded.
    pub malformed: u64,
    /// Queries that failed because a live node did not answer in time.
    pub query_timeouts: u64,
    /// Heartbeats that could not be published.
    pub heartbeat_errors: u64,
    /// Dead (or orphaned) nodes whose presence was swept by this node.
    pub nodes_swept: u64,
    /// Members this node's sweeps removed (reported to `members_removed`).
    pub members_swept: u64,
    /// Sweeps that failed (retried).
    pub sweep_errors: u64,
    /// Other live nodes seen running under this node's id (see the module docs).
    pub duplicate_node_ids: u64,
    /// Bytes of broadcasts received from the transport (own echoes included): what
    /// interest routing saves.
    pub received_bytes: u64,
    /// Broadcast messages received from the transport (own echoes included).
    pub received_messages: u64,
}

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    oversize: AtomicU64,
    transport_down: AtomicU64,
    received: AtomicU64,
    echoes_dropped: AtomicU64,
    malformed: AtomicU64,
    query_timeouts: AtomicU64,
    heartbeat_errors: AtomicU64,
    nodes_swept: AtomicU64,
    members_swept: AtomicU64,
    sweep_errors: AtomicU64,
    duplicate_node_ids: AtomicU64,
    received_bytes: AtomicU64,
    received_messages: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct Topics {
    prefix: String,
    broadcast: String,
    control: String,
    requests: String,
    responses_prefix: String,
    heartbeat: String,
}

impl Topics {
    fn new(prefix: &str) -> Self {
        Topics {
            prefix: prefix.to_owned(),
            broadcast: format!("{prefix}.broadcast"),
            control: format!("{prefix}.control"),
            requests: format!("{prefix}.requests"),
            responses_prefix: format!("{prefix}.responses."),
            heartbeat: format!("{prefix}.heartbeat"),
        }
    }

    fn responses(&self, node: &str) -> String {
        format!("{}{node}", self.responses_prefix)
    }

    fn channel(&self, app_id: &str, channel: &str) -> String {
        format!(
            "{}.ch.{}.{}",
            self.prefix,
            names::channel_token(app_id),
            names::channel_token(channel)
        )
    }
}

#[derive(Debug)]
struct Peer {
    last_seen: Instant,
}

/// What this node knows about the others.
#[derive(Debug, Default)]
struct Liveness {
    peers: HashMap<String, Peer>,
    /// When this node last heard its own heartbeat (its receive path works).
    last_self_echo: Option<Instant>,
    /// Declared dead, sweep not done yet.
    unswept: HashSet<String>,
}

struct Streams {
    broadcast: TransportStream,
    control: TransportStream,
    requests: TransportStream,
    responses: TransportStream,
    heartbeat: TransportStream,
}

/// The longest a starting node listens for a twin's answer to its probe.
const PROBE_WINDOW: Duration = Duration::from_secs(1);

type PendingMap = Mutex<HashMap<u64, mpsc::UnboundedSender<(String, ClusterAnswer)>>>;

struct Inner<T: Transport> {
    node_id: String,
    epoch: u64,
    twins: Twins,
    /// Broadcasts go to per-channel topics (see the module docs).
    routing: bool,
    interests: Interests,
    transport: Arc<T>,
    presence: Arc<dyn PresenceStore>,
    opts: ClusterOptions,
    topics: Topics,
    handler: OnceLock<Arc<dyn NodeHandler>>,
    broadcast_seq: AtomicU64,
    control_seq: AtomicU64,
    request_id: AtomicU64,
    pending: PendingMap,
    liveness: Mutex<Liveness>,
    leaving: AtomicBool,
    counters: Counters,
    streams: Mutex<Option<Streams>>,
    /// Removals of the start-up self-sweep, announced at attach.
    stale: Mutex<Vec<RemovedMember>>,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    heartbeat_task: Mutex<Option<JoinHandle<()>>>,
}

/// Cross-node [`Adapter`] over a [`Transport`]; see the module docs.
pub struct ClusterAdapter<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> fmt::Debug for ClusterAdapter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAdapter")
            .field("node_id", &self.inner.node_id)
            .field("prefix", &self.inner.opts.prefix)
            .field("attached", &self.inner.handler.get().is_some())
            .field("live_peers", &self.inner.liveness.lock().peers.len())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Drop for ClusterAdapter<T> {
    fn drop(&mut self) {
        self.inner.abort_tasks();
    }
}

impl<T: Transport> ClusterAdapter<T> {
    /// Prepare the adapter: validate, sweep this node id's stale presence (announced to the
    /// handler at attach), subscribe to every topic. Call [`Adapter::attach`] next; nothing is
    /// delivered and no heartbeat is sent before it.
    ///
    /// Must be called inside a Tokio runtime (the tasks spawned at attach run on it).
    pub async fn start(
        node_id: impl Into<String>,
        transport: Arc<T>,
        presence: Arc<dyn PresenceStore>,
        opts: ClusterOptions,
    ) -> Result<Arc<Self>, AdapterError> {
        let node_id = node_id.into();
        opts.validate()?;
        names::validate_name("node id", &node_id)?;
        let topics = Topics::new(&opts.prefix);
        let mut streams = Streams {
            broadcast: transport.subscribe(&topics.broadcast).await?,
            control: transport.subscribe(&topics.control).await?,
            requests: transport.subscribe(&topics.requests).await?,
            responses: transport.subscribe(&topics.responses(&node_id)).await?,
            heartbeat: transport.subscribe(&topics.heartbeat).await?,
        };
        let epoch = twin::new_epoch();
        let routing = opts.interest_routing && transport.capabilities().per_channel_topics;
        let inner = Arc::new(Inner {
            node_id,
            epoch,
            twins: Twins::new(epoch),
            routing,
            interests: Interests::default(),
            transport,
            presence,
            opts,
            topics,
            handler: OnceLock::new(),
            broadcast_seq: AtomicU64::new(0),
            control_seq: AtomicU64::new(0),
            request_id: AtomicU64::new(rand::random::<u64>() >> 1),
            pending: Mutex::new(HashMap::new()),
            liveness: Mutex::new(Liveness::default()),
            leaving: AtomicBool::new(false),
            counters: Counters::default(),
            streams: Mutex::new(None),
            stale: Mutex::new(Vec::new()),
            runtime: tokio::runtime::Handle::current(),
            tasks: Mutex::new(Vec::new()),
            heartbeat_task: Mutex::new(None),
        });
        inner.probe_twins(&mut streams.heartbeat).await?;
        if inner.twins.stepped_back() {
            inner.twins.owe_sweep();
        } else {
            // A previous life of this id (crash, restart) may have left presence behind.
            *inner.stale.lock() = inner.presence.sweep_node(&inner.node_id).await?;
        }
        *inner.streams.lock() = Some(streams);
        Ok(Arc::new(ClusterAdapter { inner }))
    }

    /// How many channels this node currently receives through interest routing.
    pub fn watched_channels(&self) -> usize {
        self.inner.interests.len()
    }

    /// Whether this node stepped back because an older live node uses its id.
    pub fn is_duplicate(&self) -> bool {
        self.inner.twins.stepped_back()
    }

    /// The options in force.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.opts
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<T> {
        &self.inner.transport
    }

    /// Other nodes currently considered live, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.liveness.lock().peers.keys().cloned().collect();
        v.sort();
        v
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClusterStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterStats {
            published: l(&c.published),
            publish_errors: l(&c.publish_errors),
            oversize: l(&c.oversize),
            transport_down: l(&c.transport_down),
            received: l(&c.received),
            echoes_dropped: l(&c.echoes_dropped),
            malformed: l(&c.malformed),
            query_timeouts: l(&c.query_timeouts),
            heartbeat_errors: l(&c.heartbeat_errors),
            nodes_swept: l(&c.nodes_swept),
            members_swept: l(&c.members_swept),
            sweep_errors: l(&c.sweep_errors),
            duplicate_node_ids: l(&c.duplicate_node_ids),
            received_bytes: l(&c.received_bytes),
            received_messages: l(&c.received_messages),
        }
    }

    /// Stop every task of this adapter at once, without leaving the cluster: to the others
    /// this looks like a crash (tests use it). The adapter stops receiving and heartbeating;
    /// `publish` still reaches the local handler and the transport.
    pub fn halt(&self) {
        self.inner.abort_tasks();
    }

    fn handler(&self) -> Result<Arc<dyn NodeHandler>, AdapterError> {
        self.inner
            .handler
            .get()
            .cloned()
            .ok_or(AdapterError::NotAttached)
    }
}

impl<T: Transport> Inner<T> {
    fn abort_tasks(&self) {
        self.presence.stop(false);
        self.interests.abort_all();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        if let Some(t) = self.heartbeat_task.lock().take() {
            t.abort();
        }
    }

    fn handler(&self) -> Option<&Arc<dyn NodeHandler>> {
        self.handler.get()
    }

    async fn send(&self, topic: &str, msg: Bytes) -> Result<(), AdapterError> {
        let r = self.transport.publish(topic, msg).await;
        match &r {
            Ok(()) => {}
            Err(AdapterError::Malformed(_)) => bump(&self.counters.oversize),
            Err(_) => bump(&self.counters.publish_errors),
        }
        r
    }

    fn heartbeat_message(&self, kind: Kind) -> Result<Bytes, AdapterError> {
        envelope::encode(&Header::new(kind, &self.node_id, self.epoch, 0), b"")
    }

    async fn send_heartbeat(&self) {
        if self.leaving.load(Ordering::SeqCst) {
            return;
        }
        let sent = match self.heartbeat_message(Kind::Heartbeat) {
            Ok(m) => self.transport.publish(&self.topics.heartbeat, m).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            bump(&self.counters.heartbeat_errors);
            tracing::debug!(node = %self.node_id, error = %e, "cluster heartbeat not sent");
        }
    }

    /// How long without our own echo before we stop trusting our view of the others.
    fn blind_after(&self) -> Duration {
        (self.opts.heartbeat_interval * 3).min(self.opts.node_timeout)
    }

    /// Our own message coming back (same id *and* epoch: a twin's messages are not echoes).
    fn is_echo(&self, h: &Header<'_>) -> bool {
        h.origin == self.node_id && h.epoch == self.epoch
    }

    /// Start-up: ask whether a live node already runs under our id, and listen for the
    /// answer on the heartbeat topic for a short window. Other messages heard meanwhile are
    /// not processed (peers are learnt again from the first heartbeat after `attach`).
    async fn probe_twins(
        self: &Arc<Self>,
        heartbeats: &mut TransportStream,
    ) -> Result<(), AdapterError> {
        let probe = self.heartbeat_message(Kind::Probe)?;
        self.transport
            .publish(&self.topics.heartbeat, probe)
            .await?;
        let deadline = Instant::now() + self.opts.heartbeat_interval.min(PROBE_WINDOW);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, heartbeats.next()).await {
            if let Ok((h, _)) = envelope::decode(&msg) {
                // A heartbeat answers our probe; a probe is a twin starting at the same time.
                if h.origin == self.node_id
                    && h.epoch != self.epoch
                    && matches!(h.kind, Kind::Heartbeat | Kind::Probe)
                {
                    self.twin_heard(h.epoch, Instant::now());
                }
            }
        }
        if self.twins.stepped_back() {
            tracing::error!(
                node = %self.node_id,
                "another live node already runs under this node id: this node is NOT ready, \
                 deletes nothing and refuses presence until the other one leaves or stays \
                 silent for the node timeout; give every node its own id"
            );
        }
        Ok(())
    }

    /// A message under our id from another incarnation (`epoch`).
    fn twin_heard(self: &Arc<Self>, epoch: u64, now: Instant) {
        if self.twins.heard(epoch, now) != Heard::New {
            return;
        }
        bump(&self.counters.duplicate_node_ids);
        let newer = epoch > self.epoch;
        tracing::error!(
            node = %self.node_id,
            this_epoch = self.epoch,
            other_epoch = epoch,
            "two live nodes share this node id; {}",
            if newer {
                "the other one started later and stays unready"
            } else {
                "this one started later and stays unready"
            }
        );
        if newer && !self.leaving.load(Ordering::SeqCst) {
            // Answer at once, so a starting twin sees us within its probe window.
            let me = self.clone();
            self.runtime.spawn(async move { me.send_heartbeat().await });
        }
    }

    fn malformed(&self, topic: &str, e: &AdapterError) {
        bump(&self.counters.malformed);
        tracing::debug!(node = %self.node_id, topic, error = %e, "dropping malformed cluster message");
    }

    /// A broadcast from the transport. `known`: the (app, channel) of the channel topic it
    /// came on (interest routing), whose names are shared instead of copied per message.
    fn on_broadcast(self: &Arc<Self>, msg: &Bytes, known: Option<&Key>) {
        bump(&self.counters.received_messages);
        self.counters
            .received_bytes
            .fetch_add(msg.len() as u64, Ordering::Relaxed);
        let (h, payload) = match envelope::decode(msg) {
            Ok(x) => x,
            Err(e) => return self.malformed("broadcast", &e),
        };
        if self.is_echo(&h) {
            bump(&self.counters.echoes_dropped);
            return;
        }
        let (Kind::Broadcast, Some(app), Some(channel)) = (h.kind, h.app, h.channel) else {
            return self.malformed(
                "broadcast",
                &AdapterError::Malformed("not a broadcast".into()),
            );
        };
        let (frame, frame_v2) = match h.v1_len {
            Some(n) if n <= payload.len() => (payload.slice(..n), Some(payload.slice(n..))),
            Some(_) => {
                return self.malformed(
                    "broadcast",
                    &AdapterError::Malformed("V1 frame length beyond payload".into()),
                )
            }
            None => (payload, None),
        };
        let (app_id, channel) = match known {
            Some((a, c)) if **a == *app && **c == *channel => (Arc::clone(a), Arc::clone(c)),
            _ => (Arc::from(app.as_ref()), Arc::from(channel.as_ref())),
        };
        let b = Broadcast {
            app_id,
            channel,
            frame,
            frame_v2,
            message_id: h.message_id.map(|m| Arc::from(m.as_ref())),
            serial: h.serial,
            stream_id: h.stream_id.map(|m| Arc::from(m.as_ref())),
            except_socket: h.except.map(|x| Arc::from(x.as_ref())),
            member: match (h.member_user, h.member_seq) {
                (Some(user_id), Some(seq)) => Some(MemberEvent {
                    user_id: Arc::from(user_id.as_ref()),
                    seq,
                    change: if h.member_removed {
                        MemberChange::Removed
                    } else {
                        MemberChange::Added
                    },
                }),
                _ => None,
            },
        };
        if let Some(m) = &b.member {
            if !self.presence.reflects(&h.origin, m.seq) {
                // A replicated presence store has not applied this decision yet: a
                // subscriber's snapshot taken now would not list it, while the event would
                // be filtered as already in it. Hold it until the store caught up (bounded).
                let me = self.clone();
                let origin = h.origin.into_owned();
                self.runtime.spawn(async move {
                    let deadline = Instant::now() + me.opts.heartbeat_interval * 3;
                    while Instant::now() < deadline && !me.presence.reflects(&origin, m_seq(&b)) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if let Some(handler) = me.handler() {
                        bump(&me.counters.received);
                        handler.deliver(&b);
                    }
                });
                return;
            }
        }
        if let Some(handler) = self.handler() {
            bump(&self.counters.received);
            handler.deliver(&b);
        }
    }

    fn on_control(&self, msg: &Bytes) {
        let (h, body) = match envelope::decode(msg) {
            Ok(x) => x,
            Err(e) => return self.malformed("control", &e),
        };
        if self.is_echo(&h) {
            bump(&self.counters.echoes_dropped);
            return;
        }
        if h.kind != Kind::Control {
            return self.malformed(
                "control",
                &AdapterError::Malformed("not a control message".into()),
            );
        }
        match serde_json::from_slice::<ControlMessage>(&body) {
            Ok(c) => {
                if let Some(handler) = self.handler() {
                    handler.control(&c);
                }
            }
            Err(e) => self.malformed("control", &AdapterError::Malformed(e.to_string())),
        }
    }

    fn on_request(self: &Arc<Self>, msg: &Bytes) {
        let (h, body) = match envelope::decode(msg) {
            Ok(x) => x,
            Err(e) => return self.malformed("requests", &e),
        };
        if self.is_echo(&h) {
            return; // answered locally by the asker
        }
        if self.twins.stepped_back() {
            return; // the older twin answers for this node id
        }
        if h.kind != Kind::Request {
            return self.malformed("requests", &AdapterError::Malformed("not a request".into()));
        }
        let query = match serde_json::from_slice::<ClusterQuery>(&body) {
            Ok(q) => q,
            Err(e) => return self.malformed("requests", &AdapterError::Malformed(e.to_string())),
        };
        let Some(handler) = self.handler() else {
            return;
        };
        let answer = handler.answer(&query);
        let reply = serde_json::to_vec(&answer)
            .map_err(|e| AdapterError::Malformed(e.to_string()))
            .and_then(|body| {
                envelope::encode(
                    &Header::new(Kind::Response, &self.node_id, self.epoch, h.seq),
                    &body,
                )
            });
        let reply = match reply {
            Ok(r) => r,
            Err(e) => return self.malformed("responses", &e),
        };
        let topic = self.topics.responses(&h.origin);
        let me = self.clone();
        // Publishing awaits the broker: do it off the consumer so requests keep flowing.
        self.runtime.spawn(async move {
            if let Err(e) = me.send(&topic, reply).await {
                tracing::debug!(node = %me.node_id, error = %e, "cluster answer not sent");
            }
        });
    }

    fn on_response(&self, msg: &Bytes) {
        let (h, body) = match envelope::decode(msg) {
            Ok(x) => x,
            Err(e) => return self.malformed("responses", &e),
        };
        if h.kind != Kind::Response {
            return self.malformed(
                "responses",
                &AdapterError::Malformed("not a response".into()),
            );
        }
        let answer = match serde_json::from_slice::<ClusterAnswer>(&body) {
            Ok(a) => a,
            Err(e) => return self.malformed("responses", &AdapterError::Malformed(e.to_string())),
        };
        if let Some(tx) = self.pending.lock().get(&h.seq) {
            let _ = tx.send((h.origin.into_owned(), answer));
        }
    }

    fn on_heartbeat(self: &Arc<Self>, msg: &Bytes) {
        let (h, _) = match envelope::decode(msg) {
            Ok(x) => x,
            Err(e) => return self.malformed("heartbeat", &e),
        };
        let now = Instant::now();
        let mut live = self.liveness.lock();
        if h.origin == self.node_id && h.epoch != self.epoch {
            drop(live);
            match h.kind {
                Kind::Heartbeat | Kind::Probe => self.twin_heard(h.epoch, now),
                Kind::Leaving => self.twins.left(h.epoch),
                _ => {}
            }
            return;
        }
        if h.kind == Kind::Probe {
            return; // a probe for another id
        }
        if h.origin == self.node_id {
            if h.kind == Kind::Heartbeat {
                let was_blind = live
                    .last_self_echo
                    .is_none_or(|t| now.duration_since(t) > self.blind_after());
                if was_blind {
                    // Our receive path was down (or we just started): nobody could be heard,
                    // so restart every peer's clock instead of declaring them all dead.
                    for p in live.peers.values_mut() {
                        p.last_seen = now;
                    }
                }
                live.last_self_echo = Some(now);
            }
            return;
        }
        match h.kind {
            Kind::Heartbeat => {
                live.unswept.remove(h.origin.as_ref());
                let new = live
                    .peers
                    .insert(h.origin.into_owned(), Peer { last_seen: now })
                    .is_none();
                drop(live);
                if new && !self.leaving.load(Ordering::SeqCst) {
                    // Introduce ourselves right away so the newcomer's queries count us.
                    let me = self.clone();
                    self.runtime.spawn(async move { me.send_heartbeat().await });
                }
            }
            Kind::Leaving => {
                // It swept its own presence before announcing: just forget it.
                live.peers.remove(h.origin.as_ref());
                live.unswept.remove(h.origin.as_ref());
            }
            _ => {
                drop(live);
                self.malformed(
                    "heartbeat",
                    &AdapterError::Malformed("not a heartbeat".into()),
                );
            }
        }
    }

    /// Declare silent peers dead (unless we are blind ourselves) and sweep every dead node.
    async fn check_peers(&self) {
        let now = Instant::now();
        let to_sweep: Vec<String> = {
            let mut live = self.liveness.lock();
            let blind = live
                .last_self_echo
                .is_none_or(|t| now.duration_since(t) > self.blind_after());
            if !blind {
                let timeout = self.opts.node_timeout;
                let dead: Vec<String> = live
                    .peers
                    .iter()
                    .filter(|(_, p)| now.duration_since(p.last_seen) > timeout)
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in dead {
                    live.peers.remove(&n);
                    tracing::info!(node = %self.node_id, dead = %n, "cluster node timed out");
                    live.unswept.insert(n);
                }
            }
            live.unswept.iter().cloned().collect()
        };
        for dead in to_sweep {
            self.sweep(&dead).await;
        }
    }

    /// Sweep `dead`'s presence and announce the removals; false when the store failed.
    async fn sweep(&self, dead: &str) -> bool {
        match self.presence.sweep_node(dead).await {
            Ok(removed) => {
                self.liveness.lock().unswept.remove(dead);
                bump(&self.counters.nodes_swept);
                if !removed.is_empty() {
                    self.counters
                        .members_swept
                        .fetch_add(removed.len() as u64, Ordering::Relaxed);
                    tracing::info!(node = %self.node_id, dead, members = removed.len(), "swept presence of a dead node");
                    if let Some(h) = self.handler() {
                        h.members_removed(removed);
                    }
                }
                true
            }
            Err(e) => {
                bump(&self.counters.sweep_errors);
                tracing::warn!(node = %self.node_id, dead, error = %e, "presence sweep failed; will retry");
                false
            }
        }
    }

    /// Nodes with presence in the store that nobody hears from. Returns the current
    /// candidates; those also in `previous` are swept.
    async fn check_orphans(&self, previous: &HashSet<String>) -> HashSet<String> {
        let nodes = match self.presence.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(node = %self.node_id, error = %e, "could not list presence nodes");
                return HashSet::new();
            }
        };
        let candidates: HashSet<String> = {
            let live = self.liveness.lock();
            let blind = live
                .last_self_echo
                .is_none_or(|t| Instant::now().duration_since(t) > self.blind_after());
            if blind {
                return HashSet::new();
            }
            nodes
                .into_iter()
                .filter(|n| {
                    *n != self.node_id && !live.peers.contains_key(n) && !live.unswept.contains(n)
                })
                .collect()
        };
        let mut next = HashSet::new();
        for n in candidates {
            if previous.contains(&n) {
                tracing::info!(node = %self.node_id, orphan = %n, "sweeping presence of a node nobody hears");
                self.sweep(&n).await;
            } else {
                next.insert(n);
            }
        }
        next
    }

    /// Forget silent twins; once no older twin is left, take the id over (sweep what the
    /// other left behind, announced like a dead node's members).
    async fn check_twins(&self) {
        let blind = self
            .liveness
            .lock()
            .last_self_echo
            .is_none_or(|t| Instant::now().duration_since(t) > self.blind_after());
        if !blind {
            self.twins.expire(Instant::now(), self.opts.node_timeout);
        }
        if self.twins.sweep_due() {
            tracing::info!(node = %self.node_id, "no other live node uses this node id any more: taking it over");
            let id = self.node_id.clone();
            // Stays back (unready, no joins) until the sweep succeeded; retried every tick.
            if self.sweep(&id).await {
                self.twins.swept();
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(self.opts.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_orphan_check = started;
        let mut orphans = HashSet::new();
        let mut was_up = true;
        loop {
            tick.tick().await;
            let up = self.transport.is_healthy();
            if was_up && !up {
                bump(&self.counters.transport_down);
            }
            was_up = up;
            self.send_heartbeat().await;
            self.check_peers().await;
            self.check_twins().await;
            let now = Instant::now();
            if now.duration_since(started) >= self.opts.node_timeout
                && now.duration_since(last_orphan_check) >= self.opts.node_timeout
            {
                last_orphan_check = now;
                orphans = self.check_orphans(&orphans).await;
            }
        }
    }
}

fn m_seq(b: &Broadcast) -> u64 {
    b.member.as_ref().map_or(0, |m| m.seq)
}

/// Feed one stream to one callback until it ends.
fn consume<T, F>(inner: &Arc<Inner<T>>, mut stream: TransportStream, f: F) -> JoinHandle<()>
where
    T: Transport,
    F: Fn(&Arc<Inner<T>>, &Bytes) + Send + 'static,
{
    let me = inner.clone();
    inner.runtime.spawn(async move {
        while let Some(msg) = stream.next().await {
            f(&me, &msg);
        }
    })
}

/// Removes a pending request when the query ends, however it ends (including cancellation).
struct PendingGuard<'a> {
    pending: &'a PendingMap,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.id);
    }
}

#[async_trait]
impl<T: Transport> Adapter for ClusterAdapter<T> {
    fn attach(&self, handler: Arc<dyn NodeHandler>) {
        if self.inner.handler.set(handler.clone()).is_err() {
            tracing::warn!(node = %self.inner.node_id, "ClusterAdapter::attach called twice; keeping the first handler");
            return;
        }
        let Some(streams) = self.inner.streams.lock().take() else {
            return;
        };
        let inner = &self.inner;
        let mut tasks = inner.tasks.lock();
        tasks.push(consume(inner, streams.broadcast, |i, m| {
            i.on_broadcast(m, None)
        }));
        tasks.push(consume(inner, streams.control, |i, m| i.on_control(m)));
        tasks.push(consume(inner, streams.requests, |i, m| i.on_request(m)));
        tasks.push(consume(inner, streams.responses, |i, m| i.on_response(m)));
        tasks.push(consume(inner, streams.heartbeat, |i, m| i.on_heartbeat(m)));
        if let Some(mut rx) = inner.presence.member_events() {
            let h = handler.clone();
            tasks.push(inner.runtime.spawn(async move {
                while let Some(first) = rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    h.replicated_member_events(batch);
                }
            }));
        }
        drop(tasks);
        *inner.heartbeat_task.lock() = Some(inner.runtime.spawn(inner.clone().heartbeat_loop()));
        let stale = std::mem::take(&mut *inner.stale.lock());
        if !stale.is_empty() {
            tracing::info!(node = %inner.node_id, members = stale.len(), "announcing presence left by a previous run of this node");
            inner
                .runtime
                .spawn(async move { handler.members_removed(stale) });
        }
    }

    fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    async fn publish(&self, msg: Broadcast) -> Result<(), AdapterError> {
        let handler = self.handler()?;
        handler.deliver(&msg);
        let inner = &self.inner;
        let mut h = Header::new(
            Kind::Broadcast,
            &inner.node_id,
            inner.epoch,
            inner.broadcast_seq.fetch_add(1, Ordering::Relaxed),
        );
        h.app = Some((&*msg.app_id).into());
        h.channel = Some((&*msg.channel).into());
        h.except = msg.except_socket.as_deref().map(Into::into);
        h.message_id = msg.message_id.as_deref().map(Into::into);
        h.serial = msg.serial;
        h.stream_id = msg.stream_id.as_deref().map(Into::into);
        if let Some(m) = &msg.member {
            h.member_user = Some((&*m.user_id).into());
            h.member_seq = Some(m.seq);
            h.member_removed = m.change == MemberChange::Removed;
        }
        let wire = match &msg.frame_v2 {
            Some(v2) => {
                h.v1_len = Some(msg.frame.len());
                envelope::encode_parts(&h, &[&msg.frame, v2])?
            }
            None => envelope::encode(&h, &msg.frame)?,
        };
        if inner.routing {
            let topic = inner.topics.channel(&msg.app_id, &msg.channel);
            inner.send(&topic, wire).await?;
        } else {
            inner.send(&inner.topics.broadcast, wire).await?;
        }
        bump(&inner.counters.published);
        Ok(())
    }

    async fn control(&self, msg: ControlMessage) -> Result<(), AdapterError> {
        let handler = self.handler()?;
        handler.control(&msg);
        let inner = &self.inner;
        let body = serde_json::to_vec(&msg).map_err(|e| AdapterError::Malformed(e.to_string()))?;
        let h = Header::new(
            Kind::Control,
            &inner.node_id,
            inner.epoch,
            inner.control_seq.fetch_add(1, Ordering::Relaxed),
        );
        inner
            .send(&inner.topics.control, envelope::encode(&h, &body)?)
            .await
    }

    async fn query(&self, query: ClusterQuery) -> Result<ClusterAnswer, AdapterError> {
        let handler = self.handler()?;
        let inner = &self.inner;
        let mut waiting: HashSet<String> = inner.liveness.lock().peers.keys().cloned().collect();
        let id = inner.request_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        inner.pending.lock().insert(id, tx);
        let _guard = PendingGuard {
            pending: &inner.pending,
            id,
        };
        if !waiting.is_empty() {
            let body =
                serde_json::to_vec(&query).map_err(|e| AdapterError::Malformed(e.to_string()))?;
            let h = Header::new(Kind::Request, &inner.node_id, inner.epoch, id);
            inner
                .send(&inner.topics.requests, envelope::encode(&h, &body)?)
                .await?;
        }
        let mut answer = handler.answer(&query);
        let mut answered: HashSet<String> = HashSet::new();
        let deadline = Instant::now() + inner.opts.request_timeout;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((node, a))) => {
                    if answered.insert(node.clone()) {
                        waiting.remove(&node);
                        answer = answer.merge(a);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // Nodes declared dead meanwhile are not owed an answer.
                    let live = inner.liveness.lock();
                    waiting.retain(|n| live.peers.contains_key(n));
                    drop(live);
                    if waiting.is_empty() {
                        break;
                    }
                    bump(&inner.counters.query_timeouts);
                    return Err(AdapterError::Timeout {
                        missing: waiting.len(),
                    });
                }
            }
        }
        Ok(answer)
    }

    async fn presence_join(
        &self,
        join: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        if self.inner.leaving.load(Ordering::SeqCst) {
            return Err(AdapterError::Unavailable(
                "this node has left the cluster".into(),
            ));
        }
        if self.inner.twins.stepped_back() {
            return Err(AdapterError::Unavailable(format!(
                "another live node uses node id {:?}",
                self.inner.node_id
            )));
        }
        self.inner.presence.join(&self.inner.node_id, join).await
    }

    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError> {
        self.inner
            .presence
            .leave(&self.inner.node_id, app_id, channel, user_id)
            .await
    }

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<PresenceSnapshot, AdapterError> {
        self.inner.presence.members(app_id, channel).await
    }

    async fn watch_channel(&self, app_id: &str, channel: &str) -> Result<(), AdapterError> {
        let inner = &self.inner;
        if !inner.routing {
            return Ok(());
        }
        let key: Key = (Arc::from(app_id), Arc::from(channel));
        // Counted first, so the caller's `unwatch_channel` balances it whatever happens next.
        let ready = inner.interests.acquire(&key);
        // Nothing is consumed before attach (there is no handler to give it to).
        self.handler()?;
        if !ready.initialized() && !inner.transport.is_healthy() {
            // Fail fast: waiters would otherwise retry one after another, each up to the
            // transport's timeout.
            return Err(AdapterError::Unavailable(
                "the cluster transport is disconnected".into(),
            ));
        }
        if ready.initialized() {
            return Ok(());
        }
        ready
            .get_or_try_init(|| async {
                let topic = inner.topics.channel(app_id, channel);
                let stream = inner.transport.subscribe(&topic).await?;
                let names = key.clone();
                let task = consume(inner, stream, move |i, m| i.on_broadcast(m, Some(&names)));
                inner.interests.install(&key, &ready, task);
                Ok::<(), AdapterError>(())
            })
            .await
            .map(|_| ())
    }

    fn routes_by_interest(&self) -> bool {
        self.inner.routing
    }

    fn unwatch_channel(&self, app_id: &str, channel: &str) {
        if self.inner.routing {
            self.inner
                .interests
                .release(&(Arc::from(app_id), Arc::from(channel)));
        }
    }

    fn is_healthy(&self) -> bool {
        self.inner.transport.is_healthy() && !self.inner.twins.stepped_back()
    }

    fn unready_reason(&self) -> Option<String> {
        if self.inner.twins.stepped_back() {
            return Some(format!(
                "duplicate node id: another live node runs as {:?}",
                self.inner.node_id
            ));
        }
        (!self.inner.transport.is_healthy()).then(|| "adapter unavailable".to_owned())
    }

    /// Stop heartbeating, sweep this node's presence (returned for the caller to announce),
    /// then tell the peers to forget this node. When the sweep fails the error is returned
    /// and no "leaving" is announced, so the peers sweep this node after `node_timeout`
    /// instead. A second call returns nothing.
    async fn leave_cluster(&self) -> Result<Vec<RemovedMember>, AdapterError> {
        let inner = &self.inner;
        if inner.leaving.swap(true, Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        if let Some(t) = inner.heartbeat_task.lock().take() {
            t.abort();
        }
        if inner.twins.stepped_back() {
            // The id's presence belongs to the older twin: withdraw nothing, announce nothing.
            inner.transport.leave().await;
            return Ok(Vec::new());
        }
        let removed = inner.presence.sweep_node(&inner.node_id).await?;
        inner.presence.stop(true);
        let bye = inner.heartbeat_message(Kind::Leaving)?;
        if let Err(e) = inner.send(&inner.topics.heartbeat, bye).await {
            tracing::warn!(node = %inner.node_id, error = %e, "could not announce leaving; peers will time this node out");
        }
        // Per-node broker resources (e.g. a Pub/Sub subscription) go now, not at expiry.
        inner.transport.leave().await;
        Ok(removed)
    }
}
