//! Counters the application can read ([`Client::stats`](crate::Client::stats)).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// A snapshot of the client's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Redeliveries dropped by the dedup window, all channels.
    pub duplicates_dropped: u64,
    /// Redeliveries dropped per channel.
    pub duplicates_by_channel: BTreeMap<String, u64>,
    /// Messages handed to subscriptions.
    pub messages_delivered: u64,
    /// Events dropped because a subscription's buffer was full.
    pub slow_consumer_drops: u64,
    /// `RecoveryFailed` markers with code `client_lagged` put on subscription streams (one
    /// per stretch of dropped events).
    pub subscriptions_lagged: u64,
    /// Encrypted events that could not be decrypted.
    pub decryption_failures: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// V2 channels recovered by resume.
    pub resumes_succeeded: u64,
    /// V2 channels whose resume failed (including client-side timeouts).
    pub resumes_failed: u64,
    /// V2 live gaps: a frame arrived with a serial beyond the next one, so later frames were
    /// held and a `sockudo:resume` sent for the channel.
    pub gaps_detected: u64,
    /// Of those, gaps closed with every missing serial delivered (replay or late arrival).
    pub gaps_filled: u64,
    /// V2 `RecoveryFailed` events surfaced for any reason (resume verdicts, live gaps the
    /// server could not fill, stream resets, unsolicited `resume_failed`, timeouts, the hold
    /// bound); `client_lagged` markers are counted in `subscriptions_lagged` instead.
    pub recovery_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    pub duplicates_dropped: AtomicU64,
    pub duplicates_by_channel: Mutex<BTreeMap<String, u64>>,
    pub messages_delivered: AtomicU64,
    pub slow_consumer_drops: AtomicU64,
    pub subscriptions_lagged: AtomicU64,
    pub decryption_failures: AtomicU64,
    pub reconnects: AtomicU64,
    pub resumes_succeeded: AtomicU64,
    pub resumes_failed: AtomicU64,
    pub gaps_detected: AtomicU64,
    pub gaps_filled: AtomicU64,
    pub recovery_failures: AtomicU64,
}

impl StatsCell {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn duplicate(&self, channel: &str) {
        Self::bump(&self.duplicates_dropped);
        *self
            .duplicates_by_channel
            .lock()
            .entry(channel.to_owned())
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            duplicates_dropped: get(&self.duplicates_dropped),
            duplicates_by_channel: self.duplicates_by_channel.lock().clone(),
            messages_delivered: get(&self.messages_delivered),
            slow_consumer_drops: get(&self.slow_consumer_drops),
            subscriptions_lagged: get(&self.subscriptions_lagged),
            decryption_failures: get(&self.decryption_failures),
            reconnects: get(&self.reconnects),
            resumes_succeeded: get(&self.resumes_succeeded),
            resumes_failed: get(&self.resumes_failed),
            gaps_detected: get(&self.gaps_detected),
            gaps_filled: get(&self.gaps_filled),
            recovery_failures: get(&self.recovery_failures),
        }
    }
}

static LIVE_CONNECTION_TASKS: AtomicUsize = AtomicUsize::new(0);

/// Connection tasks alive in this process (each [`Client`](crate::Client) has one until it
/// is closed or every handle is dropped). For leak checks.
pub fn live_connection_tasks() -> usize {
    LIVE_CONNECTION_TASKS.load(Ordering::SeqCst)
}

/// Counts a connection task for as long as it lives.
#[derive(Debug)]
pub(crate) struct TaskGuard(());

impl TaskGuard {
    pub fn new() -> Self {
        LIVE_CONNECTION_TASKS.fetch_add(1, Ordering::SeqCst);
        TaskGuard(())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        LIVE_CONNECTION_TASKS.fetch_sub(1, Ordering::SeqCst);
    }
}
