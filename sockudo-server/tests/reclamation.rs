//! Per-channel state is reclaimed once a channel has been idle for its retention: a V2
//! client that subscribes to thousands of channels (each creating a history stream, each
//! publish feeding a hot ring) and leaves does not leave a record per channel behind, gives
//! the memory back to the operating system, and the node keeps serving. (Retention, dedup
//! window and hot-ring age are 4 s here; the defaults are an hour, two minutes and two
//! minutes.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CHANNELS: usize = 20_000;

/// This process's resident set in KiB (`/proc/self/status`): the node runs in-process, and
/// this binary holds this one test only, so nothing else allocates meanwhile.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_channel_flood_is_reclaimed_after_it_ends() {
    let mut s = settings(vec![test_app()]);
    // Long enough for the whole flood to be held at once, even on a slow machine.
    s.hot_buffer_secs = 4;
    s.history_max_age_secs = 4;
    // A publish's message-id claim keeps its stream for this long (a retry must find it).
    s.message_dedup_secs = 4;
    s.max_subscriptions_per_connection = CHANNELS;
    s.subscribe_burst = CHANNELS as u32;
    let node = TestNode::start(s).await;
    let rss_start = rss_kib();
    let mut c = node
        .connect("/app/app-key?protocol=2&client=rust&version=1.0")
        .await;
    c.established_as("sockudo:connection_established").await;
    for i in 0..CHANNELS {
        c.send_json(
            &json!({"event": "sockudo:subscribe", "data": {"channel": format!("flood-{i}")}}),
        )
        .await;
    }
    for _ in 0..CHANNELS {
        c.recv_event(
            "sockudo_internal:subscription_succeeded",
            Duration::from_secs(10),
        )
        .await;
    }
    let api = node.api(&test_app());
    for i in (0..CHANNELS).step_by(10) {
        let body = json!({"name": "ev", "channel": format!("flood-{i}"), "data": "x"});
        let (status, _) = api.publish(&body).await;
        assert_eq!(status, 200);
    }
    let history = node.node.history.clone().unwrap();
    // (On a slow machine the first channels' streams may already be reclaimed: idle for
    // the retention while the flood went on.)
    assert!(history.channels_held().unwrap() > 0);
    let rss_flood = rss_kib();
    c.close().await;
    // Reaped twice per retention (4 s here): everything is gone within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rings, streams) = (node.node.hot_rings(), history.channels_held().unwrap());
        if rings == 0 && streams == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still held after the flood ended: {rings} hot rings, {streams} history streams"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and the memory goes back to the system: RSS returns near where it started (the
    // reapers shrink the emptied maps and trim the allocator after reclaiming). Measured
    // here: 11 → 41 → 20 MiB and 13 → 47 → 25 MiB; before the trim it stayed at the peak.
    // What remains is the test client's own memory (same process) and pages the allocator
    // cannot free because a live allocation sits in them: at most half the growth is
    // allowed to remain.
    let grown = rss_flood.saturating_sub(rss_start);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = rss_kib();
        if now <= rss_start + grown / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RSS still {now} KiB after the flood ended (start {rss_start}, flood {rss_flood})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The node still serves a fresh client at once.
    let mut fresh = node.client(&test_app().key).await;
    fresh.subscribe("after").await;
    fresh.assert_alive().await;
}
