//! Adapter-level duplicate suppression: a node remembers the message ids it delivered for a
//! short window and drops redeliveries (a transport that redelivers, a publish retried past
//! the history dedup, two adapters bridged by mistake). Suppressions are counted, not hidden.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Recently delivered `(app, channel, message_id)` keys, bounded by count and age.
#[derive(Debug)]
pub struct RecentIds {
    window: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
    suppressed: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashSet<String, ahash::RandomState>,
    order: VecDeque<(Instant, String)>,
}

impl RecentIds {
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentIds {
            window,
            capacity,
            inner: Mutex::new(Inner::default()),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Record a delivery; false (and counted) when the id was already delivered recently.
    pub fn first_delivery(&self, app_id: &str, channel: &str, message_id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = format!("{app_id}\u{0}{channel}\u{0}{message_id}");
        let now = Instant::now();
        let mut g = self.inner.lock();
        while let Some((at, _)) = g.order.front() {
            if now.duration_since(*at) <= self.window && g.order.len() < self.capacity {
                break;
            }
            if let Some((_, k)) = g.order.pop_front() {
                g.seen.remove(&k);
            }
        }
        if g.seen.contains(&key) {
            drop(g);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        g.seen.insert(key.clone());
        g.order.push_back((now, key));
        true
    }

    /// Duplicates dropped so far (`sockudo_adapter_duplicates_suppressed_total`).
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drops_and_counts_redeliveries_within_the_window() {
        let r = RecentIds::new(Duration::from_secs(10), 100);
        assert!(r.first_delivery("a", "c", "m1"));
        assert!(!r.first_delivery("a", "c", "m1"));
        assert!(r.first_delivery("a", "other", "m1"), "scoped per channel");
        assert_eq!(r.suppressed(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            r.first_delivery("a", "c", "m1"),
            "forgotten after the window"
        );
    }

    #[test]
    fn bounded_by_capacity() {
        let r = RecentIds::new(Duration::from_secs(60), 2);
        assert!(r.first_delivery("a", "c", "1"));
        assert!(r.first_delivery("a", "c", "2"));
        assert!(r.first_delivery("a", "c", "3"));
        assert!(r.first_delivery("a", "c", "1"), "evicted by capacity");
    }
}
