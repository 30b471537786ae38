//! The raw observations of a chaos run ([`ChaosRecords`]): every publish, every delivery,
//! every resume verdict, every kill and the final presence check. [`ChaosReport`] is computed
//! from them alone, so they can be built by hand to test the accounting.
//!
//! Times are offsets from the start of the run.
//!
//! [`ChaosReport`]: crate::chaos::ChaosReport

use std::collections::BTreeSet;
use std::time::Duration;

/// Everything a run observed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosRecords {
    /// The seed the run used.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Wall time of the run, set-up to report.
    pub duration: Duration,
    /// Every message the publisher tried, acknowledged or not.
    pub publishes: Vec<PublishRecord>,
    /// One record per V2 subscriber.
    pub subscribers: Vec<SubscriberRecord>,
    /// Every kill, in order.
    pub kills: Vec<KillRecord>,
    /// The V1 presence members' user ids, and how often each joined.
    pub presence_members: Vec<PresenceMemberRecord>,
    /// The final presence check, one entry per node (empty without presence members).
    pub presence_checks: Vec<PresenceCheck>,
}

/// One published message.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRecord {
    /// Its `message_id` and `idempotency_key` (the same string, unique in the run).
    pub message_id: String,
    /// The channel.
    pub channel: String,
    /// When the first attempt was sent.
    pub sent_at: Duration,
    /// When a 2xx came back; `None`: never within the retry budget (unacknowledged).
    pub acked_at: Option<Duration>,
    /// Requests made (1 when the first one was acknowledged).
    pub attempts: u32,
    /// The serial the acknowledging response reported for the channel, if any.
    pub serial: Option<u64>,
    /// Every failed attempt, in order: when it ended, the node, and the status and body or
    /// the transport error.
    pub errors: Vec<String>,
}

impl PublishRecord {
    /// Whether a 2xx came back: only those messages must be delivered.
    pub fn acknowledged(&self) -> bool {
        self.acked_at.is_some()
    }
}

/// What one V2 subscriber saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriberRecord {
    /// Its index (0-based).
    pub index: usize,
    /// The channels it stayed subscribed to for the whole run.
    pub channels: Vec<String>,
    /// Every app message handed to it, in the order received (all channels).
    pub deliveries: Vec<Delivery>,
    /// Every resume verdict of its channels.
    pub resumes: Vec<ResumeRecord>,
    /// Times its channels were subscribed again without a resume (`Resubscribed`): a V2
    /// client with a stored position should always resume instead.
    pub unresumed_resubscribes: usize,
    /// Channels whose subscription ended for good (`SubscriptionFailed`), with the error.
    pub subscription_failures: Vec<String>,
    /// Connection state changes: `(when, connected)`.
    pub connection_changes: Vec<(Duration, bool)>,
    /// The client's counters at the end.
    pub stats: SubscriberStats,
}

/// The client counters of one subscriber (from `sockudo_client::Client::stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriberStats {
    /// Connections after the first.
    pub reconnects: u64,
    /// Redeliveries the client's dedup window dropped (the server sent a message twice).
    pub duplicates_dropped: u64,
    /// Events dropped because the subscription's buffer was full.
    pub slow_consumer_drops: u64,
}

/// One app message as a subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The channel.
    pub channel: String,
    /// The message id: the frame's `message_id`, else the id inside the payload.
    pub message_id: String,
    /// The frame's `serial`.
    pub serial: Option<u64>,
    /// The frame's `stream_id`.
    pub stream_id: Option<String>,
    /// When it was received.
    pub at: Duration,
}

/// A resume verdict for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The channel.
    pub channel: String,
    /// When the verdict was delivered.
    pub at: Duration,
    /// The verdict.
    pub outcome: ResumeOutcome,
}

/// How a resume ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Continuity proved (`Recovered`).
    Recovered {
        /// `hot` or `cold`.
        source: String,
        /// Messages replayed before the verdict.
        replayed: u64,
    },
    /// Continuity not proved (`RecoveryFailed`).
    Failed {
        /// The failure code (`stream_reset`, `persistence_unavailable`, …, or the client's
        /// `resume_timeout`).
        code: String,
        /// The server's reason, if any.
        reason: Option<String>,
    },
}

/// One kill and the restart after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRecord {
    /// The node's index.
    pub node: usize,
    /// Its node id before the kill.
    pub node_id: Option<String>,
    /// Its node id after the restart (differs with `restart_with_new_node_id`).
    pub restarted_as: Option<String>,
    /// When it was killed.
    pub killed_at: Duration,
    /// When it served again; `None` when every restart attempt failed.
    pub restarted_at: Option<Duration>,
    /// Why a restart attempt failed, if one did.
    pub restart_error: Option<String>,
}

/// One V1 presence member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceMemberRecord {
    /// Its user id (the same on every connection).
    pub user_id: String,
    /// How many times it joined (1 + re-joins after its node died).
    pub joins: usize,
    /// Whether it was connected and joined when the run ended.
    pub connected_at_end: bool,
}

/// One node's view of the presence channel after settling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceCheck {
    /// The node's index.
    pub node: usize,
    /// The users the node listed (`None`: the request failed; `error` says why).
    pub listed: Option<BTreeSet<String>>,
    /// The users connected and joined at the time (what every node must list).
    pub expected: BTreeSet<String>,
    /// The request's failure, if it failed.
    pub error: Option<String>,
}

impl PresenceCheck {
    /// Whether the node listed exactly the connected users.
    pub fn converged(&self) -> bool {
        self.listed.as_ref() == Some(&self.expected)
    }
}
