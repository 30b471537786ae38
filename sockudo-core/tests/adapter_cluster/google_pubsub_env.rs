//! The cluster scenarios over `GooglePubSubTransport` on the official Pub/Sub emulator each
//! test starts, with the in-process presence store (presence is the store's business, not the
//! transport's). All transports of one environment share one Pub/Sub topic; each has its own
//! subscription.

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::StreamExt;
use sockudo_core::adapter::{
    GooglePubSubTransport, GooglePubSubTransportOptions, GOOGLE_PUBSUB_MAX_PUBLISH_BYTES,
};

use super::*;

use crate::broker_env::{
    assert_cluster_heals, assert_outage_contained, assert_oversize_counted,
    assert_stream_resumes_in_order, assert_transport_outage, BrokerEnv,
};
use crate::pubsub_emulator::PubSubEmulator;

pub struct PubSubEnv {
    pub emulator: PubSubEmulator,
    presence: Arc<MemoryPresenceStore>,
    prefix: String,
    next: AtomicU32,
}

impl PubSubEnv {
    pub async fn new() -> Self {
        PubSubEnv {
            emulator: PubSubEmulator::start(),
            presence: Arc::new(MemoryPresenceStore::new()),
            prefix: format!("e{:08x}", rand::random::<u32>()),
            next: AtomicU32::new(0),
        }
    }

    fn options(&self) -> GooglePubSubTransportOptions {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        GooglePubSubTransportOptions::new(
            "test-project",
            Some(self.emulator.host()),
            &self.prefix,
            &format!("t{n}"),
        )
    }
}

#[async_trait]
impl BrokerEnv for PubSubEnv {
    type T = GooglePubSubTransport;
    async fn connect(&self) -> Arc<GooglePubSubTransport> {
        Arc::new(
            GooglePubSubTransport::connect(self.options())
                .await
                .unwrap(),
        )
    }
    fn shared_presence(&self) -> Arc<MemoryPresenceStore> {
        self.presence.clone()
    }
}

scenarios!(PubSubEnv::new().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_fails_when_no_emulator_answers_or_none_is_named() {
    let port = crate::pubsub_emulator::free_port();
    let mut opts =
        GooglePubSubTransportOptions::new("p", Some(format!("127.0.0.1:{port}")), "sockudo", "n");
    opts.connect_timeout = Duration::from_millis(500);
    assert!(matches!(
        GooglePubSubTransport::connect(opts.clone()).await,
        Err(AdapterError::Unavailable(_))
    ));
    opts.emulator_host = None;
    let e = GooglePubSubTransport::connect(opts).await.unwrap_err();
    assert!(
        matches!(&e, AdapterError::Malformed(m) if m.contains("PUBSUB_EMULATOR_HOST")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_messages_fail_before_publish_and_big_ones_arrive() {
    let env = PubSubEnv::new().await;
    let (a, b) = (env.transport().await, env.transport().await);
    let mut s = b.subscribe("x.big").await.unwrap();
    let e = a
        .publish(
            "x.big",
            Bytes::from(vec![b'x'; GOOGLE_PUBSUB_MAX_PUBLISH_BYTES]),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AdapterError::Malformed(_)), "{e}");
    assert!(a.is_healthy(), "a refused message is not an outage");
    let big = Bytes::from(vec![b'y'; 1 << 20]);
    a.publish("x.big", big.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
    assert_eq!(got.unwrap().unwrap(), big);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_is_deleted_on_close_and_on_leave() {
    let env = PubSubEnv::new().await;
    let t = env.transport().await;
    let name = t.subscription_name().to_owned();
    t.close().await.unwrap();
    let url = format!("http://{}/v1/{name}", env.emulator.host());
    let status = tokio::task::spawn_blocking(move || http_status(&url))
        .await
        .unwrap();
    assert_eq!(status, 404, "subscription {name} still exists");

    // A node leaving the cluster cleanly deletes its subscription too.
    let nodes = cluster(&env, 2, &fast()).await;
    let name = nodes[1].0.transport().subscription_name().to_owned();
    let url = format!("http://{}/v1/{name}", env.emulator.host());
    let get = url.clone();
    let status = tokio::task::spawn_blocking(move || http_status(&get))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "subscription {name} exists while the node runs"
    );
    nodes[1].0.leave_cluster().await.unwrap();
    let status = tokio::task::spawn_blocking(move || http_status(&url))
        .await
        .unwrap();
    assert_eq!(
        status, 404,
        "subscription {name} still exists after leaving"
    );
}

/// The status of a plain `GET` (enough for the emulator's REST surface).
fn http_status(url: &str) -> u16 {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// Transport level: the emulator dies (losing every topic and subscription) and comes back on
/// the same port; health follows, the driver recreates topic and subscription, and messages
/// published after it is back arrive, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emulator_restart_mid_test_heals_the_transport() {
    let mut env = PubSubEnv::new().await;
    let (a, b) = (env.transport().await, env.transport().await);
    let mut s = b.subscribe("r.topic").await.unwrap();
    a.publish("r.topic", Bytes::from_static(b"before"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
    assert_eq!(got.unwrap().unwrap(), Bytes::from_static(b"before"));

    env.emulator.stop();
    assert_transport_outage(&a, &b, Duration::from_secs(5)).await;

    env.emulator.start_again();
    assert!(
        eventually(Duration::from_secs(20), || a.is_healthy() && b.is_healthy()).await,
        "the transports did not heal"
    );
    assert!(b.recreated() >= 1 && b.streams_opened() >= 2);
    assert_stream_resumes_in_order(&a, &mut s, 20).await;
}

/// Adapter level, as for the other brokers: the outage is visible, nobody is declared dead,
/// and the cluster heals by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emulator_restart_is_visible_and_heals() {
    let mut env = PubSubEnv::new().await;
    let nodes = cluster(&env, 2, &fast()).await;
    env.emulator.stop();
    assert_outage_contained(&nodes, Duration::from_secs(3)).await;
    env.emulator.start_again();
    assert_cluster_heals(&nodes, Duration::from_secs(20)).await;
}

/// Figures for docs/operations.md: one-way latency publish → delivery on another transport,
/// sequential (each message waits for the previous one), and a burst's throughput.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_and_burst_figures() {
    let env = PubSubEnv::new().await;
    let (a, b) = (env.transport().await, env.transport().await);
    let mut s = b.subscribe("x.lat").await.unwrap();
    let mut lat = Vec::new();
    for i in 0..100u32 {
        let t = std::time::Instant::now();
        a.publish("x.lat", Bytes::from(i.to_string()))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
        assert_eq!(got.unwrap().unwrap(), Bytes::from(i.to_string()));
        lat.push(t.elapsed());
    }
    lat.sort();
    let t = std::time::Instant::now();
    for i in 0..1000u32 {
        a.publish("x.lat", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let published = t.elapsed();
    for i in 0..1000u32 {
        let got = tokio::time::timeout(Duration::from_secs(10), s.next()).await;
        assert_eq!(got.unwrap().unwrap(), Bytes::from(i.to_string()));
    }
    println!(
        "pubsub emulator: one-way p50 {:?} p90 {:?} max {:?}; 1000 sequential publishes in {:?}, all delivered in order after {:?}",
        lat[50],
        lat[90],
        lat[99],
        published,
        t.elapsed()
    );
}

/// Adapter level: a broadcast over Pub/Sub's 10,000,000-byte publish limit is refused and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_broadcast_is_counted() {
    assert_oversize_counted(&PubSubEnv::new().await, GOOGLE_PUBSUB_MAX_PUBLISH_BYTES + 1).await;
}
