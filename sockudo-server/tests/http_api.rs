//! The Pusher HTTP API over real sockets (docs/protocol.md §5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sockudo_core::auth::sign_api_request;

#[tokio::test]
async fn trigger_event_with_and_without_info() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c = node.client(APP_KEY).await;
    c.subscribe("news").await;
    c.subscribe_presence(&a, "presence-room", "u1", json!({}))
        .await;

    let (status, body) = api
        .publish(&json!({"name": "e", "channel": "news", "data": "d"}))
        .await;
    assert_eq!((status, &body), (200, &json!({})));
    assert_eq!(c.recv_event("e", WAIT).await["data"], "d");

    let (status, body) = api
        .publish(&json!({"name": "e2", "channels": ["news", "presence-room"], "data": "{\"x\":1}", "info": "subscription_count,user_count"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channels"]["news"], json!({"subscription_count": 1}));
    assert_eq!(
        body["channels"]["presence-room"],
        json!({"subscription_count": 1, "user_count": 1})
    );
    let e1 = c.recv_event("e2", WAIT).await;
    let e2 = c.recv_event("e2", WAIT).await;
    let mut chans = [
        e1["channel"].as_str().unwrap_or(""),
        e2["channel"].as_str().unwrap_or(""),
    ];
    chans.sort_unstable();
    assert_eq!(chans, ["news", "presence-room"]);
    assert_eq!(e1["data"], "{\"x\":1}");
}

#[tokio::test]
async fn socket_id_excludes_the_sender() {
    let node = TestNode::default_app().await;
    let api = node.api(&test_app());
    let mut a = node.client(APP_KEY).await;
    let mut b = node.client(APP_KEY).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let (status, body) = api
        .publish(&json!({"name": "x", "channel": "room", "data": "1", "socket_id": a.socket_id}))
        .await;
    assert_eq!(status, 200, "{body}");
    b.recv_event("x", WAIT).await;
    a.expect_no_event("x", QUIET).await;

    let (status, body) = api.post("/batch_events", &json!({"batch": [{"name": "y", "channel": "room", "data": "2", "socket_id": b.socket_id}]})).await;
    assert_eq!(status, 200, "{body}");
    a.recv_event("y", WAIT).await;
    b.expect_no_event("y", QUIET).await;
}

#[tokio::test]
async fn channel_and_batch_limits() {
    let node = TestNode::default_app().await;
    let api = node.api(&test_app());
    let names = |n: usize| (0..n).map(|i| format!("ch-{i}")).collect::<Vec<_>>();

    let (status, body) = api
        .publish(&json!({"name": "x", "channels": names(100), "data": "1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .publish(&json!({"name": "x", "channels": names(101), "data": "1"}))
        .await;
    assert_eq!(status, 400);
    assert_json_error(400, &body);

    let batch = |n: usize| json!({"batch": (0..n).map(|i| json!({"name": "x", "channel": format!("b-{i}"), "data": "1"})).collect::<Vec<_>>()});
    let (status, body) = api.post("/batch_events", &batch(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"].as_array().map(Vec::len), Some(10));
    let (status, body) = api.post("/batch_events", &batch(11)).await;
    assert_eq!(status, 400);
    assert_json_error(400, &body);
}

#[tokio::test]
async fn batch_events_deliver_and_report_info() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c = node.client(APP_KEY).await;
    c.subscribe("one").await;
    c.subscribe_presence(&a, "presence-two", "u", json!({}))
        .await;
    let (status, body) = api
        .post(
            "/batch_events",
            &json!({"batch": [
                {"name": "a", "channel": "one", "data": "1"},
                {"name": "b", "channel": "presence-two", "data": "2", "info": "user_count,subscription_count"},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["batch"][0], json!({}));
    assert_eq!(
        body["batch"][1],
        json!({"user_count": 1, "subscription_count": 1})
    );
    assert_eq!(c.recv_event("a", WAIT).await["channel"], "one");
    assert_eq!(c.recv_event("b", WAIT).await["channel"], "presence-two");
}

#[tokio::test]
async fn data_over_app_limit_is_413() {
    let mut a = test_app();
    a.max_event_payload_bytes = 1000;
    let node = TestNode::start(settings(vec![a.clone()])).await;
    let api = node.api(&a);
    let (status, _) = api
        .publish(&json!({"name": "x", "channel": "c", "data": "y".repeat(1000)}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = api
        .publish(&json!({"name": "x", "channel": "c", "data": "y".repeat(1001)}))
        .await;
    assert_eq!(status, 413);
    assert_json_error(413, &body);
    let (status, body) = api
        .post(
            "/batch_events",
            &json!({"batch": [{"name": "x", "channel": "c", "data": "y".repeat(1001)}]}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
}

#[tokio::test]
async fn list_channels_with_prefix_and_info() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut c1 = node.client(APP_KEY).await;
    let mut c2 = node.client(APP_KEY).await;
    c1.subscribe("news").await;
    c1.subscribe_presence(&a, "presence-a", "1", json!({}))
        .await;
    c2.subscribe_presence(&a, "presence-a", "2", json!({}))
        .await;
    c2.subscribe_presence(&a, "presence-b", "2", json!({}))
        .await;

    let (status, body) = api.get("/channels", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": {"news": {}, "presence-a": {}, "presence-b": {}}})
    );

    let (status, body) = api
        .get("/channels", &[("filter_by_prefix", "presence-")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": {"presence-a": {}, "presence-b": {}}})
    );

    let (status, body) = api
        .get(
            "/channels",
            &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channels": {"presence-a": {"user_count": 2}, "presence-b": {"user_count": 1}}})
    );

    let (status, body) = api.get("/channels", &[("info", "user_count")]).await;
    assert_eq!(status, 400);
    assert_json_error(400, &body);
    let (status, _) = api
        .get(
            "/channels",
            &[("filter_by_prefix", "new"), ("info", "user_count")],
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn show_channel_with_and_without_info() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let (status, body) = api.get("/channels/news", &[]).await;
    assert_eq!((status, body), (200, json!({"occupied": false})));

    let mut c = node.client(APP_KEY).await;
    c.subscribe("news").await;
    c.subscribe_presence(&a, "presence-room", "7", json!({}))
        .await;
    let (status, body) = api.get("/channels/news", &[]).await;
    assert_eq!((status, body), (200, json!({"occupied": true})));
    let (status, body) = api
        .get("/channels/news", &[("info", "subscription_count")])
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"occupied": true, "subscription_count": 1}))
    );
    let (status, body) = api
        .get(
            "/channels/presence-room",
            &[("info", "user_count,subscription_count")],
        )
        .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"occupied": true, "user_count": 1, "subscription_count": 1})
        )
    );
    let (status, body) = api.get("/channels/news", &[("info", "user_count")]).await;
    assert_eq!(status, 400);
    assert_json_error(400, &body);

    // User channels are addressable (percent-encoded `#`).
    c.signin(&a, "42").await;
    c.subscribe("#server-to-user-42").await;
    let (status, body) = api
        .get(
            "/channels/%23server-to-user-42",
            &[("info", "subscription_count")],
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"occupied": true, "subscription_count": 1}))
    );
}

#[tokio::test]
async fn presence_users_endpoint() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let (status, body) = api.get("/channels/presence-empty/users", &[]).await;
    assert_eq!((status, body), (200, json!({"users": []})));
    let mut c1 = node.client(APP_KEY).await;
    let mut c2 = node.client(APP_KEY).await;
    c1.subscribe_presence(&a, "presence-room", "1", json!({"n": 1}))
        .await;
    c2.subscribe_presence(&a, "presence-room", "1", json!({"n": 1}))
        .await;
    let (status, body) = api.get("/channels/presence-room/users", &[]).await;
    assert_eq!((status, body), (200, json!({"users": [{"id": "1"}]})));
    let (status, body) = api.get("/channels/news/users", &[]).await;
    assert_eq!(status, 400);
    assert_json_error(400, &body);
}

#[tokio::test]
async fn terminate_connections_closes_the_users_sockets() {
    let node = TestNode::default_app().await;
    let a = test_app();
    let api = node.api(&a);
    let mut s1 = node.client(APP_KEY).await;
    let mut s2 = node.client(APP_KEY).await;
    let mut other = node.client(APP_KEY).await;
    s1.signin(&a, "victim").await;
    s2.signin(&a, "victim").await;
    other.signin(&a, "bystander").await;

    let (status, body) = api
        .post("/users/victim/terminate_connections", &json!({}))
        .await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(s1.expect_close(WAIT).await, Some(4009));
    assert_eq!(s2.expect_close(WAIT).await, Some(4009));
    other.assert_alive().await;

    let (status, _) = api
        .post("/users/nobody/terminate_connections", &json!({}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn authentication_failures() {
    let mut disabled = app("2", "disabled-key", "disabled-secret");
    disabled.enabled = false;
    let other = app("3", "other-key", "other-secret");
    let a = test_app();
    let node = TestNode::start(settings(vec![a.clone(), disabled.clone(), other.clone()])).await;
    let api = node.api(&a);
    let body = json!({"name": "x", "channel": "c", "data": "1"})
        .to_string()
        .into_bytes();
    let path = api.path("/events");
    let now = now_secs();

    let check = |name: &'static str, status: u16, expected: u16, body: Value| {
        assert_eq!(status, expected, "{name}: {body}");
        assert_json_error(expected, &body);
    };

    let good = sign_api_request(APP_KEY, APP_SECRET, "POST", &path, &[], &body, now);
    let (s, b) = api
        .raw("POST", &format!("{path}?{good}"), body.clone())
        .await;
    assert_eq!(s, 200, "control: {b}");

    let bad_sig = sign_api_request(APP_KEY, "wrong", "POST", &path, &[], &body, now);
    let (s, b) = api
        .raw("POST", &format!("{path}?{bad_sig}"), body.clone())
        .await;
    check("bad signature", s, 401, b);

    for ts in [now - 700, now + 700] {
        let q = sign_api_request(APP_KEY, APP_SECRET, "POST", &path, &[], &body, ts);
        let (s, b) = api.raw("POST", &format!("{path}?{q}"), body.clone()).await;
        check("expired timestamp", s, 401, b);
    }

    let no_md5 = sign_api_request(APP_KEY, APP_SECRET, "POST", &path, &[], b"", now);
    let (s, b) = api
        .raw("POST", &format!("{path}?{no_md5}"), body.clone())
        .await;
    check("missing body_md5", s, 401, b);

    let other_path = "/apps/3/events";
    let q = sign_api_request(APP_KEY, APP_SECRET, "POST", other_path, &[], &body, now);
    let (s, b) = api
        .raw("POST", &format!("{other_path}?{q}"), body.clone())
        .await;
    check("app id not matching key", s, 401, b);

    let q = sign_api_request("unknown-key", APP_SECRET, "POST", &path, &[], &body, now);
    let (s, b) = api.raw("POST", &format!("{path}?{q}"), body.clone()).await;
    check("unknown key", s, 401, b);

    let dapi = node.api(&disabled);
    let (s, b) = dapi
        .publish(&json!({"name": "x", "channel": "c", "data": "1"}))
        .await;
    check("disabled app", s, 403, b);
    let (s, b) = dapi.get("/channels", &[]).await;
    check("disabled app GET", s, 403, b);

    // The Python SDK sends body_md5 of the empty body on GET: tolerated.
    let cpath = api.path("/channels");
    let q = sign_api_request(
        APP_KEY,
        APP_SECRET,
        "GET",
        &cpath,
        &[("body_md5", "d41d8cd98f00b204e9800998ecf8427e")],
        b"",
        now,
    );
    let (s, b) = api.raw("GET", &format!("{cpath}?{q}"), Vec::new()).await;
    assert_eq!(s, 200, "GET with empty-body md5: {b}");
}

#[tokio::test]
async fn error_bodies_are_json() {
    let node = TestNode::default_app().await;
    let api = node.api(&test_app());
    let (s, b) = api
        .post("/events", &json!({"channel": "c", "data": "1"}))
        .await;
    assert_eq!(s, 400);
    assert_json_error(400, &b);
    let (s, b) = api.raw("POST", &api.path("/events"), b"{}".to_vec()).await;
    assert_eq!(s, 400, "unsigned: {b}");
    assert_json_error(400, &b);
    let (s, b) = api.raw("GET", "/nowhere", Vec::new()).await;
    assert_eq!(s, 404);
    assert_json_error(404, &b);
}
