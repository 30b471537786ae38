//! Two nodes share Redis; one is killed mid-campaign; the other finishes the campaign (the
//! dead node's leased shards come back after the lease) and no device is notified twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::fcm::FakeFcm;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_campaign_is_finished_by_another_without_duplicates() {
    let redis = RedisServer::start();
    let fcm = FakeFcm::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/projects/test-proj/messages:send"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"name": "m"}))
                .set_delay(Duration::from_millis(20)),
        )
        .mount(&fcm.server)
        .await;
    let config = |i: usize| {
        let mut s = settings();
        s.node_id = format!("failover-{i}");
        s.queue.driver = "redis".into();
        s.redis.url = redis.url();
        s.push.shard_size = 50;
        s.push.dispatch_concurrency = 4;
        s.push.lease_secs = 3;
        fcm.configure(&mut s);
        s
    };
    let mut a = ThreadNode::start(config(0));
    let b = ThreadNode::start(config(1));
    let (api_a, api_b) = (a.api(), b.api());
    const N: usize = 1000;
    futures_util::stream::iter(0..N)
        .map(|i| {
            let api = api_a.clone();
            async move {
                let id = format!("d{i:04}");
                api.register(
                    &id,
                    None,
                    json!({"transportType": "gcm", "registrationToken": format!("t{i:04}")}),
                )
                .await;
                api.post(
                    "/channelSubscriptions",
                    &json!({"channel": "all", "deviceId": id}),
                )
                .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let pid = api_a.publish(&json!({"publishId": "failover-1", "recipients": [{"type": "channel", "channel": "all"}], "payload": {"title": "t"}})).await;
    let deadline = Instant::now() + WAIT;
    while fcm.sends().await.len() < 150 {
        assert!(Instant::now() < deadline, "the campaign never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.kill();
    let st = api_b.wait_terminal(&pid).await;
    let c = &st["counters"];
    assert_eq!(c["planned"], N, "{st}");
    let (ok, failed) = (
        c["succeeded"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
    );
    assert_eq!(ok + failed, N as u64, "every device has one outcome: {st}");
    // Only what the dead node was sending at that moment has an unknown outcome: at most
    // its shard workers (4) × one chunk (PUSH_DISPATCH_CONCURRENCY = 4).
    assert!(failed <= 16, "{st}");
    let mut hits: HashMap<String, usize> = HashMap::new();
    for r in fcm.sends().await {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        *hits
            .entry(v["message"]["token"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = hits.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "notified twice: {twice:?}");
    assert!(
        hits.len() as u64 >= ok,
        "every success reached the provider"
    );
}
