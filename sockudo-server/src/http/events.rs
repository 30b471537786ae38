//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sockudo_core::adapter::{AdapterError, ClusterQuery};
use sockudo_core::app::App;
use sockudo_core::channel::ChannelName;
use sockudo_core::layers::api_auth::{AuthenticatedApp, RequestBody};
use sockudo_core::protocol::OutboundFrame;

use super::error::{bad_request, ApiError};
use crate::node::Node;
use crate::publish::publish_frame;

/// Channels one publish may name.
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Events one batch may hold.
pub const MAX_BATCH_EVENTS: usize = 10;
const MAX_EVENT_NAME_LEN: usize = 200;

#[derive(Debug, Deserialize)]
struct EventRequest {
    name: Option<String>,
    data: Option<Box<RawValue>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    batch: Vec<EventRequest>,
}

fn valid_socket_id(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// Requested `info` attributes.
#[derive(Debug, Default, Clone, Copy)]
pub struct InfoAttrs {
    pub user_count: bool,
    pub subscription_count: bool,
    pub cache: bool,
}

impl InfoAttrs {
    pub fn parse(info: Option<&str>) -> Result<Self, ApiError> {
        let mut out = InfoAttrs::default();
        for attr in info.unwrap_or("").split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match attr {
                "user_count" => out.user_count = true,
                "subscription_count" => out.subscription_count = true,
                "cache" => out.cache = true,
                other => return Err(bad_request(format!("unknown info attribute {other:?}"))),
            }
        }
        Ok(out)
    }

    pub fn any(&self) -> bool {
        self.user_count || self.subscription_count || self.cache
    }
}

/// A validated event, ready to publish.
struct Prepared<'a> {
    name: &'a str,
    data: &'a RawValue,
    channels: Vec<ChannelName<'a>>,
    socket_id: Option<Arc<str>>,
    info: InfoAttrs,
}

fn prepare<'a>(app: &App, req: &'a EventRequest) -> Result<Prepared<'a>, ApiError> {
    let name = req.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| bad_request("missing event name"))?;
    if name.len() > MAX_EVENT_NAME_LEN {
        return Err(bad_request("event name is longer than 200 characters"));
    }
    let data = req.data.as_deref().ok_or_else(|| bad_request("missing data"))?;
    let size = match serde_json::from_str::<String>(data.get()) {
        Ok(s) => s.len(),
        Err(_) => data.get().len(),
    };
    if size > app.max_event_payload_bytes {
        return Err(ApiError::PayloadTooLarge(format!("event data is {size} bytes, over the limit of {} bytes", app.max_event_payload_bytes)));
    }
    let names: Vec<&str> = match (&req.channel, &req.channels) {
        (Some(c), None) => vec![c.as_str()],
        (None, Some(cs)) => cs.iter().map(String::as_str).collect(),
        (Some(_), Some(_)) => return Err(bad_request("give either channel or channels, not both")),
        (None, None) => return Err(bad_request("missing channel or channels")),
    };
    if names.is_empty() {
        return Err(bad_request("channels must not be empty"));
    }
    if names.len() > MAX_CHANNELS_PER_EVENT {
        return Err(bad_request(format!("at most {MAX_CHANNELS_PER_EVENT} channels per event")));
    }
    let channels = names
        .into_iter()
        .map(|n| ChannelName::parse(n).map_err(|e| bad_request(format!("invalid channel {n:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let socket_id = match req.socket_id.as_deref() {
        None | Some("") => None,
        Some(s) if valid_socket_id(s) => Some(Arc::from(s)),
        Some(s) => return Err(bad_request(format!("invalid socket_id {s:?}"))),
    };
    let info = InfoAttrs::parse(req.info.as_deref())?;
    Ok(Prepared { name, data, channels, socket_id, info })
}

async fn publish(node: &Node, app: &App, p: &Prepared<'_>) -> Result<(), ApiError> {
    for channel in &p.channels {
        let frame = OutboundFrame::event(p.name, channel.as_str(), p.data, None);
        publish_frame(node, &app.id, channel, frame, p.socket_id.clone())
            .await
            .map_err(|e| ApiError::Unavailable(format!("publish failed: {e}")))?;
    }
    Ok(())
}

/// Attributes of one channel, as `info` asked, cluster-wide.
pub async fn channel_attributes(node: &Node, app_id: &str, channel: &ChannelName<'_>, info: InfoAttrs) -> Result<Map<String, Value>, ApiError> {
    let mut m = Map::new();
    if info.user_count && channel.is_presence() {
        let members = node.adapter.presence_members(app_id, channel.as_str()).await.map_err(unavailable)?;
        m.insert("user_count".into(), members.len().into());
    }
    if info.subscription_count {
        m.insert("subscription_count".into(), subscription_count(node, app_id, channel.as_str()).await?.into());
    }
    Ok(m)
}

/// Connections subscribed to `channel` across the cluster.
pub async fn subscription_count(node: &Node, app_id: &str, channel: &str) -> Result<u64, ApiError> {
    let q = ClusterQuery::SubscriptionCount { app_id: app_id.to_owned(), channel: channel.to_owned() };
    Ok(node.adapter.query(q).await.map_err(unavailable)?.count())
}

pub fn unavailable(e: AdapterError) -> ApiError {
    ApiError::Unavailable(format!("cluster state unavailable: {e}"))
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

pub async fn trigger(State(node): State<Arc<Node>>, Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>, Extension(RequestBody(body)): Extension<RequestBody>) -> Result<Json<Value>, ApiError> {
    let req: EventRequest = parse_body(&body)?;
    let p = prepare(&app, &req)?;
    publish(&node, &app, &p).await?;
    if !p.info.any() {
        return Ok(Json(Value::Object(Map::new())));
    }
    let mut channels = Map::new();
    for c in &p.channels {
        channels.insert(c.as_str().to_string(), Value::Object(channel_attributes(&node, &app.id, c, p.info).await?));
    }
    Ok(Json(serde_json::json!({ "channels": channels })))
}

pub async fn trigger_batch(State(node): State<Arc<Node>>, Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>, Extension(RequestBody(body)): Extension<RequestBody>) -> Result<Json<Value>, ApiError> {
    let req: BatchRequest = parse_body(&body)?;
    if req.batch.is_empty() {
        return Err(bad_request("batch must not be empty"));
    }
    if req.batch.len() > MAX_BATCH_EVENTS {
        return Err(bad_request(format!("at most {MAX_BATCH_EVENTS} events per batch")));
    }
    // Validate every item before publishing any: a batch is refused whole, never half-sent.
    let prepared = req.batch.iter().map(|r| {
        if r.channels.is_some() {
            return Err(bad_request("batch events take a single channel"));
        }
        prepare(&app, r)
    }).collect::<Result<Vec<_>, _>>()?;
    for p in &prepared {
        publish(&node, &app, p).await?;
    }
    let mut items = Vec::with_capacity(prepared.len());
    for p in &prepared {
        items.push(match p.channels.first() {
            Some(c) if p.info.any() => Value::Object(channel_attributes(&node, &app.id, c, p.info).await?),
            _ => Value::Object(Map::new()),
        });
    }
    Ok(Json(serde_json::json!({ "batch": items })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids() {
        assert!(valid_socket_id("123.456"));
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "1.2a"] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
