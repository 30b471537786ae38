//! Helpers shared by the cluster scenario tests (`cluster_*.rs`).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use sockudo_testkit::{Cluster, Event, TestClient, APP_KEY, APP_SECRET};
use tokio::time::Instant;

/// Generous bound for anything that should happen "soon" (a wait, never an assertion).
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a client must stay silent before its deliveries are considered complete.
pub const QUIET: Duration = Duration::from_millis(400);

/// Poll `check` until it yields `Some`, or panic with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster of `n` in-process nodes sharing a Redis, with every node known to every other
/// (see [`wait_formed`]).
pub async fn redis_cluster(n: usize) -> Cluster {
    let cluster = Cluster::builder()
        .nodes(n)
        .redis(true)
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    cluster
}

/// A cluster of `n` in-process nodes whose adapter runs on a 3-server NATS cluster (presence,
/// cache, history and queue on the shared Redis), formed (see [`wait_formed`]).
pub async fn nats_cluster(n: usize) -> Cluster {
    let cluster = Cluster::builder().nodes(n).nats(3).build().await.unwrap();
    wait_formed(&cluster).await;
    cluster
}

/// A cluster of `n` in-process nodes on a Redis Cluster (3 primaries with a replica each:
/// sharded pub/sub adapter, presence, cache, history), formed (see [`wait_formed`]).
pub async fn redis_cluster_backend(n: usize) -> Cluster {
    let cluster = Cluster::builder()
        .nodes(n)
        .redis_cluster()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    cluster
}

/// A cluster of `n` in-process nodes on a 3-server NATS cluster with no Redis at all
/// (presence replicated over NATS), formed (see [`wait_formed`]).
pub async fn broker_only_cluster(n: usize) -> Cluster {
    let cluster = Cluster::builder()
        .nodes(n)
        .nats(3)
        .broker_only()
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    cluster
}

/// Define each scenario as one more test, `broker_only::name`, on a formed 3-node NATS
/// cluster without Redis (presence replicated over NATS; see [`broker_only_cluster`]).
#[macro_export]
macro_rules! on_broker_only {
    ($($name:ident),* $(,)?) => {
        mod broker_only {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::cluster_support::broker_only_cluster(3).await).await;
                }
            )*
        }
    };
}

/// Define each scenario `async fn name(cluster: Cluster)` as three tests, `redis::name`,
/// `nats::name` and `redis_cluster::name`, on a formed 3-node cluster of that backend: one
/// suite, unchanged, per transport.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::cluster_support::redis_cluster(3).await).await;
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::cluster_support::nats_cluster(3).await).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::cluster_support::redis_cluster_backend(3).await).await;
                }
            )*
        }
    };
}

/// Wait until every node answers cluster-wide queries with every other node's state: one probe
/// connection per node subscribes to `probe-formation`, and every node must count all of them.
/// The probes are closed afterwards (and the channel checked vacated everywhere).
pub async fn wait_formed(cluster: &Cluster) {
    let n = cluster.nodes().len();
    let mut probes = Vec::new();
    for i in 0..n {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe("probe-formation").await.unwrap();
        probes.push(c);
    }
    for i in 0..n {
        let api = cluster.api(i);
        wait_for(&format!("node {i} to see all {n} probes"), WAIT * 2, || {
            let api = api.clone();
            async move {
                let (status, body) = api
                    .get(
                        "/channels/probe-formation",
                        &[("info", "subscription_count")],
                    )
                    .await
                    .ok()?;
                (status == 200 && body["subscription_count"] == json!(n)).then_some(())
            }
        })
        .await;
    }
    for c in probes {
        c.close().await.unwrap();
    }
    for i in 0..n {
        let api = cluster.api(i);
        wait_for(&format!("node {i} to see the probes gone"), WAIT, || {
            let api = api.clone();
            async move {
                let (status, body) = api.get("/channels/probe-formation", &[]).await.ok()?;
                (status == 200 && body["occupied"] == json!(false)).then_some(())
            }
        })
        .await;
    }
}

/// Subscribe `client` to `channel` with the auth its kind needs (presence as `user`).
pub async fn join(client: &mut TestClient, channel: &str, user: &str) -> Event {
    if channel.starts_with("presence-") {
        client
            .subscribe_presence(channel, APP_KEY, APP_SECRET, user, json!({ "name": user }))
            .await
            .unwrap()
    } else if channel.starts_with("private-") {
        client
            .subscribe_private(channel, APP_KEY, APP_SECRET)
            .await
            .unwrap()
    } else {
        client.subscribe(channel).await.unwrap()
    }
}

/// Every event a client receives until it has been quiet for [`QUIET`].
pub async fn drain(client: &mut TestClient) -> Vec<Event> {
    client
        .events_until_quiet(QUIET, Duration::from_secs(10))
        .await
        .unwrap()
}

/// Occurrences of app event `name` per (channel, data) among `events`.
pub fn count_app_events(events: &[Event], name: &str) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == name) {
        let data = match &e.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *out.entry((e.channel.clone().unwrap_or_default(), data))
            .or_insert(0) += 1;
    }
    out
}

/// The user ids of a `/channels/{c}/users` answer.
pub fn user_ids(body: &Value) -> BTreeSet<String> {
    body["users"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|u| u["id"].as_str().map(str::to_string))
        .collect()
}

/// The member ids in a presence `subscription_succeeded`.
pub fn presence_ids(event: &Event) -> BTreeSet<String> {
    event.data["presence"]["ids"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|u| u.as_str().map(str::to_string))
        .collect()
}

/// Every `tick` the API accepted (`accepted` holds their `i`) reached `sub`, once and in
/// order, and continuity never failed: what a V2 subscriber must see after a broker fault.
pub async fn assert_every_accepted_tick_delivered(sub: &mut TestClient, accepted: &[u32]) {
    let events = sub
        .events_until_quiet(Duration::from_millis(800), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        !events.iter().any(|e| e.event == "sockudo:resume_failed"),
        "continuity must not fail: {events:?}"
    );
    let got: Vec<u32> = events
        .iter()
        .filter(|e| e.event == "tick")
        .map(|e| e.data_json()["i"].as_u64().unwrap() as u32)
        .collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(got, sorted, "in order, each once");
    let missing: Vec<u32> = accepted
        .iter()
        .copied()
        .filter(|i| !got.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}"
    );
}

/// Poll until node `i` answers `GET /ready` with 200 (its transport is up again), failing
/// after `timeout`.
pub async fn wait_ready(cluster: &Cluster, i: usize, timeout: Duration) {
    let url = format!("{}/ready", cluster.node(i).http_url());
    // The last answer, so a timeout says why the node stayed unready.
    let mut last;
    let deadline = Instant::now() + timeout;
    loop {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for node {i} ready again; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The cross-node scenario every adapter passes on a formed 3-node `cluster`: a publish on
/// node 0 reaches a subscriber on every node exactly once; presence first joins on nodes 1
/// and 2 are announced once each to a member on node 0; every node lists every member.
pub async fn fanout_and_presence_across_three_nodes(cluster: &Cluster) {
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await.unwrap();
        c.subscribe("news").await.unwrap();
        clients.push(c);
    }
    let (st, body) = cluster
        .api(0)
        .trigger("news", "flash", json!({ "n": 1 }))
        .await
        .unwrap();
    assert_eq!(st, 200, "{body}");
    for c in &mut clients {
        let events = drain(c).await;
        let counts = count_app_events(&events, "flash");
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![1],
            "{counts:?}"
        );
    }

    // Presence across nodes: first joins are announced once on every other node.
    let mut observer = cluster.client(0).await.unwrap();
    join(&mut observer, "presence-room", "watcher").await;
    let mut ann = cluster.client(1).await.unwrap();
    join(&mut ann, "presence-room", "ann").await;
    let mut bob = cluster.client(2).await.unwrap();
    join(&mut bob, "presence-room", "bob").await;
    let events = drain(&mut observer).await;
    let added: Vec<String> = events
        .iter()
        .filter(|e| e.event == "pusher_internal:member_added")
        .map(|e| e.data["user_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(added, vec!["ann".to_owned(), "bob".to_owned()]);
    for i in 0..3 {
        let (st, body) = cluster
            .api(i)
            .get("/channels/presence-room/users", &[])
            .await
            .unwrap();
        assert_eq!(st, 200, "{body}");
        let want: BTreeSet<String> = ["ann", "bob", "watcher"].map(String::from).into();
        assert_eq!(user_ids(&body), want);
    }
}
