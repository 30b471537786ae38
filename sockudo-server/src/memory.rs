//! Giving memory back to the operating system once per-channel state is reclaimed.
//!
//! A flood of channels (100,000 subscriptions, then gone) leaves the node's maps with tables
//! sized for the flood and glibc's allocator with the freed pages on its free lists: the
//! state is gone but the resident set stays at the peak. The reapers call
//! [`shrink_sparse`] on the maps they emptied and then [`give_back`], so RSS returns near
//! where it was before the flood.

use std::hash::{BuildHasher, Hash};

use dashmap::DashMap;

/// Tables at most this big are never shrunk (not worth a pass over the shards).
const MIN_CAPACITY: usize = 1024;

/// Shrink `map`'s table when it holds under a quarter of its capacity; returns whether it
/// did. Each shard is write-locked briefly while it shrinks.
pub(crate) fn shrink_sparse<K, V, S>(map: &DashMap<K, V, S>) -> bool
where
    K: Eq + Hash,
    S: BuildHasher + Clone,
{
    let cap = map.capacity();
    if cap <= MIN_CAPACITY || map.len().saturating_mul(4) >= cap {
        return false;
    }
    map.shrink_to_fit();
    true
}

/// Ask the allocator to return the free pages of every arena to the operating system
/// (glibc's `malloc_trim(0)`; it keeps freed memory otherwise). Called by the reapers only
/// after they freed something, off the fanout path: it walks and locks each arena in turn.
/// Returns whether anything was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn give_back() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: glibc's malloc_trim takes no pointer and touches only the allocator's own
    // free lists, under the allocator's locks; any thread may call it at any time.
    unsafe { malloc_trim(0) == 1 }
}

/// Elsewhere (musl, other systems) nothing: those allocators give memory back themselves or
/// have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn give_back() -> bool {
    false
}
