//! [`HistoryStore`] in process memory: the single-node default and the reference
//! implementation for the conformance suite.
//!
//! Each (app, channel) stream is one mutex-protected record: its `stream_id`, the last
//! assigned serial, the retained messages (a `VecDeque`, contiguous by construction) and a
//! `message_id → serial` map for deduplication. `append` assigns the serial, builds the frame
//! and stores it under the stream's lock, so serials are 1, 2, 3, … without gaps or repeats.
//!
//! Retention ([`Retention`]) is applied on every append and every read: the oldest messages
//! are dropped while there are more than `max_messages` or while the oldest is older than
//! `max_age` (a message exactly `max_age` old is still retained). Ages use the monotonic
//! clock; `published_at_ms` is the wall clock at append.
//!
//! Deduplication: a `message_id` is remembered for the `dedup_window` given when it was first
//! appended. An empty `message_id` or a zero window disables deduplication for that append.
//!
//! Idle channels: [`MemoryHistoryStore::reap_idle`] drops the record of every channel that
//! has not been appended to for `max_age`, holds no retained message and no live dedup
//! claim, and that no operation is using at that moment. A channel used again afterwards
//! starts a new stream (a new `stream_id`): resumes from before fail closed with
//! `stream_reset`, which is right, since everything they could have replayed had expired.
//! The node calls it periodically, so memory follows the channels in use, not every channel
//! ever touched.
//!
//! Reads never create state: `head`, `read_after` and `read_before` of a channel without a
//! record answer from a *virtual* empty stream whose id the next `append` adopts, so a
//! subscriber handed `(id, 0)` before the first message resumes in the stream that message
//! starts. The id is derived (SHA-256) from a random per-store secret, the channel and a
//! generation counter of one of [`GENERATION_SLOTS`] slots (the channel's hash picks it); the
//! reaper bumps the slot's counter when it drops a record, so a channel that comes back after
//! being reaped gets a new id and positions in the old stream fail closed. The cost of the
//! fixed table (32 KiB) is that a reap also changes the virtual id of the other *never
//! written* channels of that slot: a subscriber of such a channel gets a `stream_reset` on
//! resume (fail closed, never a silent gap).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::ids::fresh_stream_id;
use super::{
    Appended, HistoryError, HistoryPage, HistoryStore, Retention, StoredMessage, StreamPosition,
};

#[derive(Debug)]
struct Entry {
    message: StoredMessage,
    appended_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Claim {
    serial: u64,
    /// `None`: the window does not fit the clock (never expires).
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Stream {
    stream_id: String,
    serial: u64,
    messages: VecDeque<Entry>,
    dedup: HashMap<String, Claim>,
    /// Claims with an expiry, in insertion order, for amortised pruning. An entry whose claim
    /// was replaced is skipped when pruned (its expiry no longer matches the map).
    dedup_order: VecDeque<(Instant, String)>,
    /// Creation or last append: what [`MemoryHistoryStore::reap_idle`] measures idleness by.
    touched: Instant,
}

impl Stream {
    fn new(stream_id: String) -> Self {
        Stream {
            stream_id,
            serial: 0,
            messages: VecDeque::new(),
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    /// Nothing worth keeping: idle for `max_age`, nothing retained, no live dedup claim.
    fn idle(&mut self, retention: Retention, now: Instant) -> bool {
        self.trim(retention, now);
        self.prune_dedup(now);
        self.messages.is_empty()
            && self.dedup.is_empty()
            && now.saturating_duration_since(self.touched) > retention.max_age
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            stream_id: self.stream_id.clone(),
            serial: self.serial,
        }
    }

    fn trim(&mut self, retention: Retention, now: Instant) {
        while self.messages.len() > retention.max_messages {
            self.messages.pop_front();
        }
        while self
            .messages
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.appended_at) > retention.max_age)
        {
            self.messages.pop_front();
        }
    }

    fn prune_dedup(&mut self, now: Instant) {
        while let Some((at, _)) = self.dedup_order.front() {
            if *at > now {
                break;
            }
            if let Some((at, id)) = self.dedup_order.pop_front() {
                if self
                    .dedup
                    .get(&id)
                    .is_some_and(|c| c.expires_at == Some(at))
                {
                    self.dedup.remove(&id);
                }
            }
        }
    }

    fn live_claim(&self, message_id: &str, now: Instant) -> Option<u64> {
        let c = self.dedup.get(message_id)?;
        match c.expires_at {
            Some(at) if at <= now => None,
            _ => Some(c.serial),
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.messages.front().map(|e| e.message.serial)
    }

    fn page(&self, messages: Vec<StoredMessage>) -> HistoryPage {
        HistoryPage {
            stream_id: self.stream_id.clone(),
            messages,
            oldest_serial: self.oldest(),
            newest_serial: self.serial,
        }
    }
}

/// Generation counters of the virtual stream ids (see the module docs).
pub const GENERATION_SLOTS: usize = 4096;

/// The ids of streams that have no record (see the module docs).
struct Generations {
    secret: [u8; 16],
    slots: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations").finish_non_exhaustive()
    }
}

impl Generations {
    fn new() -> Self {
        Generations {
            secret: rand::random(),
            slots: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The channel's digest and its slot.
    fn slot(&self, key: &str) -> ([u8; 32], &AtomicU64) {
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.secret)
            .chain_update(key.as_bytes())
            .finalize()
            .into();
        let i = usize::from(u16::from_le_bytes([digest[0], digest[1]])) % GENERATION_SLOTS;
        (digest, &self.slots[i])
    }

    /// The id a stream of `key` created now gets (32 lowercase hex digits).
    fn virtual_id(&self, key: &str) -> String {
        let (digest, slot) = self.slot(key);
        let id = Sha256::new()
            .chain_update(digest)
            .chain_update(slot.load(Ordering::SeqCst).to_le_bytes())
            .finalize();
        hex::encode(&id[..16])
    }

    /// `key`'s record is dropped: its next stream must get another id.
    fn bump(&self, key: &str) {
        self.slot(key).1.fetch_add(1, Ordering::SeqCst);
    }
}

/// In-memory [`HistoryStore`]. See the module docs.
#[derive(Debug)]
pub struct MemoryHistoryStore {
    retention: Retention,
    streams: DashMap<String, Arc<Mutex<Stream>>>,
    generations: Generations,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `{len(app)}:{app}:{channel}`: injective over (app, channel).
fn stream_key(app_id: &str, channel: &str) -> String {
    format!("{}:{app_id}:{channel}", app_id.len())
}

impl MemoryHistoryStore {
    /// An empty store keeping `retention`.
    pub fn new(retention: Retention) -> Self {
        MemoryHistoryStore {
            retention,
            streams: DashMap::new(),
            generations: Generations::new(),
        }
    }

    /// The retention this store applies.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Drop the records of idle channels (see the module docs); returns how many.
    pub fn reap_idle(&self) -> usize {
        let now = Instant::now();
        let before = self.streams.len();
        // `strong_count == 1`: only the map holds it, so no operation is in flight on it (an
        // operation clones the `Arc` under the map's shard lock, which `retain` holds).
        self.streams.retain(|key, s| {
            let keep = Arc::strong_count(s) > 1
                || s.try_lock()
                    .is_none_or(|mut st| !st.idle(self.retention, now));
            if !keep {
                // Under the shard's write lock: a reader that no longer finds the record
                // already sees the new generation.
                self.generations.bump(key);
            }
            keep
        });
        // A table sized for a flood of channels would stay that size: shrink it when mostly
        // empty (the caller may then give the memory back to the system).
        let cap = self.streams.capacity();
        if cap > 1024 && self.streams.len().saturating_mul(4) < cap {
            self.streams.shrink_to_fit();
        }
        before.saturating_sub(self.streams.len())
    }

    /// Channels with a record now.
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// The channel's record, created (with its virtual id) when missing: writes only.
    fn stream(&self, app_id: &str, channel: &str) -> Arc<Mutex<Stream>> {
        let key = stream_key(app_id, channel);
        if let Some(s) = self.streams.get(&key) {
            return Arc::clone(&s);
        }
        // The id is derived under the shard's write lock, so a reap of this channel (which
        // bumps its generation under the same lock) cannot slip in between.
        let entry = self.streams.entry(key);
        let id = self.generations.virtual_id(entry.key());
        Arc::clone(&entry.or_insert_with(|| Arc::new(Mutex::new(Stream::new(id)))))
    }

    /// The channel's record if it has one; reads never create one.
    fn existing(&self, app_id: &str, channel: &str) -> Result<Arc<Mutex<Stream>>, String> {
        let key = stream_key(app_id, channel);
        match self.streams.get(&key) {
            Some(s) => Ok(Arc::clone(&s)),
            None => Err(self.generations.virtual_id(&key)),
        }
    }

    /// An empty page of the stream that has no record yet.
    fn virtual_page(stream_id: String) -> HistoryPage {
        HistoryPage {
            stream_id,
            messages: Vec::new(),
            oldest_serial: None,
            newest_serial: 0,
        }
    }
}

impl Default for MemoryHistoryStore {
    fn default() -> Self {
        MemoryHistoryStore::new(Retention::default())
    }
}

#[async_trait]
impl HistoryStore for MemoryHistoryStore {
    async fn append(
        &self,
        app_id: &str,
        channel: &str,
        message_id: &str,
        dedup_window: Duration,
        frame_for: &(dyn for<'s> Fn(&'s str, u64) -> Bytes + Send + Sync),
    ) -> Result<Appended, HistoryError> {
        let stream = self.stream(app_id, channel);
        let mut s = stream.lock();
        let now = Instant::now();
        s.prune_dedup(now);
        let dedup = !message_id.is_empty() && !dedup_window.is_zero();
        if dedup {
            if let Some(serial) = s.live_claim(message_id, now) {
                return Ok(Appended {
                    stream_id: s.stream_id.clone(),
                    serial,
                    duplicate: true,
                });
            }
        }
        let serial = s
            .serial
            .checked_add(1)
            .ok_or_else(|| HistoryError::Corrupt("serial space exhausted".to_owned()))?;
        let frame = frame_for(&s.stream_id, serial);
        s.serial = serial;
        s.touched = now;
        s.messages.push_back(Entry {
            message: StoredMessage {
                serial,
                message_id: message_id.to_owned(),
                published_at_ms: now_ms(),
                frame,
            },
            appended_at: now,
        });
        if dedup {
            let expires_at = now.checked_add(dedup_window);
            s.dedup
                .insert(message_id.to_owned(), Claim { serial, expires_at });
            if let Some(at) = expires_at {
                s.dedup_order.push_back((at, message_id.to_owned()));
            }
        }
        s.trim(self.retention, now);
        Ok(Appended {
            stream_id: s.stream_id.clone(),
            serial,
            duplicate: false,
        })
    }

    async fn head(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError> {
        match self.existing(app_id, channel) {
            Ok(stream) => Ok(stream.lock().position()),
            Err(stream_id) => Ok(StreamPosition {
                stream_id,
                serial: 0,
            }),
        }
    }

    async fn read_after(
        &self,
        app_id: &str,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let stream = match self.existing(app_id, channel) {
            Ok(stream) => stream,
            Err(stream_id) => return Ok(Self::virtual_page(stream_id)),
        };
        let mut s = stream.lock();
        s.trim(self.retention, Instant::now());
        let skip = match s.oldest() {
            // Index of `after + 1`: everything before it is skipped.
            Some(oldest) if after >= oldest => {
                usize::try_from(after - oldest + 1).unwrap_or(usize::MAX)
            }
            _ => 0,
        };
        let messages = s
            .messages
            .iter()
            .skip(skip)
            .take(limit)
            .map(|e| e.message.clone())
            .collect();
        Ok(s.page(messages))
    }

    async fn read_before(
        &self,
        app_id: &str,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError> {
        let stream = match self.existing(app_id, channel) {
            Ok(stream) => stream,
            Err(stream_id) => return Ok(Self::virtual_page(stream_id)),
        };
        let mut s = stream.lock();
        s.trim(self.retention, Instant::now());
        // Number of retained messages with serial < before.
        let count = match (before, s.oldest()) {
            (None, _) => s.messages.len(),
            (Some(_), None) => 0,
            (Some(b), Some(oldest)) => usize::try_from(b.saturating_sub(oldest))
                .unwrap_or(usize::MAX)
                .min(s.messages.len()),
        };
        let messages = s
            .messages
            .iter()
            .take(count)
            .rev()
            .take(limit)
            .map(|e| e.message.clone())
            .collect();
        Ok(s.page(messages))
    }

    async fn reset(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError> {
        let stream = self.stream(app_id, channel);
        let mut s = stream.lock();
        *s = Stream::new(fresh_stream_id());
        Ok(s.position())
    }

    fn channels_held(&self) -> Option<usize> {
        Some(self.streams())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::history::conformance;

    #[tokio::test]
    async fn idle_streams_are_reaped_and_come_back_as_new_streams() {
        let retention = Retention {
            max_messages: 10,
            max_age: Duration::from_millis(20),
        };
        let store = MemoryHistoryStore::new(retention);
        let frame = |sid: &str, n: u64| Bytes::from(format!("{sid}/{n}"));
        let first = store
            .append("a", "busy", "", Duration::ZERO, &frame)
            .await
            .unwrap();
        // A live dedup claim keeps its stream.
        store
            .append("a", "claimed", "m1", Duration::from_secs(60), &frame)
            .await
            .unwrap();
        assert_eq!(store.reap_idle(), 0, "nothing is idle yet");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.reap_idle(), 1);
        assert_eq!(store.streams(), 1);
        let again = store.head("a", "busy").await.unwrap();
        assert_ne!(again.stream_id, first.stream_id, "a new stream");
        assert_eq!(again.serial, 0);
        let next = store
            .append("a", "busy", "", Duration::ZERO, &frame)
            .await
            .unwrap();
        assert_eq!(
            next.stream_id, again.stream_id,
            "the id handed out is adopted"
        );
        assert_eq!(next.serial, 1);
    }

    #[tokio::test]
    async fn reads_never_create_state() {
        let store = MemoryHistoryStore::new(Retention::default());
        let frame = |sid: &str, n: u64| Bytes::from(format!("{sid}/{n}"));
        let mut handed_out = Vec::new();
        for i in 0..1000 {
            let ch = format!("probe-{i}");
            let head = store.head("a", &ch).await.unwrap();
            assert_eq!(head.serial, 0);
            assert_eq!(head.stream_id.len(), 32);
            let after = store.read_after("a", &ch, 0, 10).await.unwrap();
            let before = store.read_before("a", &ch, None, 10).await.unwrap();
            assert!(after.messages.is_empty() && before.messages.is_empty());
            assert_eq!(after.stream_id, head.stream_id);
            assert_eq!(before.stream_id, head.stream_id);
            assert_eq!(after.oldest_serial, None);
            handed_out.push(head.stream_id);
        }
        assert_eq!(store.streams(), 0, "reads left records behind");
        assert_ne!(handed_out[0], handed_out[1], "ids differ per channel");
        assert_ne!(
            store.head("b", "probe-0").await.unwrap().stream_id,
            handed_out[0],
            "ids differ per app"
        );
        // The first append continues the stream a reader was shown.
        let a = store
            .append("a", "probe-7", "", Duration::ZERO, &frame)
            .await
            .unwrap();
        assert_eq!(
            (a.stream_id.as_str(), a.serial),
            (handed_out[7].as_str(), 1)
        );
        // Another store (a restarted process) hands out other ids.
        let other = MemoryHistoryStore::new(Retention::default());
        assert_ne!(
            other.head("a", "probe-0").await.unwrap().stream_id,
            handed_out[0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_passes_conformance() {
        let store: Arc<dyn HistoryStore> =
            Arc::new(MemoryHistoryStore::new(conformance::RETENTION));
        conformance::run_all(&store, "mem").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_age_retention() {
        let store: Arc<dyn HistoryStore> =
            Arc::new(MemoryHistoryStore::new(conformance::AGE_RETENTION));
        conformance::age_retention(&store, "mem-age").await;
    }

    fn frame(sid: &str, serial: u64) -> Bytes {
        Bytes::from(format!("{sid}/{serial}"))
    }

    #[tokio::test]
    async fn empty_message_id_and_zero_window_do_not_dedup() {
        let store = MemoryHistoryStore::default();
        let w = Duration::from_secs(60);
        assert_eq!(
            store.append("a", "c", "", w, &frame).await.unwrap().serial,
            1
        );
        assert_eq!(
            store.append("a", "c", "", w, &frame).await.unwrap().serial,
            2
        );
        assert_eq!(
            store
                .append("a", "c", "x", Duration::ZERO, &frame)
                .await
                .unwrap()
                .serial,
            3
        );
        assert_eq!(
            store
                .append("a", "c", "x", Duration::ZERO, &frame)
                .await
                .unwrap()
                .serial,
            4
        );
        // Huge windows do not overflow the clock.
        assert_eq!(
            store
                .append("a", "c", "y", Duration::MAX, &frame)
                .await
                .unwrap()
                .serial,
            5
        );
        assert!(
            store
                .append("a", "c", "y", Duration::MAX, &frame)
                .await
                .unwrap()
                .duplicate
        );
    }

    #[tokio::test]
    async fn dedup_claims_are_pruned_after_their_window() {
        let store = MemoryHistoryStore::default();
        let short = Duration::from_millis(20);
        for i in 0..100 {
            store
                .append("a", "c", &format!("m{i}"), short, &frame)
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        store.append("a", "c", "last", short, &frame).await.unwrap();
        let stream = store.stream("a", "c");
        let s = stream.lock();
        assert_eq!(s.dedup.len(), 1);
        assert_eq!(s.dedup_order.len(), 1);
    }

    #[tokio::test]
    async fn keys_do_not_collide_across_apps() {
        let store = MemoryHistoryStore::default();
        let w = Duration::from_secs(1);
        store.append("a:b", "c", "1", w, &frame).await.unwrap();
        assert_eq!(store.head("a", "b:c").await.unwrap().serial, 0);
    }

    #[tokio::test]
    async fn zero_count_retention_keeps_nothing_but_counts() {
        let store = MemoryHistoryStore::new(Retention {
            max_messages: 0,
            max_age: Duration::from_secs(60),
        });
        let w = Duration::from_secs(1);
        store.append("a", "c", "1", w, &frame).await.unwrap();
        store.append("a", "c", "2", w, &frame).await.unwrap();
        let page = store.read_after("a", "c", 0, 10).await.unwrap();
        assert!(page.messages.is_empty());
        assert_eq!((page.oldest_serial, page.newest_serial), (None, 2));
    }
}
