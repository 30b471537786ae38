//! Messages and answers that travel between nodes.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One message for one channel of one app, already encoded once per wire variant.
///
/// The frames are encoded once by the publisher and shared by reference count with every
/// recipient; nothing downstream re-serialises them per connection.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The app the message belongs to.
    pub app_id: Arc<str>,
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// The complete text frame for protocol 7 connections.
    pub frame: Bytes,
    /// The frame for V2 connections (`sockudo` family, `message_id`, `serial`, …); `None`
    /// means V2 connections get `frame` too.
    pub frame_v2: Option<Bytes>,
    /// V2 identity, used by nodes to suppress duplicate deliveries.
    pub message_id: Option<Arc<str>>,
    /// Position in the channel's stream when history assigned one (with its stream id).
    pub serial: Option<u64>,
    /// The stream `serial` belongs to.
    pub stream_id: Option<Arc<str>>,
    /// A socket that must not receive it (the publisher's own, Pusher `socket_id`).
    pub except_socket: Option<Arc<str>>,
    /// Set on presence `member_added` / `member_removed` only; `None` for everything else.
    pub member: Option<MemberEvent>,
}

/// The presence decision a member broadcast announces.
///
/// A user's removal and re-addition can be decided by the store in that order but published
/// by two different nodes, whose broadcasts the transport does not order against each other.
/// `seq` is the store's per-channel presence sequence number of the decision, so a receiving
/// node can tell that an event arriving after a later decision about the same user is stale
/// and drop it instead of letting it undo that later decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// The member concerned.
    pub user_id: Arc<str>,
    /// The store's per-channel presence sequence number of the decision.
    pub seq: u64,
    /// Whether the decision added the user to the channel or removed it. Receivers check
    /// it against each subscriber's view: an addition of a listed member or a removal of an
    /// unlisted one is never delivered.
    pub change: MemberChange,
}

/// What a presence decision did to a user's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// The user's first connection in the cluster joined (`member_added`).
    Added,
    /// The user's last connection in the cluster left (`member_removed`).
    Removed,
}

impl Broadcast {
    /// A message without V2 identity, the same bytes for every connection.
    pub fn plain(
        app_id: &str,
        channel: &str,
        frame: Bytes,
        except_socket: Option<Arc<str>>,
    ) -> Self {
        Broadcast {
            app_id: Arc::from(app_id),
            channel: Arc::from(channel),
            frame,
            frame_v2: None,
            message_id: None,
            serial: None,
            stream_id: None,
            except_socket,
            member: None,
        }
    }
}

/// A command every node executes on its own connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every connection of a signed-in user (HTTP `terminate_connections`).
    TerminateUser {
        /// The app.
        app_id: String,
        /// The user whose connections close.
        user_id: String,
    },
    /// An app was created, changed or deleted in the shared app backend (admin API): every
    /// node drops its cached copy and re-reads it.
    AppChanged {
        /// The app that changed.
        app_id: String,
    },
}

/// A question answered from each node's local state and aggregated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterQuery {
    /// Subscriptions (connections) to one channel.
    SubscriptionCount {
        /// The app.
        app_id: String,
        /// The channel.
        channel: String,
    },
    /// Occupied channels with their subscription counts, optionally by prefix.
    Channels {
        /// The app.
        app_id: String,
        /// Only channels starting with this.
        prefix: Option<String>,
    },
    /// Open connections of an app.
    ConnectionCount {
        /// The app.
        app_id: String,
    },
}

/// An answer; node answers of the same kind are merged by [`ClusterAnswer::merge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterAnswer {
    /// A number (subscriptions or connections), summed over nodes.
    Count {
        /// The total.
        count: u64,
    },
    /// Occupied channels with their subscription counts, merged over nodes.
    Channels {
        /// `(channel, subscriptions)` pairs.
        channels: Vec<(String, u64)>,
    },
}

impl ClusterAnswer {
    /// Combine two nodes' answers (counts add up, channel lists merge by name).
    pub fn merge(self, other: ClusterAnswer) -> ClusterAnswer {
        match (self, other) {
            (ClusterAnswer::Count { count: a }, ClusterAnswer::Count { count: b }) => {
                ClusterAnswer::Count { count: a + b }
            }
            (
                ClusterAnswer::Channels { channels: mut a },
                ClusterAnswer::Channels { channels: b },
            ) => {
                for (name, n) in b {
                    match a.iter_mut().find(|(x, _)| *x == name) {
                        Some((_, m)) => *m += n,
                        None => a.push((name, n)),
                    }
                }
                ClusterAnswer::Channels { channels: a }
            }
            (a, _) => a,
        }
    }

    /// The count of a `Count` answer (0 for other kinds).
    pub fn count(&self) -> u64 {
        match self {
            ClusterAnswer::Count { count } => *count,
            ClusterAnswer::Channels { channels } => channels.len() as u64,
        }
    }
}

/// A presence member as the cluster knows it. `info` is the member's `user_info` JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// The member's user id.
    pub user_id: String,
    /// The member's `user_info` JSON text.
    pub info: Option<String>,
}

/// A node's request to add a user to a presence channel.
#[derive(Debug, Clone, Copy)]
pub struct PresenceJoin<'a> {
    /// The app.
    pub app_id: &'a str,
    /// The presence channel.
    pub channel: &'a str,
    /// The user joining.
    pub user_id: &'a str,
    /// `user_info` JSON text.
    pub info: Option<&'a str>,
    /// Members allowed in the channel; a new user beyond it is refused.
    pub max_members: usize,
}

/// Result of [`PresenceJoin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceJoinOutcome {
    /// The user was not in the channel on any node before.
    pub first: bool,
    /// Refused: the channel is full. Nothing was recorded.
    pub full: bool,
    /// Members after the join (for `subscription_succeeded`).
    pub members: Vec<PresenceMember>,
    /// The channel's presence sequence number after this join when `first` (the join is a
    /// membership change and took a number); 0 otherwise. See [`MemberEvent`].
    pub seq: u64,
    /// The sequence number of the last membership change `members` reflects (read in the
    /// same atomic step): a member event numbered at or below it is already in `members`.
    pub snapshot_seq: u64,
}

/// The members of a presence channel, read in one atomic step together with the sequence
/// number of the last membership change they reflect.
///
/// A subscriber that starts from this snapshot must apply exactly the member events numbered
/// above `seq`: those at or below it are already part of `members` (a `member_added` for a
/// listed member, or a `member_removed` for an unlisted one, would be a double join or a
/// phantom leave).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceSnapshot {
    /// The members, one per user.
    pub members: Vec<PresenceMember>,
    /// The channel's presence sequence number when the members were read (0 when the
    /// channel never changed).
    pub seq: u64,
}

/// Result of a presence leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PresenceLeave {
    /// The user left the channel cluster-wide (this node was its last).
    pub gone: bool,
    /// The channel's presence sequence number after this removal when `gone`; 0 otherwise.
    pub seq: u64,
}

/// A member that left because its last node went away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedMember {
    /// The app.
    pub app_id: String,
    /// The presence channel.
    pub channel: String,
    /// The user that left.
    pub user_id: String,
    /// The channel's presence sequence number of this removal. `default` keeps older
    /// serialised forms readable; 0 is below every number a store hands out.
    #[serde(default)]
    pub seq: u64,
}

/// A member event a replicated presence store hands to its node (presence replicated over
/// the transport; a shared store has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedMemberEvent {
    /// The app.
    pub app_id: String,
    /// The presence channel.
    pub channel: String,
    /// The member.
    pub user_id: String,
    /// Its `user_info` JSON text (additions).
    pub info: Option<String>,
    /// The channel's presence sequence number of the decision.
    pub seq: u64,
    /// Addition or removal.
    pub change: MemberChange,
    /// `true`: this node decided it and announces it cluster-wide, webhooks included: an
    /// addition (a member another node announced as removed while this node still held it: a
    /// leave racing a join of the same user elsewhere) or a removal (last leaves racing on
    /// two nodes, which neither announced). `false`: another node decided it and announces it;
    /// this node only delivers it to its own subscribers, so a subscription that started
    /// while the origin's broadcast was on its way (and missed it) still gets it.
    pub announce: bool,
}

/// Why the adapter could not do what was asked.
#[derive(Debug, thiserror::Error, Clone)]
pub enum AdapterError {
    /// The transport cannot be reached.
    #[error("adapter transport unavailable: {0}")]
    Unavailable(String),
    /// The adapter has no node handler yet.
    #[error("no handler attached: the node has not started its adapter")]
    NotAttached,
    /// Some nodes did not answer a cluster query in time.
    #[error("cluster query timed out waiting for {missing} node(s)")]
    Timeout {
        /// Nodes that did not answer.
        missing: usize,
    },
    /// A message from another node could not be decoded.
    #[error("malformed cluster message: {0}")]
    Malformed(String),
}
