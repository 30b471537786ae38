//! The cluster scenarios over `PulsarTransport` on a `pulsar-lite` broker each test starts
//! (an independent implementation of the Pulsar binary protocol, not Apache Pulsar), with the
//! in-process presence store (presence is the store's business, not the transport's).

use futures_util::StreamExt;
use sockudo_core::adapter::{PulsarTransport, PulsarTransportOptions};

use super::*;

use crate::broker_env::{
    assert_cluster_heals, assert_outage_contained, assert_oversize_counted,
    assert_stream_resumes_in_order, assert_transport_outage, BrokerEnv,
};
use crate::pulsar_server::PulsarServer;

pub struct PulsarEnv {
    pub server: PulsarServer,
    topic: String,
    presence: Arc<MemoryPresenceStore>,
}

impl PulsarEnv {
    pub async fn new() -> Self {
        PulsarEnv {
            server: PulsarServer::start(),
            topic: PulsarTransportOptions::topic_for_prefix(&format!(
                "t{:08x}",
                rand::random::<u32>()
            )),
            presence: Arc::new(MemoryPresenceStore::new()),
        }
    }

    fn options(&self) -> PulsarTransportOptions {
        PulsarTransportOptions {
            url: self.server.url(),
            topic: self.topic.clone(),
            ping_interval: Duration::from_millis(200),
            ..PulsarTransportOptions::default()
        }
    }
}

#[async_trait]
impl BrokerEnv for PulsarEnv {
    type T = PulsarTransport;
    async fn connect(&self) -> Arc<PulsarTransport> {
        Arc::new(PulsarTransport::connect(self.options()).await.unwrap())
    }
    fn shared_presence(&self) -> Arc<MemoryPresenceStore> {
        self.presence.clone()
    }
}

scenarios!(PulsarEnv::new().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulsar_connect_fails_when_no_broker_answers() {
    let port = crate::pulsar_server::free_port();
    let opts = PulsarTransportOptions {
        url: format!("pulsar://127.0.0.1:{port}"),
        connect_timeout: Duration::from_millis(500),
        ..PulsarTransportOptions::default()
    };
    assert!(matches!(
        PulsarTransport::connect(opts).await,
        Err(AdapterError::Unavailable(_))
    ));
    let bad = PulsarTransportOptions {
        url: "http://127.0.0.1:1".into(),
        ..PulsarTransportOptions::default()
    };
    assert!(matches!(
        PulsarTransport::connect(bad).await,
        Err(AdapterError::Malformed(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulsar_refuses_oversized_messages_before_publishing() {
    let env = PulsarEnv::new().await;
    let opts = PulsarTransportOptions {
        max_message_size: 64 * 1024,
        ..env.options()
    };
    let t = PulsarTransport::connect(opts).await.unwrap();
    let mut sub = t.subscribe("x.big").await.unwrap();
    let err = t
        .publish("x.big", Bytes::from(vec![b'a'; 64 * 1024]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Malformed(m) if m.contains("limit")),
        "{err}"
    );
    assert!(t.is_healthy(), "a refused message does not break the link");
    // Up to the limit it goes through, and the broker's default 5 MiB limit holds too.
    let fits = Bytes::from(vec![b'b'; 60 * 1024]);
    t.publish("x.big", fits.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert_eq!(got.unwrap().unwrap(), fits);
}

/// Transport level: health false while the broker is down, true after; subscriptions come
/// back by themselves and what is published after the restart arrives, exactly once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulsar_broker_restart_heals_transport() {
    let mut env = PulsarEnv::new().await;
    let a = env.transport().await;
    let b = env.transport().await;
    let mut sub = b.subscribe("r.topic").await.unwrap();
    a.publish("r.topic", Bytes::from_static(b"before"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert_eq!(got.unwrap().unwrap(), Bytes::from_static(b"before"));

    env.server.stop();
    assert_transport_outage(&a, &b, Duration::from_secs(5)).await;

    env.server.start_again();
    assert!(
        eventually(Duration::from_secs(15), || a.is_healthy() && b.is_healthy()).await,
        "the transports did not reconnect"
    );
    assert!(a.connections() >= 2 && b.connections() >= 2);
    assert_stream_resumes_in_order(&a, &mut sub, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulsar_restart_is_visible_and_heals_cluster() {
    let mut env = PulsarEnv::new().await;
    let nodes = cluster(&env, 2, &fast()).await;
    env.server.stop();
    assert_outage_contained(&nodes, Duration::from_secs(5)).await;
    env.server.start_again();
    assert_cluster_heals(&nodes, Duration::from_secs(15)).await;
}

/// Measurement, not a check (run with `--ignored --nocapture`; figures in BENCHMARKS.md):
/// publish-to-delivery latency between two transports, one message at a time, then the rate
/// of awaited publishes from 4 concurrent publishers (each publish waits for the receipt).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement; run explicitly"]
async fn pulsar_transport_latency_and_rate() {
    let env = PulsarEnv::new().await;
    let a = env.transport().await;
    let b = env.transport().await;
    let mut sub = b.subscribe("m.t").await.unwrap();
    let mut lat = Vec::new();
    for i in 0..500u32 {
        let t0 = std::time::Instant::now();
        a.publish("m.t", Bytes::from(i.to_string())).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        lat.push(t0.elapsed());
    }
    lat.sort();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)].as_micros();
    println!(
        "pulsar-lite round trip (publish receipt + delivery), 500 x 3 B: p50 {} us, p99 {} us",
        pct(50),
        pct(99)
    );
    let n = 5_000u32;
    let payload = Bytes::from(vec![b'x'; 1024]);
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (a, p) = (a.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 4 {
                a.publish("m.t", p.clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "pulsar-lite: {n} x 1 KiB from 4 publishers, all delivered in {secs:.2} s = {:.0} msg/s",
        f64::from(n) / secs
    );
    assert_eq!(b.dropped(), 0);
}

/// Adapter level: a broadcast over the 5 MiB default message limit is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulsar_oversize_broadcast_is_counted() {
    assert_oversize_counted(&PulsarEnv::new().await, 5_300_000).await;
}

/// The transport's health pings and the client's own keep-alive pings overlap on one
/// connection: it stays up. (Before the vendored client kept every waiting ping, an overlap
/// failed the whole connection and every transport reconnected every few seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_pings_keep_the_connection_up() {
    let env = PulsarEnv::new().await;
    let t = env.transport().await;
    // 5 s: 25 health pings at 200 ms, 10 keep-alive pings at 500 ms.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            t.is_healthy() && t.connections() == 1,
            "the connection was lost and re-established: {} connections",
            t.connections()
        );
    }
}
