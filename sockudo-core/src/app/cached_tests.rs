use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::*;
use crate::app::{conformance, StaticAppManager};

/// A backend that can be edited, taken down, and counts its reads.
#[derive(Debug, Default)]
struct Fake {
    apps: Mutex<HashMap<String, App>>,
    down: AtomicBool,
    reads: AtomicU64,
}

impl Fake {
    fn with(apps: &[App]) -> Arc<Fake> {
        let f = Fake::default();
        for a in apps {
            f.apps.lock().insert(a.id.clone(), a.clone());
        }
        Arc::new(f)
    }

    fn check(&self) -> Result<(), AppManagerError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Err(AppManagerError::Unavailable("down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl AppManager for Fake {
    async fn find_by_id(&self, id: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.check()?;
        Ok(self.apps.lock().get(id).cloned().map(Arc::new))
    }
    async fn find_by_key(&self, key: &str) -> Result<Option<Arc<App>>, AppManagerError> {
        self.check()?;
        let apps = self.apps.lock();
        Ok(apps.values().find(|a| a.key == key).cloned().map(Arc::new))
    }
    async fn all(&self) -> Result<Vec<Arc<App>>, AppManagerError> {
        self.check()?;
        Ok(self.apps.lock().values().cloned().map(Arc::new).collect())
    }
}

fn opts() -> CacheOptions {
    CacheOptions {
        ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        capacity: 4,
    }
}

#[tokio::test]
async fn cached_static_manager_passes_conformance() {
    conformance::run_all(|apps| async move {
        Ok(CachedAppManager::new(StaticAppManager::new(apps), opts()))
    })
    .await;
}

#[tokio::test]
async fn warm_lookups_do_not_read_the_backend() {
    let fake = Fake::with(&[App::new("1", "k", "s")]);
    let m = CachedAppManager::new(Arc::clone(&fake), opts());
    for _ in 0..10 {
        assert_eq!(m.find_by_key("k").await.unwrap().unwrap().id, "1");
        assert_eq!(m.find_by_id("1").await.unwrap().unwrap().key, "k");
    }
    assert_eq!(
        fake.reads.load(Ordering::Relaxed),
        1,
        "one read, then cache"
    );
    for _ in 0..10 {
        assert!(m.find_by_key("nope").await.unwrap().is_none());
    }
    assert_eq!(
        fake.reads.load(Ordering::Relaxed),
        2,
        "unknown keys are remembered"
    );
}

#[tokio::test]
async fn outage_serves_cached_apps_and_refuses_unknown_ones() {
    let fake = Fake::with(&[App::new("1", "k", "s")]);
    let m = CachedAppManager::new(
        Arc::clone(&fake),
        CacheOptions {
            ttl: Duration::ZERO,
            ..opts()
        },
    );
    assert!(m.find_by_key("k").await.unwrap().is_some());
    fake.down.store(true, Ordering::Relaxed);
    assert_eq!(
        m.find_by_key("k").await.unwrap().unwrap().id,
        "1",
        "stale copy served"
    );
    assert!(m.find_by_key("other").await.is_err(), "unknown key refused");
    let st = m.status().unwrap();
    assert!(!st.backend_up && st.last_error.is_some());
    assert_eq!((st.stats.stale_served, st.stats.unavailable), (1, 1));
    let empty = CachedAppManager::new(Arc::clone(&fake), opts());
    fake.down.store(true, Ordering::Relaxed);
    assert!(empty.find_by_key("k").await.is_err());
    fake.down.store(false, Ordering::Relaxed);
    empty.poll().await.unwrap();
    assert!(
        empty.backend_up(),
        "an empty cache probes the backend to recover"
    );
    let reads = fake.reads.load(Ordering::Relaxed);
    assert!(m.find_by_key("other2").await.is_err());
    assert_eq!(
        fake.reads.load(Ordering::Relaxed),
        reads,
        "known down: no wait for the backend"
    );
    fake.down.store(false, Ordering::Relaxed);
    m.poll().await.unwrap();
    assert!(
        m.status().unwrap().backend_up,
        "the poll finds the backend back"
    );
    assert!(m.find_by_key("other").await.unwrap().is_none());
}

#[tokio::test]
async fn invalidate_rereads_and_announces() {
    let fake = Fake::with(&[App::new("1", "k", "s")]);
    let m = CachedAppManager::new(Arc::clone(&fake), opts());
    let mut changes = m.changes();
    assert!(m.find_by_key("k").await.unwrap().is_some());
    assert!(m.find_by_key("k2").await.unwrap().is_none());
    let mut edited = App::new("1", "k", "rotated");
    edited.enabled = false;
    fake.apps.lock().insert("1".into(), edited.clone());
    fake.apps
        .lock()
        .insert("2".into(), App::new("2", "k2", "s"));
    assert_eq!(
        m.find_by_key("k").await.unwrap().unwrap().secret,
        "s",
        "cached"
    );
    m.invalidate("1").await;
    assert_eq!(m.find_by_key("k").await.unwrap().unwrap().secret, "rotated");
    let c = changes.try_recv().unwrap();
    assert_eq!(c.id, "1");
    assert_eq!(c.app.map(|a| a.enabled), Some(false));
    assert!(
        m.find_by_key("k2").await.unwrap().is_some(),
        "unknown names are forgotten on invalidation"
    );
    fake.apps.lock().remove("1");
    m.invalidate("1").await;
    assert!(
        changes.try_recv().unwrap().app.is_none(),
        "deletion announced"
    );
    assert!(m.find_by_key("k").await.unwrap().is_none());
}

#[tokio::test]
async fn poll_picks_up_direct_edits_and_deletions() {
    let fake = Fake::with(&[App::new("1", "k", "s"), App::new("2", "k2", "s")]);
    let m = CachedAppManager::new(Arc::clone(&fake), opts());
    m.find_by_id("1").await.unwrap();
    m.find_by_id("2").await.unwrap();
    assert!(m.poll().await.unwrap().is_empty(), "nothing changed");
    fake.apps
        .lock()
        .insert("1".into(), App::new("1", "k-new", "s"));
    fake.apps.lock().remove("2");
    let mut changes = m.poll().await.unwrap();
    changes.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(changes.len(), 2);
    assert_eq!(
        changes[0].app.as_ref().map(|a| a.key.as_str()),
        Some("k-new")
    );
    assert!(changes[1].app.is_none());
    assert!(m.find_by_key("k").await.unwrap().is_none(), "old key gone");
    fake.down.store(true, Ordering::Relaxed);
    assert!(m.poll().await.is_err());
    assert_eq!(m.stats().poll_failures, 1);
    assert_eq!(
        m.find_by_key("k-new").await.unwrap().unwrap().id,
        "1",
        "still served"
    );
}

#[tokio::test]
async fn memory_is_bounded() {
    let apps: Vec<App> = (0..10)
        .map(|i| App::new(i.to_string(), format!("k{i}"), "s"))
        .collect();
    let fake = Fake::with(&apps);
    let m = CachedAppManager::new(Arc::clone(&fake), opts());
    for a in &apps {
        m.find_by_key(&a.key).await.unwrap();
    }
    for i in 0..100 {
        m.find_by_key(&format!("unknown-{i}")).await.unwrap();
    }
    let st = m.state.lock();
    assert!(st.by_id.len() <= 4 && st.id_of_key.len() <= 4);
    assert!(st.missing.len() <= 4);
}
