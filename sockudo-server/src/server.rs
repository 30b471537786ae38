//! Assembling and running a node: the router, health endpoints, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use sockudo_core::adapter::{Adapter, LocalAdapter};
use sockudo_core::cache::{Cache, CacheError, MemoryCache};
use sockudo_core::history::{HistoryStore, MemoryHistoryStore, Retention};
use sockudo_core::layers::rate_limit::{KeyBy, PeerAddr, Quota, RateLimitLayer, RateLimiter};
use tokio::net::TcpListener;

#[cfg(any(feature = "redis", feature = "nats"))]
use crate::config::redact_url;
use crate::config::NodeSettings;
use crate::node::Node;
use crate::ws::{ws_fallback, ws_handler};

/// Why a node could not be built from its settings. Its `Display` is one line for stderr.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The cache backend cannot be reached.
    #[error("cache driver {driver:?} cannot reach {url}: {source}")]
    Cache {
        /// The driver.
        driver: String,
        /// Where (credentials hidden).
        url: String,
        /// Why.
        source: CacheError,
    },
    /// The cache driver is not in this build.
    #[error("cache driver {0:?} is not supported by this build")]
    UnsupportedCache(String),
    /// A driver is not in this build.
    #[error("{what} driver {driver:?} is not supported by this build")]
    Unsupported {
        /// Which backend.
        what: &'static str,
        /// The driver asked for.
        driver: String,
    },
    /// Push notifications could not start (credentials, store).
    #[error("{0}")]
    Push(String),
    /// A backend cannot be reached.
    #[error("{what} backend at {url} is unavailable: {message}")]
    Backend {
        /// Which backend.
        what: &'static str,
        /// Where (credentials hidden).
        url: String,
        /// Why.
        message: String,
    },
}

/// Build a node from resolved settings, with the backends they name. Shared backends are
/// connected here: when one is unreachable at start the node is not built (fail fast) and the
/// error says which and where. To plug your own backends, use [`crate::NodeBuilder`].
pub async fn build_node(settings: NodeSettings) -> Result<Arc<Node>, BuildError> {
    crate::builder::NodeBuilder::new(settings).build().await
}

/// The cache the settings name, connected.
pub(crate) async fn cache_from(settings: &NodeSettings) -> Result<Arc<dyn Cache>, BuildError> {
    Ok(match settings.cache.driver.as_str() {
        "memory" => memory_cache(),
        #[cfg(feature = "redis")]
        driver @ ("redis" | "redis-cluster") => {
            // Everything kept through the cache (rate limits, idempotency, cache channels,
            // webhook spans) lives under `{cluster prefix}:`.
            let endpoint = settings.redis.endpoint(driver);
            let cache = sockudo_core::cache::RedisCache::connect(
                endpoint.clone(),
                &format!("{}:", settings.cluster.prefix),
            )
            .await
            .map_err(|source| BuildError::Cache {
                driver: driver.into(),
                url: endpoint.redacted(),
                source,
            })?;
            Arc::new(cache)
        }
        other => return Err(BuildError::UnsupportedCache(other.to_owned())),
    })
}

/// The adapter the settings name, connected, with its cluster counters (cluster adapters).
pub(crate) async fn adapter_from(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, Option<crate::node::ClusterStatsFn>), BuildError> {
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(unused_mut))]
    let mut cluster_stats: Option<crate::node::ClusterStatsFn> = None;
    let adapter: Arc<dyn Adapter> = match settings.adapter.driver.as_str() {
        "local" => Arc::new(LocalAdapter::new()),
        #[cfg(feature = "redis")]
        "redis" => {
            let (adapter, stats) = redis_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(feature = "redis")]
        "redis-cluster" => {
            let (adapter, stats) = redis_cluster_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(feature = "nats")]
        "nats" => {
            let (adapter, stats) = nats_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(all(feature = "google-pubsub", feature = "redis"))]
        "google-pubsub" => {
            let (adapter, stats) = google_pubsub_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(feature = "rabbitmq")]
        "rabbitmq" => {
            let (adapter, stats) = rabbitmq_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(all(feature = "pulsar", feature = "redis"))]
        "pulsar" => {
            let (adapter, stats) = pulsar_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(all(feature = "iggy", feature = "redis"))]
        "iggy" => {
            let (adapter, stats) = iggy_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        #[cfg(all(feature = "kafka", feature = "redis"))]
        "kafka" => {
            let (adapter, stats) = kafka_adapter(settings).await?;
            cluster_stats = Some(stats);
            adapter
        }
        other => {
            return Err(BuildError::Unsupported {
                what: "adapter",
                driver: other.to_owned(),
            })
        }
    };
    Ok((adapter, cluster_stats))
}

/// The history store the settings name (`None` for `history.driver = "none"`), connected.
pub(crate) async fn history_from(
    settings: &NodeSettings,
) -> Result<Option<Arc<dyn HistoryStore>>, BuildError> {
    Ok(match settings.history.driver.as_str() {
        "memory" | "none" => memory_history(settings),
        #[cfg(feature = "redis")]
        driver @ ("redis" | "redis-cluster") => {
            let endpoint = settings.redis.endpoint(driver);
            let store = sockudo_core::history::RedisHistoryStore::connect(
                endpoint.clone(),
                &settings.cluster.prefix,
                retention(settings),
                Duration::from_millis(settings.history_timeout_ms.max(1)),
            )
            .await
            .map_err(|e| BuildError::Backend {
                what: "history",
                url: endpoint.redacted(),
                message: e.to_string(),
            })?;
            Some(Arc::new(store))
        }
        other => {
            return Err(BuildError::Unsupported {
                what: "history",
                driver: other.to_owned(),
            })
        }
    })
}

async fn redis_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::RedisTransport;
    let url = &settings.redis.url;
    let transport = Arc::new(
        RedisTransport::connect(url)
            .await
            .map_err(adapter_error(url))?,
    );
    let presence = presence_store(settings, &transport, url).await?;
    cluster_adapter(settings, transport, presence, url).await
}

/// The Redis Cluster adapter: sharded pub/sub on the cluster plus the presence store the
/// settings name (the same cluster by default).
#[cfg(feature = "redis")]
async fn redis_cluster_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::RedisClusterTransport;
    let endpoint = settings.redis.endpoint("redis-cluster");
    let shown = endpoint.redacted();
    let transport = Arc::new(
        RedisClusterTransport::connect(&settings.redis.cluster_urls())
            .await
            .map_err(adapter_error(&shown))?,
    );
    let presence = presence_store(settings, &transport, &shown).await?;
    cluster_adapter(settings, transport, presence, &shown).await
}

/// The presence store the settings name (see `config::effective_presence`): the shared
/// Redis store, or presence replicated over the cluster `transport`.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn presence_store<T: sockudo_core::adapter::Transport>(
    settings: &NodeSettings,
    transport: &Arc<T>,
    url: &str,
) -> Result<Arc<dyn sockudo_core::adapter::PresenceStore>, BuildError> {
    use sockudo_core::adapter::{TransportPresenceOptions, TransportPresenceStore};
    match crate::config::effective_presence(settings) {
        #[cfg(feature = "redis")]
        "redis" | "redis-cluster" => redis_presence(settings).await,
        "transport" => {
            let opts = TransportPresenceOptions {
                prefix: settings.cluster.prefix.clone(),
                // The digest goes with the heartbeat; liveness is the cluster's.
                sync_interval: Duration::from_millis(settings.cluster.heartbeat_interval_ms),
                node_timeout: Duration::from_millis(settings.cluster.node_timeout_ms),
                ..TransportPresenceOptions::default()
            };
            let store =
                TransportPresenceStore::start(settings.node_id.clone(), transport.clone(), opts)
                    .await
                    .map_err(adapter_error(url))?;
            Ok(store)
        }
        other => Err(BuildError::Unsupported {
            what: "presence",
            driver: other.to_owned(),
        }),
    }
}

/// The NATS cluster adapter: subjects on the configured servers, presence replicated over
/// NATS (the default) or in the shared Redis (`PRESENCE_DRIVER=redis`).
#[cfg(feature = "nats")]
async fn nats_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{NatsTransport, NatsTransportOptions};
    let servers = settings.nats.servers();
    let shown = servers.join(",");
    let opts = NatsTransportOptions {
        servers,
        user_password: settings
            .nats
            .username
            .clone()
            .zip(settings.nats.password.clone()),
        token: settings.nats.token.clone(),
        ..NatsTransportOptions::default()
    };
    let transport = Arc::new(
        NatsTransport::connect(opts)
            .await
            .map_err(adapter_error(&shown))?,
    );
    let presence = presence_store(settings, &transport, &shown).await?;
    cluster_adapter(settings, transport, presence, &shown).await
}

/// The Google Pub/Sub cluster adapter: one topic per cluster prefix on the emulator, a
/// subscription per node, presence as the settings name (see `presence_store`).
#[cfg(feature = "google-pubsub")]
async fn google_pubsub_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{GooglePubSubTransport, GooglePubSubTransportOptions};
    let g = &settings.google_pubsub;
    let opts = GooglePubSubTransportOptions::new(
        g.project_id.clone(),
        g.emulator_host.clone(),
        &settings.cluster.prefix,
        &settings.node_id,
    );
    let shown = format!(
        "pubsub://{}/projects/{}/topics/{}",
        g.emulator_host.as_deref().unwrap_or("-"),
        g.project_id,
        opts.topic_id
    );
    let transport = Arc::new(
        GooglePubSubTransport::connect(opts)
            .await
            .map_err(adapter_error(&shown))?,
    );
    let presence = presence_store(settings, &transport, &shown).await?;
    cluster_adapter(settings, transport, presence, &shown).await
}

/// The RabbitMQ cluster adapter: one topic exchange named after the cluster prefix, a queue
/// per node, presence as the settings name (see `presence_store`).
#[cfg(feature = "rabbitmq")]
async fn rabbitmq_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{RabbitmqTransport, RabbitmqTransportOptions};
    let url = settings.rabbitmq.url.trim().to_owned();
    let opts = RabbitmqTransportOptions {
        url: url.clone(),
        exchange: settings.cluster.prefix.clone(),
        max_message_bytes: settings.rabbitmq.max_message_bytes,
        ..RabbitmqTransportOptions::default()
    };
    let transport = Arc::new(
        RabbitmqTransport::connect_with(opts)
            .await
            .map_err(adapter_error(&url))?,
    );
    let presence = presence_store(settings, &transport, &url).await?;
    cluster_adapter(settings, transport, presence, &url).await
}

/// The Pulsar cluster adapter: one Pulsar topic per cluster prefix on `PULSAR_URL`,
/// presence in the shared Redis (checked by the config).
#[cfg(all(feature = "pulsar", feature = "redis"))]
async fn pulsar_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{PulsarTransport, PulsarTransportOptions};
    let url = settings.pulsar.url.trim().to_owned();
    let opts = PulsarTransportOptions {
        url: url.clone(),
        token: settings.pulsar.token.clone(),
        topic: PulsarTransportOptions::topic_for_prefix(&settings.cluster.prefix),
        ..PulsarTransportOptions::default()
    };
    let transport = PulsarTransport::connect(opts)
        .await
        .map_err(adapter_error(&url))?;
    let presence = redis_presence(settings).await?;
    cluster_adapter(settings, Arc::new(transport), presence, &url).await
}

/// The Apache Iggy cluster adapter: one Iggy topic per cluster prefix in `IGGY_STREAM`,
/// presence in the shared Redis (checked by the config).
#[cfg(all(feature = "iggy", feature = "redis"))]
async fn iggy_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{IggyTransport, IggyTransportOptions};
    let cs = settings.iggy.connection_string.trim().to_owned();
    let opts = IggyTransportOptions {
        connection_string: cs.clone(),
        stream: settings.iggy.stream.clone(),
        topic: IggyTransportOptions::topic_for_prefix(&settings.cluster.prefix),
        ..IggyTransportOptions::default()
    };
    let transport = IggyTransport::connect(opts)
        .await
        .map_err(adapter_error(&cs))?;
    let presence = redis_presence(settings).await?;
    cluster_adapter(settings, Arc::new(transport), presence, &cs).await
}

/// The Kafka cluster adapter: one topic per cluster prefix on the configured brokers,
/// presence in the shared Redis (checked by the config).
#[cfg(all(feature = "kafka", feature = "redis"))]
async fn kafka_adapter(
    settings: &NodeSettings,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{
        KafkaSasl, KafkaSaslMechanism, KafkaTransport, KafkaTransportOptions,
    };
    let k = &settings.kafka;
    let brokers = k.broker_list();
    let shown = brokers.join(",");
    let sasl = if k.sasl() {
        let mechanism =
            KafkaSaslMechanism::parse(&k.mechanism()).ok_or_else(|| BuildError::Backend {
                what: "adapter",
                url: shown.clone(),
                message: format!("unsupported KAFKA_SASL_MECHANISM {}", k.mechanism()),
            })?;
        Some(KafkaSasl {
            mechanism,
            username: k.sasl_username.clone().unwrap_or_default(),
            password: k.sasl_password.clone().unwrap_or_default(),
        })
    } else {
        None
    };
    let opts = KafkaTransportOptions {
        brokers,
        topic: crate::config::KafkaSection::topic(&settings.cluster.prefix),
        partitions: k.partitions,
        sasl,
        ..KafkaTransportOptions::default()
    };
    let transport = KafkaTransport::connect(opts)
        .await
        .map_err(adapter_error(&shown))?;
    let presence = redis_presence(settings).await?;
    cluster_adapter(settings, Arc::new(transport), presence, &shown).await
}

#[cfg(any(feature = "redis", feature = "nats"))]
fn adapter_error(url: &str) -> impl Fn(sockudo_core::adapter::AdapterError) -> BuildError + '_ {
    move |e| BuildError::Backend {
        what: "adapter",
        url: redact_url(url),
        message: e.to_string(),
    }
}

/// The shared presence store (`REDIS_URL` or the Redis Cluster, as the effective presence
/// driver says), under the cluster prefix.
#[cfg(feature = "redis")]
async fn redis_presence(
    settings: &NodeSettings,
) -> Result<Arc<dyn sockudo_core::adapter::PresenceStore>, BuildError> {
    use sockudo_core::adapter::{RedisPresenceOptions, RedisPresenceStore};
    let opts = RedisPresenceOptions {
        prefix: settings.cluster.prefix.clone(),
        ..RedisPresenceOptions::default()
    };
    let endpoint = settings
        .redis
        .endpoint(crate::config::effective_presence(settings));
    let store = RedisPresenceStore::connect_with(endpoint.clone(), opts)
        .await
        .map_err(|e| BuildError::Backend {
            what: "presence",
            url: endpoint.redacted(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(store))
}

/// A [`ClusterAdapter`](sockudo_core::adapter::ClusterAdapter) over `transport`, with the
/// node's cluster settings; its stats are exported as metrics.
#[cfg(any(feature = "redis", feature = "nats"))]
async fn cluster_adapter<T: sockudo_core::adapter::Transport>(
    settings: &NodeSettings,
    transport: Arc<T>,
    presence: Arc<dyn sockudo_core::adapter::PresenceStore>,
    url: &str,
) -> Result<(Arc<dyn Adapter>, crate::node::ClusterStatsFn), BuildError> {
    use sockudo_core::adapter::{ClusterAdapter, ClusterOptions};
    let opts = ClusterOptions {
        prefix: settings.cluster.prefix.clone(),
        heartbeat_interval: Duration::from_millis(settings.cluster.heartbeat_interval_ms),
        node_timeout: Duration::from_millis(settings.cluster.node_timeout_ms),
        request_timeout: Duration::from_millis(settings.cluster.request_timeout_ms),
        // Per-channel topics where the transport supports them (Redis, NATS, Pub/Sub, RabbitMQ): a node
        // receives only the channels it has subscribers for.
        // Per-channel topics where the transport supports them (Redis, NATS; Kafka routes
        // them locally): a node handles only the channels it has subscribers for.
        interest_routing: true,
    };
    let adapter = ClusterAdapter::start(settings.node_id.clone(), transport, presence, opts)
        .await
        .map_err(adapter_error(url))?;
    let weak = Arc::downgrade(&adapter);
    let stats: crate::node::ClusterStatsFn = Arc::new(move || weak.upgrade().map(|a| a.stats()));
    Ok((adapter, stats))
}

/// Build a node on memory backends only, whatever the settings name (sync, infallible): for
/// tests and embedding. [`build_node`] is the one that honours the configured drivers.
pub fn build_node_memory(settings: NodeSettings) -> Arc<Node> {
    let node = assemble(settings, memory_cache());
    #[cfg(feature = "push")]
    if let Err(e) = crate::push::install_memory(&node) {
        tracing::error!(error = %e, "push disabled");
    }
    node
}

fn memory_cache() -> Arc<dyn Cache> {
    let cache = Arc::new(MemoryCache::new());
    spawn_cache_purger(&cache);
    cache
}

/// The configured retention of the history store.
fn retention(settings: &NodeSettings) -> Retention {
    Retention {
        max_messages: settings.history_max_messages,
        max_age: Duration::from_secs(settings.history_max_age_secs),
    }
}

/// The in-process history store, or none (`history.driver = "none"`).
fn memory_history(settings: &NodeSettings) -> Option<Arc<dyn HistoryStore>> {
    match settings.history.driver.as_str() {
        "none" => None,
        _ => {
            let store = Arc::new(MemoryHistoryStore::new(retention(settings)));
            let weak = Arc::downgrade(&store);
            let period = reap_interval(settings.history_max_age_secs);
            every(period, move || match weak.upgrade() {
                Some(s) => {
                    if s.reap_idle() > 0 {
                        crate::memory::give_back();
                    }
                    true
                }
                None => false,
            });
            Some(store)
        }
    }
}

/// How often expired cache entries are purged.
const REAP_INTERVAL: Duration = Duration::from_secs(30);

/// How often idle per-channel state kept for `retention_secs` (hot rings, memory history
/// streams) is reclaimed: twice per retention, between 1 s and [`REAP_INTERVAL`].
fn reap_interval(retention_secs: u64) -> Duration {
    Duration::from_millis(retention_secs.saturating_mul(500))
        .clamp(Duration::from_secs(1), REAP_INTERVAL)
}

/// Run `f` every `period` on the current Tokio runtime (none: nothing runs) until it returns
/// false (its target is gone).
fn every(period: Duration, mut f: impl FnMut() -> bool + Send + 'static) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !f() {
                return;
            }
        }
    });
}

fn assemble(settings: NodeSettings, cache: Arc<dyn Cache>) -> Arc<Node> {
    let history = memory_history(&settings);
    let apps = crate::apps::static_backend(&settings);
    assemble_with(
        settings,
        cache,
        Arc::new(LocalAdapter::new()),
        history,
        apps,
        None,
    )
}

/// Put a node together from its backends; `queue`: the webhook queue, `None` for the one the
/// settings name.
pub(crate) fn assemble_with(
    settings: NodeSettings,
    cache: Arc<dyn Cache>,
    adapter: Arc<dyn Adapter>,
    history: Option<Arc<dyn HistoryStore>>,
    apps: crate::apps::AppBackend,
    queue: Option<Arc<dyn sockudo_core::queue::Queue>>,
) -> Arc<Node> {
    let node = Node::new(settings, apps.apps, adapter, cache, history);
    if let Some(store) = apps.store {
        node.set_app_store(store);
    }
    if let Some(changes) = apps.changes {
        crate::apps::watch_changes(&node, changes);
    }
    crate::webhooks::install(&node, queue); // webhooks
    let weak = Arc::downgrade(&node);
    every(
        reap_interval(node.settings.hot_buffer_secs),
        move || match weak.upgrade() {
            Some(n) => {
                n.reclaim();
                true
            }
            None => false,
        },
    );
    node
}

fn spawn_cache_purger(cache: &Arc<MemoryCache>) {
    let weak = Arc::downgrade(cache);
    every(REAP_INTERVAL, move || match weak.upgrade() {
        Some(c) => {
            c.purge_expired();
            true
        }
        None => false,
    });
}

/// Everything the node serves on its main port: `GET /app/{key}` (WebSocket), the Pusher HTTP
/// API under `/apps/...`, `GET /health` and `GET /ready`. Mount it in your own axum app with
/// `Router::merge` at the root; to `Router::nest` it under a prefix use [`router_with`].
pub fn router(node: Arc<Node>) -> Router {
    router_with(node, RouterOptions::default())
}

/// Options of [`router_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterOptions {
    /// The prefix the router is `nest`ed under in the embedding app (e.g. `"/realtime"`), or
    /// `None` (the default) when it is served at the root. axum strips the prefix before the
    /// API routes see the request, but HTTP API clients sign the full path
    /// (`/realtime/apps/{id}/events`): with the prefix set, the API-auth layer accepts a
    /// signature over either. The WebSocket endpoint needs nothing (pusher-js:
    /// `wsPath: '/realtime'`).
    pub api_path_prefix: Option<&'static str>,
}

/// [`router`] with [`RouterOptions`]. To serve Sockudo under `/realtime` next to your own
/// routes:
///
/// ```no_run
/// # fn mount(node: std::sync::Arc<sockudo_server::Node>) -> axum::Router {
/// use sockudo_server::server::{router_with, RouterOptions};
/// let realtime = router_with(node, RouterOptions { api_path_prefix: Some("/realtime") });
/// axum::Router::new()
///     .route("/", axum::routing::get(|| async { "my app" }))
///     .nest("/realtime", realtime)
/// # }
/// ```
pub fn router_with(node: Arc<Node>, options: RouterOptions) -> Router {
    let upgrades = match upgrade_rate_limit(&node.settings, &node.cache) {
        Some(limit) => get(ws_handler).route_layer(limit),
        None => get(ws_handler),
    };
    Router::new()
        .route("/app/{key}", upgrades)
        .route("/health", get(|| async { "OK" }))
        .route("/ready", get(ready))
        .fallback(ws_fallback)
        .with_state(Arc::clone(&node))
        .merge(crate::http::api_router_with_prefix(
            node,
            options.api_path_prefix,
        ))
}

/// The per-client-IP limit on WebSocket upgrades, when configured. It needs the peer address
/// as a [`PeerAddr`] extension: [`serve`] provides it; apps serving [`router_with`]
/// themselves add it (or trust `X-Forwarded-For` hops).
fn upgrade_rate_limit(settings: &NodeSettings, cache: &Arc<dyn Cache>) -> Option<RateLimitLayer> {
    let rate = NonZeroU32::new(settings.ws_upgrade_rate_limit_per_second)?;
    let burst = NonZeroU32::new(settings.ws_upgrade_rate_limit_burst).unwrap_or(rate);
    let limiter = RateLimiter::new(
        Arc::clone(cache),
        Quota::per_second(rate).allow_burst(burst),
    )
    .key_prefix("ws-upgrade");
    Some(
        RateLimitLayer::from_limiter(limiter).key_by(KeyBy::ClientIp {
            trusted_proxy_hops: settings.trusted_proxy_hops,
        }),
    )
}

/// Copy the connection's peer address into the extension the core's rate limiter reads.
async fn peer_addr(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(axum::extract::ConnectInfo(addr)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .copied()
    {
        req.extensions_mut().insert(PeerAddr(addr));
    }
    next.run(req).await
}

/// `/ready`: 200 while the node should get traffic. A database outage of the app manager
/// keeps it 200 (every node shares the database, so sending clients elsewhere would not help,
/// and cached apps keep working) but says so in the body.
async fn ready(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match readiness(&node).await {
        Ok(()) => match crate::apps::degraded_note(&node) {
            None => (StatusCode::OK, "ready".into()),
            Some(note) => (StatusCode::OK, format!("ready; {note}")),
        },
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

/// How long `/ready` waits for the cache to answer before calling it unreachable.
const READY_CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the node should receive traffic; `Err` names the first reason it should not:
/// `starting` (not serving yet), `draining`, `adapter unavailable`, `duplicate node id: …`,
/// `cache unavailable: …`.
pub async fn readiness(node: &Node) -> Result<(), String> {
    if node.is_draining() {
        return Err("draining".into());
    }
    if !node.is_serving() {
        return Err("starting".into());
    }
    if let Some(reason) = node.adapter.unready_reason() {
        return Err(reason);
    }
    match tokio::time::timeout(READY_CACHE_TIMEOUT, node.cache.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cache unavailable: {e}")),
        Err(_) => Err(format!(
            "cache unavailable: no answer within {READY_CACHE_TIMEOUT:?}"
        )),
    }
}

/// Serve `node` on `listener` until `shutdown` resolves, then drain: unready at once, new
/// upgrades refused, existing sockets kept for the grace period (or until they are gone),
/// then closed with 4200.
///
/// With `metrics_port` ≠ 0 it also installs the process's Prometheus recorder (once, see
/// [`crate::metrics::install`]) and serves `GET /metrics` on `host:metrics_port` until the
/// node stops; a metrics port that cannot be bound is an error before anything is served.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&node));
    let drain_node = Arc::clone(&node);
    let stopped = tokio_util::sync::CancellationToken::new();
    let metrics_task = start_metrics(&node, stopped.clone()).await?;
    let admin_task = crate::admin::start(&node, stopped.clone()).await?;
    let stop_http = stopped.clone();
    let drainer = tokio::spawn(async move {
        shutdown.await;
        drain(&drain_node).await;
        stop_http.cancel();
    });
    node.mark_serving();
    tracing::info!(node_id = %node.settings.node_id, "serving");
    let app = app.layer(axum::middleware::from_fn(peer_addr));
    let result =
        crate::listener::serve(listener, app, listener_limits(&node.settings), stopped).await;
    drainer.abort();
    for task in [metrics_task, admin_task].into_iter().flatten() {
        task.abort();
    }
    result
}

/// The listener bounds the settings name (`HTTP_HEADER_TIMEOUT_MS`, `HTTP_MAX_HEADER_BYTES`,
/// `MAX_PENDING_CONNECTIONS`).
fn listener_limits(s: &NodeSettings) -> crate::listener::ListenerLimits {
    crate::listener::ListenerLimits {
        header_read_timeout: Duration::from_millis(s.http_header_timeout_ms),
        max_header_bytes: s.http_max_header_bytes,
        max_pending: s.max_pending_connections,
    }
}

/// Install the recorder and serve `/metrics` when `metrics_port` is set; start the sampler.
async fn start_metrics(
    node: &Arc<Node>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    if node.settings.metrics_port == 0 {
        crate::metrics::spawn_sampler(node, None);
        return Ok(None);
    }
    let addr = format!("{}:{}", node.settings.host, node.settings.metrics_port);
    let listener = TcpListener::bind(&addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for metrics: {e}"),
        )
    })?;
    let Some(handle) = crate::metrics::install(&node.settings.node_id) else {
        crate::metrics::spawn_sampler(node, None);
        return Ok(None);
    };
    #[cfg(feature = "push")]
    if node.push().is_some() {
        crate::metrics::describe_push();
    }
    crate::metrics::spawn_sampler(node, Some(handle.clone()));
    tracing::info!(%addr, "metrics listening");
    Ok(Some(tokio::spawn(async move {
        if let Err(e) =
            crate::metrics::serve_metrics(listener, handle, async move { stop.cancelled().await })
                .await
        {
            tracing::warn!(error = %e, "metrics listener failed");
        }
    })))
}

/// The drain sequence, usable without [`serve`] by apps that run their own server.
pub async fn drain(node: &Node) {
    node.start_draining();
    metrics::gauge!(crate::metrics::DRAINING).set(1.0);
    metrics::gauge!(crate::metrics::READY).set(0.0);
    tracing::info!(
        connections = node.total_connections(),
        grace_secs = node.settings.shutdown_grace_period,
        "draining"
    );
    let grace = Duration::from_secs(node.settings.shutdown_grace_period);
    let deadline = tokio::time::Instant::now() + grace;
    while node.total_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.close_all();
    // Give connection tasks time to send their 4200 close frames.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while node.total_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // webhooks: enqueue events still buffered (the queue delivers them, here or elsewhere).
    if let Some(w) = node.webhooks() {
        w.flush().await;
    }
    // Leave the cluster cleanly: peers drop what is left of this node's presence now rather
    // than after the liveness timeout.
    match node.adapter.leave_cluster().await {
        Ok(removed) => node.announce_removed(removed).await,
        Err(e) => {
            tracing::warn!(error = %e, "leaving the cluster failed; peers will sweep this node after the timeout")
        }
    }
    tracing::info!("drained");
}

#[cfg(test)]
mod build_tests {
    use super::*;

    #[tokio::test]
    async fn readiness_names_starting_then_ready_then_draining() {
        let node = build_node_memory(NodeSettings::default());
        assert_eq!(
            readiness(&node).await,
            Err("starting".to_string()),
            "not ready before serving"
        );
        node.mark_serving();
        assert_eq!(readiness(&node).await, Ok(()));
        node.start_draining();
        assert_eq!(readiness(&node).await, Err("draining".to_string()));
    }

    #[test]
    fn urls_in_errors_hide_credentials() {
        assert_eq!(
            crate::config::redact_url("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(
            crate::config::redact_url("redis://:secret@host"),
            "redis://***@host"
        );
        assert_eq!(
            crate::config::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn unreachable_redis_cache_is_one_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut settings = NodeSettings::default();
        settings.cache.driver = "redis".into();
        settings.redis.url = format!("redis://u:pw@127.0.0.1:{port}");
        let e = build_node(settings).await.err().unwrap().to_string();
        assert!(
            e.contains("redis")
                && e.contains(&port.to_string())
                && !e.contains("pw")
                && !e.contains('\n'),
            "{e}"
        );
    }
}
