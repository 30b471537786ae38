//! One monotonic time origin for the whole process.
//!
//! Publishers and clients live in the same process, so a send timestamp can be expressed as
//! nanoseconds since a shared [`Instant`] and compared with the receipt time directly, with no
//! wall-clock skew.

use std::time::{Duration, Instant};

/// Shared monotonic origin; `now_ns` is nanoseconds since it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// Start the clock now.
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds elapsed since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The [`tokio::time::Instant`] that is `ns` nanoseconds after the origin.
    pub fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + Duration::from_nanos(ns))
    }
}
