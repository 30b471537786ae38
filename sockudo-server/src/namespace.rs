//! One app's live state on this node: its connections, channels, presence members and
//! signed-in users.
//!
//! Each channel's subscriber map and local member counts sit under one map entry, so "first
//! / last connection of a user on this node" is decided atomically with the subscription
//! change that causes it; the cluster-wide decision is the adapter's presence store's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use dashmap::DashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::connection::Connection;

#[derive(Debug)]
struct Subscriber {
    conn: Arc<Connection>,
    presence_user: Option<Arc<str>>,
}

#[derive(Debug, Default)]
struct Channel {
    subscribers: HashMap<Arc<str>, Subscriber, RandomState>,
    /// Presence: this node's connections per user. The cluster-wide member set lives in the
    /// adapter's presence store; this count only decides when this node joins or leaves it.
    local_members: HashMap<Arc<str>, usize, RandomState>,
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

    pub fn subscribe(&self, channel: &str, conn: &Arc<Connection>, presence_user: Option<Arc<str>>) -> Subscribed {
        let mut entry = self.channels.entry(Arc::from(channel)).or_default();
        let ch = entry.value_mut();
        if ch.subscribers.contains_key(&conn.socket_id) {
            return Subscribed::default();
        }
        let mut out = Subscribed { new_subscription: true, occupied: ch.subscribers.is_empty(), node_first: false };
        if let Some(user) = &presence_user {
            let n = ch.local_members.entry(Arc::clone(user)).or_insert(0);
            *n += 1;
            out.node_first = *n == 1;
        }
        ch.subscribers.insert(Arc::clone(&conn.socket_id), Subscriber { conn: Arc::clone(conn), presence_user });
        out
    }

    /// Leave a channel; `None` when the socket was not subscribed.
    pub fn unsubscribe(&self, channel: &str, socket_id: &str) -> Option<Unsubscribed> {
        let mut out = None;
        self.channels.remove_if_mut(channel, |_, ch| {
            if let Some(sub) = ch.subscribers.remove(socket_id) {
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
        Connection::new(id.into(), Arc::new(App::new("a", "k", "s")), ProtocolVersion::V1, QueueLimits { frames: 8, bytes: 1024 })
    }

    #[test]
    fn node_first_and_last_connection_of_a_user() {
        let ns = Namespace::new("a".into());
        let (c1, c2) = (conn("1.1"), conn("1.2"));
        let s1 = ns.subscribe("presence-x", &c1, Some("u".into()));
        assert!(s1.occupied && s1.node_first && s1.new_subscription);
        let s2 = ns.subscribe("presence-x", &c2, Some("u".into()));
        assert!(!s2.occupied && !s2.node_first);
        assert!(!ns.subscribe("presence-x", &c2, Some("u".into())).new_subscription, "re-subscribe is a no-op");
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
        let ns = Namespace::new("a".into());
        let ((c1, _o1), (c2, _o2)) = (conn_with_outbox("1.1"), conn_with_outbox("1.2"));
        ns.subscribe("c", &c1, None);
        ns.subscribe("c", &c2, None);
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
