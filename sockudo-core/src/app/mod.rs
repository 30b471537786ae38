//! The app model and the [`AppManager`] contract.
//!
//! - [`StaticAppManager`]: apps fixed at start (the config file), the embedded default.
//! - [`CachedAppManager`]: a cache in front of any manager (by key and by id, bounded, with
//!   invalidation, polling and stale service during a backend outage).
//! - `SqlAppManager` (features `postgres` / `mysql`): apps in a PostgreSQL or MySQL/MariaDB
//!   table laid out like upstream Sockudo's `applications`; it is also an [`AppStore`].
//! - [`conformance`]: the executable contract every manager passes.

mod cached;
pub mod conformance;
#[cfg(any(feature = "postgres", feature = "mysql"))]
mod sql;

pub use cached::{AppChange, CacheOptions, CacheStats, CachedAppManager};
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use sql::{validate_table, SqlAppManager, SqlDialect, SqlError, SqlOptions};

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One tenant: credentials, switches and limits. Field names are the TOML/JSON names
/// operators use (docs/configuration.md), so this type is also the config schema of an app.
/// `Debug` shows everything but the secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id (HTTP API path `/apps/{id}/…`).
    pub id: String,
    /// The public key clients connect with.
    pub key: String,
    /// The secret signing API requests and channel auth.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether clients may send `client-` events.
    #[serde(default)]
    pub enable_client_messages: bool,
    /// Cluster-wide connection quota; 0 means unlimited.
    #[serde(default)]
    pub max_connections: u64,
    /// Client events per second per connection (4301 beyond it); 0 means unlimited.
    #[serde(default = "default_client_events")]
    pub max_client_events_per_second: u32,
    /// Members allowed per presence channel.
    #[serde(default = "default_presence_members")]
    pub max_presence_members: usize,
    /// Largest `user_info` of a presence member, in bytes.
    #[serde(default = "default_user_info_bytes")]
    pub max_presence_user_info_bytes: usize,
    /// Largest event `data` accepted from the HTTP API or a client event (413 / error beyond).
    #[serde(default = "default_payload_bytes")]
    pub max_event_payload_bytes: usize,
    /// Most channels one HTTP publish may name (400 beyond it).
    #[serde(default = "default_channels_at_once")]
    pub max_event_channels_at_once: usize,
    /// Longest event name accepted from the HTTP API or a client event.
    #[serde(default = "default_event_name_length")]
    pub max_event_name_length: usize,
    /// Most events one HTTP batch publish may carry (400 beyond it).
    #[serde(default = "default_batch_size")]
    pub max_event_batch_size: usize,
    /// Where the app's webhooks go.
    #[serde(default)]
    pub webhooks: Vec<WebhookTarget>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("secret", &"***")
            .field("enabled", &self.enabled)
            .field("enable_client_messages", &self.enable_client_messages)
            .field("max_connections", &self.max_connections)
            .field(
                "max_client_events_per_second",
                &self.max_client_events_per_second,
            )
            .field("max_presence_members", &self.max_presence_members)
            .field(
                "max_presence_user_info_bytes",
                &self.max_presence_user_info_bytes,
            )
            .field("max_event_payload_bytes", &self.max_event_payload_bytes)
            .field(
                "max_event_channels_at_once",
                &self.max_event_channels_at_once,
            )
            .field("max_event_name_length", &self.max_event_name_length)
            .field("max_event_batch_size", &self.max_event_batch_size)
            .field("webhooks", &self.webhooks)
            .finish()
    }
}

/// A webhook endpoint of an app (`[[apps.webhooks]]`). `Debug` hides header values (they
/// often carry credentials).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookTarget {
    /// The URL events are POSTed to.
    pub url: String,
    /// Event types sent to this target; empty means all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Extra HTTP headers of each POST.
    #[serde(default)]
    pub headers: HashMap<String, String>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field("header_names", &names)
            .finish()
    }
}

const fn yes() -> bool {
    true
}
const fn default_client_events() -> u32 {
    10
}
const fn default_presence_members() -> usize {
    100
}
const fn default_user_info_bytes() -> usize {
    1024
}
const fn default_payload_bytes() -> usize {
    10 * 1024
}
const fn default_channels_at_once() -> usize {
    100
}
const fn default_event_name_length() -> usize {
    200
}
const fn default_batch_size() -> usize {
    10
}

impl App {
    /// An app with the default limits.
    pub fn new(id: impl Into<String>, key: impl Into<String>, secret: impl Into<String>) -> Self {
        App {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            enable_client_messages: false,
            max_connections: 0,
            max_client_events_per_second: default_client_events(),
            max_presence_members: default_presence_members(),
            max_presence_user_info_bytes: default_user_info_bytes(),
            max_event_payload_bytes: default_payload_bytes(),
            max_event_channels_at_once: default_channels_at_once(),
            max_event_name_length: default_event_name_length(),
            max_event_batch_size: default_batch_size(),
            webhooks: Vec::new(),
        }
    }
}

/// Why the app manager could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AppManagerError {
    /// The backend could not be reached or did not answer.
    #[error("app manager backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an app that cannot be served (a value out of range, a
    /// malformed JSON column): the app is refused, never served with made-up values.
    #[error("app {id:?} cannot be served: {message}")]
    Malformed {
        /// The app's id (or key, when the id could not be read).
        id: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Where apps come from.
///
/// Contract: lookups are read-only and may be served from a cache by the implementation;
/// an app that does not exist is `Ok(None)`, never an error. `Err` means the backend could
/// not answer, and callers must fail the request (never treat it as "no such app" or
/// "allowed").
#[async_trait]
pub trait AppManager: Send + Sync + 'static {
    /// The app with this id (`None`: no such app).
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError>;
    /// The app with this key (`None`: no such app).
    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError>;
    /// Every app.
    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError>;

    /// The apps with these ids that exist (any order; absent ids are simply missing). The
    /// default asks [`AppManager::find_by_id`] for each; backends override it with one read.
    async fn find_many(&self, ids: &[String]) -> Result<Vec<Arc<App>>, AppManagerError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(app) = self.find_by_id(id).await? {
                out.push(app);
            }
        }
        Ok(out)
    }

    /// Forget any cached copy of app `id`: it changed in the backend (another node said so
    /// over the cluster adapter). The next lookup reads the backend. Managers without a
    /// cache do nothing.
    async fn invalidate(&self, id: &str) {
        let _ = id;
    }

    /// The manager's health and cache counters, when it has a backend that can fail
    /// (`/ready`'s body and metrics). `None` for managers that cannot fail.
    fn status(&self) -> Option<AppManagerStatus> {
        None
    }
}

/// What a manager with a remote backend reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppManagerStatus {
    /// The backend answered the last lookup or poll.
    pub backend_up: bool,
    /// The last backend error, while `backend_up` is false.
    pub last_error: Option<String>,
    /// Apps currently cached (served during an outage).
    pub cached_apps: usize,
    /// The cache's counters.
    pub stats: CacheStats,
}

/// Writes to a shared app backend (the admin API). Every change is visible to the next
/// backend read on every node; caches learn about it through [`AppManager::invalidate`].
#[async_trait]
pub trait AppStore: Send + Sync + 'static {
    /// Insert a new app. [`AppStoreError::Conflict`] when its id or key is taken.
    async fn create(&self, app: &App) -> Result<(), AppStoreError>;
    /// Replace the stored app with the same id. [`AppStoreError::NotFound`] when absent.
    async fn update(&self, app: &App) -> Result<(), AppStoreError>;
    /// Delete app `id`; `Ok(false)` when it did not exist.
    async fn delete(&self, id: &str) -> Result<bool, AppStoreError>;
    /// The app with this id, read from the backend (no cache).
    async fn get(&self, id: &str) -> Result<Option<App>, AppStoreError>;
    /// Every app, read from the backend, ordered by id.
    async fn list(&self) -> Result<Vec<App>, AppStoreError>;
}

/// Why an [`AppStore`] write failed.
#[derive(Debug, thiserror::Error)]
pub enum AppStoreError {
    /// Another app has this id or key.
    #[error("an app with this id or key exists")]
    Conflict,
    /// No app with this id.
    #[error("no such app")]
    NotFound,
    /// The backend failed or is unreachable.
    #[error("{0}")]
    Backend(#[from] AppManagerError),
}

/// Lets `Arc<dyn AppManager>` be used where a sized `M: AppManager` is expected (layers).
#[async_trait]
impl<T: AppManager + ?Sized> AppManager for Arc<T> {
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        (**self).find_by_id(id).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        (**self).find_by_key(key).await
    }

    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        (**self).all().await
    }

    async fn find_many(&self, ids: &[String]) -> Result<Vec<Arc<App>>, AppManagerError> {
        (**self).find_many(ids).await
    }

    async fn invalidate(&self, id: &str) {
        (**self).invalidate(id).await
    }

    fn status(&self) -> Option<AppManagerStatus> {
        (**self).status()
    }
}

/// Apps fixed at start (from config): the embedded default.
#[derive(Debug, Default)]
pub struct StaticAppManager {
    by_id: HashMap<String, Arc<App>>,
    by_key: HashMap<String, Arc<App>>,
}

impl StaticAppManager {
    /// Serve these apps (ids and keys are unique: the config checks it).
    pub fn new(apps: impl IntoIterator<Item = App>) -> Self {
        let mut m = StaticAppManager::default();
        for app in apps {
            let app = Arc::new(app);
            m.by_key.insert(app.key.clone(), Arc::clone(&app));
            m.by_id.insert(app.id.clone(), app);
        }
        m
    }
}

#[async_trait]
impl AppManager for StaticAppManager {
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        Ok(self.by_id.get(id).cloned())
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        Ok(self.by_key.get(key).cloned())
    }

    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        Ok(self.by_id.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_lookup() {
        let m = StaticAppManager::new([App::new("1", "k", "s")]);
        assert_eq!(m.find_by_key("k").await.unwrap().unwrap().id, "1");
        assert_eq!(m.find_by_id("1").await.unwrap().unwrap().key, "k");
        assert!(m.find_by_key("x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn static_manager_passes_conformance() {
        conformance::run_all(|apps| async move { Ok(StaticAppManager::new(apps)) }).await;
    }
}
