//! One app's live state on this node: its connections, channels, presence members and
//! signed-in users.
//!
//! Each channel's subscriber map and member map sit under one map entry, so membership
//! decisions (first connection of a user, member cap) are made atomically with the
//! subscription change that causes them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::connection::Connection;

/// A presence member: what other subscribers see, and how many of its connections are in.
#[derive(Debug, Clone)]
pub struct Member {
    pub info: Option<Arc<RawValue>>,
    connections: usize,
}

#[derive(Debug)]
struct Subscriber {
    conn: Arc<Connection>,
    presence_user: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<Arc<str>, Subscriber, RandomState>,
    members: HashMap<Arc<str>, Member, RandomState>,
}

/// Presence identity of a subscribing connection.
#[derive(Debug, Clone)]
pub struct PresenceJoin {
    pub user_id: Arc<str>,
    pub info: Option<Arc<RawValue>>,
    /// Member cap of the app.
    pub max_members: usize,
}

/// What a subscribe changed.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// False when the socket was already subscribed (idempotent re-subscribe).
    pub new_subscription: bool,
    /// The channel had no subscriber on this node before.
    pub occupied: bool,
    /// Presence: this was the user's first connection in the channel.
    pub member_added: bool,
    /// Presence: members after the join (ids and info), for `subscription_succeeded`.
    pub members: Vec<(Arc<str>, Option<Arc<RawValue>>)>,
}

/// Why a subscribe was refused by the namespace.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    #[error("presence channel is full ({0} members)")]
    MemberLimit(usize),
}

/// What an unsubscribe changed.
#[derive(Debug, Default)]
pub struct Unsubscribed {
    pub vacated: bool,
    /// Presence: the user's last connection left.
    pub member_removed: Option<Arc<str>>,
}

/// Per-app state on this node.
#[derive(Debug)]
pub struct Namespace {
    pub app_id: Arc<str>,
    channels: DashMap<Arc<str>, Channel, RandomState>,
    sockets: DashMap<Arc<str>, Arc<Connection>, RandomState>,
    users: DashMap<Arc<str>, Vec<Arc<Connection>>, RandomState>,
    connection_count: AtomicUsize,
}

impl Namespace {
    pub fn new(app_id: Arc<str>) -> Self {
        Namespace {
            app_id,
            channels: DashMap::default(),
            sockets: DashMap::default(),
            users: DashMap::default(),
            connection_count: AtomicUsize::new(0),
        }
    }

    /// Reserve a connection slot under `max` (0 = unlimited). The check and the increment
    /// are one atomic step so concurrent handshakes cannot overshoot the quota.
    pub fn try_reserve_connection(&self, max: u64) -> bool {
        let mut current = self.connection_count.load(Ordering::Acquire);
        loop {
            if max != 0 && current as u64 >= max {
                return false;
            }
            match self.connection_count.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
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

    pub fn subscribe(&self, channel: &str, conn: &Arc<Connection>, presence: Option<PresenceJoin>) -> Result<Subscribed, SubscribeError> {
        let mut entry = self.channels.entry(Arc::from(channel)).or_default();
        let ch = entry.value_mut();
        let mut out = Subscribed { occupied: ch.subscribers.is_empty(), ..Default::default() };
        if ch.subscribers.contains_key(&conn.socket_id) {
            out.occupied = false;
            out.members = snapshot(&ch.members);
            return Ok(out);
        }
        if let Some(join) = &presence {
            match ch.members.get_mut(&join.user_id) {
                Some(m) => m.connections += 1,
                None => {
                    if ch.members.len() >= join.max_members {
                        return Err(SubscribeError::MemberLimit(join.max_members));
                    }
                    ch.members.insert(Arc::clone(&join.user_id), Member { info: join.info.clone(), connections: 1 });
                    out.member_added = true;
                }
            }
            out.members = snapshot(&ch.members);
        }
        ch.subscribers.insert(
            Arc::clone(&conn.socket_id),
            Subscriber { conn: Arc::clone(conn), presence_user: presence.map(|p| p.user_id) },
        );
        out.new_subscription = true;
        Ok(out)
    }

    /// Leave a channel; `None` when the socket was not subscribed.
    pub fn unsubscribe(&self, channel: &str, socket_id: &str) -> Option<Unsubscribed> {
        let mut out = None;
        self.channels.remove_if_mut(channel, |_, ch| {
            if let Some(sub) = ch.subscribers.remove(socket_id) {
                let mut u = Unsubscribed::default();
                if let Some(user) = sub.presence_user {
                    let last = match ch.members.get_mut(&user) {
                        Some(m) => {
                            m.connections = m.connections.saturating_sub(1);
                            m.connections == 0
                        }
                        None => false,
                    };
                    if last {
                        ch.members.remove(&user);
                        u.member_removed = Some(user);
                    }
                }
                u.vacated = ch.subscribers.is_empty();
                out = Some(u);
            }
            ch.subscribers.is_empty()
        });
        out
    }

    /// Queue `frame` to every subscriber of `channel` except `except`. Returns how many
    /// connections it was queued to. Runs under the channel's read lock and never waits.
    pub fn fanout(&self, channel: &str, frame: &Utf8Bytes, except: Option<&str>) -> usize {
        let Some(ch) = self.channels.get(channel) else { return 0 };
        let mut n = 0;
        for (sid, sub) in &ch.subscribers {
            if except.is_some_and(|e| e == &**sid) {
                continue;
            }
            if sub.conn.send(frame.clone()) {
                n += 1;
            }
        }
        n
    }

    pub fn is_subscribed(&self, channel: &str, socket_id: &str) -> bool {
        self.channels.get(channel).is_some_and(|c| c.subscribers.contains_key(socket_id))
    }

    /// Presence user id of a subscribed socket.
    pub fn presence_user_of(&self, channel: &str, socket_id: &str) -> Option<Arc<str>> {
        self.channels.get(channel)?.subscribers.get(socket_id)?.presence_user.clone()
    }

    pub fn subscription_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.subscribers.len())
    }

    pub fn user_count(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.members.len())
    }

    pub fn members(&self, channel: &str) -> Vec<(Arc<str>, Option<Arc<RawValue>>)> {
        self.channels.get(channel).map(|c| snapshot(&c.members)).unwrap_or_default()
    }

    /// Occupied channels, optionally filtered by prefix.
    pub fn channel_names(&self, prefix: Option<&str>) -> Vec<Arc<str>> {
        self.channels
            .iter()
            .filter(|e| !e.subscribers.is_empty())
            .filter(|e| prefix.is_none_or(|p| e.key().starts_with(p)))
            .map(|e| Arc::clone(e.key()))
            .collect()
    }
}

fn snapshot(members: &HashMap<Arc<str>, Member, RandomState>) -> Vec<(Arc<str>, Option<Arc<RawValue>>)> {
    members.iter().map(|(id, m)| (Arc::clone(id), m.info.clone())).collect()
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
        Connection::new(id.into(), Arc::new(App::new("a", "k", "s")), ProtocolVersion::V1, QueueLimits { frames: 8, bytes: 1024 })
    }

    fn join(user: &str, max: usize) -> Option<PresenceJoin> {
        Some(PresenceJoin { user_id: user.into(), info: None, max_members: max })
    }

    #[test]
    fn member_added_and_removed_on_first_and_last_connection() {
        let ns = Namespace::new("a".into());
        let (c1, c2) = (conn("1.1"), conn("1.2"));
        let s1 = ns.subscribe("presence-x", &c1, join("u", 10)).unwrap();
        assert!(s1.occupied && s1.member_added);
        let s2 = ns.subscribe("presence-x", &c2, join("u", 10)).unwrap();
        assert!(!s2.occupied && !s2.member_added);
        assert_eq!(ns.user_count("presence-x"), 1);
        assert_eq!(ns.subscription_count("presence-x"), 2);
        let u1 = ns.unsubscribe("presence-x", "1.1").unwrap();
        assert!(u1.member_removed.is_none() && !u1.vacated);
        let u2 = ns.unsubscribe("presence-x", "1.2").unwrap();
        assert_eq!(u2.member_removed.as_deref(), Some("u"));
        assert!(u2.vacated);
        assert!(ns.unsubscribe("presence-x", "1.2").is_none());
        assert!(ns.channel_names(None).is_empty());
    }

    #[test]
    fn member_cap_counts_distinct_users() {
        let ns = Namespace::new("a".into());
        ns.subscribe("presence-x", &conn("1.1"), join("a", 2)).unwrap();
        ns.subscribe("presence-x", &conn("1.2"), join("b", 2)).unwrap();
        ns.subscribe("presence-x", &conn("1.3"), join("b", 2)).unwrap();
        assert_eq!(ns.subscribe("presence-x", &conn("1.4"), join("c", 2)).unwrap_err(), SubscribeError::MemberLimit(2));
        assert_eq!(ns.subscription_count("presence-x"), 3);
    }

    #[test]
    fn fanout_skips_excluded_socket() {
        let ns = Namespace::new("a".into());
        let ((c1, _o1), (c2, _o2)) = (conn_with_outbox("1.1"), conn_with_outbox("1.2"));
        ns.subscribe("c", &c1, None).unwrap();
        ns.subscribe("c", &c2, None).unwrap();
        assert_eq!(ns.fanout("c", &"x".into(), Some("1.1")), 1);
        assert_eq!(ns.fanout("c", &"x".into(), None), 2);
        assert_eq!(ns.fanout("nope", &"x".into(), None), 0);
    }

    #[test]
    fn quota_is_enforced_atomically() {
        let ns = Namespace::new("a".into());
        assert!(ns.try_reserve_connection(2));
        assert!(ns.try_reserve_connection(2));
        assert!(!ns.try_reserve_connection(2));
        assert!(ns.try_reserve_connection(0));
    }
}
