//! The shared state of a [`super::TransportPresenceStore`] and the handling of every
//! message of the presence topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::replica::{self, digest, ChKey, Contribs, IncKey, Replica};
use super::wire::{self, Wire};
use super::TransportPresenceOptions;
use crate::adapter::{MemberChange, ReplicatedMemberEvent, Transport};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) deltas_applied: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) states_installed: AtomicU64,
    pub(super) sync_requests: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) publish_errors: AtomicU64,
}

/// A full state being received.
#[derive(Debug)]
pub(super) struct Pending {
    of: IncKey,
    s: u64,
    c: u64,
    contribs: Contribs,
    entries: usize,
    /// Entries were dropped by the bounds (the digest cannot match then).
    truncated: bool,
}

pub(super) struct Shared {
    pub(super) node: String,
    pub(super) epoch: u64,
    pub(super) topic: String,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) opts: TransportPresenceOptions,
    pub(super) state: Mutex<Replica>,
    pub(super) pending: Mutex<HashMap<IncKey, Pending>>,
    /// Held while publishing this node's own messages, so they leave in delta order.
    pub(super) send: tokio::sync::Mutex<()>,
    pub(super) ready_at: Instant,
    pub(super) counters: Counters,
    pub(super) events: tokio::sync::mpsc::UnboundedSender<ReplicatedMemberEvent>,
}

/// What handling one message asks this node to do.
enum Action {
    SendState,
    Relay(IncKey),
    Ask(String),
    /// Announce a removal nobody announced (see [`Shared::announce_removal`]).
    AnnounceRemoval(ChKey, String),
}

impl Shared {
    pub(super) async fn publish(&self, w: &Wire) {
        let sent = match w.encode() {
            Ok(b) => self.transport.publish(&self.topic, b).await,
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %self.node, error = %e, "presence message not sent; the next digest repairs it");
        }
    }

    pub(super) fn bump(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) async fn digest_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.opts.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _send = self.send.lock().await;
            let msg = {
                let mut st = self.state.lock();
                Wire::Digest {
                    n: self.node.clone(),
                    e: self.epoch,
                    s: st.own_nseq,
                    c: st.advertise(),
                    d: digest(&self.node, &st.own),
                }
            };
            self.publish(&msg).await;
        }
    }

    /// Publish this node's full state (or relay an incarnation of our id's previous life).
    pub(super) async fn send_state(&self, relay: Option<IncKey>) {
        let _send = self.send.lock().await;
        let msgs = {
            let mut st = self.state.lock();
            match &relay {
                None => {
                    let (s, c) = (st.own_nseq, st.advertise());
                    let d = digest(&self.node, &st.own);
                    wire::full_state(&self.node, self.epoch, None, s, c, &st.own, d)
                }
                Some(k) => match st.peers.get(k) {
                    Some(inc) => wire::full_state(
                        &self.node,
                        self.epoch,
                        Some(k.clone()),
                        inc.applied,
                        inc.floor,
                        &inc.contribs,
                        digest(&k.0, &inc.contribs),
                    ),
                    None => return,
                },
            }
        };
        for m in &msgs {
            self.publish(m).await;
        }
    }

    pub(super) fn on_message(self: &Arc<Self>, msg: &[u8]) {
        let w = match Wire::decode(msg) {
            Ok(w) => w,
            Err(e) => {
                self.bump(&self.counters.malformed);
                tracing::debug!(node = %self.node, error = %e, "dropping malformed presence message");
                return;
            }
        };
        let actions = self.handle(w);
        for a in actions {
            let me = self.clone();
            match a {
                Action::SendState => {
                    tokio::spawn(async move { me.send_state(None).await });
                }
                Action::Relay(k) => {
                    tokio::spawn(async move { me.send_state(Some(k)).await });
                }
                Action::AnnounceRemoval(key, user) => {
                    tokio::spawn(async move { me.announce_removal(key, user).await });
                }
                Action::Ask(target) => {
                    self.bump(&self.counters.sync_requests);
                    let w = Wire::Sync {
                        n: self.node.clone(),
                        e: self.epoch,
                        target: Some(target),
                    };
                    tokio::spawn(async move { me.publish(&w).await });
                }
            }
        }
    }

    /// Apply one message; returns what to send in response.
    fn handle(&self, w: Wire) -> Vec<Action> {
        let (n, e) = w.sender();
        if n == self.node && e == self.epoch {
            return Vec::new(); // our own echo
        }
        let k: IncKey = (n.to_owned(), e);
        let n = k.0.as_str();
        let now = Instant::now();
        let mut st = self.state.lock();
        if st.is_tombstoned(&k) {
            return Vec::new();
        }
        let creates = matches!(
            w,
            Wire::Delta { .. } | Wire::Digest { .. } | Wire::Begin { .. }
        );
        if creates && !st.may_add(&k) {
            self.bump(&self.counters.malformed);
            tracing::warn!(node = %self.node, from = %k.0, "too many presence incarnations known: ignoring a new one");
            return Vec::new();
        }
        let mut out = Vec::new();
        let ask = |inc: &mut replica::Incarnation, out: &mut Vec<Action>| {
            if inc
                .last_request
                .is_none_or(|t| now.duration_since(t) >= self.opts.sync_interval)
            {
                inc.last_request = Some(now);
                out.push(Action::Ask(k.0.clone()));
            }
        };
        match w {
            Wire::Delta {
                s,
                c,
                a,
                ch,
                u,
                i,
                j,
                q,
                ..
            } => {
                if !st.observe(c) {
                    self.bump(&self.counters.malformed);
                    return out;
                }
                let inc = st.incarnation(&k, Some(now));
                inc.last_heard = Some(now);
                if !inc.in_sync || s <= inc.applied {
                    return out; // waiting for a full state, or a duplicate
                }
                if Some(s) != inc.applied.checked_add(1) {
                    inc.in_sync = false;
                    self.bump(&self.counters.gaps);
                    ask(inc, &mut out);
                    return out;
                }
                inc.applied = s;
                inc.floor = inc.floor.max(c);
                let key: ChKey = (a, ch);
                let after = (q > 0 || !j).then(|| (key.clone(), u.clone(), i.clone()));
                let removed = st.apply_delta(&k, key, u, i, j);
                self.bump(&self.counters.deltas_applied);
                match after {
                    Some((key, user, info)) if q > 0 => {
                        self.announced(&mut st, key, user, info, j, q);
                    }
                    // An unannounced last leave: its node saw the user held elsewhere when it
                    // left. When that holder left at the same time (each saw the other), the
                    // user is gone and nobody said so: the smallest live node announces it.
                    Some((key, user, _))
                        if removed && !st.held_anywhere(&key, &user) && st.leads(now) =>
                    {
                        out.push(Action::AnnounceRemoval(key, user));
                    }
                    _ => {}
                }
            }
            Wire::Digest { s, c, d, .. } => {
                if !st.observe(c) {
                    self.bump(&self.counters.malformed);
                    return out;
                }
                let node = k.0.clone();
                let inc = st.incarnation(&k, Some(now));
                inc.last_heard = Some(now);
                inc.departed = false;
                if inc.in_sync && inc.applied == s && digest(&node, &inc.contribs) == d {
                    inc.floor = inc.floor.max(c);
                } else {
                    ask(inc, &mut out);
                }
            }
            Wire::Begin { of, s, c, .. } => {
                let of = of.unwrap_or_else(|| k.clone());
                let mut pending = self.pending.lock();
                if !pending.contains_key(&k) && pending.len() >= replica::MAX_INCARNATIONS {
                    self.bump(&self.counters.malformed);
                    return out;
                }
                pending.insert(
                    k.clone(),
                    Pending {
                        of,
                        s,
                        c,
                        contribs: Contribs::new(),
                        entries: 0,
                        truncated: false,
                    },
                );
            }
            Wire::Chunk { entries, .. } => {
                let mut pending = self.pending.lock();
                if let Some(p) = pending.get_mut(&k) {
                    for (a, ch, u, i) in entries {
                        let key: ChKey = (a, ch);
                        if !st.admit_entry(&p.contribs, p.entries, &key) {
                            p.truncated = true;
                        } else if p.contribs.entry(key).or_default().insert(u, i).is_none() {
                            p.entries += 1;
                        }
                    }
                }
            }
            Wire::End { d, .. } => {
                let Some(p) = self.pending.lock().remove(&k) else {
                    return out;
                };
                self.install(&mut st, &k, p, d, now);
            }
            Wire::Sync { target, .. } => {
                if target.as_deref().is_none_or(|t| t == self.node) {
                    out.push(Action::SendState);
                }
                if target.is_none() {
                    out.extend(
                        st.peers
                            .keys()
                            .filter(|(pn, pe)| pn == n && *pe != e)
                            .cloned()
                            .map(Action::Relay),
                    );
                }
            }
            Wire::Retire { retired, .. } => {
                for r in retired {
                    let old = (k.0.clone(), r);
                    if old.0 == self.node && r == self.epoch {
                        tracing::error!(node = %self.node, "a newer node with this node id retired this one: two nodes share the id");
                        continue;
                    }
                    st.peers.remove(&old);
                    st.tombstone(old);
                }
            }
            Wire::Bye { .. } => {
                if let Some(inc) = st.peers.get_mut(&k) {
                    inc.departed = true;
                }
            }
        }
        out
    }

    /// A peer announced a member event with its change `q`: deliver it to this node's
    /// subscribers too (their subscription may have missed the origin's broadcast). When it
    /// is a removal of a user this node still holds (a leave racing a join here), announce
    /// the user again, numbered after the removal (our clock took the peer's).
    fn announced(
        &self,
        st: &mut Replica,
        key: ChKey,
        user: String,
        info: Option<String>,
        joined: bool,
        q: u64,
    ) {
        let event = |info, seq, change, announce| ReplicatedMemberEvent {
            app_id: key.0.clone(),
            channel: key.1.clone(),
            user_id: user.clone(),
            info,
            seq,
            change,
            announce,
        };
        let change = if joined {
            MemberChange::Added
        } else {
            MemberChange::Removed
        };
        let _ = self.events.send(event(info, q, change, false));
        if joined {
            return;
        }
        let Some(held) = st.own.get(&key).and_then(|u| u.get(&user)).cloned() else {
            return;
        };
        let seq = st.tick();
        tracing::debug!(node = %self.node, channel = %key.1, user, "re-announcing a member another node announced as removed");
        let _ = self
            .events
            .send(event(held, seq, MemberChange::Added, true));
    }

    /// Announce `user` removed from `key`: its last holders left at the same time on
    /// different nodes, each leave unannounced because each saw the other. Published as a
    /// delta of this node that changes nothing (this node does not hold the user) with the
    /// removal's number, so every node handles it like any announced removal (delivered to
    /// its subscribers; announced again by a node whose join raced it); handed to this
    /// node as `announce` for the cluster-wide broadcast and the webhook.
    pub(super) async fn announce_removal(&self, key: ChKey, user: String) {
        let _send = self.send.lock().await;
        let delta = {
            let mut st = self.state.lock();
            if st.held_anywhere(&key, &user) {
                return; // back meanwhile: whoever holds it now announced or keeps it
            }
            let seq = st.tick();
            st.own_nseq += 1;
            tracing::debug!(node = %self.node, channel = %key.1, user, "announcing a member whose last holders left at the same time");
            let _ = self.events.send(ReplicatedMemberEvent {
                app_id: key.0.clone(),
                channel: key.1.clone(),
                user_id: user.clone(),
                info: None,
                seq,
                change: MemberChange::Removed,
                announce: true,
            });
            Wire::Delta {
                n: self.node.clone(),
                e: self.epoch,
                s: st.own_nseq,
                c: st.advertise(),
                a: key.0,
                ch: key.1,
                u: user,
                i: None,
                j: false,
                q: seq,
            }
        };
        self.publish(&delta).await;
    }

    /// Install a complete full state from sender `from`.
    fn install(&self, st: &mut Replica, from: &IncKey, p: Pending, d: u64, now: Instant) {
        let own = p.of == *from;
        if !own && (p.of.0 != self.node || p.of.1 == self.epoch) {
            return; // relays are only for the node whose earlier life they describe
        }
        if st.is_tombstoned(&p.of) || !st.observe(p.c) {
            return;
        }
        if !p.truncated && digest(&p.of.0, &p.contribs) != d {
            self.bump(&self.counters.malformed);
            return;
        }
        if !own && st.peers.contains_key(&p.of) {
            return; // already known (from another relay or the incarnation itself)
        }
        if !st.may_add(&p.of) {
            return;
        }
        let inc = st.incarnation(&p.of, own.then_some(now));
        if own {
            if inc.in_sync && p.s < inc.applied {
                return; // older than what we applied
            }
            inc.last_heard = Some(now);
            inc.floor = inc.floor.max(p.c);
        }
        inc.applied = p.s;
        inc.in_sync = true;
        st.install(&p.of, p.contribs, p.entries);
        self.bump(&self.counters.states_installed);
    }
}
