//! Cluster-wide presence membership.
//!
//! Each node tracks its own connections per user; the shared store only records *which
//! nodes* hold a user in a channel. So `member_added` fires when the set of nodes goes from
//! empty to one, `member_removed` when it becomes empty again, and a dead node's
//! contributions can be swept in one idempotent step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{AdapterError, PresenceJoin, PresenceJoinOutcome, PresenceMember, RemovedMember};

/// Shared presence state.
///
/// Contract (every method is one atomic step in the store):
/// - `join(node, j)`: adds `node` to the user's node set. `first` is true exactly when the set
///   was empty. When the user is absent and the channel already has `max_members` users the
///   join is refused with `full` and nothing changes. A repeated join by the same node is a
///   no-op with `first = false`.
/// - `leave(node, ..)`: removes `node`; returns true exactly when the set became empty
///   (the member is gone). Leaving twice returns false the second time.
/// - `sweep_node(node)`: removes every contribution of `node` and returns the members whose
///   set became empty. Of several concurrent sweeps of one node, each removal is reported by
///   exactly one of them.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    async fn join(&self, node_id: &str, join: PresenceJoin<'_>) -> Result<PresenceJoinOutcome, AdapterError>;
    async fn leave(&self, node_id: &str, app_id: &str, channel: &str, user_id: &str) -> Result<bool, AdapterError>;
    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<PresenceMember>, AdapterError>;
    async fn sweep_node(&self, node_id: &str) -> Result<Vec<RemovedMember>, AdapterError>;

    /// Nodes that currently hold contributions in the store.
    ///
    /// Added (with a default) for the cluster adapter's orphan sweep: a node that died while
    /// no peer was watching it (for instance the only node of a cluster, restarted under a new
    /// id) is never declared dead by heartbeats, so survivors also sweep nodes that the store
    /// knows and the heartbeats do not. The default (no enumeration) is right for stores that
    /// live inside one process and die with it.
    async fn nodes(&self) -> Result<Vec<String>, AdapterError> {
        Ok(Vec::new())
    }
}

#[derive(Debug, Default)]
struct ChannelMembers {
    /// user → (info, nodes holding it)
    users: BTreeMap<String, (Option<String>, BTreeSet<String>)>,
}

/// In-process store: the single-node default and the reference for the contract.
#[derive(Debug, Default)]
pub struct MemoryPresenceStore {
    channels: Mutex<HashMap<(String, String), ChannelMembers>>,
}

impl MemoryPresenceStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn snapshot(ch: &ChannelMembers) -> Vec<PresenceMember> {
    ch.users.iter().map(|(u, (info, _))| PresenceMember { user_id: u.clone(), info: info.clone() }).collect()
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn join(&self, node_id: &str, j: PresenceJoin<'_>) -> Result<PresenceJoinOutcome, AdapterError> {
        let mut channels = self.channels.lock();
        let ch = channels.entry((j.app_id.to_owned(), j.channel.to_owned())).or_default();
        let first = match ch.users.get_mut(j.user_id) {
            Some((_, nodes)) => {
                nodes.insert(node_id.to_owned());
                false
            }
            None => {
                if ch.users.len() >= j.max_members {
                    let members = snapshot(ch);
                    if ch.users.is_empty() {
                        channels.remove(&(j.app_id.to_owned(), j.channel.to_owned()));
                    }
                    return Ok(PresenceJoinOutcome { first: false, full: true, members });
                }
                ch.users.insert(j.user_id.to_owned(), (j.info.map(str::to_owned), BTreeSet::from([node_id.to_owned()])));
                true
            }
        };
        Ok(PresenceJoinOutcome { first, full: false, members: snapshot(ch) })
    }

    async fn leave(&self, node_id: &str, app_id: &str, channel: &str, user_id: &str) -> Result<bool, AdapterError> {
        let mut channels = self.channels.lock();
        let key = (app_id.to_owned(), channel.to_owned());
        let Some(ch) = channels.get_mut(&key) else { return Ok(false) };
        let gone = match ch.users.get_mut(user_id) {
            Some((_, nodes)) => nodes.remove(node_id) && nodes.is_empty(),
            None => false,
        };
        if gone {
            ch.users.remove(user_id);
        }
        if ch.users.is_empty() {
            channels.remove(&key);
        }
        Ok(gone)
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<Vec<PresenceMember>, AdapterError> {
        let channels = self.channels.lock();
        Ok(channels.get(&(app_id.to_owned(), channel.to_owned())).map(snapshot).unwrap_or_default())
    }

    async fn sweep_node(&self, node_id: &str) -> Result<Vec<RemovedMember>, AdapterError> {
        let mut channels = self.channels.lock();
        let mut removed = Vec::new();
        channels.retain(|(app, channel), ch| {
            ch.users.retain(|user, (_, nodes)| {
                if nodes.remove(node_id) && nodes.is_empty() {
                    removed.push(RemovedMember { app_id: app.clone(), channel: channel.clone(), user_id: user.clone() });
                    return false;
                }
                true
            });
            !ch.users.is_empty()
        });
        Ok(removed)
    }
}

/// The executable form of the [`PresenceStore`] contract, run against every implementation.
#[doc(hidden)]
pub mod conformance {
    use super::*;

    fn join<'a>(channel: &'a str, user: &'a str, max: usize) -> PresenceJoin<'a> {
        PresenceJoin { app_id: "app", channel, user_id: user, info: Some(r#"{"n":1}"#), max_members: max }
    }

    /// Run every check; panics with a message naming the broken rule. `ns` keeps runs on a
    /// shared store apart.
    pub async fn run_all(store: &dyn PresenceStore, ns: &str) {
        let ch = format!("presence-{ns}-a");
        let (n1, n2) = (format!("{ns}-n1"), format!("{ns}-n2"));
        let o = store.join(&n1, join(&ch, "u1", 10)).await.unwrap_or_else(|e| panic!("join: {e}"));
        assert!(o.first && !o.full, "first join of a user is first");
        assert_eq!(o.members, vec![PresenceMember { user_id: "u1".into(), info: Some(r#"{"n":1}"#.into()) }]);
        let o = store.join(&n1, join(&ch, "u1", 10)).await.unwrap_or_else(|e| panic!("join: {e}"));
        assert!(!o.first, "repeated join by the same node is not first");
        let o = store.join(&n2, join(&ch, "u1", 10)).await.unwrap_or_else(|e| panic!("join: {e}"));
        assert!(!o.first, "second node's join is not first");
        assert!(!store.leave(&n1, "app", &ch, "u1").await.unwrap_or_else(|e| panic!("leave: {e}")), "another node still holds u1");
        assert!(store.leave(&n2, "app", &ch, "u1").await.unwrap_or_else(|e| panic!("leave: {e}")), "last node leaving removes u1");
        assert!(!store.leave(&n2, "app", &ch, "u1").await.unwrap_or_else(|e| panic!("leave: {e}")), "leaving twice is not a second removal");
        assert!(store.members("app", &ch).await.unwrap_or_else(|e| panic!("members: {e}")).is_empty());

        // The cap counts distinct users and refuses without recording.
        let capped = format!("presence-{ns}-cap");
        assert!(store.join(&n1, join(&capped, "a", 2)).await.map(|o| !o.full).unwrap_or(false));
        assert!(store.join(&n2, join(&capped, "b", 2)).await.map(|o| !o.full).unwrap_or(false));
        assert!(store.join(&n2, join(&capped, "a", 2)).await.map(|o| !o.full && !o.first).unwrap_or(false), "existing user joins a full channel");
        let o = store.join(&n1, join(&capped, "c", 2)).await.unwrap_or_else(|e| panic!("join: {e}"));
        assert!(o.full && !o.first, "a new user beyond the cap is refused");
        assert_eq!(store.members("app", &capped).await.map(|m| m.len()).unwrap_or(0), 2);

        // Sweeping a node removes exactly the members only it held, once.
        let mut removed = store.sweep_node(&n1).await.unwrap_or_else(|e| panic!("sweep: {e}"));
        removed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        assert_eq!(removed, vec![], "a and b are still held by n2 after sweeping n1");
        let mut removed = store.sweep_node(&n2).await.unwrap_or_else(|e| panic!("sweep: {e}"));
        removed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let users: Vec<&str> = removed.iter().map(|r| r.user_id.as_str()).collect();
        assert_eq!(users, vec!["a", "b"]);
        assert!(removed.iter().all(|r| r.app_id == "app" && r.channel == capped));
        assert!(store.sweep_node(&n2).await.unwrap_or_else(|e| panic!("sweep: {e}")).is_empty(), "a second sweep reports nothing");
        assert!(store.members("app", &capped).await.unwrap_or_else(|e| panic!("members: {e}")).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_honours_the_contract() {
        conformance::run_all(&MemoryPresenceStore::new(), "t").await;
    }
}
