//! The shared [`Cache`] contract and its in-memory implementation.
//!
//! Every node of a cluster shares one cache (rate limits, idempotency records, cache-channel
//! payloads), so the contract is written for the distributed case; the memory implementation
//! honours it within one process, `RedisCache` (feature `redis`) across nodes.
//!
//! Every implementation must pass [`conformance::run_all`], the executable form of the
//! contract below.

#[doc(hidden)]
pub mod conformance;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "redis")]
pub use self::redis::{RedisCache, RedisCacheOptions};
pub use memory::MemoryCache;

/// Why the cache could not answer. Callers that protect effects (idempotency) must fail
/// closed on any error: an error never means "absent".
#[derive(Debug, thiserror::Error, Clone)]
pub enum CacheError {
    /// The cache cannot answer.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// An increment found a value that is not an integer.
    #[error("cache value is not an integer")]
    NotAnInteger,
}

/// Key/value store with expiry shared by all nodes.
///
/// Contract:
/// - Each operation is atomic on its key; there is no multi-key atomicity.
/// - A value whose TTL has passed is never returned (expiry may be lazy, visibility is not).
/// - Operations on one key from one caller are linearizable: a `get` after a completed `set`
///   sees it (or a later write).
/// - `Err` means the outcome is unknown; callers must not treat it as a miss.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value under `key` (`None`: absent or expired).
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError>;

    /// Store `value`, replacing any previous one; `None` TTL keeps it until deleted.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError>;

    /// Store only if the key holds no live value. Returns whether this call stored it. The
    /// check and the write are one atomic step cluster-wide: of concurrent callers exactly one
    /// gets `true`.
    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError>;

    /// Delete; returns whether a live value was removed.
    async fn delete(&self, key: &str) -> Result<bool, CacheError>;

    /// Add `delta` to the integer at `key` (absent counts as 0) and return the new value. The
    /// TTL is applied only when this call creates the key, so fixed windows expire on time
    /// however often they are incremented.
    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, CacheError>;

    /// Replace the value at `key` with `new` only if it currently holds `expected` (`None`:
    /// absent or expired). Returns whether the swap happened. Check and write are one atomic
    /// step cluster-wide, which is what lock-free algorithms on shared state (GCRA rate
    /// limits) build on.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError>;

    /// Whether the backend currently answers (readiness probes).
    async fn ping(&self) -> Result<(), CacheError> {
        self.get("__sockudo_ping").await.map(|_| ())
    }
}
