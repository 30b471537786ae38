//! A broker-only cluster: 3 nodes on a 3-server NATS cluster, no Redis, presence replicated
//! over NATS (`PRESENCE_DRIVER=transport`). Each membership transition reaches every
//! observer exactly once whichever node it happens on, a node joining late sees every
//! member, and a killed node's members are removed after the liveness timeout, once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};

use cluster_support::{drain, join, presence_ids, user_ids, wait_for, wait_formed, WAIT};
use sockudo_testkit::{Cluster, Event, TestClient};

const CH: &str = "presence-broker-only";

/// Member events seen by one observer, per (event, user).
#[derive(Default)]
struct Seen(BTreeMap<(String, String), usize>);

impl Seen {
    fn add(&mut self, events: &[Event]) {
        for e in events {
            let kind = match e.event.as_str() {
                "pusher_internal:member_added" => "added",
                "pusher_internal:member_removed" => "removed",
                _ => continue,
            };
            let user = e.data["user_id"].as_str().unwrap_or_default().to_owned();
            *self.0.entry((kind.to_owned(), user)).or_insert(0) += 1;
        }
    }
    fn count(&self, kind: &str, user: &str) -> usize {
        self.0
            .get(&(kind.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

async fn members_on(cluster: &Cluster, i: usize) -> Option<BTreeSet<String>> {
    let (st, body) = cluster
        .api(i)
        .get(&format!("/channels/{CH}/users"), &[])
        .await
        .ok()?;
    (st == 200).then(|| user_ids(&body))
}

async fn wait_members(cluster: &Cluster, nodes: &[usize], want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    for &i in nodes {
        wait_for(&format!("node {i} to list {want:?}"), WAIT * 2, || async {
            (members_on(cluster, i).await? == want).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_replicated_over_nats_without_redis() {
    let mut cluster = Cluster::builder()
        .nodes(3)
        .nats(3)
        .broker_only()
        .build()
        .await
        .unwrap();
    assert!(
        cluster.redis().is_none(),
        "no Redis in a broker-only cluster"
    );
    wait_formed(&cluster).await;

    let mut obs0 = cluster.client(0).await.unwrap();
    join(&mut obs0, CH, "obs-0").await;
    let mut obs1 = cluster.client(1).await.unwrap();
    join(&mut obs1, CH, "obs-1").await;
    wait_members(&cluster, &[0, 1, 2], &["obs-0", "obs-1"]).await;
    let (mut seen0, mut seen1) = (Seen::default(), Seen::default());
    seen0.add(&drain(&mut obs0).await);
    seen1.add(&drain(&mut obs1).await);

    // ann connects on nodes 1 and 2, bob and carl on node 2.
    let mut clients: Vec<TestClient> = Vec::new();
    for (node, user) in [(1, "ann"), (2, "ann"), (2, "bob"), (2, "carl")] {
        let mut c = cluster.client(node).await.unwrap();
        join(&mut c, CH, user).await;
        clients.push(c);
    }
    let all = ["obs-0", "obs-1", "ann", "bob", "carl"];
    wait_members(&cluster, &[0, 1, 2], &all).await;
    // ann's connection on node 1 leaves: she is still on node 2, nobody is told.
    clients[0].unsubscribe(CH).await.unwrap();
    wait_members(&cluster, &[0, 1, 2], &all).await;
    seen0.add(&drain(&mut obs0).await);
    seen1.add(&drain(&mut obs1).await);
    for (who, seen) in [("obs-0", &seen0), ("obs-1", &seen1)] {
        for user in ["ann", "bob", "carl"] {
            assert_eq!(seen.count("added", user), 1, "{who}: {user} added once");
            assert_eq!(seen.count("removed", user), 0, "{who}: {user} not removed");
        }
    }
    assert_eq!(
        seen0.count("added", "obs-1"),
        1,
        "obs-0 saw obs-1 arrive once"
    );

    // Node 2 dies: its members go after the liveness timeout, announced once.
    cluster.kill_node(2).unwrap();
    drop(clients);
    wait_members(&cluster, &[0, 1], &["obs-0", "obs-1"]).await;
    seen0.add(&drain(&mut obs0).await);
    seen1.add(&drain(&mut obs1).await);
    for (who, seen) in [("obs-0", &seen0), ("obs-1", &seen1)] {
        for user in ["ann", "bob", "carl"] {
            assert_eq!(
                seen.count("removed", user),
                1,
                "{who}: {user} removed exactly once after node 2 died"
            );
        }
    }

    // A new node joins late: it converges and lists every member.
    cluster.restart_node_as(2, "node-late").await.unwrap();
    wait_formed(&cluster).await;
    let mut late = cluster.client(2).await.unwrap();
    let ok = join(&mut late, CH, "late").await;
    assert_eq!(
        presence_ids(&ok),
        ["obs-0", "obs-1", "late"].map(String::from).into(),
        "a late node's subscriber sees every member"
    );
    wait_members(&cluster, &[0, 1, 2], &["obs-0", "obs-1", "late"]).await;
    seen0.add(&drain(&mut obs0).await);
    seen1.add(&drain(&mut obs1).await);
    assert_eq!(seen0.count("added", "late"), 1);
    assert_eq!(seen1.count("added", "late"), 1);
}
