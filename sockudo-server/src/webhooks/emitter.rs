//! The emitting side: what the node reports, turned at once into durable queue jobs.
//!
//! Nothing waits in this node's memory: every event goes to the shared queue when it is
//! decided (paired events under the guards of [`super::transitions`]), so a node that dies a
//! moment later loses nothing. Batching happens at delivery (see [`super::delivery`]).

use std::sync::Arc;

use serde_json::value::RawValue;
use sockudo_core::adapter::{Adapter, PresenceJoin};
use sockudo_core::app::{App, AppManager};
use sockudo_core::cache::Cache;
use sockudo_core::queue::{Queue, QueueStats};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::decisions::{wants, Decisions};
use super::delivery::Worker;
use super::jobs::{random_id, Guard, Subject};
use super::{WebhookError, WebhookEvent, WebhookSettings, WebhookStats};

const OCCUPANCY: [&str; 2] = ["channel_occupied", "channel_vacated"];
const MEMBERS: [&str; 2] = ["member_added", "member_removed"];

#[derive(Debug, Default)]
struct Local {
    /// This node's subscriptions to the channel (reported through `subscribed`).
    subscriptions: usize,
    /// Whether this node's unit is in the shared occupancy (the join succeeded).
    contributed: bool,
}

struct Inner {
    decisions: Arc<Decisions>,
    worker: Arc<Worker>,
    local: parking_lot::Mutex<std::collections::HashMap<(String, String), Local>>,
    stop: CancellationToken,
}

/// A node's webhook pipeline: emitter plus (once [`Webhooks::spawn_worker`] ran) delivery
/// worker. Dropping it stops the worker.
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("settings", &self.inner.decisions.settings)
            .field("stats", &self.inner.decisions.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

/// Occupancy is kept in the adapter's presence store as a pseudo presence channel whose one
/// "member" is held by every node that has a subscriber: "first node" starts an occupation,
/// "last node gone" ends it, and a crashed node's share is removed by the same liveness sweep
/// that removes its presence members (a counter would keep it forever). `#` and `:` cannot
/// appear in client channel names, so the pseudo channel never collides.
pub const OCCUPANCY_PREFIX: &str = "#occupancy:";
const OCCUPANCY_HOLDER: &str = "nodes";

/// The pseudo presence channel holding `channel`'s occupancy.
pub fn occupancy_channel(channel: &str) -> String {
    format!("{OCCUPANCY_PREFIX}{channel}")
}

fn occupied_marker(app: &str, channel: &str) -> String {
    format!("webhooks:occupied:{}:{app}:{channel}", app.len())
}

fn member_marker(app: &str, channel: &str, user: &str) -> String {
    format!(
        "webhooks:member:{}:{app}:{}:{channel}:{user}",
        app.len(),
        channel.len()
    )
}

fn wants_any(app: &App, kinds: &[&str]) -> bool {
    kinds.iter().any(|k| wants(app, k))
}

impl Webhooks {
    /// A pipeline on these backends. `adapter` holds the cluster-wide occupancy and presence
    /// (re-checked when a delayed end is due); `cache` holds the span markers; `apps` gives
    /// the worker each job's app (targets, key and secret for signing).
    pub fn new(
        settings: WebhookSettings,
        queue: Arc<dyn Queue>,
        cache: Arc<dyn Cache>,
        adapter: Arc<dyn Adapter>,
        apps: Arc<dyn AppManager>,
    ) -> Result<Self, WebhookError> {
        let decisions = Arc::new(Decisions {
            settings,
            queue,
            cache,
            adapter,
            apps,
            stats: Arc::new(WebhookStats::default()),
            wake: Arc::new(Notify::new()),
            seen: parking_lot::Mutex::new(std::collections::HashMap::new()),
        });
        let worker = Arc::new(Worker::new(Arc::clone(&decisions))?);
        Ok(Webhooks {
            inner: Arc::new(Inner {
                decisions,
                worker,
                local: parking_lot::Mutex::new(std::collections::HashMap::new()),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Start the delivery worker on the current Tokio runtime. It runs until this value is
    /// dropped or [`Webhooks::stop`] is called.
    pub fn spawn_worker(&self) {
        let worker = Arc::clone(&self.inner.worker);
        let (wake, stop) = (
            Arc::clone(&self.inner.decisions.wake),
            self.inner.stop.clone(),
        );
        tokio::spawn(worker.run(wake, stop));
    }

    /// Stop the worker. Jobs being delivered are abandoned (their lease hands them to other
    /// nodes), as when the node dies.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// The settings in force.
    pub fn settings(&self) -> &WebhookSettings {
        &self.inner.decisions.settings
    }

    /// The pipeline's counters.
    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.inner.decisions.stats
    }

    /// The shared queue.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.decisions.queue
    }

    /// Attempts before a failing job is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.inner.worker.max_attempts()
    }

    /// Depth, oldest age and dead letters of the webhook queue.
    pub async fn queue_stats(&self) -> Result<QueueStats, sockudo_core::queue::QueueError> {
        let d = &self.inner.decisions;
        d.queue.stats(&d.settings.queue_name).await
    }

    /// A socket of `app` subscribed to `channel` (call once per successful subscription).
    pub async fn subscribed(&self, app: &Arc<App>, channel: &str) {
        if !wants_any(app, &OCCUPANCY) {
            return;
        }
        let key = (app.id.clone(), channel.to_owned());
        let first = {
            let mut local = self.inner.local.lock();
            let e = local.entry(key.clone()).or_default();
            e.subscriptions += 1;
            e.subscriptions == 1
        };
        if !first {
            return;
        }
        let occupancy = occupancy_channel(channel);
        let join = PresenceJoin {
            app_id: &app.id,
            channel: &occupancy,
            user_id: OCCUPANCY_HOLDER,
            info: None,
            max_members: usize::MAX,
        };
        let d = &self.inner.decisions;
        if let Err(e) = d.adapter.presence_join(join).await {
            return d.emit_error("occupancy join", &e.to_string());
        }
        if let Some(e) = self.inner.local.lock().get_mut(&key) {
            e.contributed = true;
        }
        let event = WebhookEvent::ChannelOccupied {
            channel: channel.to_owned(),
        };
        d.start(app, occupied_marker(&app.id, channel), event).await;
    }

    /// A socket of `app` that [`Webhooks::subscribed`] was called for left `channel`.
    pub async fn unsubscribed(&self, app: &Arc<App>, channel: &str) {
        if !wants_any(app, &OCCUPANCY) {
            return;
        }
        let key = (app.id.clone(), channel.to_owned());
        let contributed = {
            let mut local = self.inner.local.lock();
            let Some(e) = local.get_mut(&key) else { return };
            e.subscriptions = e.subscriptions.saturating_sub(1);
            if e.subscriptions > 0 {
                return;
            }
            local.remove(&key).is_some_and(|e| e.contributed)
        };
        if !contributed {
            return;
        }
        let d = &self.inner.decisions;
        let occupancy = occupancy_channel(channel);
        match d
            .adapter
            .presence_leave(&app.id, &occupancy, OCCUPANCY_HOLDER)
            .await
        {
            Ok(left) if left.gone => self.vacated(app, channel).await,
            Ok(_) => {}
            Err(e) => d.emit_error("occupancy leave", &e.to_string()),
        }
    }

    /// The last node holding `channel` let go (left, or died and was swept): queue
    /// `channel_vacated`, sent after the removal delay unless some node holds it again by
    /// then (checked by whichever node claims the job).
    pub async fn vacated(&self, app: &Arc<App>, channel: &str) {
        if !wants_any(app, &OCCUPANCY) {
            return;
        }
        let subject = Subject::Occupancy {
            channel: channel.to_owned(),
        };
        let event = WebhookEvent::ChannelVacated {
            channel: channel.to_owned(),
        };
        let marker = occupied_marker(&app.id, channel);
        self.inner.decisions.end(app, marker, subject, event).await;
    }

    /// The adapter reported the user's first connection in a presence channel cluster-wide.
    pub async fn member_added(&self, app: &Arc<App>, channel: &str, user_id: &str) {
        if !wants_any(app, &MEMBERS) {
            return;
        }
        let event = WebhookEvent::MemberAdded {
            channel: channel.to_owned(),
            user_id: user_id.to_owned(),
        };
        let marker = member_marker(&app.id, channel, user_id);
        self.inner.decisions.start(app, marker, event).await;
    }

    /// The adapter reported the user's last connection gone cluster-wide (or a sweep did):
    /// queue `member_removed`, sent after the removal delay unless the user is back in the
    /// channel's presence members by then.
    pub async fn member_removed(&self, app: &Arc<App>, channel: &str, user_id: &str) {
        if !wants_any(app, &MEMBERS) {
            return;
        }
        let subject = Subject::Member {
            channel: channel.to_owned(),
            user_id: user_id.to_owned(),
        };
        let event = WebhookEvent::MemberRemoved {
            channel: channel.to_owned(),
            user_id: user_id.to_owned(),
        };
        let marker = member_marker(&app.id, channel, user_id);
        self.inner.decisions.end(app, marker, subject, event).await;
    }

    /// A client event was published by `socket_id` (`user_id` on presence channels).
    pub fn client_event(
        &self,
        app: &Arc<App>,
        channel: &str,
        event: &str,
        data: &RawValue,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        if !wants(app, "client_event") {
            return;
        }
        // Pusher sends `data` as a string: a string value as itself, anything else as JSON text.
        let data =
            serde_json::from_str::<String>(data.get()).unwrap_or_else(|_| data.get().to_owned());
        let ev = WebhookEvent::ClientEvent {
            channel: channel.to_owned(),
            event: event.to_owned(),
            data,
            socket_id: socket_id.to_owned(),
            user_id: user_id.map(str::to_owned),
        };
        self.emit(app, ev);
    }

    /// A subscriber of a cache channel found no cached event.
    pub fn cache_miss(&self, app: &Arc<App>, channel: &str) {
        if wants(app, "cache_miss") {
            let ev = WebhookEvent::CacheMiss {
                channel: channel.to_owned(),
            };
            self.emit(app, ev);
        }
    }

    /// Queue an event for `app` as it is (no cluster-wide decision), at least once, with a
    /// fresh idempotency id: for callers that made that decision themselves.
    pub fn emit(&self, app: &Arc<App>, event: WebhookEvent) {
        let (d, app) = (Arc::clone(&self.inner.decisions), Arc::clone(app));
        tokio::spawn(async move {
            let delay = d.batch_delay();
            d.enqueue(&app, &event, &Guard::None, &random_id(), delay)
                .await;
        });
    }

    /// Kept for callers of the batching era: events are enqueued when decided, so there is
    /// nothing to flush.
    pub async fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_collide_across_apps_and_channels() {
        assert_ne!(occupied_marker("a:b", "c"), occupied_marker("a", "b:c"));
        assert!(
            sockudo_core::channel::ChannelName::parse(&occupancy_channel("news")).is_err(),
            "no client can name it"
        );
        assert_ne!(
            member_marker("a", "b:c", "d"),
            member_marker("a", "b", "c:d")
        );
    }

    #[test]
    fn event_bodies_match_pusher() {
        let e = WebhookEvent::ClientEvent {
            channel: "private-x".into(),
            event: "client-a".into(),
            data: "{}".into(),
            socket_id: "1.2".into(),
            user_id: None,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"name":"client_event","channel":"private-x","event":"client-a","data":"{}","socket_id":"1.2"}"#
        );
        let e = WebhookEvent::MemberAdded {
            channel: "presence-x".into(),
            user_id: "u".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"name":"member_added","channel":"presence-x","user_id":"u"}"#
        );
    }
}
