//! Presence across nodes as the real **pusher-js 8.6.0** client shows it to an app (Laravel
//! Echo's `here()` / `joining()` / `leaving()`): observers on all three nodes subscribe at the
//! same moment as churn users join and leave through random nodes, round after round
//! (conformance/cluster/presence_observers.js). No observer may get `pusher:member_added` for
//! a member its `subscription_succeeded` snapshot (or a later event) already listed, nor a
//! `member_removed` for one it does not list; each ends with exactly the connected members,
//! which every node's `/channels/{c}/users` reports too.
//!
//! Needs `node` (≥ 20) and `conformance/node_modules` (`cd conformance && npm ci`). Without
//! them this test fails with that hint; it never skips. `SOCKUDO_PRESENCE_SEED` replays a
//! run's plan (the seed is in every failure message; timings still vary).

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cluster_support::{redis_cluster, user_ids, wait_for, wait_formed, WAIT};
use serde_json::{json, Value};
use sockudo_testkit::Cluster;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const ROUNDS: u32 = 10;
const USERS: u32 = 20;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance")
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// Fails (never skips) when node or the conformance client dependencies are missing.
async fn require_node(dir: &std::path::Path) {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("`node` (≥ 20) is needed to run pusher-js and could not be started: {e}")
        });
    assert!(out.status.success(), "`node --version` failed: {out:?}");
    assert!(
        dir.join("node_modules/pusher-js/package.json").exists()
            && dir.join("node_modules/pusher/package.json").exists(),
        "conformance/node_modules is missing: run `cd {} && npm ci --no-audit --no-fund`",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice() {
    observers_never_see_a_member_join_twice(redis_cluster(3).await).await;
}

/// The same over NATS between the nodes (a 3-server NATS cluster; presence in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice_over_nats() {
    let cluster = Cluster::builder().nodes(3).nats(3).build().await.unwrap();
    wait_formed(&cluster).await;
    observers_never_see_a_member_join_twice(cluster).await;
}

/// The same over RabbitMQ between the nodes (a private broker node; presence in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice_over_rabbitmq() {
    let cluster = Cluster::builder()
        .nodes(3)
        .rabbitmq()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    observers_never_see_a_member_join_twice(cluster).await;
}

/// The same over the Kafka API between the nodes (a Tansu broker; presence in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice_over_kafka() {
    let cluster = Cluster::builder().nodes(3).kafka().build().await.unwrap();
    wait_formed(&cluster).await;
    observers_never_see_a_member_join_twice(cluster).await;
}

/// The same on a Redis Cluster (3 primaries with a replica each): sharded pub/sub between
/// the nodes, presence on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice_on_redis_cluster() {
    observers_never_see_a_member_join_twice(cluster_support::redis_cluster_backend(3).await).await;
}

/// The same over Google Pub/Sub between the nodes (the emulator; presence in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_observers_never_see_a_member_join_twice_over_google_pubsub() {
    let cluster = Cluster::builder()
        .nodes(3)
        .google_pubsub()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    observers_never_see_a_member_join_twice(cluster).await;
}

async fn observers_never_see_a_member_join_twice(cluster: Cluster) {
    let dir = conformance_dir();
    require_node(&dir).await;
    let seed: u32 = std::env::var("SOCKUDO_PRESENCE_SEED")
        .ok()
        .map(|s| s.parse().expect("SOCKUDO_PRESENCE_SEED: a u32"))
        .unwrap_or_else(rand::random);
    let app = cluster.app().clone();
    let ports: Vec<String> = (0..3)
        .map(|i| cluster.node(i).addr().port().to_string())
        .collect();
    let mut child = Command::new("node")
        .current_dir(&dir)
        .arg("cluster/presence_observers.js")
        .args(["--ports", &ports.join(",")])
        .args([
            "--app-id",
            &app.id,
            "--key",
            &app.key,
            "--secret",
            &app.secret,
        ])
        .args([
            "--rounds",
            &ROUNDS.to_string(),
            "--users",
            &USERS.to_string(),
        ])
        .args(["--seed", &seed.to_string(), "--hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: no summary from the script within 60 s"))
        .unwrap();
    let Some(line) = line else {
        let status = child.wait().await.unwrap();
        panic!("seed {seed}: the script exited ({status}) without a summary (its stderr is above)");
    };
    let summary: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("seed {seed}: {e}: {line}"));
    let ctx = format!("seed {seed} (SOCKUDO_PRESENCE_SEED={seed} replays the plan)");

    // While the script holds every client: each node's member list is the expected one.
    let channels = summary["channels"].as_array().unwrap();
    assert_eq!(channels.len(), ROUNDS as usize, "{ctx}: {summary}");
    for c in channels {
        let channel = c["channel"].as_str().unwrap().to_string();
        let expected = strings(&c["expected"]);
        for i in 0..3 {
            let api = cluster.api(i);
            let what = format!("{ctx}: node {i}'s /channels/{channel}/users = {expected:?}");
            wait_for(&what, WAIT, || {
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
            let (_, info) = api
                .get(&format!("/channels/{channel}"), &[("info", "user_count")])
                .await
                .unwrap();
            assert_eq!(
                info["user_count"],
                json!(expected.len()),
                "{ctx}: node {i}, {channel}: {info}"
            );
        }
    }

    // What every observer saw through pusher-js.
    let violations = summary["violations"].as_array().unwrap();
    assert!(
        violations.is_empty(),
        "{ctx}: {} violation(s): {}",
        violations.len(),
        serde_json::to_string_pretty(violations).unwrap()
    );
    let observers = summary["observers"].as_array().unwrap();
    assert_eq!(observers.len(), 3 * ROUNDS as usize, "{ctx}: {summary}");
    let (mut added_total, mut removed_total) = (0, 0);
    for o in observers {
        let label = format!(
            "{ctx}: round {}, observer on node {}",
            o["round"], o["node"]
        );
        let expected = strings(&o["expected"]);
        assert_eq!(strings(&o["final"]), expected, "{label}: final view; {o}");
        assert_eq!(
            strings(&o["members"]),
            expected,
            "{label}: pusher-js channel.members; {o}"
        );
        let snapshot = strings(&o["snapshot"]);
        // Every user joins the channel once per round (its tabs leave only once all are in):
        // one member_added at most, and none for a member the snapshot lists.
        for (member, n) in counts(&o["added_counts"]) {
            added_total += n;
            assert!(
                n <= 1 && !(snapshot.contains(&member) && n > 0),
                "{label}: pusher:member_added {n} time(s) for {member} (snapshot {snapshot:?}); {o}"
            );
        }
        for (member, n) in counts(&o["removed_counts"]) {
            removed_total += n;
            assert!(
                n <= 1,
                "{label}: pusher:member_removed {n} times for {member}; {o}"
            );
        }
    }
    let mid_churn = observers
        .iter()
        .filter(|o| strings(&o["snapshot"]).iter().any(|m| m.starts_with('u')))
        .count();
    eprintln!(
        "{ctx}: {} observers, {mid_churn} of them with a snapshot taken mid-churn; \
         {added_total} pusher:member_added, {removed_total} pusher:member_removed",
        observers.len()
    );
    // Not vacuous: observers did see churn around their snapshots.
    assert!(
        added_total > 0 && removed_total > 0,
        "{ctx}: no member events at all ({added_total} added, {removed_total} removed)"
    );

    // The script disconnects everyone once stdin closes; every channel then empties everywhere.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{ctx}: the script did not exit after stdin closed"))
        .unwrap();
    assert!(status.success(), "{ctx}: script exit {status}");
    for c in channels {
        let channel = c["channel"].as_str().unwrap().to_string();
        for i in 0..3 {
            let api = cluster.api(i);
            let what = format!("{ctx}: node {i} to report {channel} vacated");
            wait_for(&what, WAIT, || {
                let (api, channel) = (api.clone(), channel.clone());
                async move {
                    let (status, body) = api
                        .get(&format!("/channels/{channel}/users"), &[])
                        .await
                        .ok()?;
                    (status == 200 && user_ids(&body).is_empty()).then_some(())
                }
            })
            .await;
        }
    }
}
