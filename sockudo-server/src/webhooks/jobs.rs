//! What a webhook queue job holds: one event for one target, with the guard that ties a
//! paired event to the cluster-wide state machine ([`super::transitions`]).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::WebhookEvent;

/// The subject of a paired event: what must be (un)held for it to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(super) enum Subject {
    /// A channel's occupancy (any node holding a subscriber).
    Occupancy { channel: String },
    /// A user's membership of a presence channel.
    Member { channel: String, user_id: String },
}

/// Why a job may be dropped or held back when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "g", rename_all = "snake_case")]
pub(super) enum Guard {
    /// At-least-once, no condition (`client_event`, `cache_miss`, explicit emits).
    None,
    /// The start event of span `token`: sent while the marker names it.
    Start { marker: String, token: String },
    /// The end event of span `token`: sent if the subject is still unheld when due.
    End {
        marker: String,
        token: String,
        subject: Subject,
    },
}

/// One queue job: `event` for the target at `url` of app `app_id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EventJob {
    /// The event's idempotency id, sent as `id` in the event object; the same for every
    /// target, retry and redelivery of this event.
    pub id: String,
    pub app_id: String,
    pub url: String,
    pub event: WebhookEvent,
    pub guard: Guard,
    /// When the event was decided (ms since the epoch).
    pub created_ms: u64,
    /// The node that decided it.
    pub origin: String,
}

/// A fresh random id (128 bits, hex).
pub(super) fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
