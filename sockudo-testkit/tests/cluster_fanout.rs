//! Cross-node fanout over Redis (docs/architecture.md §4): every publish reaches every subscriber
//! on every node exactly once, whichever node it enters; cluster-wide HTTP answers; the
//! connection quota, signed-in users and terminate across nodes; one process-mode cluster.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};

use cluster_support::{count_app_events, drain, join, user_ids, wait_for, wait_formed, WAIT};
use serde_json::json;
use sockudo_testkit::{
    ensure_sockudo_binary, test_app, Cluster, NodeMode, TestClient, APP_KEY, APP_SECRET,
};

const KINDS: [&str; 5] = [
    "fan",
    "private-fan",
    "presence-fan",
    "private-encrypted-fan",
    "cache-fan",
];

async fn every_publish_reaches_every_subscriber_on_every_node_exactly_once(cluster: Cluster) {
    // Two clients per node, each on every kind of channel.
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = cluster.client(i % 3).await.unwrap();
        for ch in KINDS {
            join(&mut c, ch, &format!("user-{i}")).await;
        }
        clients.push(c);
    }
    // Each node publishes once on each channel.
    for node in 0..3 {
        for ch in KINDS {
            let data = if ch.starts_with("private-encrypted-") {
                json!({ "ciphertext": format!("c{node}"), "nonce": "bm9uY2U=" }).to_string()
            } else {
                format!("from-{node}")
            };
            let (status, body) = cluster
                .api(node)
                .trigger(ch, "e", json!(data))
                .await
                .unwrap();
            assert_eq!(status, 200, "{body}");
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let events = drain(c).await;
        let counts = count_app_events(&events, "e");
        assert_eq!(
            counts.len(),
            15,
            "client {i} (node {}) got {counts:?}",
            i % 3
        );
        for ((ch, data), n) in &counts {
            assert_eq!(*n, 1, "client {i}: {ch} {data} delivered {n} times");
        }
        assert!(
            events.iter().all(|e| e.event != "pusher:error"),
            "client {i}: {events:?}"
        );
    }
}

async fn socket_exclusion_and_client_events_cross_nodes(cluster: Cluster) {
    let mut c = Vec::new();
    for i in 0..3 {
        let mut client = cluster.client(i).await.unwrap();
        join(&mut client, "private-chat", "").await;
        join(&mut client, "presence-chat", &format!("u{i}")).await;
        c.push(client);
    }
    // Excluding the socket on node 2 while publishing via node 0.
    let excluded = c[2].socket_id().to_string();
    let body = json!({ "name": "e", "channels": ["private-chat", "presence-chat"], "data": "x", "socket_id": excluded });
    let (status, resp) = cluster.api(0).trigger_body(&body).await.unwrap();
    assert_eq!(status, 200, "{resp}");
    // Client events: from node 1 on both channels.
    c[1].trigger("private-chat", "client-hi", json!({ "from": 1 }))
        .await
        .unwrap();
    c[1].trigger("presence-chat", "client-hi", json!({ "from": 1 }))
        .await
        .unwrap();

    let mut all = Vec::new();
    for client in c.iter_mut() {
        all.push(drain(client).await);
    }
    for (i, events) in all.iter().enumerate() {
        let published = count_app_events(events, "e");
        let client_events: Vec<_> = events.iter().filter(|e| e.event == "client-hi").collect();
        if i == 2 {
            assert!(
                published.is_empty(),
                "the excluded socket on node 2 got {published:?}"
            );
        } else {
            assert_eq!(
                published.values().copied().collect::<Vec<_>>(),
                vec![1, 1],
                "client {i}: {published:?}"
            );
        }
        if i == 1 {
            assert!(
                client_events.is_empty(),
                "client events are not echoed to the sender: {client_events:?}"
            );
        } else {
            assert_eq!(client_events.len(), 2, "client {i}: {client_events:?}");
            let on_presence = client_events
                .iter()
                .find(|e| e.channel.as_deref() == Some("presence-chat"))
                .unwrap();
            assert_eq!(
                on_presence.user_id.as_deref(),
                Some("u1"),
                "{:?}",
                on_presence.raw
            );
            let on_private = client_events
                .iter()
                .find(|e| e.channel.as_deref() == Some("private-chat"))
                .unwrap();
            assert_eq!(on_private.data_json(), json!({ "from": 1 }));
        }
        assert!(
            events.iter().all(|e| e.event != "pusher:error"),
            "client {i}: {events:?}"
        );
    }
}

async fn user_channel_and_terminate_connections_across_nodes(cluster: Cluster) {
    let mut alice1 = cluster.client(1).await.unwrap();
    let mut alice2 = cluster.client(2).await.unwrap();
    let mut bob0 = cluster.client(0).await.unwrap();
    for a in [&mut alice1, &mut alice2] {
        a.signin("alice", APP_KEY, APP_SECRET).await.unwrap();
        a.subscribe("#server-to-user-alice").await.unwrap();
    }
    bob0.signin("bob", APP_KEY, APP_SECRET).await.unwrap();
    bob0.subscribe("#server-to-user-bob").await.unwrap();

    let (status, body) = cluster
        .api(0)
        .trigger("#server-to-user-alice", "note", json!("for alice"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for a in [&mut alice1, &mut alice2] {
        let counts = count_app_events(&drain(a).await, "note");
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![1],
            "{counts:?}"
        );
    }
    assert!(
        count_app_events(&drain(&mut bob0).await, "note").is_empty(),
        "bob must not get alice's note"
    );

    let (status, body) = cluster
        .api(0)
        .post("/users/alice/terminate_connections", &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice1.close_code(WAIT).await.unwrap(), Some(4009));
    assert_eq!(alice2.close_code(WAIT).await.unwrap(), Some(4009));
    // Bob is untouched.
    let (status, _) = cluster
        .api(2)
        .trigger("#server-to-user-bob", "note", json!("for bob"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        bob0.recv_event("note", WAIT).await.unwrap().data,
        json!("for bob")
    );
}

async fn http_api_answers_are_cluster_wide_from_every_node(cluster: Cluster) {
    let mut keep = Vec::new();
    // news: 2 subscribers (nodes 0, 1); sports: 1 (node 2); presence-room: u1 twice (nodes 0, 1), u2 (node 2).
    for (node, channel, user) in [
        (0, "news", ""),
        (1, "news", ""),
        (2, "sports", ""),
        (0, "presence-room", "u1"),
        (1, "presence-room", "u1"),
        (2, "presence-room", "u2"),
    ] {
        let mut c = cluster.client(node).await.unwrap();
        join(&mut c, channel, user).await;
        keep.push(c);
    }
    for i in 0..3 {
        let api = cluster.api(i);
        let (status, body) = api.get("/channels", &[]).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let names: BTreeSet<&str> = body["channels"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["news", "sports", "presence-room"]),
            "node {i}: {body}"
        );

        let (status, body) = api
            .get(
                "/channels",
                &[("filter_by_prefix", "presence-"), ("info", "user_count")],
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({ "channels": { "presence-room": { "user_count": 2 } } }),
            "node {i}"
        );

        let (status, body) = api
            .get("/channels/news", &[("info", "subscription_count")])
            .await
            .unwrap();
        assert_eq!(
            (status, &body),
            (200, &json!({ "occupied": true, "subscription_count": 2 })),
            "node {i}"
        );
        let (_, body) = api
            .get("/channels/sports", &[("info", "subscription_count")])
            .await
            .unwrap();
        assert_eq!(
            body,
            json!({ "occupied": true, "subscription_count": 1 }),
            "node {i}"
        );
        let (_, body) = api
            .get("/channels/empty", &[("info", "subscription_count")])
            .await
            .unwrap();
        assert_eq!(
            body,
            json!({ "occupied": false, "subscription_count": 0 }),
            "node {i}"
        );
        let (status, body) = api
            .get(
                "/channels/presence-room",
                &[("info", "user_count,subscription_count")],
            )
            .await
            .unwrap();
        assert_eq!(
            (status, &body),
            (
                200,
                &json!({ "occupied": true, "user_count": 2, "subscription_count": 3 })
            ),
            "node {i}"
        );

        let (status, body) = api.get("/channels/presence-room/users", &[]).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            user_ids(&body),
            BTreeSet::from(["u1".to_string(), "u2".to_string()]),
            "node {i}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_quota_counts_the_whole_cluster() {
    let mut app = test_app();
    app.max_connections = 3;
    let cluster = Cluster::builder()
        .nodes(3)
        .redis(true)
        .app(app)
        .build()
        .await
        .unwrap();
    // The probes of `wait_formed` are the three allowed connections' worth: run it first.
    wait_formed(&cluster).await;
    let mut held = Vec::new();
    for i in 0..3 {
        // The probes' slots are released as their sessions end: retry briefly.
        let url = cluster.ws_url(i);
        held.push(
            wait_for("a connection within the quota", WAIT, || {
                let url = url.clone();
                async move { TestClient::connect(&url).await.ok() }
            })
            .await,
        );
    }
    for i in 0..3 {
        let refused = TestClient::connect(&cluster.ws_url(i))
            .await
            .expect_err("a 4th connection must be refused");
        assert!(refused.to_string().contains("4004"), "node {i}: {refused}");
    }
    // Freeing a slot on node 1 lets a connection in on node 2, and only one.
    held.remove(1).close().await.unwrap();
    let url = cluster.ws_url(2);
    let again = wait_for("a freed slot to be usable on another node", WAIT, || {
        let url = url.clone();
        async move { TestClient::connect(&url).await.ok() }
    })
    .await;
    let refused = TestClient::connect(&cluster.ws_url(0))
        .await
        .expect_err("the quota is full again");
    assert!(refused.to_string().contains("4004"), "{refused}");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_nodes_deliver_across_nodes() {
    tokio::task::spawn_blocking(ensure_sockudo_binary)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the sockudo binary is needed: {e}"));
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .mode(NodeMode::Process)
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut on = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(i).await.unwrap();
        join(&mut c, "proc", "").await;
        join(&mut c, "presence-proc", &format!("p{i}")).await;
        on.push(c);
    }
    for i in 0..2 {
        let (status, body) = cluster
            .api(i)
            .trigger("proc", "e", json!(format!("via-{i}")))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    for (i, c) in on.iter_mut().enumerate() {
        let counts = count_app_events(&drain(c).await, "e");
        let expected: BTreeMap<(String, String), usize> = (0..2)
            .map(|n| (("proc".to_string(), format!("via-{n}")), 1))
            .collect();
        assert_eq!(counts, expected, "process node {i}");
    }
    let (_, body) = cluster
        .api(1)
        .get("/channels/presence-proc/users", &[])
        .await
        .unwrap();
    assert_eq!(
        user_ids(&body),
        BTreeSet::from(["p0".to_string(), "p1".to_string()]),
        "{body}"
    );
}

on_every_backend!(
    every_publish_reaches_every_subscriber_on_every_node_exactly_once,
    socket_exclusion_and_client_events_cross_nodes,
    user_channel_and_terminate_connections_across_nodes,
    http_api_answers_are_cluster_wide_from_every_node,
);
