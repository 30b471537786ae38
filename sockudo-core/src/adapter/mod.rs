//! The [`Adapter`] contract: how a published message reaches every subscriber of a channel,
//! on every node.
//!
//! A node registers one [`BroadcastSink`] (its local fanout); the adapter's only job is to get
//! each [`Broadcast`] to every node's sink. The local adapter hands it straight to this node's
//! sink; a cluster adapter carries it over a shared transport.

mod local;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalAdapter;

/// One message for one channel of one app, already encoded for V1 connections.
///
/// The frame is encoded once by the publisher and shared by reference count with every
/// recipient; nothing downstream re-serialises it per connection.
#[derive(Debug, Clone)]
pub struct Broadcast {
    pub app_id: Arc<str>,
    pub channel: Arc<str>,
    /// The complete text frame.
    pub frame: Bytes,
    /// A socket that must not receive it (the publisher's own, Pusher `socket_id`).
    pub except_socket: Option<Arc<str>>,
}

/// Why the adapter could not accept a broadcast.
#[derive(Debug, thiserror::Error, Clone)]
pub enum AdapterError {
    #[error("adapter transport unavailable: {0}")]
    Unavailable(String),
    #[error("no sink attached: the node has not started its adapter")]
    NotAttached,
}

/// Where a node delivers broadcasts to its own connections.
pub trait BroadcastSink: Send + Sync + 'static {
    /// Deliver to local subscribers. Must not block: implementations enqueue into bounded
    /// per-connection queues and return.
    fn deliver(&self, msg: &Broadcast);
}

/// Cross-node fanout.
///
/// Contract:
/// - `publish` returning `Ok` means the message was accepted for delivery to every node
///   (including the caller's own sink, exactly once); `Err` means it may have reached no node,
///   and the caller reports the failure to its publisher.
/// - Messages published by one caller to one channel reach each sink in publish order.
/// - A node never receives its own message twice (origin echo is suppressed by the adapter).
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Register this node's sink; called once at start, before any `publish`.
    fn attach(&self, sink: Arc<dyn BroadcastSink>);

    async fn publish(&self, msg: Broadcast) -> Result<(), AdapterError>;

    /// Whether the transport is currently usable (readiness).
    fn is_healthy(&self) -> bool {
        true
    }
}
