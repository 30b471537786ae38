//! The delivery worker: claims webhook jobs from the queue and POSTs them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sockudo_core::queue::{Job, NackOutcome, Queue};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{WebhookError, WebhookSettings, WebhookStats};

/// Longest `Retry-After` honoured; beyond it the normal backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What one queue job holds: a ready-to-send request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct JobPayload {
    pub app_id: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The upper bound of the retry delay after `attempt` failed attempts (1-based):
/// `base * 2^(attempt-1)`, capped at `cap`. The actual delay is jittered uniformly in
/// `[bound/2, bound]` so nodes retrying the same target spread out.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    base.checked_mul(1u32 << exp).unwrap_or(cap).min(cap)
}

fn jittered(bound: Duration) -> Duration {
    let half = bound / 2;
    let extra = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(if extra == 0 {
        0
    } else {
        rand::random_range(0..=extra)
    })
}

/// Attempts (the first one included) needed so that retries with [`backoff_delay`], at
/// their shortest jitter, span at least `window`.
pub fn max_attempts_for(base: Duration, cap: Duration, window: Duration) -> u32 {
    let base = base.max(Duration::from_millis(1));
    let cap = cap.max(base);
    let mut total = Duration::ZERO;
    let mut retries = 0u32;
    while total < window && retries < 100_000 {
        retries += 1;
        total += backoff_delay(retries, base, cap) / 2;
    }
    retries + 1
}

enum Outcome {
    Delivered,
    /// Worth another attempt; with the server's `Retry-After` when it sent one.
    Retry(Option<Duration>, String),
    /// Will not succeed by retrying.
    Permanent(String),
}

/// The worker of one node. Shared by its spawned delivery tasks.
pub(super) struct Worker {
    queue: Arc<dyn Queue>,
    settings: WebhookSettings,
    stats: Arc<WebhookStats>,
    client: reqwest::Client,
    targets: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
    max_attempts: u32,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.settings)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Worker {
    pub(super) fn new(
        queue: Arc<dyn Queue>,
        settings: WebhookSettings,
        stats: Arc<WebhookStats>,
    ) -> Result<Self, WebhookError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let max_attempts = settings.max_attempts();
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        Ok(Worker {
            queue,
            settings,
            stats,
            client,
            targets: Mutex::new(HashMap::new()),
            in_flight,
            max_attempts,
        })
    }

    pub(super) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn target_semaphore(&self, url: &str) -> Arc<Semaphore> {
        let mut targets = self.targets.lock();
        Arc::clone(targets.entry(url.to_owned()).or_insert_with(|| {
            Arc::new(Semaphore::new(self.settings.per_target_concurrency.max(1)))
        }))
    }

    /// Claim and deliver until `stop` fires. Jobs in flight when it fires are abandoned
    /// without ack or nack (as if the node died): their lease returns them to other nodes.
    pub(super) async fn run(self: Arc<Self>, wake: Arc<Notify>, stop: CancellationToken) {
        let s = &self.settings;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let free = self.in_flight.available_permits();
            if free == 0 {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    p = Arc::clone(&self.in_flight).acquire_owned() => drop(p),
                }
                continue;
            }
            let claimed = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.queue.claim(&s.queue_name, &s.consumer, s.lease, free) => r,
            };
            match claimed {
                Ok(jobs) if jobs.is_empty() => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep(s.poll_interval) => {}
                    }
                }
                Ok(jobs) => {
                    for job in jobs {
                        let permit = match Arc::clone(&self.in_flight).try_acquire_owned() {
                            Ok(p) => p,
                            Err(_) => match Arc::clone(&self.in_flight).acquire_owned().await {
                                Ok(p) => p,
                                Err(_) => return,
                            },
                        };
                        let (worker, stop) = (Arc::clone(&self), stop.clone());
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = worker.handle(job, permit) => {}
                            }
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook queue claim failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, job: Job, _permit: OwnedSemaphorePermit) {
        let payload: JobPayload = match serde_json::from_slice(&job.payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "malformed webhook job");
                return self
                    .settle(&job, Outcome::Permanent(format!("malformed job: {e}")), "?")
                    .await;
            }
        };
        // Wait for a slot of this target, but never past the point where the POST could
        // outlive the lease (then another node would send it too).
        let wait = self
            .settings
            .lease
            .saturating_sub(self.settings.request_timeout)
            .saturating_sub(Duration::from_secs(1));
        let sem = self.target_semaphore(&payload.url);
        let slot = match tokio::time::timeout(wait, sem.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                let retry = Outcome::Retry(
                    Some(Duration::from_millis(100)),
                    "target busy on this node".into(),
                );
                return self.settle(&job, retry, &payload.url).await;
            }
        };
        let outcome = self.post(&payload).await;
        drop(slot);
        self.settle(&job, outcome, &payload.url).await;
    }

    async fn post(&self, p: &JobPayload) -> Outcome {
        let mut req = self.client.post(&p.url).body(p.body.clone());
        for (k, v) in &p.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Outcome::Delivered;
                }
                let code = status.as_u16();
                if code == 408 || code == 429 || status.is_server_error() {
                    let after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    Outcome::Retry(after, format!("HTTP {code}"))
                } else {
                    Outcome::Permanent(format!("HTTP {code}"))
                }
            }
            Err(e) if e.is_builder() => Outcome::Permanent(format!("invalid request: {e}")),
            Err(e) => Outcome::Retry(None, e.to_string()),
        }
    }

    async fn settle(&self, job: &Job, outcome: Outcome, url: &str) {
        let q = &self.settings.queue_name;
        match outcome {
            Outcome::Delivered => {
                WebhookStats::bump(&self.stats.sent);
                if let Err(e) = self.queue.ack(q, &job.id).await {
                    // The lease will expire and the job be sent again: at-least-once.
                    tracing::warn!(job = %job.id, error = %e, "webhook ack failed");
                }
            }
            Outcome::Retry(after, why) => {
                WebhookStats::bump(&self.stats.failed);
                let mut delay = jittered(backoff_delay(
                    job.attempts,
                    self.settings.backoff_base,
                    self.settings.backoff_cap,
                ));
                if let Some(after) = after {
                    delay = delay.max(after);
                }
                match self.queue.nack(q, &job.id, delay, self.max_attempts).await {
                    Ok(NackOutcome::Retried) => {
                        WebhookStats::bump(&self.stats.retried);
                        tracing::debug!(job = %job.id, url, attempts = job.attempts, reason = %why, retry_ms = delay.as_millis() as u64, "webhook retry scheduled");
                    }
                    Ok(NackOutcome::DeadLettered) => {
                        WebhookStats::bump(&self.stats.dead_lettered);
                        tracing::warn!(job = %job.id, url, attempts = job.attempts, reason = %why, "webhook dead-lettered after retries");
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "webhook nack failed"),
                }
            }
            Outcome::Permanent(why) => {
                WebhookStats::bump(&self.stats.failed);
                match self.queue.nack(q, &job.id, Duration::ZERO, 0).await {
                    Ok(_) => {
                        WebhookStats::bump(&self.stats.dead_lettered);
                        tracing::warn!(job = %job.id, url, reason = %why, "webhook dead-lettered: permanent failure");
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "webhook nack failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let (b, c) = (Duration::from_secs(1), Duration::from_secs(60));
        let d: Vec<u64> = (1..=9).map(|a| backoff_delay(a, b, c).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(u32::MAX, b, c), c);
        for _ in 0..100 {
            let j = jittered(Duration::from_secs(8));
            assert!(
                j >= Duration::from_secs(4) && j <= Duration::from_secs(8),
                "{j:?}"
            );
        }
    }

    #[test]
    fn attempts_cover_the_retry_window() {
        let (b, c, w) = (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        let n = max_attempts_for(b, c, w);
        let shortest: Duration = (1..n).map(|a| backoff_delay(a, b, c) / 2).sum();
        assert!(shortest >= w, "{n} attempts span only {shortest:?}");
        let one_less: Duration = (1..n - 1).map(|a| backoff_delay(a, b, c) / 2).sum();
        assert!(one_less < w, "{n} is more than needed");
        assert_eq!(
            max_attempts_for(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            1
        );
    }
}
