//! The cluster scenarios over `KafkaTransport` on a Tansu broker (Kafka API, memory storage)
//! each test starts, with the in-process presence store (presence is the store's business,
//! not the transport's); plus the transport's own restart, size-limit and start-up tests.

use futures_util::StreamExt;
use sockudo_core::adapter::{KafkaTransport, KafkaTransportOptions};

use super::*;

use crate::broker_env::{
    assert_cluster_heals, assert_outage_contained, assert_oversize_counted,
    assert_stream_resumes_in_order, assert_transport_outage, BrokerEnv,
};
use crate::kafka_server::KafkaServer;

pub struct KafkaEnv {
    pub server: KafkaServer,
    presence: Arc<MemoryPresenceStore>,
}

impl KafkaEnv {
    pub async fn new() -> Self {
        KafkaEnv {
            server: KafkaServer::start(),
            presence: Arc::new(MemoryPresenceStore::new()),
        }
    }

    fn options(&self) -> KafkaTransportOptions {
        KafkaTransportOptions {
            brokers: vec![self.server.address()],
            topic: "sockudo-test".into(),
            // Tansu answers a fetch when its wait is over, not when a record arrives: a short
            // wait keeps the scenarios' 100 ms heartbeats and 300 ms queries meaningful.
            fetch_wait: Duration::from_millis(20),
            ..KafkaTransportOptions::default()
        }
    }
}

#[async_trait]
impl BrokerEnv for KafkaEnv {
    type T = KafkaTransport;
    async fn connect(&self) -> Arc<KafkaTransport> {
        Arc::new(KafkaTransport::connect(self.options()).await.unwrap())
    }
    fn shared_presence(&self) -> Arc<MemoryPresenceStore> {
        self.presence.clone()
    }
}

scenarios!(KafkaEnv::new().await);

async fn next(s: &mut sockudo_core::adapter::TransportStream, within: Duration) -> Option<Bytes> {
    tokio::time::timeout(within, s.next()).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_fails_when_no_broker_answers() {
    let port = crate::kafka_server::free_port();
    let opts = KafkaTransportOptions {
        brokers: vec![format!("127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(500),
        ..KafkaTransportOptions::default()
    };
    let started = std::time::Instant::now();
    assert!(matches!(
        KafkaTransport::connect(opts).await,
        Err(AdapterError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    for brokers in [vec![], vec!["kafka://127.0.0.1:9092".to_owned()]] {
        let bad = KafkaTransportOptions {
            brokers,
            ..KafkaTransportOptions::default()
        };
        assert!(matches!(
            KafkaTransport::connect(bad).await,
            Err(AdapterError::Malformed(_))
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_is_created_and_shared() {
    let env = KafkaEnv::new().await;
    let a = env.transport().await;
    let b = env.transport().await;
    assert_eq!(a.partitions(), 4);
    assert_eq!(b.partitions(), 4);
    let mut sb = b.subscribe("t.one").await.unwrap();
    let mut other = b.subscribe("t.two").await.unwrap();
    for i in 0..50 {
        a.publish("t.one", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    a.publish("t.two", Bytes::from_static(b"two"))
        .await
        .unwrap();
    for i in 0..50 {
        let m = next(&mut sb, Duration::from_secs(5)).await;
        assert_eq!(m, Some(Bytes::from(format!("m{i}"))), "in order, once");
    }
    assert_eq!(
        next(&mut other, Duration::from_secs(5)).await,
        Some(Bytes::from_static(b"two"))
    );
    // Only its own logical topic reaches a stream.
    assert_eq!(next(&mut sb, Duration::from_millis(300)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_message_is_refused_before_publish() {
    let env = KafkaEnv::new().await;
    let t = env.transport().await;
    let mut s = t.subscribe("big").await.unwrap();
    let limit = t.options().max_message_bytes;
    let err = t
        .publish("big", Bytes::from(vec![b'x'; limit]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Malformed(m) if m.contains("message.max.bytes")),
        "{err}"
    );
    // Just under the limit goes through, and the transport stays healthy.
    let fits = limit - 1024;
    t.publish("big", Bytes::from(vec![b'y'; fits]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut s, Duration::from_secs(5)).await.map(|b| b.len()),
        Some(fits)
    );
    assert!(t.is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_is_visible_and_heals() {
    let mut env = KafkaEnv::new().await;
    let a = env.transport().await;
    let b = env.transport().await;
    let mut sb = b.subscribe("r.topic").await.unwrap();
    a.publish("r.topic", Bytes::from_static(b"before"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut sb, Duration::from_secs(5)).await,
        Some(Bytes::from_static(b"before"))
    );
    assert!(a.is_healthy() && b.is_healthy());

    env.server.stop();
    assert_transport_outage(&a, &b, Duration::from_secs(5)).await;

    // Back empty (memory storage): the topic is created again and consumption resumes.
    env.server.start_again();
    assert!(
        eventually(Duration::from_secs(15), || {
            let probe = a.clone();
            tokio::spawn(async move {
                let _ = probe.publish("r.probe", Bytes::from_static(b"p")).await;
            });
            a.is_healthy() && b.is_healthy()
        })
        .await,
        "the transports did not recover"
    );
    // Every message published once it was back arrives, in order (nothing of the outage).
    assert_stream_resumes_in_order(&a, &mut sb, 20).await;
    // New subscriptions work again.
    let mut again = b.subscribe("r.other").await.unwrap();
    a.publish("r.other", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut again, Duration::from_secs(5)).await,
        Some(Bytes::from_static(b"x"))
    );
}

/// Adapter level: a broadcast over the 1 MiB default message limit is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_broadcast_is_counted() {
    assert_oversize_counted(&KafkaEnv::new().await, 1_100_000).await;
}

/// Adapter level: the broker restarts (empty); the outage is visible, counted and contained,
/// and the cluster heals by itself (the topic is created again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_restart_is_visible_and_heals_cluster() {
    let mut env = KafkaEnv::new().await;
    let nodes = cluster(&env, 2, &fast()).await;
    env.server.stop();
    assert_outage_contained(&nodes, Duration::from_secs(5)).await;
    env.server.start_again();
    assert_cluster_heals(&nodes, Duration::from_secs(15)).await;
}
