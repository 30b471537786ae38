//! The hot tier of V2 recovery: a short per-channel ring of recent positioned messages,
//! kept by every node from what it delivers, so most resumes never touch the shared store.

use std::collections::VecDeque;
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
    fn trim(&mut self, limits: HotLimits, now: Instant) {
        while self.entries.len() > limits.messages {
            self.entries.pop_front();
        }
        while self.entries.front().is_some_and(|(_, at, _)| now.duration_since(*at) > limits.max_age) {
            self.entries.pop_front();
        }
    }
}

/// Per-channel rings of one app on this node.
#[derive(Debug)]
pub struct HotBuffer {
    limits: HotLimits,
    rings: DashMap<Arc<str>, Ring, RandomState>,
}

impl HotBuffer {
    pub fn new(limits: HotLimits) -> Self {
        HotBuffer { limits, rings: DashMap::default() }
    }

    /// Record a delivered message. A gap (a serial that does not follow the ring's last one)
    /// or a new stream restarts the ring: the ring only ever holds a contiguous run, so what
    /// it offers is always provable.
    pub fn push(&self, channel: &Arc<str>, stream_id: &str, serial: u64, frame: &Utf8Bytes) {
        if self.limits.messages == 0 {
            return;
        }
        let now = Instant::now();
        let mut ring = self.rings.entry(Arc::clone(channel)).or_insert_with(|| Ring { stream_id: Arc::from(stream_id), entries: VecDeque::new() });
        let contiguous = ring.entries.back().is_none_or(|(last, _, _)| serial == last + 1);
        if &*ring.stream_id != stream_id || !contiguous {
            if ring.entries.back().is_some_and(|(last, _, _)| serial <= *last) && &*ring.stream_id == stream_id {
                return; // an old or duplicate delivery: nothing new to remember
            }
            ring.stream_id = Arc::from(stream_id);
            ring.entries.clear();
        }
        ring.entries.push_back((serial, now, frame.clone()));
        ring.trim(self.limits, now);
    }

    /// What the ring can prove about a channel right now.
    pub fn view(&self, channel: &str) -> Option<TierView> {
        let mut ring = self.rings.get_mut(channel)?;
        ring.trim(self.limits, Instant::now());
        let oldest = ring.entries.front().map(|(s, _, _)| *s);
        let head = ring.entries.back().map(|(s, _, _)| *s)?;
        Some(TierView { stream_id: ring.stream_id.to_string(), head, oldest })
    }

    /// Frames with serial in (after, upto], if the ring holds all of them for `stream_id`.
    pub fn range(&self, channel: &str, stream_id: &str, after: u64, upto: u64) -> Option<Vec<(u64, Utf8Bytes)>> {
        let ring = self.rings.get(channel)?;
        if &*ring.stream_id != stream_id {
            return None;
        }
        let out: Vec<(u64, Utf8Bytes)> = ring.entries.iter().filter(|(s, _, _)| *s > after && *s <= upto).map(|(s, _, f)| (*s, f.clone())).collect();
        (out.len() as u64 == upto.saturating_sub(after)).then_some(out)
    }

    pub fn forget(&self, channel: &str) {
        self.rings.remove(channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(n: usize) -> HotBuffer {
        HotBuffer::new(HotLimits { messages: n, max_age: Duration::from_secs(60) })
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
