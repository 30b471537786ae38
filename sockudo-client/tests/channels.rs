//! Every channel type, client events, signin and user events against a real in-process node
//! (protocol 7).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use serde_json::json;
use sockudo_client::{
    authorizer_fn, ChannelAuth, ChannelEvent, Client, ClientOptions, ErrorKind, HttpAuthorizer,
};
use sockudo_core::app::App;
use sockudo_core::auth::sign_channel;
use sockudo_testkit::{APP_KEY, APP_SECRET};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[tokio::test(flavor = "multi_thread")]
async fn public_channel_receives_published_events() {
    let node = node().await;
    let client = connect(&node, "1").await;
    assert!(client.state().is_connected());
    assert!(client.socket_id().is_some());
    let mut sub = client.subscribe("news").await.unwrap();
    publish(&node, "news", "headline", json!({"title": "hello"})).await;
    let m = next_message(&mut sub).await;
    assert_eq!((m.channel.as_str(), m.event.as_str()), ("news", "headline"));
    assert_eq!(m.json::<serde_json::Value>().unwrap()["title"], "hello");
    assert_eq!(client.stats().messages_delivered, 1);

    // A second stream of the same channel sees the same events; unsubscribe ends both.
    let mut again = client.subscribe("news").await.unwrap();
    publish(&node, "news", "headline", json!({"title": "two"})).await;
    assert_eq!(
        next_message(&mut sub)
            .await
            .json::<serde_json::Value>()
            .unwrap()["title"],
        "two"
    );
    assert_eq!(
        next_message(&mut again)
            .await
            .json::<serde_json::Value>()
            .unwrap()["title"],
        "two"
    );
    client.unsubscribe("news").await.unwrap();
    assert!(tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .is_none());
    assert!(tokio::time::timeout(WAIT, again.recv())
        .await
        .unwrap()
        .is_none());

    assert_eq!(
        client.subscribe("bad channel").await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn private_channel_with_callback_authorizer() {
    let node = node().await;
    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(authorizer_fn(|req| async move {
            Ok(ChannelAuth::new(sign_channel(
                APP_KEY,
                APP_SECRET,
                &req.socket_id,
                &req.channel_name,
                None,
            )))
        }));
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe("private-orders").await.unwrap();
    publish(&node, "private-orders", "created", json!({"id": 7})).await;
    assert_eq!(
        next_message(&mut sub)
            .await
            .json::<serde_json::Value>()
            .unwrap()["id"],
        7
    );

    // A wrong signature is the server's subscription_error, surfaced as an auth error.
    let bad = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(authorizer_fn(|_req| async move {
            Ok(ChannelAuth::new(format!("{APP_KEY}:{}", "0".repeat(64))))
        }));
    let bad = Client::connect(bad).await.unwrap();
    let err = bad.subscribe("private-orders").await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Auth, Some(401)),
        "{err}"
    );
    // No authorizer at all.
    let none = Client::connect(
        ClientOptions::new(APP_KEY)
            .url(&format!("ws://{}", node.addr()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        none.subscribe("private-orders").await.unwrap_err().kind(),
        ErrorKind::Auth
    );
}

/// Signs like an app backend, reading the pusher-js form.
struct FormSigner;

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            v.replace("%2D", "-")
                .replace("%2E", ".")
                .replace("%3B", ";")
        })
    })
}

impl Respond for FormSigner {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        match (
            form_value(&body, "socket_id"),
            form_value(&body, "channel_name"),
        ) {
            (Some(socket_id), Some(channel)) => ResponseTemplate::new(200).set_body_json(
                json!({ "auth": sign_channel(APP_KEY, APP_SECRET, &socket_id, &channel, None) }),
            ),
            _ => ResponseTemplate::new(400).set_body_string(format!("bad form: {body}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_channel_with_http_authorizer() {
    let node = node().await;
    let backend = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/pusher/auth"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("authorization", "Bearer t0ken"))
        .respond_with(FormSigner)
        .expect(1)
        .mount(&backend)
        .await;
    Mock::given(method("POST"))
        .and(path("/forbidden"))
        .respond_with(ResponseTemplate::new(403).set_body_string("no"))
        .mount(&backend)
        .await;

    let authorizer = HttpAuthorizer::new(format!("{}/pusher/auth", backend.uri()))
        .header("authorization", "Bearer t0ken");
    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(authorizer);
    let client = Client::connect(opts).await.unwrap();
    let mut sub = client.subscribe("private-http").await.unwrap();
    publish(&node, "private-http", "e", json!("plain")).await;
    assert_eq!(next_message(&mut sub).await.data_str(), Some("plain"));
    let requests = backend.received_requests().await.unwrap_or_default();
    let body = String::from_utf8_lossy(&requests[0].body).into_owned();
    assert_eq!(
        form_value(&body, "channel_name").as_deref(),
        Some("private-http")
    );
    assert_eq!(form_value(&body, "socket_id"), client.socket_id());

    let refused = HttpAuthorizer::new(format!("{}/forbidden", backend.uri()));
    let opts = ClientOptions::new(APP_KEY)
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(refused);
    let client = Client::connect(opts).await.unwrap();
    let err = client.subscribe("private-http").await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Auth, Some(403)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_members_me_and_changes() {
    let node = node().await;
    let alice = connect(&node, "alice").await;
    let mut a = alice.subscribe("presence-room").await.unwrap();
    assert!(a.is_presence());
    assert_eq!(a.member_count(), 1);
    let me = a.me().unwrap();
    assert_eq!(me.user_id, "alice");
    assert_eq!(me.info["name"], "user alice");

    let bob = connect(&node, "bob").await;
    let b = bob.subscribe("presence-room").await.unwrap();
    let mut ids: Vec<String> = b.members().into_iter().map(|m| m.user_id).collect();
    ids.sort();
    assert_eq!(ids, vec!["alice", "bob"]);
    assert_eq!(b.me().map(|m| m.user_id).as_deref(), Some("bob"));

    match next_event(&mut a).await {
        ChannelEvent::MemberAdded(m) => assert_eq!(
            (m.user_id.as_str(), &m.info["name"]),
            ("bob", &json!("user bob"))
        ),
        other => panic!("expected member_added, got {other:?}"),
    }
    assert_eq!(a.member_count(), 2);
    bob.close().await.unwrap();
    match next_event(&mut a).await {
        ChannelEvent::MemberRemoved(m) => assert_eq!(m.user_id, "bob"),
        other => panic!("expected member_removed, got {other:?}"),
    }
    assert_eq!(a.member_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_channel_decrypts_with_the_shared_secret() {
    let node = node().await;
    let client = connect(&node, "1").await;
    let channel = "private-encrypted-vault";
    let mut sub = client.subscribe(channel).await.unwrap();

    // Publish as a server SDK does: secretbox under sha256(channel + master key).
    let cipher = XSalsa20Poly1305::new(&shared_secret(channel).into());
    let nonce: [u8; 24] = rand::random();
    let ciphertext = cipher
        .encrypt(
            crypto_secretbox::Nonce::from_slice(&nonce),
            br#"{"pin":"1234"}"#.as_slice(),
        )
        .unwrap();
    let payload =
        json!({ "ciphertext": STANDARD.encode(ciphertext), "nonce": STANDARD.encode(nonce) });
    publish(&node, channel, "secret", json!(payload.to_string())).await;
    let m = next_message(&mut sub).await;
    assert_eq!(m.data, json!({"pin": "1234"}));

    // Sealed under another key: reported, not delivered.
    let other = XSalsa20Poly1305::new(&[9u8; 32].into());
    let ciphertext = other
        .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), b"x".as_slice())
        .unwrap();
    let payload =
        json!({ "ciphertext": STANDARD.encode(ciphertext), "nonce": STANDARD.encode(nonce) });
    publish(&node, channel, "secret", json!(payload.to_string())).await;
    match next_event(&mut sub).await {
        ChannelEvent::DecryptionFailed { event, error } => assert_eq!(
            (event.as_str(), error.kind()),
            ("secret", ErrorKind::Decryption)
        ),
        other => panic!("expected a decryption failure, got {other:?}"),
    }
    assert_eq!(client.stats().decryption_failures, 1);
    // Client events are refused locally on encrypted channels.
    assert_eq!(
        client
            .trigger(channel, "client-x", json!({}))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_channel_reports_a_miss_then_replays_the_last_event() {
    let node = node().await;
    let client = connect(&node, "1").await;
    let mut first = client.subscribe("cache-prices").await.unwrap();
    assert_eq!(next_event(&mut first).await, ChannelEvent::CacheMiss);
    publish(&node, "cache-prices", "tick", json!({"p": 1})).await;
    assert_eq!(next_message(&mut first).await.event, "tick");

    let other = connect(&node, "2").await;
    let mut second = other.subscribe("cache-prices").await.unwrap();
    let cached = next_message(&mut second).await;
    assert_eq!(
        (
            cached.event.as_str(),
            cached.json::<serde_json::Value>().unwrap()["p"].as_i64()
        ),
        ("tick", Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_events_are_delivered_and_refusals_are_errors() {
    let mut disabled = App::new("app-2", "key-2", "secret-2");
    disabled.enable_client_messages = false;
    let mut limited = App::new("app-3", "key-3", "secret-3");
    limited.enable_client_messages = true;
    limited.max_client_events_per_second = 2;
    let node = node_with(sockudo_testkit::test_settings(vec![
        sockudo_testkit::test_app(),
        disabled,
        limited,
    ]))
    .await;

    let alice = connect(&node, "alice").await;
    let bob = connect(&node, "bob").await;
    let mut a = alice.subscribe("presence-chat").await.unwrap();
    let mut b = bob.subscribe("presence-chat").await.unwrap();
    let _ = next_event(&mut a).await; // bob joined
    alice
        .trigger("presence-chat", "client-typing", json!({"on": true}))
        .await
        .unwrap();
    let m = next_message(&mut b).await;
    assert_eq!(
        (m.event.as_str(), m.user_id.as_deref(), &m.data),
        ("client-typing", Some("alice"), &json!({"on": true}))
    );
    assert_quiet(&mut a, Duration::from_millis(200)).await; // not echoed

    // Local checks.
    assert_eq!(
        alice
            .trigger("presence-chat", "typing", json!(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        alice
            .trigger("public", "client-x", json!(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        alice
            .trigger("private-elsewhere", "client-x", json!(1))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotSubscribed
    );

    // The server refuses: client events disabled for the app.
    let signer = |key: &'static str, secret: &'static str| {
        authorizer_fn(move |req| async move {
            Ok(ChannelAuth::new(sign_channel(
                key,
                secret,
                &req.socket_id,
                &req.channel_name,
                None,
            )))
        })
    };
    let opts = ClientOptions::new("key-2")
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(signer("key-2", "secret-2"));
    let off = Client::connect(opts).await.unwrap();
    let _s = off.subscribe("private-x").await.unwrap();
    let err = off
        .trigger("private-x", "client-x", json!(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
    assert!(err.message().contains("not enabled"), "{err}");

    // The server refuses: over the rate limit (4301).
    let opts = ClientOptions::new("key-3")
        .url(&format!("ws://{}", node.addr()))
        .unwrap()
        .authorizer(signer("key-3", "secret-3"));
    let fast = Client::connect(opts).await.unwrap();
    let _s = fast.subscribe("private-y").await.unwrap();
    let mut results = Vec::new();
    for i in 0..4 {
        results.push(
            fast.trigger("private-y", "client-n", json!(i))
                .await
                .map_err(|e| (e.kind(), e.code())),
        );
    }
    assert_eq!(results[..2], [Ok(()), Ok(())]);
    assert_eq!(results[2], Err((ErrorKind::RateLimited, Some(4301))));
    assert!(
        fast.state().is_connected(),
        "4301 does not close the connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signin_and_user_events() {
    let node = node().await;
    let client = connect(&node, "42").await;
    let mut events = client.user_events();
    let user = client.signin().await.unwrap();
    assert_eq!(user.user_id, "42");
    // Signing in again is a no-op answer.
    assert_eq!(client.signin().await.unwrap().user_id, "42");

    // The user channel subscription follows the signin; retry the publish until it lands.
    let mut got = None;
    for _ in 0..50 {
        publish(&node, "#server-to-user-42", "notice", json!({"n": 1})).await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("user event");
    assert_eq!(
        (m.channel.as_str(), m.event.as_str()),
        ("#server-to-user-42", "notice")
    );
    assert_eq!(
        client
            .subscribe("#server-to-user-42")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
}
