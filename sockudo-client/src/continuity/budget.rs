//! The bound on frames held behind gaps and resume verdicts: per channel and client-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many frames may wait behind gaps and resume verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GapLimits {
    /// Per channel.
    pub per_channel: usize,
    /// Across every channel of a client.
    pub total: usize,
}

impl Default for GapLimits {
    fn default() -> Self {
        GapLimits {
            per_channel: 1000,
            total: 10_000,
        }
    }
}

/// The client-wide allowance of held frames, shared by every channel's
/// [`Continuity`](super::Continuity).
#[derive(Debug, Clone)]
pub struct HoldBudget {
    limits: GapLimits,
    used: Arc<AtomicUsize>,
}

impl HoldBudget {
    /// A budget of `limits`, nothing held yet.
    pub fn new(limits: GapLimits) -> Self {
        HoldBudget {
            limits,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Frames held right now, all channels.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Reserve room for one more frame in a channel already holding `held_here`.
    pub(super) fn try_take(&self, held_here: usize) -> bool {
        if held_here >= self.limits.per_channel {
            return false;
        }
        let total = self.limits.total;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < total).then_some(u + 1)
            })
            .is_ok()
    }

    pub(super) fn give(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }
}
