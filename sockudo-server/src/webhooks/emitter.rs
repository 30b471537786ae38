//! The emitting side: what the node reports, cluster-wide decisions, batching, enqueueing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use sockudo_core::adapter::{Adapter, PresenceJoin};
use sockudo_core::app::App;
use sockudo_core::auth::webhook_signature;
use sockudo_core::cache::Cache;
use sockudo_core::queue::{Queue, QueueStats};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::delivery::{JobPayload, Worker};
use super::{WebhookError, WebhookEvent, WebhookSettings, WebhookStats};

const OCCUPANCY: [&str; 2] = ["channel_occupied", "channel_vacated"];
const MEMBERS: [&str; 2] = ["member_added", "member_removed"];

#[derive(Debug)]
struct Batch {
    app: Arc<App>,
    events: Vec<WebhookEvent>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Local {
    /// This node's subscriptions to the channel (reported through `subscribed`).
    subscriptions: usize,
    /// Whether this node's unit is in the shared counter (the increment succeeded).
    contributed: bool,
}

struct Inner {
    settings: WebhookSettings,
    queue: Arc<dyn Queue>,
    cache: Arc<dyn Cache>,
    adapter: Arc<dyn Adapter>,
    stats: Arc<WebhookStats>,
    worker: Arc<Worker>,
    batches: Mutex<HashMap<String, Batch>>,
    generation: AtomicU64,
    local: Mutex<HashMap<(String, String), Local>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// A node's webhook pipeline: emitter plus (once [`Webhooks::spawn_worker`] ran) delivery
/// worker. Dropping it stops both; call [`Webhooks::flush`] first to enqueue buffered events.
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("settings", &self.inner.settings)
            .field("stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

/// Occupancy is kept in the adapter's presence store as a pseudo presence channel whose one
/// "member" is held by every node that has a subscriber: "first node" is `channel_occupied`,
/// "last node gone" is `channel_vacated`, and a crashed node's share is removed by the same
/// liveness sweep that removes its presence members (a counter would keep it forever). `#` and
/// `:` cannot appear in client channel names, so the pseudo channel never collides.
pub const OCCUPANCY_PREFIX: &str = "#occupancy:";
const OCCUPANCY_HOLDER: &str = "nodes";

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

fn wants(app: &App, kind: &str) -> bool {
    app.webhooks
        .iter()
        .any(|t| t.event_types.is_empty() || t.event_types.iter().any(|e| e == kind))
}

fn wants_any(app: &App, kinds: &[&str]) -> bool {
    kinds.iter().any(|k| wants(app, k))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Webhooks {
    /// A pipeline on these backends. `adapter` answers presence re-checks of delayed
    /// `member_removed`; `cache` holds the cluster-wide occupancy counters and markers.
    pub fn new(
        settings: WebhookSettings,
        queue: Arc<dyn Queue>,
        cache: Arc<dyn Cache>,
        adapter: Arc<dyn Adapter>,
    ) -> Result<Self, WebhookError> {
        let stats = Arc::new(WebhookStats::default());
        let worker = Arc::new(Worker::new(
            Arc::clone(&queue),
            settings.clone(),
            Arc::clone(&stats),
        )?);
        Ok(Webhooks {
            inner: Arc::new(Inner {
                settings,
                queue,
                cache,
                adapter,
                stats,
                worker,
                batches: Mutex::new(HashMap::new()),
                generation: AtomicU64::new(0),
                local: Mutex::new(HashMap::new()),
                wake: Arc::new(Notify::new()),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// Start the delivery worker on the current Tokio runtime (once per node). It runs until
    /// this value is dropped or [`Webhooks::stop`] is called.
    pub fn spawn_worker(&self) {
        let worker = Arc::clone(&self.inner.worker);
        let (wake, stop) = (Arc::clone(&self.inner.wake), self.inner.stop.clone());
        tokio::spawn(worker.run(wake, stop));
    }

    /// Stop the worker and pending timers. Jobs being delivered are abandoned (their lease
    /// hands them to other nodes), as when the node dies.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.inner.settings
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.inner.stats
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.queue
    }

    /// Attempts before a failing job is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.inner.worker.max_attempts()
    }

    /// Depth, oldest age and dead letters of the webhook queue.
    pub async fn queue_stats(&self) -> Result<QueueStats, sockudo_core::queue::QueueError> {
        self.inner
            .queue
            .stats(&self.inner.settings.queue_name)
            .await
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
        if let Err(e) = self.inner.adapter.presence_join(join).await {
            return self.inner.emit_error("occupancy join", &e.to_string());
        }
        if let Some(e) = self.inner.local.lock().get_mut(&key) {
            e.contributed = true;
        }
        self.inner
            .announce_once(
                app,
                &occupied_marker(&app.id, channel),
                WebhookEvent::ChannelOccupied {
                    channel: channel.to_owned(),
                },
            )
            .await;
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
        let occupancy = occupancy_channel(channel);
        match self
            .inner
            .adapter
            .presence_leave(&app.id, &occupancy, OCCUPANCY_HOLDER)
            .await
        {
            Ok(left) if left.gone => self.vacated(app, channel),
            Ok(_) => {}
            Err(e) => self.inner.emit_error("occupancy leave", &e.to_string()),
        }
    }

    /// The last node holding `channel` let go (left, or died and was swept): after the delay,
    /// and unless some node holds it again by then, `channel_vacated`.
    pub fn vacated(&self, app: &Arc<App>, channel: &str) {
        if !wants_any(app, &OCCUPANCY) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let (app, channel) = (Arc::clone(app), channel.to_owned());
        self.inner.after_delay(async move {
            // Back meanwhile (on any node)? Then the channel never looked vacated.
            match inner
                .adapter
                .presence_members(&app.id, &occupancy_channel(&channel))
                .await
            {
                Ok(holders) if !holders.members.is_empty() => return,
                Ok(_) => {}
                Err(e) => return inner.emit_error("occupancy re-check", &e.to_string()),
            }
            inner
                .retract_once(
                    &app,
                    &occupied_marker(&app.id, &channel),
                    WebhookEvent::ChannelVacated { channel },
                )
                .await;
        });
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
        self.inner
            .announce_once(app, &member_marker(&app.id, channel, user_id), event)
            .await;
    }

    /// The adapter reported the user's last connection gone cluster-wide. Sent after the
    /// removal delay unless the user is back in the channel's presence members by then.
    pub fn member_removed(&self, app: &Arc<App>, channel: &str, user_id: &str) {
        if !wants_any(app, &MEMBERS) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let (app, channel, user_id) = (Arc::clone(app), channel.to_owned(), user_id.to_owned());
        self.inner.after_delay(async move {
            match inner.adapter.presence_members(&app.id, &channel).await {
                Ok(snapshot) if snapshot.members.iter().any(|m| m.user_id == user_id) => return,
                Ok(_) => {}
                // Rather a removal too many than a member that never leaves.
                Err(e) => tracing::warn!(error = %e, channel = %channel, "presence re-check failed; sending member_removed"),
            }
            let marker = member_marker(&app.id, &channel, &user_id);
            inner.retract_once(&app, &marker, WebhookEvent::MemberRemoved { channel, user_id }).await;
        });
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
        self.inner.emit(app, ev);
    }

    /// A subscriber of a cache channel found no cached event.
    pub fn cache_miss(&self, app: &Arc<App>, channel: &str) {
        if wants(app, "cache_miss") {
            self.inner.emit(
                app,
                WebhookEvent::CacheMiss {
                    channel: channel.to_owned(),
                },
            );
        }
    }

    /// Queue an event for `app` as it is (no cluster-wide decision): for callers that made
    /// that decision themselves.
    pub fn emit(&self, app: &Arc<App>, event: WebhookEvent) {
        self.inner.emit(app, event);
    }

    /// Enqueue every buffered batch now (drain / shutdown).
    pub async fn flush(&self) {
        let batches: Vec<Batch> = self.inner.batches.lock().drain().map(|(_, b)| b).collect();
        for b in batches {
            self.inner.enqueue(&b.app, b.events).await;
        }
    }
}

impl Inner {
    fn emit_error(&self, what: &str, error: &str) {
        WebhookStats::bump(&self.stats.emit_errors);
        tracing::warn!(error, "webhook {what} failed; event dropped");
    }

    fn after_delay(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let (delay, stop) = (self.settings.removal_delay, self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(delay) => f.await,
            }
        });
    }

    /// Emit `event` if this call set the shared `marker` (one announcement cluster-wide).
    async fn announce_once(self: &Arc<Self>, app: &Arc<App>, marker: &str, event: WebhookEvent) {
        match self
            .cache
            .set_if_absent(marker, Bytes::from_static(b"1"), None)
            .await
        {
            Ok(true) => self.emit(app, event),
            Ok(false) => {}
            Err(e) => self.emit_error("announce", &e.to_string()),
        }
    }

    /// Emit `event` if this call removed the shared `marker`.
    async fn retract_once(self: &Arc<Self>, app: &Arc<App>, marker: &str, event: WebhookEvent) {
        match self.cache.delete(marker).await {
            Ok(true) => self.emit(app, event),
            Ok(false) => {}
            Err(e) => self.emit_error("retract", &e.to_string()),
        }
    }

    fn emit(self: &Arc<Self>, app: &Arc<App>, event: WebhookEvent) {
        let max = self.settings.batch_max.max(1);
        let mut batches = self.batches.lock();
        let (len, generation) = {
            let batch = batches.entry(app.id.clone()).or_insert_with(|| Batch {
                app: Arc::clone(app),
                events: Vec::new(),
                generation: self.generation.fetch_add(1, Ordering::Relaxed),
            });
            batch.events.push(event);
            (batch.events.len(), batch.generation)
        };
        if len >= max {
            if let Some(full) = batches.remove(&app.id) {
                drop(batches);
                let inner = Arc::clone(self);
                tokio::spawn(async move { inner.enqueue(&full.app, full.events).await });
            }
            return;
        }
        drop(batches);
        if len == 1 {
            let app_id = app.id.clone();
            let inner = Arc::clone(self);
            let (window, stop) = (self.settings.batch_window, self.stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(window) => {
                        let due = {
                            let mut batches = inner.batches.lock();
                            match batches.get(&app_id) {
                                Some(b) if b.generation == generation => batches.remove(&app_id),
                                _ => None,
                            }
                        };
                        if let Some(b) = due {
                            inner.enqueue(&b.app, b.events).await;
                        }
                    }
                }
            });
        }
    }

    /// One job per target (filtered) and chunk of at most `batch_max` events.
    async fn enqueue(&self, app: &App, events: Vec<WebhookEvent>) {
        let max = self.settings.batch_max.max(1);
        let mut enqueued = false;
        for target in &app.webhooks {
            let picked: Vec<&WebhookEvent> = events
                .iter()
                .filter(|e| {
                    target.event_types.is_empty()
                        || target.event_types.iter().any(|t| t == e.kind())
                })
                .collect();
            for chunk in picked.chunks(max) {
                let body = serde_json::json!({ "time_ms": now_ms(), "events": chunk }).to_string();
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
                let job = JobPayload {
                    app_id: app.id.clone(),
                    url: target.url.clone(),
                    headers,
                    body,
                };
                let payload = match serde_json::to_vec(&job) {
                    Ok(p) => Bytes::from(p),
                    Err(e) => {
                        self.emit_error("job encoding", &e.to_string());
                        continue;
                    }
                };
                match self
                    .queue
                    .enqueue(&self.settings.queue_name, payload, Duration::ZERO)
                    .await
                {
                    Ok(_) => {
                        WebhookStats::bump(&self.stats.enqueued);
                        enqueued = true;
                    }
                    Err(e) => self.emit_error("enqueue", &e.to_string()),
                }
            }
        }
        if enqueued {
            self.wake.notify_one();
        }
    }
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
