//! Serving the node inside your own axum app, under a path prefix.
//!
//! Two kinds of client reach a mounted node, and they see paths differently:
//! - pusher-js and other WebSocket clients take a path option (`wsPath: '/realtime'`), so the
//!   WebSocket endpoint lives under the prefix (`/realtime/app/{key}`);
//! - the official server SDKs (the `pusher` Node package and its siblings) have no path
//!   option: they always call `/apps/{id}/…` on the host and port they are given, and sign
//!   that path.
//!
//! [`mount`] therefore nests the node's router under the prefix and also answers the Pusher
//! HTTP API at the root (`/apps/{id}/…`), so both work unmodified. Signatures over the
//! prefixed path (`/realtime/apps/{id}/…`) are accepted too, for clients that do take a path.

use std::sync::Arc;

use axum::Router;

use crate::node::Node;
use crate::server::{router_with, RouterOptions};

/// `app` with the node under `prefix` (WebSocket endpoint, Pusher HTTP API, health and
/// readiness) and the Pusher HTTP API also at the root, for the server SDKs.
///
/// ```no_run
/// # fn demo(node: std::sync::Arc<sockudo_server::Node>) -> axum::Router {
/// let my_app = axum::Router::new().route("/", axum::routing::get(|| async { "my app" }));
/// // pusher-js: { wsHost, wsPort, wsPath: '/realtime' }
/// // pusher (Node SDK): { appId, key, secret, host, port } — nothing else to change
/// sockudo_server::mount(my_app, "/realtime", node)
/// # }
/// ```
///
/// # Panics
/// As axum does when building routes: when `prefix` is empty, `/` or does not start with
/// `/`, or when `app` already has a route under `/apps/` (choose [`router_with`] and your
/// own layout then).
pub fn mount(app: Router, prefix: &'static str, node: Arc<Node>) -> Router {
    let realtime = router_with(
        Arc::clone(&node),
        RouterOptions {
            api_path_prefix: Some(prefix),
        },
    );
    app.nest(prefix, realtime)
        .merge(crate::http::api_router(node))
}
