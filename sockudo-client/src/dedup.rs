//! Per-channel duplicate suppression: a bounded window of recently seen `message_id`s.
//!
//! A redelivery (a resume replay overlapping live traffic, a cross-node duplicate) carries
//! the same `message_id` as the original. The window remembers at most `capacity` ids, each
//! for at most `max_age`; an id seen again inside the window is dropped. Pure logic: the
//! caller passes the clock.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Size and age bounds of a [`DedupWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupConfig {
    /// How many ids are remembered per channel; 0 disables deduplication.
    pub capacity: usize,
    /// How long an id is remembered.
    pub max_age: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            capacity: 1024,
            max_age: Duration::from_secs(120),
        }
    }
}

/// The window of one channel.
#[derive(Debug, Clone)]
pub struct DedupWindow {
    config: DedupConfig,
    order: VecDeque<(String, Instant)>,
    seen: HashSet<String>,
    dropped: u64,
}

impl DedupWindow {
    /// An empty window with `config`'s bounds.
    pub fn new(config: DedupConfig) -> Self {
        DedupWindow {
            config,
            order: VecDeque::new(),
            seen: HashSet::new(),
            dropped: 0,
        }
    }

    /// Record `message_id` at `now`. Returns `true` when it is new (deliver it) and `false`
    /// for a duplicate inside the window (drop it).
    pub fn admit(&mut self, message_id: &str, now: Instant) -> bool {
        if self.config.capacity == 0 {
            return true;
        }
        self.expire(now);
        if self.seen.contains(message_id) {
            self.dropped += 1;
            return false;
        }
        while self.order.len() >= self.config.capacity {
            self.evict_oldest();
        }
        self.seen.insert(message_id.to_owned());
        self.order.push_back((message_id.to_owned(), now));
        true
    }

    /// Whether `message_id` is already in the window (counted as a dropped duplicate when
    /// it is), without recording it. The connection task checks frames on arrival with this
    /// and records them with [`admit`](Self::admit) only once they are delivered: a frame held
    /// behind a gap and then lost with the connection must not make its replay look like a
    /// duplicate.
    pub fn is_duplicate(&mut self, message_id: &str, now: Instant) -> bool {
        if self.config.capacity == 0 {
            return false;
        }
        self.expire(now);
        let seen = self.seen.contains(message_id);
        if seen {
            self.dropped += 1;
        }
        seen
    }

    /// Duplicates dropped by this window so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.config.max_age {
                break;
            }
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((id, _)) = self.order.pop_front() {
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(capacity: usize, secs: u64) -> DedupConfig {
        DedupConfig {
            capacity,
            max_age: Duration::from_secs(secs),
        }
    }

    #[test]
    fn drops_redelivery_inside_window() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(8, 60));
        assert!(w.admit("a", now));
        assert!(w.admit("b", now));
        assert!(!w.admit("a", now));
        assert!(!w.admit("b", now + Duration::from_secs(1)));
        assert_eq!(w.dropped(), 2);
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn size_bound_forgets_oldest() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(2, 60));
        assert!(w.admit("a", now));
        assert!(w.admit("b", now));
        assert!(w.admit("c", now)); // evicts a
        assert_eq!(w.len(), 2);
        assert!(w.admit("a", now), "a fell out of the window");
        assert!(!w.admit("c", now));
    }

    #[test]
    fn age_bound_forgets_old_ids() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(100, 10));
        assert!(w.admit("a", now));
        assert!(!w.admit("a", now + Duration::from_secs(9)));
        assert!(
            w.admit("a", now + Duration::from_secs(10)),
            "expired ids are new again"
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn checking_does_not_record() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(8, 60));
        assert!(!w.is_duplicate("a", now));
        assert!(w.admit("a", now), "a check alone does not record the id");
        assert!(w.is_duplicate("a", now));
        assert_eq!(w.dropped(), 1);
    }

    #[test]
    fn zero_capacity_disables() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(0, 10));
        assert!(w.admit("a", now));
        assert!(w.admit("a", now));
        assert!(w.is_empty());
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn memory_stays_bounded() {
        let now = Instant::now();
        let mut w = DedupWindow::new(cfg(16, 60));
        for i in 0..10_000 {
            assert!(w.admit(&i.to_string(), now));
        }
        assert_eq!(w.len(), 16);
        assert_eq!(w.seen.len(), 16);
    }
}
