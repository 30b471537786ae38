//! Single-node adapter: the embedded default.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{
    Adapter, AdapterError, Broadcast, ClusterAnswer, ClusterQuery, ControlMessage,
    MemoryPresenceStore, NodeHandler, PresenceJoin, PresenceJoinOutcome, PresenceLeave,
    PresenceSnapshot, PresenceStore,
};

const LOCAL_NODE: &str = "local";

/// Everything goes straight to this node's handler, synchronously, so ordering is the
/// caller's; presence lives in a [`MemoryPresenceStore`].
#[derive(Default)]
pub struct LocalAdapter {
    handler: RwLock<Option<Arc<dyn NodeHandler>>>,
    presence: MemoryPresenceStore,
}

impl std::fmt::Debug for LocalAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAdapter")
            .field("attached", &self.handler.read().is_some())
            .finish()
    }
}

impl LocalAdapter {
    /// A single-node adapter.
    pub fn new() -> Self {
        Self::default()
    }

    fn handler(&self) -> Result<Arc<dyn NodeHandler>, AdapterError> {
        self.handler.read().clone().ok_or(AdapterError::NotAttached)
    }
}

#[async_trait]
impl Adapter for LocalAdapter {
    fn attach(&self, handler: Arc<dyn NodeHandler>) {
        *self.handler.write() = Some(handler);
    }

    fn node_id(&self) -> &str {
        LOCAL_NODE
    }

    async fn publish(&self, msg: Broadcast) -> Result<(), AdapterError> {
        self.handler()?.deliver(&msg);
        Ok(())
    }

    async fn control(&self, msg: ControlMessage) -> Result<(), AdapterError> {
        self.handler()?.control(&msg);
        Ok(())
    }

    async fn query(&self, query: ClusterQuery) -> Result<ClusterAnswer, AdapterError> {
        Ok(self.handler()?.answer(&query))
    }

    async fn presence_join(
        &self,
        join: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        self.presence.join(LOCAL_NODE, join).await
    }

    async fn presence_leave(
        &self,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError> {
        self.presence
            .leave(LOCAL_NODE, app_id, channel, user_id)
            .await
    }

    async fn presence_members(
        &self,
        app_id: &str,
        channel: &str,
    ) -> Result<PresenceSnapshot, AdapterError> {
        self.presence.members(app_id, channel).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::RemovedMember;
    use bytes::Bytes;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Bytes>>);
    impl NodeHandler for Recorder {
        fn deliver(&self, msg: &Broadcast) {
            self.0.lock().push(msg.frame.clone());
        }
        fn control(&self, _: &ControlMessage) {}
        fn answer(&self, _: &ClusterQuery) -> ClusterAnswer {
            ClusterAnswer::Count { count: 7 }
        }
        fn members_removed(&self, _: Vec<RemovedMember>) {}
    }

    #[tokio::test]
    async fn delivers_in_order_once_and_answers_locally() {
        let a = LocalAdapter::new();
        let msg =
            |s: &'static str| Broadcast::plain("a", "c", Bytes::from_static(s.as_bytes()), None);
        assert!(matches!(
            a.publish(msg("x")).await,
            Err(AdapterError::NotAttached)
        ));
        let r = Arc::new(Recorder::default());
        a.attach(r.clone());
        a.publish(msg("1")).await.unwrap();
        a.publish(msg("2")).await.unwrap();
        assert_eq!(
            *r.0.lock(),
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")]
        );
        let q = ClusterQuery::ConnectionCount { app_id: "a".into() };
        assert_eq!(a.query(q).await.unwrap().count(), 7);
    }
}
