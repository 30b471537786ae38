//! Reconnect behaviour against a real node: restart with resubscription, and the close-code
//! policy (4001 never retried, 4200 reconnects at once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sockudo_client::{
    ChannelEvent, Client, ClientEvent, ClientOptions, ConnectionState, ErrorKind,
};
use sockudo_testkit::TestNode;

#[tokio::test(flavor = "multi_thread")]
async fn resubscribes_every_channel_after_the_node_restarts() {
    let mut node = node().await;
    let client = connect(&node, "u1").await;
    let mut public = client.subscribe("feed").await.unwrap();
    let mut private = client.subscribe("private-feed").await.unwrap();
    let mut presence = client.subscribe("presence-feed").await.unwrap();
    let first_socket = client.socket_id();

    node.restart().await.unwrap();
    for sub in [&mut public, &mut private, &mut presence] {
        assert_eq!(
            next_event(sub).await,
            ChannelEvent::Resubscribed,
            "{}",
            sub.channel()
        );
    }
    assert!(client.state().is_connected());
    assert_ne!(client.socket_id(), first_socket);
    assert_eq!(client.stats().reconnects, 1);
    assert_eq!(presence.me().map(|m| m.user_id).as_deref(), Some("u1"));

    publish(&node, "feed", "after", json!(1)).await;
    publish(&node, "private-feed", "after", json!(2)).await;
    assert_eq!(next_message(&mut public).await.event, "after");
    assert_eq!(next_message(&mut private).await.event, "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_app_key_fails_without_retry() {
    let node = node().await;
    // Waiting connect: the error carries the code.
    let opts = ClientOptions::new("no-such-key")
        .url(&format!("ws://{}", node.addr()))
        .unwrap();
    let err = Client::connect(opts).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Rejected, Some(4001)),
        "{err}"
    );

    // Background connect: the state ends Failed and stays there.
    let opts = ClientOptions::new("no-such-key")
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .retry_on_initial_connect(true)
        .backoff(sockudo_client::ConstantBackoff(Duration::from_millis(10)));
    let client = Client::connect(opts).await.unwrap();
    let mut events = client.events();
    let state = client
        .wait_for_state(WAIT, ConnectionState::is_terminal)
        .await
        .unwrap();
    assert!(
        matches!(
            state,
            ConnectionState::Failed {
                code: Some(4001),
                ..
            }
        ),
        "{state:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut connecting = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, ClientEvent::State(ConnectionState::Connecting { attempt })  if attempt > 0)
        {
            connecting += 1;
        }
    }
    assert_eq!(connecting, 0, "no reconnect attempt after 4001");
    assert_eq!(
        client.subscribe("x").await.unwrap_err().kind(),
        ErrorKind::Rejected
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_close_4200_reconnects_immediately() {
    let mut node = node().await;
    let port = node.addr().port();
    let settings = node.settings().clone();
    // A long backoff: only the immediate first retry of 4200 can beat it.
    let opts =
        options(&node, "u").backoff(sockudo_client::ConstantBackoff(Duration::from_millis(300)));
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe("news").await.unwrap();
    let mut events = client.events();

    node.drain().await.unwrap();
    // The first disconnect is the drain's 4200, retried without delay (the watch keeps only
    // the latest state, so read the event history).
    let disconnected = loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ClientEvent::State(s @ ConnectionState::Disconnected { .. }) => break s,
            _ => continue,
        }
    };
    assert!(
        matches!(disconnected, ConnectionState::Disconnected { code: Some(4200), retry_in, .. } if retry_in == Duration::ZERO),
        "{disconnected:?}"
    );
    let node = TestNode::start_on(settings, port).await.unwrap();
    client
        .wait_for_state(WAIT, ConnectionState::is_connected)
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await, ChannelEvent::Resubscribed);
    publish(&node, "news", "back", json!(1)).await;
    assert_eq!(next_message(&mut sub).await.event, "back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_is_detected_as_dead() {
    // A TCP server that accepts the WebSocket, says connection_established with a 1 s
    // activity timeout, then never answers anything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use futures_util::SinkExt;
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                let hello = json!({"event":"pusher:connection_established","data":json!({"socket_id":"1.1","activity_timeout":1}).to_string()});
                let _ = ws
                    .send(tokio_tungstenite::tungstenite::Message::text(
                        hello.to_string(),
                    ))
                    .await;
                held.push(ws); // never read: no pong, no close
            }
        }
    });
    let opts = ClientOptions::new("k")
        .url(&format!("ws://{addr}"))
        .unwrap()
        .pong_timeout(Duration::from_millis(300));
    let client = Client::connect(opts).await.unwrap();
    let state = client
        .wait_for_state(WAIT, |s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap();
    assert!(
        matches!(&state, ConnectionState::Disconnected { reason, retry_in, .. } if reason.contains("ping") && retry_in.is_zero()),
        "{state:?}"
    );
    client.close().await.unwrap();
}
