//! Push test harness: a node served on loopback (built by `build_node`, so the configured
//! store and queue are used), a signing API client, a private `redis-server`, provider
//! credential files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sockudo_core::app::App;
use sockudo_core::auth::sign_api_request;
use sockudo_server::config::NodeSettings;
use sockudo_server::Node;
use tokio::sync::oneshot;

pub use crate::redis_server::RedisServer;

pub const APP_ID: &str = "push-app";
pub const KEY: &str = "push-key";
pub const SECRET: &str = "push-secret";
/// Long enough for any pipeline step in these tests.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn app() -> App {
    App::new(APP_ID, KEY, SECRET)
}

/// Where the node keeps push state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

/// Node settings with push on and a Web Push key (the cheapest provider to configure).
pub fn settings() -> NodeSettings {
    let mut s = NodeSettings {
        host: "127.0.0.1".into(),
        port: 0,
        node_id: format!("push-{:08x}", rand::random::<u32>()),
        shutdown_grace_period: 0,
        metrics_port: 0,
        apps: vec![app()],
        ..NodeSettings::default()
    };
    s.push.enabled = true;
    s.push.webpush_vapid_private_key = vapid_key().0;
    s.push.webpush_vapid_contact = "mailto:ops@example.invalid".into();
    s.push.lease_secs = 5;
    s
}

/// A VAPID key pair: (private scalar, public point), base64url.
pub fn vapid_key() -> (String, String) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let key = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
    let public = key.public_key().to_encoded_point(false);
    (b64(&key.to_bytes()), b64(public.as_bytes()))
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

/// A node serving on `127.0.0.1:0`, stopped on drop.
pub struct PushNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
}

impl PushNode {
    pub async fn start(settings: NodeSettings) -> PushNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = sockudo_server::build_node(settings).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(sockudo_server::serve(
            listener,
            Arc::clone(&node),
            async move {
                let _ = rx.await;
            },
        ));
        PushNode {
            addr,
            node,
            stop: Some(tx),
        }
    }

    /// A node on `backend` (a fresh Redis must be passed for [`Backend::Redis`]).
    pub async fn on(
        backend: Backend,
        redis: Option<&RedisServer>,
        f: impl FnOnce(&mut NodeSettings),
    ) -> PushNode {
        let mut s = settings();
        if backend == Backend::Redis {
            s.queue.driver = "redis".into();
            s.redis.url = redis.expect("a redis for the redis backend").url();
        }
        f(&mut s);
        PushNode::start(s).await
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for PushNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A signing client of the push API of [`app`].
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// A signed request to `/apps/{id}/push{suffix}` (or to `suffix` itself when it starts
    /// with `/apps/`): status, headers, JSON body.
    pub async fn call(
        &self,
        method: &str,
        suffix: &str,
        params: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        // An absolute `/apps/…` path reaches the rest of the API (e.g. `/events`).
        let path = if suffix.starts_with("/apps/") {
            suffix.to_owned()
        } else {
            format!("/apps/{APP_ID}/push{suffix}")
        };
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let query = sign_api_request(KEY, SECRET, method, &path, params, &body, now);
        let url = format!("{}{path}?{query}", self.base);
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.timeout(Duration::from_secs(30)).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }

    pub async fn get(&self, suffix: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let (s, _, b) = self.call("GET", suffix, params, None, &[]).await;
        (s, b)
    }

    pub async fn post(&self, suffix: &str, body: &Value) -> (u16, Value) {
        let (s, _, b) = self.call("POST", suffix, &[], Some(body), &[]).await;
        (s, b)
    }

    pub async fn delete(&self, suffix: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let (s, _, b) = self.call("DELETE", suffix, params, None, &[]).await;
        (s, b)
    }

    /// Publish, asserting 202; the publish id.
    pub async fn publish(&self, body: &Value) -> String {
        let (status, resp) = self.post("/publish", body).await;
        assert_eq!(status, 202, "{resp}");
        resp["publishId"].as_str().unwrap().to_owned()
    }

    /// Poll the status until `done` holds for it (or fail after [`WAIT`]).
    pub async fn wait_status(&self, publish_id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (code, st) = self
                .get(&format!("/publish/{publish_id}/status"), &[])
                .await;
            if code == 200 && done(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "status never got there: {code} {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the publish reaches a terminal state.
    pub async fn wait_terminal(&self, publish_id: &str) -> Value {
        self.wait_status(publish_id, |s| {
            !matches!(
                s["state"].as_str(),
                Some("queued" | "planning" | "dispatching" | "throttled")
            )
        })
        .await
    }

    /// Register a device of `transport` (`gcm` / `apns` with a token, or a web recipient).
    pub async fn register(&self, id: &str, client: Option<&str>, recipient: Value) {
        let mut d = json!({"id": id, "formFactor": "phone", "platform": "android", "push": {"recipient": recipient}});
        if let Some(c) = client {
            d["clientId"] = json!(c);
        }
        let (status, body) = self.post("/deviceRegistrations", &d).await;
        assert_eq!(status, 201, "{body}");
    }
}

/// A file in a fresh temporary directory, removed on drop.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl TempFile {
    pub fn with(name: &str, contents: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("sockudo-push-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { path }
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A node on its own runtime and thread, so it can be killed: [`ThreadNode::kill`] drops
/// the runtime with every task mid-flight (sends, claims, leases), as a crash would.
pub struct ThreadNode {
    pub addr: SocketAddr,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadNode {
    pub fn start(settings: NodeSettings) -> ThreadNode {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let node = sockudo_server::build_node(settings).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::spawn(sockudo_server::serve(
                    listener,
                    node,
                    std::future::pending::<()>(),
                ));
                let _ = killed.await;
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        ThreadNode {
            addr,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
            http: reqwest::Client::new(),
        }
    }

    /// Stop the node abruptly.
    pub fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ThreadNode {
    fn drop(&mut self) {
        self.kill();
    }
}
