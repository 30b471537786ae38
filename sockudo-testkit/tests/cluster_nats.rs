//! Clusters whose adapter runs on NATS (a 3-server NATS cluster started by the testkit;
//! presence, cache, history and queue on the shared Redis): fanout, presence and cluster
//! queries across nodes, and a node failing over when its NATS server is killed.
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
async fn nats_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder().nodes(3).nats(3).build().await.unwrap();
    assert_eq!(cluster.nats().unwrap().len(), 3);
    // Cluster queries over NATS: every node counts every node's probe.
    wait_formed(&cluster).await;

    fanout_and_presence_across_three_nodes(&cluster).await;
}

/// Node 0 prefers NATS server 0. Killing that server mid-stream: the node fails over to
/// another server by itself, `/ready` is 200 again once it has, and a V2 subscriber on node 1
/// receives every publish the API accepted with 2xx, once and in order (missed live frames are
/// repaired from the shared history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fails_over_when_its_nats_server_dies() {
    let mut cluster = Cluster::builder().nodes(2).nats(3).build().await.unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..150u32 {
        if i == 50 {
            cluster.nats_mut().unwrap().kill(0).unwrap();
        }
        match api.trigger("feed", "tick", json!({ "i": i })).await {
            Ok((200, _)) => accepted.push(i),
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&cluster, 0, WAIT).await;
    assert!(
        accepted.len() >= 100,
        "the node must fail over, not stay down: accepted {} refused {refused}",
        accepted.len()
    );

    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;

    // The killed server comes back; the cluster keeps working on it.
    cluster.nats_mut().unwrap().start_again(0).await.unwrap();
    let (st, _) = api
        .trigger("feed", "tick", json!({ "i": 1000 }))
        .await
        .unwrap();
    assert_eq!(st, 200);
    sub.recv_event("tick", WAIT).await.unwrap();
}
