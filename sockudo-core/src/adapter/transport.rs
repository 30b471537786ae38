//! The small surface a broker needs to offer for a cluster adapter.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use super::AdapterError;

/// Messages of one topic, in the order the broker delivered them.
pub type TransportStream = Pin<Box<dyn Stream<Item = Bytes> + Send + 'static>>;

/// What a transport can do cheaply; the cluster adapter adapts to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransportCapabilities {
    /// Subscribing to and dropping one topic per channel is cheap (the broker routes by topic
    /// name: Redis channels, NATS subjects), so a node can receive only the channels it has
    /// local subscribers for (*interest routing*). Dropping a stream returned by
    /// [`Transport::subscribe`] must end that subscription at the broker (at the latest when
    /// the next message for it arrives).
    pub per_channel_topics: bool,
}

/// A pub/sub transport between nodes.
///
/// Contract:
/// - `publish` delivers to every current subscriber of the topic on every node, at most once
///   per subscriber (brokers without that guarantee must deduplicate in their driver), in
///   publish order per publisher and topic. Best-effort while disconnected: an `Err` says
///   the message did not leave this node. [`AdapterError::Malformed`] means it was refused
///   before sending because the broker would refuse it (over its size limit, or a name over
///   its length limit); [`AdapterError::Unavailable`] that the transport is down.
/// - `subscribe` returns a stream that survives broker restarts: the driver reconnects and
///   re-subscribes by itself (messages published while it was away may be lost; the adapter
///   above handles that through readiness and liveness). It ends only when the transport is
///   dropped.
/// - `is_healthy` is false while the driver is disconnected.
/// - Topic names are built from `[A-Za-z0-9._-]` only (see [`super::names`]); `.` separates
///   the parts.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publish `payload` on `topic`; see the trait docs for what `Ok` promises.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError>;
    /// Subscribe to `topic`: once this returns, every message published on it afterwards
    /// reaches the stream (while the transport is up).
    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError>;
    /// Whether the driver is connected.
    fn is_healthy(&self) -> bool;
    /// The node leaves the cluster for good (a clean shutdown, from
    /// [`super::Adapter::leave_cluster`]): release what the driver holds at the broker for
    /// this node alone (e.g. a per-node subscription). Publishing may still follow (the
    /// node's last announcements); receiving need not. Default: nothing.
    async fn leave(&self) {}
    /// What this transport can do cheaply (default: nothing beyond the contract).
    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities::default()
    }
}
