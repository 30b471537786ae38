//! One app's live state on this node: its connections, channels, presence members and
//! signed-in users.
//!
//! Each channel's subscriber map and local member counts sit under one map entry, so "first
//! / last connection of a user on this node" is decided atomically with the subscription
//! change that causes it; the cluster-wide decision is the adapter's presence store's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use sockudo_core::protocol::ProtocolVersion;

use sockudo_core::adapter::MemberEvent;

use crate::connection::Connection;
use crate::hot::{HotBuffer, HotLimits};
use crate::presence_view::{MemberOrder, Ordered};
use crate::sequencer::Sequence;

mod live;
mod recipients;

pub use live::{Positioned, Sequenced};
use recipients::{fanout_to, snapshot, SnapshotCell};

#[derive(Debug)]
struct Subscriber {
    conn: Arc<Connection>,
    presence_user: Option<Arc<str>>,
    /// Cleared when the subscription ends (see [`recipients`]).
    active: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<Arc<str>, Subscriber, RandomState>,
    /// Presence: this node's connections per user. The cluster-wide member set lives in the
    /// adapter's presence store; this count only decides when this node joins or leaves it.
    local_members: HashMap<Arc<str>, usize, RandomState>,
    /// Presence: per user, the store's sequence number of the last member event delivered
    /// here (see [`Namespace::fanout_member`]). Kept with the subscribers so it goes away
    /// with the channel's last local subscriber: with nobody here to have seen those events,
    /// nothing is left to protect, and a channel that is subscribed again starts from its
    /// subscribers' `subscription_succeeded` snapshots, which filter older events.
    member_order: MemberOrder,
    /// Positioned broadcasts: the live sequence that passes them on in serial order (see
    /// [`crate::sequencer`]); created by the first positioned message or snapshot. Shared so
    /// a delivery can keep it locked after letting go of the channel map.
    sequence: Arc<parking_lot::Mutex<Option<Sequence<Positioned>>>>,
    /// What the fanout loops over (see [`recipients`]).
    recipients: SnapshotCell,
}

/// What a subscribe changed.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// False when the socket was already subscribed (idempotent re-subscribe).
    pub new_subscription: bool,
    /// The channel had no subscriber on this node before.
    pub occupied: bool,
    /// Presence: this was the user's first connection in the channel on this node.
    pub node_first: bool,
}

/// What an unsubscribe changed.
#[derive(Debug, Default)]
pub struct Unsubscribed {
    pub vacated: bool,
    /// Presence: the user's last connection on this node left.
    pub node_last: Option<Arc<str>>,
}

/// Outcome of [`Namespace::fanout_member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFanout {
    /// Queued to this many connections.
    Delivered(usize),
    /// Dropped: a later decision about the same user was already delivered here.
    Stale,
}

/// Most member sequence entries one app keeps on this node. Beyond it member events of users
/// not yet recorded are delivered unrecorded, that is unprotected against reordering as they
/// were before sequence numbers: memory stays bounded however many presence members an app
/// has, at the cost of ordering only in that extreme.
const MEMBER_SEQ_CAP: usize = 100_000;

/// One broadcast as this node delivers it: a frame per wire variant.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub v1: Utf8Bytes,
    pub v2: Option<Utf8Bytes>,
    pub serial: Option<u64>,
    pub stream_id: Option<&'a Arc<str>>,
    pub except: Option<&'a str>,
}

impl Delivery<'_> {
    /// The same frame for every connection.
    pub fn plain(frame: Utf8Bytes) -> Self {
        Delivery {
            v1: frame,
            v2: None,
            serial: None,
            stream_id: None,
            except: None,
        }
    }
}

/// Per-app state on this node.
#[derive(Debug)]
pub struct Namespace {
    pub app_id: Arc<str>,
    /// V2 hot tier: recent positioned messages per channel.
    pub hot: HotBuffer,
    channels: DashMap<Arc<str>, Channel, RandomState>,
    sockets: DashMap<Arc<str>, Arc<Connection>, RandomState>,
    users: DashMap<Arc<str>, Vec<Arc<Connection>>, RandomState>,
    connection_count: AtomicUsize,
    /// Striped locks over (channel, user): see [`Namespace::presence_guard`].
    presence_locks: Box<[tokio::sync::Mutex<()>]>,
    lock_hasher: RandomState,
    /// Entries of every channel's `member_order` (bounded by [`MEMBER_SEQ_CAP`]).
    member_seq_entries: AtomicUsize,
}

/// Stripes of [`Namespace::presence_guard`]: unrelated users rarely share one.
const PRESENCE_LOCK_STRIPES: usize = 64;

impl Namespace {
    pub fn new(app_id: Arc<str>, hot: HotLimits) -> Self {
        Namespace {
            app_id,
            hot: HotBuffer::new(hot),
            channels: DashMap::default(),
            sockets: DashMap::default(),
            users: DashMap::default(),
            connection_count: AtomicUsize::new(0),
            presence_locks: (0..PRESENCE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            lock_hasher: RandomState::new(),
            member_seq_entries: AtomicUsize::new(0),
        }
    }

    /// Serialises, per (channel, user) on this node, the local first/last decision with the
    /// presence-store call and the member event it leads to. Without it a leave and a join of
    /// the same user on this node can reach the store in the opposite order of their local
    /// decisions (the store keeps one entry per node and user, so a late "leave" would remove
    /// the user while a connection of it is subscribed here), and their member events can
    /// overtake each other.
    pub async fn presence_guard(
        &self,
        channel: &str,
        user: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe =
            self.lock_hasher.hash_one((channel, user)) as usize % self.presence_locks.len();
        self.presence_locks[stripe].lock().await
    }

    /// Reserve a connection slot under `max` (0 = unlimited). The check and the increment
    /// are one atomic step so concurrent handshakes cannot overshoot the quota.
    pub fn try_reserve_connection(&self, max: u64) -> bool {
        let mut current = self.connection_count.load(Ordering::Acquire);
        loop {
            if max != 0 && current as u64 >= max {
                return false;
            }
            match self.connection_count.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Shrink the maps a flood of channels or connections left oversized (see
    /// `crate::memory`); returns whether any was.
    pub fn shrink(&self) -> bool {
        let maps = [
            crate::memory::shrink_sparse(&self.channels),
            crate::memory::shrink_sparse(&self.sockets),
            crate::memory::shrink_sparse(&self.users),
            self.hot.shrink(),
        ];
        maps.contains(&true)
    }

    pub fn add_connection(&self, conn: Arc<Connection>) {
        self.sockets.insert(Arc::clone(&conn.socket_id), conn);
    }

    /// Forget a connection (its channels must be left first) and free its quota slot.
    pub fn remove_connection(&self, conn: &Connection) {
        if self.sockets.remove(&conn.socket_id).is_some() {
            self.connection_count.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(user) = conn.user_id() {
            self.users.remove_if_mut(&user, |_, conns| {
                conns.retain(|c| c.socket_id != conn.socket_id);
                conns.is_empty()
            });
        }
    }

    /// Every connection of the app on this node.
    pub fn connections(&self) -> Vec<Arc<Connection>> {
        self.sockets.iter().map(|c| Arc::clone(c.value())).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.sockets.len()
    }

    pub fn add_user(&self, user: Arc<str>, conn: Arc<Connection>) {
        self.users.entry(user).or_default().push(conn);
    }

    /// Connections of a signed-in user on this node.
    pub fn user_connections(&self, user: &str) -> Vec<Arc<Connection>> {
        self.users.get(user).map(|v| v.clone()).unwrap_or_default()
    }

    pub fn subscribe(
        &self,
        channel: &str,
        conn: &Arc<Connection>,
        presence_user: Option<Arc<str>>,
    ) -> Subscribed {
        let mut entry = self.channels.entry(Arc::from(channel)).or_default();
        let ch = entry.value_mut();
        if ch.subscribers.contains_key(&conn.socket_id) {
            return Subscribed::default();
        }
        let mut out = Subscribed {
            new_subscription: true,
            occupied: ch.subscribers.is_empty(),
            node_first: false,
        };
        if let Some(user) = &presence_user {
            let n = ch.local_members.entry(Arc::clone(user)).or_insert(0);
            *n += 1;
            out.node_first = *n == 1;
        }
        ch.subscribers.insert(
            Arc::clone(&conn.socket_id),
            Subscriber {
                conn: Arc::clone(conn),
                presence_user,
                active: Arc::new(AtomicBool::new(true)),
            },
        );
        ch.recipients.invalidate();
        crate::metrics::subscription_changed(&self.app_id, channel, 1.0);
        out
    }

    /// Leave a channel; `None` when the socket was not subscribed.
    pub fn unsubscribe(&self, channel: &str, socket_id: &str) -> Option<Unsubscribed> {
        let mut out = None;
        self.channels.remove_if_mut(channel, |_, ch| {
            if let Some(sub) = ch.subscribers.remove(socket_id) {
                sub.active.store(false, Ordering::Release);
                ch.recipients.invalidate();
                let mut u = Unsubscribed::default();
                if let Some(user) = sub.presence_user {
                    let last = ch.local_members.get_mut(&user).is_some_and(|n| {
                        *n = n.saturating_sub(1);
                        *n == 0
                    });
                    if last {
                        ch.local_members.remove(&user);
                        u.node_last = Some(user);
                    }
                }
                u.vacated = ch.subscribers.is_empty();
                crate::metrics::subscription_changed(&self.app_id, channel, -1.0);
                out = Some(u);
            }
            let vacated = ch.subscribers.is_empty();
            if vacated {
                self.member_seq_entries
                    .fetch_sub(ch.member_order.len(), Ordering::AcqRel);
            }
            vacated
        });
        out
    }

    /// Deliver a presence member event unless it is stale, to each subscriber whose view it
    /// changes (see [`crate::presence_view`]).
    ///
    /// The store numbers each membership decision of a channel, but the decisions about one
    /// user can be published by different nodes, and the transport orders broadcasts per
    /// publisher only; so a `member_removed` decided before a `member_added` can arrive after
    /// it. Delivering it then would leave every subscriber believing the user gone although
    /// it is present. An event whose number is not above the last one delivered here for that
    /// user is therefore dropped: the later decision already told subscribers the current
    /// state. Each subscriber then takes the event only if its own snapshot does not already
    /// reflect it and it changes what the subscriber knows.
    ///
    /// The check, the record and the fanout happen under the channel's write lock, so two
    /// deliveries for one user (one from the transport, one published by this node) cannot
    /// pass the check in one order and reach the connections in the other.
    pub fn fanout_member(
        &self,
        channel: &str,
        event: &MemberEvent,
        d: &Delivery<'_>,
    ) -> MemberFanout {
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return MemberFanout::Delivered(0);
        };
        let (key, ch) = entry.pair_mut();
        let may_grow = || {
            if self.member_seq_entries.fetch_add(1, Ordering::AcqRel) < MEMBER_SEQ_CAP {
                return true;
            }
            self.member_seq_entries.fetch_sub(1, Ordering::AcqRel);
            tracing::debug!(app_id = %self.app_id, channel, "member sequence map full; delivering unrecorded");
            false
        };
        if ch.member_order.admit(event, may_grow) == Ordered::Stale {
            return MemberFanout::Stale;
        }
        let mut n = 0;
        for (sid, sub) in &ch.subscribers {
            if d.except.is_some_and(|e| e == &**sid) {
                continue;
            }
            let frame = match (sub.conn.protocol, &d.v2) {
                (ProtocolVersion::V2, Some(v2)) => v2.clone(),
                _ => d.v1.clone(),
            };
            if sub.conn.send_member(key, event, frame) {
                n += 1;
            }
        }
        MemberFanout::Delivered(n)
    }

    /// Queue a delivery to every subscriber of `channel` except its excluded socket. Returns
    /// how many connections it was queued to. Holds the channel's lock only to take its
    /// recipient snapshot (see the `recipients` module) and never waits; each recipient gets a
    /// reference-counted handle to its protocol's frame.
    pub fn fanout(&self, channel: &str, d: &Delivery<'_>) -> usize {
        let (key, recipients) = {
            let Some(ch) = self.channels.get(channel) else {
                return 0;
            };
            (Arc::clone(ch.key()), snapshot(ch.value()))
        };
        fanout_to(&key, &recipients, d)
    }

    pub fn is_subscribed(&self, channel: &str, socket_id: &str) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.subscribers.contains_key(socket_id))
    }

    /// Presence user id of a subscribed socket.
    pub fn presence_user_of(&self, channel: &str, socket_id: &str) -> Option<Arc<str>> {
        self.channels
            .get(channel)?
            .subscribers
            .get(socket_id)?
            .presence_user
            .clone()
    }

    pub fn subscription_count(&self, channel: &str) -> usize {
        self.channels
            .get(channel)
            .map_or(0, |c| c.subscribers.len())
    }

    /// Occupied channels with their subscription counts, optionally filtered by prefix.
    pub fn channels(&self, prefix: Option<&str>) -> Vec<(String, u64)> {
        self.channels
            .iter()
            .filter(|e| !e.subscribers.is_empty())
            .filter(|e| prefix.is_none_or(|p| e.key().starts_with(p)))
            .map(|e| (e.key().to_string(), e.subscribers.len() as u64))
            .collect()
    }

    /// Connections holding (or having reserved) a quota slot.
    pub fn reserved_connections(&self) -> usize {
        self.connection_count.load(Ordering::Acquire)
    }

    /// Give back a slot reserved by [`Namespace::try_reserve_connection`] for a connection
    /// that never started.
    pub fn release_reservation(&self) {
        self.connection_count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::QueueLimits;
    use sockudo_core::app::App;
    use sockudo_core::protocol::ProtocolVersion;

    fn conn(id: &str) -> Arc<Connection> {
        conn_with_outbox(id).0
    }

    fn conn_with_outbox(id: &str) -> (Arc<Connection>, crate::connection::Outbox) {
        Connection::new(
            id.into(),
            Arc::new(App::new("a", "k", "s")),
            ProtocolVersion::V1,
            QueueLimits {
                frames: 8,
                bytes: 1024,
            },
        )
    }

    #[test]
    fn node_first_and_last_connection_of_a_user() {
        let ns = Namespace::new(
            "a".into(),
            HotLimits {
                messages: 10,
                max_age: std::time::Duration::from_secs(60),
            },
        );
        let (c1, c2) = (conn("1.1"), conn("1.2"));
        let s1 = ns.subscribe("presence-x", &c1, Some("u".into()));
        assert!(s1.occupied && s1.node_first && s1.new_subscription);
        let s2 = ns.subscribe("presence-x", &c2, Some("u".into()));
        assert!(!s2.occupied && !s2.node_first);
        assert!(
            !ns.subscribe("presence-x", &c2, Some("u".into()))
                .new_subscription,
            "re-subscribe is a no-op"
        );
        assert_eq!(ns.subscription_count("presence-x"), 2);
        let u1 = ns.unsubscribe("presence-x", "1.1").unwrap();
        assert!(u1.node_last.is_none() && !u1.vacated);
        let u2 = ns.unsubscribe("presence-x", "1.2").unwrap();
        assert_eq!(u2.node_last.as_deref(), Some("u"));
        assert!(u2.vacated);
        assert!(ns.unsubscribe("presence-x", "1.2").is_none());
        assert!(ns.channels(None).is_empty());
    }

    #[test]
    fn fanout_skips_excluded_socket() {
        let ns = Namespace::new(
            "a".into(),
            HotLimits {
                messages: 10,
                max_age: std::time::Duration::from_secs(60),
            },
        );
        let ((c1, _o1), (c2, _o2)) = (conn_with_outbox("1.1"), conn_with_outbox("1.2"));
        ns.subscribe("c", &c1, None);
        ns.subscribe("c", &c2, None);
        let except = Delivery {
            except: Some("1.1"),
            ..Delivery::plain("x".into())
        };
        assert_eq!(ns.fanout("c", &except), 1);
        assert_eq!(ns.fanout("c", &Delivery::plain("x".into())), 2);
        assert_eq!(ns.fanout("nope", &Delivery::plain("x".into())), 0);
    }

    #[test]
    fn the_recipient_snapshot_follows_subscriptions() {
        let ns = Namespace::new(
            "a".into(),
            HotLimits {
                messages: 10,
                max_age: std::time::Duration::from_secs(60),
            },
        );
        let ((c1, mut o1), (c2, mut o2)) = (conn_with_outbox("1.1"), conn_with_outbox("1.2"));
        ns.subscribe("c", &c1, None);
        assert_eq!(ns.fanout("c", &Delivery::plain("a".into())), 1);
        // A subscriber added after the snapshot was built is in the next one.
        ns.subscribe("c", &c2, None);
        assert_eq!(ns.fanout("c", &Delivery::plain("b".into())), 2);
        // A snapshot taken before an unsubscribe no longer reaches the socket that left.
        let old = {
            let ch = ns.channels.get("c").unwrap();
            snapshot(ch.value())
        };
        ns.unsubscribe("c", "1.1").unwrap();
        let key: Arc<str> = "c".into();
        assert_eq!(
            recipients::fanout_to(&key, &old, &Delivery::plain("c".into())),
            1
        );
        assert_eq!(ns.fanout("c", &Delivery::plain("d".into())), 1);
        let got = |o: &mut crate::connection::Outbox, c: &Connection| {
            std::iter::from_fn(|| o.try_recv(c))
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(got(&mut o1, &c1), ["a", "b"]);
        assert_eq!(got(&mut o2, &c2), ["b", "c", "d"]);
    }

    #[test]
    fn stale_member_events_are_dropped_and_forgotten_with_the_channel() {
        let ns = Namespace::new(
            "a".into(),
            HotLimits {
                messages: 10,
                max_age: std::time::Duration::from_secs(60),
            },
        );
        let (c1, _o1) = conn_with_outbox("1.1");
        ns.subscribe("presence-x", &c1, Some("w".into()));
        let u: Arc<str> = "u".into();
        let d = || Delivery::plain("x".into());
        // Alternating additions and removals, as the store decides them.
        let ev = |user: &Arc<str>, seq: u64| MemberEvent {
            user_id: Arc::clone(user),
            seq,
            change: if seq % 2 == 1 {
                sockudo_core::adapter::MemberChange::Added
            } else {
                sockudo_core::adapter::MemberChange::Removed
            },
        };
        // The re-addition (3) overtook the removal (2) it follows.
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&u, 1), &d()),
            MemberFanout::Delivered(1)
        );
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&u, 3), &d()),
            MemberFanout::Delivered(1)
        );
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&u, 2), &d()),
            MemberFanout::Stale
        );
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&u, 3), &d()),
            MemberFanout::Stale,
            "a repeat is not newer"
        );
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&"v".into(), 2), &d()),
            MemberFanout::Delivered(1),
            "numbers are per user"
        );
        assert_eq!(ns.member_seq_entries.load(Ordering::Acquire), 2);
        // The last local subscriber leaves: nothing of the channel is kept.
        ns.unsubscribe("presence-x", "1.1");
        assert_eq!(ns.member_seq_entries.load(Ordering::Acquire), 0);
        ns.subscribe("presence-x", &c1, Some("w".into()));
        assert_eq!(
            ns.fanout_member("presence-x", &ev(&u, 2), &d()),
            MemberFanout::Delivered(1)
        );
    }

    #[test]
    fn quota_is_enforced_atomically() {
        let ns = Namespace::new(
            "a".into(),
            HotLimits {
                messages: 10,
                max_age: std::time::Duration::from_secs(60),
            },
        );
        assert!(ns.try_reserve_connection(2));
        assert!(ns.try_reserve_connection(2));
        assert!(!ns.try_reserve_connection(2));
        assert!(ns.try_reserve_connection(0));
    }
}
