//! Clusters whose adapter runs on RabbitMQ (a private broker node started by the testkit;
//! presence, cache, history and queue on the shared Redis): fanout, presence and cluster
//! queries across nodes, and the broker restarting mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{
    assert_every_accepted_tick_delivered, count_app_events, drain, join, user_ids, wait_for,
    wait_formed, WAIT,
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

    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe("news").await.unwrap();
        clients.push(c);
    }
    let (st, body) = cluster
        .api(0)
        .trigger("news", "flash", json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    for c in &mut clients {
        let events = drain(c).await;
        let counts = count_app_events(&events, "flash");
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![1],
            "{counts:?}"
        );
    }

    // Presence across nodes: first joins are announced once on every other node.
    let mut observer = cluster.client(0).await.unwrap();
    join(&mut observer, "presence-room", "watcher").await;
    let mut ann = cluster.client(1).await.unwrap();
    join(&mut ann, "presence-room", "ann").await;
    let mut bob = cluster.client(2).await.unwrap();
    join(&mut bob, "presence-room", "bob").await;
    let events = drain(&mut observer).await;
    let added: Vec<String> = events
        .iter()
        .filter(|e| e.event == "pusher_internal:member_added")
        .map(|e| e.data["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(added, vec!["ann".to_owned(), "bob".to_owned()]);
    for i in 0..3 {
        let (st, body) = cluster
            .api(i)
            .get("/channels/presence-room/users", &[])
            .await
            .unwrap();
        assert_eq!(st, 200, "{body}");
        let want: BTreeSet<String> = ["ann", "bob", "watcher"].map(String::from).into();
        assert_eq!(user_ids(&body), want);
    }
}

async fn ready(cluster: &Cluster, i: usize) {
    let url = format!("{}/ready", cluster.node(i).http_url());
    wait_for("node ready", WAIT, || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
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
    ready(&cluster, 0).await;
    ready(&cluster, 1).await;
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
