//! [`Transport`] over Redis Cluster sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`; feature `redis`).
//!
//! A sharded channel lives on the primary that owns its hash slot: a `SPUBLISH` reaches the
//! subscribers of that shard only, so a message crosses one shard instead of every node of
//! the Redis Cluster (which classic `PUBLISH` does). Topics are spread over the shards by
//! name, so the cluster's pub/sub load scales with its primaries.
//!
//! # Connection
//! One cluster connection (RESP3, a multiplexed connection per primary) carries both the
//! publishes and the subscriptions. It routes each `SPUBLISH`/`SSUBSCRIBE` by the topic's
//! slot, follows redirections, and when a primary fails over or slots move it refreshes the
//! slot map and re-subscribes every tracked topic on the shard's new owner by itself.
//! Messages published to a shard while its primary was down or before the re-subscription
//! are lost (Redis pub/sub keeps nothing); the cluster adapter above copes through readiness,
//! liveness and V2 gap repair from the history store.
//!
//! # Guarantees
//! - `publish`: `Ok` once the shard's primary accepted the `SPUBLISH`, under
//!   [`RedisTransportOptions::publish_timeout`]; publishes issued one after another by one
//!   caller on one topic reach the subscribers in that order (one shard, one connection).
//! - `subscribe`: returns once the shard confirmed the `SSUBSCRIBE`; refused while the
//!   transport is unhealthy (the caller must not be told it receives the topic).
//! - Each subscription is a bounded queue ([`RedisTransportOptions::queue_capacity`]); a
//!   full queue drops the message for that subscription and counts it, as the single-server
//!   transport does. Dropping every stream of a topic ends its subscription at the next
//!   message or health check (`SUNSUBSCRIBE`).
//!
//! # Health
//! The transport turns unhealthy as soon as one of its connections closes (the library
//! reports it) or a `PING` to every primary, sent each
//! [`RedisTransportOptions::ping_interval`], fails; from then on, at each interval, every
//! topic is subscribed again (`SSUBSCRIBE` goes to whichever primary owns the slot now), and
//! the transport is healthy again once all of that succeeded. So a primary that died keeps
//! it unhealthy (and `/ready` at 503) until its replica took over and every subscription
//! lives on the new owner. A publish that fails also marks it unhealthy until the next
//! successful check. A subscription the server drops because its slot moved (resharding)
//! is subscribed again at the next interval too.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::redis_transport::{
    prune, request_subscription, route, with_timeout, Command, RedisTransportOptions, Topics,
};
use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

#[derive(Debug, Default)]
struct Shared {
    primaries_up: AtomicBool,
    publish_ok: AtomicBool,
    dropped: AtomicU64,
}

/// Redis Cluster sharded pub/sub [`Transport`]; see the module docs.
pub struct RedisClusterTransport {
    conn: ClusterConnection,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    opts: RedisTransportOptions,
}

impl fmt::Debug for RedisClusterTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClusterTransport")
            .field("shared", &self.shared)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisClusterTransport {
    fn drop(&mut self) {
        // Ends the subscriber task, which drops every queue sender: the streams end.
        self.task.abort();
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> AdapterError {
    AdapterError::Unavailable(format!("redis cluster {what}: {e}"))
}

impl RedisClusterTransport {
    /// Connect to the cluster behind `nodes` (seed URLs) with the default options.
    pub async fn connect(nodes: &[String]) -> Result<Self, AdapterError> {
        Self::connect_with(nodes, RedisTransportOptions::default()).await
    }

    /// Connect with explicit options. Fails when no primary answers a `PING` within the
    /// connect timeout. Must be called inside a Tokio runtime.
    pub async fn connect_with(
        nodes: &[String],
        opts: RedisTransportOptions,
    ) -> Result<Self, AdapterError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let connect = async {
            let mut conn =
                crate::redis_conn::cluster(nodes, opts.publish_timeout, Some(push_tx)).await?;
            ping_primaries(&mut conn).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(conn)
        };
        let conn = match tokio::time::timeout(opts.connect_timeout, connect).await {
            Ok(r) => r.map_err(|e| unavailable("connect", e))?,
            Err(_) => {
                return Err(unavailable(
                    "connect",
                    format!("no answer within {} ms", opts.connect_timeout.as_millis()),
                ))
            }
        };
        let shared = Arc::new(Shared::default());
        shared.primaries_up.store(true, Ordering::SeqCst);
        shared.publish_ok.store(true, Ordering::SeqCst);
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(subscriber_task(
            conn.clone(),
            shared.clone(),
            rx,
            push_rx,
            opts.clone(),
        ));
        Ok(RedisClusterTransport {
            conn,
            shared,
            commands,
            task,
            opts,
        })
    }

    /// Messages dropped because a subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// `PING` every primary; `Err` unless all answered.
async fn ping_primaries(conn: &mut ClusterConnection) -> redis::RedisResult<()> {
    let routing = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::AllSucceeded),
    ));
    conn.route_command(redis::cmd("PING"), routing)
        .await
        .map(|_| ())
}

#[async_trait]
impl Transport for RedisClusterTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("SPUBLISH")
            .arg(topic)
            .arg(payload.as_ref())
            .to_owned();
        let r = with_timeout(
            self.opts.publish_timeout,
            cmd.query_async::<Value>(&mut conn),
        )
        .await
        .map(|_| ())
        .map_err(|e| unavailable("SPUBLISH", e));
        self.shared.publish_ok.store(r.is_ok(), Ordering::SeqCst);
        r
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        if !self.shared.primaries_up.load(Ordering::SeqCst) {
            return Err(unavailable("subscribe", "a primary is unreachable"));
        }
        request_subscription(&self.commands, topic, self.opts.queue_capacity)
            .await
            .map_err(|e| unavailable("subscribe", e))
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.shared.primaries_up.load(Ordering::SeqCst)
            && self.shared.publish_ok.load(Ordering::SeqCst)
    }
}

/// The topic and payload of a sharded message push.
fn smessage(push: &PushInfo) -> Option<(&[u8], &[u8])> {
    if push.kind != PushKind::SMessage {
        return None;
    }
    match push.data.as_slice() {
        [Value::BulkString(topic), Value::BulkString(payload)] => Some((topic, payload)),
        _ => None,
    }
}

async fn sunsubscribe(conn: &mut ClusterConnection, gone: &[String], opts: &RedisTransportOptions) {
    if gone.is_empty() {
        return;
    }
    // The library forgets the topics even when a shard is unreachable: it will not
    // re-subscribe them.
    if let Err(e) = with_timeout(opts.connect_timeout, conn.sunsubscribe(gone)).await {
        tracing::debug!(error = %e, "redis cluster transport: SUNSUBSCRIBE failed");
    }
}

/// `SSUBSCRIBE` every topic again (one command each: a multi-channel `SSUBSCRIBE` must stay
/// in one slot). Returns false when any failed.
async fn resubscribe_all(
    conn: &mut ClusterConnection,
    topics: &Topics,
    opts: &RedisTransportOptions,
) -> bool {
    let mut ok = true;
    for topic in topics.keys() {
        if let Err(e) = with_timeout(opts.connect_timeout, conn.ssubscribe(topic)).await {
            tracing::debug!(topic, error = %e, "redis cluster transport: re-SSUBSCRIBE failed");
            ok = false;
        }
    }
    ok
}

async fn subscriber_task(
    mut conn: ClusterConnection,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    opts: RedisTransportOptions,
) {
    let mut topics: Topics = HashMap::new();
    // Set when a shard may have lost our subscriptions (a primary was unreachable, or the
    // server dropped a subscription because its slot moved): every topic is subscribed
    // again before the transport reports healthy. The library re-subscribes on its own
    // reconnections too; doing it here as well covers a failover it noticed only late.
    let mut resubscribe = false;
    let mut ping = tokio::time::interval(opts.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = pushes.recv() => {
                let Some(push) = push else { return };
                if push.kind == PushKind::Disconnection {
                    // A connection to some server closed (a primary died, or the network):
                    // its subscriptions may be gone until the shard is subscribed again.
                    resubscribe = true;
                    if shared.primaries_up.swap(false, Ordering::SeqCst) {
                        tracing::warn!("redis cluster transport: a connection closed; re-subscribing");
                    }
                    continue;
                }
                if push.kind == PushKind::SUnsubscribe {
                    // Unasked (ours are sent only for topics already removed): the slot moved.
                    if let Some(Value::BulkString(t)) = push.data.first() {
                        if std::str::from_utf8(t).is_ok_and(|t| topics.contains_key(t)) {
                            resubscribe = true;
                        }
                    }
                    continue;
                }
                let Some((topic, payload)) = smessage(&push) else { continue };
                let Ok(topic) = std::str::from_utf8(topic) else { continue };
                if let Some(gone) = route(&mut topics, &shared.dropped, topic, payload) {
                    // Inline: a SSUBSCRIBE of the same topic issued next must come after it.
                    sunsubscribe(&mut conn, &[gone], &opts).await;
                }
            }
            cmd = commands.recv() => {
                let Some(Command::Subscribe { topic, tx, done }) = cmd else { return };
                let new = !topics.contains_key(&topic);
                let r = if new {
                    with_timeout(opts.connect_timeout, conn.ssubscribe(&topic)).await
                } else {
                    Ok(())
                };
                if r.is_ok() {
                    topics.entry(topic).or_default().push(tx);
                }
                let _ = done.send(r.map_err(|e| format!("SSUBSCRIBE failed: {e}")));
            }
            _ = ping.tick() => {
                let gone = prune(&mut topics);
                sunsubscribe(&mut conn, &gone, &opts).await;
                let mut ok = with_timeout(opts.connect_timeout, ping_primaries(&mut conn)).await;
                if ok.is_err() {
                    resubscribe = true;
                } else if resubscribe {
                    if resubscribe_all(&mut conn, &topics, &opts).await {
                        resubscribe = false;
                    } else {
                        ok = Err("re-subscribing failed".into());
                    }
                }
                let was_up = shared.primaries_up.swap(ok.is_ok(), Ordering::SeqCst);
                match &ok {
                    Err(e) if was_up => tracing::warn!(error = %e, "redis cluster transport: a primary is unreachable"),
                    Ok(()) if !was_up => tracing::info!(topics = topics.len(), "redis cluster transport: every primary answers again; topics re-subscribed"),
                    _ => {}
                }
                if ok.is_ok() {
                    shared.publish_ok.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}
