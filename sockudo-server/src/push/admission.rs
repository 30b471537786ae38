//! Publish admission: O(1) work per request (one enqueue, one set-if-absent), no device or
//! subscriber read before the answer.
//!
//! Order matters for crash safety: the plan job is enqueued *before* the status is created.
//! A node that dies between the two leaves a plan job whose status is missing; the planner
//! then creates it from the job (same set-if-absent), so an accepted publish is never lost. A
//! retry that finds the status of an earlier admission leaves its own plan job behind; the
//! planner drops it because its campaign id is not the status's.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sockudo_core::push::{Counters, PublishState, StatusRecord};

use super::jobs::{PlanCursor, PlanJob, PLAN_QUEUE};
use super::model::{PublishRequest, Target};
use super::{now_ms, Push, PushError};

/// The answer to one admitted publish.
#[derive(Debug)]
pub struct Admitted {
    /// `{publishId, status, expectedRecipients?}`.
    pub body: Value,
    /// An earlier admission with the same id and the same request was found.
    pub replayed: bool,
}

/// The status record's `body`: what a retry must match, and the schedule.
pub fn status_body(fingerprint: &str, req: &PublishRequest) -> String {
    json!({"fp": fingerprint, "notBeforeMs": req.not_before_ms, "expiresAtMs": req.expires_at_ms})
        .to_string()
}

/// Admit one publish of `app`. `header_key` is the request's `X-Idempotency-Key`.
pub async fn admit(
    push: &Push,
    app: &str,
    req: PublishRequest,
    header_key: Option<&str>,
) -> Result<Admitted, PushError> {
    let keys: HashSet<&str> = [
        req.publish_id.as_deref(),
        req.idempotency_key.as_deref(),
        header_key,
    ]
    .into_iter()
    .flatten()
    .collect();
    if keys.len() > 1 {
        return Err(PushError::BadRequest(
            "publishId, idempotency_key and X-Idempotency-Key name different publishes".into(),
        ));
    }
    if let Some(k) = header_key {
        super::model::check_id("X-Idempotency-Key", k)?;
    }
    let publish_id = match keys.into_iter().next() {
        Some(k) => k.to_owned(),
        None => format!("{:032x}", rand::random::<u128>()),
    };
    let now = now_ms();
    if req.expires_at_ms.is_some_and(|ex| ex <= now) {
        return Err(PushError::BadRequest("expiresAtMs is in the past".into()));
    }
    let delay = Duration::from_millis(req.not_before_ms.map_or(0, |nb| nb.saturating_sub(now)));
    let fingerprint = req.fingerprint();
    let campaign = format!("{:016x}", rand::random::<u64>());
    let job = PlanJob {
        app: app.to_owned(),
        publish_id: publish_id.clone(),
        campaign: campaign.clone(),
        status_body: status_body(&fingerprint, &req),
        targets: req.recipients.clone(),
        message: req.message(),
        cursor: PlanCursor::default(),
    };
    let payload = serde_json::to_vec(&job).map_err(|e| PushError::BadRequest(e.to_string()))?;
    push.queue
        .enqueue(PLAN_QUEUE, Bytes::from(payload), delay)
        .await?;
    let record = new_status(&publish_id, &campaign, job.status_body.clone(), now);
    let existing = push
        .store
        .create_status(app, &record, push.retention())
        .await?;
    // The planner may have created the record from our own job first (same campaign).
    let existing = existing.filter(|prev| prev.campaign != campaign);
    let (state, replayed) = match existing {
        None => {
            metrics::counter!(crate::metrics::PUSH_ACCEPTED).increment(1);
            if !delay.is_zero() {
                metrics::counter!(crate::metrics::PUSH_SCHEDULED).increment(1);
            }
            push.wake.notify_waiters();
            (PublishState::Queued, false)
        }
        Some(prev) => {
            let same = serde_json::from_str::<Value>(&prev.body)
                .ok()
                .is_some_and(|b| b["fp"] == json!(fingerprint));
            if !same {
                return Err(PushError::Conflict(format!(
                    "publish {publish_id:?} was already accepted with another request"
                )));
            }
            (prev.state, true)
        }
    };
    let mut body = json!({"publishId": publish_id, "status": state.as_str()});
    if let Some(n) = expected_recipients(&req.recipients) {
        body["expectedRecipients"] = json!(n);
    }
    Ok(Admitted { body, replayed })
}

/// A fresh status record.
pub fn new_status(publish_id: &str, campaign: &str, body: String, now: u64) -> StatusRecord {
    StatusRecord {
        publish_id: publish_id.to_owned(),
        campaign: campaign.to_owned(),
        body,
        state: PublishState::Queued,
        counters: Counters::default(),
        pending_shards: 0,
        planning_done: false,
        error_reason: None,
        created_at_ms: now,
        updated_at_ms: now,
    }
}

/// Known without a read only when every target is a device.
fn expected_recipients(targets: &[Target]) -> Option<usize> {
    let mut ids = HashSet::new();
    for t in targets {
        match t {
            Target::Device { device_id } => ids.insert(device_id.as_str()),
            _ => return None,
        };
    }
    Some(ids.len())
}
