//! Operator configuration: built-in defaults < TOML file < environment < CLI flags.
//!
//! Every setting is listed once in [`reference::SETTINGS`], from which docs/configuration.md
//! and sockudo.example.toml are generated ([`render`]).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sockudo_core::app::App;

mod app_manager;
mod default_app;
mod drivers;
mod kafka;
mod pulsar_iggy;
mod push;
mod rabbitmq;
pub mod reference;
pub mod render;

pub use app_manager::{AdminSection, AppManagerSection, MIN_ADMIN_TOKEN_LEN};
pub use default_app::{DEV_APP_ID, DEV_APP_KEY, DEV_APP_SECRET};
pub use drivers::{
    effective_presence, GooglePubSubSection, NatsSection, PresenceSection, RedisSection,
};
pub use kafka::KafkaSection;
pub use pulsar_iggy::{IggySection, PulsarSection};
pub use push::PushSection;
pub use rabbitmq::RabbitmqSection;

/// Why a configuration cannot be used. Printed as one line before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file given.
        path: String,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for the settings.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable has an invalid value.
    #[error("invalid value for {name}: {value:?} ({expected})")]
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The settings cannot work together (the message says why).
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error(
        "no app configured: list [[apps]] in the config file, set SOCKUDO_DEFAULT_APP_ID, \
         SOCKUDO_DEFAULT_APP_KEY and SOCKUDO_DEFAULT_APP_SECRET, or read apps from a database \
         (APP_MANAGER_DRIVER=postgres|mysql)"
    )]
    /// No app is configured anywhere.
    NoApps,
}

/// Every environment variable a node reads (the table of docs/configuration.md).
/// Harnesses that start nodes (the testkit, the bench) clear exactly these from what children
/// inherit, so a developer's shell cannot change what a test or a measurement runs against.
pub const ENV_VARS: &[&str] = &[
    "ACTIVITY_TIMEOUT",
    "ADAPTER_DRIVER",
    "ADMIN_PORT",
    "ADMIN_TOKEN",
    "API_RATE_LIMIT_BURST",
    "API_RATE_LIMIT_PER_SECOND",
    "APP_MANAGER_CACHE_TTL",
    "APP_MANAGER_DRIVER",
    "APP_MANAGER_POLL_INTERVAL",
    "APP_MANAGER_TABLE",
    "CACHE_CHANNEL_TTL",
    "CACHE_DRIVER",
    "CLUSTER_HEARTBEAT_INTERVAL_MS",
    "CLUSTER_NODE_TIMEOUT_MS",
    "CLUSTER_PREFIX",
    "CLUSTER_REQUEST_TIMEOUT_MS",
    "DATABASE_URL",
    "GOOGLE_PUBSUB_PROJECT_ID",
    "HISTORY_DRIVER",
    "HISTORY_MAX_AGE_SECS",
    "HISTORY_MAX_MESSAGES",
    "HISTORY_TIMEOUT_MS",
    "HOST",
    "HOT_BUFFER_MESSAGES",
    "HOT_BUFFER_SECS",
    "HTTP_HEADER_TIMEOUT_MS",
    "HTTP_MAX_HEADER_BYTES",
    "IGGY_CONNECTION_STRING",
    "IGGY_STREAM",
    "IDEMPOTENCY_TTL",
    "KAFKA_BROKERS",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SECURITY_PROTOCOL",
    "LIVE_GAP_WAIT_MS",
    "LOG_FORMAT",
    "MAX_FRAME_BYTES",
    "MAX_PENDING_CONNECTIONS",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "MESSAGE_DEDUP_CAPACITY",
    "MESSAGE_DEDUP_SECS",
    "METRICS_PORT",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_URL",
    "NATS_USERNAME",
    "OUTBOUND_QUEUE_BYTES",
    "OUTBOUND_QUEUE_FRAMES",
    "PONG_TIMEOUT",
    "PORT",
    "PRESENCE_DRIVER",
    "PUBSUB_EMULATOR_HOST",
    "PULSAR_TOKEN",
    "PULSAR_URL",
    "PUSH_APNS_ENDPOINT",
    "PUSH_APNS_KEY_ID",
    "PUSH_APNS_PRIVATE_KEY_PATH",
    "PUSH_APNS_TEAM_ID",
    "PUSH_APNS_TOPIC",
    "PUSH_DISPATCH_CONCURRENCY",
    "PUSH_ENABLED",
    "PUSH_FCM_ENDPOINT",
    "PUSH_FCM_SERVICE_ACCOUNT_JSON_PATH",
    "PUSH_LEASE_SECS",
    "PUSH_PUBLISH_STATUS_TTL_DAYS",
    "PUSH_RETRY_MAX_ATTEMPTS",
    "PUSH_SHARD_SIZE",
    "PUSH_WEBPUSH_VAPID_CONTACT",
    "PUSH_WEBPUSH_VAPID_PRIVATE_KEY",
    "QUEUE_DRIVER",
    "RABBITMQ_MAX_MESSAGE_BYTES",
    "RABBITMQ_URL",
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "RESUME_GRACE_MS",
    "RESUME_MAX_REPLAY_BYTES",
    "RESUME_PENDING_SECS",
    "SHUTDOWN_GRACE_PERIOD",
    "SUBSCRIBE_BURST",
    "SUBSCRIBE_RATE_PER_SECOND",
    "SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES",
    "SOCKUDO_DEFAULT_APP_ID",
    "SOCKUDO_DEFAULT_APP_KEY",
    "SOCKUDO_DEFAULT_APP_SECRET",
    "SOCKUDO_DEFAULT_APP_WEBHOOK_URL",
    "SOCKUDO_NODE_ID",
    "TRUSTED_PROXY_HOPS",
    "V1_EXPOSE_STREAM_FIELDS",
    "WEBHOOK_BATCH_MS",
    "WEBHOOK_DELAY_SECS",
    "WEBHOOK_TIMEOUT_SECS",
    "WORKER_THREADS",
    "WS_UPGRADE_RATE_LIMIT_BURST",
    "WS_UPGRADE_RATE_LIMIT_PER_SECOND",
];

/// A driver section such as `[adapter] driver = "redis"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DriverSection {
    /// The driver name (see docs/configuration.md).
    pub driver: String,
}

/// `Debug` hides the URL's credentials.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UrlSection {
    /// The URL (credentials hidden by `Debug`).
    pub url: String,
}

impl std::fmt::Debug for UrlSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSection")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

/// A URL that may carry credentials (`DATABASE_URL`): `Debug` hides them.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretUrl(pub String);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `scheme://user:password@host/…` → `scheme://***@host/…` (for logs and `Debug`).
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// `[cluster]`: how nodes find each other over the adapter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Topic/key prefix; clusters sharing a broker need distinct prefixes.
    pub prefix: String,
    /// How often a node announces it is alive.
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is dead: its presence members are removed cluster-wide. Load
    /// balancer idle timeouts should exceed the client activity timeout, not this.
    pub node_timeout_ms: u64,
    /// How long cluster-wide queries wait for every node.
    pub request_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            prefix: "sockudo".into(),
            heartbeat_interval_ms: 2000,
            node_timeout_ms: 10_000,
            request_timeout_ms: 2000,
        }
    }
}

/// Everything a node needs, resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Listen address (`HOST`, `--host`).
    pub host: String,
    /// Listen port (`PORT`, `--port`).
    pub port: u16,
    /// The node's identity in the cluster (`SOCKUDO_NODE_ID`).
    pub node_id: String,
    /// Seconds of silence after which a client should ping (sent in connection_established);
    /// the server pings after the same silence.
    pub activity_timeout: u64,
    /// Seconds the server waits for any frame after its own ping before closing with 4201.
    pub pong_timeout: u64,
    /// How long a cache channel remembers its last event, in seconds.
    pub cache_channel_ttl: u64,
    /// Largest client frame handled (bigger ones get `pusher:error`).
    pub max_frame_bytes: usize,
    /// Outbound queue bound per connection, in frames.
    pub outbound_queue_frames: usize,
    /// Outbound queue bound per connection, in bytes.
    pub outbound_queue_bytes: usize,
    /// Seconds between unready and closing remaining sockets with 4200.
    pub shutdown_grace_period: u64,
    /// Prometheus `/metrics` port; 0 disables (`METRICS_PORT`).
    pub metrics_port: u16,
    /// `text` or `json` (`LOG_FORMAT`).
    pub log_format: String,
    /// HTTP API rate limit per app and route class, shared by all nodes through the cache:
    /// sustained requests per second (0 = off, the default). The limiter has 1 ms
    /// resolution, so at most 1000 per second are enforced exactly.
    pub api_rate_limit_per_second: u32,
    /// HTTP API rate limit burst: requests allowed back to back (0 = same as the rate).
    pub api_rate_limit_burst: u32,
    /// How long an HTTP publish `idempotency_key` is remembered, in seconds (docs/protocol.md §7).
    pub idempotency_ttl: u64,
    /// WebSocket upgrades per second per client IP, shared by all nodes through the cache
    /// (0 = off, the default); beyond it the upgrade is answered 429 with `Retry-After`.
    pub ws_upgrade_rate_limit_per_second: u32,
    /// Upgrades allowed back to back per client IP (0 = same as the rate).
    pub ws_upgrade_rate_limit_burst: u32,
    /// Proxies in front of the node whose `X-Forwarded-For` entries are trusted when telling
    /// the client IP (0: use the peer address only).
    pub trusted_proxy_hops: usize,
    /// V2 hot tier per channel on each node: messages kept, and for how long (seconds).
    pub hot_buffer_messages: usize,
    /// Seconds a hot-tier message stays.
    pub hot_buffer_secs: u64,
    /// V2 cold tier (history store) retention.
    pub history_max_messages: usize,
    /// Seconds a history message stays.
    pub history_max_age_secs: u64,
    /// Per-operation timeout of the shared history store, in milliseconds. Resume storms
    /// queue thousands of reads on one connection: too short a bound fails them closed
    /// (`persistence_unavailable`) although Redis is healthy.
    pub history_timeout_ms: u64,
    /// V2: after a subscribe, live frames of the channel are held this long (milliseconds) in
    /// case the client's `sockudo:resume` for it follows the subscribe, so that its replay
    /// goes first; a resume ends the wait at once. 0 turns the wait off.
    pub resume_grace_ms: u64,
    /// V2: how long (seconds) a resume position for a channel the connection has not
    /// subscribed yet is kept for that subscribe; then the channel gets `resume_failed`.
    pub resume_pending_secs: u64,
    /// V2: most bytes one `sockudo:resume` may replay over all its channels; a channel whose
    /// replay would go over fails with `position_expired`.
    pub resume_max_replay_bytes: usize,
    /// V2: how long (milliseconds) a node waits for the missing serials of a live gap to
    /// arrive before it fetches them from the history store.
    pub live_gap_wait_ms: u64,
    /// Window in which a repeated `message_id` is the same message (one serial), in seconds,
    /// and how many recent ids each node remembers to suppress redeliveries.
    pub message_dedup_secs: u64,
    /// Recent message ids each node remembers.
    pub message_dedup_capacity: usize,
    /// Expose `message_id`/`serial`/`stream_id` to protocol 7 connections too (opt-in).
    pub v1_expose_stream_fields: bool,
    /// Webhooks: events are batched per app for this many milliseconds (and ≤ 50 per POST).
    pub webhook_batch_ms: u64,
    /// Webhooks: `channel_vacated` / `member_removed` wait this many seconds and are dropped
    /// when the channel / member came back meanwhile.
    pub webhook_delay_secs: u64,
    /// Webhooks: timeout of one POST, in seconds.
    pub webhook_timeout_secs: u64,
    /// Longest wait for a complete HTTP request head, upgrades included (ms).
    pub http_header_timeout_ms: u64,
    /// Largest HTTP request head (bytes, at least 8192); beyond it: 431.
    pub http_max_header_bytes: usize,
    /// Most TCP connections waiting for their first request head at once; more are closed.
    pub max_pending_connections: usize,
    /// Most channels one connection may be subscribed to at once.
    pub max_subscriptions_per_connection: usize,
    /// New subscriptions one connection may make per second, after a burst of
    /// `subscribe_burst` (0: no limit).
    pub subscribe_rate_per_second: u32,
    /// Subscriptions a connection may make at once before the rate applies.
    pub subscribe_burst: u32,
    /// The cluster adapter (`ADAPTER_DRIVER`).
    pub adapter: DriverSection,
    /// The shared cache (`CACHE_DRIVER`).
    pub cache: DriverSection,
    /// The webhook queue (`QUEUE_DRIVER`).
    pub queue: DriverSection,
    /// The V2 history store (`HISTORY_DRIVER`).
    pub history: DriverSection,
    /// Where apps come from (`[app_manager]`).
    pub app_manager: AppManagerSection,
    /// The apps admin API (`[admin]`; off unless configured).
    pub admin: AdminSection,
    /// `[redis]`: the single server (`REDIS_URL`) and the Redis Cluster seeds
    /// (`REDIS_CLUSTER_NODES`).
    pub redis: RedisSection,
    /// NATS servers and credentials (`ADAPTER_DRIVER=nats`).
    pub nats: NatsSection,
    /// Google Pub/Sub project and emulator (`ADAPTER_DRIVER=google-pubsub`).
    pub google_pubsub: GooglePubSubSection,
    /// Kafka brokers and security (`ADAPTER_DRIVER=kafka`).
    pub kafka: KafkaSection,
    /// Where cluster presence lives (`PRESENCE_DRIVER`; empty follows the adapter).
    pub presence: PresenceSection,
    /// The RabbitMQ broker (`ADAPTER_DRIVER=rabbitmq`).
    pub rabbitmq: RabbitmqSection,
    /// Pulsar broker and token (`ADAPTER_DRIVER=pulsar`).
    pub pulsar: PulsarSection,
    /// Iggy server and stream (`ADAPTER_DRIVER=iggy`).
    pub iggy: IggySection,
    /// Cluster adapter timing (`[cluster]`).
    pub cluster: ClusterSection,
    /// Push notifications (`[push]`, `PUSH_*`; off by default).
    pub push: PushSection,
    /// The SQL app managers' database (`DATABASE_URL`).
    pub database_url: Option<SecretUrl>,
    /// The apps of the static app manager (`[[apps]]`).
    pub apps: Vec<App>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            host: "0.0.0.0".into(),
            port: 6001,
            node_id: format!("node-{:08x}", rand::random::<u32>()),
            activity_timeout: 120,
            pong_timeout: 30,
            cache_channel_ttl: 1800,
            max_frame_bytes: 100 * 1024,
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            shutdown_grace_period: 10,
            metrics_port: 9601,
            log_format: "text".into(),
            api_rate_limit_per_second: 0,
            api_rate_limit_burst: 0,
            ws_upgrade_rate_limit_per_second: 0,
            ws_upgrade_rate_limit_burst: 0,
            trusted_proxy_hops: 0,
            idempotency_ttl: 120,
            hot_buffer_messages: 100,
            hot_buffer_secs: 120,
            history_max_messages: 1000,
            history_max_age_secs: 3600,
            history_timeout_ms: 3000,
            resume_grace_ms: 250,
            resume_pending_secs: 30,
            resume_max_replay_bytes: 8 * 1024 * 1024,
            live_gap_wait_ms: 500,
            message_dedup_secs: 120,
            message_dedup_capacity: 100_000,
            v1_expose_stream_fields: false,
            webhook_batch_ms: 250,
            webhook_delay_secs: 3,
            webhook_timeout_secs: 5,
            http_header_timeout_ms: 10_000,
            http_max_header_bytes: 16 * 1024,
            max_pending_connections: 1024,
            max_subscriptions_per_connection: 1000,
            subscribe_rate_per_second: 100,
            subscribe_burst: 1000,
            adapter: DriverSection {
                driver: "local".into(),
            },
            cache: DriverSection {
                driver: "memory".into(),
            },
            queue: DriverSection {
                driver: "memory".into(),
            },
            history: DriverSection {
                driver: "memory".into(),
            },
            app_manager: AppManagerSection::default(),
            admin: AdminSection::default(),
            redis: RedisSection::default(),
            cluster: ClusterSection::default(),
            nats: NatsSection::default(),
            google_pubsub: GooglePubSubSection::default(),
            kafka: KafkaSection::default(),
            presence: PresenceSection::default(),
            rabbitmq: RabbitmqSection::default(),
            pulsar: PulsarSection::default(),
            iggy: IggySection::default(),
            push: PushSection::default(),
            database_url: None,
            apps: Vec::new(),
        }
    }
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--config`: the TOML file.
    pub config: Option<String>,
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    /// With no app configured anywhere, serve the development app ([`DEV_APP_ID`],
    /// [`DEV_APP_KEY`], [`DEV_APP_SECRET`]) and bind `127.0.0.1` unless a host was given,
    /// instead of failing with [`ConfigError::NoApps`]. Only the `sockudo` binary sets it.
    pub dev_app: bool,
}

impl NodeSettings {
    /// Parse a TOML document.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().replace('\n', " "),
        })
    }

    /// Resolve: defaults, then the TOML file, then `env`, then CLI flags; then take the apps
    /// from the `SOCKUDO_DEFAULT_APP_*` variables when the file lists none (or the dev app when
    /// [`CliOverrides::dev_app`] asks for it) and validate. No app at all is
    /// [`ConfigError::NoApps`].
    pub fn load(cli: &CliOverrides, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut host_given = cli.host.is_some() || env.get("HOST").is_some_and(|v| !v.is_empty());
        let mut s = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path)).map_err(|source| {
                    ConfigError::Read {
                        path: path.clone(),
                        source,
                    }
                })?;
                host_given |= text
                    .parse::<toml::Table>()
                    .is_ok_and(|t| t.contains_key("host"));
                Self::from_toml(&text, path)?
            }
            None => NodeSettings::default(),
        };
        s.apply_env(env)?;
        if let Some(h) = &cli.host {
            s.host = h.clone();
        }
        if let Some(p) = cli.port {
            s.port = p;
        }
        default_app::resolve(&mut s, cli, env, host_given)?;
        s.validate()?;
        Ok(s)
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = get("HOST") {
            self.host = v;
        }
        if let Some(v) = get("PORT") {
            self.port = parse_env("PORT", &v, "a port number")?;
        }
        if let Some(v) = get("SOCKUDO_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = get("ADAPTER_DRIVER") {
            self.adapter.driver = v;
        }
        if let Some(v) = get("CACHE_DRIVER") {
            self.cache.driver = v;
        }
        if let Some(v) = get("QUEUE_DRIVER") {
            self.queue.driver = v;
        }
        if let Some(v) = get("HISTORY_DRIVER") {
            self.history.driver = v;
        }
        if let Some(v) = get("APP_MANAGER_DRIVER") {
            self.app_manager.driver = v;
        }
        if let Some(v) = get("REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = get("DATABASE_URL") {
            self.database_url = Some(SecretUrl(v));
        }
        if let Some(v) = get("METRICS_PORT") {
            self.metrics_port = parse_env("METRICS_PORT", &v, "a port number (0 disables)")?;
        }
        if let Some(v) = get("SHUTDOWN_GRACE_PERIOD") {
            self.shutdown_grace_period = parse_env("SHUTDOWN_GRACE_PERIOD", &v, "whole seconds")?;
        }
        if let Some(v) = get("ACTIVITY_TIMEOUT") {
            self.activity_timeout = parse_env("ACTIVITY_TIMEOUT", &v, "whole seconds")?;
        }
        if let Some(v) = get("CLUSTER_HEARTBEAT_INTERVAL_MS") {
            self.cluster.heartbeat_interval_ms =
                parse_env("CLUSTER_HEARTBEAT_INTERVAL_MS", &v, "milliseconds")?;
        }
        if let Some(v) = get("CLUSTER_NODE_TIMEOUT_MS") {
            self.cluster.node_timeout_ms =
                parse_env("CLUSTER_NODE_TIMEOUT_MS", &v, "milliseconds")?;
        }
        if let Some(v) = get("CLUSTER_REQUEST_TIMEOUT_MS") {
            self.cluster.request_timeout_ms =
                parse_env("CLUSTER_REQUEST_TIMEOUT_MS", &v, "milliseconds")?;
        }
        if let Some(v) = get("LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("CLUSTER_PREFIX") {
            self.cluster.prefix = v;
        }
        drivers::apply_env(self, &get)?;
        app_manager::apply_env(self, &get)?;
        pulsar_iggy::apply_env(self, &get);
        push::apply_env(self, &get)?;
        let seconds = "whole seconds";
        let count = "a whole number";
        num_env(&get, "PONG_TIMEOUT", seconds, &mut self.pong_timeout)?;
        num_env(
            &get,
            "CACHE_CHANNEL_TTL",
            seconds,
            &mut self.cache_channel_ttl,
        )?;
        num_env(&get, "MAX_FRAME_BYTES", count, &mut self.max_frame_bytes)?;
        num_env(
            &get,
            "OUTBOUND_QUEUE_FRAMES",
            count,
            &mut self.outbound_queue_frames,
        )?;
        num_env(
            &get,
            "OUTBOUND_QUEUE_BYTES",
            count,
            &mut self.outbound_queue_bytes,
        )?;
        num_env(
            &get,
            "API_RATE_LIMIT_PER_SECOND",
            count,
            &mut self.api_rate_limit_per_second,
        )?;
        num_env(
            &get,
            "API_RATE_LIMIT_BURST",
            count,
            &mut self.api_rate_limit_burst,
        )?;
        num_env(&get, "IDEMPOTENCY_TTL", seconds, &mut self.idempotency_ttl)?;
        num_env(
            &get,
            "WS_UPGRADE_RATE_LIMIT_PER_SECOND",
            count,
            &mut self.ws_upgrade_rate_limit_per_second,
        )?;
        num_env(
            &get,
            "WS_UPGRADE_RATE_LIMIT_BURST",
            count,
            &mut self.ws_upgrade_rate_limit_burst,
        )?;
        num_env(
            &get,
            "TRUSTED_PROXY_HOPS",
            count,
            &mut self.trusted_proxy_hops,
        )?;
        num_env(
            &get,
            "HOT_BUFFER_MESSAGES",
            count,
            &mut self.hot_buffer_messages,
        )?;
        num_env(&get, "HOT_BUFFER_SECS", seconds, &mut self.hot_buffer_secs)?;
        num_env(
            &get,
            "HISTORY_MAX_MESSAGES",
            count,
            &mut self.history_max_messages,
        )?;
        num_env(
            &get,
            "HISTORY_MAX_AGE_SECS",
            seconds,
            &mut self.history_max_age_secs,
        )?;
        num_env(
            &get,
            "HISTORY_TIMEOUT_MS",
            "milliseconds",
            &mut self.history_timeout_ms,
        )?;
        num_env(
            &get,
            "RESUME_GRACE_MS",
            "milliseconds",
            &mut self.resume_grace_ms,
        )?;
        num_env(
            &get,
            "RESUME_PENDING_SECS",
            seconds,
            &mut self.resume_pending_secs,
        )?;
        num_env(
            &get,
            "RESUME_MAX_REPLAY_BYTES",
            count,
            &mut self.resume_max_replay_bytes,
        )?;
        num_env(
            &get,
            "LIVE_GAP_WAIT_MS",
            "milliseconds",
            &mut self.live_gap_wait_ms,
        )?;
        num_env(
            &get,
            "MESSAGE_DEDUP_SECS",
            seconds,
            &mut self.message_dedup_secs,
        )?;
        num_env(
            &get,
            "MESSAGE_DEDUP_CAPACITY",
            count,
            &mut self.message_dedup_capacity,
        )?;
        num_env(
            &get,
            "WEBHOOK_BATCH_MS",
            "milliseconds",
            &mut self.webhook_batch_ms,
        )?;
        num_env(
            &get,
            "WEBHOOK_DELAY_SECS",
            seconds,
            &mut self.webhook_delay_secs,
        )?;
        num_env(
            &get,
            "WEBHOOK_TIMEOUT_SECS",
            seconds,
            &mut self.webhook_timeout_secs,
        )?;
        let ms = "milliseconds";
        num_env(
            &get,
            "HTTP_HEADER_TIMEOUT_MS",
            ms,
            &mut self.http_header_timeout_ms,
        )?;
        num_env(
            &get,
            "HTTP_MAX_HEADER_BYTES",
            count,
            &mut self.http_max_header_bytes,
        )?;
        num_env(
            &get,
            "MAX_PENDING_CONNECTIONS",
            count,
            &mut self.max_pending_connections,
        )?;
        num_env(
            &get,
            "MAX_SUBSCRIPTIONS_PER_CONNECTION",
            count,
            &mut self.max_subscriptions_per_connection,
        )?;
        num_env(
            &get,
            "SUBSCRIBE_RATE_PER_SECOND",
            count,
            &mut self.subscribe_rate_per_second,
        )?;
        num_env(&get, "SUBSCRIBE_BURST", count, &mut self.subscribe_burst)?;
        if let Some(v) = get("V1_EXPOSE_STREAM_FIELDS") {
            self.v1_expose_stream_fields = parse_bool("V1_EXPOSE_STREAM_FIELDS", &v)?;
        }
        Ok(())
    }

    /// Refuse values that would make the node misbehave, with one clear message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |name: &str, value: &str, allowed: &[&str]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{name} = {value:?} is not supported by this build (supported: {})",
                    allowed.join(", ")
                )))
            }
        };
        check(
            "adapter.driver (ADAPTER_DRIVER)",
            &self.adapter.driver,
            &drivers::adapters(),
        )?;
        drivers::validate(self)?;
        pulsar_iggy::validate(self)?;
        push::validate(self)?;
        let caches: &[&str] = if cfg!(feature = "redis") {
            &["memory", "redis", "redis-cluster"]
        } else {
            &["memory"]
        };
        check("cache.driver (CACHE_DRIVER)", &self.cache.driver, caches)?;
        let queues: &[&str] = if cfg!(feature = "redis") {
            &["memory", "redis", "redis-cluster"]
        } else {
            &["memory"]
        };
        check("queue.driver (QUEUE_DRIVER)", &self.queue.driver, queues)?;
        let histories: &[&str] = if cfg!(feature = "redis") {
            &["memory", "none", "redis", "redis-cluster"]
        } else {
            &["memory", "none"]
        };
        check(
            "history.driver (HISTORY_DRIVER)",
            &self.history.driver,
            histories,
        )?;
        let c = &self.cluster;
        // Every key and topic of the node starts with the prefix, and the node id names topics
        // and presence contributions: both must be valid broker names.
        sockudo_core::adapter::names::validate_name("cluster.prefix (CLUSTER_PREFIX)", &c.prefix)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        sockudo_core::adapter::names::validate_name("node_id (SOCKUDO_NODE_ID)", &self.node_id)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if c.heartbeat_interval_ms == 0
            || c.node_timeout_ms <= c.heartbeat_interval_ms
            || c.node_timeout_ms > 30_000
            || c.request_timeout_ms == 0
        {
            return Err(ConfigError::Invalid("cluster: need heartbeat_interval_ms > 0, heartbeat_interval_ms < node_timeout_ms <= 30000, request_timeout_ms > 0".into()));
        }
        app_manager::validate(self)?;
        check(
            "log_format (LOG_FORMAT)",
            &self.log_format,
            &["text", "json"],
        )?;
        if self.activity_timeout == 0 || self.pong_timeout == 0 {
            return Err(ConfigError::Invalid(
                "activity_timeout and pong_timeout must be at least 1 second".into(),
            ));
        }
        if self.http_header_timeout_ms < 100
            || self.http_max_header_bytes < 8192
            || self.max_pending_connections == 0
            || self.max_subscriptions_per_connection == 0
        {
            return Err(ConfigError::Invalid(
                "need http_header_timeout_ms >= 100, http_max_header_bytes >= 8192, \
                 max_pending_connections >= 1 and max_subscriptions_per_connection >= 1"
                    .into(),
            ));
        }
        if self.idempotency_ttl == 0 {
            return Err(ConfigError::Invalid(
                "idempotency_ttl must be at least 1 second".into(),
            ));
        }
        if self.outbound_queue_frames == 0 || self.outbound_queue_bytes == 0 {
            return Err(ConfigError::Invalid(
                "outbound queue bounds must be positive".into(),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for app in &self.apps {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "app {:?}: id, key and secret must not be empty",
                    app.id
                )));
            }
            if !ids.insert(&app.id) || !keys.insert(&app.key) {
                return Err(ConfigError::Invalid(format!(
                    "app {:?}: duplicate app id or key",
                    app.id
                )));
            }
        }
        Ok(())
    }
}

/// Set `target` from the variable `name` when it is set (and not empty).
fn num_env<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    expected: &'static str,
    target: &mut T,
) -> Result<(), ConfigError> {
    if let Some(v) = get(name) {
        *target = parse_env(name, &v, expected)?;
    }
    Ok(())
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::InvalidEnv {
            name,
            value: value.into(),
            expected: "true or false",
        }),
    }
}

fn parse_env<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::InvalidEnv {
        name,
        value: value.into(),
        expected,
    })
}

/// Helpers shared by the tests of the config modules.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::{CliOverrides, NodeSettings};
    use std::collections::HashMap;

    /// An environment from pairs.
    pub(crate) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// `NodeSettings::load` as the binary runs it (the dev app when no app is configured),
    /// for tests of settings other than the apps.
    pub(crate) fn load(pairs: &[(&str, &str)]) -> Result<NodeSettings, String> {
        let cli = CliOverrides {
            dev_app: true,
            ..Default::default()
        };
        NodeSettings::load(&cli, &env(pairs)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::tests_support::env;

    /// The binary's overrides: these tests are about other settings than the apps.
    fn dev() -> CliOverrides {
        CliOverrides {
            dev_app: true,
            ..Default::default()
        }
    }

    fn before_tests(src: &str) -> &str {
        &src[..src.find("mod tests").unwrap_or(src.len())]
    }

    /// Only the `apply_env` function of a config module (its other strings are values, such
    /// as Kafka's security protocol names).
    fn apply_env_of(src: &str) -> &str {
        let rest = &src[src.find("fn apply_env").unwrap_or(0)..];
        &rest[..rest.find("\n}\n").unwrap_or(rest.len())]
    }

    #[test]
    fn env_vars_lists_every_name_the_config_reads() {
        let src = include_str!("config.rs");
        let body = src
            [src.find("fn apply_env").unwrap_or(0)..src.find("mod tests").unwrap_or(src.len())]
            .to_owned()
            + include_str!("config/drivers.rs")
            + before_tests(include_str!("config/app_manager.rs"))
            + before_tests(include_str!("config/rabbitmq.rs"))
            + before_tests(include_str!("config/pulsar_iggy.rs"))
            + apply_env_of(include_str!("config/push.rs"))
            + apply_env_of(include_str!("config/kafka.rs"));
        let mut missing = Vec::new();
        for piece in body.split('"').skip(1).step_by(2) {
            let looks_like_env = piece.len() > 2
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if looks_like_env && !ENV_VARS.contains(&piece) {
                missing.push(piece.to_owned());
            }
        }
        assert!(missing.is_empty(), "add to ENV_VARS: {missing:?}");
    }

    #[test]
    fn debug_output_carries_no_secret() {
        let mut s = NodeSettings::load(
            &dev(),
            &env(&[
                ("REDIS_URL", "redis://user:redis-pw@h:6379/0"),
                ("NATS_PASSWORD", "nats-pw"),
                ("NATS_USERNAME", "u"),
                ("NATS_TOKEN", "nats-token"),
                ("SOCKUDO_DEFAULT_APP_ID", "1"),
                ("SOCKUDO_DEFAULT_APP_KEY", "k"),
                ("SOCKUDO_DEFAULT_APP_SECRET", "app-secret-value"),
            ]),
        )
        .unwrap();
        s.push.webpush_vapid_private_key = "vapid-secret-key".into();
        s.database_url = Some(SecretUrl("postgres://u:db-pw@h/db".into()));
        s.apps[0].webhooks.push(sockudo_core::app::WebhookTarget {
            url: "https://hooks.example.invalid/x".into(),
            event_types: Vec::new(),
            headers: [("Authorization".to_owned(), "Bearer hook-token".to_owned())].into(),
        });
        let text = format!("{s:?}");
        for secret in [
            "redis-pw",
            "nats-pw",
            "nats-token",
            "db-pw",
            "app-secret-value",
            "hook-token",
            "vapid-secret-key",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("Authorization"), "header names stay visible");
    }

    #[test]
    fn the_shipped_example_config_loads() {
        let text = include_str!("../../sockudo.example.toml");
        let s = NodeSettings::from_toml(text, "sockudo.example.toml").unwrap();
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("node_id")),
            "no fixed node_id"
        );
        s.validate().unwrap();
    }

    #[test]
    fn cluster_driver_combinations_are_checked() {
        let load = |pairs: &[(&str, &str)]| NodeSettings::load(&dev(), &env(pairs));
        let err = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        assert!(err(&[("CLUSTER_PREFIX", "a#b")]).contains("cluster.prefix"));
        assert!(err(&[("SOCKUDO_NODE_ID", "node a")]).contains("node_id"));
        assert!(err(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000")]).contains("no driver"));
        if cfg!(feature = "redis") {
            assert!(err(&[("HISTORY_DRIVER", "redis-cluster")]).contains("REDIS_CLUSTER_NODES"));
            assert!(err(&[
                ("CACHE_DRIVER", "redis-cluster"),
                ("REDIS_CLUSTER_NODES", "http://h:1")
            ])
            .contains("redis://"));
            let s = load(&[
                ("ADAPTER_DRIVER", "redis-cluster"),
                ("CACHE_DRIVER", "redis-cluster"),
                (
                    "REDIS_CLUSTER_NODES",
                    "10.0.0.1:7000, redis://10.0.0.2:7001",
                ),
            ])
            .unwrap();
            assert_eq!(effective_presence(&s), "redis-cluster");
            assert_eq!(
                s.redis.cluster_urls(),
                ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
            );
        }
        assert!(err(&[("PRESENCE_DRIVER", "redis")]).contains("ADAPTER_DRIVER=local"));
        assert!(err(&[("DATABASE_URL", "postgres://u:p@h/db")]).contains("DATABASE_URL"));
        let local_transport = err(&[("PRESENCE_DRIVER", "transport")]);
        assert!(
            local_transport.contains("ADAPTER_DRIVER=local") && local_transport.contains("broker"),
            "{local_transport}"
        );
        assert!(err(&[
            ("ADAPTER_DRIVER", "redis"),
            ("PRESENCE_DRIVER", "zookeeper")
        ])
        .contains("not supported"));
        if cfg!(feature = "redis") {
            let s = load(&[
                ("ADAPTER_DRIVER", "redis"),
                ("PRESENCE_DRIVER", "transport"),
            ])
            .unwrap();
            assert_eq!(effective_presence(&s), "transport");
            let s = load(&[("ADAPTER_DRIVER", "redis")]).unwrap();
            assert_eq!(
                effective_presence(&s),
                "redis",
                "presence follows the Redis adapter"
            );
        }
        if cfg!(feature = "nats") {
            // Broker-only by default: presence replicated over NATS.
            let s = load(&[("ADAPTER_DRIVER", "nats")]).unwrap();
            assert_eq!(effective_presence(&s), "transport");
            let s = load(&[("ADAPTER_DRIVER", "nats"), ("PRESENCE_DRIVER", "redis")]).unwrap();
            assert_eq!(effective_presence(&s), "redis");
            assert!(err(&[
                ("ADAPTER_DRIVER", "nats"),
                ("PRESENCE_DRIVER", "redis"),
                ("NATS_URL", "http://x:1")
            ])
            .contains("nats://"));
            assert!(err(&[
                ("ADAPTER_DRIVER", "nats"),
                ("PRESENCE_DRIVER", "redis"),
                ("NATS_USERNAME", "u")
            ])
            .contains("NATS_PASSWORD"));
            let s = load(&[
                ("ADAPTER_DRIVER", "nats"),
                ("PRESENCE_DRIVER", "redis"),
                ("NATS_URL", "nats://a:1, nats://b:2"),
            ])
            .unwrap();
            assert_eq!(s.nats.servers(), vec!["nats://a:1", "nats://b:2"]);
        } else {
            assert!(err(&[("ADAPTER_DRIVER", "nats")]).contains("not supported"));
        }
    }

    #[test]
    fn precedence_defaults_toml_env_cli() {
        let dir = std::env::temp_dir().join(format!("sockudo-cfg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "port = 7000\nhost = \"127.0.0.2\"\nnode_id = \"from-toml\"\n[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n").unwrap();
        let cli = CliOverrides {
            config: Some(path.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let s = NodeSettings::load(&cli, &env(&[])).unwrap();
        assert_eq!(
            (s.port, s.host.as_str(), s.node_id.as_str()),
            (7000, "127.0.0.2", "from-toml")
        );
        let s = NodeSettings::load(
            &cli,
            &env(&[("PORT", "7001"), ("SOCKUDO_NODE_ID", "from-env")]),
        )
        .unwrap();
        assert_eq!((s.port, s.node_id.as_str()), (7001, "from-env"));
        let cli2 = CliOverrides {
            port: Some(7002),
            ..cli
        };
        let s = NodeSettings::load(&cli2, &env(&[("PORT", "7001")])).unwrap();
        assert_eq!(s.port, 7002);
        assert_eq!(s.apps[0].key, "k");
    }

    #[test]
    fn cache_driver_redis_needs_the_redis_feature() {
        let e = env(&[
            ("CACHE_DRIVER", "redis"),
            ("REDIS_URL", "redis://10.0.0.1:6380"),
        ]);
        let r = NodeSettings::load(&dev(), &e);
        if cfg!(feature = "redis") {
            let s = r.unwrap();
            assert_eq!(
                (s.cache.driver.as_str(), s.redis.url.as_str()),
                ("redis", "redis://10.0.0.1:6380")
            );
            let s = NodeSettings::from_toml(
                "[cache]\ndriver = \"redis\"\n[redis]\nurl = \"redis://h:1\"\n",
                "f.toml",
            )
            .unwrap();
            assert!(s.validate().is_ok());
            assert_eq!(
                (s.cache.driver.as_str(), s.redis.url.as_str()),
                ("redis", "redis://h:1")
            );
        } else {
            assert!(r.unwrap_err().to_string().contains("CACHE_DRIVER"));
        }
        let e = NodeSettings::load(&dev(), &env(&[("CACHE_DRIVER", "redis-cluster")])).unwrap_err();
        assert!(e.to_string().contains("CACHE_DRIVER"), "{e}");
    }

    #[test]
    fn operator_env_names_override_toml() {
        let mut s = NodeSettings::from_toml(
            "idempotency_ttl = 30\nhot_buffer_messages = 5\n[cluster]\nprefix = \"t\"\n",
            "f.toml",
        )
        .unwrap();
        let e = env(&[
            ("IDEMPOTENCY_TTL", "60"),
            ("HOT_BUFFER_MESSAGES", "7"),
            ("CLUSTER_PREFIX", "e"),
            ("PONG_TIMEOUT", "9"),
            ("API_RATE_LIMIT_PER_SECOND", "100"),
            ("WEBHOOK_DELAY_SECS", "1"),
            ("V1_EXPOSE_STREAM_FIELDS", "yes"),
        ]);
        s.apply_env(&e).unwrap();
        assert_eq!(
            (
                s.idempotency_ttl,
                s.hot_buffer_messages,
                s.cluster.prefix.as_str()
            ),
            (60, 7, "e")
        );
        assert_eq!(
            (
                s.pong_timeout,
                s.api_rate_limit_per_second,
                s.webhook_delay_secs
            ),
            (9, 100, 1)
        );
        assert!(s.v1_expose_stream_fields);
        let mut s = NodeSettings::from_toml("idempotency_ttl = 30\n", "f.toml").unwrap();
        s.apply_env(&env(&[])).unwrap();
        assert_eq!(
            s.idempotency_ttl, 30,
            "TOML wins over the default when the env is silent"
        );
        let err = NodeSettings::load(&dev(), &env(&[("OUTBOUND_QUEUE_BYTES", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("OUTBOUND_QUEUE_BYTES") && !err.contains('\n'),
            "{err}"
        );
        let err = NodeSettings::load(&dev(), &env(&[("V1_EXPOSE_STREAM_FIELDS", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("V1_EXPOSE_STREAM_FIELDS"), "{err}");
    }

    #[test]
    fn bad_values_are_one_clear_error() {
        let e = NodeSettings::load(&dev(), &env(&[("PORT", "nope")])).unwrap_err();
        assert!(e.to_string().contains("PORT"), "{e}");
        let e =
            NodeSettings::load(&dev(), &env(&[("ADAPTER_DRIVER", "carrier-pigeon")])).unwrap_err();
        assert!(e.to_string().contains("ADAPTER_DRIVER"), "{e}");
        let e = NodeSettings::from_toml("port = \"x\"", "f.toml").unwrap_err();
        assert!(e.to_string().contains("f.toml"));
        let e = NodeSettings::from_toml("bogus_key = 1", "f.toml").unwrap_err();
        assert!(e.to_string().contains("bogus_key"), "{e}");
    }

    #[test]
    fn google_pubsub_settings_are_checked() {
        let load = |pairs: &[(&str, &str)]| NodeSettings::load(&dev(), &env(pairs));
        let err = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        let base = [
            ("ADAPTER_DRIVER", "google-pubsub"),
            ("PRESENCE_DRIVER", "redis"),
            ("GOOGLE_PUBSUB_PROJECT_ID", "my-project"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ];
        let with = |over: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = base
                .iter()
                .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
                .copied()
                .collect();
            v.extend(over.iter().filter(|(_, val)| !val.is_empty()).copied());
            v
        };
        if !cfg!(feature = "google-pubsub") {
            assert!(err(&base).contains("not supported"));
            return;
        }
        let s = load(&base).unwrap();
        assert_eq!(s.google_pubsub.project_id, "my-project");
        assert_eq!(
            s.google_pubsub.emulator_host.as_deref(),
            Some("127.0.0.1:8085")
        );
        assert!(err(&with(&[("PRESENCE_DRIVER", "")])).contains("PRESENCE_DRIVER=redis"));
        assert!(
            err(&with(&[("GOOGLE_PUBSUB_PROJECT_ID", "")])).contains("GOOGLE_PUBSUB_PROJECT_ID")
        );
        assert!(err(&with(&[("PUBSUB_EMULATOR_HOST", "")])).contains("credentials"));
        assert!(err(&with(&[("PUBSUB_EMULATOR_HOST", "http://h:1")])).contains("host:port"));
        assert!(err(&with(&[("GOOGLE_PUBSUB_PROJECT_ID", "a b")])).contains("project"));
        let long = "x".repeat(240);
        let long: &'static str = Box::leak(long.into_boxed_str());
        assert!(err(&with(&[("CLUSTER_PREFIX", long)])).contains("shorten"));
        let toml = NodeSettings::from_toml(
            "[google_pubsub]\nproject_id = \"p\"\nemulator_host = \"h:1\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(toml.google_pubsub.project_id, "p");
    }
}
