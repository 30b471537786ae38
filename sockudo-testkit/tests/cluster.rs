//! In-process clusters: publish through the balancer, kill and restart nodes.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use sockudo_testkit::{Cluster, TestClient};

const WAIT: Duration = Duration::from_secs(3);

/// The index of the node holding exactly one connection.
fn node_with_the_client(cluster: &Cluster) -> usize {
    let counts: Vec<usize> = cluster
        .nodes()
        .iter()
        .map(|n| n.as_in_process().unwrap().node().total_connections())
        .collect();
    let holders: Vec<usize> = counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 1)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        holders.len(),
        1,
        "exactly one node holds the client: {counts:?}"
    );
    holders[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_through_balancer_receives_a_publish_on_its_node() {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .build()
        .await
        .unwrap();
    assert!(cluster.redis().unwrap().ping().await);

    let mut client = cluster.balancer_client().await.unwrap();
    assert!(!client.socket_id().is_empty());
    client.subscribe("orders").await.unwrap();
    let i = node_with_the_client(&cluster);

    let (status, body) = cluster
        .api(i)
        .trigger("orders", "created", json!({ "id": 7 }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let event = client.recv_event("created", WAIT).await.unwrap();
    assert_eq!(event.channel.as_deref(), Some("orders"));
    assert_eq!(event.data_json(), json!({ "id": 7 }));

    let (status, body) = cluster.api(i).get("/channels", &[]).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["channels"].get("orders").is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_drops_sockets_without_close_frames_and_restart_serves_again() {
    let mut cluster = Cluster::builder().nodes(2).build().await.unwrap();
    let mut on0 = TestClient::connect(&cluster.ws_url(0)).await.unwrap();
    let mut on1 = cluster.client(1).await.unwrap();
    on0.subscribe("news").await.unwrap();
    on1.subscribe("news").await.unwrap();

    cluster.kill_node(0).unwrap();
    assert_eq!(
        on0.close_code(WAIT).await.unwrap(),
        None,
        "a killed node sends no close frame"
    );
    assert!(
        TestClient::connect(&cluster.ws_url(0)).await.is_err(),
        "a killed node refuses connections"
    );

    // The survivor is untouched, and the balancer routes around the dead node.
    let (status, _) = cluster
        .api(1)
        .trigger("news", "still-here", json!("x"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        on1.recv_event("still-here", WAIT).await.unwrap().data,
        json!("x")
    );
    for _ in 0..2 {
        let c = cluster.balancer_client().await.unwrap();
        c.close().await.unwrap();
    }

    cluster.restart_node(0).await.unwrap();
    let mut back = cluster.client(0).await.unwrap();
    back.subscribe("news").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_with_4200() {
    let mut cluster = Cluster::builder().nodes(1).build().await.unwrap();
    let mut client = cluster.client(0).await.unwrap();
    cluster.drain_node(0).await.unwrap();
    assert_eq!(client.close_code(WAIT).await.unwrap(), Some(4200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_redis_cuts_only_that_nodes_link() {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .build()
        .await
        .unwrap();
    cluster.cut_redis(1).unwrap();
    assert!(cluster.redis_proxy(1).unwrap().is_cut());
    assert!(!cluster.redis_proxy(0).unwrap().is_cut());
    assert!(sockudo_testkit::redis::ping(cluster.redis_proxy(0).unwrap().addr()).await);
    assert!(!sockudo_testkit::redis::ping(cluster.redis_proxy(1).unwrap().addr()).await);
    cluster.restore_redis(1).unwrap();
    assert!(sockudo_testkit::redis::ping(cluster.redis_proxy(1).unwrap().addr()).await);
}
