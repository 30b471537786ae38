//! Clusters whose adapter runs on RabbitMQ (a private broker node started by the testkit;
//! presence, cache, history and queue on the shared Redis): fanout, presence and cluster
//! queries across nodes, and the broker restarting mid-stream.
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
async fn rabbitmq_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder()
        .nodes(3)
        .rabbitmq()
        .build()
        .await
        .unwrap();
    assert!(cluster.rabbitmq().is_some());
    // Cluster queries over RabbitMQ: every node counts every node's probe.
    wait_formed(&cluster).await;

    fanout_and_presence_across_three_nodes(&cluster).await;
}

/// The broker is killed mid-stream and started again on its port: both nodes turn unready
/// while it is down, reconnect and re-bind by themselves, and a V2 subscriber on node 1
/// receives every publish the API of node 0 accepted with 2xx, before and after the restart,
/// once and in order (frames a node missed while re-binding are repaired from history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_publish_survives_a_broker_restart() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .rabbitmq()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    let tick = |i: u32| {
        let api = api.clone();
        async move {
            let r = api.trigger("feed", "tick", json!({ "i": i })).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            matches!(r, Ok((200..=299, _)))
        }
    };
    for i in 0..40u32 {
        if tick(i).await {
            accepted.push(i);
        } else {
            refused += 1;
        }
    }
    assert_eq!(accepted.len(), 40, "all accepted while the broker is up");
    cluster.rabbitmq_mut().unwrap().kill().await.unwrap();
    for i in 40..60u32 {
        if tick(i).await {
            accepted.push(i);
        } else {
            refused += 1;
        }
    }
    let url = format!("{}/ready", cluster.node(0).http_url());
    let st = reqwest::get(&url).await.unwrap().status();
    assert_eq!(st, 503, "unready while the broker is down");
    assert!(
        refused > 0,
        "publishes while the broker is down are refused"
    );
    cluster.rabbitmq_mut().unwrap().start_again().await.unwrap();
    wait_ready(&cluster, 0, WAIT).await;
    wait_ready(&cluster, 1, WAIT).await;
    for i in 60..140u32 {
        if tick(i).await {
            accepted.push(i);
        } else {
            refused += 1;
        }
    }
    assert!(
        accepted.iter().filter(|&&i| i >= 60).count() >= 75,
        "the nodes must recover, not stay down: accepted {accepted:?}, refused {refused}"
    );
    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;
}
