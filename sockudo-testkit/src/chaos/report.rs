//! [`ChaosReport`]: the figures of a chaos run, printed as a small table, and
//! [`ChaosReport::assert_clean`]. The accounting itself lives in `accounting`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// How many problem lines a report keeps (the counts are always complete).
pub const MAX_PROBLEMS: usize = 25;

/// The figures of a chaos run. Built from [`ChaosRecords`](crate::chaos::ChaosRecords) by
/// [`ChaosReport::from_records`].
///
/// Every subscriber is subscribed before the first publish and stays subscribed (its client
/// reconnects and resumes by itself), so each must receive every acknowledged message of its
/// channels exactly once, in serial order. The failure figures ([`failures`](Self::failures))
/// must all be zero for [`assert_clean`](Self::assert_clean) to pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosReport {
    /// The seed of the run (replay with `SOCKUDO_CHAOS_SEED`).
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Number of V2 subscribers.
    pub subscribers: usize,
    /// Number of V1 presence members.
    pub presence_members: usize,
    /// Wall time of the run.
    pub duration: Duration,
    /// Nodes killed (SIGKILL).
    pub kills: usize,
    /// Kills after which the node could not be started again (failure).
    pub restart_failures: usize,
    /// Messages acknowledged with a 2xx: these must be delivered.
    pub acknowledged: usize,
    /// Messages that got no 2xx within the retry budget (failure: with all but one node up,
    /// the cluster should always accept a publish).
    pub unacknowledged: usize,
    /// Publish attempts beyond the first, all messages.
    pub publish_retries: usize,
    /// Deliveries owed: for each subscriber, the acknowledged messages of its channels.
    pub expected_deliveries: usize,
    /// App messages handed to subscribers (duplicates included).
    pub deliveries: usize,
    /// Owed deliveries that never happened (failure).
    pub lost: usize,
    /// Of [`lost`](Self::lost): the subscriber's connection did not drop between the
    /// publish and 2 s after its acknowledgement, i.e. the subscriber's node stayed up.
    pub lost_while_connected: usize,
    /// Deliveries of a message id the subscriber already had on that channel (failure).
    pub duplicated: usize,
    /// Deliveries whose serial was not above every earlier serial of the same stream for
    /// that subscriber and channel, duplicates excluded (failure).
    pub out_of_order: usize,
    /// Times a subscriber's channel switched to another `stream_id` (failure: Redis, which
    /// holds the streams, is never stopped).
    pub stream_changes: usize,
    /// Deliveries without a serial or stream id, which V2 frames must carry (failure).
    pub unpositioned: usize,
    /// Deliveries of a message id that was never published (failure).
    pub unknown_deliveries: usize,
    /// Reconnects of all subscribers (client counter).
    pub reconnects: u64,
    /// Channel resumes that proved continuity (`Recovered`).
    pub resumes_ok: usize,
    /// Channel resumes that failed, by failure code (failure).
    pub resumes_failed: BTreeMap<String, usize>,
    /// `RecoveryFailed` events handed to subscriptions: one per failed channel resume, so the
    /// sum of [`resumes_failed`](Self::resumes_failed) (failure).
    pub recovery_failed_events: usize,
    /// Channels subscribed again without a resume after a reconnect (failure: a V2 client
    /// with a stored position must resume).
    pub unresumed_resubscribes: usize,
    /// Subscriptions that ended for good (failure).
    pub subscription_failures: usize,
    /// Redeliveries the clients' dedup windows dropped (informational: the server sent a
    /// message twice, the application never saw it).
    pub client_dedup_drops: u64,
    /// Events dropped because a subscription's buffer was full (failure).
    pub slow_consumer_drops: u64,
    /// Joins of the presence members (first joins and re-joins).
    pub presence_joins: usize,
    /// Nodes whose presence check was made.
    pub presence_nodes_checked: usize,
    /// Nodes whose member list differed from the joined members after settling (failure).
    pub presence_diverged: Vec<PresenceDivergence>,
    /// The first [`MAX_PROBLEMS`] problems, one line each.
    pub problems: Vec<String>,
}

/// How one node's presence list differed from the joined members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceDivergence {
    /// The node's index.
    pub node: usize,
    /// Joined members the node did not list.
    pub missing: BTreeSet<String>,
    /// Users the node listed that were not joined (ghosts).
    pub ghosts: BTreeSet<String>,
    /// The request's failure, when the node did not answer.
    pub error: Option<String>,
}

impl ChaosReport {
    /// Every failure figure with its name; a clean run has all zero.
    pub fn failures(&self) -> Vec<(&'static str, usize)> {
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        vec![
            ("restart failures", self.restart_failures),
            ("unacknowledged", self.unacknowledged),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("out of order", self.out_of_order),
            ("stream changes", self.stream_changes),
            ("unpositioned", self.unpositioned),
            ("unknown deliveries", self.unknown_deliveries),
            ("resumes failed", self.resumes_failed.values().sum()),
            ("RecoveryFailed events", self.recovery_failed_events),
            ("unresumed resubscribes", self.unresumed_resubscribes),
            ("subscription failures", self.subscription_failures),
            ("slow consumer drops", to_usize(self.slow_consumer_drops)),
            ("presence diverged", self.presence_diverged.len()),
        ]
    }

    /// Whether every failure figure is zero and something was actually tested (at least one
    /// acknowledged message).
    pub fn is_clean(&self) -> bool {
        self.acknowledged > 0 && self.failures().iter().all(|(_, n)| *n == 0)
    }

    /// Panic with the whole report unless [`is_clean`](Self::is_clean).
    #[track_caller]
    pub fn assert_clean(&self) {
        if !self.is_clean() {
            let failed: Vec<String> = self
                .failures()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            let failed = if self.acknowledged == 0 {
                "nothing was acknowledged".to_string()
            } else {
                failed.join(", ")
            };
            panic!("chaos run not clean ({failed})\n{self}");
        }
    }
}

/// One line of the table: name, value, note.
type Row = (&'static str, String, String);

fn row(name: &'static str, value: impl ToString, note: String) -> Row {
    (name, value.to_string(), note)
}

impl ChaosReport {
    /// The table rows about publishing and delivery.
    fn delivery_rows(&self) -> Vec<Row> {
        let unpositioned = format!("{} / {}", self.unpositioned, self.unknown_deliveries);
        vec![
            row(
                "kills",
                self.kills,
                format!("restart failures {}", self.restart_failures),
            ),
            row(
                "acknowledged",
                self.acknowledged,
                format!("retries {}", self.publish_retries),
            ),
            row("unacknowledged", self.unacknowledged, String::new()),
            row(
                "deliveries",
                self.deliveries,
                format!("expected {}", self.expected_deliveries),
            ),
            row(
                "lost",
                self.lost,
                format!("while connected {}", self.lost_while_connected),
            ),
            row(
                "duplicated",
                self.duplicated,
                format!("client dedup dropped {}", self.client_dedup_drops),
            ),
            row("out of order", self.out_of_order, String::new()),
            row("stream changes", self.stream_changes, String::new()),
            row("unpositioned / unknown", unpositioned, String::new()),
        ]
    }

    /// The table rows about reconnects, resumes and presence.
    fn recovery_rows(&self) -> Vec<Row> {
        let failed: usize = self.resumes_failed.values().sum();
        let presence = format!(
            "{}/{}",
            self.presence_diverged.len(),
            self.presence_nodes_checked
        );
        vec![
            row("reconnects", self.reconnects, String::new()),
            row("resumes ok", self.resumes_ok, String::new()),
            row("resumes failed", failed, codes(&self.resumes_failed)),
            row(
                "RecoveryFailed events",
                self.recovery_failed_events,
                String::new(),
            ),
            row(
                "unresumed resubscribes",
                self.unresumed_resubscribes,
                String::new(),
            ),
            row(
                "subscription failures",
                self.subscription_failures,
                String::new(),
            ),
            row(
                "slow consumer drops",
                self.slow_consumer_drops,
                String::new(),
            ),
            row(
                "presence diverged",
                presence,
                format!("joins {}", self.presence_joins),
            ),
        ]
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos run: seed {} | {} nodes | {} V2 subscribers | {} presence members | {:.1} s",
            self.seed,
            self.nodes,
            self.subscribers,
            self.presence_members,
            self.duration.as_secs_f64()
        )?;
        for (name, value, note) in self.delivery_rows().into_iter().chain(self.recovery_rows()) {
            writeln!(f, "  {name:<24}{value:>9}  {note}")?;
        }
        for d in &self.presence_diverged {
            let error = d
                .error
                .as_deref()
                .map(|e| format!(" error {e}"))
                .unwrap_or_default();
            writeln!(
                f,
                "  presence node {}: missing {:?} ghosts {:?}{error}",
                d.node, d.missing, d.ghosts
            )?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "problems (first {MAX_PROBLEMS}):")?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

/// `code n, code n` (empty when none).
fn codes(by_code: &BTreeMap<String, usize>) -> String {
    by_code
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
