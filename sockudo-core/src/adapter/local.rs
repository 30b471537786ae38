//! Single-node adapter: the embedded default.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{Adapter, AdapterError, Broadcast, BroadcastSink};

/// Delivers straight into this node's sink, synchronously, so ordering is the caller's.
#[derive(Default)]
pub struct LocalAdapter {
    sink: RwLock<Option<Arc<dyn BroadcastSink>>>,
}

impl std::fmt::Debug for LocalAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAdapter").field("attached", &self.sink.read().is_some()).finish()
    }
}

impl LocalAdapter {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    fn attach(&self, sink: Arc<dyn BroadcastSink>) {
        *self.sink.write() = Some(sink);
    }

    async fn publish(&self, msg: Broadcast) -> Result<(), AdapterError> {
        let sink = self.sink.read().clone().ok_or(AdapterError::NotAttached)?;
        sink.deliver(&msg);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Bytes>>);
    impl BroadcastSink for Recorder {
        fn deliver(&self, msg: &Broadcast) {
            self.0.lock().push(msg.frame.clone());
        }
    }

    #[tokio::test]
    async fn delivers_in_order_once() {
        let a = LocalAdapter::new();
        let msg = |s: &'static str| Broadcast {
            app_id: "a".into(),
            channel: "c".into(),
            frame: Bytes::from_static(s.as_bytes()),
            except_socket: None,
        };
        assert!(matches!(a.publish(msg("x")).await, Err(AdapterError::NotAttached)));
        let r = Arc::new(Recorder::default());
        a.attach(r.clone());
        a.publish(msg("1")).await.unwrap();
        a.publish(msg("2")).await.unwrap();
        assert_eq!(*r.0.lock(), vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]);
    }
}
