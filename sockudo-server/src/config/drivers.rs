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

/// `[presence]`: where cluster presence lives (`PRESENCE_DRIVER`): `redis` (the shared
/// store on `REDIS_URL`) or `transport` (replicated over the cluster adapter's broker).
/// Empty: follows the adapter (`redis` for `ADAPTER_DRIVER=redis`, `transport` for `nats`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSection {
    pub driver: String,
}

/// Read the driver variables of CONFIG.md into `s`.
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
    if let Some(v) = get("PRESENCE_DRIVER") {
        s.presence.driver = v;
    }
    if get("REDIS_CLUSTER_NODES").is_some() {
        return Err(ConfigError::Invalid(
            "REDIS_CLUSTER_NODES is set, but this build has no redis-cluster driver yet: \
             unset it and use REDIS_URL with a single Redis"
                .into(),
        ));
    }
    Ok(())
}

/// The adapter drivers this build has.
pub(super) fn adapters() -> Vec<&'static str> {
    let mut v = vec!["local"];
    if cfg!(feature = "redis") {
        v.push("redis");
    }
    if cfg!(feature = "nats") {
        v.push("nats");
    }
    v
}

/// The presence store in force: `local` (in the node), `redis` (shared store) or
/// `transport` (replicated over the adapter's broker). Without `PRESENCE_DRIVER` it follows
/// the adapter: the Redis adapter keeps presence in its Redis, the NATS adapter (a
/// broker-only deployment) replicates it over NATS.
pub fn effective_presence(s: &NodeSettings) -> &str {
    match (s.adapter.driver.as_str(), s.presence.driver.as_str()) {
        ("local", _) => "local",
        ("redis", "") => "redis",
        ("nats", "") => "transport",
        (_, p) => p,
    }
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
        (_, "redis") if cfg!(feature = "redis") => {}
        (_, "transport") => {}
        (_, p) => {
            return bad(format!(
                "PRESENCE_DRIVER={p:?} is not supported by this build"
            ))
        }
    }
    if s.database_url.is_some() {
        // Nothing in this version reads it: accepting it would leave an operator believing
        // apps come from their database.
        return bad(
            "DATABASE_URL is set, but this version has no SQL app manager \
             (APP_MANAGER_DRIVER=static reads apps from the config file): unset it"
                .into(),
        );
    }
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
    Ok(())
}
