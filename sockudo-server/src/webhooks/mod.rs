//! Webhooks (docs/protocol.md §8): per-app targets, Pusher bodies and signatures, batching,
//! cluster-wide occupied/vacated and member events, and at-least-once delivery through the
//! shared [`Queue`].
//!
//! # Flow
//! 1. The WebSocket handler reports what happened ([`Webhooks::subscribed`],
//!    [`Webhooks::unsubscribed`], [`Webhooks::member_added`], [`Webhooks::member_removed`],
//!    [`Webhooks::client_event`], [`Webhooks::cache_miss`]). Nothing is done for an app
//!    without a target that wants the event type.
//! 2. Each event is enqueued to the shared [`Queue`] the moment it is decided, one job per
//!    (event, target) — nothing waits in a node's memory, so a node that dies a moment later
//!    loses nothing ([`WebhookStats::emit_errors`] counts the only losses: the cache or queue
//!    not answering, and must stay 0). Jobs are due at the end of the current
//!    [`WebhookSettings::batch_window`] (default 250 ms), so the events of one window are due
//!    together.
//! 3. A worker on every node claims due jobs ([`WebhookSettings::lease`], default 30 s),
//!    groups those of one (app, target) into POSTs of at most [`WebhookSettings::batch_max`]
//!    (default 50) events, signs each body at delivery (`X-Pusher-Key`, `X-Pusher-Signature`
//!    = hex HMAC-SHA256 of the body under the app secret, custom headers), acks on 2xx, and
//!    nacks with exponential backoff and jitter on 5xx/408/429/connection errors (honouring
//!    `Retry-After` in seconds), from 1 s capped at 60 s, with enough attempts to keep
//!    retrying for [`WebhookSettings::retry_window`] (default 5 min); then the job is
//!    dead-lettered. Any other non-2xx answer dead-letters it at once. A node that dies
//!    holding a job leaves it to another node after the lease.
//!
//! # Idempotency id
//! Every event object in a body carries `"id"`: a random string, the same for every target,
//! retry and redelivery of that event. `client_event` and `cache_miss` are at-least-once (a
//! redelivery after a lease or a lost ack sends them again): receivers dedup on `id`.
//!
//! # Cluster-wide occupancy and membership: exactly once per transition
//! Each node holds one share of a channel's occupancy in the adapter's presence store (see
//! [`OCCUPANCY_PREFIX`]) while it has a subscriber; presence members are the adapter's. The
//! paired events follow the span state machine of `transitions.rs`, kept in the cache ([`sockudo_core::cache::Cache`]):
//! - The first holder starts a span: its `channel_occupied` / `member_added` job is enqueued,
//!   then the span claimed with one compare-and-swap; of concurrent starters one wins, the
//!   others withdraw their jobs. A start job only sends while its span is the current one.
//! - The last holder gone (a leave, or the sweep of a dead node or of a previous incarnation
//!   of a restarting node id) enqueues the end job at once, due after
//!   [`WebhookSettings::removal_delay`]. Whichever node claims it when due re-checks the
//!   holders: held again → dropped (a quick rejoin sends nothing); otherwise the end of the
//!   span is decided once (a set-if-absent keyed by the span), so of several end jobs for one
//!   span (the leaver's and a sweeper's) exactly one sends, and it still sends when its node
//!   dies after deciding. An end job waits until its start event was delivered (or
//!   dead-lettered), so `channel_vacated` never overtakes its `channel_occupied`.
//!
//! Bound: an occupation or presence session that ends is reported within the removal delay
//! plus the time its node takes to be swept (`node_timeout` for a dead node, at once for a
//! node restarted under the same id), plus the receiver's retries (and a lease when the
//! delivering node dies mid-POST).

mod decisions;
mod delivery;
mod emitter;
mod jobs;
#[cfg(feature = "redis")]
mod lazy_redis;
mod transitions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sockudo_core::queue::{MemoryQueue, Queue};

use crate::config::NodeSettings;

pub use delivery::{backoff_delay, max_attempts_for};
pub use emitter::{occupancy_channel, Webhooks, OCCUPANCY_PREFIX};

/// Tunables of the webhook pipeline.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// How long events are buffered per app before a batch is sent (default 250 ms).
    pub batch_window: Duration,
    /// Most events in one POST (default 50, Pusher's batch size).
    pub batch_max: usize,
    /// Delay of `channel_vacated` / `member_removed` (default 3 s).
    pub removal_delay: Duration,
    /// Timeout of one POST (default 5 s).
    pub request_timeout: Duration,
    /// Lease of a claimed job (default 30 s): a node that dies holding it leaves it to
    /// others after this.
    pub lease: Duration,
    /// First retry delay (default 1 s).
    pub backoff_base: Duration,
    /// Largest retry delay (default 60 s).
    pub backoff_cap: Duration,
    /// Keep retrying a failing job at least this long (default 5 min).
    pub retry_window: Duration,
    /// Most concurrent POSTs to one URL from one node (default 8).
    pub per_target_concurrency: usize,
    /// Most jobs in flight on one node (default 64).
    pub max_in_flight: usize,
    /// How often an idle worker polls the queue (default 250 ms; local enqueues wake it).
    pub poll_interval: Duration,
    /// The queue name (default `webhooks`).
    pub queue_name: String,
    /// Consumer name in the queue (the node id).
    pub consumer: String,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            batch_window: Duration::from_millis(250),
            batch_max: 50,
            removal_delay: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            retry_window: Duration::from_secs(300),
            per_target_concurrency: 8,
            max_in_flight: 64,
            poll_interval: Duration::from_millis(250),
            queue_name: "webhooks".into(),
            consumer: "node".into(),
        }
    }
}

impl WebhookSettings {
    /// The operator-facing values of `settings` (`webhook_batch_ms`, `webhook_delay_secs`,
    /// `webhook_timeout_secs`, `node_id`) over the defaults.
    pub fn from_node(settings: &NodeSettings) -> Self {
        WebhookSettings {
            batch_window: Duration::from_millis(settings.webhook_batch_ms),
            removal_delay: Duration::from_secs(settings.webhook_delay_secs),
            request_timeout: Duration::from_secs(settings.webhook_timeout_secs.max(1)),
            consumer: settings.node_id.clone(),
            ..WebhookSettings::default()
        }
    }

    /// Attempts allowed before dead-lettering, so retries span at least `retry_window`.
    pub fn max_attempts(&self) -> u32 {
        max_attempts_for(self.backoff_base, self.backoff_cap, self.retry_window)
    }
}

/// Delivery counters (read by metrics).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events this node decided to emit (each enqueued for every target that wants it).
    pub emitted: AtomicU64,
    /// Jobs durably enqueued (one per event and target, plus held-back copies).
    pub enqueued: AtomicU64,
    /// POSTs answered with 2xx.
    pub sent: AtomicU64,
    /// POSTs that failed (non-2xx, timeout, connection error).
    pub failed: AtomicU64,
    /// Failed jobs rescheduled for another attempt.
    pub retried: AtomicU64,
    /// Jobs given up on (permanent failure or attempts exhausted).
    pub dead_lettered: AtomicU64,
    /// Events lost before reaching the queue (cache or queue unavailable): must stay 0.
    pub emit_errors: AtomicU64,
    /// Jobs this node delivered that another node decided (a survivor flushing a dead
    /// node's events, or simply another node's worker being first).
    pub taken_over: AtomicU64,
}

/// A point-in-time copy of [`WebhookStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookStatsSnapshot {
    /// Events emitted.
    pub emitted: u64,
    /// Events put on the queue.
    pub enqueued: u64,
    /// POSTs delivered.
    pub sent: u64,
    /// POSTs that failed.
    pub failed: u64,
    /// Jobs retried.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
    /// Events that could not be emitted.
    pub emit_errors: u64,
    /// Jobs another node decided.
    pub taken_over: u64,
}

impl WebhookStats {
    /// The counters now.
    pub fn snapshot(&self) -> WebhookStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WebhookStatsSnapshot {
            emitted: l(&self.emitted),
            enqueued: l(&self.enqueued),
            sent: l(&self.sent),
            failed: l(&self.failed),
            retried: l(&self.retried),
            dead_lettered: l(&self.dead_lettered),
            emit_errors: l(&self.emit_errors),
            taken_over: l(&self.taken_over),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One event in a webhook body; `name` is the event type, as Pusher sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The first subscriber joined a channel (cluster-wide).
    ChannelOccupied {
        /// The channel.
        channel: String,
    },
    /// The last subscriber left a channel (cluster-wide).
    ChannelVacated {
        /// The channel.
        channel: String,
    },
    /// A user joined a presence channel.
    MemberAdded {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// A user left a presence channel.
    MemberRemoved {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// A client event was sent.
    ClientEvent {
        /// The channel.
        channel: String,
        /// The event name.
        event: String,
        /// The event data as a string (JSON text when the client sent a non-string value).
        data: String,
        /// The sender's socket id.
        socket_id: String,
        /// The sender's user id on presence channels.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// A subscriber found nothing cached on a cache channel.
    CacheMiss {
        /// The channel.
        channel: String,
    },
}

impl WebhookEvent {
    /// The event type (`name` on the wire, `event_types` entries in the config).
    pub fn kind(&self) -> &'static str {
        match self {
            WebhookEvent::ChannelOccupied { .. } => "channel_occupied",
            WebhookEvent::ChannelVacated { .. } => "channel_vacated",
            WebhookEvent::MemberAdded { .. } => "member_added",
            WebhookEvent::MemberRemoved { .. } => "member_removed",
            WebhookEvent::ClientEvent { .. } => "client_event",
            WebhookEvent::CacheMiss { .. } => "cache_miss",
        }
    }
}

/// Why the webhook pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The HTTP client could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(String),
    /// The queue could not be built.
    #[error("webhook queue: {0}")]
    Queue(String),
}

/// The queue `settings.queue.driver` names: `memory` (default), or `redis` /
/// `redis-cluster` (feature `redis`) at `REDIS_URL` / `REDIS_CLUSTER_NODES`, connected lazily on first use so building a node
/// stays synchronous; a connection failure surfaces as queue errors (logged, retried).
pub fn queue_for(settings: &NodeSettings) -> Result<Arc<dyn Queue>, WebhookError> {
    match settings.queue.driver.as_str() {
        "memory" => Ok(Arc::new(MemoryQueue::new())),
        #[cfg(feature = "redis")]
        driver @ ("redis" | "redis-cluster") => Ok(Arc::new(lazy_redis::LazyRedisQueue::new(
            settings.redis.endpoint(driver),
            format!("{}:queue:", settings.cluster.prefix),
        ))),
        other => Err(WebhookError::Queue(format!(
            "queue driver {other:?} is not supported by this build"
        ))),
    }
}

/// Build the pipeline `node.settings` describe on the node's cache and adapter (and `queue`,
/// or the queue the settings name), install it on the node and start its worker (when a
/// Tokio runtime is running). Errors are logged and leave the node without webhooks: they
/// never stop it from serving.
pub fn install(node: &Arc<crate::node::Node>, queue: Option<Arc<dyn Queue>>) {
    let queue = match queue {
        Some(q) => Ok(q),
        None => queue_for(&node.settings),
    };
    let built = queue.and_then(|queue| {
        Webhooks::new(
            WebhookSettings::from_node(&node.settings),
            queue,
            Arc::clone(&node.cache),
            Arc::clone(&node.adapter),
            Arc::clone(&node.apps),
        )
    });
    match built {
        Ok(w) => {
            if tokio::runtime::Handle::try_current().is_ok() {
                w.spawn_worker();
            }
            node.set_webhooks(Arc::new(w));
        }
        Err(e) => tracing::error!(error = %e, "webhooks disabled"),
    }
}
