//! Faults in a Redis-backed cluster: a node crash, Redis restarting, one node cut off from
//! Redis, a graceful drain. After each, delivery and presence are right again and nothing is
//! delivered twice.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{
    count_app_events, drain, join, redis_cluster, user_ids, wait_for, wait_formed, WAIT,
};
use serde_json::json;
use sockudo_testkit::{Cluster, Event};

/// Longer than the testkit's liveness timeout (2 s) plus a heartbeat, with room to spare.
const SWEEP_WAIT: Duration = Duration::from_secs(10);

fn removed_of(events: &[Event], user: &str) -> usize {
    events
        .iter()
        .filter(|e| e.event == "pusher_internal:member_removed" && e.data["user_id"] == user)
        .count()
}

async fn ready(url: &str) -> u16 {
    match reqwest::Client::new()
        .get(format!("{url}/ready"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(url: &str, status: u16, what: &str) {
    wait_for(what, WAIT * 2, || async move {
        (ready(url).await == status).then_some(())
    })
    .await;
}

async fn members(cluster: &Cluster, node: usize, channel: &str) -> Option<BTreeSet<String>> {
    let (status, body) = cluster
        .api(node)
        .get(&format!("/channels/{channel}/users"), &[])
        .await
        .ok()?;
    (status == 200).then(|| user_ids(&body))
}

async fn a_killed_nodes_presence_members_are_removed_everywhere(mut cluster: Cluster) {
    let mut doomed = cluster.client(0).await.unwrap();
    join(&mut doomed, "presence-k", "doomed").await;
    let mut shared0 = cluster.client(0).await.unwrap();
    join(&mut shared0, "presence-k", "shared").await;
    let mut shared1 = cluster.client(1).await.unwrap();
    join(&mut shared1, "presence-k", "shared").await;
    let mut w1 = cluster.client(1).await.unwrap();
    join(&mut w1, "presence-k", "w1").await;
    let mut w2 = cluster.client(2).await.unwrap();
    join(&mut w2, "presence-k", "w2").await;
    w1.take_pending();
    let _ = drain(&mut w2).await;
    let _ = drain(&mut w1).await;

    cluster.kill_node(0).unwrap();
    for w in [&mut w1, &mut w2] {
        let e = w
            .recv_event_on("presence-k", "pusher_internal:member_removed", SWEEP_WAIT)
            .await
            .unwrap();
        assert_eq!(
            e.data["user_id"], "doomed",
            "only the user whose last connection died leaves: {:?}",
            e.raw
        );
    }
    let expected = BTreeSet::from(["shared".to_string(), "w1".to_string(), "w2".to_string()]);
    for node in [1, 2] {
        let got = wait_for(
            "the users API to drop the dead node's members",
            WAIT,
            || async {
                members(&cluster, node, "presence-k")
                    .await
                    .filter(|m| *m == expected)
            },
        )
        .await;
        assert_eq!(got, expected);
    }
    // Publishes still flow between the survivors, once each; removals were announced once.
    let (status, _) = cluster
        .api(2)
        .trigger("presence-k", "after", json!("x"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    for (i, w) in [&mut w1, &mut w2].into_iter().enumerate() {
        let events = drain(w).await;
        assert_eq!(
            removed_of(&events, "doomed"),
            0,
            "watcher {i}: member_removed announced twice: {events:?}"
        );
        assert_eq!(
            removed_of(&events, "shared"),
            0,
            "watcher {i}: shared is still on node 1"
        );
        assert_eq!(
            count_app_events(&events, "after")
                .values()
                .copied()
                .collect::<Vec<_>>(),
            vec![1],
            "watcher {i}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_redis_restarts_without_restarting_nodes() {
    let mut cluster = redis_cluster(3).await;
    let mut c1 = cluster.client(1).await.unwrap();
    let mut c2 = cluster.client(2).await.unwrap();
    join(&mut c1, "live", "").await;
    join(&mut c2, "live", "").await;

    cluster.stop_redis().unwrap();
    // While Redis is down a publish may fail (503) but never hangs or crashes the node.
    let (status, body) = cluster
        .api(0)
        .trigger("live", "during", json!("down"))
        .await
        .unwrap();
    assert!(status == 200 || status == 503, "{status} {body}");
    cluster.start_redis().await.unwrap();

    // Probe until node 0's publishes reach both other nodes again (re-subscription takes a moment).
    let api = cluster.api(0);
    let mut seen = [false, false];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery across nodes did not resume after the Redis restart"
        );
        let _ = api.trigger("live", "probe", json!(format!("p{n}"))).await;
        for (i, c) in [&mut c1, &mut c2].into_iter().enumerate() {
            if !seen[i] {
                seen[i] = c
                    .recv_event("probe", Duration::from_millis(300))
                    .await
                    .is_ok();
            }
        }
        if seen == [true, true] {
            break;
        }
    }
    let (status, body) = cluster
        .api(0)
        .trigger("live", "final", json!("f"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    for (i, c) in [&mut c1, &mut c2].into_iter().enumerate() {
        let events = drain(c).await;
        let finals = count_app_events(&events, "final");
        assert_eq!(
            finals.values().copied().collect::<Vec<_>>(),
            vec![1],
            "client on node {}: {events:?}",
            i + 1
        );
        assert!(
            count_app_events(&events, "probe").values().all(|n| *n == 1),
            "a probe was delivered twice: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_redis_is_unready_alone_and_recovers() {
    let cluster = redis_cluster(3).await;
    let urls: Vec<String> = cluster.nodes().iter().map(|n| n.http_url()).collect();
    for url in &urls {
        assert_eq!(ready(url).await, 200, "{url} before the cut");
    }
    cluster.cut_redis(1).unwrap();
    wait_ready(&urls[1], 503, "node 1 to turn unready once cut from Redis").await;
    assert_eq!(ready(&urls[0]).await, 200, "node 0 keeps its link");
    assert_eq!(ready(&urls[2]).await, 200, "node 2 keeps its link");

    cluster.restore_redis(1).unwrap();
    wait_ready(
        &urls[1],
        200,
        "node 1 to be ready again after the link is restored",
    )
    .await;
    // And it takes part in fanout again.
    let mut c1 = cluster.client(1).await.unwrap();
    join(&mut c1, "after-cut", "").await;
    let api = cluster.api(2);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1 does not receive publishes from node 2 after the restore"
        );
        let _ = api.trigger("after-cut", "probe", json!("x")).await;
        if c1
            .recv_event("probe", Duration::from_millis(300))
            .await
            .is_ok()
        {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_closes_with_4200_and_its_members_leave_at_once() {
    // Liveness is made slow here: members that leave within WAIT did not wait for a sweep.
    let mut cluster = Cluster::builder()
        .nodes(3)
        .redis(true)
        .settings(|i, s| {
            s.cluster.node_timeout_ms = 30_000;
            s.cluster.heartbeat_interval_ms = 200;
            if i == 1 {
                s.shutdown_grace_period = 2;
            }
        })
        .build()
        .await
        .unwrap();
    wait_formed(&cluster).await;
    let mut leaving = cluster.client(1).await.unwrap();
    join(&mut leaving, "presence-d", "on-drained-node").await;
    join(&mut leaving, "plain-d", "").await;
    let mut w0 = cluster.client(0).await.unwrap();
    join(&mut w0, "presence-d", "w0").await;
    join(&mut w0, "plain-d", "").await;
    let mut w2 = cluster.client(2).await.unwrap();
    join(&mut w2, "presence-d", "w2").await;
    let _ = drain(&mut w0).await;
    let _ = drain(&mut w2).await;

    let url1 = cluster.node(1).http_url();
    let (url0, url2) = (cluster.node(0).http_url(), cluster.node(2).http_url());
    let api0 = cluster.api(0);
    let (drained, observed) = tokio::join!(cluster.drain_node(1), async {
        // During the grace period: unready, while the others stay ready; a publish still
        // reaches the draining node's client.
        wait_ready(&url1, 503, "the draining node to turn unready").await;
        let others = (ready(&url0).await, ready(&url2).await);
        let (status, _) = api0
            .trigger("plain-d", "during-drain", json!("d"))
            .await
            .unwrap();
        (others, status)
    });
    drained.unwrap();
    assert_eq!(
        observed,
        ((200, 200), 200),
        "the other nodes stay ready during the drain"
    );

    let events = leaving.events_until(WAIT).await.unwrap();
    assert_eq!(
        count_app_events(&events, "during-drain")
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![1],
        "{events:?}"
    );
    assert_eq!(leaving.close_code(WAIT).await.unwrap(), Some(4200));
    for w in [&mut w0, &mut w2] {
        let e = w
            .recv_event_on("presence-d", "pusher_internal:member_removed", WAIT)
            .await
            .unwrap();
        assert_eq!(e.data["user_id"], "on-drained-node");
    }
    for node in [0, 2] {
        let expected = BTreeSet::from(["w0".to_string(), "w2".to_string()]);
        let got = wait_for(
            "the users API without the drained node's member",
            WAIT,
            || async {
                members(&cluster, node, "presence-d")
                    .await
                    .filter(|m| *m == expected)
            },
        )
        .await;
        assert_eq!(got, expected);
    }
    for (i, w) in [&mut w0, &mut w2].into_iter().enumerate() {
        let events = drain(w).await;
        assert_eq!(
            removed_of(&events, "on-drained-node"),
            0,
            "watcher {i}: removal announced twice: {events:?}"
        );
        assert!(
            count_app_events(&events, "during-drain")
                .values()
                .all(|n| *n == 1),
            "watcher {i}: {events:?}"
        );
    }
}

on_every_backend!(a_killed_nodes_presence_members_are_removed_everywhere,);
