//! `extras.push` on `POST /apps/{id}/events`: the realtime event also enqueues a push
//! notification for the same logical event. Its recipients default to the event's channels
//! as push channels; its publish id is the event's idempotency key (body or header) when it
//! has one, so a retried event is one push campaign too. The push request is checked before
//! the event is published; its admission result is in the answer's `push` field.

use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{bad_request, ApiError};
use crate::node::Node;

/// Whether `extras` (any JSON) is an object with a `push` member.
pub fn has_push(extras: Option<&RawValue>) -> bool {
    extras
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .is_some_and(|v| v.get("push").is_some())
}

/// The push request `extras.push` describes (checked), if any.
#[cfg(feature = "push")]
pub fn parse(
    node: &Node,
    extras: Option<&RawValue>,
    channels: &[&str],
) -> Result<Option<crate::push::model::PublishRequest>, ApiError> {
    let Some(raw) = extras else { return Ok(None) };
    let Ok(v) = serde_json::from_str::<Value>(raw.get()) else {
        return Ok(None);
    };
    let Some(push) = v.get("push") else {
        return Ok(None);
    };
    if node.push().is_none() {
        return Err(refused());
    }
    let mut push = push.clone();
    let Some(obj) = push.as_object_mut() else {
        return Err(bad_request(
            "extras.push must be an object (a push publish request)",
        ));
    };
    if !obj.contains_key("recipients") {
        let targets = channels
            .iter()
            .map(|c| serde_json::json!({"type": "channel", "channel": c}))
            .collect();
        obj.insert("recipients".into(), Value::Array(targets));
    }
    crate::push::model::PublishRequest::from_value(push)
        .map(Some)
        .map_err(|e| bad_request(format!("extras.push: {e}")))
}

/// Without the `push` feature an `extras.push` cannot be honoured: it is refused.
#[cfg(not(feature = "push"))]
pub fn parse(
    node: &Node,
    extras: Option<&RawValue>,
    _channels: &[&str],
) -> Result<Option<()>, ApiError> {
    let _ = node;
    if has_push(extras) {
        return Err(refused());
    }
    Ok(None)
}

fn refused() -> ApiError {
    bad_request("extras.push needs push notifications enabled on the server (PUSH_ENABLED, build feature `push`)")
}

/// Admit the push of an event; the `push` member of the answer.
#[cfg(feature = "push")]
pub async fn admit(
    node: &Node,
    app: &str,
    req: crate::push::model::PublishRequest,
    key: Option<&str>,
) -> Value {
    let Some(push) = node.push() else {
        return serde_json::json!({"error": "push is not enabled"});
    };
    match crate::push::admission::admit(push, app, req, key).await {
        Ok(a) => a.body,
        Err(e) => serde_json::json!({"error": e.to_string()}),
    }
}
