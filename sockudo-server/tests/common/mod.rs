//! Test harness: an in-process node on a real socket, a small Pusher WebSocket client and a
//! signing HTTP API client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sockudo_core::app::App;
use sockudo_core::auth::{sign_api_request, sign_channel, sign_user};
use sockudo_server::config::NodeSettings;
use sockudo_server::Node;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long to wait for an event that must arrive.
pub const WAIT: Duration = Duration::from_secs(2);
/// How long to watch for an event that must not arrive.
pub const QUIET: Duration = Duration::from_millis(400);

pub const APP_ID: &str = "1";
pub const APP_KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret";

/// The default test app: numeric id, client events on.
pub fn test_app() -> App {
    app(APP_ID, APP_KEY, APP_SECRET)
}

/// An enabled app with client messages on and default limits.
pub fn app(id: &str, key: &str, secret: &str) -> App {
    let mut a = App::new(id, key, secret);
    a.enable_client_messages = true;
    a
}

/// Settings for a test node: loopback, ephemeral port, no drain grace, these apps.
pub fn settings(apps: Vec<App>) -> NodeSettings {
    NodeSettings {
        host: "127.0.0.1".into(),
        port: 0,
        node_id: "test-node".into(),
        shutdown_grace_period: 0,
        metrics_port: 0,
        apps,
        ..NodeSettings::default()
    }
}

/// A node served in-process on `127.0.0.1:0`.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestNode {
    pub async fn start(settings: NodeSettings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let node = sockudo_server::build_node_memory(settings);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sockudo_server::serve(
            listener,
            Arc::clone(&node),
            async move {
                let _ = rx.await;
            },
        ));
        TestNode {
            addr,
            node,
            shutdown: Some(tx),
            task,
        }
    }

    /// A node serving only [`test_app`].
    pub async fn default_app() -> Self {
        Self::start(settings(vec![test_app()])).await
    }

    /// Trigger the serve future's shutdown (drain, then stop).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The usual connection path of an app key.
    pub fn app_path(key: &str) -> String {
        format!("/app/{key}?protocol=7&client=js&version=8.6.0")
    }

    /// Connect (WebSocket handshake only).
    pub async fn connect(&self, path: &str) -> TestClient {
        TestClient::connect(&self.ws_url(path)).await
    }

    /// Connect to `key`'s app and wait for `pusher:connection_established`.
    pub async fn client(&self, key: &str) -> TestClient {
        let mut c = self.connect(&Self::app_path(key)).await;
        c.established().await;
        c
    }

    pub fn api(&self, app: &App) -> Api {
        Api::new(self.addr, app)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown();
        self.task.abort();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Pusher protocol 7 client over a real WebSocket.
pub struct TestClient {
    ws: Ws,
    pub socket_id: String,
    /// Set once a close frame (or the end of the stream) was seen: the close code, if any.
    closed: Option<Option<u16>>,
}

/// Decode a text frame; the `data` of `pusher:`/`pusher_internal:` events is double-encoded.
pub fn decode_frame(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}"));
    let system = v["event"].as_str().is_some_and(|e| {
        [
            "pusher:",
            "pusher_internal:",
            "sockudo:",
            "sockudo_internal:",
        ]
        .iter()
        .any(|p| e.starts_with(p))
    });
    if system {
        if let Some(inner) = v["data"]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        {
            v["data"] = inner;
        }
    }
    v
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

impl TestClient {
    pub async fn connect(url: &str) -> TestClient {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false),
        )
        .await
        .unwrap_or_else(|_| panic!("connect {url}: timed out"))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        TestClient {
            ws,
            socket_id: String::new(),
            closed: None,
        }
    }

    /// Try to connect; the handshake error when the server refuses the upgrade.
    pub async fn try_connect(url: &str) -> Result<TestClient, String> {
        match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((ws, _))) => Ok(TestClient {
                ws,
                socket_id: String::new(),
                closed: None,
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Connect with a tiny socket receive buffer, for a client that does not read.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, path: &str) -> TestClient {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(addr).await.expect("tcp connect");
        let req = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            req,
            MaybeTlsStream::Plain(stream),
            Some(client_config()),
        )
        .await
        .expect("ws handshake");
        TestClient {
            ws,
            socket_id: String::new(),
            closed: None,
        }
    }

    /// Wait for `pusher:connection_established` and remember the socket id.
    pub async fn established(&mut self) -> Value {
        self.established_as("pusher:connection_established").await
    }

    /// The same for either family (`sockudo:connection_established` on V2).
    pub async fn established_as(&mut self, event: &str) -> Value {
        let ev = self.recv_event(event, WAIT).await;
        self.socket_id = ev["data"]["socket_id"]
            .as_str()
            .expect("socket_id")
            .to_owned();
        ev
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_raw(Message::text(v.to_string())).await;
    }

    pub async fn send_raw(&mut self, m: Message) {
        tokio::time::timeout(WAIT, self.ws.send(m))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// Send, tolerating a socket the server already closed.
    pub async fn try_send_raw(&mut self, m: Message) -> bool {
        matches!(
            tokio::time::timeout(WAIT, self.ws.send(m)).await,
            Ok(Ok(()))
        )
    }

    pub fn closed(&self) -> Option<Option<u16>> {
        self.closed
    }

    /// The next text frame within `timeout`: `Ok(None)` on timeout, `Err(code)` once closed.
    pub async fn next_frame(&mut self, timeout: Duration) -> Result<Option<Value>, Option<u16>> {
        if let Some(c) = self.closed {
            return Err(c);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(m) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Some(decode_frame(&t))),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return Err(code);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed = Some(None);
                    return Err(None);
                }
            }
        }
    }

    /// Wait for event `name` (skipping others); `Err` describes why it did not come.
    pub async fn try_recv_event(&mut self, name: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(v)) if v["event"] == name => return Ok(v),
                Ok(Some(v)) => skipped.push(v),
                Ok(None) => {
                    return Err(format!("no {name} within {timeout:?}; skipped {skipped:?}"))
                }
                Err(code) => {
                    return Err(format!(
                        "closed ({code:?}) while waiting for {name}; skipped {skipped:?}"
                    ))
                }
            }
        }
    }

    pub async fn recv_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.try_recv_event(name, timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Assert that no `name` event arrives within `duration` (other events are skipped).
    pub async fn expect_no_event(&mut self, name: &str, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(v)) if v["event"] == name => panic!("unexpected {name}: {v}"),
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Wait for the close frame (skipping events); its code, or `None` when the stream ended
    /// without one. Panics when the socket stays open.
    pub async fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("socket still open after {timeout:?}"),
                Err(code) => return code,
            }
        }
    }

    /// `pusher:ping` → `pusher:pong`: the connection is alive and served.
    pub async fn assert_alive(&mut self) {
        self.send_json(&json!({"event": "pusher:ping", "data": {}}))
            .await;
        let pong = self.recv_event("pusher:pong", WAIT).await;
        assert_eq!(pong["data"], json!({}), "{pong}");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close reply so the server has seen it.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    pub async fn subscribe_raw(&mut self, data: Value) {
        self.send_json(&json!({"event": "pusher:subscribe", "data": data}))
            .await;
    }

    /// Subscribe to a public (or cache) channel and wait for success.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.subscribe_raw(json!({ "channel": channel })).await;
        self.succeeded(channel).await
    }

    pub async fn subscribe_private(&mut self, app: &App, channel: &str) -> Value {
        let auth = sign_channel(&app.key, &app.secret, &self.socket_id, channel, None);
        self.subscribe_raw(json!({ "channel": channel, "auth": auth }))
            .await;
        self.succeeded(channel).await
    }

    /// Subscribe to a presence channel as `user_id` and wait for success.
    pub async fn subscribe_presence(
        &mut self,
        app: &App,
        channel: &str,
        user_id: &str,
        info: Value,
    ) -> Value {
        self.send_presence_subscribe(app, channel, user_id, info)
            .await;
        self.succeeded(channel).await
    }

    pub async fn send_presence_subscribe(
        &mut self,
        app: &App,
        channel: &str,
        user_id: &str,
        info: Value,
    ) {
        let channel_data = json!({ "user_id": user_id, "user_info": info }).to_string();
        let auth = sign_channel(
            &app.key,
            &app.secret,
            &self.socket_id,
            channel,
            Some(&channel_data),
        );
        self.subscribe_raw(
            json!({ "channel": channel, "auth": auth, "channel_data": channel_data }),
        )
        .await;
    }

    async fn succeeded(&mut self, channel: &str) -> Value {
        let ev = self
            .recv_event("pusher_internal:subscription_succeeded", WAIT)
            .await;
        assert_eq!(ev["channel"], channel, "{ev}");
        ev
    }

    /// Sign in as `user_id` and wait for `pusher:signin_success`.
    pub async fn signin(&mut self, app: &App, user_id: &str) -> Value {
        let user_data = json!({ "id": user_id, "name": "Ada" }).to_string();
        let auth = sign_user(&app.key, &app.secret, &self.socket_id, &user_data);
        self.send_json(
            &json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        )
        .await;
        self.recv_event("pusher:signin_success", WAIT).await
    }

    pub async fn client_event(&mut self, channel: &str, event: &str, data: Value) {
        self.send_json(&json!({"event": event, "channel": channel, "data": data}))
            .await;
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A client of the HTTP API that signs its requests as one app.
#[derive(Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl Api {
    pub fn new(addr: SocketAddr, app: &App) -> Self {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            app_id: app.id.clone(),
            key: app.key.clone(),
            secret: app.secret.clone(),
        }
    }

    /// `/apps/{id}{suffix}`.
    pub fn path(&self, suffix: &str) -> String {
        format!("/apps/{}{}", self.app_id, suffix)
    }

    /// The signed query string for a request (timestamp now).
    pub fn sign(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> String {
        sign_api_request(
            &self.key,
            &self.secret,
            method,
            path,
            extra,
            body,
            now_secs(),
        )
    }

    pub async fn get(&self, suffix: &str, extra: &[(&str, &str)]) -> (u16, Value) {
        let path = self.path(suffix);
        let query = self.sign("GET", &path, extra, b"");
        self.raw("GET", &format!("{path}?{query}"), Vec::new())
            .await
    }

    pub async fn post(&self, suffix: &str, body: &Value) -> (u16, Value) {
        let path = self.path(suffix);
        let body = body.to_string().into_bytes();
        let query = self.sign("POST", &path, &[], &body);
        self.raw("POST", &format!("{path}?{query}"), body).await
    }

    /// `POST /apps/{id}/events` with `body`.
    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        self.post("/events", body).await
    }

    /// Publish `data` as event `name` on `channel`, asserting 200.
    pub async fn trigger(&self, channel: &str, name: &str, data: &str) {
        let (status, body) = self
            .publish(&json!({"name": name, "channel": channel, "data": data}))
            .await;
        assert_eq!(status, 200, "publish failed: {body}");
    }

    /// Send exactly this request (no signing): the status and the body as JSON (a JSON
    /// string holding the text when the body is not JSON).
    pub async fn raw(&self, method: &str, path_and_query: &str, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path_and_query);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let fut = self
            .client
            .request(method, &url)
            .header("content-type", "application/json")
            .body(body)
            .send();
        let resp = tokio::time::timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| panic!("{url}: timed out"))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }
}

/// Assert a Pusher JSON error body: `{"error": "...", "status": n}` with a message.
pub fn assert_json_error(status: u16, body: &Value) {
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error body without message: {body}"
    );
    assert_eq!(body["status"], status, "{body}");
}
