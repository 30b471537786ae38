//! V2 against a real in-process node (docs/protocol.md §6): message identity on frames, resume
//! after a network cut (replay, then live) for one channel and for several with a slow
//! authorizer, and fail-closed recovery after a node restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use sockudo_client::{
    authorizer_fn, Authorizer, ChannelEvent, Client, ClientOptions, ConnectionState, Protocol,
    Subscription,
};
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

/// `Recovered` with `replayed` events, then the message `data`.
async fn recovered_then(sub: &mut Subscription, replayed: u64, data: &str) {
    match next_event(sub).await {
        ChannelEvent::Recovered { replayed: n, .. } => assert_eq!(n, replayed, "{}", sub.channel()),
        other => panic!("{}: expected Recovered, got {other:?}", sub.channel()),
    }
    assert_eq!(next_message(sub).await.data_str(), Some(data));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_channel_resumes_after_a_cut_even_with_a_slow_authorizer() {
    // After the cut, authorizing takes longer than the resume timeout: the private
    // channel's resume position waits on the node until its subscribe, and the client's
    // wait for the verdict starts only then.
    const LATE: Duration = Duration::from_millis(800);
    let node = node().await;
    let proxy = TcpProxy::start(node.addr()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let backend = Backend::new("u");
    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", proxy.addr()))
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(sockudo_client::ConstantBackoff(Duration::from_millis(100)))
        .resume_timeout(Duration::from_millis(500))
        .authorizer(authorizer_fn(move |req| {
            let backend = backend.clone();
            let late = calls.fetch_add(1, Ordering::Relaxed) > 0;
            async move {
                if late {
                    tokio::time::sleep(LATE).await;
                }
                backend.authorize_channel(req).await
            }
        }));
    let client = Client::connect(opts).await.unwrap();
    let channels = ["feed", "news", "private-feed"];
    let mut subs = Vec::new();
    for channel in channels {
        let mut sub = client.subscribe(channel).await.unwrap();
        publish(&node, channel, "e", json!("1")).await;
        assert_eq!(next_message(&mut sub).await.data_str(), Some("1"));
        subs.push(sub);
    }

    proxy.cut();
    client
        .wait_for_state(WAIT, |s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap();
    for channel in channels {
        publish(&node, channel, "e", json!("2")).await;
    }
    proxy.restore();

    for sub in &mut subs {
        recovered_then(sub, 1, "2").await;
    }
    for channel in channels {
        publish(&node, channel, "e", json!("3")).await;
    }
    for sub in &mut subs {
        assert_eq!(next_message(sub).await.data_str(), Some("3"));
    }
    let stats = client.stats();
    assert_eq!(
        (
            stats.resumes_succeeded,
            stats.resumes_failed,
            stats.recovery_failures
        ),
        (3, 0, 0)
    );
}
