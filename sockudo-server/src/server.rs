//! Assembling and running a node: the router, health endpoints, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use sockudo_core::adapter::LocalAdapter;
use sockudo_core::app::StaticAppManager;
use sockudo_core::cache::MemoryCache;
use tokio::net::TcpListener;

use crate::config::NodeSettings;
use crate::node::Node;
use crate::ws::{ws_fallback, ws_handler};

/// Build a node from resolved settings, with the backends they name.
pub fn build_node(settings: NodeSettings) -> Arc<Node> {
    let apps = Arc::new(StaticAppManager::new(settings.apps.clone()));
    let cache = Arc::new(MemoryCache::new());
    spawn_cache_purger(&cache);
    Node::new(settings, apps, Arc::new(LocalAdapter::new()), cache)
}

fn spawn_cache_purger(cache: &Arc<MemoryCache>) {
    let weak = Arc::downgrade(cache);
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(c) => {
                    c.purge_expired();
                }
                None => return,
            }
        }
    });
}

/// Everything the node serves on its main port: `GET /app/{key}` (WebSocket), the Pusher HTTP
/// API under `/apps/...`, `GET /health` and `GET /ready`. Mount it in your own axum app with
/// `Router::merge` or `Router::nest`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/app/{key}", get(ws_handler))
        .route("/health", get(|| async { "OK" }))
        .route("/ready", get(ready))
        .fallback(ws_fallback)
        .with_state(Arc::clone(&node))
        .merge(crate::http::api_router(node))
}

async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    if node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".into());
    }
    if !node.adapter.is_healthy() {
        return (StatusCode::SERVICE_UNAVAILABLE, "adapter unavailable".into());
    }
    if let Err(e) = node.cache.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("cache unavailable: {e}"));
    }
    (StatusCode::OK, "ready".into())
}

/// Serve `node` on `listener` until `shutdown` resolves, then drain: unready at once, new
/// upgrades refused, existing sockets kept for the grace period (or until they are gone),
/// then closed with 4200.
pub async fn serve(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let app = router(Arc::clone(&node));
    let drain_node = Arc::clone(&node);
    let stopped = tokio_util::sync::CancellationToken::new();
    let stop_http = stopped.clone();
    let drainer = tokio::spawn(async move {
        shutdown.await;
        drain(&drain_node).await;
        stop_http.cancel();
    });
    let result = axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
    drainer.abort();
    result
}

/// The drain sequence, usable without [`serve`] by apps that run their own server.
pub async fn drain(node: &Node) {
    node.start_draining();
    tracing::info!(connections = node.total_connections(), grace_secs = node.settings.shutdown_grace_period, "draining");
    let grace = Duration::from_secs(node.settings.shutdown_grace_period);
    let deadline = tokio::time::Instant::now() + grace;
    while node.total_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.close_all();
    // Give connection tasks time to send their 4200 close frames.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while node.total_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("drained");
}
