//! Per-connection limits over real sockets: a connection cannot subscribe to more channels
//! than `max_subscriptions_per_connection`; the one over gets `subscription_error`
//! (`LimitReached`, 429), the connection stays usable, and a freed slot can be used again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let mut s = settings(vec![test_app()]);
    s.max_subscriptions_per_connection = 5;
    let node = TestNode::start(s).await;
    let mut c = node.client(&test_app().key).await;
    for i in 0..5 {
        c.subscribe(&format!("ch-{i}")).await;
    }
    c.subscribe_raw(json!({ "channel": "ch-5" })).await;
    let err = c
        .recv_event("pusher:subscription_error", Duration::from_secs(5))
        .await;
    assert_eq!(err["channel"], "ch-5", "{err}");
    assert_eq!(err["data"]["status"], 429, "{err}");
    assert_eq!(err["data"]["type"], "LimitReached", "{err}");
    // Subscribing again to a channel it already has is not a new subscription.
    c.subscribe_raw(json!({ "channel": "ch-0" })).await;
    c.expect_no_event("pusher:subscription_error", Duration::from_millis(300))
        .await;
    // A freed slot can be used; the node still serves this connection and others.
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "ch-1"}}))
        .await;
    c.subscribe("ch-5").await;
    c.assert_alive().await;
    let mut other = node.client(&test_app().key).await;
    other.subscribe("ch-0").await;
}

/// New subscriptions are rate limited per connection (a burst, then a rate): the one over is
/// `subscription_error` (`LimitReached`, 429); the connection stays usable and subscribing
/// again to a channel it has does not count.
#[tokio::test]
async fn new_subscriptions_are_rate_limited() {
    let mut s = settings(vec![test_app()]);
    s.subscribe_rate_per_second = 1;
    s.subscribe_burst = 3;
    let node = TestNode::start(s).await;
    let mut c = node.client(&test_app().key).await;
    for i in 0..3 {
        c.subscribe(&format!("r-{i}")).await;
    }
    c.subscribe_raw(json!({ "channel": "r-0" })).await;
    c.subscribe_raw(json!({ "channel": "r-3" })).await;
    let err = c
        .recv_event("pusher:subscription_error", Duration::from_secs(5))
        .await;
    assert_eq!(err["channel"], "r-3", "{err}");
    assert_eq!(err["data"]["status"], 429, "{err}");
    assert_eq!(err["data"]["type"], "LimitReached", "{err}");
    c.assert_alive().await;
    // Another connection has its own budget.
    let mut other = node.client(&test_app().key).await;
    other.subscribe("r-3").await;
}
