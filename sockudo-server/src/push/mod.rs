//! Push notifications (cargo feature `push`, `PUSH_ENABLED`): device registrations, push
//! channel subscriptions, queue-oriented publish and delivery through FCM HTTP v1, APNs
//! (HTTP/2, token auth) and Web Push (RFC 8291 `aes128gcm`, RFC 8292 VAPID).
//!
//! # Flow
//! 1. **Admission** (`admission`): `POST publish` checks limits, enqueues one plan job and
//!    creates the status record with set-if-absent in the shared [`PushStore`]: O(1) work,
//!    no device or subscriber is read before the 202. The status doubles as the
//!    cluster-wide idempotency record of `publishId` / `idempotency_key`.
//! 2. **Planning** (`planner`): a plan job resolves one page of its recipients (≤ 1000
//!    subscribers), groups the devices by provider into shards of `PUSH_SHARD_SIZE` and
//!    enqueues them on the provider's lane for the campaign (`lane`), then enqueues the next
//!    page. Lanes spread campaigns over several queues that workers serve round-robin, so
//!    one large campaign cannot starve the others.
//! 3. **Dispatch** (`dispatch`): workers per provider claim shards, take every device with a
//!    send marker in the store (one holder per device and publish, so a redelivered or
//!    duplicated shard never notifies a device twice), send under a per-provider concurrency
//!    limit, and settle the status.
//!
//! Every stage is a job on the shared [`Queue`] (at-least-once; a node that dies leaves its
//! jobs to another node after the lease). See docs/push.md for the user-facing contract.

pub(crate) mod admission;
mod api;
mod breaker;
mod dispatch;
mod jobs;
pub(crate) mod model;
mod planner;
pub(crate) mod providers;
mod status;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use sockudo_core::push::{MemoryPushStore, PushStore};
use sockudo_core::queue::Queue;

use crate::config::{NodeSettings, PushSection};

pub use api::routes;

/// A failed push operation, as the API answers it.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The request is malformed or over a limit (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such resource (404).
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with an earlier request or the resource's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The shared store or queue did not answer (503).
    #[error("{0}")]
    Unavailable(String),
    /// The push settings cannot work (refused at start).
    #[error("push: {0}")]
    Config(String),
}

impl IntoResponse for PushError {
    fn into_response(self) -> axum::response::Response {
        use http::StatusCode;
        let status = match &self {
            PushError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PushError::NotFound(_) => StatusCode::NOT_FOUND,
            PushError::Conflict(_) => StatusCode::CONFLICT,
            PushError::Unavailable(_) | PushError::Config(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        sockudo_core::layers::json_error(status, &self.to_string())
    }
}

impl From<sockudo_core::push::PushStoreError> for PushError {
    fn from(e: sockudo_core::push::PushStoreError) -> Self {
        PushError::Unavailable(e.to_string())
    }
}

impl From<sockudo_core::queue::QueueError> for PushError {
    fn from(e: sockudo_core::queue::QueueError) -> Self {
        PushError::Unavailable(e.to_string())
    }
}

/// The push subsystem of a node.
pub struct Push {
    pub(crate) settings: PushSection,
    pub(crate) store: Arc<dyn PushStore>,
    pub(crate) queue: Arc<dyn Queue>,
    pub(crate) providers: providers::Providers,
    pub(crate) breakers: breaker::Breakers,
    /// Woken when this node enqueues work, so idle workers do not wait for their poll.
    pub(crate) wake: tokio::sync::Notify,
    pub(crate) node_id: String,
    /// In-flight sends per provider on this node (`PUSH_DISPATCH_CONCURRENCY`).
    limits: std::collections::HashMap<&'static str, Arc<tokio::sync::Semaphore>>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("settings", &self.settings)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl Push {
    /// Build from the node's settings: the store and queue `QUEUE_DRIVER` names (memory, or
    /// the shared Redis / Redis Cluster) and the configured providers. Fails when a
    /// credential cannot be read or the shared store cannot be reached.
    pub async fn connect(settings: &NodeSettings) -> Result<Push, PushError> {
        let store: Arc<dyn PushStore> = match settings.queue.driver.as_str() {
            #[cfg(feature = "redis")]
            driver @ ("redis" | "redis-cluster") => {
                let endpoint = settings.redis.endpoint(driver);
                let prefix = format!("{}:push:", settings.cluster.prefix);
                let store = sockudo_core::push::RedisPushStore::connect(endpoint, &prefix)
                    .await
                    .map_err(|e| PushError::Config(e.to_string()))?;
                Arc::new(store)
            }
            _ => Arc::new(MemoryPushStore::new()),
        };
        Self::with_store(settings, store)
    }

    /// Build on the in-memory store (a single node; `build_node_memory`).
    pub fn memory(settings: &NodeSettings) -> Result<Push, PushError> {
        Self::with_store(settings, Arc::new(MemoryPushStore::new()))
    }

    fn with_store(settings: &NodeSettings, store: Arc<dyn PushStore>) -> Result<Push, PushError> {
        let queue =
            crate::webhooks::queue_for(settings).map_err(|e| PushError::Config(e.to_string()))?;
        let providers = providers::Providers::from_settings(&settings.push)?;
        let limits = providers
            .names()
            .into_iter()
            .map(|p| {
                (
                    p,
                    Arc::new(tokio::sync::Semaphore::new(
                        settings.push.dispatch_concurrency.max(1),
                    )),
                )
            })
            .collect();
        Ok(Push {
            limits,
            settings: settings.push.clone(),
            store,
            queue,
            providers,
            breakers: breaker::Breakers::default(),
            wake: tokio::sync::Notify::new(),
            node_id: settings.node_id.clone(),
        })
    }

    /// The in-flight limit of `provider` on this node.
    pub(crate) fn limit(&self, provider: &str) -> Arc<tokio::sync::Semaphore> {
        self.limits
            .get(provider)
            .cloned()
            .unwrap_or_else(|| Arc::new(tokio::sync::Semaphore::new(1)))
    }

    /// How long statuses, send markers and dead letters are kept.
    pub(crate) fn retention(&self) -> Duration {
        Duration::from_secs(self.settings.publish_status_ttl_days.saturating_mul(86_400))
    }

    /// Whether the circuit breaker of (`provider`, `app`) is open on this node.
    pub fn breaker_open(&self, provider: &str, app: &str) -> bool {
        self.breakers.check(provider, app).is_err()
    }

    /// The queue's backlog per stage (metrics): (stage, depth, oldest age).
    pub async fn backlog(&self) -> Vec<(String, u64, f64)> {
        let mut out = Vec::new();
        for (stage, queues) in jobs::stage_queues(&self.providers) {
            let (mut depth, mut oldest) = (0u64, 0f64);
            for q in queues {
                if let Ok(s) = self.queue.stats(&q).await {
                    depth += s.depth;
                    oldest = oldest.max(s.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
                }
            }
            out.push((stage, depth, oldest));
        }
        out
    }
}

/// Build the push subsystem the settings ask for (none unless `PUSH_ENABLED`), install it on
/// the node and start its workers.
pub async fn install(node: &Arc<crate::node::Node>) -> Result<(), PushError> {
    if !node.settings.push.enabled {
        return Ok(());
    }
    let push = Arc::new(Push::connect(&node.settings).await?);
    worker::spawn(&push);
    node.set_push(push);
    Ok(())
}

/// [`install`] on the in-memory store (synchronous node assembly).
pub fn install_memory(node: &Arc<crate::node::Node>) -> Result<(), PushError> {
    if !node.settings.push.enabled {
        return Ok(());
    }
    let push = Arc::new(Push::memory(&node.settings)?);
    if tokio::runtime::Handle::try_current().is_ok() {
        worker::spawn(&push);
    }
    node.set_push(push);
    Ok(())
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
