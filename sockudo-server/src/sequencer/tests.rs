//! The live sequence: unit cases and a property over random arrival orders.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn s(id: &str) -> Arc<str> {
    Arc::from(id)
}

#[test]
fn in_order_out_of_order_and_repeats() {
    let sid = s("a");
    let mut q = Sequence::starting_at(Arc::clone(&sid), 3);
    assert_eq!(q.observe(&sid, 4, 4), Step::Deliver(vec![4]));
    assert_eq!(q.observe(&sid, 4, 4), Step::Duplicate);
    assert_eq!(q.observe(&sid, 2, 2), Step::Duplicate);
    assert_eq!(
        q.observe(&sid, 6, 6),
        Step::Parked {
            opened: true,
            overflow: false
        }
    );
    assert_eq!(
        q.observe(&sid, 7, 7),
        Step::Parked {
            opened: false,
            overflow: false
        }
    );
    assert_eq!(q.gap(), Some(Gap { from: 5, to: 5 }));
    // The late one arrives by itself and unblocks the rest.
    assert_eq!(q.observe(&sid, 5, 5), Step::Deliver(vec![5, 6, 7]));
    assert_eq!(q.gap(), None);
}

#[test]
fn a_gap_filled_from_history() {
    let sid = s("a");
    let mut q = Sequence::starting_at(Arc::clone(&sid), 0);
    q.observe(&sid, 4, 4);
    assert_eq!(
        q.repair("other", vec![(1, 1)]),
        Vec::<u64>::new(),
        "stream checked"
    );
    assert_eq!(
        q.repair("a", vec![(2, 2), (1, 1), (3, 3), (9, 9)]),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        q.gap(),
        Some(Gap { from: 5, to: 8 }),
        "9 came from the store ahead of time"
    );
}

#[test]
fn an_unfillable_gap_is_given_up_one_gap_at_a_time() {
    let sid = s("a");
    let mut q = Sequence::starting_at(Arc::clone(&sid), 2);
    q.observe(&sid, 5, 5);
    q.observe(&sid, 6, 6);
    q.observe(&sid, 9, 9);
    assert_eq!(q.give_up(), Some((Gap { from: 3, to: 4 }, vec![5, 6])));
    assert_eq!(
        q.gap(),
        Some(Gap { from: 7, to: 8 }),
        "the next gap is still reported"
    );
    assert_eq!(q.give_up(), Some((Gap { from: 7, to: 8 }, vec![9])));
    assert_eq!(q.give_up(), None);
    assert_eq!(q.observe(&sid, 10, 10), Step::Deliver(vec![10]));
}

#[test]
fn a_stream_reset_mid_gap_flushes_and_restarts() {
    let (a, b) = (s("a"), s("b"));
    let mut q = Sequence::starting_at(Arc::clone(&a), 1);
    q.observe(&a, 3, 3);
    assert_eq!(
        q.observe(&b, 1, 100),
        Step::Reset {
            flushed: vec![3],
            first: 100
        }
    );
    assert_eq!(q.position(), (&b, 1));
    assert_eq!(q.observe(&b, 2, 101), Step::Deliver(vec![101]));
}

#[test]
fn parking_is_bounded() {
    let sid = s("a");
    let mut q = Sequence::starting_at(Arc::clone(&sid), 0);
    for serial in 2..(MAX_PARKED as u64 + 1) {
        assert!(matches!(
            q.observe(&sid, serial, serial),
            Step::Parked {
                overflow: false,
                ..
            }
        ));
    }
    assert!(matches!(
        q.observe(&sid, MAX_PARKED as u64 + 1, 0),
        Step::Parked { overflow: true, .. }
    ));
}

proptest! {
    /// Messages 1..=n arrive in any order, some twice, some never (lost); lost ones may be
    /// repaired from history or given up. What is passed on is strictly increasing with no
    /// repeat, and every serial is either passed on or inside a gap that was given up.
    #[test]
    fn passed_on_in_order_never_twice_never_silently_skipped(
        order in Just((1..=30u64).collect::<Vec<_>>()).prop_shuffle(),
        lost in prop::collection::btree_set(1..=30u64, 0..6),
        repeats in prop::collection::vec(1..=30u64, 0..10),
        repairable in any::<bool>(),
    ) {
        let sid = s("a");
        let mut q = Sequence::starting_at(Arc::clone(&sid), 0);
        let mut out: Vec<u64> = Vec::new();
        let mut given_up: BTreeSet<u64> = BTreeSet::new();
        let arrivals = order.iter().chain(repeats.iter()).filter(|s| !lost.contains(s));
        for &serial in arrivals {
            match q.observe(&sid, serial, serial) {
                Step::Deliver(v) => out.extend(v),
                Step::Duplicate | Step::Parked { .. } => {}
                Step::Reset { .. } => prop_assert!(false, "one stream only"),
            }
        }
        // What the node's repair loop does once the wait is over.
        while let Some(gap) = q.gap() {
            if repairable {
                let fetched = (gap.from..=gap.to).map(|s| (s, s));
                out.extend(q.repair("a", fetched));
            } else if let Some((gap, next)) = q.give_up() {
                given_up.extend(gap.from..=gap.to);
                out.extend(next);
            }
        }
        prop_assert!(out.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {:?}", out);
        let delivered: BTreeSet<u64> = out.iter().copied().collect();
        let last = q.position().1;
        for serial in 1..=last {
            prop_assert!(
                delivered.contains(&serial) || given_up.contains(&serial),
                "serial {} skipped silently", serial
            );
        }
        // Trailing losses (after the last arrival) are not gaps yet: nothing after them.
        prop_assert!(lost.iter().all(|l| *l > last || delivered.contains(l) || given_up.contains(l)));
    }
}
