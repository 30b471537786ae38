//! The hot tier of V2 recovery: a short per-channel ring of recent positioned messages,
//! kept by every node from what it delivers, so most resumes never touch the shared store.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ahash::RandomState;
use dashmap::DashMap;
use sockudo_core::history::recovery::TierView;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Bounds of each channel's ring.
#[derive(Debug, Clone, Copy)]
pub struct HotLimits {
    pub messages: usize,
    pub max_age: Duration,
}

#[derive(Debug)]
struct Ring {
    stream_id: Arc<str>,
    entries: VecDeque<(u64, Instant, Utf8Bytes)>,
}

impl Ring {
    /// Drop entries over the bounds; returns (entries, bytes) dropped.
    fn trim(&mut self, limits: HotLimits, now: Instant) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        while self.entries.len() > limits.messages
            || self
                .entries
                .front()
                .is_some_and(|(_, at, _)| now.duration_since(*at) > limits.max_age)
        {
            match self.entries.pop_front() {
                Some((_, _, f)) => {
                    n += 1;
                    bytes += f.len() as u64;
                }
                None => break,
            }
        }
        (n, bytes)
    }
}

/// Size and evictions of the hot buffers (metrics: `sockudo_hot_buffer_*`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HotStats {
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
}

impl std::ops::AddAssign for HotStats {
    fn add_assign(&mut self, o: HotStats) {
        self.entries += o.entries;
        self.bytes += o.bytes;
        self.evictions += o.evictions;
    }
}

#[derive(Debug, Default)]
struct Counters {
    entries: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
}

impl Counters {
    fn removed(&self, (n, bytes): (u64, u64), evicted: bool) {
        if n == 0 {
            return;
        }
        self.entries.fetch_sub(n, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        if evicted {
            self.evictions.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Per-channel rings of one app on this node.
#[derive(Debug)]
pub struct HotBuffer {
    limits: HotLimits,
    rings: DashMap<Arc<str>, Ring, RandomState>,
    counters: Counters,
}

impl HotBuffer {
    pub fn new(limits: HotLimits) -> Self {
        HotBuffer {
            limits,
            rings: DashMap::default(),
            counters: Counters::default(),
        }
    }

    /// Record a delivered message. A gap (a serial that does not follow the ring's last one)
    /// or a new stream restarts the ring: the ring only ever holds a contiguous run, so what
    /// it offers is always provable.
    pub fn push(&self, channel: &Arc<str>, stream_id: &str, serial: u64, frame: &Utf8Bytes) {
        if self.limits.messages == 0 {
            return;
        }
        let now = Instant::now();
        let mut ring = self
            .rings
            .entry(Arc::clone(channel))
            .or_insert_with(|| Ring {
                stream_id: Arc::from(stream_id),
                entries: VecDeque::new(),
            });
        let contiguous = ring
            .entries
            .back()
            .is_none_or(|(last, _, _)| serial == last + 1);
        if &*ring.stream_id != stream_id || !contiguous {
            if ring
                .entries
                .back()
                .is_some_and(|(last, _, _)| serial <= *last)
                && &*ring.stream_id == stream_id
            {
                return; // an old or duplicate delivery: nothing new to remember
            }
            ring.stream_id = Arc::from(stream_id);
            let dropped = (
                ring.entries.len() as u64,
                ring.entries.iter().map(|(_, _, f)| f.len() as u64).sum(),
            );
            ring.entries.clear();
            self.counters.removed(dropped, true);
        }
        ring.entries.push_back((serial, now, frame.clone()));
        self.counters.entries.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        let trimmed = ring.trim(self.limits, now);
        self.counters.removed(trimmed, true);
    }

    /// Entries and bytes held now, and evictions so far.
    pub fn stats(&self) -> HotStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HotStats {
            entries: l(&self.counters.entries),
            bytes: l(&self.counters.bytes),
            evictions: l(&self.counters.evictions),
        }
    }

    /// What the ring can prove about a channel right now.
    pub fn view(&self, channel: &str) -> Option<TierView> {
        let mut ring = self.rings.get_mut(channel)?;
        let trimmed = ring.trim(self.limits, Instant::now());
        self.counters.removed(trimmed, true);
        let oldest = ring.entries.front().map(|(s, _, _)| *s);
        let head = ring.entries.back().map(|(s, _, _)| *s)?;
        Some(TierView {
            stream_id: ring.stream_id.to_string(),
            head,
            oldest,
        })
    }

    /// Frames with serial in (after, upto], if the ring holds all of them for `stream_id`.
    pub fn range(
        &self,
        channel: &str,
        stream_id: &str,
        after: u64,
        upto: u64,
    ) -> Option<Vec<(u64, Utf8Bytes)>> {
        let ring = self.rings.get(channel)?;
        if &*ring.stream_id != stream_id {
            return None;
        }
        let out: Vec<(u64, Utf8Bytes)> = ring
            .entries
            .iter()
            .filter(|(s, _, _)| *s > after && *s <= upto)
            .map(|(s, _, f)| (*s, f.clone()))
            .collect();
        (out.len() as u64 == upto.saturating_sub(after)).then_some(out)
    }

    /// Drop every ring whose entries have all aged out (channels idle for the ring's age
    /// bound), so a node does not keep one record per channel it ever carried. Returns how
    /// many rings were dropped.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let before = self.rings.len();
        self.rings.retain(|_, ring| {
            let trimmed = ring.trim(self.limits, now);
            self.counters.removed(trimmed, true);
            !ring.entries.is_empty()
        });
        before.saturating_sub(self.rings.len())
    }

    /// Shrink the ring map when reaping left it mostly empty; returns whether it did.
    pub fn shrink(&self) -> bool {
        crate::memory::shrink_sparse(&self.rings)
    }

    /// Rings held now (one per channel with recent messages).
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    pub fn forget(&self, channel: &str) {
        if let Some((_, ring)) = self.rings.remove(channel) {
            let bytes = ring.entries.iter().map(|(_, _, f)| f.len() as u64).sum();
            self.counters
                .removed((ring.entries.len() as u64, bytes), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(n: usize) -> HotBuffer {
        HotBuffer::new(HotLimits {
            messages: n,
            max_age: Duration::from_secs(60),
        })
    }

    #[test]
    fn keeps_a_contiguous_bounded_run() {
        let b = buf(3);
        let ch: Arc<str> = Arc::from("c");
        for s in 1..=5 {
            b.push(&ch, "s1", s, &"f".into());
        }
        let v = b.view("c").unwrap();
        assert_eq!((v.head, v.oldest), (5, Some(3)));
        assert_eq!(b.range("c", "s1", 2, 5).map(|r| r.len()), Some(3));
        assert!(b.range("c", "s1", 1, 5).is_none(), "serial 2 is gone");
        assert!(b.range("c", "s2", 2, 5).is_none(), "other stream");
        assert_eq!(
            b.stats(),
            HotStats {
                entries: 3,
                bytes: 3,
                evictions: 2
            }
        );
        b.forget("c");
        assert_eq!(
            b.stats(),
            HotStats {
                entries: 0,
                bytes: 0,
                evictions: 2
            },
            "forgetting is not evicting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_rings_are_reaped_once_their_entries_aged_out() {
        let b = HotBuffer::new(HotLimits {
            messages: 10,
            max_age: Duration::from_secs(60),
        });
        b.push(&Arc::from("old"), "s1", 1, &"f".into());
        tokio::time::advance(Duration::from_secs(50)).await;
        b.push(&Arc::from("new"), "s1", 1, &"f".into());
        assert_eq!(b.reap(), 0, "both still within the age bound");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(b.reap(), 1);
        assert_eq!(b.rings(), 1);
        assert!(b.view("old").is_none());
        assert_eq!(b.stats().entries, 1);
    }

    #[test]
    fn gaps_and_new_streams_restart_the_ring() {
        let b = buf(10);
        let ch: Arc<str> = Arc::from("c");
        b.push(&ch, "s1", 1, &"f".into());
        b.push(&ch, "s1", 3, &"f".into());
        assert_eq!(b.view("c").unwrap().oldest, Some(3));
        b.push(&ch, "s1", 3, &"f".into());
        assert_eq!(b.view("c").unwrap().oldest, Some(3), "duplicate ignored");
        b.push(&ch, "s2", 1, &"f".into());
        let v = b.view("c").unwrap();
        assert_eq!((v.stream_id.as_str(), v.oldest), ("s2", Some(1)));
    }
}
