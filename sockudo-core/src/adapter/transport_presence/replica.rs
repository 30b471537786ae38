//! The replicated presence state of one node, without any I/O: this node's own
//! contributions (authoritative) and a replica of every other incarnation's.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::super::{PresenceMember, RemovedMember};

/// `(app_id, channel)`.
pub(super) type ChKey = (String, String);
/// user → info.
pub(super) type Users = BTreeMap<String, Option<String>>;
/// The contributions of one incarnation.
pub(super) type Contribs = BTreeMap<ChKey, Users>;
/// `(node id, epoch)`.
pub(super) type IncKey = (String, u64);

/// How many retired incarnations are remembered (ignored if they speak again).
const MAX_TOMBSTONES: usize = 4096;

/// Most peer incarnations (and full states in progress) held: a bound against a flood of
/// made-up senders.
pub(super) const MAX_INCARNATIONS: usize = 1024;

/// A peer clock this far ahead of ours is refused (it would drag every sequence ahead).
pub(super) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Bounds on what peers may make this node hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Most `(channel, user)` entries of one peer incarnation.
    pub max_entries: usize,
    pub max_users_per_channel: usize,
    pub node_timeout: Duration,
}

/// FNV-1a over the parts of one entry, with separators; entries are XOR-ed together so a
/// digest is order-independent and updated incrementally.
pub(super) fn entry_hash(node: &str, key: &ChKey, user: &str, info: Option<&str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let parts: [&[u8]; 5] = [
        node.as_bytes(),
        key.0.as_bytes(),
        key.1.as_bytes(),
        user.as_bytes(),
        info.map_or(b"\xff".as_slice(), str::as_bytes),
    ];
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Digest of one incarnation's contributions (as the wire's `StateEnd`/`Digest` carry it).
pub(super) fn digest(node: &str, c: &Contribs) -> u64 {
    c.iter()
        .flat_map(|(k, users)| users.iter().map(move |(u, i)| (k, u, i)))
        .fold(0, |d, (k, u, i)| d ^ entry_hash(node, k, u, i.as_deref()))
}

/// Microseconds since the Unix epoch.
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What this node knows of another incarnation.
#[derive(Debug)]
pub(super) struct Incarnation {
    pub contribs: Contribs,
    /// Number of the last delta applied in order.
    pub applied: u64,
    /// False after a lost delta until the next full state.
    pub in_sync: bool,
    /// Every presence number this incarnation hands out from now on is above it.
    pub floor: u64,
    /// When it last spoke itself (`None`: known only from a relay).
    pub last_heard: Option<Instant>,
    /// It said goodbye (left the cluster).
    pub departed: bool,
    /// When we last asked it for its full state.
    pub last_request: Option<Instant>,
    /// Entries in `contribs`.
    pub entries: usize,
}

impl Incarnation {
    fn new(last_heard: Option<Instant>) -> Self {
        Incarnation {
            contribs: Contribs::new(),
            applied: 0,
            in_sync: true,
            floor: 0,
            last_heard,
            departed: false,
            last_request: None,
            entries: 0,
        }
    }

    fn holds(&self, key: &ChKey, user: &str) -> bool {
        self.contribs.get(key).is_some_and(|u| u.contains_key(user))
    }
}

/// One node's presence state.
#[derive(Debug)]
pub(super) struct Replica {
    pub node: String,
    pub epoch: u64,
    pub own: Contribs,
    /// Number of this node's last delta.
    pub own_nseq: u64,
    /// Hybrid clock: the last presence number issued or observed.
    pub clock: u64,
    pub peers: BTreeMap<IncKey, Incarnation>,
    tombstones: HashSet<IncKey>,
    tomb_order: VecDeque<IncKey>,
    pub limits: Limits,
    /// Peer data dropped by the limits (counted, logged by the caller).
    pub truncated: u64,
}

impl Replica {
    pub fn new(node: String, epoch: u64, limits: Limits) -> Self {
        Replica {
            node,
            epoch,
            own: Contribs::new(),
            own_nseq: 0,
            clock: 0,
            peers: BTreeMap::new(),
            tombstones: HashSet::new(),
            tomb_order: VecDeque::new(),
            limits,
            truncated: 0,
        }
    }

    /// The next presence number: `max(now, last + 1)`.
    pub fn tick(&mut self) -> u64 {
        self.clock = now_us().max(self.clock.saturating_add(1));
        self.clock
    }

    /// Advance the clock to at least now, and return it: a promise that every number this
    /// node hands out later is above it.
    pub fn advertise(&mut self) -> u64 {
        self.clock = self.clock.max(now_us());
        self.clock
    }

    /// Take a peer's clock into ours (causality). False when it is implausibly far ahead.
    pub fn observe(&mut self, clock: u64) -> bool {
        if clock > now_us().saturating_add(MAX_CLOCK_SKEW.as_micros() as u64) {
            return false;
        }
        self.clock = self.clock.max(clock);
        true
    }

    pub fn is_tombstoned(&self, k: &IncKey) -> bool {
        self.tombstones.contains(k)
    }

    pub fn tombstone(&mut self, k: IncKey) {
        if self.tombstones.insert(k.clone()) {
            self.tomb_order.push_back(k);
            while self.tomb_order.len() > MAX_TOMBSTONES {
                if let Some(old) = self.tomb_order.pop_front() {
                    self.tombstones.remove(&old);
                }
            }
        }
    }

    /// Whether `k` is known or may be added within [`MAX_INCARNATIONS`].
    pub fn may_add(&self, k: &IncKey) -> bool {
        self.peers.contains_key(k) || self.peers.len() < MAX_INCARNATIONS
    }

    /// The incarnation `k`, created when absent (the caller checked the tombstones).
    pub fn incarnation(&mut self, k: &IncKey, heard: Option<Instant>) -> &mut Incarnation {
        self.peers
            .entry(k.clone())
            .or_insert_with(|| Incarnation::new(heard))
    }

    /// Whether anybody but this node's own contributions (and `except`) holds `user`.
    fn held_by_peers(&self, key: &ChKey, user: &str, except: Option<&str>) -> bool {
        self.peers
            .iter()
            .any(|((n, _), inc)| Some(n.as_str()) != except && inc.holds(key, user))
    }

    pub fn held_anywhere(&self, key: &ChKey, user: &str) -> bool {
        self.own.get(key).is_some_and(|u| u.contains_key(user))
            || self.held_by_peers(key, user, None)
    }

    /// The channel's members: the union over every incarnation (own info first).
    pub fn members(&self, key: &ChKey) -> Vec<PresenceMember> {
        let mut all: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for users in std::iter::once(self.own.get(key))
            .chain(self.peers.values().map(|i| i.contribs.get(key)))
            .flatten()
        {
            for (u, i) in users {
                all.entry(u.as_str()).or_insert(i.as_deref());
            }
        }
        all.into_iter()
            .map(|(u, i)| PresenceMember {
                user_id: u.to_owned(),
                info: i.map(str::to_owned),
            })
            .collect()
    }

    pub fn member_count(&self, key: &ChKey) -> usize {
        let mut all: HashSet<&str> = HashSet::new();
        for users in std::iter::once(self.own.get(key))
            .chain(self.peers.values().map(|i| i.contribs.get(key)))
            .flatten()
        {
            all.extend(users.keys().map(String::as_str));
        }
        all.len()
    }

    fn is_live(&self, inc: &Incarnation, now: Instant) -> bool {
        !inc.departed
            && inc
                .last_heard
                .is_some_and(|t| now.duration_since(t) <= self.limits.node_timeout)
    }

    /// The snapshot number: every member event not reflected here is numbered above it
    /// (own changes are all applied; each live peer numbers its future events above its
    /// floor). Changes of peers above their floor may already be reflected too.
    pub fn watermark(&self, now: Instant) -> u64 {
        self.peers
            .values()
            .filter(|i| self.is_live(i, now))
            .map(|i| i.floor)
            .fold(self.clock, u64::min)
    }

    /// Nodes that currently hold contributions, other than this one.
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, i)| i.contribs.values().any(|u| !u.is_empty()))
            .map(|((n, _), _)| n.clone())
            .filter(|n| *n != self.node)
            .collect();
        v.dedup();
        v
    }

    /// Whether this node announces the removals of a sweep of `dead`: the smallest node id
    /// among this one and the live peers other than `dead`.
    pub fn announces_for(&self, dead: &str, now: Instant) -> bool {
        self.is_smallest_live(Some(dead), now)
    }

    /// Whether this node announces a removal nobody announced (last leaves racing on two
    /// nodes): the smallest node id among this one and every live peer.
    pub fn leads(&self, now: Instant) -> bool {
        self.is_smallest_live(None, now)
    }

    fn is_smallest_live(&self, except: Option<&str>, now: Instant) -> bool {
        !self.peers.iter().any(|((n, _), inc)| {
            Some(n.as_str()) != except && *n < self.node && self.is_live(inc, now)
        })
    }

    /// Apply one delta of a peer (its `applied` was checked by the caller). Returns whether
    /// a leave removed an entry the peer held.
    pub fn apply_delta(
        &mut self,
        k: &IncKey,
        key: ChKey,
        user: String,
        info: Option<String>,
        join: bool,
    ) -> bool {
        let limits = self.limits;
        let Some(inc) = self.peers.get_mut(k) else {
            return false;
        };
        if join {
            if inc.holds(&key, &user) {
                if let Some(users) = inc.contribs.get_mut(&key) {
                    users.insert(user, info);
                }
                return false;
            }
            let full = inc.entries >= limits.max_entries
                || inc
                    .contribs
                    .get(&key)
                    .is_some_and(|u| u.len() >= limits.max_users_per_channel);
            if full {
                self.truncated += 1;
                return false;
            }
            inc.contribs.entry(key).or_default().insert(user, info);
            inc.entries += 1;
            false
        } else if let Some(users) = inc.contribs.get_mut(&key) {
            let removed = users.remove(&user).is_some();
            if removed {
                inc.entries = inc.entries.saturating_sub(1);
            }
            if users.is_empty() {
                inc.contribs.remove(&key);
            }
            removed
        } else {
            false
        }
    }

    /// Install a full state of a peer incarnation (already within the limits: see
    /// [`Replica::admit_entry`]).
    pub fn install(&mut self, k: &IncKey, c: Contribs, entries: usize) {
        if let Some(inc) = self.peers.get_mut(k) {
            inc.contribs = c;
            inc.entries = entries;
        }
    }

    /// Whether a full state being assembled may take one more entry (counted when not).
    pub fn admit_entry(&mut self, c: &Contribs, entries: usize, key: &ChKey) -> bool {
        let ok = entries < self.limits.max_entries
            && c.get(key)
                .is_none_or(|u| u.len() < self.limits.max_users_per_channel);
        if !ok {
            self.truncated += 1;
        }
        ok
    }

    /// Drop some contributions and report the members that vanished with them (numbered
    /// when `announce`). `dropped` are `(channel, user)` pairs no longer held by the
    /// dropped source.
    fn vanished(&mut self, dropped: Vec<(ChKey, String)>, announce: bool) -> Vec<RemovedMember> {
        let mut out = Vec::new();
        for (key, user) in dropped {
            if !self.held_anywhere(&key, &user) && announce {
                let seq = self.tick();
                out.push(RemovedMember {
                    app_id: key.0.clone(),
                    channel: key.1.clone(),
                    user_id: user,
                    seq,
                });
            }
        }
        out
    }

    /// Drop every incarnation of another node `dead`; numbered removals when this node is
    /// the announcer, nothing otherwise.
    pub fn sweep_peer(&mut self, dead: &str, now: Instant) -> Vec<RemovedMember> {
        let announce = self.announces_for(dead, now);
        let keys: Vec<IncKey> = self
            .peers
            .keys()
            .filter(|(n, _)| n == dead)
            .cloned()
            .collect();
        let mut dropped = Vec::new();
        for k in keys {
            if let Some(inc) = self.peers.remove(&k) {
                dropped.extend(flatten(inc.contribs));
            }
        }
        dropped.sort();
        dropped.dedup();
        self.vanished(dropped, announce)
    }

    /// Withdraw this node's own contributions and retire every *earlier* incarnation of its
    /// id (a previous life; a newer one is a twin that took or will take the id over).
    /// Returns the removals (this node announces them) and the retired epochs.
    pub fn sweep_self(&mut self) -> (Vec<RemovedMember>, Vec<u64>) {
        let mut dropped = flatten(std::mem::take(&mut self.own));
        let old: Vec<IncKey> = self
            .peers
            .keys()
            .filter(|(n, e)| *n == self.node && *e < self.epoch)
            .cloned()
            .collect();
        let mut retired = Vec::new();
        for k in old {
            if let Some(inc) = self.peers.remove(&k) {
                dropped.extend(flatten(inc.contribs));
            }
            retired.push(k.1);
            self.tombstone(k);
        }
        dropped.sort();
        dropped.dedup();
        (self.vanished(dropped, true), retired)
    }

    /// This node's view of everything, as one digest (equal on nodes that agree).
    pub fn view_digest(&self) -> u64 {
        self.peers
            .iter()
            .fold(digest(&self.node, &self.own), |d, ((n, _), i)| {
                d ^ digest(n, &i.contribs)
            })
    }
}

fn flatten(c: Contribs) -> Vec<(ChKey, String)> {
    c.into_iter()
        .flat_map(|(k, users)| users.into_keys().map(move |u| (k.clone(), u)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_entries: 3,
            max_users_per_channel: 2,
            node_timeout: Duration::from_secs(10),
        }
    }

    fn key(c: &str) -> ChKey {
        ("app".into(), c.into())
    }

    #[tokio::test]
    async fn peer_data_is_capped() {
        let mut r = Replica::new("a".into(), 1, limits());
        let k = ("b".to_owned(), 2);
        r.incarnation(&k, Some(Instant::now()));
        for (c, u) in [("x", "1"), ("x", "2"), ("x", "3"), ("y", "1"), ("z", "1")] {
            r.apply_delta(&k, key(c), u.into(), None, true);
        }
        assert_eq!(r.member_count(&key("x")), 2);
        assert_eq!(r.member_count(&key("y")), 1);
        assert_eq!(r.member_count(&key("z")), 0);
        assert_eq!(r.truncated, 2);
    }

    #[tokio::test]
    async fn only_the_smallest_live_survivor_announces() {
        let now = Instant::now();
        let mut b = Replica::new("b".into(), 1, limits());
        for n in ["a", "c"] {
            let k = (n.to_owned(), 1);
            b.incarnation(&k, Some(now));
            b.apply_delta(&k, key("x"), format!("only-{n}"), None, true);
        }
        assert!(!b.announces_for("c", now), "a is live and smaller");
        assert!(
            b.announces_for("a", now),
            "b is the smallest once a is gone"
        );
        assert!(b.sweep_peer("c", now).is_empty());
        let removed = b.sweep_peer("a", now);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].user_id, "only-a");
    }

    #[tokio::test]
    async fn clock_is_hybrid_and_refuses_far_future() {
        let mut r = Replica::new("a".into(), 1, limits());
        let s1 = r.tick();
        assert!(r.observe(s1 + 1_000_000));
        assert!(r.tick() > s1 + 1_000_000);
        assert!(!r.observe(u64::MAX));
        assert!(r.tick() < u64::MAX / 2);
    }

    #[test]
    fn digest_is_order_independent() {
        let mut a = Contribs::new();
        a.entry(key("x")).or_default().insert("1".into(), None);
        a.entry(key("y"))
            .or_default()
            .insert("2".into(), Some("{}".into()));
        let mut b = Contribs::new();
        b.entry(key("y"))
            .or_default()
            .insert("2".into(), Some("{}".into()));
        b.entry(key("x")).or_default().insert("1".into(), None);
        assert_eq!(digest("n", &a), digest("n", &b));
        assert_ne!(digest("n", &a), digest("m", &a));
    }
}
