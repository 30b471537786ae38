//! Clusters whose adapter runs on the Kafka API (a Tansu broker started by the testkit, memory
//! storage; presence, cache, history and queue on the shared Redis): fanout, presence and
//! cluster queries across nodes, and every node riding out a broker restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::time::Duration;

use cluster_support::{
    assert_every_accepted_tick_delivered, fanout_and_presence_across_three_nodes, wait_formed,
    wait_ready, WAIT,
};
use serde_json::json;
use sockudo_testkit::{Cluster, TestClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder().nodes(3).kafka().build().await.unwrap();
    // Cluster queries over Kafka: every node counts every node's probe.
    wait_formed(&cluster).await;

    fanout_and_presence_across_three_nodes(&cluster).await;
}

/// The broker is killed mid-stream and started again (empty: memory storage) on its port.
/// Publishes fail while it is away; afterwards every node reconnects by itself (the topic is
/// created again), `/ready` is 200 again, and a V2 subscriber on node 1 receives every publish
/// the API accepted with 2xx before and after the restart, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_rides_out_a_broker_restart() {
    // The transport's own account of the restart, printed if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sockudo_core::adapter=debug,rskafka=info")
        .with_test_writer()
        .try_init();
    let mut cluster = Cluster::builder().nodes(2).kafka().build().await.unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..150u32 {
        if i == 50 {
            cluster.kafka_mut().unwrap().kill().unwrap();
        }
        if i == 70 {
            cluster.kafka_mut().unwrap().start_again().await.unwrap();
        }
        match api.trigger("feed", "tick", json!({ "i": i })).await {
            Ok((200, _)) => accepted.push(i),
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&cluster, 0, WAIT).await;
    wait_ready(&cluster, 1, WAIT).await;
    assert!(
        accepted.iter().filter(|&&i| i < 50).count() >= 45,
        "publishes before the restart: accepted {accepted:?}"
    );
    assert!(
        accepted.iter().any(|&i| i >= 120),
        "the nodes must recover, not stay down: accepted {accepted:?}, refused {refused}"
    );

    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;

    // Still carrying traffic afterwards.
    let (st, _) = api
        .trigger("feed", "tick", json!({ "i": 1000 }))
        .await
        .unwrap();
    assert_eq!(st, 200);
    sub.recv_event("tick", WAIT).await.unwrap();
}
