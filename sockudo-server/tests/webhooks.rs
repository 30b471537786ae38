//! Webhooks against a real receiving HTTP server (wiremock): every event type with a valid
//! signature (checked with HMAC here and with the official `pusher` npm SDK), batching,
//! filters, retries, delayed vacate/rejoin, and (feature `redis`) redelivery by another
//! worker after a node died holding a job.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sockudo_core::adapter::LocalAdapter;
use sockudo_core::app::{App, StaticAppManager, WebhookTarget};
use sockudo_core::cache::MemoryCache;
use sockudo_core::queue::{MemoryQueue, Queue};
use sockudo_server::webhooks::{WebhookEvent, WebhookSettings, Webhooks};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use common::{app, settings, TestNode};

fn target(server: &MockServer, route: &str, event_types: &[&str]) -> WebhookTarget {
    WebhookTarget {
        url: format!("{}{route}", server.uri()),
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        headers: HashMap::from([("X-Custom".to_string(), "yes".to_string())]),
    }
}

fn hook_app(targets: Vec<WebhookTarget>) -> App {
    let mut a = app("wh-app", "wh-key", "wh-secret");
    a.webhooks = targets;
    a
}

/// A node with fast webhook settings: 100 ms batches, 1 s removal delay.
async fn node_with(app: App) -> TestNode {
    let mut s = settings(vec![app]);
    s.webhook_batch_ms = 100;
    s.webhook_delay_secs = 1;
    s.webhook_timeout_secs = 2;
    TestNode::start(s).await
}

async fn ok_receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

fn header(r: &Request, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("webhook body is not JSON: {e}"))
}

/// Requests received on `route`.
async fn received(server: &MockServer, route: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == route)
        .collect()
}

/// All events received on `route`, in arrival order, without their idempotency `id` (checked
/// present here).
async fn events(server: &MockServer, route: &str) -> Vec<Value> {
    received(server, route)
        .await
        .iter()
        .flat_map(|r| body(r)["events"].as_array().cloned().unwrap_or_default())
        .map(without_id)
        .collect()
}

/// The sorted idempotency ids of a request's events.
fn ids(r: &Request) -> Vec<String> {
    let mut v: Vec<String> = body(r)["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

fn without_id(mut e: Value) -> Value {
    let id = e.as_object_mut().and_then(|o| o.remove("id"));
    assert!(
        id.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty()),
        "every event carries an idempotency id: {e}"
    );
    e
}

/// Wait until `route` has received at least `n` events.
async fn wait_events(server: &MockServer, route: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let evs = events(server, route).await;
        if evs.len() >= n || Instant::now() > deadline {
            return evs;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn names(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Check every request's signature with HMAC, then with the `pusher` SDK's validator.
fn assert_signed(requests: &[Request], key: &str, secret: &str) {
    assert!(!requests.is_empty());
    for r in requests {
        assert_eq!(header(r, "x-pusher-key"), key);
        assert_eq!(
            header(r, "x-pusher-signature"),
            hmac_hex(secret, &r.body),
            "signature is HMAC-SHA256(secret, body)"
        );
        assert_eq!(header(r, "content-type"), "application/json");
        assert_eq!(
            header(r, "x-custom"),
            "yes",
            "custom target headers are sent"
        );
        assert!(
            body(r)["time_ms"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "time_ms is epoch milliseconds"
        );
    }
    validate_with_pusher_sdk(requests, key, secret);
}

fn validate_with_pusher_sdk(requests: &[Request], key: &str, secret: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/support/validate_webhook.js");
    let sdk = root.join("../conformance/node_modules/pusher/package.json");
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node_ok,
        "`node` is needed to validate webhooks with the pusher SDK: install Node.js 20"
    );
    assert!(
        sdk.exists(),
        "the pusher npm SDK is missing: run `npm install` in conformance/ ({})",
        sdk.display()
    );
    let input: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "key": header(r, "x-pusher-key"),
                "signature": header(r, "x-pusher-signature"),
                "content_type": header(r, "content-type"),
                "body": String::from_utf8_lossy(&r.body),
            })
        })
        .collect();
    let mut child = Command::new("node")
        .arg(&script)
        .args([key, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(&input).unwrap().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pusher SDK validation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), requests.len());
    for (line, r) in lines.iter().zip(requests) {
        assert_eq!(
            line["events"],
            body(r)["events"],
            "the SDK parses the same events"
        );
    }
    // A tampered signature must be refused (the validator really validates).
    let mut bad = input[0].clone();
    bad["body"] = Value::String(format!("{} ", bad["body"].as_str().unwrap_or_default()));
    let mut child = Command::new("node")
        .arg(&script)
        .args([key, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&vec![bad]).unwrap().as_bytes())
            .unwrap();
    }
    assert!(
        !child.wait().unwrap().success(),
        "the SDK accepted a tampered body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_type_is_delivered_signed() {
    let server = ok_receiver().await;
    let app = hook_app(vec![target(&server, "/hooks", &[])]);
    let node = node_with(app.clone()).await;
    let mut c = node.client(&app.key).await;
    c.subscribe_presence(&app, "presence-room", "u1", json!({"name": "Ada"}))
        .await;
    c.subscribe("cache-news").await;
    c.client_event("presence-room", "client-typing", json!({"on": true}))
        .await;
    let first = wait_events(&server, "/hooks", 5, Duration::from_secs(5)).await;
    c.send_json(&json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    let evs = wait_events(&server, "/hooks", first.len() + 2, Duration::from_secs(5)).await;

    let find = |name: &str, channel: &str| {
        evs.iter()
            .filter(|e| e["name"] == name && e["channel"] == channel)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        find("channel_occupied", "presence-room"),
        vec![json!({"name": "channel_occupied", "channel": "presence-room"})]
    );
    assert_eq!(find("channel_occupied", "cache-news").len(), 1);
    assert_eq!(
        find("member_added", "presence-room"),
        vec![json!({"name": "member_added", "channel": "presence-room", "user_id": "u1"})]
    );
    assert_eq!(
        find("cache_miss", "cache-news"),
        vec![json!({"name": "cache_miss", "channel": "cache-news"})]
    );
    let ce = find("client_event", "presence-room");
    assert_eq!(ce.len(), 1, "{evs:?}");
    assert_eq!(ce[0]["event"], "client-typing");
    assert_eq!(ce[0]["user_id"], "u1");
    assert_eq!(
        serde_json::from_str::<Value>(ce[0]["data"].as_str().unwrap()).unwrap(),
        json!({"on": true}),
        "data is the event data as a string"
    );
    assert!(ce[0]["socket_id"].as_str().is_some_and(|s| s.contains('.')));
    assert_eq!(
        find("member_removed", "presence-room"),
        vec![json!({"name": "member_removed", "channel": "presence-room", "user_id": "u1"})]
    );
    assert_eq!(
        find("channel_vacated", "presence-room"),
        vec![json!({"name": "channel_vacated", "channel": "presence-room"})]
    );
    assert_eq!(evs.len(), 7, "nothing else was sent: {:?}", names(&evs));
    // Each span's end after its start (different subjects may go in separate POSTs, whose
    // arrival order is not promised); the delayed removal after the immediate client event.
    let pos = |n: &str| {
        evs.iter()
            .position(|e| e["name"] == n && e["channel"] == "presence-room")
            .unwrap()
    };
    assert!(pos("channel_occupied") < pos("channel_vacated"));
    assert!(pos("member_added") < pos("member_removed"));
    assert!(pos("client_event") < pos("member_removed"));

    assert_signed(&received(&server, "/hooks").await, &app.key, &app.secret);
    let stats = node.node.webhooks().unwrap().stats().snapshot();
    assert_eq!(stats.sent, received(&server, "/hooks").await.len() as u64);
    assert_eq!((stats.failed, stats.dead_lettered), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_in_the_batch_window_share_one_post() {
    let server = ok_receiver().await;
    let app = hook_app(vec![target(&server, "/hooks", &["channel_occupied"])]);
    let mut s = settings(vec![app.clone()]);
    s.webhook_batch_ms = 400;
    let node = TestNode::start(s).await;
    let mut c = node.client(&app.key).await;
    for ch in ["a", "b", "c", "d"] {
        c.subscribe(ch).await;
    }
    let evs = wait_events(&server, "/hooks", 4, Duration::from_secs(3)).await;
    assert_eq!(evs.len(), 4);
    let requests = received(&server, "/hooks").await;
    assert_eq!(
        requests.len(),
        1,
        "four events within the window are one POST"
    );
    assert_signed(&requests, &app.key, &app.secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_hold_at_most_fifty_events() {
    let server = ok_receiver().await;
    let app = Arc::new(hook_app(vec![target(&server, "/hooks", &[])]));
    let settings = WebhookSettings {
        batch_window: Duration::from_secs(2),
        poll_interval: Duration::from_millis(20),
        ..WebhookSettings::default()
    };
    let w = standalone(settings, Arc::new(MemoryQueue::new()));
    for i in 0..120 {
        w.emit(
            &app,
            WebhookEvent::CacheMiss {
                channel: format!("cache-{i}"),
            },
        );
    }
    // Batched at delivery: the events of one window are due together and go in POSTs of
    // at most 50.
    let evs = wait_events(&server, "/hooks", 120, Duration::from_secs(5)).await;
    assert_eq!(evs.len(), 120);
    let sizes: Vec<usize> = received(&server, "/hooks")
        .await
        .iter()
        .map(|r| body(r)["events"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(sizes.iter().all(|n| *n <= 50), "{sizes:?}");
    assert!(
        sizes.len() <= 6,
        "batched, not one POST per event: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_only_get_the_event_types_they_ask_for() {
    let server = ok_receiver().await;
    let app = hook_app(vec![
        target(&server, "/all", &[]),
        target(&server, "/members", &["member_added"]),
    ]);
    let node = node_with(app.clone()).await;
    let mut c = node.client(&app.key).await;
    c.subscribe_presence(&app, "presence-x", "u1", json!({}))
        .await;
    let mut d = node.client(&app.key).await;
    d.subscribe_presence(&app, "presence-x", "u2", json!({}))
        .await;
    c.subscribe("cache-y").await;
    let all = wait_events(&server, "/all", 5, Duration::from_secs(3)).await;
    assert_eq!(all.len(), 5, "{:?}", names(&all));
    // Each target gets its own POSTs: wait for this one's too.
    let members = wait_events(&server, "/members", 2, Duration::from_secs(3)).await;
    assert_eq!(names(&members), vec!["member_added", "member_added"]);
    let mut users: Vec<&str> = members
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, vec!["u1", "u2"]);
    assert_signed(&received(&server, "/members").await, &app.key, &app.secret);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vacate_then_rejoin_within_the_delay_sends_nothing() {
    let server = ok_receiver().await;
    let app = hook_app(vec![target(&server, "/hooks", &[])]);
    let node = node_with(app.clone()).await;
    let mut c = node.client(&app.key).await;
    c.subscribe_presence(&app, "presence-r", "u1", json!({}))
        .await;
    // Different subjects may go in separate POSTs, whose arrival order is not promised.
    let sorted = |evs: &[Value]| {
        let mut n = names(evs);
        n.sort();
        n
    };
    let first = wait_events(&server, "/hooks", 2, Duration::from_secs(3)).await;
    assert_eq!(sorted(&first), vec!["channel_occupied", "member_added"]);
    // Leave (the socket closes) and come back on a new socket within the 1 s delay.
    c.close().await;
    let mut c2 = node.client(&app.key).await;
    c2.subscribe_presence(&app, "presence-r", "u1", json!({}))
        .await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        sorted(&events(&server, "/hooks").await),
        vec!["channel_occupied", "member_added"],
        "nothing after a quick rejoin"
    );
    // A real leave is reported once, after the delay.
    c2.close().await;
    let evs = wait_events(&server, "/hooks", 4, Duration::from_secs(4)).await;
    let mut tail = names(&evs[2..]);
    tail.sort();
    assert_eq!(tail, vec!["channel_vacated", "member_removed"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events(&server, "/hooks").await.len(), 4);
}

/// A pipeline outside a node, with fast retries.
fn standalone(settings: WebhookSettings, queue: Arc<dyn Queue>) -> Webhooks {
    standalone_with(settings, queue, Vec::new())
}

/// [`standalone`] whose app manager knows `apps` (a node that never emitted for an app
/// finds it there when it delivers another node's job).
fn standalone_with(settings: WebhookSettings, queue: Arc<dyn Queue>, apps: Vec<App>) -> Webhooks {
    let w = Webhooks::new(
        settings,
        queue,
        Arc::new(MemoryCache::new()),
        Arc::new(LocalAdapter::new()),
        Arc::new(StaticAppManager::new(apps)),
    )
    .unwrap();
    w.spawn_worker();
    w
}

fn fast(consumer: &str) -> WebhookSettings {
    WebhookSettings {
        batch_window: Duration::from_millis(20),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        retry_window: Duration::from_secs(2),
        poll_interval: Duration::from_millis(20),
        request_timeout: Duration::from_secs(2),
        consumer: consumer.into(),
        ..WebhookSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_target_gets_each_event_exactly_once_in_the_end() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/flaky"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    let app = Arc::new(hook_app(vec![target(&server, "/flaky", &[])]));
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let one_window = WebhookSettings {
        batch_window: Duration::from_millis(300),
        ..fast("n1")
    };
    let w = standalone(one_window, Arc::clone(&queue));
    w.emit(
        &app,
        WebhookEvent::MemberAdded {
            channel: "presence-a".into(),
            user_id: "1".into(),
        },
    );
    w.emit(
        &app,
        WebhookEvent::CacheMiss {
            channel: "cache-b".into(),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stats().snapshot().sent < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = received(&server, "/flaky").await;
    assert_eq!(requests.len(), 4, "three 503s, then success");
    assert!(
        requests.windows(2).all(|p| ids(&p[0]) == ids(&p[1])),
        "retries resend the same events (same idempotency ids)"
    );
    let mut last = names(&body(&requests[3])["events"].as_array().cloned().unwrap());
    last.sort();
    assert_eq!(last, vec!["cache_miss", "member_added"], "still one batch");
    let s = w.stats().snapshot();
    // `retried` counts jobs (one per event): two events, three failed POSTs.
    assert_eq!((s.sent, s.failed, s.retried, s.dead_lettered), (1, 3, 6, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received(&server, "/flaky").await.len(),
        4,
        "nothing is sent after the success"
    );
    assert_eq!(queue.stats("webhooks").await.unwrap().depth, 0);
    server.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_errors_dead_letter_at_once_and_retries_end() {
    let server = MockServer::start().await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    Mock::given(path("/slow-down"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(path("/slow-down"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&server)
        .await;
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let settings = WebhookSettings {
        retry_window: Duration::from_millis(300),
        ..fast("n1")
    };
    let w = standalone(settings, Arc::clone(&queue));
    let attempts = w.max_attempts();
    let ev = || WebhookEvent::ChannelOccupied {
        channel: "c".into(),
    };
    // Batches are per app: one app per target here.
    let app_for = |id: &str, route: &str| {
        let mut a = hook_app(vec![target(&server, route, &[])]);
        (a.id, a.key) = (id.to_string(), format!("{id}-key"));
        Arc::new(a)
    };
    w.emit(&app_for("gone", "/gone"), ev());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received(&server, "/gone").await.len(),
        1,
        "a 404 is not retried"
    );
    assert_eq!(w.stats().snapshot().dead_lettered, 1);

    let t0 = Instant::now();
    w.emit(&app_for("slow", "/slow-down"), ev());
    w.emit(&app_for("down", "/down"), ev());
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.stats().snapshot().dead_lettered < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        received(&server, "/down").await.len() as u32,
        attempts,
        "a 500 is retried up to max attempts, then dead-lettered"
    );
    let dead = queue.dead_letters("webhooks", 10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let wait_sent = Instant::now() + Duration::from_secs(3);
    while received(&server, "/slow-down").await.len() < 2 && Instant::now() < wait_sent {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received(&server, "/slow-down").await.len(), 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 is honoured"
    );
}

#[cfg(feature = "redis")]
mod redis_queue {
    use super::*;
    use sockudo_core::queue::{RedisQueue, RedisQueueOptions};

    /// A `redis-server` child on a free loopback port, killed on drop.
    struct RedisServer {
        port: u16,
        child: std::process::Child,
    }

    impl RedisServer {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be on PATH");
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            RedisServer { port, child }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn redis_queue(url: &str) -> Arc<dyn Queue> {
        Arc::new(
            RedisQueue::connect_with(url, RedisQueueOptions::default())
                .await
                .unwrap(),
        )
    }

    /// Node A claims the job and dies mid-delivery (no ack); node B delivers it after the
    /// lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_job_held_by_a_dead_node_is_delivered_by_another_after_the_lease() {
        let redis = RedisServer::start();
        let server = MockServer::start().await;
        // The first POST hangs (node A is "stuck" in it when it dies); later ones succeed.
        Mock::given(path("/hooks"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(path("/hooks"))
            .respond_with(ResponseTemplate::new(200))
            .with_priority(2)
            .expect(1)
            .mount(&server)
            .await;
        let app = Arc::new(hook_app(vec![target(&server, "/hooks", &[])]));
        let lease = Duration::from_millis(800);
        let settings = |node: &str| WebhookSettings {
            lease,
            request_timeout: Duration::from_secs(20),
            ..fast(node)
        };

        let a = standalone(settings("node-a"), redis_queue(&redis.url()).await);
        a.emit(
            &app,
            WebhookEvent::MemberRemoved {
                channel: "presence-z".into(),
                user_id: "7".into(),
            },
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        while received(&server, "/hooks").await.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            received(&server, "/hooks").await.len(),
            1,
            "node A claimed and started the POST"
        );
        let died = Instant::now();
        drop(a); // node A dies: no ack, no nack

        let b = standalone_with(
            settings("node-b"),
            redis_queue(&redis.url()).await,
            vec![(*app).clone()],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.stats().snapshot().sent < 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            b.stats().snapshot().sent,
            1,
            "node B delivered the abandoned job"
        );
        let requests = received(&server, "/hooks").await;
        assert_eq!(requests.len(), 2);
        assert_eq!(
            body(&requests[0])["events"],
            body(&requests[1])["events"],
            "the same events (same idempotency ids) are redelivered"
        );
        assert!(
            died.elapsed() >= lease - Duration::from_millis(300),
            "not before the lease expired"
        );
        assert_eq!(
            names(&body(&requests[1])["events"].as_array().cloned().unwrap()),
            vec!["member_removed"]
        );
        assert_signed(&requests[1..], &app.key, &app.secret);
        let stats = b.queue_stats().await.unwrap();
        assert_eq!((stats.depth, stats.dead_letters), (0, 0));
        server.verify().await;
    }

    /// `QUEUE_DRIVER=redis` selects the Redis queue: events emitted on one node are in Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queue_driver_redis_is_selected_by_config() {
        let redis = RedisServer::start();
        let server = ok_receiver().await;
        let app = hook_app(vec![target(&server, "/hooks", &[])]);
        let mut s = common::settings(vec![app.clone()]);
        s.webhook_batch_ms = 50;
        s.queue.driver = "redis".into();
        s.redis.url = redis.url();
        s.validate().unwrap();
        let node = TestNode::start(s).await;
        let mut c = node.client(&app.key).await;
        c.subscribe("cache-q").await;
        let evs = wait_events(&server, "/hooks", 2, Duration::from_secs(3)).await;
        // Unrelated events carry no order (the queue promises none).
        let mut got = names(&evs);
        got.sort();
        assert_eq!(got, vec!["cache_miss", "channel_occupied"]);
        // The queue lives in Redis: its id counter exists there.
        let seq = {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
            conn.write_all(b"GET sockudo:queue:{webhooks}:seq\r\n")
                .unwrap();
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap();
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            reply
                .lines()
                .nth(1)
                .and_then(|l| l.parse::<i64>().ok())
                .unwrap_or(0)
        };
        assert!(seq >= 1);
    }
}
