//! `ClusterAdapter` end to end: several adapters (distinct node ids) in one process over one
//! transport, with recording handlers. Every scenario runs over `MemoryTransport` +
//! `MemoryPresenceStore`, and with the `redis` feature over `RedisTransport` +
//! `RedisPresenceStore` on a `redis-server` each test starts on a free port, and with the
//! `nats` feature over `NatsTransport` on a `nats-server` each test starts (same scenarios,
//! unchanged). The presence scenarios also run with presence replicated over the transport
//! (`TransportPresenceStore`, the `*_replicated` modules). The `PresenceStore` conformance
//! suite also runs against `RedisPresenceStore` and, over NATS, the replicated store here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(any(feature = "redis", feature = "nats"))]
#[path = "support/redis_server.rs"]
mod redis_server;

#[cfg(feature = "nats")]
#[path = "support/nats_server.rs"]
mod nats_server;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use sockudo_core::adapter::presence;
use sockudo_core::adapter::{
    Adapter, AdapterError, Broadcast, ClusterAdapter, ClusterAnswer, ClusterOptions, ClusterQuery,
    ControlMessage, MemoryPresenceStore, MemoryTransport, NodeHandler, PresenceJoin, PresenceStore,
    RemovedMember, Transport, TransportPresenceOptions, TransportPresenceStore,
};

// ---------------------------------------------------------------------------------------------
// Recording handler and helpers

#[derive(Debug, Default)]
struct Recorder {
    delivered: Mutex<Vec<Broadcast>>,
    controls: Mutex<Vec<ControlMessage>>,
    removed: Mutex<Vec<RemovedMember>>,
    /// What `answer` reports for connection counts.
    connections: u64,
}

impl Recorder {
    fn with_connections(n: u64) -> Arc<Self> {
        Arc::new(Recorder {
            connections: n,
            ..Default::default()
        })
    }
    fn frames(&self) -> Vec<Bytes> {
        self.delivered
            .lock()
            .iter()
            .map(|b| b.frame.clone())
            .collect()
    }
    fn removed_users(&self) -> Vec<String> {
        self.removed
            .lock()
            .iter()
            .map(|r| r.user_id.clone())
            .collect()
    }
}

impl NodeHandler for Recorder {
    fn deliver(&self, msg: &Broadcast) {
        self.delivered.lock().push(msg.clone());
    }
    fn control(&self, msg: &ControlMessage) {
        self.controls.lock().push(msg.clone());
    }
    fn answer(&self, query: &ClusterQuery) -> ClusterAnswer {
        match query {
            ClusterQuery::Channels { .. } => ClusterAnswer::Channels {
                channels: vec![
                    ("shared".into(), 1),
                    (format!("only-{}", self.connections), self.connections),
                ],
            },
            _ => ClusterAnswer::Count {
                count: self.connections,
            },
        }
    }
    fn members_removed(&self, removed: Vec<RemovedMember>) {
        self.removed.lock().extend(removed);
    }
}

/// Short timings so liveness tests take well under a second or two.
fn fast() -> ClusterOptions {
    ClusterOptions {
        prefix: format!("t{:08x}", rand::random::<u32>()),
        heartbeat_interval: Duration::from_millis(100),
        node_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(300),
        interest_routing: true,
    }
}

/// The channels every test node has "local subscribers" on (see [`node`]).
const WATCHED: &[(&str, &str)] = &[("app", "c"), ("app", "ordered"), ("app-1", "private-x")];

async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn msg(channel: &str, frame: impl Into<Bytes>) -> Broadcast {
    Broadcast::plain("app", channel, frame.into(), None)
}

fn pjoin<'a>(channel: &'a str, user: &'a str) -> PresenceJoin<'a> {
    PresenceJoin {
        app_id: "app",
        channel,
        user_id: user,
        info: Some(r#"{"name":"x"}"#),
        max_members: 100,
    }
}

/// A cluster under test: how to get one more node's transport, and its presence store.
#[async_trait]
trait Env: Send + Sync {
    type T: Transport;
    async fn transport(&self) -> Arc<Self::T>;
    /// The presence store of node `id` (a shared store: the same one for every node).
    async fn presence(
        &self,
        id: &str,
        transport: &Arc<Self::T>,
        opts: &ClusterOptions,
    ) -> Arc<dyn PresenceStore>;
    /// Wait until every node's presence view reflects every change so far (replicated
    /// presence; nothing to wait for with a shared store).
    async fn settle(&self) {}
}

/// Start an adapter for `id` with the environment's transport and presence.
async fn start<E: Env>(
    env: &E,
    id: &str,
    opts: ClusterOptions,
) -> Result<Arc<ClusterAdapter<E::T>>, AdapterError> {
    let t = env.transport().await;
    let p = env.presence(id, &t, &opts).await;
    ClusterAdapter::start(id, t, p, opts).await
}

/// Any environment with presence replicated over its transport instead of a shared store.
struct Replicated<E> {
    inner: E,
    stores: Mutex<Vec<std::sync::Weak<TransportPresenceStore>>>,
}

impl<E> Replicated<E> {
    fn new(inner: E) -> Self {
        Replicated {
            inner,
            stores: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl<E: Env> Env for Replicated<E> {
    type T = E::T;
    async fn transport(&self) -> Arc<E::T> {
        self.inner.transport().await
    }
    async fn presence(
        &self,
        id: &str,
        transport: &Arc<E::T>,
        opts: &ClusterOptions,
    ) -> Arc<dyn PresenceStore> {
        let popts = TransportPresenceOptions {
            prefix: opts.prefix.clone(),
            sync_interval: opts.heartbeat_interval,
            node_timeout: opts.node_timeout,
            sync_wait: Duration::from_millis(200),
            ..TransportPresenceOptions::default()
        };
        match TransportPresenceStore::start(id, transport.clone(), popts).await {
            Ok(s) => {
                self.stores.lock().push(Arc::downgrade(&s));
                s
            }
            // Bad names: let the adapter's own check report them.
            Err(_) => Arc::new(MemoryPresenceStore::new()),
        }
    }
    async fn settle(&self) {
        let stores: Vec<_> = self
            .stores
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        presence::conformance::settle(&stores).await;
    }
}

type Node<T> = (Arc<ClusterAdapter<T>>, Arc<Recorder>);

async fn node<E: Env>(env: &E, id: &str, opts: &ClusterOptions, connections: u64) -> Node<E::T> {
    let a = start(env, id, opts.clone()).await.unwrap();
    let r = Recorder::with_connections(connections);
    a.attach(r.clone());
    // As a node with local subscribers on the scenarios' channels would (interest routing).
    for (app, channel) in WATCHED {
        a.watch_channel(app, channel).await.unwrap();
    }
    (a, r)
}

/// `n` attached nodes (`n0`, `n1`, …, answering 1, 2, … connections) that all see each other.
async fn cluster<E: Env>(env: &E, n: usize, opts: &ClusterOptions) -> Vec<Node<E::T>> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(node(env, &format!("n{i}"), opts, i as u64 + 1).await);
    }
    let all = nodes.clone();
    assert!(
        eventually(Duration::from_secs(3), || all
            .iter()
            .all(|(a, _)| a.live_nodes().len() == n - 1))
        .await,
        "nodes did not discover each other: {:?}",
        all.iter().map(|(a, _)| a.live_nodes()).collect::<Vec<_>>()
    );
    nodes
}

// ---------------------------------------------------------------------------------------------
// Scenarios, generic over the environment

async fn publish_reaches_every_handler_exactly_once<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 3, &opts).await;
    let (a, _) = &nodes[0];
    a.publish(msg("c", "hello")).await.unwrap();
    nodes[1].0.publish(msg("c", "from-b")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || nodes.iter().all(|(_, r)| r
            .delivered
            .lock()
            .len()
            == 2))
        .await
    );
    // Quiescence: no late duplicate (e.g. an echo) arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (adapter, r) in &nodes {
        let mut frames = r.frames();
        frames.sort();
        assert_eq!(
            frames,
            vec![Bytes::from_static(b"from-b"), Bytes::from_static(b"hello")],
            "node {}",
            adapter.node_id()
        );
    }
    assert_eq!(a.stats().echoes_dropped, 1);
    assert_eq!(a.stats().published, 1);
    assert_eq!(nodes[2].0.stats().received, 2);
}

async fn broadcast_fields_survive_the_trip<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 2, &opts).await;
    let b = Broadcast {
        app_id: "app-1".into(),
        channel: "private-x".into(),
        frame: Bytes::from_static(b"{\"event\":\"e\",\n\"data\":\"v1\"}"),
        frame_v2: Some(Bytes::from_static(b"{\"event\":\"e\",\"data\":\"v2\"}\n")),
        message_id: Some("mid-1".into()),
        serial: Some(42),
        stream_id: Some("stream-7".into()),
        except_socket: Some("123.456".into()),
        member: Some(sockudo_core::adapter::MemberEvent {
            user_id: "u-1".into(),
            seq: 1 << 60,
            change: sockudo_core::adapter::MemberChange::Removed,
        }),
    };
    nodes[0].0.publish(b.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || nodes[1].1.delivered.lock().len()
            == 1)
        .await
    );
    let got = nodes[1].1.delivered.lock()[0].clone();
    assert_eq!(
        (got.app_id, got.channel, got.frame, got.frame_v2),
        (b.app_id, b.channel, b.frame, b.frame_v2)
    );
    assert_eq!(
        got.member, b.member,
        "a member event keeps its user and sequence number"
    );
    assert_eq!(
        (got.message_id, got.serial, got.stream_id, got.except_socket),
        (b.message_id, b.serial, b.stream_id, b.except_socket)
    );
}

async fn order_is_preserved<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 3, &opts).await;
    let expected: Vec<Bytes> = (0..200).map(|i| Bytes::from(format!("m{i}"))).collect();
    for f in &expected {
        nodes[0].0.publish(msg("ordered", f.clone())).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(3), || nodes.iter().all(|(_, r)| r
            .delivered
            .lock()
            .len()
            >= 200))
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (a, r) in &nodes {
        assert_eq!(r.frames(), expected, "order on {}", a.node_id());
    }
}

async fn control_reaches_every_node<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 3, &opts).await;
    let c = ControlMessage::TerminateUser {
        app_id: "app".into(),
        user_id: "u1".into(),
    };
    nodes[1].0.control(c.clone()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || nodes
            .iter()
            .all(|(_, r)| !r.controls.lock().is_empty()))
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (_, r) in &nodes {
        assert_eq!(*r.controls.lock(), vec![c.clone()]);
    }
}

async fn query_merges_every_live_node<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 3, &opts).await;
    for (a, _) in &nodes {
        let n = a
            .query(ClusterQuery::ConnectionCount {
                app_id: "app".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            n,
            ClusterAnswer::Count { count: 1 + 2 + 3 },
            "asked {}",
            a.node_id()
        );
    }
    let ClusterAnswer::Channels { mut channels } = nodes[0]
        .0
        .query(ClusterQuery::Channels {
            app_id: "app".into(),
            prefix: None,
        })
        .await
        .unwrap()
    else {
        panic!("channels answer expected")
    };
    channels.sort();
    assert_eq!(
        channels,
        vec![
            ("only-1".into(), 1),
            ("only-2".into(), 2),
            ("only-3".into(), 3),
            ("shared".into(), 3)
        ]
    );
}

async fn query_fails_rather_than_undercount<E: Env>(env: &E) {
    // node_timeout well above request_timeout: the silent node is still live when the query gives up.
    let opts = ClusterOptions {
        node_timeout: Duration::from_millis(1000),
        ..fast()
    };
    let nodes = cluster(env, 3, &opts).await;
    nodes[2].0.halt(); // still "live" for node_timeout, but no longer answers
    let r = nodes[0]
        .0
        .query(ClusterQuery::ConnectionCount {
            app_id: "app".into(),
        })
        .await;
    assert!(
        matches!(r, Err(AdapterError::Timeout { missing: 1 })),
        "{r:?}"
    );
    assert_eq!(nodes[0].0.stats().query_timeouts, 1);
    // Once it is declared dead, queries succeed without it.
    assert!(
        eventually(Duration::from_secs(3), || nodes[0].0.live_nodes()
            == vec!["n1".to_owned()])
        .await
    );
    let n = nodes[0]
        .0
        .query(ClusterQuery::ConnectionCount {
            app_id: "app".into(),
        })
        .await
        .unwrap();
    assert_eq!(n.count(), 1 + 2);
}

async fn dead_node_is_swept_once<E: Env>(env: &E) {
    let opts = fast();
    let mut nodes = cluster(env, 3, &opts).await;
    let ch = "presence-room";
    let (c, _) = nodes.pop().unwrap();
    assert!(c.presence_join(pjoin(ch, "only-c")).await.unwrap().first);
    assert!(c.presence_join(pjoin(ch, "only-c-2")).await.unwrap().first);
    assert!(c.presence_join(pjoin(ch, "shared")).await.unwrap().first);
    env.settle().await;
    assert!(
        !nodes[0]
            .0
            .presence_join(pjoin(ch, "shared"))
            .await
            .unwrap()
            .first
    );
    drop(c); // the last handle: its tasks are aborted, it stops heartbeating
    let survivors = nodes.clone();
    let removed_total = || {
        survivors
            .iter()
            .map(|(_, r)| r.removed.lock().len())
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(3), || removed_total() >= 2).await,
        "the dead node was not swept"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // let every survivor run its sweep
    let mut users: Vec<String> = nodes.iter().flat_map(|(_, r)| r.removed_users()).collect();
    users.sort();
    assert_eq!(
        users,
        vec!["only-c".to_owned(), "only-c-2".to_owned()],
        "each removal is reported once, across survivors"
    );
    let members: Vec<String> = nodes[1]
        .0
        .presence_members("app", ch)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members, vec!["shared".to_owned()]);
    for (a, _) in &nodes {
        assert!(
            !a.live_nodes().contains(&"n2".to_owned()),
            "{} still thinks n2 is live",
            a.node_id()
        );
    }
}

async fn leave_cluster_sweeps_at_once<E: Env>(env: &E) {
    // A long node timeout: peers must forget the leaver from its "leaving" message, well
    // before liveness could have told them (the wait below is half of it).
    let opts = ClusterOptions {
        node_timeout: Duration::from_secs(6),
        ..fast()
    };
    let mut nodes = cluster(env, 3, &opts).await;
    let ch = "presence-leave";
    let (c, _) = nodes.pop().unwrap();
    c.presence_join(pjoin(ch, "only-c")).await.unwrap();
    c.presence_join(pjoin(ch, "shared")).await.unwrap();
    nodes[0].0.presence_join(pjoin(ch, "shared")).await.unwrap();
    env.settle().await;
    let removed = c.leave_cluster().await.unwrap();
    let seq = removed.first().map_or(0, |r| r.seq);
    assert!(
        seq > 0,
        "a removal takes a presence sequence number: {removed:?}"
    );
    assert_eq!(
        removed,
        vec![RemovedMember {
            app_id: "app".into(),
            channel: ch.into(),
            user_id: "only-c".into(),
            seq
        }]
    );
    assert!(
        c.leave_cluster().await.unwrap().is_empty(),
        "leaving twice removes nothing more"
    );
    assert!(
        c.presence_join(pjoin(ch, "late")).await.is_err(),
        "no presence after leaving"
    );
    // Peers forget it long before node_timeout.
    let peers = nodes.clone();
    assert!(
        eventually(Duration::from_secs(3), || peers.iter().all(|(a, _)| a
            .live_nodes()
            == vec![if a.node_id() == "n0" { "n1" } else { "n0" }.to_owned()]))
        .await
    );
    // And nobody announces its members again, not even once the node timeout has passed.
    tokio::time::sleep(opts.node_timeout + Duration::from_secs(1)).await;
    assert!(nodes.iter().all(|(_, r)| r.removed.lock().is_empty()));
    let members: Vec<String> = nodes[0]
        .0
        .presence_members("app", ch)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    assert_eq!(members, vec!["shared".to_owned()]);
    drop(c);
}

async fn restart_under_same_id_announces_stale_members<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 2, &opts).await;
    let ch = "presence-restart";
    nodes[1].0.presence_join(pjoin(ch, "ghost")).await.unwrap();
    env.settle().await;
    nodes[1].0.halt(); // crash…
                       // … and come back at once under the same id, before anyone times it out.
    let (again, r) = node(env, "n1", &opts, 2).await;
    assert!(
        eventually(Duration::from_secs(2), || r.removed_users()
            == vec!["ghost".to_owned()])
        .await
    );
    assert!(again
        .presence_members("app", ch)
        .await
        .unwrap()
        .members
        .is_empty());
    tokio::time::sleep(opts.node_timeout * 2).await;
    assert!(
        nodes[0].1.removed.lock().is_empty(),
        "the restarted node kept heartbeating: nobody else sweeps"
    );
}

/// Two live nodes under one id: the newcomer steps back, nothing is deleted, nothing is
/// dropped as an echo, and the newcomer takes the id over once the older one leaves.
async fn duplicate_node_id_steps_back<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 2, &opts).await;
    let ch = "presence-twins";
    nodes[1].0.presence_join(pjoin(ch, "alice")).await.unwrap();
    env.settle().await;
    let (twin, twin_rec) = node(env, "n1", &opts, 7).await;
    assert!(
        twin.is_duplicate(),
        "the newcomer must detect the live node"
    );
    assert!(!twin.is_healthy());
    let reason = twin.unready_reason().unwrap();
    assert!(reason.contains("duplicate node id"), "{reason}");
    assert_eq!(
        nodes[1].0.unready_reason(),
        None,
        "the older node keeps serving"
    );
    assert!(matches!(
        twin.presence_join(pjoin(ch, "bob")).await,
        Err(AdapterError::Unavailable(_))
    ));
    let members = |a: &Arc<ClusterAdapter<E::T>>| {
        let a = a.clone();
        async move {
            let mut m: Vec<String> = a
                .presence_members("app", ch)
                .await
                .unwrap()
                .members
                .into_iter()
                .map(|m| m.user_id)
                .collect();
            m.sort();
            m
        }
    };
    assert_eq!(members(&nodes[0].0).await, vec!["alice".to_owned()]);
    // A second newcomer that leaves at once withdraws nothing.
    let (twin2, _) = node(env, "n1", &opts, 0).await;
    assert!(twin2.is_duplicate());
    assert!(twin2.leave_cluster().await.unwrap().is_empty());
    drop(twin2);
    assert_eq!(members(&nodes[0].0).await, vec!["alice".to_owned()]);
    // Twins do not take each other's messages for echoes.
    nodes[1].0.publish(msg("c", "from-old")).await.unwrap();
    twin.publish(msg("c", "from-new")).await.unwrap();
    let has = |r: &Arc<Recorder>, f: &'static [u8]| r.frames().contains(&Bytes::from_static(f));
    assert!(
        eventually(Duration::from_secs(2), || has(&twin_rec, b"from-old")
            && has(&nodes[1].1, b"from-new")
            && has(&nodes[0].1, b"from-old")
            && has(&nodes[0].1, b"from-new"))
        .await
    );
    assert_eq!(nodes[0].1.frames().len(), 2, "exactly once each");
    assert!(twin.stats().duplicate_node_ids >= 1);
    assert!(nodes[1].0.stats().duplicate_node_ids >= 1);
    assert!(
        twin_rec.removed_users().is_empty(),
        "nothing swept meanwhile"
    );
    // The older node leaves: the newcomer takes the id over and becomes ready.
    let gone = nodes[1].0.leave_cluster().await.unwrap();
    assert_eq!(gone.len(), 1);
    assert!(
        eventually(Duration::from_secs(2), || !twin.is_duplicate()
            && twin.unready_reason().is_none())
        .await
    );
    twin.presence_join(pjoin(ch, "bob")).await.unwrap();
    env.settle().await;
    assert_eq!(members(&nodes[0].0).await, vec!["bob".to_owned()]);
}

/// With routing, a node hears a channel only while it watches it; without, always.
async fn interest_routing_skips_nodes_without_subscribers<E: Env>(env: &E) {
    let opts = fast();
    let nodes = cluster(env, 3, &opts).await;
    assert!(nodes[0].0.routes_by_interest());
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    b.0.watch_channel("app", "only-b").await.unwrap();
    b.0.watch_channel("app", "only-b").await.unwrap(); // a second local subscriber
    let before = c.0.stats().received_bytes;
    a.0.publish(msg("only-b", "1")).await.unwrap();
    let has = |r: &Arc<Recorder>, f: &'static [u8]| r.frames().contains(&Bytes::from_static(f));
    assert!(eventually(Duration::from_secs(2), || has(&b.1, b"1")).await);
    b.0.unwatch_channel("app", "only-b"); // one of two gone: still routed
    a.0.publish(msg("only-b", "2")).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || has(&b.1, b"2")).await);
    b.0.unwatch_channel("app", "only-b"); // the last one: no longer routed
    assert_eq!(b.0.watched_channels(), WATCHED.len());
    a.0.publish(msg("only-b", "3")).await.unwrap();
    b.0.watch_channel("app", "only-b").await.unwrap();
    a.0.publish(msg("only-b", "4")).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || has(&b.1, b"4")).await);
    // A marker on a channel everyone watches: once it arrived, "3" would have too.
    a.0.publish(msg("c", "marker")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || has(&b.1, b"marker")
            && has(&c.1, b"marker"))
        .await
    );
    // ("3" may or may not reach b: a broker may end a dropped subscription only when its
    // next message arrives, and b subscribed again right after.)
    assert!(!c
        .1
        .frames()
        .iter()
        .any(|f| ["1", "2", "3", "4"].contains(&&*String::from_utf8_lossy(f))));
    let marker_bytes = c.0.stats().received_bytes - before;
    assert!(
        marker_bytes > 0 && marker_bytes < 200,
        "c received only the marker: {marker_bytes} bytes"
    );

    // Without routing every node hears everything, on the shared topic.
    let opts = ClusterOptions {
        interest_routing: false,
        ..fast()
    };
    let nodes = cluster(env, 2, &opts).await;
    assert!(!nodes[0].0.routes_by_interest());
    nodes[0].0.publish(msg("unwatched", "all")).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || has(&nodes[1].1, b"all")).await);
}

async fn names_are_checked_at_start<E: Env>(env: &E) {
    for id in ["", "node#1", "a b", "node*", "x..y"] {
        let r = start(env, id, fast()).await;
        assert!(matches!(r, Err(AdapterError::Malformed(_))), "{id:?}");
    }
    let bad = ClusterOptions {
        prefix: "sock#udo".into(),
        ..fast()
    };
    assert!(matches!(
        start(env, "ok", bad).await,
        Err(AdapterError::Malformed(_))
    ));
}

async fn nothing_before_attach<E: Env>(env: &E) {
    // The shared broadcast topic is subscribed at start: what it carries before attach waits.
    let opts = ClusterOptions {
        interest_routing: false,
        ..fast()
    };
    let a = start(env, "solo", opts.clone()).await.unwrap();
    assert!(matches!(
        a.publish(msg("c", "x")).await,
        Err(AdapterError::NotAttached)
    ));
    assert!(matches!(
        a.query(ClusterQuery::ConnectionCount {
            app_id: "app".into()
        })
        .await,
        Err(AdapterError::NotAttached)
    ));
    let routed = start(env, "solo2", fast()).await.unwrap();
    assert!(matches!(
        routed.watch_channel("app", "c").await,
        Err(AdapterError::NotAttached)
    ));
    drop(routed);
    let peer = node(env, "peer", &opts, 1).await;
    peer.0.publish(msg("c", "early")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = Recorder::with_connections(5);
    a.attach(r.clone());
    // What arrived before attach waited in the subscription and is delivered now, once.
    assert!(
        eventually(Duration::from_secs(2), || r.frames()
            == vec![Bytes::from_static(b"early")])
        .await
    );
    let bad = ClusterOptions {
        node_timeout: Duration::from_secs(31),
        ..fast()
    };
    assert!(start(env, "x", bad).await.is_err());
    let bad = ClusterOptions {
        node_timeout: Duration::from_millis(50),
        ..fast()
    };
    assert!(start(env, "x", bad).await.is_err());
}

macro_rules! scenarios {
    ($env:expr) => {
        scenarios!(@ $env, publish_reaches_every_handler_exactly_once, broadcast_fields_survive_the_trip, order_is_preserved,
            control_reaches_every_node, query_merges_every_live_node, query_fails_rather_than_undercount,
            dead_node_is_swept_once, leave_cluster_sweeps_at_once, restart_under_same_id_announces_stale_members,
            nothing_before_attach, duplicate_node_id_steps_back, names_are_checked_at_start,
            interest_routing_skips_nodes_without_subscribers);
    };
    (@ $env:expr, $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let env = $env;
                super::$name(&env).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// In-memory environment

struct MemoryEnv {
    hub: MemoryTransport,
    presence: Arc<MemoryPresenceStore>,
}

impl MemoryEnv {
    fn new() -> Self {
        MemoryEnv {
            hub: MemoryTransport::new(),
            presence: Arc::new(MemoryPresenceStore::new()),
        }
    }
}

#[async_trait]
impl Env for MemoryEnv {
    type T = MemoryTransport;
    async fn transport(&self) -> Arc<MemoryTransport> {
        Arc::new(self.hub.node())
    }
    async fn presence(
        &self,
        _id: &str,
        _t: &Arc<MemoryTransport>,
        _o: &ClusterOptions,
    ) -> Arc<dyn PresenceStore> {
        self.presence.clone()
    }
}

/// The scenarios over the memory transport with presence replicated over it.
mod memory_replicated {
    use super::*;

    scenarios!(Replicated::new(MemoryEnv::new()));
}

mod memory {
    use super::*;

    scenarios!(MemoryEnv::new());

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn outage_is_visible_and_heals() {
        let env = MemoryEnv::new();
        let nodes = cluster(&env, 2, &fast()).await;
        let t = nodes[0].0.transport().clone();
        t.set_healthy(false);
        assert!(!nodes[0].0.is_healthy());
        assert!(nodes[0].0.publish(msg("c", "lost")).await.is_err());
        // Blind to everyone, it declares no one dead; the other side does time it out.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(nodes[0].0.live_nodes(), vec!["n1".to_owned()]);
        assert!(nodes[1].0.live_nodes().is_empty());
        t.set_healthy(true);
        assert!(nodes[0].0.is_healthy());
        assert!(
            eventually(Duration::from_secs(2), || nodes[1].0.live_nodes()
                == vec!["n0".to_owned()])
            .await
        );
        nodes[0].0.publish(msg("c", "back")).await.unwrap();
        assert!(
            eventually(Duration::from_secs(2), || nodes[1].1.frames()
                == vec![Bytes::from_static(b"back")])
            .await
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Redis environment

#[cfg(feature = "redis")]
mod redis_env {
    use sockudo_core::adapter::{
        presence::conformance, RedisPresenceOptions, RedisPresenceStore, RedisTransport,
    };

    use super::*;

    use crate::redis_server::RedisServer as RedisProcess;

    pub struct RedisEnv {
        pub server: RedisProcess,
        presence: Arc<RedisPresenceStore>,
    }

    impl RedisEnv {
        pub async fn new() -> Self {
            let server = RedisProcess::start();
            let presence = Arc::new(RedisPresenceStore::connect(&server.url()).await.unwrap());
            RedisEnv { server, presence }
        }
    }

    #[async_trait]
    impl Env for RedisEnv {
        type T = RedisTransport;
        async fn transport(&self) -> Arc<RedisTransport> {
            Arc::new(RedisTransport::connect(&self.server.url()).await.unwrap())
        }
        async fn presence(
            &self,
            _id: &str,
            _t: &Arc<RedisTransport>,
            _o: &ClusterOptions,
        ) -> Arc<dyn PresenceStore> {
            self.presence.clone()
        }
    }

    scenarios!(RedisEnv::new().await);

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn presence_store_conformance() {
        let env = RedisEnv::new().await;
        conformance::run_all(&conformance::SharedNodes(env.presence.clone()), "a").await;
        // Another prefix on the same server is another namespace.
        let other = RedisPresenceStore::connect_with(
            &env.server.url(),
            RedisPresenceOptions {
                prefix: "other".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        conformance::run_all(&conformance::SharedNodes(Arc::new(other)), "a").await;
        assert!(
            env.presence.nodes().await.unwrap().is_empty(),
            "sweeps leave no node behind"
        );
        // Nothing is left in Redis but the channels' presence sequence numbers, which must
        // outlive their members (a restarted sequence would make fresh member events look
        // stale) and so expire instead.
        let client = redis::Client::open(env.server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            keys.iter().all(|k| k.ends_with(":seq")),
            "left behind: {keys:?}"
        );
        for k in &keys {
            let ttl: i64 = redis::cmd("TTL").arg(k).query_async(&mut c).await.unwrap();
            assert!(ttl > 0, "{k} never expires");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_sweeps_report_each_member_once() {
        let env = RedisEnv::new().await;
        let store = env.presence.clone();
        for i in 0..300 {
            let ch = format!("presence-{}", i % 7);
            let user = format!("u{i}");
            store.join("dead", pjoin(&ch, &user)).await.unwrap();
        }
        let sweeps: Vec<_> = (0..4)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.sweep_node("dead").await.unwrap() })
            })
            .collect();
        let mut users = Vec::new();
        for s in sweeps {
            users.extend(s.await.unwrap().into_iter().map(|r| r.user_id));
        }
        users.sort();
        users.dedup();
        assert_eq!(users.len(), 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn large_channel_members() {
        // Beyond what Lua's `unpack` takes: written straight into the documented layout.
        let env = RedisEnv::new().await;
        let client = redis::Client::open(env.server.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut users = redis::cmd("HSET");
        users.arg("sockudo:presence:{app:presence-big}:users");
        let mut infos = redis::cmd("HSET");
        infos.arg("sockudo:presence:{app:presence-big}:info");
        for i in 0..9_000 {
            users.arg(format!("u{i:05}")).arg(1);
            if i % 2 == 0 {
                infos.arg(format!("u{i:05}")).arg("{}");
            }
        }
        let _: i64 = users.query_async(&mut c).await.unwrap();
        let _: i64 = infos.query_async(&mut c).await.unwrap();
        let m = env
            .presence
            .members("app", "presence-big")
            .await
            .unwrap()
            .members;
        assert_eq!(m.len(), 9_000);
        assert_eq!(
            (m[0].user_id.as_str(), m[0].info.as_deref()),
            ("u00000", Some("{}"))
        );
        assert_eq!(m[1].info, None);
        let o = env
            .presence
            .join(
                "n",
                PresenceJoin {
                    max_members: 10_000,
                    ..pjoin("presence-big", "late")
                },
            )
            .await
            .unwrap();
        assert!(o.first && !o.full);
        assert_eq!(o.members.len(), 9_001);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn orphaned_node_is_swept() {
        let env = RedisEnv::new().await;
        // A node that died before anyone here started: only the store remembers it.
        env.presence
            .join("ghost-node", pjoin("presence-o", "ghost"))
            .await
            .unwrap();
        let nodes = cluster(&env, 2, &fast()).await;
        let all = nodes.clone();
        // Two consecutive checks, node_timeout apart, after node_timeout of uptime.
        assert!(
            eventually(Duration::from_secs(4), || all
                .iter()
                .map(|(_, r)| r.removed.lock().len())
                .sum::<usize>()
                == 1)
            .await
        );
        assert!(env
            .presence
            .members("app", "presence-o")
            .await
            .unwrap()
            .members
            .is_empty());
        assert_eq!(env.presence.nodes().await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn connect_fails_when_redis_is_down() {
        let port = crate::redis_server::free_port();
        let url = format!("redis://127.0.0.1:{port}");
        assert!(matches!(
            RedisTransport::connect(&url).await,
            Err(AdapterError::Unavailable(_))
        ));
        assert!(matches!(
            RedisPresenceStore::connect(&url).await,
            Err(AdapterError::Unavailable(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_restart_is_visible_and_heals() {
        let mut env = RedisEnv::new().await;
        let port = env.server.port;
        let nodes = cluster(&env, 2, &fast()).await;
        env.server.stop();
        let a = nodes[0].0.clone();
        assert!(
            eventually(Duration::from_secs(3), || !a.is_healthy()).await,
            "outage not visible"
        );
        let started = std::time::Instant::now();
        assert!(a.publish(msg("c", "lost")).await.is_err());
        // A subscription the broker cannot confirm is refused (a client would be told 503).
        assert!(matches!(
            a.watch_channel("app", "during-outage").await,
            Err(AdapterError::Unavailable(_))
        ));
        a.unwatch_channel("app", "during-outage");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "publish took {:?}",
            started.elapsed()
        );
        // Longer than node_timeout: nobody may be declared dead for a transport outage.
        tokio::time::sleep(Duration::from_millis(800)).await;
        env.server = RedisProcess::start_on(port);
        assert!(
            eventually(Duration::from_secs(6), || nodes
                .iter()
                .all(|(a, _)| a.is_healthy()))
            .await,
            "health did not return"
        );
        // The subscription resumed by itself: a publish after the restart arrives.
        let b = nodes[1].clone();
        let mut delivered = false;
        for i in 0..50 {
            // The subscriber may re-subscribe a little after the publisher reconnects.
            let _ = a.publish(msg("c", format!("back-{i}"))).await;
            if eventually(Duration::from_millis(100), || {
                !b.1.delivered.lock().is_empty()
            })
            .await
            {
                delivered = true;
                break;
            }
        }
        assert!(delivered, "no message after the restart");
        assert!(
            eventually(Duration::from_secs(3), || nodes
                .iter()
                .all(|(a, _)| a.live_nodes().len() == 1))
            .await
        );
        assert!(nodes.iter().all(|(_, r)| r.removed.lock().is_empty()));
        let t = a.transport();
        assert!(
            t.connections() >= 2,
            "the pub/sub connection was re-established"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What the broker environments share (nodes on one presence store, restart checks)

#[cfg(any(
    feature = "nats",
    feature = "google-pubsub",
    feature = "rabbitmq",
    feature = "pulsar",
    feature = "kafka"
))]
#[path = "adapter_cluster/broker_env.rs"]
mod broker_env;

// ---------------------------------------------------------------------------------------------
// NATS environment (after `scenarios!`, which it uses)

#[cfg(feature = "nats")]
#[path = "adapter_cluster/nats_env.rs"]
mod nats_env;

/// The scenarios with presence replicated over NATS (no shared store at all).
#[cfg(feature = "nats")]
mod nats_replicated {
    use super::*;

    scenarios!(Replicated::new(nats_env::NatsEnv::new().await));
}

/// The scenarios with presence replicated over Redis pub/sub (`PRESENCE_DRIVER=transport`
/// with the Redis adapter).
#[cfg(feature = "redis")]
mod redis_replicated {
    use super::*;

    scenarios!(Replicated::new(redis_env::RedisEnv::new().await));
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster environment (sharded pub/sub; after `scenarios!`, which it uses)

#[cfg(feature = "redis")]
#[path = "support/redis_cluster.rs"]
mod redis_cluster;

#[cfg(feature = "redis")]
#[path = "adapter_cluster/redis_cluster_env.rs"]
mod redis_cluster_env;

// ---------------------------------------------------------------------------------------------
// Google Pub/Sub environment (the official emulator; after `scenarios!`, which it uses)

#[cfg(feature = "google-pubsub")]
#[path = "support/pubsub_emulator.rs"]
mod pubsub_emulator;

#[cfg(feature = "google-pubsub")]
#[path = "adapter_cluster/google_pubsub_env.rs"]
mod google_pubsub_env;

// ---------------------------------------------------------------------------------------------
// RabbitMQ environment (a private broker node; after `scenarios!`, which it uses)

#[cfg(feature = "rabbitmq")]
#[path = "support/rabbitmq_server.rs"]
mod rabbitmq_server;

#[cfg(feature = "rabbitmq")]
#[path = "adapter_cluster/rabbitmq_env.rs"]
mod rabbitmq_env;

// ---------------------------------------------------------------------------------------------
// Pulsar environment (pulsar-lite broker; after `scenarios!`, which it uses)

#[cfg(feature = "pulsar")]
#[path = "support/pulsar_server.rs"]
mod pulsar_server;

#[cfg(feature = "pulsar")]
#[path = "adapter_cluster/pulsar_env.rs"]
mod pulsar_env;

// ---------------------------------------------------------------------------------------------
// Kafka API environment (Tansu broker; after `scenarios!`, which it uses)

#[cfg(feature = "kafka")]
#[path = "support/kafka_server.rs"]
mod kafka_server;

#[cfg(feature = "kafka")]
#[path = "adapter_cluster/kafka_env.rs"]
mod kafka_env;
