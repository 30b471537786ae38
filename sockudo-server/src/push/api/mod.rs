//! The push HTTP API under `/apps/{app_id}/push/…` (PUSH.md paths), behind the same signed-
//! request auth (and rate limit) as the rest of the API.

mod dead_letters;
mod devices;
mod publish;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Value};

use super::providers::jwt::{b64, unb64};
use super::{Push, PushError};
use crate::node::Node;

/// The push routes (empty when push is not enabled on `node`).
pub fn routes(node: &Arc<Node>) -> Router<Arc<Node>> {
    if node.push().is_none() {
        return Router::new();
    }
    let p = "/apps/{app_id}/push";
    Router::new()
        .route(
            &format!("{p}/deviceRegistrations"),
            post(devices::upsert)
                .get(devices::list)
                .delete(devices::delete_by_client),
        )
        .route(
            &format!("{p}/deviceRegistrations/{{device_id}}"),
            get(devices::show).delete(devices::delete_one),
        )
        .route(
            &format!("{p}/channelSubscriptions"),
            post(subscriptions::create)
                .get(subscriptions::list)
                .delete(subscriptions::remove),
        )
        .route(
            &format!("{p}/channelSubscriptions/channels"),
            get(subscriptions::channels),
        )
        .route(&format!("{p}/publish"), post(publish::publish))
        .route(&format!("{p}/batch/publish"), post(publish::batch))
        .route(
            &format!("{p}/publish/{{publish_id}}/status"),
            get(publish::status),
        )
        .route(
            &format!("{p}/scheduled/{{publish_id}}"),
            delete(publish::cancel),
        )
        .route(&format!("{p}/deadLetters"), get(dead_letters::list))
        .route(
            &format!("{p}/deadLetters/{{dead_letter_id}}/replay"),
            post(dead_letters::replay),
        )
}

/// The node's push subsystem (routes exist only when it does).
fn push_of(node: &Node) -> Result<&Arc<Push>, PushError> {
    node.push()
        .ok_or_else(|| PushError::NotFound("push is not enabled".into()))
}

/// Query parameters with lower-cased names: Pusher request signing lower-cases parameter
/// names, so SDKs may send `clientid` for `clientId`; both are accepted.
fn lower(q: HashMap<String, String>) -> HashMap<String, String> {
    q.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// A list request's `limit` (default 100, at most 1000) and decoded `cursor`.
fn page_params(
    app: &str,
    q: &HashMap<String, String>,
) -> Result<(usize, Option<String>), PushError> {
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| PushError::BadRequest("limit must be 1 to 1000".into()))?,
    };
    let cursor = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(decode_cursor(app, c)?),
    };
    Ok((limit, cursor))
}

/// Cursors are opaque and scoped to the app: base64url of `app \n position`.
fn encode_cursor(app: &str, after: &str) -> String {
    b64(format!("{app}\n{after}").as_bytes())
}

fn decode_cursor(app: &str, c: &str) -> Result<String, PushError> {
    let bad = || PushError::BadRequest("invalid cursor".into());
    let raw = unb64(c).ok_or_else(bad)?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    match text.split_once('\n') {
        Some((a, after)) if a == app => Ok(after.to_owned()),
        _ => Err(bad()),
    }
}

/// `{items, next_cursor, has_more}` from a page fetched with `limit + 1`; `key` is the
/// position of an item.
fn page<T>(
    app: &str,
    mut rows: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
    show: impl Fn(&T) -> Value,
) -> Value {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next = if has_more {
        rows.last().map(|r| encode_cursor(app, &key(r)))
    } else {
        None
    };
    json!({"items": rows.iter().map(show).collect::<Vec<_>>(), "next_cursor": next, "has_more": has_more})
}
