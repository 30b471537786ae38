//! Presence across nodes (docs/architecture.md §4): `member_added` exactly on a user's first
//! connection in the cluster, `member_removed` exactly on its last; every node reports the
//! same members; a subscriber on one node sees members connected to the others.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{drain, join, presence_ids, user_ids, wait_for, WAIT};
use sockudo_testkit::{Cluster, Event, TestClient};

const CHANNEL: &str = "presence-storm";

/// Storm clients: client `k` is on node `k % 3` as user `u{k % USERS}`, so each user has one
/// connection on every node.
const STORM: usize = 120;
const USERS: usize = 40;
/// Users whose every connection leaves.
const ALL_LEAVE: std::ops::Range<usize> = 0..14;
/// Users of which two of three connections leave (the one on node `user % 3` stays).
const SOME_LEAVE: std::ops::Range<usize> = 14..28;
/// Users that get one more connection while two of theirs leave (never absent meanwhile).
const EXTRA: std::ops::Range<usize> = 14..20;
/// Users that join for the first time while the others leave.
const LATE: std::ops::Range<usize> = 0..6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stay,
    Unsubscribe,
    Disconnect,
}

fn role(k: usize) -> Role {
    let user = k % USERS;
    let node = k % 3;
    let leaves = ALL_LEAVE.contains(&user) || (SOME_LEAVE.contains(&user) && node != user % 3);
    match (leaves, k % 2) {
        (false, _) => Role::Stay,
        (true, 0) => Role::Unsubscribe,
        (true, _) => Role::Disconnect,
    }
}

fn expected_members() -> BTreeSet<String> {
    let mut users: BTreeSet<String> = (0..USERS)
        .filter(|u| !ALL_LEAVE.contains(u))
        .map(|u| format!("u{u}"))
        .collect();
    users.extend(LATE.map(|u| format!("late{u}")));
    users.extend((0..3).map(|i| format!("obs-{i}")));
    users
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::random::<u64>() % max_ms.max(1))
}

/// A client still subscribed at the end, with its snapshot and what it received after it.
struct Remaining {
    label: String,
    snapshot: BTreeSet<String>,
    client: TestClient,
}

/// Apply member events to a view: every `member_added` must be for a user absent from the
/// view and every `member_removed` for a present one (a subscriber's snapshot and the events
/// after it form one exact history).
fn apply(label: &str, view: &mut BTreeSet<String>, events: &[Event]) {
    let history = |user: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.data["user_id"] == user)
            .map(|e| e.event.trim_start_matches("pusher_internal:").to_string())
            .collect()
    };
    for e in events {
        if !e
            .channel
            .as_deref()
            .is_some_and(|c| c.starts_with("presence-"))
        {
            continue;
        }
        match e.event.as_str() {
            "pusher_internal:member_added" => {
                let user = e.data["user_id"].as_str().unwrap().to_string();
                let fresh = view.insert(user.clone());
                assert!(
                    fresh,
                    "{label}: member_added for {user}, who was already present; its events: {:?}",
                    history(&user)
                );
            }
            "pusher_internal:member_removed" => {
                let user = e.data["user_id"].as_str().unwrap().to_string();
                let known = view.remove(&user);
                assert!(
                    known,
                    "{label}: member_removed for {user}, who was not present; its events: {:?}",
                    history(&user)
                );
            }
            "pusher:error" | "pusher:subscription_error" => panic!("{label}: {}", e.raw),
            _ => {}
        }
    }
}

async fn join_leave_storm_leaves_one_consistent_member_list(cluster: Cluster) {
    // Observers, there before the storm, joining all at once (one per node): each must see a
    // clean first/last history from its own snapshot on, whatever the interleaving of their
    // joins (a snapshot that lists a member is never followed by that member's in-flight
    // member_added).
    let joins = (0..3).map(|i| {
        let url = cluster.ws_url(i);
        tokio::spawn(async move {
            let mut c = TestClient::connect(&url).await.unwrap();
            let ok = join(&mut c, CHANNEL, &format!("obs-{i}")).await;
            (presence_ids(&ok), c)
        })
    });
    let mut observers: Vec<(BTreeSet<String>, TestClient)> = Vec::new();
    for j in joins {
        observers.push(j.await.unwrap());
    }

    // Everyone joins at once; once all are in, the leavers leave while newcomers join. (A user
    // leaving the cluster and coming back at once is `rejoin_while_the_last_connection_leaves`.)
    let joined = std::sync::Arc::new(tokio::sync::Barrier::new(STORM + 1));
    let mut tasks = Vec::new();
    for k in 0..STORM {
        let url = cluster.ws_url(k % 3);
        let joined = std::sync::Arc::clone(&joined);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(jitter(200)).await;
            let mut c = TestClient::connect(&url).await.unwrap();
            let user = format!("u{}", k % USERS);
            let ok = join(&mut c, CHANNEL, &user).await;
            let snapshot = presence_ids(&ok);
            c.take_pending(); // nothing: the server sends no channel event before the snapshot
            joined.wait().await;
            match role(k) {
                Role::Stay => {
                    return Some(Remaining {
                        label: format!("storm client {k} ({user}, node {})", k % 3),
                        snapshot,
                        client: c,
                    })
                }
                Role::Unsubscribe => {
                    tokio::time::sleep(jitter(300)).await;
                    c.unsubscribe(CHANNEL).await.unwrap();
                    // Keep the socket open until the server has surely handled it.
                    let _ = c.events_until(Duration::from_millis(300)).await;
                    c.close().await.unwrap();
                }
                Role::Disconnect => {
                    tokio::time::sleep(jitter(300)).await;
                    c.close().await.unwrap();
                }
            }
            None
        }));
    }
    joined.wait().await;
    // Newcomers and extra connections while the leavers leave.
    let newcomers = EXTRA
        .map(|u| format!("u{u}"))
        .chain(LATE.map(|u| format!("late{u}")));
    for (n, user) in newcomers.enumerate() {
        let node = n % 3;
        let url = cluster.ws_url(node);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(jitter(300)).await;
            let mut c = TestClient::connect(&url).await.unwrap();
            let ok = join(&mut c, CHANNEL, &user).await;
            let snapshot = presence_ids(&ok);
            c.take_pending();
            Some(Remaining {
                label: format!("newcomer {user} (node {node})"),
                snapshot,
                client: c,
            })
        }));
    }
    let mut remaining = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            remaining.push(r);
        }
    }

    let expected = expected_members();
    for i in 0..3 {
        let api = cluster.api(i);
        let expected = expected.clone();
        wait_for(
            &format!("node {i}'s member list to settle"),
            WAIT * 2,
            || {
                let api = api.clone();
                let expected = expected.clone();
                async move {
                    let (status, body) = api
                        .get(&format!("/channels/{CHANNEL}/users"), &[])
                        .await
                        .ok()?;
                    (status == 200 && user_ids(&body) == expected).then_some(())
                }
            },
        )
        .await;
    }
    let mut answers = Vec::new();
    for i in 0..3 {
        let (status, body) = cluster
            .api(i)
            .get(&format!("/channels/{CHANNEL}/users"), &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        answers.push(user_ids(&body));
        let (_, info) = cluster
            .api(i)
            .get(&format!("/channels/{CHANNEL}"), &[("info", "user_count")])
            .await
            .unwrap();
        assert_eq!(
            info["user_count"],
            serde_json::json!(expected.len()),
            "node {i}: {info}"
        );
    }
    assert!(
        answers.iter().all(|a| *a == expected),
        "every node answers {expected:?}: {answers:?}"
    );

    // Drain every client at once (each waits for its own quiet).
    // (Clients are handed back, not dropped: a drop would be a leave the others then see.)
    let observed: Vec<_> = observers
        .into_iter()
        .map(|(snapshot, mut c)| {
            tokio::spawn(async move {
                let events = drain(&mut c).await;
                (snapshot, events, c)
            })
        })
        .collect();
    let rest: Vec<_> = remaining
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let events = drain(&mut r.client).await;
                (r, events)
            })
        })
        .collect();
    let mut keep = Vec::new();
    // Every observer replays a strict first/last history and ends at the expected set.
    for (i, o) in observed.into_iter().enumerate() {
        let (snapshot, events, c) = o.await.unwrap();
        keep.push(c);
        let label = format!("observer {i}");
        let mut view = snapshot;
        apply(&label, &mut view, &events);
        assert_eq!(view, expected, "{label}: ghosts or missing members");
    }
    // Every remaining storm client ends at the expected set too.
    for r in rest {
        let (r, events) = r.await.unwrap();
        keep.push(r.client);
        let mut view = r.snapshot.clone();
        apply(&r.label, &mut view, &events);
        let odd: Vec<_> = view.symmetric_difference(&expected).collect();
        let histories: Vec<_> = odd
            .iter()
            .map(|u| {
                (
                    u.to_string(),
                    events
                        .iter()
                        .filter(|e| e.data["user_id"] == u.as_str())
                        .map(|e| e.event.clone())
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            view, expected,
            "{}: ghosts or missing members; snapshot {:?}; their events {histories:?}",
            r.label, r.snapshot
        );
    }
}

async fn subscription_succeeded_lists_members_on_other_nodes(cluster: Cluster) {
    let mut alice = cluster.client(0).await.unwrap();
    let ok = join(&mut alice, "presence-lobby", "alice").await;
    assert_eq!(presence_ids(&ok), BTreeSet::from(["alice".to_string()]));

    let mut bob = cluster.client(1).await.unwrap();
    let ok = join(&mut bob, "presence-lobby", "bob").await;
    assert_eq!(
        presence_ids(&ok),
        BTreeSet::from(["alice".to_string(), "bob".to_string()]),
        "{:?}",
        ok.raw
    );
    assert_eq!(
        ok.data["presence"]["hash"]["alice"],
        serde_json::json!({ "name": "alice" }),
        "user_info travels: {:?}",
        ok.raw
    );
    assert_eq!(ok.data["presence"]["count"], serde_json::json!(2));

    // alice (node 0) hears bob (node 1) arrive.
    let added = alice
        .recv_event_on("presence-lobby", "pusher_internal:member_added", WAIT)
        .await
        .unwrap();
    assert_eq!(added.data["user_id"], "bob");
    assert_eq!(
        added.data["user_info"],
        serde_json::json!({ "name": "bob" })
    );

    // A second connection of alice on node 2 sees both, and nobody hears alice again.
    let mut alice2 = cluster.client(2).await.unwrap();
    let ok = join(&mut alice2, "presence-lobby", "alice").await;
    assert_eq!(
        presence_ids(&ok),
        BTreeSet::from(["alice".to_string(), "bob".to_string()])
    );
    let events = drain(&mut bob).await;
    assert!(
        events
            .iter()
            .all(|e| e.event != "pusher_internal:member_added"),
        "alice was already present: {events:?}"
    );

    // alice leaving node 0 is not alice leaving the cluster.
    alice.close().await.unwrap();
    let events = drain(&mut bob).await;
    assert!(
        events
            .iter()
            .all(|e| e.event != "pusher_internal:member_removed"),
        "alice is still on node 2: {events:?}"
    );
    alice2.close().await.unwrap();
    let removed = bob
        .recv_event_on("presence-lobby", "pusher_internal:member_removed", WAIT)
        .await
        .unwrap();
    assert_eq!(removed.data["user_id"], "alice");
}

/// A user's last connection leaves on one node while a new connection of it joins on another:
/// the `member_removed` of the first and the `member_added` of the second are decided in that
/// order by the presence store, but published by different nodes, and can reach Redis (and so
/// every node) in the opposite order. The store's presence sequence numbers let the watcher's
/// node drop the late removal instead of leaving its subscribers believing the user is gone.
async fn rejoin_while_the_last_connection_leaves(cluster: Cluster) {
    let mut watcher = cluster.client(2).await.unwrap();
    let ok = join(&mut watcher, "presence-flap", "watcher");
    let snapshot = presence_ids(&ok.await);
    for round in 0..30 {
        let user = format!("flap{round}");
        let mut a = cluster.client(0).await.unwrap();
        join(&mut a, "presence-flap", &user).await;
        let mut b = cluster.client(1).await.unwrap();
        let (closed, _) = tokio::join!(a.close(), async {
            join(&mut b, "presence-flap", &user).await
        });
        closed.unwrap();
        std::mem::forget(b); // stays subscribed until the cluster goes
    }
    let mut view = snapshot;
    let events = drain(&mut watcher).await;
    apply("watcher", &mut view, &events);
    let expected: BTreeSet<String> = (0..30)
        .map(|r| format!("flap{r}"))
        .chain(["watcher".to_string()])
        .collect();
    assert_eq!(view, expected);
}

/// Observers on every node join a presence channel at the same moment as 20 users who come
/// and go through random nodes (some with a second tab on another node, leaving in any
/// order). Repeated over fresh channels to hit the interleavings: no observer may receive a
/// `member_added` for a member its snapshot lists, nor a `member_removed` for one it does not,
/// and each ends with exactly the members still connected.
async fn concurrent_observer_joins_with_churn_never_double_join(cluster: Cluster) {
    for round in 0..6 {
        let channel = format!("presence-snap-{round}");
        let observers: Vec<_> = (0..3)
            .map(|i| {
                let (url, channel) = (cluster.ws_url(i), channel.clone());
                tokio::spawn(async move {
                    let mut c = TestClient::connect(&url).await.unwrap();
                    let ok = join(&mut c, &channel, &format!("obs-{i}")).await;
                    (presence_ids(&ok), c)
                })
            })
            .collect();
        // User u has one tab, or two on different nodes when u is even; odd users leave.
        let churn: Vec<_> = (0..20)
            .flat_map(|u| {
                let tabs = if u % 2 == 0 { 2 } else { 1 };
                (0..tabs).map(move |t| (u, t))
            })
            .map(|(u, t)| {
                let (url, channel) = (cluster.ws_url((u + t) % 3), channel.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(jitter(60)).await;
                    let mut c = TestClient::connect(&url).await.unwrap();
                    join(&mut c, &channel, &format!("u{u}")).await;
                    if u % 2 == 1 {
                        tokio::time::sleep(jitter(120)).await;
                        c.close().await.unwrap();
                        return None;
                    }
                    Some(c)
                })
            })
            .collect();
        let mut observed = Vec::new();
        for o in observers {
            observed.push(o.await.unwrap());
        }
        let mut stay = Vec::new();
        for c in churn {
            stay.extend(c.await.unwrap());
        }
        let expected: BTreeSet<String> = (0..20)
            .filter(|u| u % 2 == 0)
            .map(|u| format!("u{u}"))
            .chain((0..3).map(|i| format!("obs-{i}")))
            .collect();
        let api = cluster.api(0);
        wait_for("the member list to settle", WAIT * 2, || {
            let (api, expected, channel) = (api.clone(), expected.clone(), channel.clone());
            async move {
                let (status, body) = api
                    .get(&format!("/channels/{channel}/users"), &[])
                    .await
                    .ok()?;
                (status == 200 && user_ids(&body) == expected).then_some(())
            }
        })
        .await;
        let drained: Vec<_> = observed
            .into_iter()
            .map(|(snapshot, mut c)| {
                tokio::spawn(async move {
                    let events = drain(&mut c).await;
                    (snapshot, events, c)
                })
            })
            .collect();
        for (i, d) in drained.into_iter().enumerate() {
            let (mut view, events, c) = d.await.unwrap();
            apply(&format!("round {round}, observer {i}"), &mut view, &events);
            assert_eq!(view, expected, "round {round}, observer {i}");
            stay.push(c);
        }
        for c in stay {
            c.close().await.unwrap();
        }
    }
}

on_every_backend!(
    join_leave_storm_leaves_one_consistent_member_list,
    subscription_succeeded_lists_members_on_other_nodes,
    rejoin_while_the_last_connection_leaves,
    concurrent_observer_joins_with_churn_never_double_join,
);

// The same scenarios with presence replicated over the broker instead of the shared store.
on_broker_only!(
    join_leave_storm_leaves_one_consistent_member_list,
    subscription_succeeded_lists_members_on_other_nodes,
    rejoin_while_the_last_connection_leaves,
    concurrent_observer_joins_with_churn_never_double_join,
);
