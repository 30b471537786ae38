//! `GET /apps/{id}/channels` and `GET /apps/{id}/channels/{name}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde_json::{Map, Value};
use sockudo_core::channel::ChannelName;
use sockudo_core::layers::api_auth::AuthenticatedApp;

use super::error::{bad_request, ApiError};
use super::events::{channel_attributes, subscription_count, unavailable, InfoAttrs};
use crate::node::Node;
use crate::publish::{cache_channel_key, decode_cached};
use sockudo_core::adapter::{ClusterAnswer, ClusterQuery};

pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let prefix = q
        .get("filter_by_prefix")
        .map(String::as_str)
        .filter(|p| !p.is_empty());
    let info = InfoAttrs::parse(q.get("info").map(String::as_str))?;
    if info.subscription_count || info.cache {
        return Err(bad_request(
            "only user_count may be requested when listing channels",
        ));
    }
    if info.user_count && !prefix.is_some_and(|p| p.starts_with("presence-")) {
        return Err(bad_request(
            "user_count requires filter_by_prefix=presence-",
        ));
    }
    let q = ClusterQuery::Channels {
        app_id: app.id.clone(),
        prefix: prefix.map(str::to_owned),
    };
    let names = match node.adapter.query(q).await.map_err(unavailable)? {
        ClusterAnswer::Channels { channels } => channels,
        ClusterAnswer::Count { .. } => Vec::new(),
    };
    let mut channels = Map::new();
    for (name, _) in names {
        let attrs = match ChannelName::parse(&name) {
            Ok(c) => channel_attributes(&node, &app.id, &c, info).await?,
            Err(_) => Map::new(),
        };
        channels.insert(name, Value::Object(attrs));
    }
    Ok(Json(serde_json::json!({ "channels": channels })))
}

pub async fn show(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app_id, channel)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = ChannelName::parse(&channel)
        .map_err(|e| bad_request(format!("invalid channel {channel:?}: {e}")))?;
    let info = InfoAttrs::parse(q.get("info").map(String::as_str))?;
    if info.user_count && !name.is_presence() {
        return Err(bad_request(
            "user_count is only available for presence channels",
        ));
    }
    if info.cache && !name.is_cache() {
        return Err(bad_request("cache is only available for cache channels"));
    }
    let subs = subscription_count(&node, &app.id, name.as_str()).await?;
    let mut out = Map::new();
    out.insert("occupied".into(), Value::Bool(subs > 0));
    out.extend(channel_attributes(&node, &app.id, &name, info).await?);
    if info.cache {
        let cached = node
            .cache
            .get(&cache_channel_key(&app.id, name.as_str()))
            .await
            .map_err(|e| ApiError::Unavailable(format!("cache unavailable: {e}")))?;
        if let Some((stored_ms, frame)) = cached.as_deref().and_then(decode_cached) {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let ttl = node
                .settings
                .cache_channel_ttl
                .saturating_sub(now_ms.saturating_sub(stored_ms) / 1000);
            let data = serde_json::from_slice::<Value>(frame)
                .ok()
                .and_then(|v| v.get("data").cloned())
                .unwrap_or(Value::Null);
            out.insert(
                "cache".into(),
                serde_json::json!({ "data": data, "ttl": ttl }),
            );
        }
    }
    Ok(Json(Value::Object(out)))
}
