//! Clusters whose adapter runs on Pulsar (one `pulsar-lite` broker started by the testkit: an
//! independent implementation of the Pulsar binary protocol, not Apache Pulsar; presence,
//! cache, history and queue on the shared Redis): fanout, presence and cluster queries across
//! 3 nodes, and the broker restarting mid-stream.
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
async fn pulsar_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder().nodes(3).pulsar().build().await.unwrap();
    assert!(cluster.pulsar().unwrap().url().starts_with("pulsar://"));
    // Cluster queries over Pulsar: every node counts every node's probe.
    wait_formed(&cluster).await;

    fanout_and_presence_across_three_nodes(&cluster).await;
}

/// The broker is killed mid-stream and started again (same port and storage): publishes are
/// refused while it is down, both nodes reconnect by themselves and are ready again, and a V2
/// subscriber on node 1 receives every publish the API accepted with 2xx, before and after
/// the restart, once and in order (missed live frames are repaired from the shared history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_publish_arrives_across_a_pulsar_restart() {
    let mut cluster = Cluster::builder().nodes(2).pulsar().build().await.unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut before = 0;
    for i in 0..200u32 {
        if i == 50 {
            before = accepted.len();
            cluster.pulsar_mut().unwrap().kill().unwrap();
        }
        if i == 80 {
            cluster.pulsar_mut().unwrap().start_again().await.unwrap();
        }
        match api.trigger("feed", "tick", json!({ "i": i })).await {
            Ok((200, _)) => accepted.push(i),
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&cluster, 0, WAIT).await;
    wait_ready(&cluster, 1, WAIT).await;
    assert_eq!(before, 50, "everything before the kill was accepted");
    assert!(refused > 0, "publishes during the outage must be refused");
    let after = accepted.iter().filter(|&&i| i >= 80).count();
    assert!(
        after >= 60,
        "the nodes must reconnect by themselves: accepted {} after the restart, {refused} refused",
        after
    );

    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;

    // Still working afterwards.
    let (st, _) = api
        .trigger("feed", "tick", json!({ "i": 1000 }))
        .await
        .unwrap();
    assert_eq!(st, 200);
    sub.recv_event("tick", WAIT).await.unwrap();
}
