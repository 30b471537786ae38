//! The [`Adapter`] contract: how a node's events reach every other node, and how cluster-wide
//! questions are answered.
//!
//! A node attaches one [`NodeHandler`] (its local fanout and local state); the adapter gets
//! each [`Broadcast`] and [`ControlMessage`] to every node's handler, aggregates
//! [`ClusterQuery`] answers over all live nodes, and keeps presence membership in a shared
//! [`PresenceStore`] so member events fire on a user's first/last connection *cluster-wide*.
//!
//! [`LocalAdapter`] is the single-node default. The cluster adapter is [`ClusterAdapter`] over
//! a small [`Transport`] (publish, subscribe as a stream), so another broker only needs a
//! transport driver: [`MemoryTransport`] (in-process, for tests) and, with the `redis`
//! feature, `RedisTransport` + `RedisPresenceStore`; with the `nats` feature, `NatsTransport`;
//! with the `google-pubsub` feature, `GooglePubSubTransport`; with the `rabbitmq` feature,
//! `RabbitmqTransport`; with the `pulsar` feature, `PulsarTransport`; with the `iggy` feature,
//! `IggyTransport` (not proven against an Iggy server); with the `kafka` feature, `KafkaTransport`.
//! Presence lives in a shared store (`RedisPresenceStore`) or is replicated over the transport
//! itself ([`TransportPresenceStore`], for broker-only deployments); both honour the
//! [`PresenceStore`] contract and its conformance suite.

mod cluster;
mod envelope;
#[cfg(feature = "google-pubsub")]
mod google_pubsub_transport;
#[cfg(feature = "iggy")]
mod iggy_transport;
mod interest;
#[cfg(feature = "kafka")]
mod kafka_transport;
mod local;
mod memory_transport;
pub mod names;
#[cfg(feature = "nats")]
mod nats_transport;
pub mod presence;
#[cfg(feature = "pulsar")]
mod pulsar_transport;
#[cfg(feature = "rabbitmq")]
mod rabbitmq_link;
#[cfg(feature = "rabbitmq")]
mod rabbitmq_transport;
#[cfg(feature = "redis")]
mod redis_cluster_transport;
#[cfg(feature = "redis")]
mod redis_presence;
#[cfg(feature = "redis")]
mod redis_transport;
mod transport;
mod transport_presence;
mod twin;
mod types;

use std::sync::Arc;

use async_trait::async_trait;

pub use cluster::{ClusterAdapter, ClusterOptions, ClusterStats};
#[cfg(feature = "google-pubsub")]
pub use google_pubsub_transport::{
    GooglePubSubTransport, GooglePubSubTransportOptions,
    MAX_PUBLISH_BYTES as GOOGLE_PUBSUB_MAX_PUBLISH_BYTES,
};
#[cfg(feature = "iggy")]
pub use iggy_transport::{IggyTransport, IggyTransportOptions, PollCursor};
#[cfg(feature = "kafka")]
pub use kafka_transport::{KafkaSasl, KafkaSaslMechanism, KafkaTransport, KafkaTransportOptions};
pub use local::LocalAdapter;
pub use memory_transport::MemoryTransport;
#[cfg(feature = "nats")]
pub use nats_transport::{NatsTransport, NatsTransportOptions};
pub use presence::{MemoryPresenceStore, PresenceStore};
#[cfg(feature = "pulsar")]
pub use pulsar_transport::{PulsarTransport, PulsarTransportOptions};
#[cfg(feature = "rabbitmq")]
pub use rabbitmq_transport::{
    routing_key as rabbitmq_routing_key, RabbitmqTransport, RabbitmqTransportOptions,
    RABBITMQ_DEFAULT_MAX_MESSAGE_BYTES,
};
#[cfg(feature = "redis")]
pub use redis_cluster_transport::RedisClusterTransport;
#[cfg(feature = "redis")]
pub use redis_presence::{RedisPresenceOptions, RedisPresenceStore};
#[cfg(feature = "redis")]
pub use redis_transport::{RedisTransport, RedisTransportOptions};
pub use transport::{Transport, TransportCapabilities, TransportStream};
pub use transport_presence::{
    TransportPresenceOptions, TransportPresenceStats, TransportPresenceStore,
};
pub use types::*;

/// What a node exposes to its adapter.
pub trait NodeHandler: Send + Sync + 'static {
    /// Deliver to local subscribers. Must not block: implementations enqueue into bounded
    /// per-connection queues and return.
    fn deliver(&self, msg: &Broadcast);

    /// Act on a cluster-wide command (e.g. close a user's connections on this node).
    fn control(&self, msg: &ControlMessage);

    /// Answer a question from this node's local state only.
    fn answer(&self, query: &ClusterQuery) -> ClusterAnswer;

    /// Presence members whose last connection was on a node that died (or left): the node
    /// that swept them announces `member_removed` to subscribers.
    fn members_removed(&self, removed: Vec<RemovedMember>);

    /// Member events of a replicated presence store (see [`ReplicatedMemberEvent`]):
    /// announce those marked `announce` cluster-wide, deliver the others to local
    /// subscribers only. The default ignores them.
    fn replicated_member_events(&self, events: Vec<ReplicatedMemberEvent>) {
        let _ = events;
    }
}

/// Cross-node fanout, cluster queries and presence.
///
/// Contract:
/// - `publish`: `Ok` means the message was delivered to this node's handler and accepted by
///   the transport for every other live node; each handler receives it **exactly once** (the
///   origin's echo from the transport is dropped). `Err` means other nodes may not have it.
/// - Messages published by one node to one channel reach each handler in publish order.
/// - `control` reaches every live node's handler, including this one.
/// - `query` aggregates the answers of every live node (this one included); when a node does
///   not answer within the adapter's timeout the query fails rather than under-counting.
/// - Presence methods are atomic in the shared store, or on this node's replica with
///   presence replicated over the transport; see [`PresenceStore`].
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Register this node's handler; called once at start, before anything else.
    fn attach(&self, handler: Arc<dyn NodeHandler>);

    /// This node's id in the cluster.
    fn node_id(&self) -> &str;

    /// Deliver a broadcast to every node (this one included, once).
    async fn publish(&self, msg: Broadcast) -> Result<(), AdapterError>;

    /// Have every node execute a command on its own connections.
    async fn control(&self, msg: ControlMessage) -> Result<(), AdapterError>;

    /// Ask every live node (or the shared store) and merge the answers.
    async fn query(&self, query: ClusterQuery) -> Result<ClusterAnswer, AdapterError>;

    /// This node now has a connection of `user` in the channel (call on the node's first).
    async fn presence_join(
        &self,
        join: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError>;

    /// This node no longer has any connection of `user` in the channel. Returns whether the
    /// user left the channel cluster-wide (this node was its last), with the removal's
    /// presence sequence number.
    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError>;

    /// The channel's members cluster-wide, with the sequence number of the last change they
    /// reflect (one atomic read; see [`PresenceSnapshot`]).
    async fn presence_members(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<PresenceSnapshot, AdapterError>;

    /// A local connection subscribes to `channel`: make sure this node receives the
    /// channel's broadcasts from the other nodes before the subscription is acknowledged
    /// (interest routing; see [`ClusterAdapter`]). Called once per local subscription; every
    /// call is balanced by one [`Adapter::unwatch_channel`], also when this one fails. Cheap
    /// once the channel is routed here. The default does nothing (every node receives
    /// everything).
    async fn watch_channel(&self, app_id: &str, channel: &str) -> Result<(), AdapterError> {
        let _ = (app_id, channel);
        Ok(())
    }

    /// A local subscription to `channel` ended (see [`Adapter::watch_channel`]).
    fn unwatch_channel(&self, app_id: &str, channel: &str) {
        let _ = (app_id, channel);
    }

    /// Whether this node receives only the channels it watches (interest routing): then what
    /// it knows of a channel it does not watch is incomplete. Default false.
    fn routes_by_interest(&self) -> bool {
        false
    }

    /// Whether the transport is currently usable (readiness).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Why this node should not receive traffic, if it should not: the adapter's part of
    /// `/ready`. The default says "adapter unavailable" when [`Adapter::is_healthy`] is false.
    fn unready_reason(&self) -> Option<String> {
        (!self.is_healthy()).then(|| "adapter unavailable".to_owned())
    }

    /// Leave the cluster cleanly: withdraw this node's presence contributions (returned so the
    /// node can announce them) and stop heartbeats.
    async fn leave_cluster(&self) -> Result<Vec<RemovedMember>, AdapterError> {
        Ok(Vec::new())
    }
}
