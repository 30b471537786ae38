//! Push channel subscriptions: by device or by client; list by channel or subscriber; delete
//! one pair, a channel or a subscriber's; list channels.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use sockudo_core::layers::api_auth::{AuthenticatedApp, RequestBody};
use sockudo_core::push::Subscriber;

use super::{page, page_params, push_of};
use crate::node::Node;
use crate::push::model::{check_channel, check_id};
use crate::push::{Push, PushError};

/// Pages read when checking one (channel, subscriber) pair: a subscriber has few channels.
const PAIR_PAGES: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscriptionBody {
    channel: String,
    #[serde(default, alias = "device_id")]
    device_id: Option<String>,
    #[serde(default, alias = "client_id")]
    client_id: Option<String>,
}

fn show(channel: &str, who: &Subscriber) -> Value {
    match who {
        Subscriber::Device(d) => json!({"channel": channel, "deviceId": d}),
        Subscriber::Client(c) => json!({"channel": channel, "clientId": c}),
    }
}

/// The subscriber a query or body names (`deviceId` xor `clientId`).
fn subscriber(
    device: Option<&String>,
    client: Option<&String>,
) -> Result<Option<Subscriber>, PushError> {
    match (
        device.filter(|d| !d.is_empty()),
        client.filter(|c| !c.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(PushError::BadRequest(
            "give deviceId or clientId, not both".into(),
        )),
        (Some(d), None) => check_id("deviceId", d).map(|()| Some(Subscriber::Device(d.clone()))),
        (None, Some(c)) => check_id("clientId", c).map(|()| Some(Subscriber::Client(c.clone()))),
        (None, None) => Ok(None),
    }
}

/// `POST channelSubscriptions`: subscribe a device or a client to a channel (201).
pub async fn create(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Extension(RequestBody(body)): Extension<RequestBody>,
) -> Result<(StatusCode, Json<Value>), PushError> {
    let push = push_of(&node)?;
    let b: SubscriptionBody = serde_json::from_slice(&body)
        .map_err(|e| PushError::BadRequest(format!("invalid subscription: {e}")))?;
    check_channel(&b.channel)?;
    let Some(who) = subscriber(b.device_id.as_ref(), b.client_id.as_ref())? else {
        return Err(PushError::BadRequest(
            "a subscription needs deviceId or clientId".into(),
        ));
    };
    if let Subscriber::Device(d) = &who {
        let found = push
            .store
            .get_devices(&app.id, std::slice::from_ref(d))
            .await?;
        if found.first().is_none_or(Option::is_none) {
            return Err(PushError::BadRequest(format!(
                "device {d:?} is not registered"
            )));
        }
    }
    push.store.subscribe(&app.id, &b.channel, &who).await?;
    Ok((StatusCode::CREATED, Json(show(&b.channel, &who))))
}

/// `GET channelSubscriptions`: by channel, by subscriber, or one pair.
pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let (limit, after) = page_params(&app.id, &q)?;
    let channel = q.get("channel").filter(|c| !c.is_empty());
    let who = subscriber(q.get("deviceid"), q.get("clientid"))?;
    match (channel, who) {
        (Some(ch), Some(who)) => {
            let found = is_subscribed(push, &app.id, ch, &who).await?;
            let items: Vec<Value> = if found {
                vec![show(ch, &who)]
            } else {
                Vec::new()
            };
            Ok(Json(
                json!({"items": items, "next_cursor": null, "has_more": false}),
            ))
        }
        (Some(ch), None) => {
            check_channel(ch)?;
            let rows = push
                .store
                .channel_subscribers(&app.id, ch, after.as_deref(), limit + 1)
                .await?;
            Ok(Json(page(&app.id, rows, limit, Subscriber::key, |w| {
                show(ch, w)
            })))
        }
        (None, Some(who)) => {
            let rows = push
                .store
                .subscriber_channels(&app.id, &who, after.as_deref(), limit + 1)
                .await?;
            Ok(Json(page(&app.id, rows, limit, Clone::clone, |ch| {
                show(ch, &who)
            })))
        }
        (None, None) => Err(PushError::BadRequest(
            "list channelSubscriptions by channel, deviceId or clientId".into(),
        )),
    }
}

async fn is_subscribed(
    push: &Push,
    app: &str,
    channel: &str,
    who: &Subscriber,
) -> Result<bool, PushError> {
    let mut after: Option<String> = None;
    for _ in 0..PAIR_PAGES {
        let chans = push
            .store
            .subscriber_channels(app, who, after.as_deref(), 1000)
            .await?;
        if chans.iter().any(|c| c == channel) {
            return Ok(true);
        }
        match chans.last() {
            Some(last) if chans.len() == 1000 => after = Some(last.clone()),
            _ => return Ok(false),
        }
    }
    Ok(false)
}

/// `DELETE channelSubscriptions`: one pair, a channel's, or a subscriber's.
pub async fn remove(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let channel = q.get("channel").filter(|c| !c.is_empty());
    let who = subscriber(q.get("deviceid"), q.get("clientid"))?;
    let mut deleted = 0u64;
    match (channel, who) {
        (Some(ch), Some(who)) => {
            deleted += u64::from(push.store.unsubscribe(&app.id, ch, &who).await?)
        }
        (Some(ch), None) => loop {
            let subs = push
                .store
                .channel_subscribers(&app.id, ch, None, 1000)
                .await?;
            if subs.is_empty() {
                break;
            }
            for who in subs {
                deleted += u64::from(push.store.unsubscribe(&app.id, ch, &who).await?);
            }
        },
        (None, Some(who)) => loop {
            let chans = push
                .store
                .subscriber_channels(&app.id, &who, None, 1000)
                .await?;
            if chans.is_empty() {
                break;
            }
            for ch in chans {
                deleted += u64::from(push.store.unsubscribe(&app.id, &ch, &who).await?);
            }
        },
        (None, None) => {
            return Err(PushError::BadRequest(
                "DELETE channelSubscriptions needs channel, deviceId or clientId".into(),
            ))
        }
    }
    Ok(Json(json!({"deleted": deleted})))
}

/// `GET channelSubscriptions/channels`: channels with subscribers.
pub async fn channels(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let (limit, after) = page_params(&app.id, &q)?;
    let rows = push
        .store
        .channels(&app.id, after.as_deref(), limit + 1)
        .await?;
    Ok(Json(page(&app.id, rows, limit, Clone::clone, |c| json!(c))))
}
