//! The jobs of the push pipeline as they travel on the shared queue, and the queue names.

use serde::{Deserialize, Serialize};

use super::model::{Message, Target};
use super::providers::Providers;

/// The queue of plan jobs.
pub const PLAN_QUEUE: &str = "push:plan";
/// Dispatch lanes per provider: campaigns are spread over them by a hash of (app, publish).
pub const LANES: u64 = 8;
/// Subscribers (or client devices) resolved per plan page.
pub const PAGE: usize = 1000;

/// The dispatch queue of `provider`'s lane `lane`.
pub fn dispatch_queue(provider: &str, lane: u64) -> String {
    format!("push:dispatch:{provider}:{lane}")
}

/// The lane of a campaign (FNV-1a of app and publish id: stable on every node).
pub fn lane_of(app: &str, publish_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in app.bytes().chain([0]).chain(publish_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % LANES
}

/// The queues of each stage (metrics): `plan`, then `dispatch:{provider}` per provider.
pub fn stage_queues(providers: &Providers) -> Vec<(String, Vec<String>)> {
    let mut out = vec![("plan".to_owned(), vec![PLAN_QUEUE.to_owned()])];
    for p in providers.names() {
        let lanes = (0..LANES).map(|l| dispatch_queue(p, l)).collect();
        out.push((format!("dispatch:{p}"), lanes));
    }
    out
}

/// Where planning resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCursor {
    /// Index of the target being resolved.
    pub target: usize,
    /// Last subscriber key / device id of the previous page of that target.
    pub after: Option<String>,
    /// Pages planned so far (names the shards and the page's once-key).
    pub page: u32,
}

/// Resolve (part of) a publish's recipients into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanJob {
    /// The app.
    pub app: String,
    /// The publish (status key, idempotency key).
    pub publish_id: String,
    /// The admission that made this job (see `admission`).
    pub campaign: String,
    /// The status record's body, to create it when admission died before it could.
    pub status_body: String,
    /// The publish's recipients.
    pub targets: Vec<Target>,
    /// What to send.
    pub message: Message,
    /// Where this page starts.
    pub cursor: PlanCursor,
}

/// Send one message to some devices of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardJob {
    /// The app.
    pub app: String,
    /// The publish.
    pub publish_id: String,
    /// The admission the shard belongs to.
    pub campaign: String,
    /// Logical shard id (stable across redeliveries; names its once-key).
    pub shard: String,
    /// `fcm`, `apns` or `webPush`.
    pub provider: String,
    /// Device ids (all of `provider`).
    pub devices: Vec<String>,
    /// Sends of these devices so far, this one included.
    pub attempt: u32,
    /// What to send.
    pub message: Message,
    /// Send markers live under this publish key (the publish id, or a replay's own key).
    pub marker_key: String,
}
