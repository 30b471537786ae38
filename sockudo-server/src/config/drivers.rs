//! The cluster-driver settings: which broker carries the adapter, where presence lives, and
//! how to reach NATS. Combinations that cannot work are refused here, at start, with a
//! message that says what to set instead.

use serde::Deserialize;

use super::{ConfigError, NodeSettings};

/// `[nats]`: the servers of `ADAPTER_DRIVER=nats`. `Debug` hides the password and token.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// One or more comma-separated `nats://host:port` (`NATS_URL`).
    pub url: String,
    /// `NATS_USERNAME` (needs `password`).
    pub username: Option<String>,
    /// `NATS_PASSWORD`.
    pub password: Option<String>,
    /// `NATS_TOKEN`.
    pub token: Option<String>,
}

impl std::fmt::Debug for NatsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("NatsSection")
            .field("url", &super::redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .finish()
    }
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: "nats://127.0.0.1:4222".into(),
            username: None,
            password: None,
            token: None,
        }
    }
}

impl NatsSection {
    /// The server list of `url`, trimmed, empty entries dropped.
    pub fn servers(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `[google_pubsub]`: the project and emulator of `ADAPTER_DRIVER=google-pubsub`. Nothing
/// in it is secret (the emulator takes no credentials; real Google credentials are not
/// supported by this version).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GooglePubSubSection {
    /// `GOOGLE_PUBSUB_PROJECT_ID`.
    pub project_id: String,
    /// `PUBSUB_EMULATOR_HOST` (`host:port`); required by this version.
    pub emulator_host: Option<String>,
}

/// `[redis]`: the single Redis of every `redis` driver and the seeds of every
/// `redis-cluster` driver. `Debug` hides credentials.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `REDIS_URL`.
    pub url: String,
    /// `REDIS_CLUSTER_NODES`: seeds of one Redis Cluster, `host:port` or `redis://host:port`.
    pub cluster_nodes: Vec<String>,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
        }
    }
}

impl std::fmt::Debug for RedisSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self
            .cluster_nodes
            .iter()
            .map(|n| super::redact_url(n))
            .collect();
        f.debug_struct("RedisSection")
            .field("url", &super::redact_url(&self.url))
            .field("cluster_nodes", &nodes)
            .finish()
    }
}

impl RedisSection {
    /// The cluster seeds as `redis://` URLs.
    pub fn cluster_urls(&self) -> Vec<String> {
        self.cluster_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(|n| {
                if n.contains("://") {
                    n.to_owned()
                } else {
                    format!("redis://{n}")
                }
            })
            .collect()
    }

    /// Where a part whose driver is `driver` (`redis` or `redis-cluster`) connects.
    #[cfg(feature = "redis")]
    pub fn endpoint(&self, driver: &str) -> sockudo_core::redis_conn::RedisEndpoint {
        use sockudo_core::redis_conn::RedisEndpoint;
        if driver == "redis-cluster" {
            RedisEndpoint::Cluster(self.cluster_urls())
        } else {
            RedisEndpoint::Single(self.url.clone())
        }
    }
}

/// `[presence]`: where cluster presence lives (`PRESENCE_DRIVER`): `redis` / `redis-cluster`
/// (the shared store on `REDIS_URL` / `REDIS_CLUSTER_NODES`) or `transport` (replicated over
/// the cluster adapter's broker). Empty: follows the adapter (`redis` for
/// `ADAPTER_DRIVER=redis`, `redis-cluster` for `redis-cluster`, `transport` for `nats`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSection {
    /// `redis`, `redis-cluster`, `transport`, or empty to follow the adapter.
    pub driver: String,
}

/// Read the driver variables of docs/configuration.md into `s`.
pub(super) fn apply_env(
    s: &mut NodeSettings,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(v) = get("NATS_URL") {
        s.nats.url = v;
    }
    if let Some(v) = get("NATS_USERNAME") {
        s.nats.username = Some(v);
    }
    if let Some(v) = get("NATS_PASSWORD") {
        s.nats.password = Some(v);
    }
    if let Some(v) = get("NATS_TOKEN") {
        s.nats.token = Some(v);
    }
    if let Some(v) = get("GOOGLE_PUBSUB_PROJECT_ID") {
        s.google_pubsub.project_id = v;
    }
    if let Some(v) = get("PUBSUB_EMULATOR_HOST") {
        s.google_pubsub.emulator_host = Some(v).filter(|v| !v.trim().is_empty());
    }
    if let Some(v) = get("PRESENCE_DRIVER") {
        s.presence.driver = v;
    }
    if let Some(v) = get("REDIS_CLUSTER_NODES") {
        s.redis.cluster_nodes = v.split(',').map(|n| n.trim().to_owned()).collect();
    }
    super::rabbitmq::apply_env(s, get)?;
    super::kafka::apply_env(s, get);
    Ok(())
}

/// The adapter drivers this build has.
pub(super) fn adapters() -> Vec<&'static str> {
    let mut v = vec!["local"];
    if cfg!(feature = "redis") {
        v.push("redis");
        v.push("redis-cluster");
    }
    if cfg!(feature = "nats") {
        v.push("nats");
    }
    if cfg!(feature = "google-pubsub") {
        v.push("google-pubsub");
    }
    if cfg!(feature = "rabbitmq") {
        v.push("rabbitmq");
    }
    if cfg!(feature = "pulsar") {
        v.push("pulsar");
    }
    if cfg!(feature = "iggy") {
        v.push("iggy");
    }
    if cfg!(feature = "kafka") {
        v.push("kafka");
    }
    v
}

/// The presence store in force: `local` (in the node), `redis` or `redis-cluster` (shared
/// store) or `transport` (replicated over the adapter's broker). Without `PRESENCE_DRIVER` it
/// follows the adapter: the Redis adapters keep presence in their Redis, the NATS adapter (a
/// broker-only deployment) replicates it over NATS.
pub fn effective_presence(s: &NodeSettings) -> &str {
    match (s.adapter.driver.as_str(), s.presence.driver.as_str()) {
        ("local", _) => "local",
        ("redis", "") => "redis",
        ("redis-cluster", "") => "redis-cluster",
        ("nats", "") => "transport",
        (_, p) => p,
    }
}

/// Every part's driver that may name `redis-cluster`, with its setting's name.
fn redis_cluster_users(s: &NodeSettings) -> Vec<&'static str> {
    let mut users = Vec::new();
    for (name, driver) in [
        ("ADAPTER_DRIVER", s.adapter.driver.as_str()),
        ("CACHE_DRIVER", s.cache.driver.as_str()),
        ("QUEUE_DRIVER", s.queue.driver.as_str()),
        ("HISTORY_DRIVER", s.history.driver.as_str()),
        ("PRESENCE_DRIVER", effective_presence(s)),
    ] {
        if driver == "redis-cluster" {
            users.push(name);
        }
    }
    users
}

/// `REDIS_CLUSTER_NODES` is set exactly when some driver uses it, and names valid seeds.
fn validate_redis_cluster(s: &NodeSettings) -> Result<(), ConfigError> {
    let users = redis_cluster_users(s);
    let seeds = s.redis.cluster_urls();
    if users.is_empty() && !seeds.is_empty() {
        return Err(ConfigError::Invalid(
            "REDIS_CLUSTER_NODES is set, but no driver is redis-cluster: set ADAPTER_DRIVER \
             (and CACHE_DRIVER, HISTORY_DRIVER, QUEUE_DRIVER as wanted) to redis-cluster, or \
             unset it"
                .into(),
        ));
    }
    if !users.is_empty() && seeds.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{} = redis-cluster needs REDIS_CLUSTER_NODES (comma-separated host:port seeds)",
            users.join(", ")
        )));
    }
    if let Some(bad) = seeds
        .iter()
        .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
    {
        return Err(ConfigError::Invalid(format!(
            "REDIS_CLUSTER_NODES entry {bad:?} must be host:port or start with redis:// or rediss://"
        )));
    }
    Ok(())
}

/// Refuse combinations that cannot work (the adapter driver itself is checked by the caller).
pub(super) fn validate(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let adapter = s.adapter.driver.as_str();
    match (adapter, s.presence.driver.as_str()) {
        (_, "") => {}
        ("local", "transport") => {
            return bad(
                "PRESENCE_DRIVER=transport replicates presence over the cluster \
                 adapter's broker, and ADAPTER_DRIVER=local has none: set ADAPTER_DRIVER=nats \
                 or redis, or unset PRESENCE_DRIVER (a single node keeps presence in itself)"
                    .into(),
            )
        }
        ("local", p) => {
            return bad(format!(
                "PRESENCE_DRIVER={p:?} needs a cluster adapter; with ADAPTER_DRIVER=local presence \
                 lives in the node"
            ))
        }
        (_, "redis" | "redis-cluster") if cfg!(feature = "redis") => {}
        (_, "transport") => {}
        (_, p) => {
            return bad(format!(
                "PRESENCE_DRIVER={p:?} is not supported by this build"
            ))
        }
    }
    validate_redis_cluster(s)?;
    super::rabbitmq::validate(s)?;
    if adapter == "nats" {
        if s.nats.servers().is_empty() {
            return bad("NATS_URL names no server".into());
        }
        if let Some(bad_url) = s
            .nats
            .servers()
            .into_iter()
            .find(|u| !(u.starts_with("nats://") || u.starts_with("tls://")))
        {
            return bad(format!(
                "NATS_URL entry {bad_url:?} must start with nats:// or tls://"
            ));
        }
        if s.nats.username.is_some() != s.nats.password.is_some() {
            return bad("NATS_USERNAME and NATS_PASSWORD go together".into());
        }
    }
    if adapter == "kafka" {
        super::kafka::validate(s)?;
    }
    if adapter == "google-pubsub" {
        validate_google_pubsub(s)?;
    }
    Ok(())
}

/// `ADAPTER_DRIVER=google-pubsub`: a shared presence store (as for NATS), a project, and the
/// emulator (the only Pub/Sub this version can reach); ids Pub/Sub accepts.
fn validate_google_pubsub(s: &NodeSettings) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    if !matches!(effective_presence(s), "redis" | "redis-cluster") {
        return bad(
            "ADAPTER_DRIVER=google-pubsub needs a shared presence store: set \
             PRESENCE_DRIVER=redis (and REDIS_URL) or redis-cluster (and REDIS_CLUSTER_NODES); \
             presence replicated over Pub/Sub is not available in this version"
                .into(),
        );
    }
    let g = &s.google_pubsub;
    if g.project_id.trim().is_empty() {
        return bad("ADAPTER_DRIVER=google-pubsub needs GOOGLE_PUBSUB_PROJECT_ID".into());
    }
    if g.emulator_host.is_none() {
        return bad(
            "ADAPTER_DRIVER=google-pubsub needs PUBSUB_EMULATOR_HOST (host:port of the \
             Pub/Sub emulator): Google credentials (application default credentials) are not \
             supported by this version"
                .into(),
        );
    }
    #[cfg(feature = "google-pubsub")]
    sockudo_core::adapter::GooglePubSubTransportOptions::new(
        g.project_id.clone(),
        g.emulator_host.clone(),
        &s.cluster.prefix,
        &s.node_id,
    )
    .validate()
    .map_err(|e| match e {
        sockudo_core::adapter::AdapterError::Malformed(m) => ConfigError::Invalid(m),
        other => ConfigError::Invalid(other.to_string()),
    })?;
    Ok(())
}
