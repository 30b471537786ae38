//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sockudo_core::adapter::{AdapterError, ClusterQuery};
use sockudo_core::app::App;
use sockudo_core::channel::ChannelName;
use sockudo_core::layers::api_auth::{AuthenticatedApp, RequestBody};
use sockudo_core::layers::idempotency::{
    claim_item, release_item, validate_item_key, Fingerprint, ItemClaim, BODY_KEY_FIELD,
};
use sockudo_core::layers::json_error;

use super::error::{bad_request, ApiError};
use crate::node::Node;
use crate::publish::{
    keyed_message_id, publish_event, EventToPublish, Published, MAX_MESSAGE_ID_LEN,
};

#[derive(Debug, Deserialize)]
struct EventRequest {
    name: Option<String>,
    data: Option<Box<RawValue>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
    /// V2: the publisher's message id; a retry with the same id within the dedup window is
    /// the same message (one serial).
    message_id: Option<String>,
    /// V2: opaque metadata delivered to V2 connections only.
    extras: Option<Box<RawValue>>,
    /// The idempotency key (validated by the idempotency layer, or per batch item). A keyed
    /// publish without a `message_id` takes one derived from the key, so that a repeat of it
    /// (a retry after a crash, a batch item published again) is one message everywhere.
    idempotency_key: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct BatchRequest {
    batch: Vec<EventRequest>,
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
        for attr in info
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
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
    message_id: Option<&'a str>,
    extras: Option<&'a RawValue>,
}

fn prepare<'a>(app: &App, req: &'a EventRequest) -> Result<Prepared<'a>, ApiError> {
    let name = req
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_request("missing event name"))?;
    if name.len() > app.max_event_name_length {
        return Err(bad_request(format!(
            "event name is longer than {} characters",
            app.max_event_name_length
        )));
    }
    let data = req
        .data
        .as_deref()
        .ok_or_else(|| bad_request("missing data"))?;
    let size = sockudo_core::protocol::data_size::data_size(data.get());
    if size > app.max_event_payload_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "event data is {size} bytes, over the limit of {} bytes",
            app.max_event_payload_bytes
        )));
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
    if names.len() > app.max_event_channels_at_once {
        return Err(bad_request(format!(
            "at most {} channels per event",
            app.max_event_channels_at_once
        )));
    }
    let channels = names
        .into_iter()
        .map(|n| {
            ChannelName::parse(n).map_err(|e| bad_request(format!("invalid channel {n:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let socket_id = match req.socket_id.as_deref() {
        None | Some("") => None,
        Some(s) if sockudo_core::auth::is_valid_socket_id(s) => Some(Arc::from(s)),
        Some(s) => return Err(bad_request(format!("invalid socket_id {s:?}"))),
    };
    let info = InfoAttrs::parse(req.info.as_deref())?;
    let message_id = match req.message_id.as_deref() {
        None => None,
        Some(m) if !m.is_empty() && m.len() <= MAX_MESSAGE_ID_LEN => Some(m),
        Some(_) => {
            return Err(bad_request(format!(
                "message_id must be 1 to {MAX_MESSAGE_ID_LEN} characters"
            )))
        }
    };
    Ok(Prepared {
        name,
        data,
        channels,
        socket_id,
        info,
        message_id,
        extras: req.extras.as_deref(),
    })
}

/// Publish to every channel of the event at once (each channel's history append and adapter
/// publish are independent round trips); the answer keeps the channels' order. Any failure
/// fails the request with 503: the channels that did publish keep their message (a retry
/// with the same idempotency key or message id repeats them without a second copy).
async fn publish(
    node: &Node,
    app: &App,
    p: &Prepared<'_>,
    key: Option<&str>,
) -> Result<Vec<Published>, ApiError> {
    let derived = key.filter(|_| p.message_id.is_none()).map(keyed_message_id);
    let message_id = p.message_id.or(derived.as_deref());
    let results = futures_util::future::join_all(p.channels.iter().map(|channel| {
        let ev = EventToPublish {
            event: p.name,
            data: p.data,
            user_id: None,
            message_id,
            extras: p.extras,
            except_socket: p.socket_id.as_ref(),
        };
        publish_event(node, &app.id, channel, ev)
    }))
    .await;
    let mut out = Vec::with_capacity(results.len());
    let mut failed = None;
    for (channel, result) in p.channels.iter().zip(results) {
        match result {
            Ok(published) => {
                metrics::counter!(crate::metrics::PUBLISHES_ACCEPTED, "app_id" => app.id.clone(), "source" => "http").increment(1);
                out.push(published);
            }
            Err(e) => {
                metrics::counter!(crate::metrics::PUBLISHES_FAILED, "app_id" => app.id.clone(), "source" => "http").increment(1);
                tracing::warn!(app_id = %app.id, channel = %channel.as_str(), error = %e, "publish failed");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(ApiError::Unavailable(format!("publish failed: {e}"))),
        None => Ok(out),
    }
}

/// With a publisher-given `message_id`, the response says which serial each channel gave it
/// (the original one for a retry), so a publisher can tell a retry from a new message.
fn identity(p: &Prepared<'_>, published: &[Published], out: &mut Map<String, Value>) {
    let Some(mid) = p.message_id else { return };
    out.insert("message_id".into(), mid.into());
    let serials: Map<String, Value> = p
        .channels
        .iter()
        .zip(published)
        .filter_map(|(c, r)| r.serial.map(|s| (c.as_str().to_string(), Value::from(s))))
        .collect();
    if !serials.is_empty() {
        out.insert("serials".into(), Value::Object(serials));
    }
}

/// Attributes of one channel, as `info` asked, cluster-wide.
pub async fn channel_attributes(
    node: &Node,
    app_id: &str,
    channel: &ChannelName<'_>,
    info: InfoAttrs,
) -> Result<Map<String, Value>, ApiError> {
    let mut m = Map::new();
    if info.user_count && channel.is_presence() {
        let members = node
            .adapter
            .presence_members(app_id, channel.as_str())
            .await
            .map_err(unavailable)?;
        m.insert("user_count".into(), members.members.len().into());
    }
    if info.subscription_count {
        m.insert(
            "subscription_count".into(),
            subscription_count(node, app_id, channel.as_str())
                .await?
                .into(),
        );
    }
    Ok(m)
}

/// Connections subscribed to `channel` across the cluster.
pub async fn subscription_count(node: &Node, app_id: &str, channel: &str) -> Result<u64, ApiError> {
    let q = ClusterQuery::SubscriptionCount {
        app_id: app_id.to_owned(),
        channel: channel.to_owned(),
    };
    Ok(node.adapter.query(q).await.map_err(unavailable)?.count())
}

pub fn unavailable(e: AdapterError) -> ApiError {
    ApiError::Unavailable(format!("cluster state unavailable: {e}"))
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

pub async fn trigger(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let req: EventRequest = parse_body(&body)?;
    let p = prepare(&app, &req)?;
    let names: Vec<&str> = p.channels.iter().map(|c| c.as_str()).collect();
    let push = super::push_extras::parse(&node, req.extras.as_deref(), &names)?;
    // The body's key wins over the header's, as in the idempotency layer.
    let key = match &req.idempotency_key {
        Some(Value::String(k)) => Some(k.as_str()),
        _ => headers
            .get("x-idempotency-key")
            .and_then(|v| v.to_str().ok()),
    };
    let published = publish(&node, &app, &p, key).await?;
    let mut out = Map::new();
    identity(&p, &published, &mut out);
    #[cfg(feature = "push")]
    if let Some(push) = push {
        let admitted = super::push_extras::admit(&node, &app.id, push, key).await;
        out.insert("push".into(), admitted);
    }
    #[cfg(not(feature = "push"))]
    let _ = push;
    if p.info.any() {
        let mut channels = Map::new();
        for c in &p.channels {
            channels.insert(
                c.as_str().to_string(),
                Value::Object(channel_attributes(&node, &app.id, c, p.info).await?),
            );
        }
        out.insert("channels".into(), Value::Object(channels));
    }
    Ok(Json(Value::Object(out)))
}

pub async fn trigger_batch(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
) -> Result<Response, ApiError> {
    let req: BatchRequest = parse_body(&body)?;
    if req.batch.is_empty() {
        return Err(bad_request("batch must not be empty"));
    }
    if req.batch.len() > app.max_event_batch_size {
        return Err(bad_request(format!(
            "at most {} events per batch",
            app.max_event_batch_size
        )));
    }
    // Validate every item before publishing any: a batch is refused whole, never half-sent.
    let prepared = req
        .batch
        .iter()
        .map(|r| {
            if r.channels.is_some() {
                return Err(bad_request("batch events take a single channel"));
            }
            if super::push_extras::has_push(r.extras.as_deref()) {
                return Err(bad_request(
                    "extras.push is accepted on POST /events only; use POST push/batch/publish",
                ));
            }
            prepare(&app, r)
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Per-item `idempotency_key`s: claim them all before publishing anything.
    let gates = match gate_batch_items(&node, &app.id, &body, prepared.len()).await? {
        Ok(gates) => gates,
        Err(refusal) => return Ok(refusal),
    };
    for (index, p) in prepared.iter().enumerate() {
        let key = match gates.get(index) {
            Some(ItemGate::Publish(k)) => k.as_deref(),
            // Published before within the TTL, maybe by a node that died before every node
            // had it: publish again under the key's message id, which nodes deliver once.
            Some(ItemGate::Repeat(k)) => Some(k.as_str()),
            None => None,
        };
        if let Err(error) = publish(&node, &app, p, key).await {
            // Items from here on were not published: release their keys so a retry sends them.
            release_item_keys(&node, &app.id, gates.get(index..).unwrap_or_default()).await;
            return Err(error);
        }
    }
    let mut items = Vec::with_capacity(prepared.len());
    for p in &prepared {
        items.push(match p.channels.first() {
            Some(c) if p.info.any() => {
                Value::Object(channel_attributes(&node, &app.id, c, p.info).await?)
            }
            _ => Value::Object(Map::new()),
        });
    }
    Ok(Json(serde_json::json!({ "batch": items })).into_response())
}

/// What to do with one batch item, per its `idempotency_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemGate {
    /// Publish it; `Some(key)`: this request claimed that key (released if not published).
    Publish(Option<String>),
    /// Its key was used, within the TTL, for the same item: published before; repeated
    /// under the key's message id (a no-op wherever it arrived).
    Repeat(String),
}

/// Claim the per-item keys of a batch (docs/protocol.md §7) with the core's `claim_item`: an item
/// whose key was already used for the same item is skipped; one whose key was used for a
/// different item refuses the whole batch with 409, before anything is published (the claims
/// this call made are released). A cache failure refuses the batch with 503 (fail closed).
/// Batches without item keys cost one substring scan.
async fn gate_batch_items(
    node: &Node,
    app_id: &str,
    body: &[u8],
    count: usize,
) -> Result<Result<Vec<ItemGate>, Response>, ApiError> {
    let mut gates = vec![ItemGate::Publish(None); count];
    if !body
        .windows(BODY_KEY_FIELD.len())
        .any(|w| w == BODY_KEY_FIELD.as_bytes())
        && !body.windows(2).any(|w| w == b"\\u")
    {
        return Ok(Ok(gates));
    }
    let value: Value = parse_body(body)?;
    let items = value
        .get("batch")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ttl = Duration::from_secs(node.settings.idempotency_ttl);
    for (index, item) in items.iter().enumerate().take(count) {
        let key = match item.get(BODY_KEY_FIELD) {
            None | Some(Value::Null) => continue,
            Some(Value::String(key)) => key,
            Some(_) => {
                release_item_keys(node, app_id, &gates).await;
                return Err(bad_request(format!(
                    "batch[{index}].idempotency_key must be a string"
                )));
            }
        };
        if let Err(rejection) = validate_item_key(key) {
            release_item_keys(node, app_id, &gates).await;
            return Err(bad_request(format!("batch[{index}]: {rejection}")));
        }
        let claim = claim_item(
            node.cache.as_ref(),
            app_id,
            key,
            &Fingerprint::of_json(item),
            ttl,
        )
        .await;
        match claim {
            Ok(ItemClaim::Claimed) => gates[index] = ItemGate::Publish(Some(key.clone())),
            Ok(ItemClaim::Duplicate) => gates[index] = ItemGate::Repeat(key.clone()),
            Ok(ItemClaim::Conflict) => {
                release_item_keys(node, app_id, &gates).await;
                let message = format!(
                    "batch[{index}].idempotency_key was already used for a different event"
                );
                return Ok(Err(json_error(StatusCode::CONFLICT, &message)));
            }
            Err(error) => {
                tracing::warn!(%error, "idempotency cache failed; refusing the batch");
                release_item_keys(node, app_id, &gates).await;
                return Err(ApiError::Unavailable(
                    "idempotency store unavailable; nothing was published".into(),
                ));
            }
        }
    }
    Ok(Ok(gates))
}

/// Release the item keys these gates claimed (best effort: a failure leaves them to expire).
async fn release_item_keys(node: &Node, app_id: &str, gates: &[ItemGate]) {
    for gate in gates {
        if let ItemGate::Publish(Some(key)) = gate {
            if let Err(error) = release_item(node.cache.as_ref(), app_id, key).await {
                tracing::warn!(%error, "failed to release a batch item's idempotency key");
            }
        }
    }
}
