//! Dead letters: list with cursor and filters, replay one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};
use sockudo_core::layers::api_auth::AuthenticatedApp;
use sockudo_core::push::{DeadLetterFilter, DeadLetterRecord, PublishState, StatusUpdate};

use super::{page, page_params, push_of};
use crate::node::Node;
use crate::push::dispatch::enqueue;
use crate::push::jobs::ShardJob;
use crate::push::model::Message;
use crate::push::{status, PushError};

fn show(l: &DeadLetterRecord) -> Value {
    let b: Value = serde_json::from_str(&l.body).unwrap_or(Value::Null);
    json!({
        "deadLetterId": l.id, "publishId": b["publishId"], "provider": l.provider,
        "deviceId": b["deviceId"], "reason": b["reason"], "attempts": b["attempts"],
        "occurredAtMs": l.occurred_at_ms, "replayable": b["message"].is_object(),
    })
}

fn ms_param(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, PushError> {
    q.get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| PushError::BadRequest(format!("{name} must be milliseconds")))
        })
        .transpose()
}

/// `GET deadLetters`: a page of dead letters, filtered by provider and time.
pub async fn list(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, PushError> {
    let q = super::lower(q);
    let push = push_of(&node)?;
    let (limit, after) = page_params(&app.id, &q)?;
    let provider = q.get("provider").filter(|p| !p.is_empty()).cloned();
    if provider
        .as_deref()
        .is_some_and(|p| !matches!(p, "fcm" | "apns" | "webPush"))
    {
        return Err(PushError::BadRequest(
            "provider must be fcm, apns or webPush".into(),
        ));
    }
    let filter = DeadLetterFilter {
        provider,
        since_ms: ms_param(&q, "sincems")?,
        until_ms: ms_param(&q, "untilms")?,
    };
    let rows = push
        .store
        .list_dead_letters(&app.id, &filter, after.as_deref(), limit + 1)
        .await?;
    Ok(Json(page(&app.id, rows, limit, |l| l.id.clone(), show)))
}

/// `POST deadLetters/{id}/replay`: send a dead letter again (once) and reopen its publish.
pub async fn replay(
    State(node): State<Arc<Node>>,
    Extension(AuthenticatedApp(app)): Extension<AuthenticatedApp>,
    Path((_app, id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Value>), PushError> {
    let push = push_of(&node)?;
    let Some(letter) = push.store.take_dead_letter(&app.id, &id).await? else {
        return Err(PushError::NotFound(format!("no dead letter {id:?}")));
    };
    let b: Value = serde_json::from_str(&letter.body).unwrap_or(Value::Null);
    let fields = (
        b["publishId"].as_str(),
        b["deviceId"].as_str(),
        b["campaign"].as_str(),
    );
    let message = serde_json::from_value::<Message>(b["message"].clone()).ok();
    let ((Some(pid), Some(device), Some(campaign)), Some(mut message)) = (fields, message) else {
        return Err(PushError::Conflict(format!(
            "dead letter {id:?} cannot be replayed"
        )));
    };
    message.expires_at_ms = None; // an explicit replay is sent even after the original expiry
    let job = ShardJob {
        app: app.id.clone(),
        publish_id: pid.to_owned(),
        campaign: campaign.to_owned(),
        shard: format!("replay:{id}"),
        provider: letter.provider.clone(),
        devices: vec![device.to_owned()],
        attempt: 1,
        message,
        marker_key: format!("{pid}#replay:{id}"),
    };
    // Reopen first so the shard's completion finds its pending count.
    let mut update = StatusUpdate {
        pending_shards: 1,
        state: Some(PublishState::Dispatching),
        reopen: true,
        ..StatusUpdate::default()
    };
    update.counters.dead_lettered = -1;
    update.counters.planned = -1; // the replay's claim counts the device again
    if status::apply(push, &app.id, pid, update).await?.is_none() {
        push.store
            .add_dead_letter(&app.id, &letter, push.retention())
            .await?;
        return Err(PushError::NotFound(format!(
            "the status of publish {pid:?} is gone (retention)"
        )));
    }
    if let Err(e) = enqueue(push, &job, Duration::ZERO).await {
        push.store
            .add_dead_letter(&app.id, &letter, push.retention())
            .await?;
        return Err(e);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"deadLetterId": id, "publishId": pid, "status": "queued"})),
    ))
}
