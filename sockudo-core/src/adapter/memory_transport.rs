//! An in-process [`Transport`]: a broadcast hub shared by several "nodes" of one process.
//!
//! Meant for tests (ours and users'): run several [`super::ClusterAdapter`]s in one process
//! without a broker. Every handle made with [`MemoryTransport::node`] shares the hub but has
//! its own health switch, so a test can cut one node off ([`MemoryTransport::set_healthy`])
//! and watch the others react.
//!
//! Semantics: `publish` hands the message to every subscriber of the topic in one critical
//! section, so all subscribers see one global order per topic. Each subscription is a bounded
//! queue of [`MemoryTransport::QUEUE_CAPACITY`] messages; when it is full the message is
//! dropped for that subscriber and counted ([`MemoryTransport::dropped`]), as the Redis driver
//! does. While a handle is unhealthy its `publish` fails and its subscribers receive nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream_shim::ReceiverStream;

use super::{AdapterError, Transport, TransportCapabilities, TransportStream};

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    healthy: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Hub {
    topics: Mutex<HashMap<String, Vec<Subscriber>>>,
    dropped: AtomicU64,
}

/// In-memory [`Transport`]; see the module docs.
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    hub: Arc<Hub>,
    healthy: Arc<AtomicBool>,
}

impl Default for MemoryTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTransport {
    /// Per-subscription queue bound.
    pub const QUEUE_CAPACITY: usize = 65_536;

    /// A new hub with one (healthy) handle on it.
    pub fn new() -> Self {
        MemoryTransport {
            hub: Arc::new(Hub::default()),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Another handle on the same hub, with its own health switch (one per simulated node).
    pub fn node(&self) -> Self {
        MemoryTransport {
            hub: self.hub.clone(),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Simulate an outage of this handle (`false`) or its end (`true`).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Messages dropped on the whole hub because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.hub.dropped.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), AdapterError> {
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(AdapterError::Unavailable(
                "memory transport: this node is disconnected".into(),
            ));
        }
        let mut topics = self.hub.topics.lock();
        if let Some(subs) = topics.get_mut(topic) {
            subs.retain(|s| {
                if !s.healthy.load(Ordering::SeqCst) {
                    return !s.tx.is_closed();
                }
                match s.tx.try_send(payload.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.hub.dropped.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<TransportStream, AdapterError> {
        let (tx, rx) = mpsc::channel(Self::QUEUE_CAPACITY);
        self.hub
            .topics
            .lock()
            .entry(topic.to_owned())
            .or_default()
            .push(Subscriber {
                tx,
                healthy: self.healthy.clone(),
            });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    fn capabilities(&self) -> TransportCapabilities {
        TransportCapabilities {
            per_channel_topics: true,
        }
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

/// A `Stream` over a tokio `mpsc::Receiver` (we do not depend on `tokio-stream`).
pub(crate) mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_util::Stream;
    use tokio::sync::mpsc;

    #[derive(Debug)]
    pub(crate) struct ReceiverStream<T>(mpsc::Receiver<T>);

    impl<T> ReceiverStream<T> {
        pub(crate) fn new(rx: mpsc::Receiver<T>) -> Self {
            ReceiverStream(rx)
        }
    }

    impl<T> Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn fans_out_to_every_healthy_subscriber() {
        let a = MemoryTransport::new();
        let b = a.node();
        let mut sa = a.subscribe("t").await.unwrap();
        let mut sb = b.subscribe("t").await.unwrap();
        a.publish("t", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(sa.next().await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(sb.next().await.unwrap(), Bytes::from_static(b"1"));
        b.set_healthy(false);
        assert!(!b.is_healthy());
        assert!(b.publish("t", Bytes::from_static(b"x")).await.is_err());
        a.publish("t", Bytes::from_static(b"2")).await.unwrap();
        b.set_healthy(true);
        a.publish("t", Bytes::from_static(b"3")).await.unwrap();
        assert_eq!(sa.next().await.unwrap(), Bytes::from_static(b"2"));
        assert_eq!(sa.next().await.unwrap(), Bytes::from_static(b"3"));
        assert_eq!(
            sb.next().await.unwrap(),
            Bytes::from_static(b"3"),
            "b missed 2 while cut off"
        );
    }
}
