//! V2 message history: serials, stream generations, and the store that proves continuity.
//!
//! Every message published to a channel gets the next `serial` of the channel's current
//! stream; `stream_id` names the stream generation and changes whenever continuity may have
//! been lost (history reset, store flushed, retention cut below a position still in use). A
//! client position `(stream_id, serial)` can be resumed only if every serial after it up to
//! the head is still available in the same stream. [`recovery`] holds that decision as pure
//! code.

#[doc(hidden)]
pub mod conformance;
mod ids;
mod memory;
pub mod recovery;
#[cfg(feature = "redis")]
mod redis;

pub use memory::MemoryHistoryStore;
#[cfg(feature = "redis")]
pub use redis::RedisHistoryStore;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A position in a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// The stream generation.
    pub stream_id: String,
    /// Serial of the newest message (0: nothing published in this stream yet).
    pub serial: u64,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message's position in the stream.
    pub serial: u64,
    /// The message's identity.
    pub message_id: String,
    /// Unix milliseconds when it was appended.
    pub published_at_ms: u64,
    /// The complete V2 frame as delivered live (replayed verbatim).
    pub frame: Bytes,
}

/// What [`HistoryStore::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream the message was appended to.
    pub stream_id: String,
    /// Its serial.
    pub serial: u64,
    /// The message id was already appended within the dedup window: nothing new was stored
    /// and `serial` is the original one.
    pub duplicate: bool,
}

/// A contiguous range read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The stream read.
    pub stream_id: String,
    /// Messages, contiguous (no gaps): ascending from `read_after`, newest first from
    /// `read_before`.
    pub messages: Vec<StoredMessage>,
    /// Oldest serial still retained (None: stream empty or fully trimmed).
    pub oldest_serial: Option<u64>,
    /// Head of the stream at read time.
    pub newest_serial: u64,
}

/// Retention of a store: whichever limit is hit first trims the oldest messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept per channel.
    pub max_messages: usize,
    /// Oldest message age kept.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_messages: 1000,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Why the history store could not answer. Resume must fail closed
/// (`persistence_unavailable`) on any of these.
#[derive(Debug, thiserror::Error, Clone)]
pub enum HistoryError {
    /// The store cannot answer.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// A stored entry could not be decoded.
    #[error("corrupt history entry: {0}")]
    Corrupt(String),
}

/// Durable (or in-memory) per-channel message streams.
///
/// Contract:
/// - `append` assigns serials atomically: across every node sharing the store, serials of one
///   (app, channel) stream are 1, 2, 3, … without gaps or repeats among stored messages. It
///   stores `frame_for(stream_id, serial)`, the frame built with the assigned position.
/// - An `append` whose `message_id` was appended to the same channel within `dedup_window`
///   stores nothing and returns the original serial with `duplicate = true`.
/// - `read_after` returns messages with serial > `after`, ascending, contiguous, at most
///   `limit`, from the *current* stream; callers compare `stream_id` to the client's.
/// - A stream whose state was lost (store flushed, key evicted) must come back with a new
///   `stream_id`, never silently restart serials under the old one.
/// - `reset` starts a new stream generation (new `stream_id`, serial 0).
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Store a message under `message_id` and give it the next serial (a repeat within `dedup_window` returns the original); `frame_for(stream_id, serial)` builds the stored frame.
    async fn append(
        &self,
        app_id: &str,
        channel: &str,
        message_id: &str,
        dedup_window: Duration,
        // Explicit `for<'s>`: `#[async_trait]` would otherwise give the elided `&str` a
        // method-level lifetime, and implementations could not pass a local stream id.
        frame_for: &(dyn for<'s> Fn(&'s str, u64) -> Bytes + Send + Sync),
    ) -> Result<Appended, HistoryError>;

    /// The current head. A channel never written (or reclaimed) answers serial 0 and the
    /// `stream_id` its next `append` will use, so a subscriber handed that position resumes
    /// in the stream the first message starts; a later stream of the channel must get
    /// another id. Whether a read creates state is the store's: [`MemoryHistoryStore`]'s
    /// never do; the Redis store's (feature `redis`) create the channel's metadata key with the
    /// retention's TTL (the id must be the same on every node).
    async fn head(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError>;

    /// Messages with serial > `after`, oldest first, at most `limit`.
    async fn read_after(
        &self,
        app_id: &str,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError>;

    /// Messages with serial < `before` (or the newest when `None`), newest first, at most
    /// `limit` (backward paging for `channel_history`).
    async fn read_before(
        &self,
        app_id: &str,
        channel: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, HistoryError>;

    /// Start a new stream generation (new `stream_id`, serial 0).
    async fn reset(&self, app_id: &str, channel: &str) -> Result<StreamPosition, HistoryError>;

    /// Channels whose state this process holds, for stores that live in the process (and
    /// reclaim idle channels); `None` for shared stores, whose state lives in the store.
    fn channels_held(&self) -> Option<usize> {
        None
    }
}
