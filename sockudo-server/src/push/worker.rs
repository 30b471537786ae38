//! The node's push workers: one plan loop, and per configured provider a few dispatch loops
//! that serve the provider's lanes round-robin. Workers hold the subsystem weakly and stop
//! when it is dropped. A job that fails (store or queue unavailable) is nacked with backoff;
//! one that cannot be decoded is dead-lettered in the queue at once and logged.

use std::sync::{Arc, Weak};
use std::time::Duration;

use sockudo_core::queue::Job;

use super::jobs::{dispatch_queue, PlanJob, ShardJob, LANES, PLAN_QUEUE};
use super::{dispatch, planner, Push, PushError};

/// How often an idle loop polls the shared queue: from [`POLL`], doubling while the queue stays
/// empty up to [`POLL_MAX`] (an idle cluster costs each node a few Redis calls per second);
/// enqueues on this node wake it at once, work enqueued by another node waits for the poll.
const POLL: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Shards one node works on at once per provider.
const SHARDS_IN_FLIGHT: u64 = 4;
/// Attempts of a plan or shard job whose processing failed (not of a device's send).
const JOB_ATTEMPTS: u32 = 50;

/// Start the workers of `push` on the current runtime.
pub fn spawn(push: &Arc<Push>) {
    let weak = Arc::downgrade(push);
    tokio::spawn(plan_loop(weak.clone()));
    for provider in push.providers.names() {
        for worker in 0..SHARDS_IN_FLIGHT {
            tokio::spawn(dispatch_loop(weak.clone(), provider, worker));
        }
    }
}

fn lease(push: &Push) -> Duration {
    Duration::from_secs(push.settings.lease_secs.max(1))
}

/// Wait for a wake-up or `wait`; the next wait (doubled, capped).
async fn idle(weak: &Weak<Push>, wait: Duration) -> Duration {
    let Some(push) = weak.upgrade() else {
        return wait;
    };
    let _ = tokio::time::timeout(wait, push.wake.notified()).await;
    (wait * 2).min(POLL_MAX)
}

async fn plan_loop(weak: Weak<Push>) {
    let mut wait = POLL;
    loop {
        let Some(push) = weak.upgrade() else { return };
        let consumer = push.node_id.clone();
        match push
            .queue
            .claim(PLAN_QUEUE, &consumer, lease(&push), 4)
            .await
        {
            Ok(jobs) if !jobs.is_empty() => {
                let runs = jobs.into_iter().map(|job| {
                    let push = Arc::clone(&push);
                    async move {
                        let result = match serde_json::from_slice::<PlanJob>(&job.payload) {
                            Ok(plan) => planner::run(&push, plan).await,
                            Err(e) => Err(PushError::BadRequest(e.to_string())),
                        };
                        finish(&push, PLAN_QUEUE, &job, result).await;
                    }
                });
                futures_util::future::join_all(runs).await;
                wait = POLL;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "push plan queue unavailable"),
        }
        drop(push);
        wait = idle(&weak, wait).await;
    }
}

async fn dispatch_loop(weak: Weak<Push>, provider: &'static str, worker: u64) {
    let mut lane = worker % LANES;
    let mut wait = POLL;
    loop {
        let Some(push) = weak.upgrade() else { return };
        let mut worked = false;
        for _ in 0..LANES {
            lane = (lane + 1) % LANES;
            let q = dispatch_queue(provider, lane);
            match push.queue.claim(&q, &push.node_id, lease(&push), 1).await {
                Ok(jobs) => {
                    for job in jobs {
                        worked = true;
                        let holder = format!("{}/{}", lane, job.id);
                        let result = match serde_json::from_slice::<ShardJob>(&job.payload) {
                            Ok(shard) => dispatch::run(&push, &holder, shard).await,
                            Err(e) => Err(PushError::BadRequest(e.to_string())),
                        };
                        finish(&push, &q, &job, result).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, provider, "push dispatch queue unavailable");
                    break;
                }
            }
        }
        drop(push);
        if worked {
            wait = POLL;
        } else {
            wait = idle(&weak, wait).await;
        }
    }
}

/// Ack a processed job; nack a failed one (dead-letter an undecodable one at once).
async fn finish(push: &Push, queue: &str, job: &Job, result: Result<(), PushError>) {
    let outcome = match result {
        Ok(()) => push.queue.ack(queue, &job.id).await.map(|_| ()),
        Err(PushError::BadRequest(e)) => {
            tracing::error!(queue, job = %job.id, error = %e, "undecodable push job dead-lettered");
            push.queue
                .nack(queue, &job.id, Duration::ZERO, 0)
                .await
                .map(|_| ())
        }
        Err(e) => {
            tracing::warn!(queue, job = %job.id, error = %e, "push job failed; retrying");
            let wait = crate::webhooks::backoff_delay(
                job.attempts,
                Duration::from_millis(500),
                Duration::from_secs(30),
            );
            push.queue
                .nack(queue, &job.id, wait, JOB_ATTEMPTS)
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(queue, job = %job.id, error = %e, "push job ack/nack failed; it will be redelivered after its lease");
    }
}
