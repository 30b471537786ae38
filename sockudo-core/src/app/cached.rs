//! [`CachedAppManager`]: a bounded cache in front of any [`AppManager`].
//!
//! Why each rule:
//! - Lookups by key and by id are served from memory while fresh (`ttl`), so a handshake or
//!   a signed API request costs no backend round trip once an app is warm.
//! - Unknown keys and ids are remembered for `negative_ttl` only: a flood of made-up keys costs
//!   one backend read per key per `negative_ttl`, and an app created directly in the backend is
//!   visible within that bound.
//! - [`CachedAppManager::invalidate`] drops an app and re-reads it at once (another node
//!   changed it and said so over the cluster adapter); [`CachedAppManager::poll`] re-reads
//!   every cached app (changes made directly in the backend). Both announce what changed on
//!   [`CachedAppManager::changes`], so the node can close a disabled app's connections.
//! - When the backend fails, an app that was cached (even past its `ttl`) is still served and
//!   counted (`stale_served`); an app that was not is an error (the caller refuses the
//!   request; never "unknown" and never "allowed"). The first failure and the recovery are
//!   logged once each. While the backend is known to be down, lookups do not wait for it
//!   (each would cost the backend's timeout): the next poll finds out when it is back.
//! - Memory is bounded by `capacity` (apps) and `capacity` (unknown names): when full, the
//!   entry read longest ago is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{App, AppManager, AppManagerError, AppManagerStatus};

/// Longest unknown key or id remembered (longer ones cost a backend read each time).
const MAX_REMEMBERED_NAME: usize = 256;

/// How the cache behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// How long a looked-up app is served without reading the backend again.
    pub ttl: Duration,
    /// How long "no such app" is remembered.
    pub negative_ttl: Duration,
    /// Most apps (and, separately, most unknown names) kept.
    pub capacity: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            capacity: 10_000,
        }
    }
}

/// A change the cache learned about: the app as the backend has it now (`None`: deleted).
#[derive(Debug, Clone)]
pub struct AppChange {
    /// The app's id.
    pub id: String,
    /// The app now; `None` when it no longer exists.
    pub app: Option<Arc<App>>,
}

/// Counters of a [`CachedAppManager`] since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from memory (apps and unknown names).
    pub hits: u64,
    /// Lookups that read the backend.
    pub misses: u64,
    /// Lookups answered with a cached copy because the backend failed.
    pub stale_served: u64,
    /// Lookups that failed because the backend failed and nothing was cached.
    pub unavailable: u64,
    /// Apps dropped by [`CachedAppManager::invalidate`].
    pub invalidations: u64,
    /// Polls that could not read the backend.
    pub poll_failures: u64,
}

#[derive(Debug)]
struct Entry {
    app: Arc<App>,
    fetched: Instant,
}

#[derive(Debug, Default)]
struct State {
    by_id: HashMap<String, Entry>,
    id_of_key: HashMap<String, String>,
    /// Keys and ids (prefixed `k:` / `i:`) the backend said do not exist, and when.
    missing: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    unavailable: AtomicU64,
    invalidations: AtomicU64,
    poll_failures: AtomicU64,
}

/// A cache in front of any [`AppManager`] (see the module docs for its rules).
#[derive(Debug)]
pub struct CachedAppManager<M> {
    inner: M,
    opts: CacheOptions,
    state: Mutex<State>,
    changes: broadcast::Sender<AppChange>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    counters: Counters,
}

/// Which name a lookup uses.
#[derive(Clone, Copy)]
enum By<'a> {
    Id(&'a str),
    Key(&'a str),
}

impl By<'_> {
    fn missing_key(self) -> String {
        match self {
            By::Id(id) => format!("i:{id}"),
            By::Key(key) => format!("k:{key}"),
        }
    }
}

impl<M: AppManager> CachedAppManager<M> {
    /// Cache `inner` with these options.
    pub fn new(inner: M, opts: CacheOptions) -> Self {
        let (changes, _) = broadcast::channel(1024);
        CachedAppManager {
            inner,
            opts,
            state: Mutex::new(State::default()),
            changes,
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// The cached manager.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Changes the cache learns about (invalidation, polling, lookups). A receiver that lags
    /// behind by more than 1024 changes misses the oldest (it is told so by the channel).
    pub fn changes(&self) -> broadcast::Receiver<AppChange> {
        self.changes.subscribe()
    }

    /// The counters since start.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            stale_served: get(&c.stale_served),
            unavailable: get(&c.unavailable),
            invalidations: get(&c.invalidations),
            poll_failures: get(&c.poll_failures),
        }
    }

    /// Whether the backend answered the last read.
    pub fn backend_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Re-read every cached app from the backend and apply what changed (edits made
    /// directly in the backend). Returns the changes found.
    pub async fn poll(&self) -> Result<Vec<AppChange>, AppManagerError> {
        let ids: Vec<String> = self.state.lock().by_id.keys().cloned().collect();
        // Unknown names age out by themselves; dropping the expired ones keeps memory flat.
        self.state
            .lock()
            .missing
            .retain(|_, at| at.elapsed() < self.opts.negative_ttl);
        if ids.is_empty() {
            if !self.backend_up() {
                // Nothing cached to re-read, but the outage must still end by itself: probe
                // with an id no app has (ids are never empty).
                match self.inner.find_by_id("").await {
                    Ok(_) => self.mark_up(),
                    Err(e) => {
                        self.counters.poll_failures.fetch_add(1, Ordering::Relaxed);
                        self.mark_down(&e);
                        return Err(e);
                    }
                }
            }
            return Ok(Vec::new());
        }
        let fresh = match self.inner.find_many(&ids).await {
            Ok(apps) => {
                self.mark_up();
                apps
            }
            Err(e) => {
                self.counters.poll_failures.fetch_add(1, Ordering::Relaxed);
                self.mark_down(&e);
                return Err(e);
            }
        };
        let mut by_id: HashMap<String, Arc<App>> =
            fresh.into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut out = Vec::new();
        for id in ids {
            let now = by_id.remove(&id);
            if let Some(change) = self.apply(&id, now) {
                out.push(change);
            }
        }
        Ok(out)
    }

    /// Poll every `interval` while the manager lives (a task on the current runtime).
    pub fn spawn_poller(self: &Arc<Self>, interval: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                // Failures are counted and logged by `mark_down`; the next tick retries.
                let _ = me.poll().await;
            }
        });
    }

    /// Store what the backend says app `id` is now; announce it when it differs from the
    /// cached copy.
    fn apply(&self, id: &str, now: Option<Arc<App>>) -> Option<AppChange> {
        let mut st = self.state.lock();
        let before = st.by_id.get(id).map(|e| Arc::clone(&e.app));
        match &now {
            Some(app) => self.store(&mut st, Arc::clone(app)),
            None => {
                if let Some(old) = st.by_id.remove(id) {
                    st.id_of_key.remove(&old.app.key);
                }
            }
        }
        drop(st);
        // An app seen for the first time is no change: nothing on this node used it yet.
        let changed = match (&before, &now) {
            (Some(a), Some(b)) => a != b,
            (Some(_), None) => true,
            (None, _) => false,
        };
        changed.then(|| self.announce(id, now))
    }

    fn announce(&self, id: &str, app: Option<Arc<App>>) -> AppChange {
        let change = AppChange {
            id: id.to_owned(),
            app,
        };
        // No receiver is fine: nobody needs to act.
        let _ = self.changes.send(change.clone());
        change
    }

    /// Insert or replace, keeping both maps consistent and memory bounded.
    fn store(&self, st: &mut State, app: Arc<App>) {
        if let Some(old) = st.by_id.get(&app.id) {
            if old.app.key != app.key {
                let old_key = old.app.key.clone();
                st.id_of_key.remove(&old_key);
            }
        } else if st.by_id.len() >= self.opts.capacity {
            let oldest = st
                .by_id
                .iter()
                .min_by_key(|(_, e)| e.fetched)
                .map(|(id, e)| (id.clone(), e.app.key.clone()));
            if let Some((id, key)) = oldest {
                st.by_id.remove(&id);
                st.id_of_key.remove(&key);
            }
        }
        st.missing.remove(&format!("i:{}", app.id));
        st.missing.remove(&format!("k:{}", app.key));
        st.id_of_key.insert(app.key.clone(), app.id.clone());
        st.by_id.insert(
            app.id.clone(),
            Entry {
                app,
                fetched: Instant::now(),
            },
        );
    }

    fn remember_missing(&self, by: By<'_>) {
        let name = match by {
            By::Id(n) | By::Key(n) => n,
        };
        if name.len() > MAX_REMEMBERED_NAME {
            // No app has such a name; remembering it would let long made-up keys fill memory.
            return;
        }
        let mut st = self.state.lock();
        if st.missing.len() >= self.opts.capacity {
            let ttl = self.opts.negative_ttl;
            st.missing.retain(|_, at| at.elapsed() < ttl);
            if st.missing.len() >= self.opts.capacity {
                // Still full of fresh entries (a flood of made-up names): forget them all
                // rather than grow; the flood then costs backend reads, not memory.
                st.missing.clear();
            }
        }
        st.missing.insert(by.missing_key(), Instant::now());
    }

    /// The cached copy (fresh or not) and whether it is fresh; or whether the name is known
    /// to be missing.
    fn cached(&self, by: By<'_>) -> (Option<(Arc<App>, bool)>, bool) {
        let st = self.state.lock();
        let id = match by {
            By::Id(id) => Some(id),
            By::Key(key) => st.id_of_key.get(key).map(String::as_str),
        };
        let entry = id
            .and_then(|id| st.by_id.get(id))
            .map(|e| (Arc::clone(&e.app), e.fetched.elapsed() < self.opts.ttl));
        let missing = st
            .missing
            .get(&by.missing_key())
            .is_some_and(|at| at.elapsed() < self.opts.negative_ttl);
        (entry, missing)
    }

    async fn lookup(&self, by: By<'_>) -> Result<Option<Arc<App>>, AppManagerError> {
        let (entry, missing) = self.cached(by);
        match &entry {
            Some((app, true)) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Arc::clone(app)));
            }
            None if missing => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            _ => {}
        }
        if !self.backend_up() {
            // Known down: answer at once instead of making every handshake wait for the
            // backend's timeout; the poller notices the recovery.
            let why = self.last_error.lock().clone().unwrap_or_default();
            return self.without_backend(entry, AppManagerError::Unavailable(why));
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let read = match by {
            By::Id(id) => self.inner.find_by_id(id).await,
            By::Key(key) => self.inner.find_by_key(key).await,
        };
        match read {
            Ok(Some(app)) => {
                self.mark_up();
                let id = app.id.clone();
                self.apply(&id, Some(Arc::clone(&app)));
                Ok(Some(app))
            }
            Ok(None) => {
                self.mark_up();
                if let Some((old, _)) = entry {
                    self.apply(&old.id, None);
                }
                self.remember_missing(by);
                Ok(None)
            }
            Err(e) => {
                self.mark_down(&e);
                self.without_backend(entry, e)
            }
        }
    }

    /// The answer while the backend cannot be read: the cached copy, however old, or `e`.
    fn without_backend(
        &self,
        entry: Option<(Arc<App>, bool)>,
        e: AppManagerError,
    ) -> Result<Option<Arc<App>>, AppManagerError> {
        match entry {
            Some((app, _)) => {
                self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(Some(app))
            }
            None => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            *self.last_error.lock() = None;
            tracing::info!("app manager backend reachable again");
        }
    }

    fn mark_down(&self, e: &AppManagerError) {
        // Malformed apps are a data problem, not an outage.
        if matches!(e, AppManagerError::Malformed { .. }) {
            return;
        }
        *self.last_error.lock() = Some(e.to_string());
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(error = %e, cached_apps = self.state.lock().by_id.len(),
                "app manager backend unreachable: serving cached apps only, unknown keys are refused");
        }
    }
}

#[async_trait]
impl<M: AppManager> AppManager for CachedAppManager<M> {
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.lookup(By::Id(id)).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.lookup(By::Key(key)).await
    }

    /// Always the backend's list: a cache holds only apps looked up, never "all".
    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        self.inner.all().await
    }

    async fn invalidate(&self, id: &str) {
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        let before = {
            let mut st = self.state.lock();
            // The change may have created an app under a key or id remembered as missing.
            st.missing.clear();
            st.by_id.remove(id).inspect(|old| {
                st.id_of_key.remove(&old.app.key);
            })
        };
        match self.inner.find_by_id(id).await {
            Ok(now) => {
                self.mark_up();
                if let Some(app) = &now {
                    self.store(&mut self.state.lock(), Arc::clone(app));
                }
                if before.is_some() || now.is_some() {
                    self.announce(id, now);
                }
            }
            Err(e) => {
                // The copy is known to be stale: it stays dropped (fail closed) and the app is
                // refused until the backend answers again.
                self.mark_down(&e);
                tracing::warn!(app_id = %id, error = %e, "invalidated app could not be re-read");
            }
        }
    }

    fn status(&self) -> Option<AppManagerStatus> {
        Some(AppManagerStatus {
            backend_up: self.backend_up(),
            last_error: self.last_error.lock().clone(),
            cached_apps: self.state.lock().by_id.len(),
            stats: self.stats(),
        })
    }

    async fn find_many(&self, ids: &[String]) -> Result<Vec<Arc<App>>, AppManagerError> {
        self.inner.find_many(ids).await
    }
}

#[cfg(test)]
#[path = "cached_tests.rs"]
mod tests;
