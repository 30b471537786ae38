//! [`NodeBuilder`]: a node on backends of your choice.
//!
//! Every backend kind is a `sockudo-core` trait object: [`Adapter`] (cross-node fanout,
//! presence, cluster queries), [`Cache`] (rate limits, idempotency, cache channels, webhook
//! state), [`HistoryStore`] (V2 serials and replay), [`Queue`] (webhook jobs) and
//! [`AppManager`] (apps by id and key). Give the builder the ones you implement or configure
//! yourself; the others are built from the settings' drivers exactly as [`crate::build_node`]
//! does (which is `NodeBuilder::new(settings).build()`).
//!
//! ```
//! use std::sync::Arc;
//! use sockudo_core::adapter::LocalAdapter;
//! use sockudo_core::app::{App, StaticAppManager};
//! use sockudo_core::cache::MemoryCache;
//! use sockudo_server::config::NodeSettings;
//! use sockudo_server::NodeBuilder;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sockudo_server::BuildError> {
//! let apps = StaticAppManager::new([App::new("my-app", "my-key", "my-secret")]);
//! let node = NodeBuilder::new(NodeSettings::default())
//!     .app_manager(Arc::new(apps))
//!     .adapter(Arc::new(LocalAdapter::new()))
//!     .cache(Arc::new(MemoryCache::new()))
//!     .build()
//!     .await?;
//! assert!(node.publish("my-app", "news", "hello", "world").await.is_ok());
//! # Ok(()) }
//! ```

use std::sync::Arc;

use sockudo_core::adapter::Adapter;
use sockudo_core::app::AppManager;
use sockudo_core::cache::Cache;
use sockudo_core::history::HistoryStore;
use sockudo_core::queue::Queue;

use crate::apps::AppBackend;
use crate::config::NodeSettings;
use crate::node::Node;
use crate::server::{adapter_from, assemble_with, cache_from, history_from, BuildError};

/// Builds a [`Node`] from settings, with any backend replaced by your own.
///
/// A backend given here is used instead of the one the settings' driver names; that driver
/// is then not connected (the builder logs which settings it did not use).
#[must_use]
pub struct NodeBuilder {
    settings: NodeSettings,
    adapter: Option<Arc<dyn Adapter>>,
    cache: Option<Arc<dyn Cache>>,
    history: Option<Arc<dyn HistoryStore>>,
    queue: Option<Arc<dyn Queue>>,
    apps: Option<Arc<dyn AppManager>>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("node_id", &self.settings.node_id)
            .field("adapter", &self.adapter.is_some())
            .field("cache", &self.cache.is_some())
            .field("history", &self.history.is_some())
            .field("queue", &self.queue.is_some())
            .field("apps", &self.apps.is_some())
            .finish()
    }
}

impl NodeBuilder {
    /// Start from resolved settings (see [`NodeSettings::load`]).
    pub fn new(settings: NodeSettings) -> Self {
        NodeBuilder {
            settings,
            adapter: None,
            cache: None,
            history: None,
            queue: None,
            apps: None,
        }
    }

    /// The cluster adapter (instead of `ADAPTER_DRIVER`).
    pub fn adapter(mut self, adapter: Arc<dyn Adapter>) -> Self {
        self.adapter = Some(adapter);
        self
    }

    /// The shared cache (instead of `CACHE_DRIVER`).
    pub fn cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The V2 history store (instead of `HISTORY_DRIVER`).
    pub fn history(mut self, history: Arc<dyn HistoryStore>) -> Self {
        self.history = Some(history);
        self
    }

    /// The webhook queue (instead of `QUEUE_DRIVER`).
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Where apps come from (instead of `[[apps]]` / `APP_MANAGER_DRIVER`). The admin API
    /// needs a SQL app manager from the settings and is not available with your own.
    pub fn app_manager(mut self, apps: Arc<dyn AppManager>) -> Self {
        self.apps = Some(apps);
        self
    }

    /// Connect the backends not given, then assemble the node (its webhook pipeline
    /// included). Fails when a configured backend is unreachable or not in this build.
    pub async fn build(self) -> Result<Arc<Node>, BuildError> {
        let s = self.settings;
        let replaced = |what: &str, given: bool, driver: &str| {
            if given {
                tracing::info!(
                    backend = what,
                    settings_driver = driver,
                    "backend given by the embedder; the settings' driver is not used"
                );
            }
        };
        replaced("adapter", self.adapter.is_some(), &s.adapter.driver);
        replaced("cache", self.cache.is_some(), &s.cache.driver);
        replaced("history", self.history.is_some(), &s.history.driver);
        replaced("queue", self.queue.is_some(), &s.queue.driver);
        replaced("apps", self.apps.is_some(), &s.app_manager.driver);
        let cache = match self.cache {
            Some(c) => c,
            None => cache_from(&s).await?,
        };
        let (adapter, cluster_stats) = match self.adapter {
            Some(a) => (a, None),
            None => adapter_from(&s).await?,
        };
        let history = match self.history {
            Some(h) => Some(h),
            None => history_from(&s).await?,
        };
        let apps = match self.apps {
            Some(apps) => AppBackend {
                apps,
                store: None,
                changes: None,
            },
            None => crate::apps::build(&s).await?,
        };
        let node = assemble_with(s, cache, adapter, history, apps, self.queue);
        #[cfg(feature = "push")]
        crate::push::install(&node)
            .await
            .map_err(|e| BuildError::Push(e.to_string()))?;
        if let Some(stats) = cluster_stats {
            node.set_cluster_stats(stats);
        }
        Ok(node)
    }
}
