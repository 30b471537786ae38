//! The Pusher HTTP API (PROTOCOL.md §5), behind the core's API-auth layer.
//!
//! Handlers receive the authenticated app and the already-read body from the layer's request
//! extensions, so signature checking exists once, in `sockudo_core::layers`.

mod channels;
mod error;
mod events;
mod users;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use sockudo_core::layers::api_auth::ApiAuthLayer;


use crate::node::Node;

/// The API routes, each protected by [`ApiAuthLayer`].
pub fn api_router(node: Arc<Node>) -> Router {
    let auth = ApiAuthLayer::new(Arc::clone(&node.apps));
    Router::new()
        .route("/apps/{app_id}/events", post(events::trigger))
        .route("/apps/{app_id}/batch_events", post(events::trigger_batch))
        .route("/apps/{app_id}/channels", get(channels::list))
        .route("/apps/{app_id}/channels/{channel}", get(channels::show))
        .route("/apps/{app_id}/channels/{channel}/users", get(users::list))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(users::terminate))
        .route_layer(auth)
        .with_state(node)
}
