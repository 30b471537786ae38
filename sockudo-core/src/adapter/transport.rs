//! The small surface a broker needs to offer for a cluster adapter.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use super::AdapterError;

/// Messages of one topic, in the order the broker delivered them.
pub type TransportStream = Pin<Box<dyn Stream<Item = Bytes> + Send + 'static>>;

/// A pub/sub transport between nodes.
///
/// Contract:
/// - `publish` delivers to every current subscriber of the topic on every node, at most once
///   per subscriber (brokers without that guarantee must deduplicate in their driver), in
///   publish order per publisher and topic. Best-effort while disconnected: an `Err` says
///   the message did not leave this node.
/// - `subscribe` returns a stream that survives broker restarts: the driver reconnects and
///   re-subscribes by itself (messages published while it was away may be lost; the adapter
///   above handles that through readiness and liveness). It ends only when the transport is
///   dropped.
/// - `is_healthy` is false while the driver is disconnected.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError>;
    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError>;
    fn is_healthy(&self) -> bool;
}
