//! The plan stage: one page of a publish's recipients per job, grouped by provider into
//! shards on the campaign's lane. A redelivered page enqueues its shards again; the shards'
//! send markers keep every device to one notification and the page's once-key keeps the
//! status counting it once.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use sockudo_core::push::{PublishState, StatusUpdate, Subscriber};

use super::admission::new_status;
use super::jobs::{dispatch_queue, lane_of, PlanJob, ShardJob, PAGE, PLAN_QUEUE};
use super::model::{DeviceDetails, Target};
use super::{now_ms, status, Push, PushError};

/// Most devices of one client a plan page takes (clients own a handful of devices).
const CLIENT_DEVICES: usize = 1000;

/// Run one plan job.
pub async fn run(push: &Push, mut job: PlanJob) -> Result<(), PushError> {
    let (app, pid) = (job.app.clone(), job.publish_id.clone());
    let record = new_status(&pid, &job.campaign, job.status_body.clone(), now_ms());
    let current = match push
        .store
        .create_status(&app, &record, push.retention())
        .await?
    {
        None => record,
        Some(existing) => existing,
    };
    if current.campaign != job.campaign || current.state.is_terminal() {
        return Ok(()); // a duplicate admission, or cancelled / over
    }
    let page = job.cursor.page;
    if job.message.expires_at_ms.is_some_and(|ex| ex <= now_ms()) {
        let update = StatusUpdate {
            planning_done: Some(true),
            state: (page == 0).then_some(PublishState::Expired),
            error_reason: Some("expired before it could be planned".into()),
            once: Some(format!("plan:{page}")),
            ..StatusUpdate::default()
        };
        status::apply(push, &app, &pid, update).await?;
        return Ok(());
    }
    let (ids, more) = resolve_page(push, &mut job).await?;
    let (shards, unusable) = shard(push, &job, ids).await?;
    for s in &shards {
        let q = dispatch_queue(&s.provider, lane_of(&app, &pid));
        let payload = serde_json::to_vec(s).map_err(|e| PushError::Unavailable(e.to_string()))?;
        push.queue
            .enqueue(&q, Bytes::from(payload), Duration::ZERO)
            .await?;
    }
    let mut update = StatusUpdate {
        pending_shards: i64::try_from(shards.len()).unwrap_or(i64::MAX),
        planning_done: Some(!more),
        state: Some(if more {
            PublishState::Planning
        } else {
            PublishState::Dispatching
        }),
        once: Some(format!("plan:{page}")),
        ..StatusUpdate::default()
    };
    if !unusable.is_empty() {
        let n = i64::try_from(unusable.len()).unwrap_or(i64::MAX);
        update.counters.planned = n;
        update.counters.failed = n;
        update.error_reason = Some(unusable[0].clone());
    }
    status::apply(push, &app, &pid, update).await?;
    if more {
        job.cursor.page += 1;
        let payload =
            serde_json::to_vec(&job).map_err(|e| PushError::Unavailable(e.to_string()))?;
        push.queue
            .enqueue(PLAN_QUEUE, Bytes::from(payload), Duration::ZERO)
            .await?;
    }
    push.wake.notify_waiters();
    Ok(())
}

/// The device ids of the next page (≤ [`PAGE`] reads), advancing the cursor; true when more
/// pages follow.
async fn resolve_page(push: &Push, job: &mut PlanJob) -> Result<(Vec<String>, bool), PushError> {
    let app = job.app.clone();
    let mut ids = Vec::new();
    while job.cursor.target < job.targets.len() && ids.len() < PAGE {
        let after = job.cursor.after.clone();
        let full = match &job.targets[job.cursor.target] {
            Target::Device { device_id } => {
                ids.push(device_id.clone());
                None
            }
            Target::Client { client_id } => {
                let devs = push
                    .store
                    .list_devices(&app, Some(client_id), after.as_deref(), PAGE)
                    .await?;
                let last = devs.last().map(|d| d.id.clone());
                ids.extend(devs.into_iter().map(|d| d.id));
                last.filter(|_| ids.len() >= PAGE)
            }
            Target::Channel { channel } => {
                let subs = push
                    .store
                    .channel_subscribers(&app, channel, after.as_deref(), PAGE)
                    .await?;
                let last = (subs.len() == PAGE).then(|| subs[PAGE - 1].key());
                for s in subs {
                    match s {
                        Subscriber::Device(d) => ids.push(d),
                        Subscriber::Client(c) => {
                            let devs = push
                                .store
                                .list_devices(&app, Some(&c), None, CLIENT_DEVICES)
                                .await?;
                            ids.extend(devs.into_iter().map(|d| d.id));
                        }
                    }
                }
                last
            }
        };
        match full {
            Some(last) => {
                job.cursor.after = Some(last);
                return Ok((ids, true));
            }
            None => {
                job.cursor.target += 1;
                job.cursor.after = None;
            }
        }
    }
    let more = job.cursor.target < job.targets.len();
    Ok((ids, more))
}

/// Group `ids` by provider into shards; also the reasons of devices that cannot be sent to
/// (unknown, or their provider is not configured).
async fn shard(
    push: &Push,
    job: &PlanJob,
    ids: Vec<String>,
) -> Result<(Vec<ShardJob>, Vec<String>), PushError> {
    let mut seen = HashSet::new();
    let ids: Vec<String> = ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let mut by_provider: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut unusable = Vec::new();
    for chunk in ids.chunks(PAGE) {
        let records = push.store.get_devices(&job.app, chunk).await?;
        for (id, rec) in chunk.iter().zip(records) {
            let parsed = rec.and_then(|r| serde_json::from_str::<DeviceDetails>(&r.body).ok());
            match parsed {
                None => unusable.push(format!("device {id:?} is not registered")),
                Some(d) => {
                    let p = d.push.recipient.provider();
                    if push.providers.get(p).is_some() {
                        by_provider.entry(p).or_default().push(id.clone());
                    } else {
                        unusable.push(format!("provider {p} is not configured"));
                    }
                }
            }
        }
    }
    let size = push.settings.shard_size.max(1);
    let mut shards = Vec::new();
    for (provider, devices) in by_provider {
        for (i, chunk) in devices.chunks(size).enumerate() {
            shards.push(ShardJob {
                app: job.app.clone(),
                publish_id: job.publish_id.clone(),
                campaign: job.campaign.clone(),
                shard: format!("{}:{}:{provider}:{i}", job.campaign, job.cursor.page),
                provider: provider.to_owned(),
                devices: chunk.to_vec(),
                attempt: 1,
                message: job.message.clone(),
                marker_key: job.publish_id.clone(),
            });
        }
    }
    Ok((shards, unusable))
}
