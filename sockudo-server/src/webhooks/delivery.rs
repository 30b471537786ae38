//! The delivery worker: claims due webhook jobs from the queue, judges guarded ones against
//! the shared state, and POSTs the jobs of one (app, target) together as one batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sockudo_core::auth::webhook_signature;
use sockudo_core::queue::{Job, NackOutcome};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::decisions::{Decisions, Verdict, WAIT_RETRY};
use super::jobs::{now_ms, EventJob};
use super::{WebhookError, WebhookSettings, WebhookStats};

/// Longest `Retry-After` honoured; beyond it the normal backoff applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

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
    decisions: Arc<Decisions>,
    client: reqwest::Client,
    targets: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: Arc<Semaphore>,
    max_attempts: u32,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("settings", &self.decisions.settings)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Claimed jobs of one (app, target), POSTed together.
struct Group {
    app_id: String,
    url: String,
    jobs: Vec<(Job, EventJob)>,
}

/// Split claimed jobs into per-(app, target) groups of at most `max`, in claim order.
fn group(jobs: Vec<(Job, EventJob)>, max: usize) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for (job, ev) in jobs {
        let open = out
            .iter_mut()
            .find(|g| g.app_id == ev.app_id && g.url == ev.url && g.jobs.len() < max);
        match open {
            Some(g) => g.jobs.push((job, ev)),
            None => out.push(Group {
                app_id: ev.app_id.clone(),
                url: ev.url.clone(),
                jobs: vec![(job, ev)],
            }),
        }
    }
    out
}

/// The Pusher body of `jobs`: `{"time_ms", "events": [...]}`, each event with its
/// idempotency `id`.
fn body_of(jobs: &[&EventJob]) -> String {
    let events: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let mut v = serde_json::to_value(&j.event).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("id".into(), serde_json::Value::String(j.id.clone()));
            }
            v
        })
        .collect();
    serde_json::json!({ "time_ms": now_ms(), "events": events }).to_string()
}

impl Worker {
    pub(super) fn new(decisions: Arc<Decisions>) -> Result<Self, WebhookError> {
        let settings = &decisions.settings;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let max_attempts = settings.max_attempts();
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        Ok(Worker {
            decisions,
            client,
            targets: Mutex::new(HashMap::new()),
            in_flight,
            max_attempts,
        })
    }

    pub(super) fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn settings(&self) -> &WebhookSettings {
        &self.decisions.settings
    }

    fn target_semaphore(&self, url: &str) -> Arc<Semaphore> {
        let mut targets = self.targets.lock();
        let n = self.settings().per_target_concurrency.max(1);
        Arc::clone(
            targets
                .entry(url.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(n))),
        )
    }

    /// Claim and deliver until `stop` fires. Jobs in flight when it fires are abandoned
    /// without ack or nack (as if the node died): their lease returns them to other nodes.
    pub(super) async fn run(self: Arc<Self>, wake: Arc<Notify>, stop: CancellationToken) {
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
            let s = self.settings();
            let claimed = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.decisions.queue.claim(&s.queue_name, &s.consumer, s.lease, free * s.batch_max.max(1)) => r,
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
                    if !self.dispatch(jobs, &stop).await {
                        return;
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

    /// Decode, group and spawn the delivery of claimed jobs. False when the worker stops.
    async fn dispatch(self: &Arc<Self>, jobs: Vec<Job>, stop: &CancellationToken) -> bool {
        let mut decoded = Vec::with_capacity(jobs.len());
        for job in jobs {
            match serde_json::from_slice::<EventJob>(&job.payload) {
                Ok(ev) => decoded.push((job, ev)),
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "malformed webhook job");
                    let q = &self.settings().queue_name;
                    if self
                        .decisions
                        .queue
                        .nack(q, &job.id, Duration::ZERO, 0)
                        .await
                        .is_ok()
                    {
                        WebhookStats::bump(&self.decisions.stats.dead_lettered);
                    }
                }
            }
        }
        for g in group(decoded, self.settings().batch_max.max(1)) {
            let permit = match Arc::clone(&self.in_flight).acquire_owned().await {
                Ok(p) => p,
                Err(_) => return false,
            };
            let (worker, stop) = (Arc::clone(self), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = worker.handle(g, permit) => {}
                }
            });
        }
        true
    }

    async fn ack(&self, job: &Job) {
        if let Err(e) = self
            .decisions
            .queue
            .ack(&self.settings().queue_name, &job.id)
            .await
        {
            // The lease will expire and the job be judged again: at-least-once.
            tracing::warn!(job = %job.id, error = %e, "webhook ack failed");
        }
    }

    /// Judge every job of the group; hold back or drop those that must not go now, POST the
    /// rest as one batch and settle them together.
    async fn handle(&self, g: Group, _permit: OwnedSemaphorePermit) {
        let d = &self.decisions;
        let app = match d.app(&g.app_id).await {
            Ok(app) => app,
            Err(e) => {
                tracing::warn!(app = %g.app_id, error = %e, "webhook app lookup failed; retrying");
                for (job, _) in &g.jobs {
                    let _ = d
                        .queue
                        .nack(
                            &self.settings().queue_name,
                            &job.id,
                            Duration::from_secs(1),
                            u32::MAX,
                        )
                        .await;
                }
                return;
            }
        };
        let target = app
            .as_ref()
            .and_then(|a| a.webhooks.iter().find(|t| t.url == g.url).cloned());
        let (Some(app), Some(target)) = (app, target) else {
            // The app or this target was removed from the configuration: nothing to send.
            for (job, _) in &g.jobs {
                self.ack(job).await;
            }
            return;
        };
        let mut send = Vec::new();
        for (job, ev) in g.jobs {
            match d.judge(&ev).await {
                Verdict::Deliver => send.push((job, ev)),
                Verdict::Drop => self.ack(&job).await,
                Verdict::Wait => {
                    // A fresh copy (same idempotency id) so waiting spends no attempt.
                    if d.enqueue_job(&ev, WAIT_RETRY).await.is_some() {
                        self.ack(&job).await;
                    }
                }
            }
        }
        if send.is_empty() {
            return;
        }
        let body = body_of(&send.iter().map(|(_, e)| e).collect::<Vec<_>>());
        let signature = webhook_signature(&app.secret, body.as_bytes());
        let ours = ["content-type", "x-pusher-key", "x-pusher-signature"];
        let mut headers: Vec<(String, String)> = target
            .headers
            .iter()
            .filter(|(k, _)| !ours.contains(&k.to_ascii_lowercase().as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers.push(("Content-Type".into(), "application/json".into()));
        headers.push(("X-Pusher-Key".into(), app.key.clone()));
        headers.push(("X-Pusher-Signature".into(), signature));
        // Wait for a slot of this target, but never past the point where the POST could
        // outlive the lease (then another node would send it too).
        let s = self.settings();
        let wait = s
            .lease
            .saturating_sub(s.request_timeout)
            .saturating_sub(Duration::from_secs(1));
        let sem = self.target_semaphore(&g.url);
        let outcome = match tokio::time::timeout(wait, sem.acquire_owned()).await {
            Ok(Ok(slot)) => {
                let o = self.post(&g.url, &headers, body).await;
                drop(slot);
                o
            }
            _ => Outcome::Retry(
                Some(Duration::from_millis(100)),
                "target busy on this node".into(),
            ),
        };
        self.settle(&send, outcome, &g.url).await;
    }

    async fn post(&self, url: &str, headers: &[(String, String)], body: String) -> Outcome {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
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

    async fn settle(&self, jobs: &[(Job, EventJob)], outcome: Outcome, url: &str) {
        let d = &self.decisions;
        let stats = &d.stats;
        let q = &self.settings().queue_name;
        match outcome {
            Outcome::Delivered => {
                WebhookStats::bump(&stats.sent);
                for (job, ev) in jobs {
                    d.settled(ev).await;
                    if ev.origin != self.settings().consumer {
                        WebhookStats::bump(&stats.taken_over);
                    }
                    self.ack(job).await;
                }
            }
            Outcome::Retry(after, why) => {
                WebhookStats::bump(&stats.failed);
                let attempts = jobs.iter().map(|(j, _)| j.attempts).max().unwrap_or(1);
                let s = self.settings();
                let mut delay = jittered(backoff_delay(attempts, s.backoff_base, s.backoff_cap));
                if let Some(after) = after {
                    delay = delay.max(after);
                }
                for (job, ev) in jobs {
                    match d.queue.nack(q, &job.id, delay, self.max_attempts).await {
                        Ok(NackOutcome::Retried) => {
                            WebhookStats::bump(&stats.retried);
                            tracing::debug!(job = %job.id, url, attempts = job.attempts, reason = %why, retry_ms = delay.as_millis() as u64, "webhook retry scheduled");
                        }
                        Ok(NackOutcome::DeadLettered) => {
                            WebhookStats::bump(&stats.dead_lettered);
                            d.settled(ev).await;
                            tracing::warn!(job = %job.id, url, attempts = job.attempts, reason = %why, "webhook dead-lettered after retries");
                        }
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "webhook nack failed"),
                    }
                }
            }
            Outcome::Permanent(why) => {
                WebhookStats::bump(&stats.failed);
                for (job, ev) in jobs {
                    match d.queue.nack(q, &job.id, Duration::ZERO, 0).await {
                        Ok(_) => {
                            WebhookStats::bump(&stats.dead_lettered);
                            d.settled(ev).await;
                            tracing::warn!(job = %job.id, url, reason = %why, "webhook dead-lettered: permanent failure");
                        }
                        Err(e) => tracing::warn!(job = %job.id, error = %e, "webhook nack failed"),
                    }
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
