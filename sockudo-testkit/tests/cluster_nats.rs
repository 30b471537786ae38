//! Clusters whose adapter runs on NATS (a 3-server NATS cluster started by the testkit;
//! presence, cache, history and queue on the shared Redis): fanout, presence and cluster
//! queries across nodes, and a node failing over when its NATS server is killed.
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
async fn nats_cluster_carries_fanout_presence_and_queries() {
    let cluster = Cluster::builder().nodes(3).nats(3).build().await.unwrap();
    assert_eq!(cluster.nats().unwrap().len(), 3);
    // Cluster queries over NATS: every node counts every node's probe.
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
    wait_for("node 0 ready again", WAIT, || {
        let url = format!("{}/ready", cluster.node(0).http_url());
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())
        }
    })
    .await;
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
