//! What a user's own test looks like: two real `sockudo` processes sharing a Redis, one client
//! on each, a publish through the HTTP API of one node reaching both. No build step before
//! `cargo test`: the testkit finds the binary in this test's target directory or builds it
//! (and says so on stderr).
//!
//! Needs `redis-server` on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sockudo_client::{ChannelEvent, Client};
use sockudo_testkit::{Cluster, NodeMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cluster_from_a_users_crate() {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .mode(NodeMode::Process)
        .build()
        .await
        .unwrap_or_else(|e| panic!("process cluster: {e}"));
    assert!(cluster.node(0).as_process().is_some());
    let mut on0 = cluster.client(0).await.unwrap();
    let mut on1 = cluster.client(1).await.unwrap();
    on0.subscribe("news").await.unwrap();
    on1.subscribe("news").await.unwrap();
    // The native client on node 1, from the cluster's own options (no URL assembly).
    let native = Client::connect(cluster.client_options(1)).await.unwrap();
    let mut news = native.subscribe("news").await.unwrap();
    let (status, body) = cluster
        .api(0)
        .trigger("news", "hello", json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for client in [&mut on0, &mut on1] {
        let event = client
            .recv_event("hello", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(event.data_json(), json!({ "n": 1 }));
    }
    let received = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match news.next().await {
                Some(ChannelEvent::Message(m)) => return m,
                Some(_) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("no event on the native client");
    assert_eq!(received.event, "hello");
    native.close().await.unwrap();
}
