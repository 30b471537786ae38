//! Publish status: its JSON, and the decision of when a publish is over and how it ended.

use serde_json::{json, Value};
use sockudo_core::push::{Counters, PublishState, StatusRecord, StatusUpdate};

use super::{now_ms, Push, PushError};

/// `GET publish/{id}/status` body.
pub fn render(app: &str, s: &StatusRecord) -> Value {
    let c = &s.counters;
    let mut v = json!({
        "appId": app,
        "publishId": s.publish_id,
        "state": s.state.as_str(),
        "counters": {
            "planned": c.planned, "dispatched": c.dispatched, "succeeded": c.succeeded,
            "failed": c.failed, "expired": c.expired, "retryScheduled": c.retry_scheduled,
            "deadLettered": c.dead_lettered,
        },
        "createdAtMs": s.created_at_ms,
        "updatedAtMs": s.updated_at_ms,
    });
    if let Some(r) = &s.error_reason {
        v["errorReason"] = json!(r);
    }
    v
}

/// The terminal state a publish has reached, if it is over: planning finished, no shard
/// pending, and every device taken up has a final outcome.
pub fn settled(s: &StatusRecord) -> Option<PublishState> {
    if s.state.is_terminal() || !s.planning_done || s.pending_shards > 0 {
        return None;
    }
    let c = &s.counters;
    if c.finished() < c.planned {
        return None;
    }
    Some(if c.planned == 0 {
        PublishState::Failed
    } else if c.succeeded == c.planned {
        PublishState::Succeeded
    } else if c.succeeded > 0 {
        PublishState::PartiallySucceeded
    } else if c.expired == c.planned {
        PublishState::Expired
    } else if c.dead_lettered > 0 && c.failed == 0 {
        PublishState::DeadLettered
    } else {
        PublishState::Failed
    })
}

/// Apply `update` and, when that finished the publish, record its terminal state.
pub async fn apply(
    push: &Push,
    app: &str,
    publish_id: &str,
    mut update: StatusUpdate,
) -> Result<Option<StatusRecord>, PushError> {
    update.now_ms = now_ms();
    let Some(rec) = push.store.update_status(app, publish_id, &update).await? else {
        return Ok(None);
    };
    let Some(end) = settled(&rec) else {
        return Ok(Some(rec));
    };
    let reason = (end != PublishState::Succeeded).then(|| end_reason(&rec.counters));
    let fin = StatusUpdate {
        state: Some(end),
        error_reason: reason.flatten(),
        now_ms: now_ms(),
        ..StatusUpdate::default()
    };
    Ok(push.store.update_status(app, publish_id, &fin).await?)
}

fn end_reason(c: &Counters) -> Option<String> {
    if c.planned == 0 {
        return Some("no registered device matched the recipients".into());
    }
    (c.planned > c.succeeded).then(|| {
        format!(
            "{} of {} devices not notified ({} failed, {} expired, {} dead-lettered)",
            c.planned - c.succeeded,
            c.planned,
            c.failed,
            c.expired,
            c.dead_lettered
        )
    })
}
