//! Registrations and channel subscriptions over real HTTP, signed, on both stores.

use serde_json::{json, Value};

use crate::harness::*;

fn gcm(token: &str) -> Value {
    json!({"transportType": "gcm", "registrationToken": token})
}

async fn registrations(backend: Backend) {
    let redis = (backend == Backend::Redis).then(RedisServer::start);
    let node = PushNode::on(backend, redis.as_ref(), |_| {}).await;
    let api = node.api();
    for i in 0..5 {
        let client = if i < 3 { Some("alice") } else { None };
        api.register(
            &format!("dev-{i}"),
            client,
            gcm(&format!("secret-token-{i}")),
        )
        .await;
    }
    let (status, d) = api.get("/deviceRegistrations/dev-0", &[]).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["clientId"], "alice");
    assert_eq!(d["push"]["state"], "ACTIVE");
    assert_eq!(d["push"]["recipient"]["transportType"], "gcm");
    assert_eq!(d["tokenHash"].as_str().map(str::len), Some(64));
    assert!(!d.to_string().contains("secret-token"), "no raw token: {d}");

    // Pages of 2 with opaque cursors see every device once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut params = vec![("limit", "2")];
        if !cursor.is_empty() {
            params.push(("cursor", cursor.as_str()));
        }
        let (status, page) = api.get("/deviceRegistrations", &params).await;
        assert_eq!(status, 200, "{page}");
        assert!(!page.to_string().contains("secret-token"));
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        if page["has_more"] != json!(true) {
            assert!(page["next_cursor"].is_null());
            break;
        }
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]);
    let (_, alice) = api
        .get("/deviceRegistrations", &[("clientId", "alice")])
        .await;
    assert_eq!(alice["items"].as_array().unwrap().len(), 3);
    let (status, _) = api
        .get("/deviceRegistrations", &[("cursor", "bm90LW91cnM")])
        .await;
    assert_eq!(status, 400, "a cursor of another app is refused");

    // Update moves the device out of alice's devices.
    api.register("dev-0", Some("bob"), gcm("secret-token-0b"))
        .await;
    let (status, body) = api
        .delete("/deviceRegistrations", &[("clientId", "alice")])
        .await;
    assert_eq!((status, &body), (200, &json!({"deleted": 2})));
    let (status, _) = api.delete("/deviceRegistrations/dev-3", &[]).await;
    assert_eq!(status, 204);
    let (status, _) = api.delete("/deviceRegistrations/dev-3", &[]).await;
    assert_eq!(status, 404);
    let (status, _) = api.get("/deviceRegistrations/dev-1", &[]).await;
    assert_eq!(status, 404);
    let (_, all) = api.get("/deviceRegistrations", &[]).await;
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-0", "dev-4"]);
}

async fn bad_registrations(backend: Backend) {
    let redis = (backend == Backend::Redis).then(RedisServer::start);
    let node = PushNode::on(backend, redis.as_ref(), |_| {}).await;
    let api = node.api();
    let base = json!({"id": "d", "formFactor": "phone", "platform": "android", "push": {"recipient": gcm("t")}});
    let cases: Vec<(&str, Value)> = vec![
        ("form factor", json!({"formFactor": "toaster"})),
        ("platform", json!({"platform": "amiga"})),
        ("empty id", json!({"id": ""})),
        ("long id", json!({"id": "x".repeat(129)})),
        ("metadata", json!({"metadata": {"m": "x".repeat(5000)}})),
        (
            "transport",
            json!({"push": {"recipient": {"transportType": "pigeon"}}}),
        ),
        (
            "web keys",
            json!({"push": {"recipient": {"transportType": "web", "endpoint": "https://e.invalid/x", "p256dh": "AAAA", "auth": "AAAA"}}}),
        ),
        ("unknown field", json!({"extra": 1})),
    ];
    for (name, patch) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, resp) = api.post("/deviceRegistrations", &body).await;
        assert_eq!(status, 400, "{name}: {resp}");
    }
    // Unsigned: refused by the API auth layer.
    let url = format!(
        "http://{}/apps/{APP_ID}/push/deviceRegistrations",
        node.addr
    );
    let status = reqwest::get(url).await.unwrap().status().as_u16();
    assert!(matches!(status, 400 | 401), "unsigned request: {status}");
}

async fn subscriptions(backend: Backend) {
    let redis = (backend == Backend::Redis).then(RedisServer::start);
    let node = PushNode::on(backend, redis.as_ref(), |_| {}).await;
    let api = node.api();
    api.register("d1", None, gcm("t1")).await;
    api.register("d2", Some("carol"), gcm("t2")).await;
    let (status, echo) = api
        .post(
            "/channelSubscriptions",
            &json!({"channel": "news", "deviceId": "d1"}),
        )
        .await;
    assert_eq!(
        (status, &echo),
        (201, &json!({"channel": "news", "deviceId": "d1"}))
    );
    let (status, echo) = api
        .post(
            "/channelSubscriptions",
            &json!({"channel": "news", "clientId": "carol"}),
        )
        .await;
    assert_eq!(
        (status, &echo),
        (201, &json!({"channel": "news", "clientId": "carol"}))
    );
    api.post(
        "/channelSubscriptions",
        &json!({"channel": "sport", "deviceId": "d1"}),
    )
    .await;
    let (status, body) = api
        .post(
            "/channelSubscriptions",
            &json!({"channel": "news", "deviceId": "ghost"}),
        )
        .await;
    assert_eq!(status, 400, "an unregistered device: {body}");
    let (status, _) = api
        .post("/channelSubscriptions", &json!({"channel": "news"}))
        .await;
    assert_eq!(status, 400);

    let (_, by_channel) = api
        .get("/channelSubscriptions", &[("channel", "news")])
        .await;
    assert_eq!(
        by_channel["items"],
        json!([{"channel": "news", "clientId": "carol"}, {"channel": "news", "deviceId": "d1"}])
    );
    let (_, by_device) = api
        .get("/channelSubscriptions", &[("deviceId", "d1")])
        .await;
    assert_eq!(
        by_device["items"],
        json!([{"channel": "news", "deviceId": "d1"}, {"channel": "sport", "deviceId": "d1"}])
    );
    let (_, pair) = api
        .get(
            "/channelSubscriptions",
            &[("channel", "sport"), ("deviceId", "d1")],
        )
        .await;
    assert_eq!(pair["items"].as_array().unwrap().len(), 1);
    let (_, channels) = api.get("/channelSubscriptions/channels", &[]).await;
    assert_eq!(channels["items"], json!(["news", "sport"]));
    let (status, _) = api.get("/channelSubscriptions", &[]).await;
    assert_eq!(status, 400, "a filter is required");

    let (_, body) = api
        .delete(
            "/channelSubscriptions",
            &[("channel", "sport"), ("deviceId", "d1")],
        )
        .await;
    assert_eq!(body, json!({"deleted": 1}));
    let (_, channels) = api.get("/channelSubscriptions/channels", &[]).await;
    assert_eq!(
        channels["items"],
        json!(["news"]),
        "an emptied channel disappears"
    );
    // Deleting a device removes its subscriptions.
    api.delete("/deviceRegistrations/d1", &[]).await;
    let (_, by_channel) = api
        .get("/channelSubscriptions", &[("channel", "news")])
        .await;
    assert_eq!(
        by_channel["items"],
        json!([{"channel": "news", "clientId": "carol"}])
    );
    let (_, body) = api
        .delete("/channelSubscriptions", &[("channel", "news")])
        .await;
    assert_eq!(body, json!({"deleted": 1}));
    let (_, channels) = api.get("/channelSubscriptions/channels", &[]).await;
    assert_eq!(channels["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_memory() {
    registrations(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_redis() {
    registrations(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_memory() {
    bad_registrations(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_redis() {
    bad_registrations(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_memory() {
    subscriptions(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_redis() {
    subscriptions(Backend::Redis).await;
}
