//! Cluster-wide presence membership.
//!
//! Each node tracks its own connections per user; the shared store only records *which
//! nodes* hold a user in a channel. So `member_added` fires when the set of nodes goes from
//! empty to one, `member_removed` when it becomes empty again, and a dead node's
//! contributions can be swept in one idempotent step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AdapterError, PresenceJoin, PresenceJoinOutcome, PresenceLeave, PresenceMember,
    PresenceSnapshot, RemovedMember,
};

/// Shared presence state.
///
/// Contract (every method is one atomic step in the store):
/// - `join(node, j)`: adds `node` to the user's node set. `first` is true exactly when the set
///   was empty. When the user is absent and the channel already has `max_members` users the
///   join is refused with `full` and nothing changes. A repeated join by the same node is a
///   no-op with `first = false`.
/// - `leave(node, ..)`: removes `node`; `gone` exactly when the set became empty (the member
///   is gone). Leaving twice is not `gone` the second time.
/// - `sweep_node(node)`: removes every contribution of `node` and returns the members whose
///   set became empty. Of several concurrent sweeps of one node, each removal is reported by
///   exactly one of them.
/// - Presence sequence: every `first` join and every removal (`gone` leave, swept member)
///   takes the next number of the channel's sequence in the same atomic step, and reports it
///   (`seq`); other outcomes report 0. Numbers of one channel strictly increase for as long as
///   the store lives, *including across the channel becoming empty*: receivers drop a member
///   event whose number is not above the last one they applied for that user, so a sequence
///   that restarted would make fresh events look stale.
/// - Snapshots: `members` and `join` report, read in the same atomic step as the members
///   they return, the sequence number of the last change those members reflect
///   (`PresenceSnapshot::seq`, `PresenceJoinOutcome::snapshot_seq`): every event numbered at
///   or below it is in the snapshot, every event above it is not. A subscriber filters the
///   member events it receives against that number (see the node's presence view).
///
/// A *replicated* store ([`super::TransportPresenceStore`]) makes each of these one atomic
/// step on the calling node's replica instead of in one shared place: the rules hold for the
/// steps of each node, and across nodes once replication caught up (about one round trip).
/// Its snapshot numbers are conservative (every change not in a snapshot is numbered above
/// it; some above it may be in it) and the numbers of different nodes come from hybrid
/// clocks (causally ordered). Its module docs say what clients see of the races that remain.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Count a connection of `node_id` for the member; says whether the user is new to the channel cluster-wide (or refused over the limit).
    async fn join(
        &self,
        node_id: &str,
        join: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError>;
    /// Remove a connection of `node_id` for the member; says whether the user left the channel cluster-wide.
    async fn leave(
        &self,
        node_id: &str,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError>;
    /// The channel's members with the sequence number of the last change they reflect, in one
    /// atomic step (see [`PresenceSnapshot`]).
    async fn members(&self, app_id: &str, channel: &str) -> Result<PresenceSnapshot, AdapterError>;
    /// Remove everything dead node `node_id` contributed and return the members that left with it (idempotent).
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

    /// This node stops serving presence: it left the cluster (`goodbye`, after withdrawing
    /// its contributions with `sweep_node`) or it halts like a crash (`!goodbye`, tests).
    /// Called by the cluster adapter; a store with background work (the replicated one)
    /// stops it here. The default does nothing.
    fn stop(&self, goodbye: bool) {
        let _ = goodbye;
    }

    /// Whether this node's view already reflects a member event numbered `seq` that node
    /// `origin` decided. A shared store always does (the decision was made in it); a
    /// replicated one does once it applied `origin`'s change. The cluster adapter holds a
    /// member broadcast back (boundedly) until it does, so a subscriber's snapshot and the
    /// events it then receives agree.
    fn reflects(&self, origin: &str, seq: u64) -> bool {
        let _ = (origin, seq);
        true
    }

    /// Member events a replicated store hands to its node (see
    /// [`super::ReplicatedMemberEvent`]), taken once by the cluster adapter. Default: none.
    fn member_events(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<super::ReplicatedMemberEvent>> {
        None
    }
}

#[derive(Debug, Default)]
struct ChannelMembers {
    /// user → (info, nodes holding it)
    users: BTreeMap<String, (Option<String>, BTreeSet<String>)>,
}

#[derive(Debug, Default)]
struct State {
    channels: HashMap<(String, String), ChannelMembers>,
    /// The presence sequence of every channel at once. One store-wide counter satisfies the
    /// per-channel contract (strictly increasing within each channel) and, unlike a counter
    /// kept with the channel's members, survives the channel becoming empty (its entry is
    /// dropped then) without keeping anything per channel.
    seq: u64,
}

fn next_seq(seq: &mut u64) -> u64 {
    *seq += 1;
    *seq
}

/// In-process store: the single-node default and the reference for the contract.
#[derive(Debug, Default)]
pub struct MemoryPresenceStore {
    state: Mutex<State>,
}

impl MemoryPresenceStore {
    /// An empty in-process store.
    pub fn new() -> Self {
        Self::default()
    }
}

fn snapshot(ch: &ChannelMembers) -> Vec<PresenceMember> {
    ch.users
        .iter()
        .map(|(u, (info, _))| PresenceMember {
            user_id: u.clone(),
            info: info.clone(),
        })
        .collect()
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn join(
        &self,
        node_id: &str,
        j: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        let mut state = self.state.lock();
        let State { channels, seq } = &mut *state;
        let ch = channels
            .entry((j.app_id.to_owned(), j.channel.to_owned()))
            .or_default();
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
                    return Ok(PresenceJoinOutcome {
                        first: false,
                        full: true,
                        members,
                        seq: 0,
                        snapshot_seq: *seq,
                    });
                }
                ch.users.insert(
                    j.user_id.to_owned(),
                    (
                        j.info.map(str::to_owned),
                        BTreeSet::from([node_id.to_owned()]),
                    ),
                );
                true
            }
        };
        let members = snapshot(ch);
        let taken = if first { next_seq(seq) } else { 0 };
        Ok(PresenceJoinOutcome {
            first,
            full: false,
            members,
            seq: taken,
            snapshot_seq: *seq,
        })
    }

    async fn leave(
        &self,
        node_id: &str,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError> {
        let mut state = self.state.lock();
        let key = (app_id.to_owned(), channel.to_owned());
        let Some(ch) = state.channels.get_mut(&key) else {
            return Ok(PresenceLeave::default());
        };
        let gone = match ch.users.get_mut(user_id) {
            Some((_, nodes)) => nodes.remove(node_id) && nodes.is_empty(),
            None => false,
        };
        if gone {
            ch.users.remove(user_id);
        }
        if ch.users.is_empty() {
            state.channels.remove(&key);
        }
        Ok(if gone {
            PresenceLeave {
                gone,
                seq: next_seq(&mut state.seq),
            }
        } else {
            PresenceLeave::default()
        })
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<PresenceSnapshot, AdapterError> {
        let state = self.state.lock();
        Ok(PresenceSnapshot {
            members: state
                .channels
                .get(&(app_id.to_owned(), channel.to_owned()))
                .map(snapshot)
                .unwrap_or_default(),
            seq: state.seq,
        })
    }

    async fn sweep_node(&self, node_id: &str) -> Result<Vec<RemovedMember>, AdapterError> {
        let mut state = self.state.lock();
        let State { channels, seq } = &mut *state;
        let mut removed = Vec::new();
        channels.retain(|(app, channel), ch| {
            ch.users.retain(|user, (_, nodes)| {
                if nodes.remove(node_id) && nodes.is_empty() {
                    removed.push(RemovedMember {
                        app_id: app.clone(),
                        channel: channel.clone(),
                        user_id: user.clone(),
                        seq: next_seq(seq),
                    });
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
///
/// The suite talks to the store *as several nodes* through [`Nodes`](conformance::Nodes): a shared store is the
/// same store for every node id ([`SharedNodes`](conformance::SharedNodes)); a replicated one is one instance per node
/// id on a shared transport ([`ReplicatedNodes`](conformance::ReplicatedNodes)). Between steps made on different nodes the
/// suite calls [`Nodes::settle`](conformance::Nodes::settle) (replication is eventual); every assertion holds for both.
#[doc(hidden)]
pub mod conformance {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::adapter::{Transport, TransportPresenceOptions, TransportPresenceStore};

    /// The store as a set of nodes sees it.
    #[async_trait]
    pub trait Nodes: Send + Sync {
        /// The store node `node` uses (created on first use).
        async fn store(&self, node: &str) -> Arc<dyn PresenceStore>;
        /// `node` dies (a crash: its contributions stay until swept). Nothing to do for a
        /// shared store.
        async fn crash(&self, node: &str);
        /// Wait until every live node's view reflects every change made so far.
        async fn settle(&self);
    }

    /// One shared store for every node id.
    #[allow(missing_debug_implementations)]
    pub struct SharedNodes(pub Arc<dyn PresenceStore>);

    #[async_trait]
    impl Nodes for SharedNodes {
        async fn store(&self, _node: &str) -> Arc<dyn PresenceStore> {
            self.0.clone()
        }
        async fn crash(&self, _node: &str) {}
        async fn settle(&self) {}
    }

    /// One [`TransportPresenceStore`] per node id over transports made by `transport`.
    #[allow(missing_debug_implementations)]
    pub struct ReplicatedNodes<T: Transport> {
        transport: Box<dyn Fn() -> Arc<T> + Send + Sync>,
        opts: TransportPresenceOptions,
        stores: Mutex<BTreeMap<String, Arc<TransportPresenceStore>>>,
    }

    impl<T: Transport> ReplicatedNodes<T> {
        /// Fast timings and a fresh topic prefix; `transport` gives each node its handle.
        pub fn new(transport: impl Fn() -> Arc<T> + Send + Sync + 'static) -> Self {
            ReplicatedNodes {
                transport: Box::new(transport),
                opts: TransportPresenceOptions {
                    prefix: format!("conf{:08x}", rand::random::<u32>()),
                    sync_interval: Duration::from_millis(100),
                    node_timeout: Duration::from_secs(2),
                    sync_wait: Duration::from_millis(200),
                    ..TransportPresenceOptions::default()
                },
                stores: Mutex::new(BTreeMap::new()),
            }
        }
    }

    #[async_trait]
    impl<T: Transport> Nodes for ReplicatedNodes<T> {
        async fn store(&self, node: &str) -> Arc<dyn PresenceStore> {
            if let Some(s) = self.stores.lock().get(node) {
                return s.clone();
            }
            let s = TransportPresenceStore::start(node, (self.transport)(), self.opts.clone())
                .await
                .unwrap_or_else(|e| panic!("start {node}: {e}"));
            self.stores.lock().insert(node.to_owned(), s.clone());
            s
        }
        async fn crash(&self, node: &str) {
            if let Some(s) = self.stores.lock().remove(node) {
                s.stop(false);
            }
        }
        async fn settle(&self) {
            let stores: Vec<_> = self.stores.lock().values().cloned().collect();
            settle(&stores).await;
        }
    }

    /// Wait until the running stores agree on everything and each one's snapshot number
    /// covers every number issued so far (panics after 10 s).
    pub async fn settle(stores: &[Arc<TransportPresenceStore>]) {
        let stores: Vec<_> = stores.iter().filter(|s| s.is_running()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let target = stores.iter().map(|s| s.clock()).max().unwrap_or(0);
        loop {
            let mut digests = stores.iter().map(|s| s.view_digest());
            let first = digests.next();
            let agree = digests.all(|d| Some(d) == first);
            let mut covered = true;
            for s in &stores {
                let snap = s.members("app", "settle-probe").await;
                covered &= snap.map(|m| m.seq >= target).unwrap_or(false);
            }
            if agree && covered {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let mut seen = Vec::new();
                for s in &stores {
                    let snap = s.members("app", "settle-probe").await.map(|m| m.seq);
                    seen.push(format!(
                        "{s:?}: view {:x} snapshot {snap:?} {:?}",
                        s.view_digest(),
                        s.stats()
                    ));
                }
                panic!(
                    "replicated presence did not converge within 10 s (target {target}): {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn join<'a>(channel: &'a str, user: &'a str, max: usize) -> PresenceJoin<'a> {
        PresenceJoin {
            app_id: "app",
            channel,
            user_id: user,
            info: Some(r#"{"n":1}"#),
            max_members: max,
        }
    }

    /// Run every check; panics with a message naming the broken rule. `ns` keeps runs on a
    /// shared store apart.
    pub async fn run_all(nodes: &dyn Nodes, ns: &str) {
        let ch = format!("presence-{ns}-a");
        let (n1, n2, n3) = (format!("{ns}-n1"), format!("{ns}-n2"), format!("{ns}-n3"));
        let (s1, s2, s3) = (
            nodes.store(&n1).await,
            nodes.store(&n2).await,
            nodes.store(&n3).await,
        );
        // Every number the channel hands out must be above the previous one.
        let mut last = 0u64;
        let mut taken = |seq: u64, what: &str| {
            assert!(
                seq > last,
                "{what}: presence seq {seq} is not above the channel's previous {last}"
            );
            last = seq;
        };
        let o = s1
            .join(&n1, join(&ch, "u1", 10))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert!(o.first && !o.full, "first join of a user is first");
        assert_eq!(
            o.members,
            vec![PresenceMember {
                user_id: "u1".into(),
                info: Some(r#"{"n":1}"#.into())
            }]
        );
        taken(o.seq, "first join");
        let first_seq = o.seq;
        assert!(
            o.snapshot_seq <= o.seq,
            "a snapshot never claims a change made after it"
        );
        nodes.settle().await;
        for s in [&s1, &s2] {
            let snap = s
                .members("app", &ch)
                .await
                .unwrap_or_else(|e| panic!("members: {e}"));
            assert_eq!(snap.members.len(), 1, "every node sees the member");
            assert!(
                snap.seq >= o.seq,
                "a settled snapshot carries a number covering the changes it reflects"
            );
        }
        let o = s1
            .join(&n1, join(&ch, "u1", 10))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert!(
            !o.first && o.seq == 0,
            "repeated join by the same node is not first and takes no number"
        );
        let o = s2
            .join(&n2, join(&ch, "u1", 10))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert!(
            !o.first && o.seq == 0,
            "second node's join is not first and takes no number"
        );
        assert!(
            o.snapshot_seq >= first_seq,
            "a join that changes nothing reports a number covering its snapshot"
        );
        let o = s2
            .join(&n2, join(&ch, "u2", 10))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        taken(o.seq, "another user's first join");
        nodes.settle().await;
        // Whatever a snapshot does not reflect is numbered above it.
        let before = s3
            .members("app", &ch)
            .await
            .unwrap_or_else(|e| panic!("members: {e}"));
        let l = s1
            .leave(&n1, "app", &ch, "u1")
            .await
            .unwrap_or_else(|e| panic!("leave: {e}"));
        assert_eq!(
            l,
            PresenceLeave {
                gone: false,
                seq: 0
            },
            "another node still holds u1"
        );
        nodes.settle().await;
        let l = s2
            .leave(&n2, "app", &ch, "u1")
            .await
            .unwrap_or_else(|e| panic!("leave: {e}"));
        assert!(l.gone, "last node leaving removes u1");
        assert!(
            l.seq > before.seq,
            "a change not in a snapshot is numbered above it"
        );
        taken(l.seq, "removal");
        let l = s2
            .leave(&n2, "app", &ch, "u1")
            .await
            .unwrap_or_else(|e| panic!("leave: {e}"));
        assert_eq!(
            l,
            PresenceLeave {
                gone: false,
                seq: 0
            },
            "leaving twice is not a second removal"
        );
        let l = s2
            .leave(&n2, "app", &ch, "u2")
            .await
            .unwrap_or_else(|e| panic!("leave: {e}"));
        assert!(l.gone);
        taken(l.seq, "removal of the channel's last member");
        nodes.settle().await;
        for s in [&s1, &s2, &s3] {
            assert!(s
                .members("app", &ch)
                .await
                .unwrap_or_else(|e| panic!("members: {e}"))
                .members
                .is_empty());
        }
        // The channel became empty: its sequence must go on, not restart.
        let o = s1
            .join(&n1, join(&ch, "u1", 10))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert!(o.first);
        taken(o.seq, "first join after the channel became empty");

        // The cap counts distinct users and refuses without recording.
        let capped = format!("presence-{ns}-cap");
        let mut last_capped = 0u64;
        for (s, node, user) in [(&s1, &n1, "a"), (&s2, &n2, "b")] {
            nodes.settle().await;
            let o = s
                .join(node, join(&capped, user, 2))
                .await
                .unwrap_or_else(|e| panic!("join: {e}"));
            assert!(
                !o.full && o.first && o.seq > last_capped,
                "{user}: first join takes the next number"
            );
            last_capped = o.seq;
        }
        nodes.settle().await;
        assert!(
            s2.join(&n2, join(&capped, "a", 2))
                .await
                .map(|o| !o.full && !o.first)
                .unwrap_or(false),
            "existing user joins a full channel"
        );
        let o = s1
            .join(&n1, join(&capped, "c", 2))
            .await
            .unwrap_or_else(|e| panic!("join: {e}"));
        assert!(
            o.full && !o.first && o.seq == 0,
            "a new user beyond the cap is refused without a number"
        );
        assert_eq!(
            s1.members("app", &capped)
                .await
                .map(|m| m.members.len())
                .unwrap_or(0),
            2
        );

        // Sweeping a dead node removes exactly the members only it held, each reported by
        // exactly one of the survivors' sweeps.
        nodes.settle().await;
        nodes.crash(&n1).await;
        let mut removed = Vec::new();
        for s in [&s2, &s3] {
            removed.extend(
                s.sweep_node(&n1)
                    .await
                    .unwrap_or_else(|e| panic!("sweep: {e}")),
            );
        }
        let (in_a, removed): (Vec<_>, Vec<_>) = removed.into_iter().partition(|r| r.channel == ch);
        assert_eq!(
            removed,
            vec![],
            "a and b are still held by n2 after sweeping n1"
        );
        assert_eq!(
            in_a.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(),
            vec!["u1"],
            "n1 alone held u1 in {ch}; reported once across the survivors"
        );
        taken(in_a[0].seq, "swept removal");
        nodes.settle().await;
        nodes.crash(&n2).await;
        let mut removed = s3
            .sweep_node(&n2)
            .await
            .unwrap_or_else(|e| panic!("sweep: {e}"));
        removed.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let users: Vec<&str> = removed.iter().map(|r| r.user_id.as_str()).collect();
        assert_eq!(users, vec!["a", "b"]);
        assert!(removed
            .iter()
            .all(|r| r.app_id == "app" && r.channel == capped));
        let mut seqs: Vec<u64> = removed.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        assert!(
            seqs[0] > last_capped && seqs[0] < seqs[1],
            "swept removals take distinct numbers after the joins: {seqs:?} after {last_capped}"
        );
        assert!(
            s3.sweep_node(&n2)
                .await
                .unwrap_or_else(|e| panic!("sweep: {e}"))
                .is_empty(),
            "a second sweep reports nothing"
        );
        assert!(s3
            .members("app", &capped)
            .await
            .unwrap_or_else(|e| panic!("members: {e}"))
            .members
            .is_empty());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::adapter::MemoryTransport;

    #[tokio::test]
    async fn memory_store_honours_the_contract() {
        conformance::run_all(
            &conformance::SharedNodes(Arc::new(MemoryPresenceStore::new())),
            "t",
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicated_store_honours_the_contract_over_memory_transport() {
        let hub = MemoryTransport::new();
        let nodes = conformance::ReplicatedNodes::new(move || Arc::new(hub.node()));
        conformance::run_all(&nodes, "t").await;
    }
}
