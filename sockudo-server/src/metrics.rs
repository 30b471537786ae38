//! Prometheus metrics: the one place that names every metric the node exports.
//!
//! Instrumentation uses the [`metrics`] facade. Without a global recorder (a library user who
//! never calls [`install`], or tests) every macro is a no-op, so the node works the same with
//! or without metrics. [`install`] installs the Prometheus recorder once per process, with the
//! node's id as a global `node_id` label; it is called from [`crate::serve`] when
//! `metrics_port` is not 0, which also serves `GET /metrics` on that port ([`serve_metrics`]).
//! In a process that runs several nodes (tests) the first installer's `node_id` labels every
//! series and the nodes' values add up: run one node per process in production.
//!
//! # Conventions
//! - Names are `sockudo_*`; counters end in `_total`, durations are seconds.
//! - `app_id` labels per-app series; `node_id` is global.
//! - Gauges that follow live state (connections, subscriptions) are incremented and
//!   decremented at the same code points that change the state, through drop guards where
//!   a task may end early, so they go down as well as up.
//! - Counters kept elsewhere as atomics (webhook stats, cluster adapter stats, duplicate
//!   suppression, hot buffer evictions) are copied into `absolute` counters by
//!   [`spawn_sampler`] every [`SAMPLE_INTERVAL`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use sockudo_core::history::recovery::FailureCode;

use crate::node::Node;

// Connections.
/// Gauge: open WebSocket connections (label `app_id`).
pub const CONNECTIONS: &str = "sockudo_connections";
/// Counter: connections opened (label `app_id`, `protocol` = `7` | `2`).
pub const CONNECTIONS_OPENED: &str = "sockudo_connections_opened_total";
/// Counter: connections ended, by close code (`code` = the close code sent, or `peer` when the
/// client went away first).
pub const CONNECTIONS_CLOSED: &str = "sockudo_connections_closed_total";
/// Counter: connections refused at the handshake, by Pusher code (`code`).
pub const CONNECTIONS_REFUSED: &str = "sockudo_connections_refused_total";
/// Counter: WebSocket payload bytes received from clients (`app_id`).
pub const BYTES_IN: &str = "sockudo_ws_bytes_received_total";
/// Counter: WebSocket payload bytes sent to clients (`app_id`).
pub const BYTES_OUT: &str = "sockudo_ws_bytes_sent_total";

// Subscriptions.
/// Gauge: subscriptions by channel class (`app_id`, `class` = public | private | presence |
/// encrypted | cache | user).
pub const SUBSCRIPTIONS: &str = "sockudo_subscriptions";

// Publishing and fanout.
/// Counter: publishes accepted (`app_id`, `source` = http | client_event), one per channel.
pub const PUBLISHES_ACCEPTED: &str = "sockudo_publishes_accepted_total";
/// Counter: publishes that failed after validation (`app_id`, `source`).
pub const PUBLISHES_FAILED: &str = "sockudo_publishes_failed_total";
/// Histogram: time to queue one broadcast to every local subscriber on this node, seconds.
pub const FANOUT_SECONDS: &str = "sockudo_fanout_duration_seconds";
/// Counter: broadcasts delivered to local subscribers (`app_id`).
pub const FANOUT_BROADCASTS: &str = "sockudo_fanout_broadcasts_total";
/// Counter: frames queued to connections by the fanout (`app_id`).
pub const FANOUT_FRAMES: &str = "sockudo_fanout_frames_total";
/// Gauge: 1 while the cluster adapter carries this node's cross-node traffic (its transport is
/// connected and it is not standing back for a duplicate node id), else 0.
pub const ADAPTER_UP: &str = "sockudo_adapter_up";
/// Counter: adapter errors (`kind` = publish | oversize | transport_down | heartbeat |
/// query_timeout | malformed | sweep).
pub const ADAPTER_ERRORS: &str = "sockudo_adapter_errors_total";
/// Counter: requests refused by a per-connection limit, by `limit`.
pub const LIMIT_REJECTIONS: &str = "sockudo_limit_rejections_total";
/// Counter: other live nodes seen running under this node's id (each one counted once).
pub const DUPLICATE_NODE_IDS: &str = "sockudo_cluster_duplicate_node_ids_total";
/// Counter: cross-node deliveries dropped as duplicates (same message id seen recently).
pub const ADAPTER_DUPLICATES: &str = "sockudo_adapter_duplicates_suppressed_total";

// V2 recovery and the hot buffer.
/// Counter: resume outcomes per channel (`outcome` = success | failure, `source` = hot | cold
/// on success, `code` = the failure code on failure).
pub const RECOVERY: &str = "sockudo_recovery_total";
/// Counter: live gaps on positioned channels (`outcome` = detected | repaired |
/// failed_closed): a broadcast skipped serials on its way to this node; the missing ones were
/// fetched from the history store, or every V2 subscriber was told with `resume_failed`.
pub const LIVE_GAPS: &str = "sockudo_live_gaps_total";
/// Gauge: messages held in the hot buffers of this node.
pub const HOT_ENTRIES: &str = "sockudo_hot_buffer_entries";
/// Gauge: bytes of frames held in the hot buffers of this node.
pub const HOT_BYTES: &str = "sockudo_hot_buffer_bytes";
/// Counter: hot buffer entries evicted (by count or age) or dropped on a stream restart.
pub const HOT_EVICTIONS: &str = "sockudo_hot_buffer_evictions_total";

// Webhooks.
/// Gauge: webhook jobs waiting or leased in the shared queue.
pub const WEBHOOK_QUEUE_DEPTH: &str = "sockudo_webhook_queue_depth";
/// Gauge: age of the oldest webhook job not yet delivered, seconds (0 when empty).
pub const WEBHOOK_QUEUE_OLDEST: &str = "sockudo_webhook_queue_oldest_age_seconds";
/// Gauge: webhook jobs in the dead-letter store.
pub const WEBHOOK_DEAD_LETTERS: &str = "sockudo_webhook_dead_letters";
/// Counter: webhook jobs durably enqueued by this node.
pub const WEBHOOK_ENQUEUED: &str = "sockudo_webhook_enqueued_total";
/// Counter: webhook events this node decided to emit.
pub const WEBHOOK_EMITTED: &str = "sockudo_webhook_emitted_total";
/// Counter: webhook events lost before reaching the queue (must stay 0; also counted as
/// `sockudo_webhook_failures_total{stage="emit"}`).
pub const WEBHOOK_LOST: &str = "sockudo_webhook_lost_before_queue_total";
/// Counter: webhook jobs this node delivered that another node decided (survivor flushes).
pub const WEBHOOK_TAKEN_OVER: &str = "sockudo_webhook_taken_over_total";
/// Counter: webhook POSTs answered 2xx by this node's worker.
pub const WEBHOOK_SENT: &str = "sockudo_webhook_sent_total";
/// Counter: webhook POSTs that failed (`stage` = post | retried | dead_lettered | emit).
pub const WEBHOOK_FAILURES: &str = "sockudo_webhook_failures_total";

// Push notifications: registered only on a node with push enabled (`describe_push`).
/// Counter: push publishes accepted (new campaigns, not replayed retries).
pub const PUSH_ACCEPTED: &str = "sockudo_push_publish_accepted_total";
/// Counter: push publishes accepted with a `notBeforeMs` in the future.
pub const PUSH_SCHEDULED: &str = "sockudo_push_publish_scheduled_total";
/// Counter: notifications handed to a provider, every attempt (`provider`).
pub const PUSH_DISPATCHED: &str = "sockudo_push_dispatched_total";
/// Counter: devices whose notification finally failed or was dead-lettered (`provider`).
pub const PUSH_FAILED: &str = "sockudo_push_failed_total";
/// Histogram: one provider request, seconds (`provider`).
pub const PUSH_PROVIDER_LATENCY: &str = "sockudo_push_provider_latency_seconds";
/// Counter: provider answers that were not a success (`provider`, `class` = invalid_token |
/// throttled | unavailable | rejected).
pub const PUSH_PROVIDER_ERRORS: &str = "sockudo_push_provider_errors_total";
/// Gauge: push jobs waiting or leased per stage (`stage` = plan | dispatch:{provider}).
pub const PUSH_QUEUE_BACKLOG: &str = "sockudo_push_queue_backlog";
/// Gauge: age of the oldest push job per stage, seconds (`stage`).
pub const PUSH_QUEUE_OLDEST: &str = "sockudo_push_queue_oldest_age_seconds";

// HTTP API layers.
/// Counter: requests refused by a rate limit (`scope` = http | client_event).
pub const RATE_LIMITED: &str = "sockudo_rate_limit_rejections_total";
/// Counter: HTTP publishes answered from the idempotency store (a retry).
pub const IDEMPOTENCY_REPLAYS: &str = "sockudo_idempotency_replays_total";
/// Counter: idempotency keys reused with another payload (409).
pub const IDEMPOTENCY_CONFLICTS: &str = "sockudo_idempotency_conflicts_total";
/// Counter: HTTP API responses by status class (`status` = 2xx | 4xx | 5xx …).
pub const HTTP_RESPONSES: &str = "sockudo_http_responses_total";

// Node state.
/// Gauge: 1 while `/ready` would answer 200, else 0.
pub const READY: &str = "sockudo_ready";
/// 1 while the app manager's database answers, 0 during an outage (SQL app managers only).
pub const APP_MANAGER_UP: &str = "sockudo_app_manager_backend_up";
/// Apps held in the node's app cache (SQL app managers only).
pub const APP_MANAGER_CACHED: &str = "sockudo_app_manager_cached_apps";
/// App lookups by outcome: `hit`, `miss` (read the database), `stale` (served from the cache
/// during an outage), `unavailable` (refused: database down and app not cached).
pub const APP_MANAGER_LOOKUPS: &str = "sockudo_app_manager_lookups_total";
/// Cache invalidations received over the cluster adapter, and failed polls.
pub const APP_MANAGER_EVENTS: &str = "sockudo_app_manager_events_total";
/// Gauge: 1 while draining.
pub const DRAINING: &str = "sockudo_draining";

/// How often [`spawn_sampler`] copies stats kept elsewhere into the registry.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Histogram buckets, seconds: 50 µs … 2.5 s.
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Describe every metric (HELP and TYPE lines) and register the counters that alerts read at zero.
/// (No metric of a feature that does not exist: push notifications register theirs when they land.)
pub fn describe() {
    describe_gauge!(CONNECTIONS, "Open WebSocket connections");
    describe_counter!(CONNECTIONS_OPENED, "WebSocket connections opened");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "WebSocket connections ended, by close code (peer = client went away)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "WebSocket handshakes refused, by Pusher error code"
    );
    describe_counter!(BYTES_IN, Unit::Bytes, "WebSocket payload bytes received");
    describe_counter!(BYTES_OUT, Unit::Bytes, "WebSocket payload bytes sent");
    describe_gauge!(
        SUBSCRIPTIONS,
        "Channel subscriptions on this node, by channel class"
    );
    describe_counter!(
        PUBLISHES_ACCEPTED,
        "Publishes accepted, per channel, by source (http, client_event)"
    );
    describe_counter!(
        PUBLISHES_FAILED,
        "Publishes that failed after validation, by source"
    );
    describe_histogram!(
        FANOUT_SECONDS,
        Unit::Seconds,
        "Time to queue one broadcast to every local subscriber"
    );
    describe_counter!(
        FANOUT_BROADCASTS,
        "Broadcasts delivered to local subscribers"
    );
    describe_counter!(FANOUT_FRAMES, "Frames queued to connections by the fanout");
    describe_gauge!(
        ADAPTER_UP,
        "1 while the cluster adapter is connected and carries this node's traffic"
    );
    describe_counter!(ADAPTER_ERRORS, "Cluster adapter errors, by kind");
    describe_counter!(
        LIMIT_REJECTIONS,
        "Requests refused by a per-connection limit, by limit"
    );
    describe_counter!(
        DUPLICATE_NODE_IDS,
        "Other live nodes seen under this node's id (the newer one stays unready)"
    );
    describe_counter!(
        ADAPTER_DUPLICATES,
        "Cross-node deliveries dropped as duplicates"
    );
    describe_counter!(RECOVERY, "V2 resume outcomes per channel");
    describe_counter!(
        LIVE_GAPS,
        "Live serial gaps detected, repaired from history, or failed closed"
    );
    describe_gauge!(HOT_ENTRIES, "Messages held in the V2 hot buffers");
    describe_gauge!(HOT_BYTES, Unit::Bytes, "Bytes held in the V2 hot buffers");
    describe_counter!(HOT_EVICTIONS, "Hot buffer entries evicted");
    describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Webhook jobs waiting or leased in the shared queue"
    );
    describe_gauge!(
        WEBHOOK_QUEUE_OLDEST,
        Unit::Seconds,
        "Age of the oldest undelivered webhook job"
    );
    describe_gauge!(
        WEBHOOK_DEAD_LETTERS,
        "Webhook jobs in the dead-letter store"
    );
    describe_counter!(
        WEBHOOK_ENQUEUED,
        "Webhook jobs durably enqueued by this node"
    );
    describe_counter!(WEBHOOK_EMITTED, "Webhook events this node decided to emit");
    describe_counter!(
        WEBHOOK_LOST,
        "Webhook events lost before the queue (should stay 0)"
    );
    describe_counter!(
        WEBHOOK_TAKEN_OVER,
        "Webhook jobs delivered here that another node decided"
    );
    describe_counter!(WEBHOOK_SENT, "Webhook POSTs answered with 2xx");
    describe_counter!(WEBHOOK_FAILURES, "Webhook failures, by stage");
    describe_counter!(RATE_LIMITED, "Requests refused by a rate limit, by scope");
    describe_counter!(
        IDEMPOTENCY_REPLAYS,
        "HTTP publishes answered from the idempotency store"
    );
    describe_counter!(
        IDEMPOTENCY_CONFLICTS,
        "Idempotency keys reused with a different payload"
    );
    describe_counter!(HTTP_RESPONSES, "HTTP API responses by status class");
    describe_gauge!(READY, "1 while the node is ready");
    describe_gauge!(DRAINING, "1 while the node is draining");
    describe_gauge!(APP_MANAGER_UP, "1 while the app manager's database answers");
    describe_gauge!(APP_MANAGER_CACHED, "Apps held in the node's app cache");
    describe_counter!(APP_MANAGER_LOOKUPS, "App lookups by outcome");
    describe_counter!(
        APP_MANAGER_EVENTS,
        "App cache invalidations and failed database polls"
    );
    // Registered at zero so dashboards and alerts see them before the first event.
    counter!(RATE_LIMITED, "scope" => "http").absolute(0);
    counter!(RATE_LIMITED, "scope" => "client_event").absolute(0);
    counter!(IDEMPOTENCY_REPLAYS).absolute(0);
    counter!(IDEMPOTENCY_CONFLICTS).absolute(0);
    counter!(ADAPTER_DUPLICATES).absolute(0);
    // `increase()` cannot see a counter's first event when the series starts at 1, so the
    // series the shipped alerts and dashboard read (deploy/) exist from the start. Label sets
    // match the increments exactly (ws/handler/subscribe.rs, ws/v2.rs, live_gaps.rs).
    for limit in [
        "subscriptions_per_connection",
        "subscribe_rate",
        "resume_replay_bytes",
    ] {
        counter!(LIMIT_REJECTIONS, "limit" => limit).absolute(0);
    }
    for outcome in ["detected", "repaired", "failed_closed"] {
        counter!(LIVE_GAPS, "outcome" => outcome).absolute(0);
    }
    for code in [
        FailureCode::StreamReset,
        FailureCode::PositionExpired,
        FailureCode::ContinuityUnverifiable,
        FailureCode::PersistenceUnavailable,
    ] {
        counter!(RECOVERY, "outcome" => "failure", "source" => "", "code" => code.as_str())
            .absolute(0);
    }
}

/// Describe the push metrics and register their counters at zero: called only for a node
/// with push enabled, so a node without it exports none of them.
pub fn describe_push() {
    describe_counter!(PUSH_ACCEPTED, "Push publishes accepted");
    describe_counter!(
        PUSH_SCHEDULED,
        "Push publishes accepted for later (notBeforeMs)"
    );
    describe_counter!(
        PUSH_DISPATCHED,
        "Notifications handed to a provider (every attempt)"
    );
    describe_counter!(
        PUSH_FAILED,
        "Devices whose notification failed or was dead-lettered"
    );
    describe_histogram!(
        PUSH_PROVIDER_LATENCY,
        Unit::Seconds,
        "Provider request latency"
    );
    describe_counter!(
        PUSH_PROVIDER_ERRORS,
        "Provider answers other than success, by class"
    );
    describe_gauge!(PUSH_QUEUE_BACKLOG, "Push jobs waiting or leased, per stage");
    describe_gauge!(
        PUSH_QUEUE_OLDEST,
        "Age of the oldest push job per stage, seconds"
    );
    counter!(PUSH_ACCEPTED).absolute(0);
    counter!(PUSH_SCHEDULED).absolute(0);
    gauge!(PUSH_QUEUE_BACKLOG, "stage" => "plan").set(0.0);
}

/// The process-wide Prometheus handle, once installed.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder for this process (once; later calls return the same
/// handle and ignore `node_id`). `None` when another recorder was installed first.
pub fn install(node_id: &str) -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().add_global_label("node_id", node_id);
            let builder = match builder.set_buckets(BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics buckets rejected; histograms render as summaries");
                    PrometheusBuilder::new().add_global_label("node_id", node_id)
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("a metrics recorder was already installed; /metrics is not served");
                    None
                }
            }
        })
        .clone()
}

/// Serve `GET /metrics` (Prometheus text format) on `listener` until `stop` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

/// The class of a channel for [`SUBSCRIPTIONS`]: cache variants are `cache`, then
/// `encrypted`, `presence`, `private`, `user` (`#server-to-user-…`) and `public`.
pub fn channel_class(channel: &str) -> &'static str {
    let rest = channel
        .strip_prefix("private-encrypted-")
        .or_else(|| channel.strip_prefix("presence-"))
        .or_else(|| channel.strip_prefix("private-"))
        .unwrap_or(channel);
    if rest.starts_with("cache-") {
        "cache"
    } else if channel.starts_with("private-encrypted-") {
        "encrypted"
    } else if channel.starts_with("presence-") {
        "presence"
    } else if channel.starts_with("private-") {
        "private"
    } else if channel.starts_with("#server-to-user-") {
        "user"
    } else {
        "public"
    }
}

/// One live connection in [`CONNECTIONS`]: incremented on creation, decremented on drop, so
/// the gauge goes down however the connection task ends.
#[derive(Debug)]
pub struct ConnectionGauge {
    app_id: Arc<str>,
}

impl ConnectionGauge {
    /// Count one open connection of `app_id` until the gauge is dropped.
    pub fn open(app_id: &Arc<str>) -> Self {
        gauge!(CONNECTIONS, "app_id" => app_id.to_string()).increment(1.0);
        ConnectionGauge {
            app_id: Arc::clone(app_id),
        }
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        gauge!(CONNECTIONS, "app_id" => self.app_id.to_string()).decrement(1.0);
    }
}

/// A subscription was added (`+1`) or removed (`-1`) on this node.
pub fn subscription_changed(app_id: &str, channel: &str, delta: f64) {
    gauge!(SUBSCRIPTIONS, "app_id" => app_id.to_string(), "class" => channel_class(channel))
        .increment(delta);
}

/// Copy stats kept as atomics elsewhere into the registry, every [`SAMPLE_INTERVAL`], until
/// the node is dropped. Also runs the recorder's upkeep when `handle` is given.
pub fn spawn_sampler(node: &Arc<Node>, handle: Option<PrometheusHandle>) {
    let weak = Arc::downgrade(node);
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { return };
            sample(&node).await;
            if let Some(h) = &handle {
                h.run_upkeep();
            }
        }
    });
}

/// One sampling pass (public for tests and for apps running their own schedule).
pub async fn sample(node: &Node) {
    counter!(ADAPTER_DUPLICATES).absolute(node.recent_ids.suppressed());
    let hot = node.hot_stats();
    gauge!(HOT_ENTRIES).set(hot.entries as f64);
    gauge!(HOT_BYTES).set(hot.bytes as f64);
    counter!(HOT_EVICTIONS).absolute(hot.evictions);
    gauge!(DRAINING).set(if node.is_draining() { 1.0 } else { 0.0 });
    gauge!(ADAPTER_UP).set(if node.adapter.is_healthy() { 1.0 } else { 0.0 });
    gauge!(READY).set(if crate::server::readiness(node).await.is_ok() {
        1.0
    } else {
        0.0
    });
    if let Some(stats) = node.cluster_stats() {
        counter!(ADAPTER_ERRORS, "kind" => "publish").absolute(stats.publish_errors);
        counter!(ADAPTER_ERRORS, "kind" => "oversize").absolute(stats.oversize);
        counter!(ADAPTER_ERRORS, "kind" => "transport_down").absolute(stats.transport_down);
        counter!(ADAPTER_ERRORS, "kind" => "heartbeat").absolute(stats.heartbeat_errors);
        counter!(ADAPTER_ERRORS, "kind" => "query_timeout").absolute(stats.query_timeouts);
        counter!(ADAPTER_ERRORS, "kind" => "malformed").absolute(stats.malformed);
        counter!(ADAPTER_ERRORS, "kind" => "sweep").absolute(stats.sweep_errors);
        counter!(DUPLICATE_NODE_IDS).absolute(stats.duplicate_node_ids);
    }
    if let Some(st) = node.apps.status() {
        gauge!(APP_MANAGER_UP).set(if st.backend_up { 1.0 } else { 0.0 });
        gauge!(APP_MANAGER_CACHED).set(st.cached_apps as f64);
        let c = st.stats;
        counter!(APP_MANAGER_LOOKUPS, "result" => "hit").absolute(c.hits);
        counter!(APP_MANAGER_LOOKUPS, "result" => "miss").absolute(c.misses);
        counter!(APP_MANAGER_LOOKUPS, "result" => "stale").absolute(c.stale_served);
        counter!(APP_MANAGER_LOOKUPS, "result" => "unavailable").absolute(c.unavailable);
        counter!(APP_MANAGER_EVENTS, "kind" => "invalidation").absolute(c.invalidations);
        counter!(APP_MANAGER_EVENTS, "kind" => "poll_failure").absolute(c.poll_failures);
    }
    #[cfg(feature = "push")]
    if let Some(push) = node.push() {
        if let Ok(stages) = tokio::time::timeout(Duration::from_millis(500), push.backlog()).await {
            for (stage, depth, oldest) in stages {
                gauge!(PUSH_QUEUE_BACKLOG, "stage" => stage.clone()).set(depth as f64);
                gauge!(PUSH_QUEUE_OLDEST, "stage" => stage).set(oldest);
            }
        }
    }
    if let Some(w) = node.webhooks() {
        let s = w.stats().snapshot();
        counter!(WEBHOOK_ENQUEUED).absolute(s.enqueued);
        counter!(WEBHOOK_EMITTED).absolute(s.emitted);
        counter!(WEBHOOK_LOST).absolute(s.emit_errors);
        counter!(WEBHOOK_TAKEN_OVER).absolute(s.taken_over);
        counter!(WEBHOOK_SENT).absolute(s.sent);
        counter!(WEBHOOK_FAILURES, "stage" => "post").absolute(s.failed);
        counter!(WEBHOOK_FAILURES, "stage" => "retried").absolute(s.retried);
        counter!(WEBHOOK_FAILURES, "stage" => "dead_lettered").absolute(s.dead_lettered);
        counter!(WEBHOOK_FAILURES, "stage" => "emit").absolute(s.emit_errors);
        match tokio::time::timeout(Duration::from_millis(500), w.queue_stats()).await {
            Ok(Ok(q)) => {
                gauge!(WEBHOOK_QUEUE_DEPTH).set(q.depth as f64);
                gauge!(WEBHOOK_QUEUE_OLDEST).set(q.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
                gauge!(WEBHOOK_DEAD_LETTERS).set(q.dead_letters as f64);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "webhook queue stats unavailable"),
            Err(_) => tracing::debug!("webhook queue stats timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private recorder labelling every series `node_id="n1"`, and its handle.
    fn test_recorder() -> (
        metrics_exporter_prometheus::PrometheusRecorder,
        PrometheusHandle,
    ) {
        let recorder = PrometheusBuilder::new()
            .add_global_label("node_id", "n1")
            .build_recorder();
        let handle = recorder.handle();
        (recorder, handle)
    }

    #[test]
    fn channel_classes() {
        for (name, class) in [
            ("news", "public"),
            ("private-a", "private"),
            ("presence-a", "presence"),
            ("private-encrypted-a", "encrypted"),
            ("cache-a", "cache"),
            ("private-cache-a", "cache"),
            ("presence-cache-a", "cache"),
            ("private-encrypted-cache-a", "cache"),
            ("#server-to-user-1", "user"),
        ] {
            assert_eq!(channel_class(name), class, "{name}");
        }
    }

    /// `sockudo_adapter_up` follows the cluster transport: 1 while it is healthy, 0 while it
    /// is cut off (the alert `SockudoAdapterDown` reads it), 1 again once it is back.
    #[tokio::test]
    async fn adapter_up_follows_the_transport() {
        use sockudo_core::adapter::MemoryTransport;
        use sockudo_core::adapter::{ClusterAdapter, ClusterOptions, MemoryPresenceStore};
        use sockudo_core::app::StaticAppManager;
        use sockudo_core::cache::MemoryCache;

        let transport = Arc::new(MemoryTransport::new());
        let adapter = ClusterAdapter::start(
            "n1",
            Arc::clone(&transport),
            Arc::new(MemoryPresenceStore::new()),
            ClusterOptions::default(),
        )
        .await
        .expect("cluster adapter over the memory transport");
        let node = Node::new(
            crate::config::NodeSettings::default(),
            Arc::new(StaticAppManager::new(Vec::new())),
            adapter,
            Arc::new(MemoryCache::new()),
            None,
        );
        let (recorder, handle) = test_recorder();
        let _guard = metrics::set_default_local_recorder(&recorder);
        describe();
        sample(&node).await;
        let text = handle.render();
        assert!(
            text.contains(r#"sockudo_adapter_up{node_id="n1"} 1"#),
            "{text}"
        );
        transport.set_healthy(false);
        sample(&node).await;
        let text = handle.render();
        assert!(
            text.contains(r#"sockudo_adapter_up{node_id="n1"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"sockudo_ready{node_id="n1"} 0"#), "{text}");
        transport.set_healthy(true);
        sample(&node).await;
        assert!(handle
            .render()
            .contains(r#"sockudo_adapter_up{node_id="n1"} 1"#));
    }

    #[test]
    fn alerted_counters_exist_at_zero() {
        let (recorder, handle) = test_recorder();
        metrics::with_local_recorder(&recorder, describe);
        let text = handle.render();
        assert!(
            text.contains(r#"sockudo_live_gaps_total{node_id="n1",outcome="failed_closed"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sockudo_recovery_total{node_id="n1",outcome="failure",source="",code="position_expired"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn gauges_go_down_as_well_as_up() {
        let (recorder, handle) = test_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let app: Arc<str> = Arc::from("a1");
            let g1 = ConnectionGauge::open(&app);
            let g2 = ConnectionGauge::open(&app);
            subscription_changed("a1", "presence-x", 1.0);
            subscription_changed("a1", "presence-x", 1.0);
            let text = handle.render();
            assert!(
                text.contains(r#"sockudo_connections{node_id="n1",app_id="a1"} 2"#),
                "{text}"
            );
            assert!(
                text.contains(
                    r#"sockudo_subscriptions{node_id="n1",app_id="a1",class="presence"} 2"#
                ),
                "{text}"
            );
            drop(g1);
            drop(g2);
            subscription_changed("a1", "presence-x", -1.0);
            subscription_changed("a1", "presence-x", -1.0);
            let text = handle.render();
            assert!(
                text.contains(r#"sockudo_connections{node_id="n1",app_id="a1"} 0"#),
                "{text}"
            );
            assert!(
                text.contains(
                    r#"sockudo_subscriptions{node_id="n1",app_id="a1",class="presence"} 0"#
                ),
                "{text}"
            );
            assert!(
                text.contains("sockudo_idempotency_replays_total{node_id=\"n1\"} 0"),
                "alerting counters registered at zero: {text}"
            );
            assert!(
                !text.contains("sockudo_push_"),
                "no push metrics without push: {text}"
            );
            describe_push();
            let text = handle.render();
            for name in [PUSH_ACCEPTED, PUSH_SCHEDULED, PUSH_QUEUE_BACKLOG] {
                assert!(text.contains(name), "{name} registered with push: {text}");
            }
        });
    }
}
