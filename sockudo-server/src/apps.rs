//! The node's app manager: built from the settings (`APP_MANAGER_DRIVER`), kept fresh across
//! the cluster, and acted upon when an app is disabled or deleted.
//!
//! With a SQL driver the node serves apps through a `CachedAppManager` over the
//! `SqlAppManager`:
//! - a change made through the admin API is announced to every node with
//!   [`ControlMessage::AppChanged`] over the cluster adapter; each node drops its copy and
//!   re-reads the app at once;
//! - a change made directly in the database is found by the cache's poll
//!   (`APP_MANAGER_POLL_INTERVAL`);
//! - either way, the cache announces the change and [`watch_changes`] closes the open
//!   connections of an app that is now disabled (4003) or deleted (4001) on this node.

use std::sync::Arc;

use sockudo_core::adapter::ControlMessage;
use sockudo_core::app::{AppChange, AppManager, AppStore, StaticAppManager};
use sockudo_core::protocol::ErrorCode;
use tokio::sync::broadcast;

use crate::config::NodeSettings;
use crate::node::Node;
use crate::server::BuildError;

/// What [`build`] returns: the manager the node serves from, the writable store behind it
/// (SQL drivers), and the cache's change feed.
pub struct AppBackend {
    /// Lookups (cached for SQL drivers).
    pub apps: Arc<dyn AppManager>,
    /// Writes, for the admin API (SQL drivers only).
    pub store: Option<Arc<dyn AppStore>>,
    /// Changes the cache learns about (SQL drivers only).
    pub changes: Option<broadcast::Receiver<AppChange>>,
}

impl std::fmt::Debug for AppBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBackend")
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

/// The static manager over the configured `[[apps]]`.
pub fn static_backend(settings: &NodeSettings) -> AppBackend {
    AppBackend {
        apps: Arc::new(StaticAppManager::new(settings.apps.clone())),
        store: None,
        changes: None,
    }
}

/// The manager the settings name. A SQL backend is connected here: a node does not start
/// without its apps (and the error says where it looked).
pub async fn build(settings: &NodeSettings) -> Result<AppBackend, BuildError> {
    match settings.app_manager.driver.as_str() {
        "static" => Ok(static_backend(settings)),
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        "postgres" | "mysql" => sql_backend(settings).await,
        other => Err(BuildError::Unsupported {
            what: "app manager",
            driver: other.to_owned(),
        }),
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn sql_backend(settings: &NodeSettings) -> Result<AppBackend, BuildError> {
    use sockudo_core::app::{CacheOptions, CachedAppManager, SqlAppManager, SqlOptions};
    use std::time::Duration;
    let m = &settings.app_manager;
    let url = settings
        .database_url
        .as_ref()
        .map(|u| u.0.clone())
        .unwrap_or_default();
    let mut opts = SqlOptions::new(url.clone());
    opts.table = m.table.clone();
    let sql = SqlAppManager::connect(opts)
        .await
        .map_err(|e| BuildError::Backend {
            what: "app manager",
            url: crate::config::redact_url(&url),
            message: e.to_string(),
        })?;
    let poll = Duration::from_secs(m.poll_interval);
    let cached = Arc::new(CachedAppManager::new(
        sql.clone(),
        CacheOptions {
            ttl: Duration::from_secs(m.cache_ttl),
            // An app created directly in the database is visible within one poll interval.
            negative_ttl: poll,
            capacity: 10_000,
        },
    ));
    cached.spawn_poller(poll);
    tracing::info!(driver = %m.driver, table = %m.table, poll_interval_secs = m.poll_interval, cache_ttl_secs = m.cache_ttl, "apps come from the database");
    Ok(AppBackend {
        changes: Some(cached.changes()),
        apps: cached,
        store: Some(Arc::new(sql)),
    })
}

/// Close the connections of apps the cache learns are disabled or gone, for as long as the
/// node lives.
pub fn watch_changes(node: &Arc<Node>, mut changes: broadcast::Receiver<AppChange>) {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        loop {
            let change = changes.recv().await;
            let Some(node) = weak.upgrade() else { return };
            match change {
                Ok(c) => apply_change(&node, &c.id, c.app.as_deref()),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Which apps changed is lost: check every app with connections here.
                    tracing::warn!(
                        missed,
                        "app changes lagged; re-checking every connected app"
                    );
                    recheck_all(&node).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Act on one app's new state on this node.
fn apply_change(node: &Node, id: &str, app: Option<&sockudo_core::app::App>) {
    let code = match app {
        None => ErrorCode::AppNotFound,
        Some(a) if !a.enabled => ErrorCode::AppDisabled,
        Some(_) => return,
    };
    let Some(ns) = node.existing_namespace(id) else {
        return;
    };
    let conns = ns.connections();
    if !conns.is_empty() {
        tracing::info!(app_id = %id, connections = conns.len(), code = code.code(), "closing the connections of an app that is no longer served");
    }
    for conn in conns {
        conn.close(code);
    }
}

async fn recheck_all(node: &Node) {
    for id in node.namespace_ids() {
        match node.apps.find_by_id(&id).await {
            Ok(app) => apply_change(node, &id, app.as_deref()),
            Err(e) => tracing::warn!(app_id = %id, error = %e, "cannot re-check app"),
        }
    }
}

/// Tell every node (this one included) that app `id` changed in the database.
pub async fn announce_change(node: &Node, id: &str) -> Result<(), String> {
    node.adapter
        .control(ControlMessage::AppChanged {
            app_id: id.to_owned(),
        })
        .await
        .map_err(|e| e.to_string())
}

/// The app manager's part of `/ready`'s body: `None` while the backend answers.
pub fn degraded_note(node: &Node) -> Option<String> {
    let st = node.apps.status()?;
    (!st.backend_up).then(|| {
        format!(
            "app manager degraded: database unreachable ({}); serving {} cached apps, unknown keys refused",
            st.last_error.as_deref().unwrap_or("no answer"),
            st.cached_apps
        )
    })
}
