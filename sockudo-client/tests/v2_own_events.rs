//! A V2 publisher against a real in-process node: its own client events (and API publishes
//! that exclude its socket) take serials of the channel's stream, and the node tells it so
//! with `sockudo_internal:position`. The client must take those serials as used: every other
//! message arrives in order, nothing is reported missing, no resume goes out, and its own
//! events never come back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sockudo_client::{Client, ClientEvent, Protocol, Subscription};
use sockudo_testkit::test_app;

const ROOM: &str = "private-room";
const ROUNDS: u64 = 6;

/// `(event, i, serial)` of the next `n` events, which must all be messages (so no
/// `RecoveryFailed` either).
async fn received(sub: &mut Subscription, n: u64) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = next_message(sub).await;
        let i = m.json::<serde_json::Value>().unwrap()["i"]
            .as_u64()
            .unwrap();
        out.push((m.event.clone(), i, m.serial.unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_gets_every_other_message_in_order_and_never_its_own() {
    let mut app = test_app();
    app.enable_client_messages = true;
    app.max_client_events_per_second = 1000;
    let node = node_with(sockudo_testkit::test_settings(vec![app])).await;
    let me = Client::connect(options(&node, "me").protocol(Protocol::V2))
        .await
        .unwrap();
    let peer = Client::connect(options(&node, "peer").protocol(Protocol::V2))
        .await
        .unwrap();
    let mut mine = me.subscribe(ROOM).await.unwrap();
    let mut theirs = peer.subscribe(ROOM).await.unwrap();
    let mut events = me.events();
    let my_socket = me.socket_id().unwrap();

    for i in 0..ROUNDS {
        me.trigger(ROOM, "client-mine", json!({"i": i}))
            .await
            .unwrap();
        publish(&node, ROOM, "api", json!({"i": i}).to_string().into()).await;
        peer.trigger(ROOM, "client-peer", json!({"i": i}))
            .await
            .unwrap();
        let body = json!({"name": "api-not-to-me", "channel": ROOM,
                          "data": json!({"i": i}).to_string(), "socket_id": my_socket});
        let (status, resp) = api(&node).trigger_body(&body).await.unwrap();
        assert_eq!(status, 200, "{resp}");
    }

    // Each round takes four serials from `first`: my event, the API publish, the peer's
    // event (withheld from the peer: a position frame), the API publish not sent to me.
    let theirs_got = received(&mut theirs, 3 * ROUNDS).await;
    let first = theirs_got[0].2;
    let at = |i: u64, k: u64| first + 4 * i + k;
    let want: Vec<(String, u64, u64)> = (0..ROUNDS)
        .flat_map(|i| {
            [("client-mine", 0), ("api", 1), ("api-not-to-me", 3)]
                .map(|(e, k)| (e.to_owned(), i, at(i, k)))
        })
        .collect();
    assert_eq!(theirs_got, want, "the peer, which also publishes");

    // I get the other two per round, in order, and nothing of mine.
    let got = received(&mut mine, 2 * ROUNDS).await;
    let want: Vec<(String, u64, u64)> = (0..ROUNDS)
        .flat_map(|i| [("api", 1), ("client-peer", 2)].map(|(e, k)| (e.to_owned(), i, at(i, k))))
        .collect();
    assert_eq!(got, want);
    assert_quiet(&mut mine, Duration::from_millis(500)).await;

    let stats = me.stats();
    assert_eq!(
        (
            stats.gaps_detected,
            stats.recovery_failures,
            stats.resumes_succeeded + stats.resumes_failed,
            stats.reconnects
        ),
        (0, 0, 0, 0),
        "no gap seen, so no resume sent: {stats:?}"
    );
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, ClientEvent::RecoveryFailed(_)),
            "{event:?}"
        );
    }
}
