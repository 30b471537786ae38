//! Two clusters on one Redis, told apart only by `cluster.prefix`: same app, same channel
//! names, same node ids. Nothing crosses: fanout, presence (and the sweep of a dead node that
//! has the same id as a live node of the other cluster), idempotency keys, V2 history and the
//! webhook queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::time::Duration;

use cluster_support::{join, user_ids, wait_for, wait_formed, WAIT};
use serde_json::{json, Value};
use sockudo_core::app::WebhookTarget;
use sockudo_testkit::{test_app, Cluster, RedisServer, TestClient};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn cluster_on(redis: &RedisServer, prefix: &'static str, hooks: &MockServer) -> Cluster {
    let mut app = test_app();
    app.webhooks = vec![WebhookTarget {
        url: format!("{}/hooks", hooks.uri()),
        event_types: Vec::new(),
        headers: Default::default(),
    }];
    let cluster = Cluster::builder()
        .nodes(2)
        .redis_at(redis.addr())
        .app(app)
        .settings(move |_, s| {
            s.cluster.prefix = prefix.into();
            s.queue.driver = "redis".into();
            s.webhook_batch_ms = 50;
        })
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    cluster
}

/// `(event name, channel, user_id)` of every webhook event `server` received.
async fn hook_events(server: &MockServer) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for req in server.received_requests().await.unwrap_or_default() {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        for e in body["events"].as_array().cloned().unwrap_or_default() {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            out.push((s("name"), s("channel"), s("user_id")));
        }
    }
    out
}

async fn users(cluster: &Cluster, i: usize, channel: &str) -> std::collections::BTreeSet<String> {
    let (status, body) = cluster
        .api(i)
        .get(&format!("/channels/{channel}/users"), &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    user_ids(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_share_one_redis_without_interference() {
    let redis = RedisServer::start().await.unwrap();
    let hooks_a = MockServer::start().await;
    let hooks_b = MockServer::start().await;
    for s in [&hooks_a, &hooks_b] {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .mount(s)
            .await;
    }
    let alpha = cluster_on(&redis, "alpha", &hooks_a).await;
    let mut beta = cluster_on(&redis, "beta", &hooks_b).await;

    // Fanout and idempotency: the same key on both clusters publishes twice, once in each.
    let mut a = alpha.client(1).await.unwrap();
    let mut b = beta.client(1).await.unwrap();
    a.subscribe("news").await.unwrap();
    b.subscribe("news").await.unwrap();
    let (st, body) = alpha
        .api(0)
        .trigger_with_key("news", "from-alpha", json!({}), "same-key")
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    let (st, body) = beta
        .api(0)
        .trigger_with_key("news", "from-beta", json!({}), "same-key")
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    a.recv_event("from-alpha", WAIT).await.unwrap();
    b.recv_event("from-beta", WAIT).await.unwrap();
    a.expect_no_event("from-beta", Duration::from_millis(500))
        .await
        .unwrap();
    b.expect_no_event("from-alpha", Duration::from_millis(200))
        .await
        .unwrap();

    // V2 history: each cluster's stream holds its own message only.
    for (cluster, mine, theirs) in [
        (&alpha, "from-alpha", "from-beta"),
        (&beta, "from-beta", "from-alpha"),
    ] {
        let mut v2 = TestClient::connect_v2(&cluster.ws_url(0)).await.unwrap();
        v2.subscribe("news").await.unwrap();
        let page = v2
            .channel_history(json!({ "channel": "news", "limit": 50 }), WAIT)
            .await
            .unwrap();
        let raw = page.raw.to_string();
        assert!(raw.contains(mine), "{raw}");
        assert!(!raw.contains(theirs), "{raw}");
    }

    // Presence: ann joins on alpha's node-1; beta never sees her. Then beta's node-1 (the
    // same node id) dies and is swept by beta: alpha's member stays.
    let mut ann = alpha.client(1).await.unwrap();
    join(&mut ann, "presence-room", "ann").await;
    assert_eq!(
        users(&alpha, 0, "presence-room").await,
        ["ann".to_owned()].into()
    );
    assert!(users(&beta, 0, "presence-room").await.is_empty());
    let mut bob = beta.client(1).await.unwrap();
    join(&mut bob, "presence-room", "bob").await;
    beta.kill_node(1).unwrap();
    wait_for("beta to sweep its dead node-1", WAIT * 2, || {
        let beta = &beta;
        async move {
            users(beta, 0, "presence-room")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        users(&alpha, 0, "presence-room").await,
        ["ann".to_owned()].into(),
        "beta's sweep of node-1 must not touch alpha's node-1"
    );
    ann.expect_no_event("pusher_internal:member_removed", Duration::from_millis(300))
        .await
        .unwrap();

    // The webhook queues: each receiver hears only its own cluster.
    wait_for("both receivers", WAIT * 2, || {
        let (ha, hb) = (&hooks_a, &hooks_b);
        async move {
            let a = hook_events(ha).await;
            let b = hook_events(hb).await;
            let added = |v: &[(String, String, String)], u: &str| {
                v.iter()
                    .any(|(n, _, user)| n == "member_added" && user == u)
            };
            (added(&a, "ann") && added(&b, "bob")).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a_events = hook_events(&hooks_a).await;
    let b_events = hook_events(&hooks_b).await;
    assert!(
        !a_events.iter().any(|(_, _, u)| u == "bob"),
        "alpha's receiver got beta's member: {a_events:?}"
    );
    assert!(
        !b_events.iter().any(|(_, _, u)| u == "ann"),
        "beta's receiver got alpha's member: {b_events:?}"
    );
    drop(beta);
    drop(alpha);
}

/// A second live node started under a taken node id: its `/ready` says why it is 503, it
/// deletes none of the first node's presence, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_is_refused_traffic_and_deletes_nothing() {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut ann = cluster.client(0).await.unwrap();
    join(&mut ann, "presence-room", "ann").await;
    let taken = cluster.node(0).as_in_process().unwrap().settings().clone();
    let twin = sockudo_testkit::TestNode::start(taken).await.unwrap();
    let ready = |url: String| async move {
        let r = reqwest::get(format!("{url}/ready")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (status, body) = ready(twin.http_url()).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("duplicate node id"), "{body}");
    assert_eq!(ready(cluster.node(0).http_url()).await.0, 200);
    assert_eq!(
        users(&cluster, 1, "presence-room").await,
        ["ann".to_owned()].into()
    );
    drop(twin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        users(&cluster, 1, "presence-room").await,
        ["ann".to_owned()].into(),
        "the twin's shutdown withdrew nothing of node 0"
    );
    ann.expect_no_event("pusher_internal:member_removed", Duration::from_millis(200))
        .await
        .unwrap();
}
