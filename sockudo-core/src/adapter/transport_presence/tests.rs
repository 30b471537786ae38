//! The store against a scripted peer that speaks the wire format directly: lost, duplicated
//! and implausible messages, full states, and the re-announcement of a racing leave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::replica::{digest, Contribs};
use super::wire::{self, Wire};
use super::*;
use crate::adapter::{MemberChange, MemoryTransport, TransportStream};

const P: &str = "tp";

fn opts() -> TransportPresenceOptions {
    TransportPresenceOptions {
        prefix: P.into(),
        sync_interval: Duration::from_millis(50),
        node_timeout: Duration::from_secs(2),
        sync_wait: Duration::from_millis(50),
        ..TransportPresenceOptions::default()
    }
}

struct Peer {
    t: MemoryTransport,
    seen: TransportStream,
}

impl Peer {
    async fn new(hub: &MemoryTransport) -> Peer {
        let t = hub.node();
        let seen = t.subscribe(&format!("{P}.presence")).await.unwrap();
        Peer { t, seen }
    }
    async fn send(&self, w: &Wire) {
        self.t
            .publish(&format!("{P}.presence"), w.encode().unwrap())
            .await
            .unwrap();
    }
    async fn send_raw(&self, b: &'static [u8]) {
        self.t
            .publish(&format!("{P}.presence"), bytes::Bytes::from_static(b))
            .await
            .unwrap();
    }
    /// Wait for a message from the store matching `f`.
    async fn expect(&mut self, what: &str, f: impl Fn(&Wire) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = tokio::time::timeout_at(deadline, self.seen.next())
                .await
                .unwrap_or_else(|_| panic!("no {what}"))
                .unwrap();
            if Wire::decode(&m).map(|w| f(&w)).unwrap_or(false) {
                return;
            }
        }
    }
}

fn delta(s: u64, c: u64, user: &str, join: bool, q: u64) -> Wire {
    Wire::Delta {
        n: "x".into(),
        e: 7,
        s,
        c,
        a: "app".into(),
        ch: "presence-r".into(),
        u: user.into(),
        i: join.then(|| "{}".to_owned()),
        j: join,
        q,
    }
}

async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn members(s: &TransportPresenceStore) -> Vec<String> {
    s.members("app", "presence-r")
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_duplicates_and_garbage_are_handled() {
    let hub = MemoryTransport::new();
    let mut peer = Peer::new(&hub).await;
    let b = TransportPresenceStore::start("b", Arc::new(hub.node()), opts())
        .await
        .unwrap();
    let now = replica::now_us();
    peer.send(&delta(1, now, "u1", true, now)).await;
    peer.send(&delta(1, now, "u1", true, now)).await; // duplicate
    eventually(|| b.stats().deltas_applied == 1).await;
    assert_eq!(members(&b).await, vec!["u1"]);
    // Garbage and a clock from the far future are dropped and counted.
    peer.send_raw(b"not json").await;
    peer.send(&delta(2, u64::MAX - 1, "u9", true, 0)).await;
    eventually(|| b.stats().malformed == 2).await;
    // A gap: delta 3 without 2 freezes the replica and asks x for its full state.
    peer.send(&delta(3, now + 3, "u3", true, now + 3)).await;
    peer.expect(
        "a sync request for x",
        |w| matches!(w, Wire::Sync { n, target: Some(t), .. } if n == "b" && t == "x"),
    )
    .await;
    assert_eq!(b.stats().gaps, 1);
    assert_eq!(
        members(&b).await,
        vec!["u1"],
        "nothing applied past the gap"
    );
    // The full state repairs it.
    let mut c = Contribs::new();
    let users = c.entry(("app".into(), "presence-r".into())).or_default();
    for u in ["u1", "u2", "u3"] {
        users.insert(u.into(), Some("{}".into()));
    }
    let d = digest("x", &c);
    for m in wire::full_state("x", 7, None, 3, now + 3, &c, d) {
        peer.send(&m).await;
    }
    eventually(|| b.stats().states_installed == 1).await;
    assert_eq!(members(&b).await, vec!["u1", "u2", "u3"]);
    // In sync again: the next delta applies.
    peer.send(&delta(4, now + 4, "u2", false, 0)).await;
    eventually(|| b.stats().deltas_applied == 2).await;
    assert_eq!(members(&b).await, vec!["u1", "u3"]);
    // A digest that disagrees (a lost message) asks again, once the last request is older
    // than the sync interval (a peer sends one per interval).
    tokio::time::sleep(opts().sync_interval * 2).await;
    peer.send(&Wire::Digest {
        n: "x".into(),
        e: 7,
        s: 4,
        c: now + 5,
        d: 12345,
    })
    .await;
    peer.expect(
        "another sync request",
        |w| matches!(w, Wire::Sync { target: Some(t), .. } if t == "x"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_racing_a_join_here_is_announced_again() {
    let hub = MemoryTransport::new();
    let peer = Peer::new(&hub).await;
    let b = TransportPresenceStore::start("b", Arc::new(hub.node()), opts())
        .await
        .unwrap();
    let mut events = b.member_events().unwrap();
    let now = replica::now_us();
    peer.send(&delta(1, now, "ann", true, now)).await;
    eventually(|| b.stats().deltas_applied == 1).await;
    let local = events.recv().await.unwrap();
    assert_eq!(
        (local.change, local.seq, local.announce),
        (MemberChange::Added, now, false),
        "a peer's announced join is delivered locally, not announced again"
    );
    let o = b
        .join(
            "b",
            PresenceJoin {
                app_id: "app",
                channel: "presence-r",
                user_id: "ann",
                info: Some("{\"b\":1}"),
                max_members: 10,
            },
        )
        .await
        .unwrap();
    assert!(!o.first, "x holds ann");
    // x, not having seen b's join, announces ann removed.
    peer.send(&delta(2, now + 10, "ann", false, now + 10)).await;
    let removed = events.recv().await.unwrap();
    assert_eq!(
        (removed.change, removed.announce),
        (MemberChange::Removed, false)
    );
    let again = events.recv().await.unwrap();
    assert_eq!((again.change, again.announce), (MemberChange::Added, true));
    assert!(again.seq > now + 10, "numbered after the removal");
    assert_eq!(again.info.as_deref(), Some("{\"b\":1}"));
    assert_eq!(members(&b).await, vec!["ann"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_node_id_is_served() {
    let hub = MemoryTransport::new();
    let b = TransportPresenceStore::start("b", Arc::new(hub.node()), opts())
        .await
        .unwrap();
    assert!(b.leave("c", "app", "presence-r", "u").await.is_err());
    assert!(
        TransportPresenceStore::start("bad id", Arc::new(hub.node()), opts())
            .await
            .is_err()
    );
}

/// Last leaves racing on two nodes: each saw the other still holding the user, so neither
/// announced the removal. The smallest live node announces it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_last_leaves_are_announced_by_the_smallest_node() {
    for (store, announces) in [("b", true), ("z", false)] {
        let hub = MemoryTransport::new();
        let mut peer = Peer::new(&hub).await;
        let s = TransportPresenceStore::start(store, Arc::new(hub.node()), opts())
            .await
            .unwrap();
        let mut events = s.member_events().unwrap();
        let now = replica::now_us();
        peer.send(&delta(1, now, "ann", true, now)).await;
        eventually(|| s.stats().deltas_applied == 1).await;
        assert_eq!(events.recv().await.unwrap().change, MemberChange::Added);
        let join = PresenceJoin {
            app_id: "app",
            channel: "presence-r",
            user_id: "ann",
            info: Some("{}"),
            max_members: 10,
        };
        assert!(!s.join(store, join).await.unwrap().first, "x holds ann");
        // This node's last connection leaves while x still holds ann: not gone here.
        let left = s.leave(store, "app", "presence-r", "ann").await.unwrap();
        assert!(!left.gone);
        // x left at the same time, having seen this node hold ann: unannounced too.
        peer.send(&delta(2, now + 10, "ann", false, 0)).await;
        eventually(|| s.stats().deltas_applied == 2).await;
        assert!(members(&s).await.is_empty());
        if announces {
            let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("the removal is announced")
                .unwrap();
            assert_eq!((e.change, e.announce), (MemberChange::Removed, true));
            assert!(e.seq > now + 10, "numbered after both leaves");
            // …and published for the other nodes as an announced removal of this node.
            peer.expect("the announced removal", |w| {
                matches!(w, Wire::Delta { n, u, j: false, q, .. }
                    if n == store && u == "ann" && *q == e.seq)
            })
            .await;
        } else {
            // x (the smaller id) announces it; this node stays quiet.
            tokio::time::sleep(opts().sync_interval * 4).await;
            assert!(events.try_recv().is_err(), "z announces nothing");
        }
    }
}
