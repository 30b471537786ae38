//! [`TransportPresenceStore`]: cluster presence replicated over the cluster [`Transport`]
//! (`PRESENCE_DRIVER=transport`), for deployments with a broker and no shared store.
//!
//! # How it works
//! Each node owns its contributions (which users it holds in which channels) and is the only
//! one that changes them. Every change is published on `P.presence` as a *delta* carrying the
//! node id, its incarnation (the epoch: start time + random bits), a per-incarnation delta
//! number (1, 2, … without gaps) and the node's clock. Every node keeps a replica of every
//! other incarnation's contributions; a channel's members are the union. A lost, duplicated
//! or reordered delta is recognised by its number: duplicates are dropped, a gap freezes that
//! replica and asks its owner for a full state (`Sync`), sent in chunks. Every
//! `sync_interval` each node publishes a *digest* (delta number, hash of its contributions,
//! clock); a replica that disagrees asks for the full state (at most once per interval).
//!
//! A starting node publishes `Sync` to everybody and is **not ready for presence** until
//! `sync_wait` passed: its first presence call (the cluster adapter's start-up sweep) waits
//! for it, logging that it does. Peers answer with their full states and *relay* what they
//! hold of earlier incarnations of the starting node's id, so a node restarted under the same
//! id finds what its previous life left and its start-up sweep removes (and announces) it,
//! then tells everybody to retire those incarnations (`Retire`; retired incarnations are
//! ignored for good if they speak again).
//!
//! # Guarantees (compare [`PresenceStore`])
//! - **Atomicity is per node**: `join`, `leave`, `members` and `sweep_node` are atomic on this
//!   node's replica; replicas converge within about one transport round trip (or one
//!   `sync_interval` after a lost message).
//! - **First / last, as clients see them**: `first` is true when no replica entry for the user
//!   existed *on this node*; `gone` when none is left. Two races are repaired so that every
//!   subscriber ends with the right members and sees each transition once:
//!   - two joins of one user on two nodes within one round trip may both be `first`: both
//!     announce `member_added`; a subscriber's presence view drops an addition of a member it
//!     already lists, so clients see it once (the `member_added` *webhook* fires twice);
//!   - a last leave on one node racing a join of the same user on another node that already
//!     saw the user: the leaver announces the removal; the joiner, applying that delta while
//!     still holding the user, announces it again (`member_added`, numbered after the
//!     removal; [`ReplicatedMemberEvent::announce`]). Clients see the user leave and come
//!     back; webhooks see both.
//!   - the last connections of one user leaving on two nodes within one round trip: each
//!     node still sees the other's entry, so neither leave is `gone` and neither announces.
//!     A node applying such an unannounced leave that leaves the user held nowhere knows
//!     nobody announced it; the smallest live node id among them announces the removal
//!     (cluster-wide broadcast and webhook) and publishes it as a delta of its own, so a node
//!     whose join raced it announces the user again as above.
//! - **Member events follow the replica**: every delta that announced an event is also handed
//!   to this node's subscribers ([`ReplicatedMemberEvent`], not announced), so a subscription
//!   that started while the origin's broadcast was in flight (and missed it) still gets it;
//!   and [`PresenceStore::reflects`] makes the cluster adapter hold a member broadcast until
//!   the replica applied its change (boundedly), so a snapshot and the events after it agree.
//!   Duplicates are dropped by number (the node's member order) and by each subscriber's view.
//! - **Dead nodes**: every survivor drops a dead node's replica when the cluster adapter
//!   sweeps it, but only the survivor with the smallest node id among the live ones (as its
//!   replica knows them: peers heard within `node_timeout` that did not say goodbye) returns
//!   the removals, so each `member_removed` is announced once while the survivors agree on
//!   who is live (they disagree only while liveness itself is in flux). A join of one of those
//!   users on a survivor within a round trip of the sweep is not repaired.
//! - **Sequence numbers** come from a hybrid clock per node, `max(now_µs, last + 1)`, which
//!   also takes in every clock it hears. So a decision made after this node learnt of an
//!   earlier one (causally after) is numbered above it, on any node; concurrent decisions on
//!   different nodes are ordered by time. Numbers of one node strictly increase; a
//!   receiver sees the numbers of one channel increase per user for every decision that
//!   depends on the previous one.
//! - **Snapshots** are conservative: the snapshot number is the lowest of this node's clock
//!   and of every live peer's *floor* (its last applied in-order clock or advertised clock),
//!   so every change not in the snapshot is numbered above it. Some changes above it may
//!   already be in the snapshot; the subscriber's presence view drops those that change
//!   nothing for it. Not exact like the shared store: an add-then-remove pair inside that
//!   window can reach a new subscriber as a brief `member_added`/`member_removed` flicker.

//! # Trade-off against the shared store (Redis)
//! | | shared store | replicated over the transport |
//! |---|---|---|
//! | dependency | Redis next to the broker | none beyond the broker |
//! | consistency | one atomic step in the store | per node, converging within ≈ one round trip |
//! | memory per node | its own contributions | the presence of the whole cluster |
//! | traffic | one store call per change | one delta per change + a digest per node per `sync_interval` |
//!
//! # Bounds
//! A peer incarnation holds at most `max_entries` entries and `max_users_per_channel` per
//! channel (more is dropped and counted); at most 1024 peer incarnations (and full states in
//! progress) are held; a peer clock more than an hour ahead is refused; retired incarnations
//! remembered are bounded. `max_members` is checked against this node's replica: first joins
//! of different users on different nodes within one round trip can together pass it briefly
//! (a subscriber's presence view has slack for that). Nothing of a peer's message is trusted to be
//! well formed: undecodable messages are counted and dropped.

mod replica;
mod shared;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::replica::{ChKey, Limits, Replica};
use self::shared::{Counters, Shared};
use self::wire::Wire;
use super::{
    names, AdapterError, PresenceJoin, PresenceJoinOutcome, PresenceLeave, PresenceSnapshot,
    PresenceStore, RemovedMember, ReplicatedMemberEvent, Transport,
};

/// Settings of a [`TransportPresenceStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportPresenceOptions {
    /// Topic prefix: the cluster prefix (the topic is `{prefix}.presence`).
    pub prefix: String,
    /// How often each node publishes its digest (default 2 s; the cluster's heartbeat
    /// interval is a good value).
    pub sync_interval: Duration,
    /// A peer unheard for this long no longer counts as live for the snapshot numbers and
    /// for choosing who announces a sweep (default 10 s: the cluster's node timeout).
    pub node_timeout: Duration,
    /// How long a starting node waits for the others' states before serving presence
    /// (default 1 s).
    pub sync_wait: Duration,
    /// Most entries (channel × user) held for one peer incarnation (default 1 000 000).
    pub max_entries: usize,
    /// Most users held per channel for one peer incarnation (default 100 000).
    pub max_users_per_channel: usize,
}

impl Default for TransportPresenceOptions {
    fn default() -> Self {
        TransportPresenceOptions {
            prefix: "sockudo".to_owned(),
            sync_interval: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            sync_wait: Duration::from_secs(1),
            max_entries: 1_000_000,
            max_users_per_channel: 100_000,
        }
    }
}

/// Counters of one store (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportPresenceStats {
    /// Deltas applied from peers.
    pub deltas_applied: u64,
    /// Gaps detected in a peer's deltas (each asks for a full state).
    pub gaps: u64,
    /// Full states installed from peers.
    pub states_installed: u64,
    /// Requests for a full state this node sent.
    pub sync_requests: u64,
    /// Messages dropped as undecodable or implausible.
    pub malformed: u64,
    /// Publishes that failed (repaired by the next digest / full state).
    pub publish_errors: u64,
    /// Peer entries dropped by the bounds.
    pub truncated: u64,
}

/// Presence replicated over the transport; see the module docs.
pub struct TransportPresenceStore {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    events: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ReplicatedMemberEvent>>>,
}

impl std::fmt::Debug for TransportPresenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportPresenceStore")
            .field("node", &self.shared.node)
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl Drop for TransportPresenceStore {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl TransportPresenceStore {
    /// Subscribe to the presence topic, ask the live nodes for their states and start the
    /// digest task. Presence calls wait until `sync_wait` passed (see the module docs).
    /// Must be called inside a Tokio runtime.
    pub async fn start<T: Transport>(
        node_id: impl Into<String>,
        transport: Arc<T>,
        opts: TransportPresenceOptions,
    ) -> Result<Arc<Self>, AdapterError> {
        let node = node_id.into();
        names::validate_name("node id", &node)?;
        names::validate_name("cluster prefix", &opts.prefix)?;
        if opts.sync_interval.is_zero() || opts.node_timeout <= opts.sync_interval {
            return Err(AdapterError::Malformed(
                "presence sync_interval must be positive and below node_timeout".into(),
            ));
        }
        let topic = format!("{}.presence", opts.prefix);
        let stream = transport.subscribe(&topic).await?;
        let epoch = super::twin::new_epoch();
        let limits = Limits {
            max_entries: opts.max_entries,
            max_users_per_channel: opts.max_users_per_channel,
            node_timeout: opts.node_timeout,
        };
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: events_tx,
            state: Mutex::new(Replica::new(node.clone(), epoch, limits)),
            node,
            epoch,
            topic,
            transport,
            ready_at: Instant::now() + opts.sync_wait,
            opts,
            pending: Mutex::new(HashMap::new()),
            send: tokio::sync::Mutex::new(()),
            counters: Counters::default(),
        });
        let me = shared.clone();
        let consumer = tokio::spawn(async move {
            let mut stream = stream;
            while let Some(msg) = stream.next().await {
                me.on_message(&msg);
            }
        });
        let me = shared.clone();
        let ticker = tokio::spawn(async move { me.digest_loop().await });
        let hello = Wire::Sync {
            n: shared.node.clone(),
            e: shared.epoch,
            target: None,
        };
        shared.publish(&hello).await;
        tracing::info!(node = %shared.node, wait = ?shared.opts.sync_wait, "replicated presence: asked the cluster for its state; presence waits for the answers");
        Ok(Arc::new(TransportPresenceStore {
            shared,
            tasks: Mutex::new(vec![consumer, ticker]),
            events: Mutex::new(Some(events_rx)),
        }))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportPresenceStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportPresenceStats {
            deltas_applied: l(&c.deltas_applied),
            gaps: l(&c.gaps),
            states_installed: l(&c.states_installed),
            sync_requests: l(&c.sync_requests),
            malformed: l(&c.malformed),
            publish_errors: l(&c.publish_errors),
            truncated: self.shared.state.lock().truncated,
        }
    }

    /// One hash of everything this node holds (its own contributions and every replica):
    /// equal on nodes whose views agree. For tests and diagnostics.
    pub fn view_digest(&self) -> u64 {
        self.shared.state.lock().view_digest()
    }

    /// Whether the store still runs (not stopped).
    pub fn is_running(&self) -> bool {
        !self.tasks.lock().is_empty()
    }

    /// The last presence number this node issued or heard of.
    pub fn clock(&self) -> u64 {
        self.shared.state.lock().clock
    }

    fn check_node(&self, node_id: &str) -> Result<(), AdapterError> {
        if node_id == self.shared.node {
            Ok(())
        } else {
            Err(AdapterError::Malformed(format!(
                "this replicated presence store belongs to node {:?}, not {node_id:?}",
                self.shared.node
            )))
        }
    }

    async fn ready(&self) {
        if Instant::now() < self.shared.ready_at {
            tracing::debug!(node = %self.shared.node, "presence waits for the cluster's state");
            tokio::time::sleep_until(self.shared.ready_at).await;
        }
    }
}

#[async_trait]
impl PresenceStore for TransportPresenceStore {
    async fn join(
        &self,
        node_id: &str,
        j: PresenceJoin<'_>,
    ) -> Result<PresenceJoinOutcome, AdapterError> {
        self.check_node(node_id)?;
        self.ready().await;
        let key: ChKey = (j.app_id.to_owned(), j.channel.to_owned());
        let sh = &self.shared;
        let _send = sh.send.lock().await;
        let (outcome, delta) = {
            let mut st = sh.state.lock();
            let now = Instant::now();
            let mine = st.own.get(&key).is_some_and(|u| u.contains_key(j.user_id));
            let present = st.held_anywhere(&key, j.user_id);
            let full = !present && st.member_count(&key) >= j.max_members;
            if mine || full {
                return Ok(PresenceJoinOutcome {
                    first: false,
                    full,
                    members: st.members(&key),
                    seq: 0,
                    snapshot_seq: st.watermark(now),
                });
            }
            let info = j.info.map(str::to_owned);
            st.own
                .entry(key.clone())
                .or_default()
                .insert(j.user_id.to_owned(), info.clone());
            let seq = if present { 0 } else { st.tick() };
            st.own_nseq += 1;
            let delta = Wire::Delta {
                n: sh.node.clone(),
                e: sh.epoch,
                s: st.own_nseq,
                c: st.advertise(),
                a: key.0.clone(),
                ch: key.1.clone(),
                u: j.user_id.to_owned(),
                i: info,
                j: true,
                q: seq,
            };
            let outcome = PresenceJoinOutcome {
                first: !present,
                full: false,
                members: st.members(&key),
                seq,
                snapshot_seq: st.watermark(now),
            };
            (outcome, delta)
        };
        sh.publish(&delta).await;
        Ok(outcome)
    }

    async fn leave(
        &self,
        node_id: &str,
        app_id: &str,
        channel: &str,
        user_id: &str,
    ) -> Result<PresenceLeave, AdapterError> {
        self.check_node(node_id)?;
        self.ready().await;
        let key: ChKey = (app_id.to_owned(), channel.to_owned());
        let sh = &self.shared;
        let _send = sh.send.lock().await;
        let (left, delta) = {
            let mut st = sh.state.lock();
            let Some(users) = st.own.get_mut(&key) else {
                return Ok(PresenceLeave::default());
            };
            if users.remove(user_id).is_none() {
                return Ok(PresenceLeave::default());
            }
            if users.is_empty() {
                st.own.remove(&key);
            }
            let gone = !st.held_anywhere(&key, user_id);
            let seq = if gone { st.tick() } else { 0 };
            st.own_nseq += 1;
            let delta = Wire::Delta {
                n: sh.node.clone(),
                e: sh.epoch,
                s: st.own_nseq,
                c: st.advertise(),
                a: key.0.clone(),
                ch: key.1.clone(),
                u: user_id.to_owned(),
                i: None,
                j: false,
                q: seq,
            };
            (PresenceLeave { gone, seq }, delta)
        };
        sh.publish(&delta).await;
        Ok(left)
    }

    async fn members(&self, app_id: &str, channel: &str) -> Result<PresenceSnapshot, AdapterError> {
        self.ready().await;
        let st = self.shared.state.lock();
        let key: ChKey = (app_id.to_owned(), channel.to_owned());
        Ok(PresenceSnapshot {
            members: st.members(&key),
            seq: st.watermark(Instant::now()),
        })
    }

    async fn sweep_node(&self, node_id: &str) -> Result<Vec<RemovedMember>, AdapterError> {
        self.ready().await;
        let sh = &self.shared;
        if node_id != sh.node {
            return Ok(sh.state.lock().sweep_peer(node_id, Instant::now()));
        }
        let (removed, retired) = {
            let _send = sh.send.lock().await;
            let mut st = sh.state.lock();
            let (removed, retired) = st.sweep_self();
            st.own_nseq += 1; // the full state below replaces every delta before it
            (removed, retired)
        };
        if !retired.is_empty() {
            tracing::info!(node = %sh.node, epochs = ?retired, members = removed.len(), "replicated presence: retired what an earlier run of this node id left");
            let w = Wire::Retire {
                n: sh.node.clone(),
                e: sh.epoch,
                retired,
            };
            let _send = sh.send.lock().await;
            sh.publish(&w).await;
        }
        sh.send_state(None).await;
        Ok(removed)
    }

    async fn nodes(&self) -> Result<Vec<String>, AdapterError> {
        Ok(self.shared.state.lock().nodes())
    }

    fn reflects(&self, origin: &str, seq: u64) -> bool {
        let sh = &self.shared;
        if origin == sh.node {
            return true;
        }
        let st = sh.state.lock();
        st.peers
            .range((origin.to_owned(), 0)..=(origin.to_owned(), u64::MAX))
            .any(|(_, inc)| inc.floor >= seq)
    }

    fn member_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<ReplicatedMemberEvent>> {
        self.events.lock().take()
    }

    fn stop(&self, goodbye: bool) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        if goodbye {
            let sh = self.shared.clone();
            tokio::spawn(async move {
                let w = Wire::Bye {
                    n: sh.node.clone(),
                    e: sh.epoch,
                };
                let _send = sh.send.lock().await;
                sh.publish(&w).await;
            });
        }
    }
}

#[cfg(test)]
mod tests;
