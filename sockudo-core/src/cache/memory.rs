//! In-process [`Cache`]: one node only, the embedded default.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;

use super::{Cache, CacheError};

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// Memory cache. Expired entries are dropped on access and by [`MemoryCache::purge_expired`],
/// which a node calls periodically so abandoned keys do not accumulate.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: DashMap<String, Entry>,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remove every expired entry; returns how many were removed.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let before = self.entries.len();
        self.entries.retain(|_, e| e.live(now));
        before.saturating_sub(self.entries.len())
    }

    /// Entries held (expired ones included until purged).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|d| Instant::now() + d)
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        let now = Instant::now();
        // Read under the shard's read guard and release it before removing: `remove_if`
        // takes the write lock of the same shard, so holding the guard across it deadlocks.
        let found = self
            .entries
            .get(key)
            .map(|e| e.live(now).then(|| e.value.clone()));
        match found {
            Some(Some(value)) => Ok(Some(value)),
            Some(None) => {
                drop(self.entries.remove_if(key, |_, e| !e.live(now)));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), CacheError> {
        self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires_at: deadline(ttl),
            },
        );
        Ok(())
    }

    async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError> {
        let now = Instant::now();
        // The entry API holds the shard lock across check and write: that is the atomicity
        // the contract promises.
        let mut stored = false;
        self.entries
            .entry(key.to_owned())
            .and_modify(|e| {
                if !e.live(now) {
                    *e = Entry {
                        value: value.clone(),
                        expires_at: deadline(ttl),
                    };
                    stored = true;
                }
            })
            .or_insert_with(|| {
                stored = true;
                Entry {
                    value: value.clone(),
                    expires_at: deadline(ttl),
                }
            });
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let now = Instant::now();
        Ok(self.entries.remove(key).is_some_and(|(_, e)| e.live(now)))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, CacheError> {
        let now = Instant::now();
        let entry = self.entries.entry(key.to_owned());
        let current = match &entry {
            dashmap::Entry::Occupied(o) if o.get().live(now) => Some(o.get().value.clone()),
            _ => None,
        };
        if current.as_deref() != expected {
            return Ok(false);
        }
        entry.insert(Entry {
            value: new,
            expires_at: deadline(ttl),
        });
        Ok(true)
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, CacheError> {
        let now = Instant::now();
        let mut entry = self.entries.entry(key.to_owned()).or_insert_with(|| Entry {
            value: Bytes::from_static(b"0"),
            expires_at: deadline(ttl),
        });
        if !entry.live(now) {
            *entry = Entry {
                value: Bytes::from_static(b"0"),
                expires_at: deadline(ttl),
            };
        }
        let current: i64 = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(CacheError::NotAnInteger)?;
        let next = current.checked_add(delta).ok_or(CacheError::NotAnInteger)?;
        entry.value = Bytes::from(next.to_string());
        Ok(next)
    }
}
