//! Turning what happened into durable queue jobs, and judging guarded jobs when they are due.
//! Shared by the emitter (every node's reports) and the delivery worker (whichever node
//! claims a job), so a decision one node made is carried out by any other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sockudo_core::adapter::Adapter;
use sockudo_core::app::{App, AppManager};
use sockudo_core::cache::Cache;
use sockudo_core::queue::{JobId, Queue};
use tokio::sync::Notify;

use super::emitter::occupancy_channel;
use super::jobs::{now_ms, random_id, EventJob, Guard, Subject};
use super::transitions::{self, EndVerdict, Span};
use super::{WebhookEvent, WebhookSettings, WebhookStats};

/// How long a start job waits for its span to appear in the marker (the deciding node sets
/// it right after enqueueing): past this, the node died in between and nothing started.
const START_GRACE_MS: u64 = 5_000;
/// How long an end event waits for its start event to be settled (delivered or given up)
/// before it goes out regardless: past the start's whole retry window (≥ 5 minutes of
/// backoff), a start still unsettled can only mean its record was lost.
const END_WAIT_LIMIT_MS: u64 = 15 * 60 * 1000;
/// How soon a held-back job is looked at again.
pub(super) const WAIT_RETRY: Duration = Duration::from_millis(250);

/// What to do with a due job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Deliver,
    Wait,
    Drop,
}

pub(super) struct Decisions {
    pub settings: WebhookSettings,
    pub queue: Arc<dyn Queue>,
    pub cache: Arc<dyn Cache>,
    pub adapter: Arc<dyn Adapter>,
    pub apps: Arc<dyn AppManager>,
    pub stats: Arc<WebhookStats>,
    pub wake: Arc<Notify>,
    /// Apps this node emitted for, by id: the fallback when `apps` does not know a job's
    /// app (an app manager local to the node that emitted, as in embedded setups and tests).
    pub seen: parking_lot::Mutex<std::collections::HashMap<String, Arc<App>>>,
}

pub(super) fn wants(app: &App, kind: &str) -> bool {
    app.webhooks
        .iter()
        .any(|t| t.event_types.is_empty() || t.event_types.iter().any(|e| e == kind))
}

impl Decisions {
    pub(super) fn emit_error(&self, what: &str, error: &str) {
        WebhookStats::bump(&self.stats.emit_errors);
        tracing::warn!(error, "webhook {what} failed; event lost before the queue");
    }

    /// The delay that makes events of one batch window due together, so a worker claims
    /// and POSTs them as one batch.
    pub(super) fn batch_delay(&self) -> Duration {
        let w = u64::try_from(self.settings.batch_window.as_millis()).unwrap_or(0);
        if w == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(w - now_ms() % w)
    }

    /// Enqueue `event` for every target of `app` that wants it. Returns the job ids.
    pub(super) async fn enqueue(
        &self,
        app: &App,
        event: &WebhookEvent,
        guard: &Guard,
        id: &str,
        delay: Duration,
    ) -> Vec<JobId> {
        let mut ids = Vec::new();
        let kind = event.kind();
        self.remember(app);
        for target in &app.webhooks {
            if !(target.event_types.is_empty() || target.event_types.iter().any(|t| t == kind)) {
                continue;
            }
            let job = EventJob {
                id: id.to_owned(),
                app_id: app.id.clone(),
                url: target.url.clone(),
                event: event.clone(),
                guard: guard.clone(),
                created_ms: now_ms(),
                origin: self.settings.consumer.clone(),
            };
            match self.enqueue_job(&job, delay).await {
                Some(id) => ids.push(id),
                None => continue,
            }
        }
        if !ids.is_empty() {
            WebhookStats::bump(&self.stats.emitted);
        }
        ids
    }

    fn remember(&self, app: &App) {
        let mut seen = self.seen.lock();
        if seen.get(&app.id).is_none_or(|a| **a != *app) {
            seen.insert(app.id.clone(), Arc::new(app.clone()));
        }
    }

    /// The app of a job: as the app manager knows it now, else as this node last saw it.
    pub(super) async fn app(&self, app_id: &str) -> Result<Option<Arc<App>>, String> {
        match self.apps.find_by_id(app_id).await {
            Ok(Some(app)) => Ok(Some(app)),
            Ok(None) => Ok(self.seen.lock().get(app_id).cloned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Enqueue one job as it is (also used to hold a job back without spending an attempt).
    pub(super) async fn enqueue_job(&self, job: &EventJob, delay: Duration) -> Option<JobId> {
        let payload = match serde_json::to_vec(job) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                self.emit_error("job encoding", &e.to_string());
                return None;
            }
        };
        match self
            .queue
            .enqueue(&self.settings.queue_name, payload, delay)
            .await
        {
            Ok(id) => {
                WebhookStats::bump(&self.stats.enqueued);
                self.wake.notify_one();
                Some(id)
            }
            Err(e) => {
                self.emit_error("enqueue", &e.to_string());
                None
            }
        }
    }

    /// Start a span of `marker` with `event`: the jobs go to the queue first, then the span
    /// is claimed in the store; when another span runs, the jobs are withdrawn (and would
    /// drop themselves anyway).
    pub(super) async fn start(&self, app: &App, marker: String, event: WebhookEvent) {
        let token = random_id();
        let guard = Guard::Start {
            marker: marker.clone(),
            token: token.clone(),
        };
        let ids = self
            .enqueue(app, &event, &guard, &token, self.batch_delay())
            .await;
        if ids.is_empty() {
            return;
        }
        match transitions::try_start(self.cache.as_ref(), &marker, &token).await {
            Ok(true) => {}
            Ok(false) => {
                for id in ids {
                    // A failed withdrawal is harmless: the job drops itself when due.
                    let _ = self.queue.ack(&self.settings.queue_name, &id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook span start unknown; its job decides"),
        }
    }

    /// The subject lost its last holder: queue its end event, due after the removal delay.
    pub(super) async fn end(
        &self,
        app: &App,
        marker: String,
        subject: Subject,
        event: WebhookEvent,
    ) {
        let token = match transitions::read(self.cache.as_ref(), &marker).await {
            Ok(span) => match span.token() {
                Some(t) => t.to_owned(),
                None => return, // nothing started, nothing to end
            },
            Err(e) => return self.emit_error("span read", &e.to_string()),
        };
        let guard = Guard::End {
            marker,
            token,
            subject,
        };
        let delay = self.settings.removal_delay;
        self.enqueue(app, &event, &guard, &random_id(), delay).await;
    }

    /// Whether `subject` has a holder anywhere in the cluster.
    async fn held(&self, app_id: &str, subject: &Subject) -> Result<bool, String> {
        match subject {
            Subject::Occupancy { channel } => self
                .adapter
                .presence_members(app_id, &occupancy_channel(channel))
                .await
                .map(|s| !s.members.is_empty())
                .map_err(|e| e.to_string()),
            Subject::Member { channel, user_id } => self
                .adapter
                .presence_members(app_id, channel)
                .await
                .map(|s| s.members.iter().any(|m| &m.user_id == user_id))
                .map_err(|e| e.to_string()),
        }
    }

    /// Judge a due job against the shared state.
    pub(super) async fn judge(&self, job: &EventJob) -> Verdict {
        let cache = self.cache.as_ref();
        match &job.guard {
            Guard::None => Verdict::Deliver,
            Guard::Start { marker, token } => match transitions::read(cache, marker).await {
                // Delivered already (to another target, or before a lost ack): still this
                // target's to send, at least once.
                Ok(Span::Pending(t) | Span::Delivered(t)) if &t == token => Verdict::Deliver,
                Ok(Span::Idle { ended: Some(t) }) if &t == token => Verdict::Deliver,
                Ok(span)
                    if span.token().is_none() && now_ms() < job.created_ms + START_GRACE_MS =>
                {
                    Verdict::Wait
                }
                Ok(_) => Verdict::Drop,
                Err(_) => Verdict::Wait,
            },
            Guard::End {
                marker,
                token,
                subject,
            } => {
                let Ok(held) = self.held(&job.app_id, subject).await else {
                    return Verdict::Wait;
                };
                let overdue = now_ms() > job.created_ms.saturating_add(END_WAIT_LIMIT_MS);
                match transitions::decide_end(cache, marker, token, &job.id, held, overdue).await {
                    Ok(EndVerdict::Deliver) => {
                        self.restart_if_held(job, marker, subject).await;
                        Verdict::Deliver
                    }
                    Ok(EndVerdict::Wait) | Err(_) => Verdict::Wait,
                    Ok(EndVerdict::Drop) => Verdict::Drop,
                }
            }
        }
    }

    /// A holder that joined while the end was being decided saw the old span and announced
    /// nothing: start a new span on its behalf (a no-op when it started one itself).
    async fn restart_if_held(&self, job: &EventJob, marker: &str, subject: &Subject) {
        if !matches!(self.held(&job.app_id, subject).await, Ok(true)) {
            return;
        }
        let Ok(Some(app)) = self.app(&job.app_id).await else {
            return;
        };
        let event = match subject {
            Subject::Occupancy { channel } => WebhookEvent::ChannelOccupied {
                channel: channel.clone(),
            },
            Subject::Member { channel, user_id } => WebhookEvent::MemberAdded {
                channel: channel.clone(),
                user_id: user_id.clone(),
            },
        };
        self.start(&app, marker.to_owned(), event).await;
    }

    /// After the start event of a span was delivered (or given up on): let its end proceed.
    pub(super) async fn settled(&self, job: &EventJob) {
        if let Guard::Start { marker, token } = &job.guard {
            if let Err(e) = transitions::mark_delivered(self.cache.as_ref(), marker, token).await {
                tracing::warn!(error = %e, "could not record a delivered start event; its end waits");
            }
        }
    }
}
