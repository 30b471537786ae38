//! The shared push-notification state contract ([`PushStore`]) and its implementations:
//! [`MemoryPushStore`] (embedded default, one node) and `RedisPushStore` (feature `redis`,
//! shared by every node and surviving any of them).
//!
//! The store keeps what must outlive a node: device registrations, channel subscriptions,
//! publish statuses (which double as the cluster-wide idempotency record of a `publishId`),
//! the per-device send markers that keep a redelivered shard from notifying a device twice,
//! and dead letters. The records' JSON bodies are opaque here: the node owns their schema.
//!
//! # Contract (every implementation, checked by [`conformance::run_all`])
//! - Every method is scoped to one app: nothing of one app is visible from another.
//! - Lists are ordered by key (device id, channel name, subscriber key, dead-letter id) and
//!   resume strictly *after* the given cursor, so a list walked page by page sees every entry
//!   present for the whole walk exactly once.
//! - [`PushStore::create_status`] is set-if-absent: of concurrent creators exactly one wins.
//! - [`PushStore::update_status`] applies counter deltas atomically; a terminal state never
//!   changes unless the update says `reopen`; an update carrying a `once` key applies at most
//!   once per (publish, key).
//! - Send markers: [`PushStore::claim_sends`] takes each device for one shard at most;
//!   [`PushStore::finish_sends`] changes only markers the shard holds.
//! - Statuses, send markers and dead letters expire after the retention given when written.
//! - `Err` means the outcome is unknown.

#[doc(hidden)]
pub mod conformance;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_scripts;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

#[cfg(feature = "redis")]
pub use self::redis::RedisPushStore;
pub use memory::MemoryPushStore;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error, Clone)]
pub enum PushStoreError {
    /// The backend did not answer (or answered garbage): the outcome is unknown.
    #[error("push store unavailable: {0}")]
    Unavailable(String),
}

/// Result of every store operation.
pub type StoreResult<T> = Result<T, PushStoreError>;

/// One device registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The device id (unique per app).
    pub id: String,
    /// The client (user) the device belongs to, when any.
    pub client_id: Option<String>,
    /// The registration as the node stores it (JSON; tokens included, never shown to users).
    pub body: String,
}

/// Who a channel subscription delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscriber {
    /// One device.
    Device(String),
    /// Every device of a client.
    Client(String),
}

impl Subscriber {
    /// The ordering key of the subscriber in lists (`d:` / `c:` + id).
    pub fn key(&self) -> String {
        match self {
            Subscriber::Device(d) => format!("d:{d}"),
            Subscriber::Client(c) => format!("c:{c}"),
        }
    }

    /// The subscriber a [`Subscriber::key`] names.
    pub fn from_key(key: &str) -> Option<Subscriber> {
        match key.split_once(':')? {
            ("d", id) => Some(Subscriber::Device(id.to_owned())),
            ("c", id) => Some(Subscriber::Client(id.to_owned())),
            _ => None,
        }
    }
}

/// Where a publish is in its life. Serialised in camelCase (the API's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PublishState {
    /// Accepted, not yet planned (or scheduled for later).
    Queued,
    /// Recipients are being resolved into shards.
    Planning,
    /// Shards are being sent.
    Dispatching,
    /// A provider asked us to slow down; retries are scheduled.
    Throttled,
    /// Every device was notified.
    Succeeded,
    /// Some devices were notified, some were not.
    PartiallySucceeded,
    /// No device was notified.
    Failed,
    /// The publish expired before it could be sent.
    Expired,
    /// Cancelled before it was sent.
    Cancelled,
    /// Everything that was not sent ended in the dead-letter store.
    DeadLettered,
}

impl PublishState {
    /// Whether nothing more happens to the publish (unless a dead letter is replayed).
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            PublishState::Queued
                | PublishState::Planning
                | PublishState::Dispatching
                | PublishState::Throttled
        )
    }

    /// The camelCase name.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishState::Queued => "queued",
            PublishState::Planning => "planning",
            PublishState::Dispatching => "dispatching",
            PublishState::Throttled => "throttled",
            PublishState::Succeeded => "succeeded",
            PublishState::PartiallySucceeded => "partiallySucceeded",
            PublishState::Failed => "failed",
            PublishState::Expired => "expired",
            PublishState::Cancelled => "cancelled",
            PublishState::DeadLettered => "deadLettered",
        }
    }

    /// The state named `s` ([`PublishState::as_str`]).
    pub fn parse(s: &str) -> Option<PublishState> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }
}

const ALL_STATES: [PublishState; 10] = [
    PublishState::Queued,
    PublishState::Planning,
    PublishState::Dispatching,
    PublishState::Throttled,
    PublishState::Succeeded,
    PublishState::PartiallySucceeded,
    PublishState::Failed,
    PublishState::Expired,
    PublishState::Cancelled,
    PublishState::DeadLettered,
];

/// A publish's counters (device notifications by outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Distinct devices taken up for sending.
    pub planned: i64,
    /// Notifications handed to a provider (every attempt).
    pub dispatched: i64,
    /// Devices notified.
    pub succeeded: i64,
    /// Devices that could not be notified (final).
    pub failed: i64,
    /// Devices not notified because the publish expired.
    pub expired: i64,
    /// Retries scheduled (every one).
    pub retry_scheduled: i64,
    /// Devices whose notification ended in the dead-letter store.
    pub dead_lettered: i64,
}

impl Counters {
    /// The counters as (field name, value) pairs, in a fixed order.
    pub fn fields(&self) -> [(&'static str, i64); 7] {
        [
            ("planned", self.planned),
            ("dispatched", self.dispatched),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("expired", self.expired),
            ("retryScheduled", self.retry_scheduled),
            ("deadLettered", self.dead_lettered),
        ]
    }

    /// Add the field named `name` (unknown names are ignored).
    pub fn add(&mut self, name: &str, v: i64) {
        match name {
            "planned" => self.planned += v,
            "dispatched" => self.dispatched += v,
            "succeeded" => self.succeeded += v,
            "failed" => self.failed += v,
            "expired" => self.expired += v,
            "retryScheduled" => self.retry_scheduled += v,
            "deadLettered" => self.dead_lettered += v,
            _ => {}
        }
    }

    /// Devices with a final outcome.
    pub fn finished(&self) -> i64 {
        self.succeeded + self.failed + self.expired + self.dead_lettered
    }
}

/// A publish's status record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// The publish id (the idempotency key when the caller gave one).
    pub publish_id: String,
    /// Identity of the admission that created the record: a retried admission carrying the
    /// same publish id finds another campaign id and knows it is a duplicate.
    pub campaign: String,
    /// The node's own data about the publish (JSON: request fingerprint, schedule, …).
    pub body: String,
    /// Current state.
    pub state: PublishState,
    /// Counters.
    pub counters: Counters,
    /// Shards created and not yet finished (planning adds, shard completion removes).
    pub pending_shards: i64,
    /// Whether planning produced its last shard.
    pub planning_done: bool,
    /// Why the publish failed, when it did.
    pub error_reason: Option<String>,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Last change (ms since the epoch).
    pub updated_at_ms: u64,
}

/// A change to a [`StatusRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusUpdate {
    /// Added to the counters.
    pub counters: Counters,
    /// Added to `pending_shards`.
    pub pending_shards: i64,
    /// Sets `planning_done` when `Some`.
    pub planning_done: Option<bool>,
    /// The new state (ignored when the current one is terminal, unless `reopen`).
    pub state: Option<PublishState>,
    /// Sets the error reason when `Some`.
    pub error_reason: Option<String>,
    /// Allow a terminal state to change (a replayed dead letter).
    pub reopen: bool,
    /// Apply at most once per (publish, key): a redelivered step does not count twice.
    pub once: Option<String>,
    /// The time of the change (ms since the epoch).
    pub now_ms: u64,
}

/// What [`PushStore::claim_sends`] decided for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendClaim {
    /// Taken by this shard; `first` when the device was never taken up for this publish.
    Fresh {
        /// No earlier shard ever took the device (count it as planned).
        first: bool,
    },
    /// Already taken by this very shard: an earlier delivery of the shard died while
    /// sending, so whether the provider got it is unknown.
    Resumed,
    /// Done, or taken by another shard: not for this shard.
    Taken,
}

/// How a shard finished with one device ([`PushStore::finish_sends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Final (sent, or given up): never taken again for this publish.
    Done,
    /// Retry later: another shard may take it.
    Release,
}

/// One device's end in a shard ([`PushStore::finish_sends`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFinish {
    /// The device.
    pub device: String,
    /// Done or released.
    pub outcome: SendOutcome,
    /// The status counter to add 1 to when the marker changed (`None`: none).
    pub counter: Option<&'static str>,
}

impl SendFinish {
    /// A finish of `device`.
    pub fn new(device: &str, outcome: SendOutcome, counter: Option<&'static str>) -> Self {
        SendFinish {
            device: device.to_owned(),
            outcome,
            counter,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// Unique per app; orders by time (`{occurred_at_ms:013}-{random}`).
    pub id: String,
    /// The provider the notification was for.
    pub provider: String,
    /// When it was dead-lettered (ms since the epoch).
    pub occurred_at_ms: u64,
    /// The node's record (JSON: what to resend, reason, attempts).
    pub body: String,
}

/// Filter of [`PushStore::list_dead_letters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this provider's.
    pub provider: Option<String>,
    /// Only those that occurred at or after (ms).
    pub since_ms: Option<u64>,
    /// Only those that occurred before (ms).
    pub until_ms: Option<u64>,
}

/// The shared push state. See the module docs for the contract.
#[async_trait]
pub trait PushStore: Send + Sync + 'static {
    /// Create or replace a registration (its client index follows). True when created.
    async fn put_device(&self, app: &str, device: &DeviceRecord) -> StoreResult<bool>;
    /// The registrations of `ids`, in order (`None` for unknown ones).
    async fn get_devices(
        &self,
        app: &str,
        ids: &[String],
    ) -> StoreResult<Vec<Option<DeviceRecord>>>;
    /// Up to `limit` registrations after `after` (by id), of `client` when given.
    async fn list_devices(
        &self,
        app: &str,
        client: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeviceRecord>>;
    /// Remove a registration and its subscriptions. True when it existed.
    async fn delete_device(&self, app: &str, id: &str) -> StoreResult<bool>;

    /// Subscribe `who` to `channel`. True when new.
    async fn subscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool>;
    /// Remove one subscription. True when it existed.
    async fn unsubscribe(&self, app: &str, channel: &str, who: &Subscriber) -> StoreResult<bool>;
    /// Up to `limit` subscribers of `channel` after the subscriber key `after`.
    async fn channel_subscribers(
        &self,
        app: &str,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Subscriber>>;
    /// Up to `limit` channels `who` is subscribed to, after `after`.
    async fn subscriber_channels(
        &self,
        app: &str,
        who: &Subscriber,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// Up to `limit` channels with at least one subscriber, after `after`.
    async fn channels(
        &self,
        app: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;

    /// Create the status unless one exists for its publish id: `None` when created, else the
    /// existing record. Kept for `retention`.
    async fn create_status(
        &self,
        app: &str,
        status: &StatusRecord,
        retention: Duration,
    ) -> StoreResult<Option<StatusRecord>>;
    /// The status of `publish_id`.
    async fn get_status(&self, app: &str, publish_id: &str) -> StoreResult<Option<StatusRecord>>;
    /// Apply `update`; the record after it (`None`: no such publish).
    async fn update_status(
        &self,
        app: &str,
        publish_id: &str,
        update: &StatusUpdate,
    ) -> StoreResult<Option<StatusRecord>>;

    /// Take `devices` for `shard` under the send markers of `markers` (a publish id, or a
    /// replay's own key); one answer per device, in order. Atomically adds the devices taken
    /// up for the first time to the `planned` counter of `publish_id`'s status (if any).
    async fn claim_sends(
        &self,
        app: &str,
        publish_id: &str,
        markers: &str,
        shard: &str,
        devices: &[String],
        retention: Duration,
    ) -> StoreResult<Vec<SendClaim>>;
    /// Finish devices held by `shard`; per device, whether the marker changed (false: the
    /// shard did not hold it). Atomically adds 1 to the status counter named with each
    /// changed device ([`Counters::add`] names), so a device's outcome counts exactly once.
    async fn finish_sends(
        &self,
        app: &str,
        publish_id: &str,
        markers: &str,
        shard: &str,
        results: &[SendFinish],
    ) -> StoreResult<Vec<bool>>;

    /// Store a dead letter for `retention`.
    async fn add_dead_letter(
        &self,
        app: &str,
        letter: &DeadLetterRecord,
        retention: Duration,
    ) -> StoreResult<()>;
    /// Up to `limit` dead letters after `after` (by id) matching `filter`.
    async fn list_dead_letters(
        &self,
        app: &str,
        filter: &DeadLetterFilter,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<DeadLetterRecord>>;
    /// Remove and return a dead letter (replay takes it exactly once).
    async fn take_dead_letter(&self, app: &str, id: &str) -> StoreResult<Option<DeadLetterRecord>>;
}
