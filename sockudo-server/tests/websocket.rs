//! The WebSocket endpoint over real sockets (docs/protocol.md §1–§4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sockudo_core::auth::sign_user;
use tokio_tungstenite::tungstenite::Message;

fn is_socket_id(s: &str) -> bool {
    let mut parts = s.split('.');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    num(parts.next()) && num(parts.next()) && parts.next().is_none()
}

#[tokio::test]
async fn connection_established_shape() {
    let node = TestNode::default_app().await;
    let mut c = node.connect(&TestNode::app_path(APP_KEY)).await;
    let ev = c
        .next_frame(WAIT)
        .await
        .expect("open")
        .expect("first frame");
    assert_eq!(
        ev["event"], "pusher:connection_established",
        "first frame: {ev}"
    );
    let sid = ev["data"]["socket_id"].as_str().expect("socket_id string");
    assert!(is_socket_id(sid), "socket_id {sid:?}");
    assert_eq!(ev["data"]["activity_timeout"], 120);
    let mut other = node.client(APP_KEY).await;
    assert_ne!(other.socket_id, sid, "socket ids are unique");
    other.assert_alive().await;
}

#[tokio::test]
async fn connection_refusals_close_with_their_codes() {
    let mut disabled = app("2", "disabled-key", "s2");
    disabled.enabled = false;
    let mut quota = app("3", "quota-key", "s3");
    quota.max_connections = 1;
    let node = TestNode::start(settings(vec![test_app(), disabled, quota])).await;

    let cases: [(&str, String, u16); 6] = [
        ("unknown key", TestNode::app_path("nope"), 4001),
        ("disabled app", TestNode::app_path("disabled-key"), 4003),
        ("unknown path", "/foo/bar?protocol=7".into(), 4005),
        ("protocol=5", format!("/app/{APP_KEY}?protocol=5"), 4007),
        (
            "missing protocol",
            format!("/app/{APP_KEY}?client=js"),
            4008,
        ),
        ("empty protocol", format!("/app/{APP_KEY}?protocol="), 4008),
    ];
    for (name, path, code) in cases {
        let mut c = node.connect(&path).await;
        let err = c
            .try_recv_event("pusher:error", WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(err["data"]["code"], code, "{name}: {err}");
        assert_eq!(c.expect_close(WAIT).await, Some(code), "{name}");
    }

    let mut first = node.client("quota-key").await;
    let mut second = node.connect(&TestNode::app_path("quota-key")).await;
    assert_eq!(second.expect_close(WAIT).await, Some(4004), "over quota");
    first.assert_alive().await;
    // The refused connection did not consume the slot; closing the first frees it.
    first.close().await;
    let mut third = node.connect(&TestNode::app_path("quota-key")).await;
    let mut ok = false;
    for _ in 0..20 {
        match third
            .try_recv_event("pusher:connection_established", WAIT)
            .await
        {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                third = node.connect(&TestNode::app_path("quota-key")).await;
            }
        }
    }
    assert!(ok, "slot freed after the first connection closed");
}

#[tokio::test]
async fn bad_signin_closes_with_4009() {
    let node = TestNode::default_app().await;
    let mut c = node.client(APP_KEY).await;
    let user_data = json!({"id": "1"}).to_string();
    let auth = sign_user(APP_KEY, "wrong-secret", &c.socket_id, &user_data);
    c.send_json(&json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}))
        .await;
    let err = c.recv_event("pusher:error", WAIT).await;
    assert_eq!(err["data"]["code"], 4009);
    assert_eq!(c.expect_close(WAIT).await, Some(4009));
}

#[tokio::test]
async fn ping_pong_and_missing_pong_closes_with_4201() {
    let mut s = settings(vec![test_app()]);
    s.activity_timeout = 1;
    s.pong_timeout = 1;
    let node = TestNode::start(s).await;

    let mut silent = node.connect(&TestNode::app_path(APP_KEY)).await;
    let hello = silent.established().await;
    assert_eq!(
        hello["data"]["activity_timeout"], 1,
        "the configured timeout is announced"
    );
    let mut polite = node.client(APP_KEY).await;
    polite.assert_alive().await;

    let answer = tokio::spawn(async move {
        // Answer every server ping for a while: the connection must stay.
        for _ in 0..3 {
            polite
                .recv_event("pusher:ping", Duration::from_secs(3))
                .await;
            polite
                .send_json(&json!({"event": "pusher:pong", "data": {}}))
                .await;
        }
        polite.assert_alive().await;
    });

    let ping = silent
        .recv_event("pusher:ping", Duration::from_secs(3))
        .await;
    assert_eq!(ping["data"], json!({}));
    assert_eq!(
        silent.expect_close(Duration::from_secs(4)).await,
        Some(4201)
    );
    answer.await.expect("polite client kept alive");
}

#[tokio::test]
async fn websocket_ping_frames_get_pong_frames() {
    use futures_util::{SinkExt, StreamExt};
    let node = TestNode::default_app().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws_url(&TestNode::app_path(APP_KEY)))
        .await
        .expect("connect");
    ws.send(Message::Ping(b"hi"[..].into()))
        .await
        .expect("ping");
    let got = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Pong(p) = m {
                return Some(p);
            }
        }
        None
    })
    .await
    .expect("pong in time");
    assert_eq!(got.as_deref(), Some(&b"hi"[..]));
}

#[tokio::test]
async fn drain_closes_with_4200_and_refuses_new_connections() {
    let node = TestNode::default_app().await;
    let mut a = node.client(APP_KEY).await;
    let mut b = node.client(APP_KEY).await;
    b.subscribe("news").await;
    let n = std::sync::Arc::clone(&node.node);
    let drained = tokio::spawn(async move { sockudo_server::drain(&n).await });
    assert_eq!(a.expect_close(Duration::from_secs(3)).await, Some(4200));
    assert_eq!(b.expect_close(Duration::from_secs(3)).await, Some(4200));
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drain finishes")
        .expect("drain task");
    assert!(
        TestClient::try_connect(&node.ws_url(&TestNode::app_path(APP_KEY)))
            .await
            .is_err(),
        "draining node refuses upgrades"
    );
    let api = node.api(&test_app());
    let (status, _) = api.raw("GET", "/ready", Vec::new()).await;
    assert_eq!(status, 503, "unready while draining");
    let (status, _) = api.raw("GET", "/health", Vec::new()).await;
    assert_eq!(status, 200, "alive while draining");
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4100_and_publisher_never_blocks() {
    let mut a = test_app();
    a.max_event_payload_bytes = 256 * 1024;
    let mut s = settings(vec![a.clone()]);
    s.outbound_queue_frames = 8;
    s.outbound_queue_bytes = 256 * 1024;
    let node = TestNode::start(s).await;
    let api = node.api(&a);

    let mut slow = TestClient::connect_small_rcvbuf(node.addr, &TestNode::app_path(APP_KEY)).await;
    slow.established().await;
    slow.subscribe("firehose").await;
    let mut healthy = node.client(APP_KEY).await;
    healthy.subscribe("other").await;

    let big = "x".repeat(100 * 1024);
    let batch: Vec<Value> = (0..8)
        .map(|_| json!({"name": "big", "channel": "firehose", "data": big}))
        .collect();
    let body = json!({ "batch": batch });
    let mut batches = 0;
    loop {
        let (status, resp) = api.post("/batch_events", &body).await;
        assert_eq!(status, 200, "{resp}");
        batches += 1;
        let (_, info) = api.get("/channels/firehose", &[]).await;
        if info["occupied"] == false {
            break;
        }
        assert!(
            batches < 400,
            "slow consumer never dropped after {batches} batches"
        );
    }
    assert_eq!(slow.expect_close(Duration::from_secs(10)).await, Some(4100));
    // Everyone else is unaffected.
    api.trigger("other", "hello", "still here").await;
    let ev = healthy.recv_event("hello", WAIT).await;
    assert_eq!(ev["data"], "still here");
}

#[tokio::test]
async fn public_private_encrypted_channels() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c = node.client(APP_KEY).await;

    let ok = c.subscribe("news").await;
    assert_eq!(ok["data"], json!({}));
    c.subscribe_private(&a, "private-room").await;
    c.subscribe_private(&a, "private-encrypted-room").await;

    api.trigger("news", "headline", "{\"a\":1}").await;
    let ev = c.recv_event("headline", WAIT).await;
    assert_eq!(ev["channel"], "news");
    assert_eq!(
        ev["data"], "{\"a\":1}",
        "app event data passes through as the string published"
    );

    api.trigger("private-room", "secret", "s").await;
    assert_eq!(
        c.recv_event("secret", WAIT).await["channel"],
        "private-room"
    );

    let payload = json!({"ciphertext": "Y2lwaGVy", "nonce": "bm9uY2U="}).to_string();
    api.trigger("private-encrypted-room", "enc", &payload).await;
    let ev = c.recv_event("enc", WAIT).await;
    assert_eq!(
        ev["data"], payload,
        "encrypted payloads are relayed untouched"
    );

    // A bad signature is refused with 401.
    c.subscribe_raw(
        json!({"channel": "private-x", "auth": format!("{APP_KEY}:{}", "0".repeat(64))}),
    )
    .await;
    let err = c.recv_event("pusher:subscription_error", WAIT).await;
    assert_eq!(err["channel"], "private-x");
    assert_eq!(err["data"]["type"], "AuthError");
    assert_eq!(err["data"]["status"], 401);
    c.assert_alive().await;
}

#[tokio::test]
async fn cache_channels_replay_last_event_or_miss() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);

    let mut c = node.client(APP_KEY).await;
    c.subscribe("cache-empty").await;
    let miss = c.recv_event("pusher:cache_miss", WAIT).await;
    assert_eq!(miss["channel"], "cache-empty");

    api.trigger("cache-news", "first", "1").await;
    api.trigger("cache-news", "second", "2").await;
    let mut late = node.client(APP_KEY).await;
    late.subscribe_raw(json!({"channel": "cache-news"})).await;
    let first = late.next_frame(WAIT).await.expect("open").expect("frame");
    assert_eq!(first["event"], "pusher_internal:subscription_succeeded");
    let cached = late.next_frame(WAIT).await.expect("open").expect("frame");
    assert_eq!(
        cached["event"], "second",
        "last event replayed right after success: {cached}"
    );
    assert_eq!(cached["data"], "2");
    late.expect_no_event("pusher:cache_miss", QUIET).await;

    late.subscribe_private(&a, "private-cache-x").await;
    late.recv_event("pusher:cache_miss", WAIT).await;

    let (status, info) = api.get("/channels/cache-news", &[("info", "cache")]).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["cache"]["data"], "2", "{info}");
}

#[tokio::test]
async fn presence_members_added_once_per_user_and_removed_with_last_connection() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let ch = "presence-room";

    let mut observer = node.client(APP_KEY).await;
    let ok = observer
        .subscribe_presence(&a, ch, "obs", json!({"name": "Observer"}))
        .await;
    assert_eq!(ok["data"]["presence"]["count"], 1);
    assert_eq!(ok["data"]["presence"]["ids"], json!(["obs"]));
    assert_eq!(
        ok["data"]["presence"]["hash"]["obs"],
        json!({"name": "Observer"})
    );

    let mut u1 = node.client(APP_KEY).await;
    let ok = u1
        .subscribe_presence(&a, ch, "u", json!({"name": "U"}))
        .await;
    assert_eq!(ok["data"]["presence"]["count"], 2);
    let added = observer
        .recv_event("pusher_internal:member_added", WAIT)
        .await;
    assert_eq!(added["channel"], ch);
    assert_eq!(
        added["data"],
        json!({"user_id": "u", "user_info": {"name": "U"}})
    );
    u1.expect_no_event("pusher_internal:member_added", QUIET)
        .await; // not to itself

    let mut u2 = node.client(APP_KEY).await;
    let ok = u2
        .subscribe_presence(&a, ch, "u", json!({"name": "U"}))
        .await;
    assert_eq!(ok["data"]["presence"]["count"], 2, "same user counts once");
    observer
        .expect_no_event("pusher_internal:member_added", QUIET)
        .await;

    let (_, users) = api.get(&format!("/channels/{ch}/users"), &[]).await;
    let mut ids: Vec<&str> = users["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["obs", "u"]);

    u1.close().await;
    observer
        .expect_no_event("pusher_internal:member_removed", QUIET)
        .await;
    u2.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": ch}}))
        .await;
    let removed = observer
        .recv_event("pusher_internal:member_removed", WAIT)
        .await;
    assert_eq!(removed["data"], json!({"user_id": "u"}));
    let (_, info) = api
        .get(
            &format!("/channels/{ch}"),
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(info["user_count"], 1, "{info}");
    assert_eq!(info["subscription_count"], 1, "{info}");
}

#[tokio::test]
async fn presence_member_cap_and_user_info_limit() {
    let mut a = test_app();
    a.max_presence_members = 2;
    a.max_presence_user_info_bytes = 64;
    let node = TestNode::start(settings(vec![a.clone()])).await;
    let ch = "presence-small";

    let mut c1 = node.client(APP_KEY).await;
    c1.subscribe_presence(&a, ch, "1", json!({})).await;
    let mut c2 = node.client(APP_KEY).await;
    c2.subscribe_presence(&a, ch, "2", json!({})).await;
    c1.recv_event("pusher_internal:member_added", WAIT).await;
    // A second connection of an existing member is not a new member.
    let mut c2b = node.client(APP_KEY).await;
    c2b.subscribe_presence(&a, ch, "2", json!({})).await;

    let mut c3 = node.client(APP_KEY).await;
    c3.send_presence_subscribe(&a, ch, "3", json!({})).await;
    let err = c3.recv_event("pusher:subscription_error", WAIT).await;
    assert_eq!(err["channel"], ch);
    assert!(
        err["data"]["status"]
            .as_u64()
            .is_some_and(|s| (400..500).contains(&s)),
        "{err}"
    );
    c1.expect_no_event("pusher_internal:member_added", QUIET)
        .await;

    let mut big = node.client(APP_KEY).await;
    big.send_presence_subscribe(&a, "presence-other", "9", json!({"bio": "x".repeat(100)}))
        .await;
    let err = big.recv_event("pusher:subscription_error", WAIT).await;
    assert_eq!(err["data"]["status"], 413, "{err}");
    big.subscribe_presence(&a, "presence-other", "9", json!({"bio": "short"}))
        .await;
}

#[tokio::test]
async fn client_events() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let mut sender = node.client(APP_KEY).await;
    let mut receiver = node.client(APP_KEY).await;
    sender.subscribe_private(&a, "private-chat").await;
    receiver.subscribe_private(&a, "private-chat").await;

    sender
        .client_event("private-chat", "client-typing", json!({"who": "me"}))
        .await;
    let ev = receiver.recv_event("client-typing", WAIT).await;
    assert_eq!(ev["channel"], "private-chat");
    assert_eq!(ev["data"], json!({"who": "me"}));
    assert!(
        ev.get("user_id").is_none(),
        "no user_id on private channels: {ev}"
    );
    sender.expect_no_event("client-typing", QUIET).await; // not echoed

    // Presence: the frame carries the sender's user_id.
    sender
        .subscribe_presence(&a, "presence-chat", "alice", json!({}))
        .await;
    receiver
        .subscribe_presence(&a, "presence-chat", "bob", json!({}))
        .await;
    sender
        .client_event("presence-chat", "client-hi", json!("hello"))
        .await;
    let ev = receiver.recv_event("client-hi", WAIT).await;
    assert_eq!(ev["user_id"], "alice", "{ev}");

    // Refusals: public and encrypted channels, not subscribed.
    sender.subscribe("public-chat").await;
    receiver.subscribe("public-chat").await;
    sender.subscribe_private(&a, "private-encrypted-chat").await;
    receiver
        .subscribe_private(&a, "private-encrypted-chat")
        .await;
    for channel in [
        "public-chat",
        "private-encrypted-chat",
        "private-not-joined",
    ] {
        sender.client_event(channel, "client-nope", json!({})).await;
        let err = sender.recv_event("pusher:error", WAIT).await;
        assert!(err["data"]["message"].is_string(), "{err}");
    }
    receiver.expect_no_event("client-nope", QUIET).await;
    sender.assert_alive().await;
}

#[tokio::test]
async fn client_events_refused_when_app_disables_them() {
    let mut a = test_app();
    a.enable_client_messages = false;
    let node = TestNode::start(settings(vec![a.clone()])).await;
    let mut sender = node.client(APP_KEY).await;
    let mut receiver = node.client(APP_KEY).await;
    sender.subscribe_private(&a, "private-chat").await;
    receiver.subscribe_private(&a, "private-chat").await;
    sender
        .client_event("private-chat", "client-typing", json!({}))
        .await;
    sender.recv_event("pusher:error", WAIT).await;
    receiver.expect_no_event("client-typing", QUIET).await;
    sender.assert_alive().await;
}

#[tokio::test]
async fn client_event_rate_limit_4301_keeps_connection_open() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let mut sender = node.client(APP_KEY).await;
    let mut receiver = node.client(APP_KEY).await;
    sender.subscribe_private(&a, "private-rate").await;
    receiver.subscribe_private(&a, "private-rate").await;
    // 30 in a burst: more than twice the per-second limit, so some second holds over 10.
    for i in 0..30 {
        sender
            .client_event("private-rate", "client-n", json!({ "i": i }))
            .await;
    }
    let err = sender.recv_event("pusher:error", WAIT).await;
    assert_eq!(err["data"]["code"], 4301, "{err}");
    receiver.recv_event("client-n", WAIT).await;
    sender.assert_alive().await;
    assert!(sender.closed().is_none());
}

#[tokio::test]
async fn signin_and_server_to_user_channel() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c = node.client(APP_KEY).await;
    let ok = c.signin(&a, "42").await;
    let user_data: Value =
        serde_json::from_str(ok["data"]["user_data"].as_str().expect("user_data string"))
            .expect("json");
    assert_eq!(user_data["id"], "42");

    c.subscribe("#server-to-user-42").await;
    api.trigger("#server-to-user-42", "notice", "for 42").await;
    let ev = c.recv_event("notice", WAIT).await;
    assert_eq!(ev["channel"], "#server-to-user-42");
    assert_eq!(ev["data"], "for 42");

    c.subscribe_raw(json!({"channel": "#server-to-user-43"}))
        .await;
    let err = c.recv_event("pusher:subscription_error", WAIT).await;
    assert_eq!(err["channel"], "#server-to-user-43");
    assert!(
        err["data"]["status"]
            .as_u64()
            .is_some_and(|s| s == 401 || s == 403),
        "{err}"
    );

    let mut anon = node.client(APP_KEY).await;
    anon.subscribe_raw(json!({"channel": "#server-to-user-42"}))
        .await;
    anon.recv_event("pusher:subscription_error", WAIT).await;
    api.trigger("#server-to-user-42", "notice", "again").await;
    anon.expect_no_event("notice", QUIET).await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c = node.client(APP_KEY).await;
    c.subscribe("news").await;
    api.trigger("news", "one", "1").await;
    c.recv_event("one", WAIT).await;
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "news"}}))
        .await;
    c.assert_alive().await; // the unsubscribe was processed
    api.trigger("news", "two", "2").await;
    c.expect_no_event("two", QUIET).await;
    let (_, info) = api.get("/channels/news", &[]).await;
    assert_eq!(info["occupied"], false, "{info}");
}

#[tokio::test]
async fn disconnect_cleans_up_channels_and_members() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut observer = node.client(APP_KEY).await;
    observer
        .subscribe_presence(&a, "presence-room", "obs", json!({}))
        .await;
    let mut leaver = node.client(APP_KEY).await;
    leaver.subscribe("lonely").await;
    leaver
        .subscribe_presence(&a, "presence-room", "leaver", json!({}))
        .await;
    observer
        .recv_event("pusher_internal:member_added", WAIT)
        .await;
    let (_, info) = api.get("/channels/lonely", &[]).await;
    assert_eq!(info["occupied"], true);

    leaver.close().await;
    let removed = observer
        .recv_event("pusher_internal:member_removed", WAIT)
        .await;
    assert_eq!(removed["data"]["user_id"], "leaver");
    let (_, info) = api.get("/channels/lonely", &[]).await;
    assert_eq!(info["occupied"], false, "{info}");
    let (_, list) = api.get("/channels", &[]).await;
    assert!(list["channels"].get("lonely").is_none(), "{list}");
    let (_, users) = api.get("/channels/presence-room/users", &[]).await;
    assert_eq!(users["users"], json!([{"id": "obs"}]));
}

#[tokio::test]
async fn websocket_upgrades_are_rate_limited_per_client_ip() {
    let mut s = settings(vec![test_app()]);
    s.ws_upgrade_rate_limit_per_second = 1;
    s.ws_upgrade_rate_limit_burst = 2;
    let node = TestNode::start(s).await;
    let url = node.ws_url(&TestNode::app_path("app-key"));
    let _a = TestClient::try_connect(&url)
        .await
        .expect("first upgrade is within the burst");
    let _b = TestClient::try_connect(&url)
        .await
        .expect("second upgrade is within the burst");
    let err = TestClient::try_connect(&url)
        .await
        .err()
        .expect("third upgrade in the same instant is refused");
    assert!(err.contains("429"), "{err}");
    // The HTTP API is not affected by the upgrade budget.
    let (status, _) = node.api(&test_app()).get("/channels", &[]).await;
    assert_eq!(status, 200);
}

/// A peer that stops reading (zero TCP window) while a frame is being written: the write is
/// bounded by the pong timeout, the connection is dropped and its subscription released,
/// although its outbound queue never filled up (no 4100).
#[tokio::test]
async fn a_write_to_a_peer_that_stopped_reading_is_bounded() {
    let mut a = test_app();
    a.max_event_payload_bytes = 1024 * 1024;
    let mut s = settings(vec![a.clone()]);
    s.pong_timeout = 1;
    s.outbound_queue_frames = 1024;
    s.outbound_queue_bytes = 64 * 1024 * 1024;
    s.max_frame_bytes = 16 * 1024 * 1024;
    let node = TestNode::start(s).await;
    let api = node.api(&a);
    let mut stuck = TestClient::connect_small_rcvbuf(node.addr, &TestNode::app_path(APP_KEY)).await;
    stuck.established().await;
    stuck.subscribe("bulk").await;
    // Far more than both socket buffers hold (the queue bound is not reached): a write
    // cannot complete.
    let big = "x".repeat(900 * 1024);
    for _ in 0..12 {
        let (status, resp) = api
            .post(
                "/events",
                &json!({"name": "big", "channel": "bulk", "data": big}),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, info) = api.get("/channels/bulk", &[]).await;
        if info["occupied"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck connection still holds its subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Others are served.
    let mut fresh = node.client(APP_KEY).await;
    fresh.subscribe("bulk").await;
    drop(stuck);
}
