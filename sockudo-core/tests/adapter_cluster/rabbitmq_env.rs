//! The cluster scenarios over `RabbitmqTransport` on a private RabbitMQ node, with the
//! in-process presence store (presence is the store's business, not the transport's).
//!
//! A node takes seconds to boot, so the scenarios share one node per test process
//! ([`RabbitServer::shared`]; it goes away with the process); each scenario has its own
//! exchange (and its own random cluster prefix). The restart test has a node of its own.

use sockudo_core::adapter::{RabbitmqTransport, RabbitmqTransportOptions};

use super::*;

use crate::broker_env::{
    assert_cluster_heals, assert_outage_contained, assert_oversize_counted, BrokerEnv,
};
use crate::rabbitmq_server::RabbitServer;

pub struct RabbitEnv {
    url: String,
    exchange: String,
    presence: Arc<MemoryPresenceStore>,
}

impl RabbitEnv {
    pub async fn shared() -> Self {
        let server = tokio::task::spawn_blocking(RabbitServer::shared)
            .await
            .unwrap();
        Self::on(server.url())
    }

    fn on(url: String) -> Self {
        RabbitEnv {
            url,
            exchange: format!("x{:08x}", rand::random::<u32>()),
            presence: Arc::new(MemoryPresenceStore::new()),
        }
    }

    fn options(&self) -> RabbitmqTransportOptions {
        RabbitmqTransportOptions {
            url: self.url.clone(),
            exchange: self.exchange.clone(),
            ..RabbitmqTransportOptions::default()
        }
    }
}

#[async_trait]
impl BrokerEnv for RabbitEnv {
    type T = RabbitmqTransport;
    async fn connect(&self) -> Arc<RabbitmqTransport> {
        Arc::new(
            RabbitmqTransport::connect_with(self.options())
                .await
                .unwrap(),
        )
    }
    fn shared_presence(&self) -> Arc<MemoryPresenceStore> {
        self.presence.clone()
    }
}

scenarios!(RabbitEnv::shared().await);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_fails_when_no_broker_answers_or_the_url_is_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = RabbitmqTransportOptions {
        url: format!("amqp://127.0.0.1:{port}/%2f"),
        connect_timeout: Duration::from_millis(500),
        ..RabbitmqTransportOptions::default()
    };
    assert!(matches!(
        RabbitmqTransport::connect_with(opts).await,
        Err(AdapterError::Unavailable(_))
    ));
    let tls = RabbitmqTransport::connect("amqps://u:pw@127.0.0.1/%2f")
        .await
        .unwrap_err()
        .to_string();
    assert!(tls.contains("amqps://") && !tls.contains("pw"), "{tls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_bound_and_unbound_and_sizes_checked() {
    use futures_util::StreamExt;
    let env = RabbitEnv::shared().await;
    let a = env.transport().await;
    let b = env.transport().await;
    assert!(a.capabilities().per_channel_topics);
    let mut s = b.subscribe("p.ch.app.one").await.unwrap();
    let long = format!("p.ch.app.{}", "l".repeat(400));
    let mut l = b.subscribe(&long).await.unwrap();
    for i in 0..100u32 {
        a.publish("p.ch.app.one", Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    a.publish(&long, Bytes::from_static(b"long")).await.unwrap();
    for i in 0..100u32 {
        let got = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Bytes::from(i.to_string()), "in publish order");
    }
    let got = tokio::time::timeout(Duration::from_secs(5), l.next())
        .await
        .unwrap();
    assert_eq!(got.unwrap(), Bytes::from_static(b"long"));
    // Too large for the configured limit: refused before anything is sent.
    let small = RabbitmqTransport::connect_with(RabbitmqTransportOptions {
        max_message_bytes: 10,
        ..env.options()
    })
    .await
    .unwrap();
    assert!(matches!(
        small.publish("p.ch.app.one", Bytes::from(vec![0u8; 11])).await,
        Err(AdapterError::Malformed(m)) if m.contains("11 bytes")
    ));
    // A dropped stream ends the binding; a new one gets only what follows.
    drop(s);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut s2 = b.subscribe("p.ch.app.one").await.unwrap();
    a.publish("p.ch.app.one", Bytes::from_static(b"after"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), s2.next())
        .await
        .unwrap();
    assert_eq!(got.unwrap(), Bytes::from_static(b"after"));
    assert_eq!(b.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_restart_is_visible_and_heals() {
    let mut server = tokio::task::spawn_blocking(RabbitServer::start)
        .await
        .unwrap();
    let env = RabbitEnv::on(server.url());
    let nodes = cluster(&env, 2, &fast()).await;
    let a = nodes[0].0.clone();
    let t = a.transport().clone();
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    assert_outage_contained(&nodes, Duration::from_secs(3)).await;
    assert!(!t.is_healthy());
    let _server = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.start_again();
        server
    })
    .await
    .unwrap();
    // Bindings come back by themselves: a publish after the restart reaches the peer.
    assert_cluster_heals(&nodes, Duration::from_secs(10)).await;
    assert!(t.is_healthy() && t.connections() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_alarm_makes_the_transport_unhealthy_until_it_clears() {
    let server = tokio::task::spawn_blocking(RabbitServer::start)
        .await
        .unwrap();
    let env = RabbitEnv::on(server.url());
    let t = env.transport().await;
    t.publish("p.x", Bytes::from_static(b"1")).await.unwrap();
    let server = Arc::new(server);
    let ctl = |args: &'static [&'static str]| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.ctl(args))
    };
    ctl(&["set_vm_memory_high_watermark", "0.000001"])
        .await
        .unwrap();
    // The broker blocks a connection when it next publishes: that publish is not confirmed.
    assert!(t.publish("p.x", Bytes::from_static(b"held")).await.is_err());
    assert!(
        eventually(Duration::from_secs(10), || !t.is_healthy()).await,
        "a memory alarm must make the transport unhealthy"
    );
    assert!(matches!(
        t.publish("p.x", Bytes::from_static(b"2")).await,
        Err(AdapterError::Unavailable(m)) if m.contains("alarm")
    ));
    ctl(&["set_vm_memory_high_watermark", "0.9"]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || t.is_healthy()).await,
        "healthy again once the alarm clears"
    );
    t.publish("p.x", Bytes::from_static(b"3")).await.unwrap();
}

/// Figures for docs/operations.md and BENCHMARKS.md (not a check):
/// `cargo test -p sockudo-core --features rabbitmq --test adapter_cluster measure_rabbitmq -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run by hand"]
async fn measure_rabbitmq_publish_latency_and_throughput() {
    use futures_util::StreamExt;
    let server = tokio::task::spawn_blocking(RabbitServer::start)
        .await
        .unwrap();
    let env = RabbitEnv::on(server.url());
    let publisher = env.transport().await;
    let receiver = env.transport().await;
    let mut stream = receiver.subscribe("m.ch.app.bench").await.unwrap();
    let payload = Bytes::from(vec![b'x'; 100]);
    // Sequential: each publish waits for its confirmation.
    let n = 2_000;
    let mut lat = Vec::with_capacity(n);
    let start = std::time::Instant::now();
    for _ in 0..n {
        let t0 = std::time::Instant::now();
        publisher
            .publish("m.ch.app.bench", payload.clone())
            .await
            .unwrap();
        lat.push(t0.elapsed());
    }
    let seq = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "sequential: {n} publishes in {seq:?} = {:.0}/s; confirm latency p50 {:?} p99 {:?} max {:?}",
        n as f64 / seq.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    let mut got = 0;
    while got < n {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        got += 1;
    }
    // Concurrent: 32 publishers, 1,000 each; the receiver counts deliveries.
    let (tasks, each) = (32, 1_000);
    let start = std::time::Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let p = publisher.clone();
        let payload = payload.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                p.publish("m.ch.app.bench", payload.clone()).await.unwrap();
            }
        }));
    }
    let total = tasks * each;
    let mut got = 0;
    while got < total {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap();
        got += 1;
    }
    for h in handles {
        h.await.unwrap();
    }
    let conc = start.elapsed();
    println!(
        "concurrent: {tasks} publishers x {each} = {total} confirmed and delivered in {conc:?} = {:.0}/s; dropped {}",
        total as f64 / conc.as_secs_f64(),
        receiver.dropped()
    );
}

/// Adapter level: a broadcast over the 128 MiB default message limit is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_broadcast_is_counted() {
    assert_oversize_counted(&RabbitEnv::shared().await, 128 * 1024 * 1024 + 1).await;
}
