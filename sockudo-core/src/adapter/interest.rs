//! Interest routing bookkeeping: which channels this node subscribes to at the broker, and
//! the consumer task of each.
//!
//! Every local subscription of a channel holds one reference ([`Interests::acquire`]); the
//! first subscribes to the channel's topic once (all concurrent callers wait for that one
//! subscription through the entry's `OnceCell`), the last ([`Interests::release`]) stops the
//! consumer, which drops the stream and so ends the broker subscription. A subscription that
//! completes after its entry was released (or replaced) is stopped at once
//! ([`Interests::install`]): the map lock orders the two.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// (app id, channel).
pub(crate) type Key = (Arc<str>, Arc<str>);

#[derive(Debug)]
struct Entry {
    refs: usize,
    ready: Arc<OnceCell<()>>,
    task: Option<JoinHandle<()>>,
}

/// The channels this node is interested in.
#[derive(Debug, Default)]
pub(crate) struct Interests {
    map: Mutex<HashMap<Key, Entry>>,
}

impl Interests {
    /// One more local subscriber of `key`; returns the cell whose initialisation subscribes.
    pub(crate) fn acquire(&self, key: &Key) -> Arc<OnceCell<()>> {
        let mut map = self.map.lock();
        let e = map.entry(key.clone()).or_insert_with(|| Entry {
            refs: 0,
            ready: Arc::new(OnceCell::new()),
            task: None,
        });
        e.refs += 1;
        e.ready.clone()
    }

    /// Keep `task` as `key`'s consumer if the entry `ready` belongs to is still current;
    /// otherwise (released meanwhile) stop it.
    pub(crate) fn install(&self, key: &Key, ready: &Arc<OnceCell<()>>, task: JoinHandle<()>) {
        let mut map = self.map.lock();
        match map.get_mut(key) {
            Some(e) if Arc::ptr_eq(&e.ready, ready) => {
                if let Some(old) = e.task.replace(task) {
                    old.abort();
                }
            }
            _ => task.abort(),
        }
    }

    /// One local subscriber of `key` fewer; the last one stops the consumer.
    pub(crate) fn release(&self, key: &Key) {
        let mut map = self.map.lock();
        let Some(e) = map.get_mut(key) else { return };
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            if let Some(e) = map.remove(key) {
                if let Some(t) = e.task {
                    t.abort();
                }
            }
        }
    }

    /// How many channels are routed here.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Stop every consumer (the adapter is going away).
    pub(crate) fn abort_all(&self) {
        for (_, e) in self.map.lock().drain() {
            if let Some(t) = e.task {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> Key {
        (Arc::from("app"), Arc::from(c))
    }

    #[tokio::test]
    async fn last_release_stops_the_consumer_and_late_installs_are_stopped() {
        let i = Interests::default();
        let k = key("c");
        let cell = i.acquire(&k);
        assert!(Arc::ptr_eq(&cell, &i.acquire(&k)), "one cell per channel");
        let task = tokio::spawn(std::future::pending::<()>());
        let watch = task.abort_handle();
        i.install(&k, &cell, task);
        i.release(&k);
        assert_eq!(i.len(), 1);
        assert!(!watch.is_finished());
        i.release(&k);
        assert_eq!(i.len(), 0);
        tokio::task::yield_now().await;
        assert!(watch.is_finished(), "the last release aborts");

        // A subscription completing after its entry was released is stopped at once.
        let stale = i.acquire(&k);
        i.release(&k);
        let late = tokio::spawn(std::future::pending::<()>());
        let late_watch = late.abort_handle();
        i.install(&k, &stale, late);
        tokio::task::yield_now().await;
        assert!(late_watch.is_finished());
        assert_eq!(i.len(), 0);
        i.release(&k); // unbalanced release: ignored
    }
}
