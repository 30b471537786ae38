//! Webhooks from a 3-node cluster: cluster-wide events are sent once, whichever nodes the
//! connections are on, and the batches arrive signed through the shared Redis queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cluster_support::{wait_for, wait_formed, WAIT};
use serde_json::{json, Value};
use sockudo_core::app::WebhookTarget;
use sockudo_core::auth::webhook_signature;
use sockudo_testkit::{test_app, Cluster, APP_KEY, APP_SECRET};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Every webhook event received, as `(name, channel, user_id)` → count, after checking each
/// request's signature.
async fn received(server: &MockServer) -> BTreeMap<(String, String, String), usize> {
    let mut out = BTreeMap::new();
    for req in server.received_requests().await.unwrap_or_default() {
        let sig = req
            .headers
            .get("x-pusher-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            sig,
            webhook_signature(APP_SECRET, &req.body),
            "every batch is signed with the app secret"
        );
        assert_eq!(
            req.headers
                .get("x-pusher-key")
                .and_then(|v| v.to_str().ok()),
            Some(APP_KEY)
        );
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        for e in body["events"].as_array().unwrap() {
            let channel = e["channel"].as_str().unwrap_or_default().to_owned();
            if channel == "probe-formation" {
                continue; // the cluster-formation probe's own events
            }
            let key = (
                e["name"].as_str().unwrap_or_default().to_owned(),
                channel,
                e["user_id"].as_str().unwrap_or_default().to_owned(),
            );
            *out.entry(key).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_events_are_sent_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let mut app = test_app();
    app.webhooks = vec![WebhookTarget {
        url: format!("{}/hooks", server.uri()),
        event_types: Vec::new(),
        headers: Default::default(),
    }];
    let cluster = Cluster::builder()
        .nodes(3)
        .redis(true)
        .app(app)
        .settings(|_, s| {
            s.queue.driver = "redis".into();
            s.webhook_batch_ms = 50;
            s.webhook_delay_secs = 1;
        })
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;

    // One public channel and one presence channel, occupied from every node; two users, each
    // connected on two nodes.
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe("news").await.unwrap();
        clients.push(c);
    }
    for (i, user) in [(0, "ann"), (1, "ann"), (1, "bob"), (2, "bob")] {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe_presence("presence-room", APP_KEY, APP_SECRET, user, json!({}))
            .await
            .unwrap();
        clients.push(c);
    }
    for c in clients {
        c.close().await.unwrap();
    }

    let expected: BTreeMap<(String, String, String), usize> = [
        ("channel_occupied", "news", ""),
        ("channel_vacated", "news", ""),
        ("channel_occupied", "presence-room", ""),
        ("channel_vacated", "presence-room", ""),
        ("member_added", "presence-room", "ann"),
        ("member_added", "presence-room", "bob"),
        ("member_removed", "presence-room", "ann"),
        ("member_removed", "presence-room", "bob"),
    ]
    .into_iter()
    .map(|(n, c, u)| ((n.to_owned(), c.to_owned(), u.to_owned()), 1))
    .collect();
    let got = wait_for("every webhook event", WAIT * 3, || {
        let server = &server;
        let expected = &expected;
        async move {
            let got = received(server).await;
            (got.keys().collect::<Vec<_>>() == expected.keys().collect::<Vec<_>>()).then_some(got)
        }
    })
    .await;
    // Give late duplicates (a second node deciding the same event) time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_later = received(&server).await;
    assert_eq!(got_later, got, "no event arrived twice");
    assert_eq!(got, expected, "each cluster-wide event exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_channels_are_reported_vacated() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let mut app = test_app();
    app.webhooks = vec![WebhookTarget {
        url: format!("{}/hooks", server.uri()),
        event_types: vec!["channel_occupied".into(), "channel_vacated".into()],
        headers: Default::default(),
    }];
    let mut cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .app(app)
        .settings(|_, s| {
            s.queue.driver = "redis".into();
            s.webhook_batch_ms = 50;
            s.webhook_delay_secs = 1;
        })
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    // Only node 1 holds the channel; then it dies without closing anything.
    let mut c = cluster.client(1).await.unwrap();
    c.subscribe("lonely").await.unwrap();
    let occupied = [(
        (
            "channel_occupied".to_owned(),
            "lonely".to_owned(),
            String::new(),
        ),
        1,
    )]
    .into_iter()
    .collect::<BTreeMap<_, _>>();
    wait_for("channel_occupied", WAIT, || {
        let server = &server;
        let occupied = &occupied;
        async move { (received(server).await == *occupied).then_some(()) }
    })
    .await;
    cluster.kill_node(1).unwrap();
    // The survivor sweeps the dead node after the liveness timeout (2 s here), then waits the
    // vacate delay: the channel is reported vacated once.
    let vacated = (
        "channel_vacated".to_owned(),
        "lonely".to_owned(),
        String::new(),
    );
    let got = wait_for("channel_vacated after the crash", WAIT * 3, || {
        let server = &server;
        let vacated = vacated.clone();
        async move {
            let got = received(server).await;
            got.contains_key(&vacated).then_some(got)
        }
    })
    .await;
    assert_eq!(got.get(&vacated), Some(&1));
    drop(c);
}
