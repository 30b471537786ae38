//! The killer: SIGKILL a random node every interval and start it again after a delay, under
//! the same node id or a new one. [`NodeLiveness`] tells the publisher which nodes are up.
//! Public so other crash scenarios (e.g. the webhook one) reuse the same schedule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::chaos::records::KillRecord;
use crate::cluster::Cluster;

/// Restart attempts per kill before the node is left down (and the failure recorded).
const RESTART_ATTEMPTS: usize = 3;
/// Upper bound of the seeded delay added to each kill time, so kills do not always hit the
/// same phase of the publisher's ticks.
const MAX_JITTER_MS: u64 = 250;

/// Which nodes are up, as far as the killer knows (a node is marked down just before its
/// kill and up once its restart answered `/health`).
#[derive(Debug)]
pub struct NodeLiveness {
    up: Vec<AtomicBool>,
}

impl NodeLiveness {
    /// `n` nodes, all up.
    pub fn new(n: usize) -> Self {
        NodeLiveness {
            up: (0..n).map(|_| AtomicBool::new(true)).collect(),
        }
    }

    fn set(&self, node: usize, up: bool) {
        if let Some(flag) = self.up.get(node) {
            flag.store(up, Ordering::SeqCst);
        }
    }

    /// The first node at or after `from` (wrapping) that is up; `from` itself (wrapped) when
    /// none is, so a caller always has a node to try.
    pub fn next_up_from(&self, from: usize) -> usize {
        let n = self.up.len().max(1);
        (0..n)
            .map(|offset| (from + offset) % n)
            .find(|&i| self.up.get(i).is_some_and(|f| f.load(Ordering::SeqCst)))
            .unwrap_or(from % n)
    }
}

/// The killer's schedule.
#[derive(Debug)]
pub struct Killer {
    /// How many kills.
    pub kills: usize,
    /// Time between two kills (plus a seeded jitter below 250 ms).
    pub interval: Duration,
    /// How long a killed node stays down before its restart.
    pub restart_delay: Duration,
    /// Restart as `node-{i}-gen{k}` instead of under the same node id.
    pub new_node_ids: bool,
    /// Drives which node dies when.
    pub seed: u64,
    /// The start of the run: record times are offsets from it.
    pub start: Instant,
}

impl Killer {
    /// Kill `self.kills` times, one every `interval` (plus a seeded jitter below 250 ms)
    /// starting now, and return the records.
    pub async fn run(&self, cluster: &mut Cluster, liveness: &NodeLiveness) -> Vec<KillRecord> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let first = tokio::time::Instant::now();
        let mut records = Vec::with_capacity(self.kills);
        for k in 0..self.kills {
            let jitter = Duration::from_millis(rng.random_range(0..MAX_JITTER_MS));
            let at = first + self.interval * u32::try_from(k).unwrap_or(u32::MAX) + jitter;
            tokio::time::sleep_until(at).await;
            let node = rng.random_range(0..cluster.nodes().len());
            records.push(self.kill_and_restart(cluster, liveness, node, k).await);
        }
        records
    }

    async fn kill_and_restart(
        &self,
        cluster: &mut Cluster,
        liveness: &NodeLiveness,
        node: usize,
        k: usize,
    ) -> KillRecord {
        let node_id = cluster.node(node).node_id();
        liveness.set(node, false);
        let mut record = KillRecord {
            node,
            node_id: node_id.clone(),
            restarted_as: None,
            killed_at: self.start.elapsed(),
            restarted_at: None,
            restart_error: None,
        };
        if let Err(e) = cluster.kill_node(node) {
            record.restart_error = Some(format!("kill failed: {e}"));
        }
        tracing::info!(node, ?node_id, kill = k + 1, "chaos: node killed");
        tokio::time::sleep(self.restart_delay).await;
        let new_id = self
            .new_node_ids
            .then(|| format!("node-{node}-gen{}", k + 1));
        for _ in 0..RESTART_ATTEMPTS {
            let restarted = match &new_id {
                Some(id) => cluster.restart_node_as(node, id).await,
                None => cluster.restart_node(node).await,
            };
            match restarted {
                Ok(()) => {
                    record.restarted_at = Some(self.start.elapsed());
                    record.restarted_as = cluster.node(node).node_id();
                    liveness.set(node, true);
                    break;
                }
                Err(e) => record.restart_error = Some(e.to_string()),
            }
        }
        record
    }
}
