//! The HTTP API's idempotency and rate-limit layers across two nodes sharing one Redis
//! (docs/protocol.md §7): one key, one effect, cluster-wide; fail closed without Redis; budgets
//! shared by every node.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::time::Duration;

use cluster_support::{count_app_events, drain, wait_formed, WAIT};
use serde_json::{json, Value};
use sockudo_testkit::{Cluster, TestClient};

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn event(data: &str) -> Value {
    json!({ "name": "e", "channel": "idem", "data": data })
}

async fn two_nodes() -> (Cluster, Vec<TestClient>) {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut clients = Vec::new();
    for i in 0..2 {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe("idem").await.unwrap();
        clients.push(c);
    }
    (cluster, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_node_replays_the_first_answer_and_delivers_once() {
    let (cluster, mut clients) = two_nodes().await;
    let (a, b) = (cluster.api(0), cluster.api(1));
    let (s1, h1, body1) = a
        .post_with_headers("/events", &event("x"), &[("x-idempotency-key", "k-1")])
        .await
        .unwrap();
    assert_eq!(s1, 200, "{body1}");
    let (s2, h2, body2) = b
        .post_with_headers("/events", &event("x"), &[("x-idempotency-key", "k-1")])
        .await
        .unwrap();
    assert_eq!(
        (s2, &body2),
        (200, &body1),
        "the retry gets the first answer"
    );
    assert_eq!(header(&h2, "x-idempotent-replayed"), Some("true"), "{h2:?}");
    assert_eq!(header(&h1, "x-idempotent-replayed"), None);
    // The key in the body works the same across nodes (and the body wins over the header).
    let mut keyed = event("y");
    keyed["idempotency_key"] = json!("k-2");
    let (s3, _, _) = b
        .post_with_headers("/events", &keyed, &[("x-idempotency-key", "ignored")])
        .await
        .unwrap();
    let (s4, h4, _) = a.post_with_headers("/events", &keyed, &[]).await.unwrap();
    assert_eq!((s3, s4), (200, 200));
    assert_eq!(header(&h4, "x-idempotent-replayed"), Some("true"));

    // Another payload under a used key: 409, from either node, and nothing published.
    let (s5, _, body5) = b
        .post_with_headers(
            "/events",
            &event("changed"),
            &[("x-idempotency-key", "k-1")],
        )
        .await
        .unwrap();
    assert_eq!(s5, 409, "{body5}");
    let (s6, _, body6) = a
        .post_with_headers(
            "/events",
            &event("changed"),
            &[("x-idempotency-key", "k-1")],
        )
        .await
        .unwrap();
    assert_eq!(s6, 409, "{body6}");

    for (i, c) in clients.iter_mut().enumerate() {
        let counts = count_app_events(&drain(c).await, "e");
        let expected = [
            (("idem".to_string(), "x".to_string()), 1),
            (("idem".to_string(), "y".to_string()), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(counts, expected, "client on node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_idempotent_publishes_fail_closed_and_recover_after() {
    let (mut cluster, mut clients) = two_nodes().await;
    let a = cluster.api(0);
    let (status, _, body) = a
        .post_with_headers("/events", &event("before"), &[("x-idempotency-key", "r-0")])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    cluster.stop_redis().unwrap();
    for (node, key) in [(0, "r-1"), (1, "r-2")] {
        let (status, headers, body) = cluster
            .api(node)
            .post_with_headers("/events", &event("during"), &[("x-idempotency-key", key)])
            .await
            .unwrap();
        assert_eq!(status, 503, "node {node}: {body}");
        assert!(
            header(&headers, "retry-after").is_some(),
            "node {node}: {headers:?}"
        );
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let counts = count_app_events(&drain(c).await, "e");
        assert!(
            !counts.contains_key(&("idem".to_string(), "during".to_string())),
            "client on node {i}: nothing may be published: {counts:?}"
        );
    }

    cluster.start_redis().await.unwrap();
    // Same nodes, no restart: the key that failed is usable, once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let first = loop {
        let (status, _, body) = a
            .post_with_headers("/events", &event("after"), &[("x-idempotency-key", "r-1")])
            .await
            .unwrap();
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "idempotent publishes still fail after Redis came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Node 1 reconnects to Redis on its own schedule: until it has, it fails closed (503),
    // never publishing twice.
    let (headers, body) = loop {
        let (status, headers, body) = cluster
            .api(1)
            .post_with_headers("/events", &event("after"), &[("x-idempotency-key", "r-1")])
            .await
            .unwrap();
        if status != 503 {
            assert_eq!(status, 200, "{body}");
            break (headers, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 still fails after Redis came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body, first);
    assert_eq!(header(&headers, "x-idempotent-replayed"), Some("true"));
    // The client on node 0 sees "after" exactly once (node 1's may still be re-subscribing).
    let counts = count_app_events(&drain(&mut clients[0]).await, "e");
    assert_eq!(
        counts.get(&("idem".to_string(), "after".to_string())),
        Some(&1),
        "{counts:?}"
    );
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spent_on_one_node_is_spent_on_the_other() {
    let cluster = Cluster::builder()
        .nodes(2)
        .redis(true)
        .settings(|_, s| {
            s.api_rate_limit_per_second = 1;
            s.api_rate_limit_burst = 3;
        })
        .build()
        .await
        .unwrap();
    let (a, b) = (cluster.api(0), cluster.api(1));
    let mut limited = None;
    for n in 0..3 {
        let (status, headers, body) = a
            .post_with_headers("/events", &event(&format!("n{n}")), &[])
            .await
            .unwrap();
        if status == 429 {
            // Time only adds budget: a 429 within the burst is a failure.
            limited = Some((n, headers, body));
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            header(&headers, "x-ratelimit-limit").is_some(),
            "{headers:?}"
        );
    }
    assert!(
        limited.is_none(),
        "the burst of 3 was refused early: {limited:?}"
    );
    // Node B sees the budget node A spent: the next publishes are limited there.
    let mut refused = false;
    for _ in 0..3 {
        let (status, headers, body) = b
            .post_with_headers("/events", &event("b"), &[])
            .await
            .unwrap();
        if status == 429 {
            assert!(header(&headers, "retry-after").is_some(), "{headers:?}");
            refused = true;
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    assert!(refused, "node B never enforced the budget node A spent");
    // The budget comes back with time, on both nodes.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, body) = a
            .post_with_headers("/events", &event("later"), &[])
            .await
            .unwrap();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget never refilled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
