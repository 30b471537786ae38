//! The dispatch stage: one shard job → its devices' send markers → provider sends under the
//! provider's concurrency limit → outcomes counted with the markers (exactly once per
//! device) → a retry shard for what is worth retrying → the shard's completion.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use sockudo_core::push::{
    DeadLetterRecord, PublishState, SendClaim, SendFinish, SendOutcome, StatusUpdate,
};

use super::jobs::{dispatch_queue, lane_of, ShardJob};
use super::model::DeviceDetails;
use super::providers::SendResult;
use super::{now_ms, status, Push, PushError};

/// First retry delay and cap of the exponential backoff (with jitter).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// What one device's send decided.
struct Decided {
    finish: SendFinish,
    /// Remove the registration (invalid token).
    remove: bool,
    /// A dead letter to store when the finish took effect.
    dead: Option<String>,
    /// Retry after at least this long.
    retry: Option<Duration>,
    throttled: bool,
    reason: Option<String>,
}

impl Decided {
    fn done(device: &str, counter: &'static str, reason: Option<String>) -> Decided {
        Decided {
            finish: SendFinish::new(device, SendOutcome::Done, Some(counter)),
            remove: false,
            dead: None,
            retry: None,
            throttled: false,
            reason,
        }
    }
}

/// Run one shard job; `holder` names this queue job (stable across its redeliveries).
pub async fn run(push: &Push, holder: &str, job: ShardJob) -> Result<(), PushError> {
    let (app, pid) = (job.app.as_str(), job.publish_id.as_str());
    let Some(st) = push.store.get_status(app, pid).await? else {
        return Ok(()); // retention passed: nothing to report to
    };
    if st.campaign != job.campaign {
        return Ok(());
    }
    if st.state == PublishState::Cancelled {
        return complete(push, &job, 0, None).await;
    }
    if let Err(wait) = push.breakers.check(&job.provider, app) {
        // Open breaker: the same shard comes back after the cooldown, no attempt spent.
        return requeue(push, &job, wait).await;
    }
    // Devices are taken, sent and finished a chunk at a time: a node that dies leaves at
    // most the chunk it was sending with an unknown outcome.
    let mut tally = Tally::default();
    let chunk = push.settings.dispatch_concurrency.clamp(1, 256);
    for devices in job.devices.chunks(chunk) {
        let decided = chunk_outcomes(push, holder, &job, devices).await?;
        record(push, holder, &job, decided, &mut tally).await?;
    }
    settle(push, &job, tally).await
}

/// Take `devices` and decide each one's outcome (sending the fresh ones).
async fn chunk_outcomes(
    push: &Push,
    holder: &str,
    job: &ShardJob,
    devices: &[String],
) -> Result<Vec<Decided>, PushError> {
    let (app, pid) = (job.app.as_str(), job.publish_id.as_str());
    let claims = push
        .store
        .claim_sends(app, pid, &job.marker_key, holder, devices, push.retention())
        .await?;
    let mut decided = Vec::new();
    let mut fresh = Vec::new();
    for (d, c) in devices.iter().zip(claims) {
        match c {
            SendClaim::Fresh { .. } => fresh.push(d.clone()),
            SendClaim::Resumed => decided.push(Decided::done(
                d,
                "failed",
                Some("outcome unknown: the node sending it stopped mid-send (not resent, to never notify twice)".into()),
            )),
            SendClaim::Taken => {}
        }
    }
    let expired = job.message.expires_at_ms.is_some_and(|ex| ex <= now_ms());
    if expired {
        decided.extend(fresh.iter().map(|d| Decided::done(d, "expired", None)));
    } else {
        decided.extend(send_all(push, job, &fresh).await?);
    }
    Ok(decided)
}

/// What a shard's chunks leave to do at its end.
#[derive(Debug, Default)]
struct Tally {
    retry: Vec<String>,
    wait: Duration,
    throttled: bool,
    reason: Option<String>,
}

/// Send to every device of `ids` concurrently (bounded by the provider's limit).
async fn send_all(push: &Push, job: &ShardJob, ids: &[String]) -> Result<Vec<Decided>, PushError> {
    let Some(provider) = push.providers.get(&job.provider) else {
        return Ok(ids
            .iter()
            .map(|d| {
                Decided::done(
                    d,
                    "failed",
                    Some(format!("provider {} is not configured", job.provider)),
                )
            })
            .collect());
    };
    let records = push.store.get_devices(&job.app, ids).await?;
    let limit = push.settings.dispatch_concurrency.max(1);
    let sem = push.limit(&job.provider);
    let max_attempts = push.settings.retry_max_attempts;
    let work: Vec<(String, Option<sockudo_core::push::DeviceRecord>)> =
        ids.iter().cloned().zip(records).collect();
    let message = &job.message;
    let name = job.provider.as_str();
    let attempt = job.attempt;
    let sends = futures_util::stream::iter(work)
        .map(move |(id, rec)| {
            let sem = sem.clone();
            let provider = provider.clone();
            async move {
                let Some(details) =
                    rec.and_then(|r| serde_json::from_str::<DeviceDetails>(&r.body).ok())
                else {
                    return Decided::done(
                        &id,
                        "failed",
                        Some(format!("device {id:?} is no longer registered")),
                    );
                };
                let _permit = sem.acquire_owned().await;
                let started = Instant::now();
                let result = provider.send(&details.push.recipient, message).await;
                observe(name, &result, started.elapsed());
                decide(&id, result, attempt, max_attempts)
            }
        })
        .buffer_unordered(limit);
    let out: Vec<Decided> = sends.collect().await;
    let sent = i64::try_from(out.len()).unwrap_or(i64::MAX);
    let mut update = StatusUpdate::default();
    update.counters.dispatched = sent;
    push.store
        .update_status(&job.app, &job.publish_id, &update)
        .await?;
    for d in &out {
        let failed = d.retry.is_some() && !d.throttled;
        if push.breakers.record(&job.provider, &job.app, failed) {
            tracing::warn!(provider = %job.provider, app = %job.app, "push provider unavailable: breaker open");
        }
    }
    Ok(out)
}

fn observe(provider: &str, result: &SendResult, took: Duration) {
    let provider = provider.to_owned();
    metrics::histogram!(crate::metrics::PUSH_PROVIDER_LATENCY, "provider" => provider.clone())
        .record(took.as_secs_f64());
    metrics::counter!(crate::metrics::PUSH_DISPATCHED, "provider" => provider.clone()).increment(1);
    if *result != SendResult::Sent {
        metrics::counter!(crate::metrics::PUSH_PROVIDER_ERRORS, "provider" => provider, "class" => result.class()).increment(1);
    }
}

fn decide(id: &str, result: SendResult, attempt: u32, max_attempts: u32) -> Decided {
    match result {
        SendResult::Sent => Decided::done(id, "succeeded", None),
        SendResult::Invalid(reason) => Decided {
            remove: true,
            ..Decided::done(id, "failed", Some(reason))
        },
        SendResult::Permanent(reason) => Decided::done(id, "failed", Some(reason)),
        SendResult::Retry {
            after,
            reason,
            throttled,
        } if attempt < max_attempts => Decided {
            finish: SendFinish::new(id, SendOutcome::Release, Some("retryScheduled")),
            remove: false,
            dead: None,
            retry: Some(after.unwrap_or(Duration::ZERO)),
            throttled,
            reason: Some(reason),
        },
        SendResult::Retry { reason, .. } => Decided {
            dead: Some(format!("{reason} (after {attempt} attempts)")),
            ..Decided::done(id, "deadLettered", None)
        },
    }
}

/// Finish a chunk's devices (each outcome counted once, with its marker) and note what the
/// shard's end must do.
async fn record(
    push: &Push,
    holder: &str,
    job: &ShardJob,
    decided: Vec<Decided>,
    tally: &mut Tally,
) -> Result<(), PushError> {
    let (app, pid) = (job.app.as_str(), job.publish_id.as_str());
    let finishes: Vec<SendFinish> = decided.iter().map(|d| d.finish.clone()).collect();
    let changed = push
        .store
        .finish_sends(app, pid, &job.marker_key, holder, &finishes)
        .await?;
    for (d, ok) in decided.iter().zip(changed) {
        if !ok {
            continue;
        }
        if d.remove {
            push.store.delete_device(app, &d.finish.device).await?;
        }
        if let Some(why) = &d.dead {
            dead_letter(push, job, &d.finish.device, why).await?;
        }
        if let Some(after) = d.retry {
            tally.retry.push(d.finish.device.clone());
            tally.wait = tally.wait.max(after);
            tally.throttled |= d.throttled;
        }
        if d.finish.counter == Some("failed") || d.dead.is_some() {
            metrics::counter!(crate::metrics::PUSH_FAILED, "provider" => job.provider.clone())
                .increment(1);
        }
        if tally.reason.is_none() {
            tally.reason = d.reason.clone().or_else(|| d.dead.clone());
        }
    }
    Ok(())
}

/// Schedule the retry shard (if any) and complete the shard.
async fn settle(push: &Push, job: &ShardJob, tally: Tally) -> Result<(), PushError> {
    let Tally {
        retry,
        wait,
        throttled,
        reason,
    } = tally;
    let spawned = if retry.is_empty() {
        0
    } else {
        let backoff = crate::webhooks::backoff_delay(job.attempt, BACKOFF_BASE, BACKOFF_CAP);
        let jitter = backoff.mul_f64(rand::random_range(0.5..1.0));
        let next = ShardJob {
            shard: format!("{}.r{}", job.shard, job.attempt),
            devices: retry,
            attempt: job.attempt + 1,
            ..job.clone()
        };
        enqueue(push, &next, wait.max(jitter)).await?;
        1
    };
    let state = if throttled {
        PublishState::Throttled
    } else {
        PublishState::Dispatching
    };
    complete(push, job, spawned, Some((state, reason))).await
}

/// The shard is finished (spawning `spawned` retry shards): counted once per logical shard.
async fn complete(
    push: &Push,
    job: &ShardJob,
    spawned: i64,
    state: Option<(PublishState, Option<String>)>,
) -> Result<(), PushError> {
    let (state, reason) = state.unzip();
    let update = StatusUpdate {
        pending_shards: spawned - 1,
        once: Some(format!("done:{}", job.shard)),
        state,
        error_reason: reason.flatten(),
        ..StatusUpdate::default()
    };
    status::apply(push, &job.app, &job.publish_id, update).await?;
    Ok(())
}

async fn dead_letter(
    push: &Push,
    job: &ShardJob,
    device: &str,
    reason: &str,
) -> Result<(), PushError> {
    let now = now_ms();
    let id = format!("{now:013}-{:016x}", rand::random::<u64>());
    let body = json!({
        "deadLetterId": id, "publishId": job.publish_id, "provider": job.provider,
        "deviceId": device, "reason": reason, "attempts": job.attempt, "occurredAtMs": now,
        "campaign": job.campaign, "message": job.message,
    });
    let record = DeadLetterRecord {
        id,
        provider: job.provider.clone(),
        occurred_at_ms: now,
        body: body.to_string(),
    };
    push.store
        .add_dead_letter(&job.app, &record, push.retention())
        .await?;
    Ok(())
}

async fn requeue(push: &Push, job: &ShardJob, wait: Duration) -> Result<(), PushError> {
    enqueue(push, job, wait).await
}

/// Put a shard on its provider's lane for the campaign.
pub async fn enqueue(push: &Push, job: &ShardJob, delay: Duration) -> Result<(), PushError> {
    let q = dispatch_queue(&job.provider, lane_of(&job.app, &job.publish_id));
    let payload = serde_json::to_vec(job).map_err(|e| PushError::Unavailable(e.to_string()))?;
    push.queue.enqueue(&q, Bytes::from(payload), delay).await?;
    if delay.is_zero() {
        push.wake.notify_waiters();
    }
    Ok(())
}
