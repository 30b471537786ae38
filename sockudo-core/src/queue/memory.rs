//! [`Queue`] in process memory: the embedded default for single-node deployments.
//!
//! Jobs live as long as the process. Per queue: a job table, a ready set ordered by due time
//! and a leased set ordered by lease deadline (both `BTreeSet<(Instant, id)>`), and a bounded
//! dead-letter deque. Every operation takes one mutex for the queue map; operations are short
//! (logarithmic set updates) so contention stays low at webhook rates. Expired leases are
//! moved back to ready at the start of every `claim`, as in the Redis implementation.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use super::{Job, JobId, NackOutcome, Queue, QueueError, QueueStats};

/// Dead letters kept per queue when not configured otherwise.
pub const DEFAULT_DEAD_LETTER_CAP: usize = 10_000;

#[derive(Debug)]
struct Entry {
    payload: Bytes,
    attempts: u32,
    enqueued: Instant,
    /// Where the job sits: `Ready(due)` or `Leased(deadline)`.
    slot: Slot,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Ready(Instant),
    Leased(Instant),
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    jobs: HashMap<u64, Entry>,
    ready: BTreeSet<(Instant, u64)>,
    leased: BTreeSet<(Instant, u64)>,
    /// Pending jobs by enqueue time (oldest age without a scan).
    by_age: BTreeSet<(Instant, u64)>,
    dead: VecDeque<Job>,
}

impl State {
    fn unslot(&mut self, id: u64, slot: Slot) {
        match slot {
            Slot::Ready(t) => self.ready.remove(&(t, id)),
            Slot::Leased(t) => self.leased.remove(&(t, id)),
        };
    }

    fn reap(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.leased.first() {
            if deadline > now {
                break;
            }
            self.leased.remove(&(deadline, id));
            if let Some(e) = self.jobs.get_mut(&id) {
                e.slot = Slot::Ready(now);
                self.ready.insert((now, id));
            }
        }
    }
}

/// In-memory [`Queue`]. Clones are not shared: wrap it in an `Arc`.
#[derive(Debug)]
pub struct MemoryQueue {
    queues: Mutex<HashMap<String, State>>,
    dead_letter_cap: usize,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

fn parse_id(id: &JobId) -> Option<u64> {
    id.0.parse().ok()
}

impl MemoryQueue {
    /// An empty in-process queue.
    pub fn new() -> Self {
        Self::with_dead_letter_cap(DEFAULT_DEAD_LETTER_CAP)
    }

    /// Keep at most `cap` dead letters per queue (oldest dropped first).
    pub fn with_dead_letter_cap(cap: usize) -> Self {
        MemoryQueue {
            queues: Mutex::new(HashMap::new()),
            dead_letter_cap: cap,
        }
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn enqueue(
        &self,
        queue: &str,
        payload: Bytes,
        delay: Duration,
    ) -> Result<JobId, QueueError> {
        let now = Instant::now();
        let due = now
            .checked_add(delay)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut queues = self.queues.lock();
        let q = queues.entry(queue.to_owned()).or_default();
        q.next_id += 1;
        let id = q.next_id;
        q.jobs.insert(
            id,
            Entry {
                payload,
                attempts: 0,
                enqueued: now,
                slot: Slot::Ready(due),
            },
        );
        q.ready.insert((due, id));
        q.by_age.insert((now, id));
        Ok(JobId(id.to_string()))
    }

    async fn claim(
        &self,
        queue: &str,
        _consumer: &str,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Job>, QueueError> {
        let now = Instant::now();
        let deadline = now
            .checked_add(lease)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        q.reap(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(due, id)) = q.ready.first() else {
                break;
            };
            if due > now {
                break;
            }
            q.ready.remove(&(due, id));
            let Some(e) = q.jobs.get_mut(&id) else {
                continue;
            };
            e.attempts = e.attempts.saturating_add(1);
            e.slot = Slot::Leased(deadline);
            out.push(Job {
                id: JobId(id.to_string()),
                payload: e.payload.clone(),
                attempts: e.attempts,
            });
            q.leased.insert((deadline, id));
        }
        Ok(out)
    }

    async fn ack(&self, queue: &str, id: &JobId) -> Result<bool, QueueError> {
        let Some(n) = parse_id(id) else {
            return Ok(false);
        };
        let mut queues = self.queues.lock();
        let Some(q) = queues.get_mut(queue) else {
            return Ok(false);
        };
        match q.jobs.remove(&n) {
            Some(e) => {
                q.unslot(n, e.slot);
                q.by_age.remove(&(e.enqueued, n));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn nack(
        &self,
        queue: &str,
        id: &JobId,
        retry_in: Duration,
        max_attempts: u32,
    ) -> Result<NackOutcome, QueueError> {
        let unknown = || QueueError::UnknownJob(id.clone());
        let n = parse_id(id).ok_or_else(unknown)?;
        let now = Instant::now();
        let mut queues = self.queues.lock();
        let q = queues.get_mut(queue).ok_or_else(unknown)?;
        let slot = q.jobs.get(&n).ok_or_else(unknown)?.slot;
        q.unslot(n, slot);
        let attempts = q.jobs.get(&n).map_or(0, |e| e.attempts);
        if attempts >= max_attempts {
            if let Some(e) = q.jobs.remove(&n) {
                q.by_age.remove(&(e.enqueued, n));
                q.dead.push_front(Job {
                    id: id.clone(),
                    payload: e.payload,
                    attempts: e.attempts,
                });
                q.dead.truncate(self.dead_letter_cap);
            }
            return Ok(NackOutcome::DeadLettered);
        }
        let due = now.checked_add(retry_in).unwrap_or(now);
        if let Some(e) = q.jobs.get_mut(&n) {
            e.slot = Slot::Ready(due);
        }
        q.ready.insert((due, n));
        Ok(NackOutcome::Retried)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let now = Instant::now();
        let queues = self.queues.lock();
        let Some(q) = queues.get(queue) else {
            return Ok(QueueStats::default());
        };
        let oldest = q.by_age.first().map(|&(t, _)| t);
        Ok(QueueStats {
            depth: q.jobs.len() as u64,
            oldest_age: oldest.map(|t| now.saturating_duration_since(t)),
            dead_letters: q.dead.len() as u64,
        })
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<Job>, QueueError> {
        let queues = self.queues.lock();
        Ok(queues
            .get(queue)
            .map(|q| q.dead.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
