//! Containers mode: Redis and the `sockudo` binary in Docker containers, images built locally
//! from the host's binaries (no registry), Docker API version negotiated with the engine.
//!
//! The key cluster scenarios once more, in containers: cross-node publish delivery, a killed
//! node's presence member removed elsewhere, delivery resuming after a Redis restart.
//!
//! Without a reachable Docker Engine each test prints why and passes as skipped — unless
//! `SOCKUDO_TESTKIT_REQUIRE_DOCKER=1` (set by `.ci/run` once it has started dockerd), where a
//! missing engine fails the test.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use sockudo_testkit::containers::{
    docker_available, ContainerImages, ContainerNetwork, ContainerOptions,
};
use sockudo_testkit::{ensure_sockudo_binary, Cluster, NodeMode, APP_KEY, APP_SECRET};

const WAIT: Duration = Duration::from_secs(5);

/// `false` (after printing why) when the test must be skipped: no engine answers.
async fn docker_ready(test: &str) -> bool {
    match docker_available().await {
        Ok(version) => {
            eprintln!(
                "{test}: Docker Engine {} (API {}), testkit speaks API {}",
                version.engine, version.engine_api, version.negotiated_api
            );
        }
        Err(e) => {
            if std::env::var("SOCKUDO_TESTKIT_REQUIRE_DOCKER").is_ok_and(|v| v == "1") {
                panic!("{test}: SOCKUDO_TESTKIT_REQUIRE_DOCKER=1 but no Docker Engine is reachable: {e}");
            }
            println!("SKIPPED {test}: no Docker Engine is reachable ({e}); start one (see sockudo-testkit/README.md, Containers mode)");
            return false;
        }
    }
    // The sockudo image is built from the binary; `cargo test` builds only this package.
    let bin = tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap();
    bin.unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));
    true
}

async fn container_cluster(network: ContainerNetwork) -> Cluster {
    let started = Instant::now();
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .containers(ContainerOptions {
            network,
            images: ContainerImages::from_env(),
        })
        .build()
        .await
        .unwrap_or_else(|e| panic!("containers cluster ({network:?}): {e}"));
    eprintln!(
        "containers cluster ({network:?}) up in {:?}",
        started.elapsed()
    );
    assert!(cluster.node(0).as_container().is_some());
    assert!(cluster.redis_container().unwrap().ping().await);
    cluster
}

/// Publish via node 0; a subscriber on node 1 gets it exactly once.
async fn assert_cross_node_delivery(cluster: &Cluster, channel: &str) {
    let mut on1 = cluster.client(1).await.unwrap();
    on1.subscribe(channel).await.unwrap();
    let (status, body) = cluster
        .api(0)
        .trigger(channel, "created", json!({ "id": 7 }))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let event = on1.recv_event_on(channel, "created", WAIT).await.unwrap();
    assert_eq!(event.data_json(), json!({ "id": 7 }));
    on1.expect_no_event("created", Duration::from_millis(400))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_publish_is_delivered_once() {
    if !docker_ready("cross_node_publish_is_delivered_once").await {
        return;
    }
    let cluster = container_cluster(ContainerNetwork::Host).await;
    assert_cross_node_delivery(&cluster, "orders").await;
    // The balancer fronts container nodes like any others.
    let mut via_lb = cluster.balancer_client().await.unwrap();
    via_lb.subscribe("orders").await.unwrap();
    let (status, _) = cluster
        .api(1)
        .trigger("orders", "shipped", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    via_lb.recv_event("shipped", WAIT).await.unwrap();

    // Graceful stop: SIGTERM into the container, drain, exit code 0.
    let mut cluster = cluster;
    cluster.drain_node(1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_presence_member_is_removed() {
    if !docker_ready("killed_node_presence_member_is_removed").await {
        return;
    }
    let mut cluster = container_cluster(ContainerNetwork::Host).await;
    let channel = "presence-room";
    let mut bob = cluster.client(1).await.unwrap();
    bob.subscribe_presence(channel, APP_KEY, APP_SECRET, "bob", json!({}))
        .await
        .unwrap();
    let mut alice = cluster.client(0).await.unwrap();
    alice
        .subscribe_presence(channel, APP_KEY, APP_SECRET, "alice", json!({}))
        .await
        .unwrap();
    let added = bob
        .recv_event_on(channel, "pusher_internal:member_added", WAIT)
        .await
        .unwrap();
    assert_eq!(added.data_json()["user_id"], "alice");

    let killed = Instant::now();
    cluster.kill_node(0).unwrap();
    assert_eq!(
        alice.close_code(WAIT).await.unwrap(),
        None,
        "docker kill sends no close frame"
    );
    // Node liveness in tests: heartbeat 200 ms, dead after 2 s.
    let removed = bob
        .recv_event_on(
            channel,
            "pusher_internal:member_removed",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(removed.data_json()["user_id"], "alice");
    eprintln!("member_removed {:?} after the kill", killed.elapsed());

    // The killed container comes back on its port and serves again.
    cluster.restart_node(0).await.unwrap();
    assert_cross_node_delivery(&cluster, "after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_delivery_resumes() {
    if !docker_ready("redis_restart_delivery_resumes").await {
        return;
    }
    let mut cluster = container_cluster(ContainerNetwork::Host).await;
    let mut on1 = cluster.client(1).await.unwrap();
    on1.subscribe("feed").await.unwrap();

    cluster.stop_redis().unwrap();
    assert!(!cluster.redis_container().unwrap().ping().await);
    cluster.start_redis().await.unwrap();

    // The nodes reconnect and resubscribe on their own; publish until it gets through.
    let restarted = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let published = cluster
            .api(0)
            .trigger("feed", "tick", json!({ "n": n }))
            .await
            .map(|(status, _)| status == 200)
            .unwrap_or(false);
        if published {
            if let Ok(event) = on1.recv_event("tick", Duration::from_millis(500)).await {
                eprintln!(
                    "delivery resumed {:?} after the Redis restart (publish #{n}, got {})",
                    restarted.elapsed(),
                    event.data_json()
                );
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "no delivery within 20 s of the Redis restart"
        );
    }
    // And it keeps working: a fresh publish arrives exactly once.
    let (status, _) = cluster
        .api(0)
        .trigger("feed", "final", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200);
    on1.recv_event("final", WAIT).await.unwrap();
    on1.expect_no_event("final", Duration::from_millis(400))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_network_cross_node_delivery() {
    if !docker_ready("bridge_network_cross_node_delivery").await {
        return;
    }
    let cluster = container_cluster(ContainerNetwork::Bridge).await;
    assert!(
        cluster.redis_proxy(0).is_none(),
        "bridge mode has no per-node proxies"
    );
    assert!(cluster.cut_redis(0).is_err());
    assert_cross_node_delivery(&cluster, "bridged").await;
}

#[tokio::test]
async fn container_mode_is_a_node_mode() {
    // Compiles only with the `containers` feature; no engine needed.
    assert_ne!(NodeMode::Container, NodeMode::Process);
}
