//! The shared work [`Queue`] contract (at-least-once, leased jobs, backoff, dead letters) and
//! its implementations: [`MemoryQueue`] (embedded default, one process) and `RedisQueue`
//! (feature `redis`, shared by every node and durable across node crashes).
//!
//! # Contract (every implementation, checked by [`conformance::run_all`])
//! - **At-least-once.** A job enqueued successfully is handed out by [`Queue::claim`] until it
//!   is acked or dead-lettered. A consumer may see the same job more than once (its lease
//!   expired, or it crashed after the effect but before [`Queue::ack`]); work must tolerate it.
//! - **Leases.** A claimed job is invisible to other consumers for its lease. When the lease
//!   passes without an ack or nack, the job becomes claimable again (by anyone), so work
//!   claimed by a node that died is redelivered after its lease.
//! - **Attempts.** Every claim of a job (first delivery, retry or redelivery after a lease)
//!   increments its `attempts`; the claimed [`Job`] carries the new count (1 on the first
//!   claim).
//! - **Retries and dead letters.** [`Queue::nack`] reschedules a job after a delay (the
//!   caller's backoff) unless it has reached `max_attempts`, in which case it moves to the
//!   queue's dead-letter store, readable with [`Queue::dead_letters`].
//! - **No ordering.** Nothing about delivery order is guaranteed, not even for jobs enqueued
//!   by one caller with the same delay. Due jobs are *usually* handed out oldest-due first.
//! - **Names.** Queues are independent namespaces created on first use.
//! - `Err` means the outcome is unknown (the operation may or may not have happened).
//!
//! Lease ownership is not tracked per consumer: an ack or nack that arrives after the job's
//! lease expired acts on the job even if another consumer claimed it meanwhile (an ack then
//! prevents a duplicate effect; a nack reschedules it). Keep the work well inside the lease.

#[doc(hidden)]
pub mod conformance;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "redis")]
pub use self::redis::{RedisQueue, RedisQueueOptions};
pub use memory::MemoryQueue;

/// Identity of a job within its queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A claimed (or dead-lettered) job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id (for ack, retry and dead-letter).
    pub id: JobId,
    /// What was enqueued.
    pub payload: Bytes,
    /// How many times the job has been claimed, this claim included.
    pub attempts: u32,
}

/// What [`Queue::nack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Rescheduled after the requested delay.
    Retried,
    /// Moved to the dead-letter store: it had reached `max_attempts`.
    DeadLettered,
}

/// Observable state of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Jobs neither acked nor dead-lettered: waiting (due or delayed) plus leased.
    pub depth: u64,
    /// Time since the oldest of those jobs was enqueued; `None` when `depth` is 0.
    pub oldest_age: Option<Duration>,
    /// Jobs in the dead-letter store.
    pub dead_letters: u64,
}

/// Why the queue could not answer.
#[derive(Debug, thiserror::Error, Clone)]
pub enum QueueError {
    /// The queue cannot answer.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The job does not exist (already acked, dead-lettered, or never enqueued).
    #[error("unknown job {0}")]
    UnknownJob(JobId),
}

/// A shared at-least-once work queue. See the module docs for the contract.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Add a job that becomes claimable after `delay` (zero: at once). Returns its id, unique
    /// within `queue`. `Ok` means the job is stored (durably, for shared implementations).
    async fn enqueue(
        &self,
        queue: &str,
        payload: Bytes,
        delay: Duration,
    ) -> Result<JobId, QueueError>;

    /// Lease up to `max` due jobs to `consumer` for `lease`. Each returned job's `attempts`
    /// was incremented by this claim. Jobs whose lease expired are claimable again, so a
    /// claim also returns redeliveries of work abandoned by other consumers. Returns an empty
    /// list when nothing is due; never waits for work to arrive. `consumer` names the caller
    /// in diagnostics only (it does not own the job beyond the lease).
    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, QueueError>;

    /// Done: remove the job for good. Returns whether it still existed (false when it was
    /// already acked or dead-lettered); acking twice is harmless.
    async fn ack(&self, queue: &str, id: &JobId) -> Result<bool, QueueError>;

    /// Failed: when the job's attempts have reached `max_attempts` it moves to the
    /// dead-letter store ([`NackOutcome::DeadLettered`]), otherwise it becomes claimable again
    /// after `retry_in` ([`NackOutcome::Retried`]). `max_attempts` 0 or 1 dead-letters at once
    /// (a permanent failure). [`QueueError::UnknownJob`] when the job no longer exists.
    async fn nack(
        &self,
        queue: &str,
        id: &JobId,
        retry_in: Duration,
        max_attempts: u32,
    ) -> Result<NackOutcome, QueueError>;

    /// Depth, oldest age and dead-letter count of `queue`.
    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError>;

    /// Up to `limit` dead-lettered jobs, most recent first. The store is bounded by the
    /// implementation (oldest dropped first); see its docs.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, QueueError>;

    /// Whether the backend currently answers (readiness probes).
    async fn ping(&self) -> Result<(), QueueError> {
        self.stats("__sockudo_ping").await.map(|_| ())
    }
}
