//! What each presence subscriber believes about a channel's members, and the two filters
//! that keep that belief equal to the presence store's.
//!
//! The store numbers every membership decision of a channel (see
//! [`sockudo_core::adapter::PresenceStore`]). Two things can still go wrong on the way to a
//! subscriber, and each has its filter here:
//!
//! - **Reordering between publishers** ([`MemberOrder`], one per channel on a node): the
//!   decisions about one user may be published by different nodes, and the transport orders
//!   broadcasts per publisher only, so a `member_removed` decided before a `member_added` can
//!   arrive after it. An event numbered at or below the last one the node delivered for that
//!   user is stale and dropped for everyone.
//! - **Snapshot against events** ([`PresenceView`], one per subscriber): a subscriber's
//!   `subscription_succeeded` lists the members read from the store at some number `S`, while
//!   member events numbered at or below `S` may still be travelling to this node. Delivering
//!   one of them would add a member the snapshot already lists (pusher-js then fires
//!   `member_added` twice, and Laravel Echo's `joining()` with it) or remove one it never
//!   listed. So a subscriber takes only events above its `S`, and only those that change
//!   its view: an addition of a listed member or a removal of an unlisted one is a no-op for
//!   it (it happens when a removal in between was dropped as stale above).
//!
//! Together: after any event a subscriber receives, its view equals the store's after that
//! event for every user whose latest decision has reached this node (property-tested below).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ahash::RandomState;
use sockudo_core::adapter::{MemberChange, MemberEvent};

/// Per-user number of the last member event a node delivered on one channel.
#[derive(Debug, Default)]
pub struct MemberOrder {
    last: HashMap<Arc<str>, u64, RandomState>,
}

/// Outcome of [`MemberOrder::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordered {
    /// Newer than anything delivered for the user: deliver (and it is now recorded).
    Fresh,
    /// Newer, but not recorded because the caller's budget is spent: deliver unprotected.
    Unrecorded,
    /// At or below a number already delivered for the user: drop.
    Stale,
}

impl MemberOrder {
    /// Check `event` against the last number delivered for its user and record it.
    /// `may_grow` says whether a user not seen yet may be recorded (a node-wide bound on
    /// these entries; see the namespace's cap).
    pub fn admit(&mut self, event: &MemberEvent, may_grow: impl FnOnce() -> bool) -> Ordered {
        match self.last.get_mut(&event.user_id) {
            Some(last) if event.seq <= *last => Ordered::Stale,
            Some(last) => {
                *last = event.seq;
                Ordered::Fresh
            }
            None if may_grow() => {
                self.last.insert(Arc::clone(&event.user_id), event.seq);
                Ordered::Fresh
            }
            None => Ordered::Unrecorded,
        }
    }

    /// Users recorded.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no user is recorded.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// One subscriber's view of a presence channel: the members it was told about.
#[derive(Debug, Clone)]
pub struct PresenceView {
    /// The store's number of the snapshot in `subscription_succeeded`.
    snapshot_seq: u64,
    members: HashSet<Arc<str>, RandomState>,
    /// Most members the view may hold (see [`PresenceView::admit`]).
    cap: usize,
}

/// Outcome of [`PresenceView::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Deliver: the event changes what the subscriber knows.
    Deliver,
    /// Skip: already reflected in the subscriber's snapshot, or no change for it.
    Skip,
    /// The view would grow past its cap: the connection must resynchronise (reconnect).
    Overflow,
}

impl PresenceView {
    /// The view a `subscription_succeeded` snapshot gives: `members` as read at `seq`.
    /// `cap` bounds the view (the app's member limit leaves room for transient excess while
    /// removals are in flight; the caller adds the slack).
    pub fn from_snapshot<'a>(
        seq: u64,
        members: impl IntoIterator<Item = &'a str>,
        cap: usize,
    ) -> Self {
        PresenceView {
            snapshot_seq: seq,
            members: members.into_iter().map(Arc::from).collect(),
            cap,
        }
    }

    /// Whether the subscriber should receive `event`; applies it when it should.
    pub fn admit(&mut self, event: &MemberEvent) -> Admit {
        if event.seq <= self.snapshot_seq {
            return Admit::Skip;
        }
        match event.change {
            MemberChange::Added => {
                if self.members.contains(&event.user_id) {
                    return Admit::Skip;
                }
                if self.members.len() >= self.cap {
                    return Admit::Overflow;
                }
                self.members.insert(Arc::clone(&event.user_id));
                Admit::Deliver
            }
            MemberChange::Removed => {
                if self.members.remove(&event.user_id) {
                    Admit::Deliver
                } else {
                    Admit::Skip
                }
            }
        }
    }

    /// Whether the subscriber currently lists `user`.
    pub fn contains(&self, user: &str) -> bool {
        self.members.contains(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn ev(user: &str, seq: u64, change: MemberChange) -> MemberEvent {
        MemberEvent {
            user_id: Arc::from(user),
            seq,
            change,
        }
    }

    #[test]
    fn events_in_the_snapshot_are_skipped() {
        let mut v = PresenceView::from_snapshot(5, ["bob"], 10);
        // bob's join (4) was still in flight when the snapshot (5) was read.
        assert_eq!(v.admit(&ev("bob", 4, MemberChange::Added)), Admit::Skip);
        // ann joined (3) and left (5) before the snapshot.
        assert_eq!(v.admit(&ev("ann", 5, MemberChange::Removed)), Admit::Skip);
        assert_eq!(
            v.admit(&ev("bob", 6, MemberChange::Removed)),
            Admit::Deliver
        );
        assert!(!v.contains("bob"));
        assert_eq!(v.admit(&ev("bob", 7, MemberChange::Added)), Admit::Deliver);
        assert_eq!(
            v.admit(&ev("bob", 9, MemberChange::Added)),
            Admit::Skip,
            "an addition of a listed member is never delivered"
        );
        assert_eq!(
            v.admit(&ev("cid", 10, MemberChange::Removed)),
            Admit::Skip,
            "nor a removal of an unlisted one"
        );
    }

    #[test]
    fn a_full_view_asks_for_a_resync() {
        let mut v = PresenceView::from_snapshot(0, ["a"], 1);
        assert_eq!(v.admit(&ev("b", 1, MemberChange::Added)), Admit::Overflow);
    }

    #[test]
    fn order_drops_stale_and_respects_the_budget() {
        let mut o = MemberOrder::default();
        assert_eq!(
            o.admit(&ev("u", 3, MemberChange::Added), || true),
            Ordered::Fresh
        );
        assert_eq!(
            o.admit(&ev("u", 2, MemberChange::Removed), || true),
            Ordered::Stale
        );
        assert_eq!(
            o.admit(&ev("v", 1, MemberChange::Added), || false),
            Ordered::Unrecorded
        );
        assert_eq!(o.len(), 1);
    }

    /// A run: the store's decisions (user, added?) in order; the order in which the events
    /// reach the node (a permutation); after how many arrivals the subscriber joins the node;
    /// how many store decisions later than that its snapshot is read.
    fn run() -> impl Strategy<Value = (Vec<(u8, bool)>, Vec<usize>, usize, usize)> {
        prop::collection::vec((0u8..4, any::<bool>()), 1..40).prop_flat_map(|toggles| {
            let n = toggles.len();
            (
                Just(toggles),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                0..=n,
                0..=n,
            )
        })
    }

    proptest! {
        /// Over random interleavings of one subscriber's join and snapshot read with member
        /// events that reach the node in any order: the subscriber never gets `member_added`
        /// for a member it lists nor `member_removed` for one it does not, and once every
        /// event has arrived its view is the store's final membership.
        #[test]
        fn subscriber_view_follows_the_store((toggles, arrival, joins_after, snap_delay) in run()) {
            // The store: decision i has number i + 1 and flips a user when it is a change.
            let mut present: BTreeMap<u8, bool> = BTreeMap::new();
            let mut events = Vec::new();
            let mut states = vec![present.clone()];
            for (i, (user, add)) in toggles.iter().enumerate() {
                if *add != present.get(user).copied().unwrap_or(false) {
                    present.insert(*user, *add);
                    let change = if *add { MemberChange::Added } else { MemberChange::Removed };
                    events.push((i as u64 + 1, *user, change));
                }
                states.push(present.clone());
            }
            let arrivals: Vec<_> = arrival.iter().filter_map(|&i| events.get(i).copied()).collect();
            let joins_after = joins_after.min(arrivals.len());
            // An event reaches a node only after the store decided it, and the snapshot is read
            // after the subscriber joined: it is at least as new as every event that arrived
            // before the join.
            let floor = arrivals[..joins_after].iter().map(|(s, _, _)| *s).max().unwrap_or(0) as usize;
            let snap_at = (floor + snap_delay).min(toggles.len());
            let listed: Vec<String> = states[snap_at]
                .iter()
                .filter(|(_, p)| **p)
                .map(|(u, _)| u.to_string())
                .collect();
            let mut view = PresenceView::from_snapshot(snap_at as u64, listed.iter().map(String::as_str), 64);
            let mut order = MemberOrder::default();
            for (k, (seq, user, change)) in arrivals.iter().enumerate() {
                let e = ev(&user.to_string(), *seq, *change);
                if order.admit(&e, || true) == Ordered::Stale || k < joins_after {
                    continue;
                }
                let listed_before = view.contains(&e.user_id);
                match view.admit(&e) {
                    Admit::Deliver => {
                        match change {
                            MemberChange::Added => prop_assert!(!listed_before, "member_added for a listed member"),
                            MemberChange::Removed => prop_assert!(listed_before, "member_removed for an unlisted member"),
                        }
                        // Never back in time: the snapshot already showed the store at
                        // `snap_at`, and after this event the user is as the store had it.
                        prop_assert!(*seq > snap_at as u64, "event {} older than the snapshot {}", seq, snap_at);
                        prop_assert_eq!(view.contains(&e.user_id), states[*seq as usize].get(user).copied().unwrap_or(false));
                    }
                    Admit::Skip => {}
                    Admit::Overflow => prop_assert!(false, "cap reached"),
                }
            }
            for user in 0u8..4 {
                prop_assert_eq!(
                    view.contains(&user.to_string()),
                    present.get(&user).copied().unwrap_or(false),
                    "final view of user {} differs from the store", user
                );
            }
        }
    }
}
