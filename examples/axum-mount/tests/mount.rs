//! The example's router served on a real port: WebSocket and Pusher HTTP API through the
//! `/realtime` prefix, the app's own routes, and the core layers on the app's own route.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum_mount::{AdminPublished, Todo, ADMIN_BURST, ADMIN_PUBLISH_PATH};
use serde_json::{json, Value};
use sockudo_core::auth::sign_api_request;
use sockudo_testkit::{test_app, test_settings, TestClient, APP_ID, APP_KEY, APP_SECRET};

const WAIT: Duration = Duration::from_secs(3);

/// Serve the example's whole app on `127.0.0.1:0`, as `main.rs` does.
async fn start() -> SocketAddr {
    let node = sockudo_server::build_node_memory(test_settings(vec![test_app()]));
    let app = axum_mount::app(std::sync::Arc::clone(&node));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    node.mark_serving();
    tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
    addr
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request signed the Pusher way over `path`: the full path, prefix included.
async fn signed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    secret: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = sign_api_request(APP_KEY, secret, method, path, &[], body.as_bytes(), now);
    let url = format!("http://{addr}{path}?{query}");
    let http = reqwest::Client::new();
    let mut req = match method {
        "POST" => http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned()),
        _ => http.get(url),
    };
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_http_api_work_through_the_prefix() {
    let addr = start().await;

    // What pusher-js with `wsPath: '/realtime'` opens.
    let url = format!("ws://{addr}/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0");
    let mut client = TestClient::connect(&url).await.unwrap();
    client.subscribe("orders").await.unwrap();

    // Publish through the prefixed API, signed over the full path.
    let path = format!("/realtime/apps/{APP_ID}/events");
    let body = json!({ "name": "created", "channel": "orders", "data": "{\"id\":7}" }).to_string();
    let reply = signed(addr, "POST", &path, &body, APP_SECRET, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let event = client.recv_event("created", WAIT).await.unwrap();
    assert_eq!(event.channel.as_deref(), Some("orders"));
    assert_eq!(event.data_json(), json!({ "id": 7 }));

    // The other API routes are there too, and a wrong secret is refused.
    let reply = signed(
        addr,
        "GET",
        &format!("/realtime/apps/{APP_ID}/channels"),
        "",
        APP_SECRET,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.json()["channels"].get("orders").is_some(),
        "{}",
        reply.body
    );
    let reply = signed(addr, "POST", &path, &body, "not-the-secret", &[]).await;
    assert_eq!(reply.status, 401, "{}", reply.body);

    // Health and readiness are under the prefix; only the HTTP API is also at the root.
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{addr}/realtime/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = http
        .get(format!("http://{addr}/realtime/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "{:?}", ready.text().await);
    let root_api = signed(
        addr,
        "POST",
        &format!("/apps/{APP_ID}/events"),
        &body,
        APP_SECRET,
        &[],
    )
    .await;
    // The official server SDKs have no path option: the API answers at the root too.
    assert_eq!(root_api.status, 200, "{}", root_api.body);

    // A WebSocket on an unknown path under the prefix is refused the Pusher way (4005).
    let refused = TestClient::connect(&format!("ws://{addr}/realtime/nowhere?protocol=7"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("4005")),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_own_routes_and_state_are_untouched() {
    let addr = start().await;
    let http = reqwest::Client::new();

    let index = http.get(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(index.status().as_u16(), 200);
    assert!(index.text().await.unwrap().contains("todo app"));

    let todos: Vec<Todo> = http
        .get(format!("http://{addr}/api/todos"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(todos.len(), 2);

    // A new todo goes into the app's state and out on the `todos` channel.
    let url = format!("ws://{addr}/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0");
    let mut client = TestClient::connect(&url).await.unwrap();
    client.subscribe(axum_mount::TODOS_CHANNEL).await.unwrap();
    let created = http
        .post(format!("http://{addr}/api/todos"))
        .json(&json!({ "title": "ship it" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Todo = created.json().await.unwrap();
    assert_eq!((created.id, created.title.as_str()), (3, "ship it"));
    let event = client.recv_event("todo-created", WAIT).await.unwrap();
    assert_eq!(event.data_json(), serde_json::to_value(&created).unwrap());

    let todos: Vec<Todo> = http
        .get(format!("http://{addr}/api/todos"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(todos.last(), Some(&created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_layers_protect_the_apps_own_route() {
    let addr = start().await;
    let url = format!("ws://{addr}/realtime/app/{APP_KEY}?protocol=7&client=js&version=8.4.0");
    let mut client = TestClient::connect(&url).await.unwrap();
    client.subscribe("alerts").await.unwrap();
    let body = |n: u32| {
        json!({ "channel": "alerts", "event": "alert", "data": format!("{n}") }).to_string()
    };

    // API auth: a bad signature never reaches the handler (and spends no rate budget).
    for _ in 0..5 {
        let reply = signed(
            addr,
            "POST",
            ADMIN_PUBLISH_PATH,
            &body(0),
            "not-the-secret",
            &[],
        )
        .await;
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert!(reply.header("x-ratelimit-limit").is_none());
    }
    client
        .expect_no_event("alert", Duration::from_millis(200))
        .await
        .unwrap();

    // The burst passes; the first request carries an idempotency key.
    let burst = ADMIN_BURST.get();
    let first = signed(
        addr,
        "POST",
        ADMIN_PUBLISH_PATH,
        &body(1),
        APP_SECRET,
        &[("x-idempotency-key", "publish-1")],
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(
        first.header("x-ratelimit-limit"),
        Some(burst.to_string().as_str())
    );
    let published: AdminPublished = serde_json::from_str(&first.body).unwrap();
    assert_eq!(
        (published.app_id.as_str(), published.channel.as_str()),
        (APP_ID, "alerts")
    );
    assert_eq!(
        client.recv_event("alert", WAIT).await.unwrap().data_str(),
        Some("1")
    );
    for n in 2..=burst {
        let reply = signed(addr, "POST", ADMIN_PUBLISH_PATH, &body(n), APP_SECRET, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            client.recv_event("alert", WAIT).await.unwrap().data_str(),
            Some(n.to_string().as_str())
        );
    }

    // Rate limit: the next one is 429 with Retry-After, and nothing is published.
    let limited = signed(addr, "POST", ADMIN_PUBLISH_PATH, &body(99), APP_SECRET, &[]).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));

    // Idempotency: the retry of the first request is replayed (same answer, same serial), is
    // not published again, and spends no budget although the budget is gone.
    let retry = signed(
        addr,
        "POST",
        ADMIN_PUBLISH_PATH,
        &body(1),
        APP_SECRET,
        &[("x-idempotency-key", "publish-1")],
    )
    .await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.header("x-idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    client
        .expect_no_event("alert", Duration::from_millis(300))
        .await
        .unwrap();

    // The same key with another payload is a conflict.
    let conflict = signed(
        addr,
        "POST",
        ADMIN_PUBLISH_PATH,
        &body(2),
        APP_SECRET,
        &[("x-idempotency-key", "publish-1")],
    )
    .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
}
