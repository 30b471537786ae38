//! ProcessNode: the real binary starts, serves, and exits 0 after SIGTERM.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use sockudo_testkit::{
    ensure_sockudo_binary, ApiClient, Cluster, NodeMode, ProcessNode, TestClient, APP_ID, APP_KEY,
    APP_SECRET,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serve_terminate_exits_zero() {
    // `cargo test` builds only this package's targets; build the binary when it is missing.
    let bin = tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap();
    bin.unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));

    let mut node = ProcessNode::start(vec![("SOCKUDO_NODE_ID".into(), "proc-0".into())])
        .await
        .unwrap();
    assert!(node.is_running());
    let mut client = TestClient::connect(&node.ws_url(APP_KEY)).await.unwrap();
    client.subscribe("p").await.unwrap();
    let api = ApiClient::new(&node.http_url(), APP_ID, APP_KEY, APP_SECRET);
    let (status, body) = api.trigger("p", "hello", json!({ "n": 1 })).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        client
            .recv_event("hello", Duration::from_secs(3))
            .await
            .unwrap()
            .data_json(),
        json!({ "n": 1 })
    );

    let status = node.terminate().await.unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        node.log_tail(20)
    );
    assert_eq!(
        client.close_code(Duration::from_secs(3)).await.unwrap(),
        Some(4200),
        "draining closes with 4200"
    );

    node.restart().await.unwrap();
    assert!(node.is_running());
    node.kill().unwrap();
    assert!(!node.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cluster_behind_the_balancer() {
    tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));
    let mut cluster = Cluster::builder()
        .nodes(2)
        .mode(NodeMode::Process)
        .build()
        .await
        .unwrap();
    assert!(cluster.node(0).as_process().is_some());

    let mut on0 = cluster.client(0).await.unwrap();
    on0.subscribe("c").await.unwrap();
    let mut via_lb = cluster.balancer_client().await.unwrap();
    via_lb.subscribe("c").await.unwrap();

    cluster.kill_node(0).unwrap();
    assert_eq!(
        on0.close_code(Duration::from_secs(3)).await.unwrap(),
        None,
        "SIGKILL sends no close frame"
    );
    cluster.restart_node(0).await.unwrap();
    let mut back = cluster.client(0).await.unwrap();
    back.subscribe("c").await.unwrap();

    cluster.drain_node(1).await.unwrap();
}
