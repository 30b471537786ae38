//! What the broker environments (NATS, Google Pub/Sub, RabbitMQ, Pulsar, Kafka) share: nodes
//! on one in-process presence store, and the checks of a broker restart at the transport and
//! at the adapter level.

use futures_util::StreamExt;
use sockudo_core::adapter::TransportStream;

use super::*;

/// A broker environment: how to connect one more node's transport. Its nodes share one
/// in-process presence store (presence is the store's business, not the transport's).
#[async_trait]
pub trait BrokerEnv: Send + Sync {
    /// The transport under test.
    type T: Transport;
    /// A connected transport for one more node.
    async fn connect(&self) -> Arc<Self::T>;
    /// The presence store every node of this environment shares.
    fn shared_presence(&self) -> Arc<MemoryPresenceStore>;
}

#[async_trait]
impl<E: BrokerEnv> Env for E {
    type T = E::T;
    async fn transport(&self) -> Arc<E::T> {
        self.connect().await
    }
    async fn presence(
        &self,
        _id: &str,
        _t: &Arc<E::T>,
        _o: &ClusterOptions,
    ) -> Arc<dyn PresenceStore> {
        self.shared_presence()
    }
}

/// Transport level, with the broker stopped: both transports turn unhealthy within `within`,
/// a publish fails and a subscription the broker cannot confirm is refused.
pub async fn assert_transport_outage<T: Transport>(a: &Arc<T>, b: &Arc<T>, within: Duration) {
    assert!(
        eventually(within, || !a.is_healthy() && !b.is_healthy()).await,
        "outage not visible"
    );
    assert!(a
        .publish("r.topic", Bytes::from_static(b"lost"))
        .await
        .is_err());
    assert!(matches!(
        b.subscribe("r.other").await,
        Err(AdapterError::Unavailable(_))
    ));
}

/// Transport level, with the broker back and both transports healthy: `n` messages published
/// on `r.topic` by `a` arrive on `sub` (subscribed before the restart) once each, in order,
/// and nothing after them.
pub async fn assert_stream_resumes_in_order<T: Transport>(
    a: &Arc<T>,
    sub: &mut TransportStream,
    n: u32,
) {
    for i in 0..n {
        a.publish("r.topic", Bytes::from(format!("after-{i}")))
            .await
            .unwrap();
    }
    for i in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
        assert_eq!(
            got.ok().flatten(),
            Some(Bytes::from(format!("after-{i}"))),
            "message {i} after the restart: the same stream resumes, in order"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing twice"
    );
}

/// Adapter level, with the broker of a 2-node cluster stopped: node 0 sees the outage within
/// `within` and counts it (`transport_down`), refuses publishes and subscriptions it cannot
/// confirm (a client would be told 503), and declares nobody dead for it, longer than the
/// node timeout later.
pub async fn assert_outage_contained<T: Transport>(nodes: &[Node<T>], within: Duration) {
    let a = nodes[0].0.clone();
    assert!(
        eventually(within, || !a.is_healthy()).await,
        "outage not visible"
    );
    assert!(
        eventually(within, || a.stats().transport_down >= 1).await,
        "outage not counted: {:?}",
        a.stats()
    );
    assert!(a.publish(msg("c", "lost")).await.is_err());
    assert!(matches!(
        a.watch_channel("app", "during-outage").await,
        Err(AdapterError::Unavailable(_))
    ));
    a.unwatch_channel("app", "during-outage");
    // Longer than node_timeout: nobody may be declared dead for a transport outage.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(nodes[0].1.removed.lock().is_empty());
}

/// Adapter level, with the broker back: both nodes turn healthy within `within` by
/// themselves, a publish after the restart reaches the peer (subscriptions came back), each
/// node sees the other alive, and nobody was swept.
pub async fn assert_cluster_heals<T: Transport>(nodes: &[Node<T>], within: Duration) {
    let (a, b) = (nodes[0].0.clone(), nodes[1].0.clone());
    assert!(
        eventually(within, || a.is_healthy() && b.is_healthy()).await,
        "the transports did not reconnect"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let a = a.clone();
            tokio::spawn(async move { a.publish(msg("c", "back")).await });
            nodes[1].1.frames().contains(&Bytes::from_static(b"back"))
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(3), || a.live_nodes()
            == vec!["n1".to_owned()]
            && b.live_nodes() == vec!["n0".to_owned()])
        .await
    );
    assert!(nodes.iter().all(|(_, r)| r.removed.lock().is_empty()));
}

/// Adapter level: a broadcast with a `frame_len`-byte frame, over the transport's message
/// size limit, is refused before sending with [`AdapterError::Malformed`] and counted as
/// `oversize` (not as a publish error, which means "transport down"); the node stays healthy
/// and the next publish goes through.
pub async fn assert_oversize_counted<E: Env>(env: &E, frame_len: usize) {
    let nodes = cluster(env, 2, &fast()).await;
    let a = nodes[0].0.clone();
    let before = a.stats();
    let err = a
        .publish(msg("c", vec![b'x'; frame_len]))
        .await
        .unwrap_err();
    assert!(matches!(err, AdapterError::Malformed(_)), "{err}");
    let after = a.stats();
    assert_eq!(after.oversize, before.oversize + 1, "{after:?}");
    assert_eq!(after.publish_errors, before.publish_errors, "{after:?}");
    assert!(a.is_healthy());
    a.publish(msg("c", "small")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || nodes[1]
            .1
            .frames()
            .contains(&Bytes::from_static(b"small")))
        .await
    );
}
