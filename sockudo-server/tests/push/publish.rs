//! Publish admission: 202 + status, publishId / idempotency_key as one campaign (also across
//! nodes sharing Redis), `sync`, schedules, cancel, batches, and secrets kept out of
//! responses and logs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::fcm::FakeFcm;
use crate::harness::*;

fn gcm(token: &str) -> Value {
    json!({"transportType": "gcm", "registrationToken": token})
}

fn devices(n: usize, prefix: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"type": "device", "deviceId": format!("{prefix}{i}")}))
        .collect()
}

async fn register(api: &Api, n: usize, prefix: &str) {
    for i in 0..n {
        api.register(
            &format!("{prefix}{i}"),
            None,
            gcm(&format!("{prefix}tok{i}")),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_publish_id_or_idempotency_key_is_one_campaign_across_nodes() {
    let redis = RedisServer::start();
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let a = PushNode::on(Backend::Redis, Some(&redis), |s| fcm.configure(s)).await;
    let b = PushNode::on(Backend::Redis, Some(&redis), |s| fcm.configure(s)).await;
    let (api_a, api_b) = (a.api(), b.api());
    register(&api_a, 3, "d").await;
    let body = json!({"publishId": "campaign-1", "recipients": devices(3, "d"), "payload": {"title": "t"}});
    let (s1, h1, r1) = api_a.call("POST", "/publish", &[], Some(&body), &[]).await;
    assert_eq!(
        (s1, &r1["publishId"], &r1["status"]),
        (202, &json!("campaign-1"), &json!("queued")),
        "{r1}"
    );
    assert!(h1.get("x-idempotent-replayed").is_none());
    let (s2, h2, r2) = api_b.call("POST", "/publish", &[], Some(&body), &[]).await;
    assert_eq!((s2, &r2["publishId"]), (202, &json!("campaign-1")), "{r2}");
    assert_eq!(
        h2["x-idempotent-replayed"], "true",
        "the other node knows the campaign"
    );
    let changed = json!({"publishId": "campaign-1", "recipients": devices(3, "d"), "payload": {"title": "other"}});
    let (s3, r3) = api_b.post("/publish", &changed).await;
    assert_eq!(s3, 409, "the same id with another request: {r3}");
    // idempotency_key in the body and X-Idempotency-Key in a header name one campaign too.
    let keyed =
        json!({"idempotency_key": "k-1", "recipients": devices(3, "d"), "payload": {"title": "k"}});
    let (s4, r4) = api_a.post("/publish", &keyed).await;
    assert_eq!((s4, &r4["publishId"]), (202, &json!("k-1")));
    let unkeyed = json!({"recipients": devices(3, "d"), "payload": {"title": "k"}});
    let (s5, h5, _) = api_b
        .call(
            "POST",
            "/publish",
            &[],
            Some(&unkeyed),
            &[("x-idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(
        (
            s5,
            h5.get("x-idempotent-replayed").map(|v| v.to_str().unwrap())
        ),
        (202, Some("true"))
    );
    let (s6, _) = api_a.post("/publish", &json!({"publishId": "x", "idempotency_key": "y", "recipients": devices(1, "d"), "payload": {}})).await;
    assert_eq!(s6, 400, "two different keys");
    for pid in ["campaign-1", "k-1"] {
        let st = api_b.wait_terminal(pid).await;
        assert_eq!(st["state"], "succeeded", "{st}");
        assert_eq!(st["counters"]["succeeded"], 3);
    }
    assert_eq!(
        fcm.sends().await.len(),
        6,
        "two campaigns of three devices, each sent once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_checks_sync_schedule_and_limits() {
    let node = PushNode::on(Backend::Memory, None, |_| {}).await;
    let api = node.api();
    let now = sockudo_now_ms();
    let cases = [
        (
            "sync",
            json!({"recipients": devices(1, "d"), "payload": {}, "sync": true}),
        ),
        ("no recipients", json!({"recipients": [], "payload": {}})),
        (
            "expired",
            json!({"recipients": devices(1, "d"), "payload": {}, "expiresAtMs": now - 1}),
        ),
        (
            "expiry before start",
            json!({"recipients": devices(1, "d"), "payload": {}, "notBeforeMs": now + 5000, "expiresAtMs": now + 4000}),
        ),
        (
            "long title",
            json!({"recipients": devices(1, "d"), "payload": {"title": "x".repeat(257)}}),
        ),
        (
            "bad target",
            json!({"recipients": [{"type": "planet", "id": "x"}], "payload": {}}),
        ),
        (
            "bad override",
            json!({"recipients": devices(1, "d"), "payload": {}, "providerOverrides": [{"provider": "sms", "payload": {}}]}),
        ),
        (
            "too many",
            json!({"recipients": devices(1025, "d"), "payload": {}}),
        ),
    ];
    for (name, body) in cases {
        let (status, resp) = api.post("/publish", &body).await;
        assert_eq!(status, 400, "{name}: {resp}");
        if name == "sync" {
            assert!(
                resp.to_string().contains("sync"),
                "the refusal says why: {resp}"
            );
        }
    }
    let (status, _) = api.get("/publish/nope/status", &[]).await;
    assert_eq!(status, 404);
    // Batches: one result per item, in order; a bad item does not sink the others.
    let batch = json!([
        {"recipients": devices(1, "d"), "payload": {"title": "a"}, "notBeforeMs": now + 3_600_000},
        {"recipients": devices(1, "d"), "payload": {}, "sync": true},
        {"recipients": [{"type": "channel", "channel": "c"}], "payload": {"title": "c"}, "notBeforeMs": now + 3_600_000},
    ]);
    let (status, resp) = api.post("/batch/publish", &batch).await;
    assert_eq!(status, 202, "{resp}");
    let items = resp["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["status"], "queued");
    assert_eq!(items[0]["expectedRecipients"], 1);
    assert_eq!(items[1]["error"]["status"], 400);
    assert!(items[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sync"));
    assert!(
        items[2]["expectedRecipients"].is_null(),
        "unknown without a scan"
    );
    let (status, _) = api
        .post(
            "/batch/publish",
            &json!((0..101).map(|_| json!({})).collect::<Vec<_>>()),
        )
        .await;
    assert_eq!(status, 400, "at most 100 per batch");
    // A publish that reaches no registered device ends failed, and says why.
    let pid = api
        .publish(&json!({"recipients": [{"type": "channel", "channel": "empty"}], "payload": {}}))
        .await;
    let st = api.wait_terminal(&pid).await;
    assert_eq!(
        (st["state"].as_str(), st["counters"]["planned"].as_i64()),
        (Some("failed"), Some(0)),
        "{st}"
    );
    assert!(st["errorReason"]
        .as_str()
        .unwrap()
        .contains("no registered device"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_publish_waits_queued_and_can_be_cancelled() {
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let node = PushNode::on(Backend::Memory, None, |s| fcm.configure(s)).await;
    let api = node.api();
    register(&api, 2, "keep").await;
    register(&api, 2, "drop").await;
    let at = sockudo_now_ms() + 1500;
    let kept = api.publish(&json!({"recipients": devices(2, "keep"), "payload": {"title": "k"}, "notBeforeMs": at})).await;
    let dropped = api.publish(&json!({"recipients": devices(2, "drop"), "payload": {"title": "d"}, "notBeforeMs": at})).await;
    let (_, st) = api.get(&format!("/publish/{kept}/status"), &[]).await;
    assert_eq!(st["state"], "queued", "{st}");
    assert_eq!(st["appId"], APP_ID);
    let (status, _) = api.delete(&format!("/scheduled/{dropped}"), &[]).await;
    assert_eq!(status, 204);
    let st = api.wait_terminal(&kept).await;
    assert_eq!(st["state"], "succeeded", "{st}");
    assert!(st["updatedAtMs"].as_u64() >= st["createdAtMs"].as_u64());
    let (_, st) = api.get(&format!("/publish/{dropped}/status"), &[]).await;
    assert_eq!(st["state"], "cancelled", "{st}");
    let (status, _) = api.delete(&format!("/scheduled/{dropped}"), &[]).await;
    assert_eq!(status, 409, "already cancelled");
    let (status, _) = api.delete(&format!("/scheduled/{kept}"), &[]).await;
    assert_eq!(status, 409, "already sent");
    let sent: Vec<String> = fcm
        .sends()
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter().all(|b| b.contains("keeptok")),
        "the cancelled publish sent nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_event_with_extras_push_is_also_one_push_campaign() {
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let node = PushNode::on(Backend::Memory, None, |s| fcm.configure(s)).await;
    let api = node.api();
    register(&api, 2, "n").await;
    for i in 0..2 {
        api.post(
            "/channelSubscriptions",
            &json!({"channel": "news", "deviceId": format!("n{i}")}),
        )
        .await;
    }
    let events = format!("/apps/{APP_ID}/events");
    let event = json!({"name": "article", "channel": "news", "data": "{}", "idempotency_key": "evt-1",
        "extras": {"push": {"payload": {"title": "New article"}}}});
    let (status, _, body) = api.call("POST", &events, &[], Some(&event), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["push"]["publishId"], "evt-1", "{body}");
    let (status, _, again) = api.call("POST", &events, &[], Some(&event), &[]).await;
    assert_eq!(
        (status, &again),
        (200, &body),
        "a retried event is replayed whole"
    );
    let st = api.wait_terminal("evt-1").await;
    assert_eq!(
        (st["state"].as_str(), st["counters"]["succeeded"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{st}"
    );
    assert_eq!(
        fcm.sends().await.len(),
        2,
        "one push campaign for the event and its retry"
    );
    let bad = json!({"name": "e", "channel": "news", "data": "{}", "extras": {"push": {"payload": {}, "sync": true}}});
    let (status, _, body) = api.call("POST", &events, &[], Some(&bad), &[]).await;
    assert_eq!(status, 400, "checked before the event is published: {body}");
    let batch = json!({"batch": [{"name": "e", "channel": "news", "data": "{}", "extras": {"push": {"payload": {}}}}]});
    let (status, _, body) = api
        .call(
            "POST",
            &format!("/apps/{APP_ID}/batch_events"),
            &[],
            Some(&batch),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// Captures every log line of the process (the global subscriber of this test binary).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_or_responses() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let mut settings = settings();
    fcm.configure(&mut settings);
    let vapid = settings.push.webpush_vapid_private_key.clone();
    tracing::info!(settings = ?settings, "starting");
    let node = PushNode::start(settings).await;
    let api = node.api();
    api.register("d0", None, gcm("device-token-secret")).await;
    let pid = api
        .publish(&json!({"recipients": devices(1, "d"), "payload": {"title": "t"}}))
        .await;
    let st = api.wait_terminal(&pid).await;
    let mut seen = st.to_string();
    for path in ["/deviceRegistrations", "/deviceRegistrations/d0"] {
        seen.push_str(&api.get(path, &[]).await.1.to_string());
    }
    seen.push_str(&format!("{:?}", node.node.push()));
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("starting") && logged.contains("PushSection"),
        "logs are captured"
    );
    seen.push_str(&logged);
    let key_body = crate::fcm::key_body_line();
    for secret in [
        vapid.as_str(),
        key_body.as_str(),
        "tok-1",
        "device-token-secret",
    ] {
        assert!(!seen.contains(secret), "{secret:?} leaked");
    }
}

fn sockudo_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_node_exports_the_push_metrics() {
    let fcm = FakeFcm::start().await;
    fcm.ok_sends().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = PushNode::on(Backend::Memory, None, |s| {
        fcm.configure(s);
        s.metrics_port = port;
    })
    .await;
    let api = node.api();
    register(&api, 1, "m").await;
    let pid = api
        .publish(&json!({"recipients": devices(1, "m"), "payload": {"title": "t"}}))
        .await;
    api.wait_terminal(&pid).await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let ready = text.contains("sockudo_push_dispatched_total{")
            && text.contains("stage=\"dispatch:fcm\"");
        if ready {
            assert!(
                text.contains("sockudo_push_publish_accepted_total"),
                "{text}"
            );
            assert!(
                text.contains("sockudo_push_provider_latency_seconds"),
                "{text}"
            );
            assert!(text.contains("sockudo_push_queue_backlog{"), "{text}");
            assert!(text.contains("provider=\"fcm\""), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "push metrics never exported:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
