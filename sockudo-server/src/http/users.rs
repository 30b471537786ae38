//! `GET /apps/{id}/channels/{name}/users` and `POST /apps/{id}/users/{user}/terminate_connections`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::Value;
use sockudo_core::adapter::ControlMessage;
use sockudo_core::channel::ChannelName;
use sockudo_core::layers::api_auth::AuthenticatedApp;

use super::error::{bad_request, ApiError};
use super::events::unavailable;
use crate::node::Node;

pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app_id, channel)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let name = ChannelName::parse(&channel)
        .map_err(|e| bad_request(format!("invalid channel {channel:?}: {e}")))?;
    if !name.is_presence() {
        return Err(bad_request(
            "users are only available for presence channels",
        ));
    }
    let members = node
        .adapter
        .presence_members(&app.id, name.as_str())
        .await
        .map_err(unavailable)?;
    let users: Vec<Value> = members
        .members
        .iter()
        .map(|m| serde_json::json!({ "id": m.user_id }))
        .collect();
    Ok(Json(serde_json::json!({ "users": users })))
}

pub async fn terminate(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app_id, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if user_id.is_empty() {
        return Err(bad_request("missing user id"));
    }
    let cmd = ControlMessage::TerminateUser {
        app_id: app.id.clone(),
        user_id,
    };
    node.adapter.control(cmd).await.map_err(unavailable)?;
    Ok(Json(serde_json::json!({})))
}
