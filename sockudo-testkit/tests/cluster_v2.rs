//! Protocol V2 across nodes (docs/protocol.md §6, §7): resume on another node after a crash, a
//! flushed history, Redis down, and one message id published through two nodes.

// Test code: a failed unwrap is a failed test (helpers outside #[test] fns included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster_support;

use cluster_support::{count_app_events, drain, redis_cluster, wait_for, WAIT};
use serde_json::{json, Value};
use sockudo_testkit::{Cluster, Event, TestClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CH: &str = "hist";

/// (stream_id, serial, message_id) of a V2 broadcast frame.
fn position(e: &Event) -> (String, u64, String) {
    (
        e.raw["stream_id"].as_str().unwrap().to_string(),
        e.raw["serial"].as_u64().unwrap(),
        e.raw["message_id"].as_str().unwrap().to_string(),
    )
}

async fn v2_client(cluster: &Cluster, node: usize) -> TestClient {
    TestClient::connect_v2(&cluster.ws_url(node)).await.unwrap()
}

async fn publish(cluster: &Cluster, node: usize, data: &str) {
    let (status, body) = cluster
        .api(node)
        .trigger(CH, "m", json!(data))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

fn positions(stream_id: &str, serial: u64, last_message_id: Option<&str>) -> Value {
    json!({ CH: { "stream_id": stream_id, "serial": serial, "last_message_id": last_message_id } })
}

async fn flushall(cluster: &Cluster) {
    let mut s = tokio::net::TcpStream::connect(cluster.redis().unwrap().addr())
        .await
        .unwrap();
    s.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"+OK"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

fn resume_outcome(frames: &[Event]) -> (Vec<&Event>, Vec<&Event>, &Event) {
    let replayed = frames.iter().filter(|e| e.event == "m").collect();
    let failed = frames
        .iter()
        .filter(|e| e.event == "sockudo:resume_failed")
        .collect();
    (replayed, failed, frames.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_after_a_crash_replays_exactly_what_was_missed() {
    let mut cluster = redis_cluster(3).await;
    let mut c = v2_client(&cluster, 0).await;
    let ok = c.subscribe(CH).await.unwrap();
    assert_eq!(ok.event, "sockudo_internal:subscription_succeeded");
    let stream_id = ok.data["stream_id"].as_str().unwrap().to_string();
    let mut serial = ok.data["serial"].as_u64().unwrap();
    let mut last_id = None;
    for i in 0..3 {
        publish(&cluster, 1, &format!("seen-{i}")).await;
    }
    for _ in 0..3 {
        let (sid, s, mid) = position(&c.recv_event("m", WAIT).await.unwrap());
        assert_eq!(sid, stream_id);
        assert_eq!(s, serial + 1, "serials are contiguous");
        serial = s;
        last_id = Some(mid);
    }

    cluster.kill_node(0).unwrap();
    assert_eq!(c.close_code(WAIT).await.unwrap(), None);
    for i in 0..4 {
        publish(&cluster, 1, &format!("missed-{i}")).await;
    }

    let mut back = v2_client(&cluster, 1).await;
    back.subscribe(CH).await.unwrap();
    let frames = back
        .resume(positions(&stream_id, serial, last_id.as_deref()), WAIT)
        .await
        .unwrap();
    let (replayed, failed, success) = resume_outcome(&frames);
    assert!(failed.is_empty(), "{frames:?}");
    let data: Vec<&str> = replayed.iter().map(|e| e.data.as_str().unwrap()).collect();
    assert_eq!(
        data,
        ["missed-0", "missed-1", "missed-2", "missed-3"],
        "exactly the missed messages, in order"
    );
    let serials: Vec<u64> = replayed.iter().map(|e| position(e).1).collect();
    assert_eq!(serials, (serial + 1..=serial + 4).collect::<Vec<_>>());
    assert_eq!(success.event, "sockudo:resume_success");
    let recovered = success.data["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), 1, "{:?}", success.raw);
    assert_eq!(recovered[0]["channel"], CH);
    assert!(
        matches!(recovered[0]["source"].as_str(), Some("hot" | "cold")),
        "{:?}",
        success.raw
    );
    assert_eq!(recovered[0]["replayed"], 4);

    // Then live messages, once each, after the replay.
    publish(&cluster, 2, "live-0").await;
    publish(&cluster, 1, "live-1").await;
    let events = drain(&mut back).await;
    let live: Vec<(String, u64)> = events
        .iter()
        .filter(|e| e.event == "m")
        .map(|e| (e.data.as_str().unwrap().to_string(), position(e).1))
        .collect();
    assert_eq!(
        live,
        [
            ("live-0".to_string(), serial + 5),
            ("live-1".to_string(), serial + 6)
        ],
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_history_fails_resume_with_stream_reset() {
    let cluster = redis_cluster(2).await;
    let mut c = v2_client(&cluster, 0).await;
    c.subscribe(CH).await.unwrap();
    publish(&cluster, 1, "before").await;
    let (stream_id, serial, mid) = position(&c.recv_event("m", WAIT).await.unwrap());

    flushall(&cluster).await;
    publish(&cluster, 0, "after-flush").await;

    let mut back = v2_client(&cluster, 1).await;
    let ok = back.subscribe(CH).await.unwrap();
    assert_ne!(
        ok.data["stream_id"].as_str(),
        Some(stream_id.as_str()),
        "a flushed history is a new stream: {:?}",
        ok.raw
    );
    let frames = back
        .resume(positions(&stream_id, serial, Some(&mid)), WAIT)
        .await
        .unwrap();
    let (replayed, failed, success) = resume_outcome(&frames);
    assert!(replayed.is_empty(), "never a partial replay: {frames:?}");
    assert_eq!(failed.len(), 1, "{frames:?}");
    assert_eq!(failed[0].channel.as_deref(), Some(CH));
    assert_eq!(failed[0].data["channel"], CH);
    assert_eq!(
        failed[0].data["code"], "stream_reset",
        "{:?}",
        failed[0].raw
    );
    assert_eq!(failed[0].data["expected_stream_id"], stream_id.as_str());
    assert!(
        success.data["recovered"].as_array().unwrap().is_empty(),
        "{:?}",
        success.raw
    );
}

/// A node cut from Redis cannot receive a channel from the other nodes, nor prove a resume:
/// it refuses the subscription (503) instead of acknowledging one that would miss messages.
/// Once the link is back the same client subscribes and resumes with exactly what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_cut_a_subscribe_fails_closed_and_a_later_resume_replays() {
    let mut cluster = redis_cluster(2).await;
    let mut c = v2_client(&cluster, 0).await;
    c.subscribe(CH).await.unwrap();
    publish(&cluster, 0, "one").await;
    let (stream_id, serial, mid) = position(&c.recv_event("m", WAIT).await.unwrap());
    publish(&cluster, 0, "two").await;
    // A freshly restarted node has no hot history: only the store could prove the range.
    cluster.restart_node(1).await.unwrap();
    cluster.cut_redis(1).unwrap();

    let mut back = v2_client(&cluster, 1).await;
    let refused = back.subscribe(CH).await.unwrap_err().to_string();
    assert!(refused.contains("503"), "{refused}");

    cluster.restore_redis(1).unwrap();
    let url = format!("{}/ready", cluster.node(1).http_url());
    wait_for("node 1 ready again", WAIT * 2, || {
        let url = url.clone();
        async move { (reqwest::get(&url).await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    back.subscribe(CH).await.unwrap();
    let frames = back
        .resume(positions(&stream_id, serial, Some(&mid)), WAIT)
        .await
        .unwrap();
    let (replayed, failed, success) = resume_outcome(&frames);
    assert!(failed.is_empty(), "{frames:?}");
    let data: Vec<String> = replayed.iter().map(|e| e.data_json().to_string()).collect();
    assert_eq!(replayed.len(), 1, "exactly the missed message: {data:?}");
    assert!(data[0].contains("two"), "{data:?}");
    assert!(
        success.data["recovered"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["channel"] == CH),
        "{:?}",
        success.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_id_through_two_nodes_is_one_message() {
    let cluster = redis_cluster(3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut v1 = cluster.client(i).await.unwrap();
        v1.subscribe(CH).await.unwrap();
        let mut v2 = v2_client(&cluster, i).await;
        v2.subscribe(CH).await.unwrap();
        clients.push(v1);
        clients.push(v2);
    }
    let body = json!({ "name": "m", "channel": CH, "data": "once", "message_id": "mid-42" });
    let (s0, r0) = cluster.api(0).trigger_body(&body).await.unwrap();
    let (s1, r1) = cluster.api(1).trigger_body(&body).await.unwrap();
    assert_eq!((s0, s1), (200, 200), "{r0} {r1}");
    assert_eq!(
        r0["serials"][CH], r1["serials"][CH],
        "one message, one serial: {r0} {r1}"
    );
    assert!(r0["serials"][CH].as_u64().is_some(), "{r0}");

    // The retry through node 1 was broadcast again (its first attempt might have died before
    // every node had it), and every node dropped that copy by message id.
    let suppressed = || -> u64 {
        cluster
            .nodes()
            .iter()
            .map(|n| n.as_in_process().unwrap().node().recent_ids.suppressed())
            .sum()
    };
    cluster_support::wait_for("every node to drop the retry's copy", WAIT, || {
        let n = suppressed();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    assert_eq!(suppressed(), 3, "once per node");

    // An adapter-level redelivery (the same message id broadcast twice) is dropped by every node.
    let node = cluster.node(2).as_in_process().unwrap().node();
    let frame = json!({ "event": "m", "channel": CH, "data": "redelivered" }).to_string();
    let before: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.as_in_process().unwrap().node().recent_ids.suppressed())
        .sum();
    for _ in 0..2 {
        let mut b = sockudo_core::adapter::Broadcast::plain(
            sockudo_testkit::APP_ID,
            CH,
            frame.clone().into(),
            None,
        );
        b.message_id = Some("mid-adapter".into());
        node.adapter.publish(b).await.unwrap();
    }

    for (i, c) in clients.iter_mut().enumerate() {
        let events = drain(c).await;
        let counts = count_app_events(&events, "m");
        assert_eq!(counts.len(), 2, "client {i}: {events:?}");
        assert!(
            counts.values().all(|n| *n == 1),
            "client {i} got a duplicate: {counts:?}"
        );
        if i % 2 == 1 {
            let serials: Vec<u64> = events
                .iter()
                .filter(|e| e.data == "once")
                .map(|e| position(e).1)
                .collect();
            assert_eq!(
                serials,
                vec![r0["serials"][CH].as_u64().unwrap()],
                "client {i}"
            );
        }
    }
    let after: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.as_in_process().unwrap().node().recent_ids.suppressed())
        .sum();
    assert_eq!(
        after - before,
        3,
        "each node suppressed the redelivery once"
    );
}
