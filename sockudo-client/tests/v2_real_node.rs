//! V2 against a real in-process node (PROTOCOL.md §6): message identity on frames, resume
//! after a network cut (replay, then live), and fail-closed recovery after a node restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sockudo_client::{ChannelEvent, Client, ClientOptions, ConnectionState, Protocol};
use sockudo_testkit::{TcpProxy, APP_KEY};

#[tokio::test(flavor = "multi_thread")]
async fn resume_after_a_network_cut_replays_what_was_missed() {
    let node = node().await;
    let proxy = TcpProxy::start(node.addr()).await.unwrap();
    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", proxy.addr()))
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(sockudo_client::ConstantBackoff(Duration::from_millis(100)))
        .authorizer(Backend::new("u"));
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe("feed").await.unwrap();
    publish(&node, "feed", "e", json!(1)).await;
    let first = next_message(&mut sub).await;
    assert!(
        first.message_id.is_some() && first.serial.is_some() && first.stream_id.is_some(),
        "{first:?}"
    );

    proxy.cut();
    client
        .wait_for_state(WAIT, |s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap();
    publish(&node, "feed", "e", json!(2)).await;
    publish(&node, "feed", "e", json!(3)).await;
    proxy.restore();

    match next_event(&mut sub).await {
        ChannelEvent::Recovered { replayed, .. } => assert_eq!(replayed, 2),
        other => panic!("expected Recovered, got {other:?}"),
    }
    let two = next_message(&mut sub).await;
    let three = next_message(&mut sub).await;
    assert_eq!((two.data_str(), three.data_str()), (Some("2"), Some("3")));
    assert_eq!(three.serial, first.serial.map(|s| s + 2));
    publish(&node, "feed", "e", json!(4)).await;
    assert_eq!(next_message(&mut sub).await.data_str(), Some("4"));
    assert_eq!(client.stats().resumes_succeeded, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_restart_fails_recovery_closed_before_live_events() {
    let mut node = node().await;
    let client = Client::connect(options(&node, "u").protocol(Protocol::V2))
        .await
        .unwrap();
    let mut sub = client.subscribe("feed").await.unwrap();
    publish(&node, "feed", "a", json!(1)).await;
    let before = next_message(&mut sub).await;
    node.restart().await.unwrap(); // memory state is gone: a new stream
    match next_event(&mut sub).await {
        ChannelEvent::RecoveryFailed(f) => {
            assert_eq!(
                (f.channel.as_str(), f.code.as_str()),
                ("feed", "stream_reset")
            );
            assert_eq!(f.expected_stream_id, before.stream_id);
        }
        other => panic!("RecoveryFailed must come first, got {other:?}"),
    }
    publish(&node, "feed", "b", json!(2)).await;
    let after = next_message(&mut sub).await;
    assert_ne!(after.stream_id, before.stream_id);
    assert_eq!(client.stats().resumes_failed, 1);
}
