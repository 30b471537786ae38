//! V2 behaviour against a small scripted WebSocket server: dedup of redelivered frames,
//! resume success and failure (with the fail-closed ordering), history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::time::Duration;

use fake::*;
use serde_json::json;
use sockudo_client::{
    ChannelEvent, Client, ClientOptions, ConstantBackoff, HistoryQuery, Protocol, Subscription,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn redelivered_frames_are_delivered_once() {
    let (url, mut conns) = fake_server().await;
    let (client, mut ws) = tokio::join!(client(&url), accept(&mut conns, "1.1"));
    let (sub, _) = tokio::join!(client.subscribe("chat"), async {
        let (_, data) = expect(&mut ws, "sockudo:subscribe").await;
        assert_eq!(data["channel"], "chat");
        send(&mut ws, subscribed("chat", "s1", 0)).await;
    });
    let mut sub = sub.unwrap();
    let frame = message("chat", "s1", 1);
    send(&mut ws, frame.clone()).await;
    send(&mut ws, frame).await; // the same message_id again
    send(&mut ws, message("chat", "s1", 2)).await;
    assert_eq!(serial_of(&next(&mut sub).await), Some(1));
    assert_eq!(serial_of(&next(&mut sub).await), Some(2));
    let stats = client.stats();
    assert_eq!(stats.duplicates_dropped, 1);
    assert_eq!(stats.duplicates_by_channel.get("chat"), Some(&1));
    assert_eq!(stats.messages_delivered, 2);
}

/// First connection: subscribe at s1/5, deliver serial 6, then the server closes with 4200.
async fn first_life(client: &Client, conns: &mut mpsc::Receiver<Ws>) -> Subscription {
    let mut ws = accept(conns, "1.1").await;
    let (sub, _) = tokio::join!(client.subscribe("chat"), async {
        expect(&mut ws, "sockudo:subscribe").await;
        send(&mut ws, subscribed("chat", "s1", 5)).await;
    });
    let mut sub = sub.unwrap();
    send(&mut ws, message("chat", "s1", 6)).await;
    assert_eq!(serial_of(&next(&mut sub).await), Some(6));
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4200),
        reason: "draining".into(),
    }))
    .await
    .unwrap();
    sub
}

async fn client_in_background(url: &str) -> Client {
    let opts = ClientOptions::new("app-key")
        .url(url)
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(ConstantBackoff(Duration::from_millis(50)))
        .retry_on_initial_connect(true);
    Client::connect(opts).await.unwrap()
}

#[tokio::test]
async fn resume_success_replays_then_goes_live() {
    let (url, mut conns) = fake_server().await;
    let client = client_in_background(&url).await;
    let mut sub = first_life(&client, &mut conns).await;

    let mut ws = accept(&mut conns, "2.2").await;
    expect(&mut ws, "sockudo:subscribe").await;
    let (_, resume) = expect(&mut ws, "sockudo:resume").await;
    assert_eq!(
        resume["channel_positions"]["chat"],
        json!({"stream_id": "s1", "serial": 6, "last_message_id": "s1:6"})
    );
    send(&mut ws, subscribed("chat", "s1", 8)).await;
    send(&mut ws, message("chat", "s1", 7)).await; // replayed
    send(&mut ws, message("chat", "s1", 6)).await; // already seen before the drop
    send(&mut ws, message("chat", "s1", 8)).await; // replayed
    send(&mut ws, message("chat", "s1", 9)).await; // live, before the verdict
    let verdict = json!({"recovered": [{"channel": "chat", "source": "hot", "replayed": 2,
                         "position": {"stream_id": "s1", "serial": 8, "last_message_id": "s1:8"}}], "failed": []});
    send(
        &mut ws,
        json!({"event": "sockudo:resume_success", "data": verdict.to_string()}),
    )
    .await;
    send(&mut ws, message("chat", "s1", 10)).await;

    assert_eq!(
        next(&mut sub).await,
        ChannelEvent::Recovered {
            source: sockudo_client::RecoverySource::Hot,
            replayed: 2
        }
    );
    let serials: Vec<Option<u64>> = [
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    ]
    .iter()
    .map(serial_of)
    .collect();
    assert_eq!(serials, vec![Some(7), Some(8), Some(9), Some(10)]);
    let stats = client.stats();
    assert_eq!(
        (
            stats.resumes_succeeded,
            stats.resumes_failed,
            stats.reconnects
        ),
        (1, 0, 1)
    );
}

#[tokio::test]
async fn resume_failure_comes_before_any_live_event_and_history_backfills() {
    let (url, mut conns) = fake_server().await;
    let client = client_in_background(&url).await;
    let mut events = client.events();
    let mut sub = first_life(&client, &mut conns).await;

    let mut ws = accept(&mut conns, "2.2").await;
    expect(&mut ws, "sockudo:subscribe").await;
    expect(&mut ws, "sockudo:resume").await;
    send(&mut ws, subscribed("chat", "s2", 100)).await;
    send(&mut ws, message("chat", "s2", 101)).await; // live, must wait behind the verdict
    let failed = json!({"channel": "chat", "code": "stream_reset", "reason": "stream restarted",
                        "expected_stream_id": "s1", "current_stream_id": "s2",
                        "oldest_available_serial": 1, "newest_available_serial": 101});
    send(
        &mut ws,
        json!({"event": "sockudo:resume_failed", "channel": "chat", "data": failed.to_string()}),
    )
    .await;
    send(&mut ws, message("chat", "s2", 102)).await;

    match next(&mut sub).await {
        ChannelEvent::RecoveryFailed(f) => {
            assert_eq!(
                (f.channel.as_str(), f.code.as_str()),
                ("chat", "stream_reset")
            );
            assert_eq!(
                (
                    f.expected_stream_id.as_deref(),
                    f.current_stream_id.as_deref()
                ),
                (Some("s1"), Some("s2"))
            );
            assert_eq!(f.newest_available_serial, Some(101));
        }
        other => panic!("RecoveryFailed must come first, got {other:?}"),
    }
    assert_eq!(serial_of(&next(&mut sub).await), Some(101));
    assert_eq!(serial_of(&next(&mut sub).await), Some(102));
    assert_eq!(client.stats().resumes_failed, 1);
    let mut saw = false;
    while let Ok(e) = events.try_recv() {
        saw |= matches!(e, sockudo_client::ClientEvent::RecoveryFailed(_));
    }
    assert!(saw, "the failure is also a connection event");

    // Backfill up to the attach point.
    let (page, _) = tokio::join!(
        client.history("chat", HistoryQuery::until_attach().limit(10)),
        async {
            let (_, req) = expect(&mut ws, "sockudo:channel_history").await;
            assert_eq!(
                req,
                json!({"channel": "chat", "limit": 10, "until_attach": true})
            );
            let page = json!({"items": [message("chat", "s2", 99)], "has_more": false, "next_cursor": null});
            send(&mut ws, json!({"event": "sockudo:channel_history", "channel": "chat", "data": page.to_string()})).await;
        }
    );
    let page = page.unwrap();
    assert_eq!((page.items.len(), page.has_more), (1, false));

    // The next resume starts from the new stream's position.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4200),
        reason: "again".into(),
    }))
    .await
    .unwrap();
    let mut ws = accept(&mut conns, "3.3").await;
    let (_, resume) = expect(&mut ws, "sockudo:resume").await;
    assert_eq!(resume["channel_positions"]["chat"]["stream_id"], "s2");
    assert_eq!(resume["channel_positions"]["chat"]["serial"], 102);
}

#[tokio::test]
async fn no_verdict_fails_closed_on_timeout() {
    let (url, mut conns) = fake_server().await;
    let opts = ClientOptions::new("app-key")
        .url(&url)
        .unwrap()
        .protocol(Protocol::V2)
        .backoff(ConstantBackoff(Duration::from_millis(50)))
        .resume_timeout(Duration::from_millis(300))
        .retry_on_initial_connect(true);
    let client = Client::connect(opts).await.unwrap();
    let mut sub = first_life(&client, &mut conns).await;
    let mut ws = accept(&mut conns, "2.2").await;
    expect(&mut ws, "sockudo:resume").await;
    send(&mut ws, subscribed("chat", "s1", 7)).await;
    send(&mut ws, message("chat", "s1", 7)).await; // never confirmed by the server
    match next(&mut sub).await {
        ChannelEvent::RecoveryFailed(f) => assert_eq!(f.code, "resume_timeout"),
        other => panic!("expected a client-side RecoveryFailed, got {other:?}"),
    }
    assert_eq!(serial_of(&next(&mut sub).await), Some(7));
}

#[tokio::test]
async fn v1_protocol_has_no_history() {
    let (url, mut conns) = fake_server().await;
    let opts = ClientOptions::new("app-key").url(&url).unwrap();
    let (client, _ws) = tokio::join!(Client::connect(opts), accept(&mut conns, "1.1"));
    let client = client.unwrap();
    let err = client
        .history("chat", HistoryQuery::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), sockudo_client::ErrorKind::Unsupported);
}

#[tokio::test]
async fn wss_to_a_plain_server_is_a_connection_error() {
    let (url, _conns) = fake_server().await;
    let opts = ClientOptions::new("app-key")
        .url(&url.replacen("ws://", "wss://", 1))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    let err = Client::connect(opts).await.unwrap_err();
    assert_eq!(err.kind(), sockudo_client::ErrorKind::Connection, "{err}");
}
