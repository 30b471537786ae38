//! Clusters on a Redis Cluster (3 primaries with a replica each, started by the testkit):
//! adapter over sharded pub/sub, presence, cache and history on the cluster; a primary
//! failing over mid-stream; NATS carrying the adapter with state on the Redis Cluster.
//! (The scenario suites shared by every backend run through `on_every_backend!`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{
    assert_every_accepted_tick_delivered, join, user_ids, wait_for, wait_formed, wait_ready, WAIT,
};
use serde_json::json;
use sockudo_core::adapter::names::channel_token;
use sockudo_testkit::{Cluster, TestClient, APP_ID};

/// The primary serving the channel's pub/sub topic is killed while a publisher on node 0
/// publishes: its replica takes over, the nodes follow by themselves, `/ready` is 200 again,
/// and a V2 subscriber on node 1 receives every publish the API accepted with 2xx, once and
/// in order (live frames lost while the shard moved are repaired from the shared history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failover_loses_no_accepted_message() {
    let mut cluster = Cluster::builder()
        .nodes(2)
        .redis_cluster()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut sub = TestClient::connect_v2(&cluster.ws_url(1)).await.unwrap();
    sub.subscribe("feed").await.unwrap();
    let topic = format!(
        "sockudo.ch.{}.{}",
        channel_token(APP_ID),
        channel_token("feed")
    );
    let rc = cluster.redis_cluster().unwrap();
    let victim = rc.primary_of(&topic).await.unwrap();

    let api = cluster.api(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..250u32 {
        if i == 50 {
            cluster.redis_cluster_mut().unwrap().kill(victim).unwrap();
        }
        match api.trigger("feed", "tick", json!({ "i": i })).await {
            Ok((200, _)) => accepted.push(i),
            _ => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_ready(&cluster, 0, WAIT * 4).await;
    wait_ready(&cluster, 1, WAIT * 4).await;
    assert!(
        accepted.len() >= 150,
        "the nodes must follow the failover, not stay down: accepted {} refused {refused}",
        accepted.len()
    );
    assert_every_accepted_tick_delivered(&mut sub, &accepted).await;

    // The old primary comes back (as a replica); the cluster keeps working.
    cluster
        .redis_cluster_mut()
        .unwrap()
        .start_again(victim)
        .await
        .unwrap();
    let (st, _) = api
        .trigger("feed", "tick", json!({ "i": 1000 }))
        .await
        .unwrap();
    assert_eq!(st, 200);
    sub.recv_event("tick", WAIT).await.unwrap();
}

/// NATS carries the adapter; presence, cache and history live on the Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_adapter_with_state_on_redis_cluster() {
    let cluster = Cluster::builder()
        .nodes(2)
        .nats(1)
        .redis_cluster()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut ann = cluster.client(0).await.unwrap();
    join(&mut ann, "presence-room", "ann").await;
    let mut bob = cluster.client(1).await.unwrap();
    join(&mut bob, "presence-room", "bob").await;
    ann.recv_event("pusher_internal:member_added", WAIT)
        .await
        .unwrap();
    for i in 0..2 {
        let (st, body) = cluster
            .api(i)
            .get("/channels/presence-room/users", &[])
            .await
            .unwrap();
        assert_eq!(st, 200, "{body}");
        let want: BTreeSet<String> = ["ann", "bob"].map(String::from).into();
        assert_eq!(user_ids(&body), want);
    }
    let (st, _) = cluster
        .api(1)
        .trigger("presence-room", "hello", json!({}))
        .await
        .unwrap();
    assert_eq!(st, 200);
    ann.recv_event("hello", WAIT).await.unwrap();
}

/// The transport alone: a subscription on a shard whose primary dies is carried over to the
/// promoted replica, and health tells the truth meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscription_survives_a_failover() {
    use futures_util::StreamExt;
    use sockudo_core::adapter::{RedisClusterTransport, Transport};
    let mut rc = sockudo_testkit::RedisCluster::start().await.unwrap();
    let t = RedisClusterTransport::connect(&rc.urls()).await.unwrap();
    let publisher = RedisClusterTransport::connect(&rc.urls()).await.unwrap();
    let mut stream = t.subscribe("topic-a").await.unwrap();
    publisher.publish("topic-a", "one".into()).await.unwrap();
    let got = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"one"[..]));
    let victim = rc.primary_of("topic-a").await.unwrap();
    rc.kill(victim).unwrap();
    wait_for("the subscriber to notice", WAIT * 2, || {
        let healthy = t.is_healthy();
        async move { (!healthy).then_some(()) }
    })
    .await;
    wait_for("the subscriber to recover", WAIT * 4, || {
        let healthy = t.is_healthy();
        async move { healthy.then_some(()) }
    })
    .await;
    wait_for("a publish to be accepted", WAIT * 4, || {
        let p = &publisher;
        async move { p.publish("topic-a", "two".into()).await.ok() }
    })
    .await;
    let got = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"two"[..]));
}
