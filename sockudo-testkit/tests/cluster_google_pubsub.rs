//! Clusters whose adapter runs on Google Pub/Sub (the official emulator started by the
//! testkit; presence, cache, history and queue on the shared Redis): fanout, presence and
//! cluster queries across 3 nodes, and the emulator restarting mid-stream (losing every topic
//! and subscription, which the nodes recreate by themselves).
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
async fn google_pubsub_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder()
        .nodes(3)
        .google_pubsub()
        .build()
        .await
        .unwrap();
    // Cluster queries over Pub/Sub: every node counts every node's probe.
    wait_formed(&cluster).await;

    fanout_and_presence_across_three_nodes(&cluster).await;
}

/// The emulator dies mid-stream and comes back empty on the same port: publishes during the
/// outage are refused (never accepted and lost), the nodes recreate topic and subscriptions
/// and turn ready again by themselves, and a V2 subscriber on node 1 receives every publish
/// the API accepted with 2xx, before and after the restart, once and in order (live frames
/// missed while a subscription was being recreated are repaired from the shared history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_heals_when_the_emulator_restarts() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .google_pubsub()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..200u32 {
        if i == 50 {
            cluster.pubsub_mut().unwrap().kill().unwrap();
        }
        if i == 80 {
            cluster.pubsub_mut().unwrap().start_again().await.unwrap();
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
        "before the outage: {accepted:?}"
    );
    assert!(refused > 0, "publishes during the outage must be refused");
    assert!(
        accepted.iter().any(|&i| i >= 80),
        "the cluster must heal by itself: accepted {accepted:?}, refused {refused}"
    );
    // One more once both nodes are ready: a gap before it is repaired from history.
    let (st, _) = api
        .trigger("feed", "tick", json!({ "i": 1000 }))
        .await
        .unwrap();
    assert_eq!(st, 200);
    accepted.push(1000);

    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;
}
