//! Adapter-level duplicate suppression: a node remembers the message ids it delivered for a
//! short window and drops redeliveries (a transport that redelivers, a publish retried past
//! the history dedup, two adapters bridged by mistake). Suppressions are counted, not hidden.
//!
//! This runs once per broadcast a node delivers, on every delivering task, so it is built not
//! to serialise them and not to allocate: the `(app, channel, message_id)` key is reduced to a
//! 128-bit fingerprint (two independently seeded hashes), and the fingerprints live in
//! [`SHARDS`] independently locked shards chosen by the fingerprint. A false "duplicate" needs
//! two different keys with equal 128-bit fingerprints inside one window: with the seeds
//! random per process, about 2⁻¹²⁸ per pair, far below any other cause of loss.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Independently locked parts of the window (a power of two).
pub const SHARDS: usize = 16;

/// Recently delivered `(app, channel, message_id)` keys, bounded by count and age.
#[derive(Debug)]
pub struct RecentIds {
    window: Duration,
    /// Capacity of each shard (the total divided over the shards, at least 1).
    shard_capacity: usize,
    enabled: bool,
    seeds: (ahash::RandomState, ahash::RandomState),
    shards: Box<[Mutex<Shard>]>,
    suppressed: AtomicU64,
}

#[derive(Debug, Default)]
struct Shard {
    seen: HashSet<u128, ahash::RandomState>,
    order: VecDeque<(Instant, u128)>,
}

fn hash_key(seed: &ahash::RandomState, app_id: &str, channel: &str, message_id: &str) -> u64 {
    let mut h = seed.build_hasher();
    // `write_str`-style framing (length first) keeps ("ab","c") and ("a","bc") apart.
    for part in [app_id, channel, message_id] {
        h.write_usize(part.len());
        h.write(part.as_bytes());
    }
    h.finish()
}

impl RecentIds {
    /// At most `capacity` ids, each remembered for `window`; `capacity` 0 disables it.
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentIds {
            window,
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            enabled: capacity > 0,
            seeds: (ahash::RandomState::new(), ahash::RandomState::new()),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Record a delivery; false (and counted) when the id was already delivered recently.
    pub fn first_delivery(&self, app_id: &str, channel: &str, message_id: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let hi = hash_key(&self.seeds.0, app_id, channel, message_id);
        let lo = hash_key(&self.seeds.1, app_id, channel, message_id);
        let key = (u128::from(hi) << 64) | u128::from(lo);
        // The low bits of the first hash pick the shard (the set hashes the whole key again).
        let Some(shard) = self.shards.get((hi as usize) & (SHARDS - 1)) else {
            return true;
        };
        let now = Instant::now();
        let mut g = shard.lock();
        while let Some((at, _)) = g.order.front() {
            if now.duration_since(*at) <= self.window && g.order.len() < self.shard_capacity {
                break;
            }
            if let Some((_, k)) = g.order.pop_front() {
                g.seen.remove(&k);
            }
        }
        if !g.seen.insert(key) {
            drop(g);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
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
        assert!(r.first_delivery("b", "c", "m1"), "scoped per app");
        assert!(
            r.first_delivery("a", "cm", "1"),
            "parts do not run together"
        );
        assert_eq!(r.suppressed(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            r.first_delivery("a", "c", "m1"),
            "forgotten after the window"
        );
    }

    #[test]
    fn bounded_by_capacity() {
        // One id per shard: the next id of a shard evicts its previous one.
        let r = RecentIds::new(Duration::from_secs(60), SHARDS);
        for i in 0..10_000 {
            assert!(r.first_delivery("a", "c", &i.to_string()));
        }
        let held: usize = r.shards.iter().map(|s| s.lock().seen.len()).sum();
        assert!(held <= SHARDS, "{held} ids held");
        assert!(r.first_delivery("a", "c", "0"), "evicted by capacity");
    }

    #[test]
    fn zero_capacity_disables() {
        let r = RecentIds::new(Duration::from_secs(60), 0);
        assert!(r.first_delivery("a", "c", "m"));
        assert!(r.first_delivery("a", "c", "m"));
        assert_eq!(r.suppressed(), 0);
    }
}
