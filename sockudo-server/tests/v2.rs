//! Protocol V2 on one node: stream fields, message ids and serials, duplicate publishes,
//! resume (hot and cold tiers, failures) and channel history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{settings, test_app, TestClient, TestNode, WAIT};
use serde_json::{json, Value};

async fn v2_client(node: &TestNode) -> TestClient {
    let mut c = node
        .connect("/app/app-key?protocol=2&client=rust&version=1.0")
        .await;
    c.established_as("sockudo:connection_established").await;
    c
}

async fn v2_subscribe(c: &mut TestClient, channel: &str) -> Value {
    c.send_json(&json!({"event": "sockudo:subscribe", "data": {"channel": channel}}))
        .await;
    c.recv_event("sockudo_internal:subscription_succeeded", WAIT)
        .await
}

async fn publish(node: &TestNode, channel: &str, data: &str, message_id: Option<&str>) -> Value {
    let mut body = json!({"name": "ev", "channel": channel, "data": data});
    if let Some(m) = message_id {
        body["message_id"] = json!(m);
    }
    let (status, resp) = node.api(&test_app()).publish(&body).await;
    assert_eq!(status, 200, "{resp}");
    resp
}

async fn resume(c: &mut TestClient, channel: &str, stream_id: &str, serial: u64) {
    let positions = json!({ channel: { "serial": serial, "stream_id": stream_id } });
    c.send_json(&json!({"event": "sockudo:resume", "data": {"channel_positions": positions}}))
        .await;
}

/// Collect `ev` events and the first resume outcome frame, in arrival order.
async fn until_outcome(c: &mut TestClient) -> (Vec<Value>, Value) {
    let mut events = Vec::new();
    loop {
        match c.next_frame(WAIT).await {
            Ok(Some(v)) if v["event"] == "ev" => events.push(v),
            Ok(Some(v)) if v["event"] == "sockudo:resume_success" => return (events, v),
            Ok(Some(v)) if v["event"] == "sockudo:resume_failed" => {
                let success = c.recv_event("sockudo:resume_success", WAIT).await;
                let mut out = v;
                out["success"] = success;
                return (events, out);
            }
            Ok(Some(_)) => continue,
            other => panic!("no resume outcome: {other:?}"),
        }
    }
}

#[tokio::test]
async fn v2_frames_carry_identity_and_v1_frames_do_not() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut v2 = v2_client(&node).await;
    let sub = v2_subscribe(&mut v2, "news").await;
    let stream_id = sub["data"]["stream_id"]
        .as_str()
        .expect("stream_id")
        .to_owned();
    assert_eq!(sub["data"]["serial"], 0);
    assert_eq!(sub["data"]["attach_serial"], 0);
    let mut v1 = node.client("app-key").await;
    v1.subscribe("news").await;

    publish(&node, "news", "one", None).await;
    let a = v2.recv_event("ev", WAIT).await;
    assert_eq!(a["serial"], 1);
    assert_eq!(a["stream_id"], stream_id.as_str());
    assert!(a["message_id"].as_str().is_some_and(|m| !m.is_empty()));
    let b = v1.recv_event("ev", WAIT).await;
    assert_eq!(
        b,
        json!({"event": "ev", "channel": "news", "data": "one"}),
        "V1 sees plain Pusher frames"
    );
}

#[tokio::test]
async fn a_repeated_message_id_is_one_message_with_one_serial() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut c = v2_client(&node).await;
    v2_subscribe(&mut c, "orders").await;
    let first = publish(&node, "orders", "x", Some("order-1")).await;
    let retry = publish(&node, "orders", "x", Some("order-1")).await;
    assert_eq!(first["serials"]["orders"], 1);
    assert_eq!(
        retry["serials"]["orders"], 1,
        "the retry returns the original serial"
    );
    assert_eq!(c.recv_event("ev", WAIT).await["message_id"], "order-1");
    c.expect_no_event("ev", common::QUIET).await;
    publish(&node, "orders", "y", Some("order-2")).await;
    assert_eq!(c.recv_event("ev", WAIT).await["serial"], 2);
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_messages_then_live_ones() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut a = v2_client(&node).await;
    let sub = v2_subscribe(&mut a, "feed").await;
    let stream_id = sub["data"]["stream_id"].as_str().unwrap().to_owned();
    publish(&node, "feed", "m1", None).await;
    assert_eq!(a.recv_event("ev", WAIT).await["serial"], 1);
    a.close().await;
    for i in 2..=4 {
        publish(&node, "feed", &format!("m{i}"), None).await;
    }
    let mut b = v2_client(&node).await;
    v2_subscribe(&mut b, "feed").await;
    resume(&mut b, "feed", &stream_id, 1).await;
    let (events, outcome) = until_outcome(&mut b).await;
    let serials: Vec<u64> = events
        .iter()
        .map(|e| e["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, vec![2, 3, 4]);
    assert_eq!(outcome["event"], "sockudo:resume_success", "{outcome}");
    let rec = &outcome["data"]["recovered"][0];
    assert_eq!(rec["channel"], "feed");
    assert_eq!(rec["replayed"], 3);
    assert_eq!(rec["position"]["serial"], 4);
    assert!(rec["source"] == "hot" || rec["source"] == "cold");
    publish(&node, "feed", "m5", None).await;
    assert_eq!(b.recv_event("ev", WAIT).await["serial"], 5);
    b.expect_no_event("ev", common::QUIET).await;
}

#[tokio::test]
async fn resume_from_the_cold_tier_when_the_hot_ring_is_too_short() {
    let mut s = settings(vec![test_app()]);
    s.hot_buffer_messages = 2;
    let node = TestNode::start(s).await;
    let mut a = v2_client(&node).await;
    let stream_id = v2_subscribe(&mut a, "feed").await["data"]["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.close().await;
    for i in 1..=6 {
        publish(&node, "feed", &format!("m{i}"), None).await;
    }
    let mut b = v2_client(&node).await;
    v2_subscribe(&mut b, "feed").await;
    resume(&mut b, "feed", &stream_id, 0).await;
    let (events, outcome) = until_outcome(&mut b).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e["serial"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        outcome["data"]["recovered"][0]["source"], "cold",
        "{outcome}"
    );
}

#[tokio::test]
async fn an_idle_channel_resumes_from_its_subscribe_position() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut a = v2_client(&node).await;
    let sub = v2_subscribe(&mut a, "quiet").await;
    let stream_id = sub["data"]["stream_id"].as_str().unwrap().to_owned();
    a.close().await;
    let mut b = v2_client(&node).await;
    v2_subscribe(&mut b, "quiet").await;
    resume(&mut b, "quiet", &stream_id, 0).await;
    let (events, outcome) = until_outcome(&mut b).await;
    assert!(events.is_empty());
    assert_eq!(outcome["event"], "sockudo:resume_success");
    assert_eq!(outcome["data"]["recovered"][0]["replayed"], 0);
}

#[tokio::test]
async fn another_stream_fails_with_stream_reset() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut c = v2_client(&node).await;
    v2_subscribe(&mut c, "feed").await;
    publish(&node, "feed", "m1", None).await;
    c.recv_event("ev", WAIT).await;
    resume(&mut c, "feed", "some-older-stream", 1).await;
    let (events, outcome) = until_outcome(&mut c).await;
    assert!(events.is_empty(), "never a partial replay");
    assert_eq!(outcome["event"], "sockudo:resume_failed");
    assert_eq!(outcome["channel"], "feed");
    assert_eq!(outcome["data"]["channel"], "feed");
    assert_eq!(outcome["data"]["code"], "stream_reset");
    assert_eq!(outcome["data"]["expected_stream_id"], "some-older-stream");
    assert_eq!(
        outcome["success"]["data"]["failed"][0]["code"],
        "stream_reset"
    );
}

#[tokio::test]
async fn a_position_past_retention_fails_then_history_backfills_until_attach() {
    let mut s = settings(vec![test_app()]);
    s.hot_buffer_messages = 2;
    s.history_max_messages = 5;
    let node = TestNode::start(s).await;
    let mut a = v2_client(&node).await;
    let stream_id = v2_subscribe(&mut a, "feed").await["data"]["stream_id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.close().await;
    for i in 1..=12 {
        publish(&node, "feed", &format!("m{i}"), None).await;
    }
    let mut b = v2_client(&node).await;
    let sub = v2_subscribe(&mut b, "feed").await;
    assert_eq!(sub["data"]["attach_serial"], 12);
    resume(&mut b, "feed", &stream_id, 1).await;
    let (events, outcome) = until_outcome(&mut b).await;
    assert!(events.is_empty(), "never a partial replay");
    assert_eq!(outcome["data"]["code"], "position_expired", "{outcome}");
    assert_eq!(outcome["data"]["oldest_available_serial"], 8);
    assert_eq!(outcome["data"]["newest_available_serial"], 12);

    b.send_json(&json!({"event": "sockudo:channel_history", "data": {"channel": "feed", "limit": 3, "until_attach": true}})).await;
    let page = b.recv_event("sockudo:channel_history", WAIT).await;
    let items: Vec<u64> = page["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(items, vec![12, 11, 10], "newest first");
    assert_eq!(page["data"]["has_more"], true);
    assert_eq!(page["data"]["continuity"], "continuous");
    let cursor = page["data"]["next_cursor"].as_str().unwrap().to_owned();
    b.send_json(&json!({"event": "sockudo:channel_history", "data": {"channel": "feed", "limit": 3, "cursor": cursor, "until_attach": true}})).await;
    let page = b.recv_event("sockudo:channel_history", WAIT).await;
    let items: Vec<u64> = page["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(items, vec![9, 8]);
    assert_eq!(page["data"]["has_more"], false);

    // Peer-supplied bounds at the edge of u64: answered, never an overflow.
    for bounds in [
        json!({"end_serial": u64::MAX}),
        json!({"end_serial": u64::MAX, "cursor": "5"}),
        json!({"start_serial": u64::MAX, "direction": "forward"}),
        json!({"cursor": u64::MAX.to_string(), "direction": "forward"}),
    ] {
        let mut data = json!({"channel": "feed", "limit": 3});
        for (k, v) in bounds.as_object().unwrap() {
            data[k] = v.clone();
        }
        b.send_json(&json!({"event": "sockudo:channel_history", "data": data}))
            .await;
        let page = b.recv_event("sockudo:channel_history", WAIT).await;
        assert!(page["data"]["items"].is_array(), "{bounds}: {page}");
    }
}

#[tokio::test]
async fn v2_presence_events_use_the_sockudo_family() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let app = test_app();
    let mut a = v2_client(&node).await;
    let channel = "presence-room";
    let cd = json!({"user_id": "u1"}).to_string();
    let auth =
        sockudo_core::auth::sign_channel(&app.key, &app.secret, &a.socket_id, channel, Some(&cd));
    a.send_json(&json!({"event": "sockudo:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": cd}})).await;
    let ok = a
        .recv_event("sockudo_internal:subscription_succeeded", WAIT)
        .await;
    assert_eq!(ok["data"]["presence"]["count"], 1);
    let mut b = node.client("app-key").await;
    b.subscribe_presence(&app, channel, "u2", json!({})).await;
    let added = a.recv_event("sockudo_internal:member_added", WAIT).await;
    assert_eq!(added["data"]["user_id"], "u2");
}

/// How a reconnecting client orders its frames (real clients do all three).
#[derive(Debug, Clone, Copy)]
enum Order {
    /// sockudo-python: resume first, then the subscribes.
    ResumeFirst,
    /// Subscribe one channel, resume both, subscribe the other.
    Interleaved,
    /// Both subscribes, then the resume right behind them (no wait for the replies).
    ResumeLast,
}

/// While a publisher keeps publishing on two channels, a client reconnects and resumes both
/// in `order`: for each channel it gets the replay, then live frames, in strictly increasing
/// serial order, none missing and none twice.
async fn resume_in_order(order: Order) {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let channels = ["feed-a", "feed-b"];
    let mut a = v2_client(&node).await;
    let mut positions = serde_json::Map::new();
    for ch in channels {
        let sub = v2_subscribe(&mut a, ch).await;
        publish(&node, ch, "first", None).await;
        let ev = a.recv_event("ev", WAIT).await;
        positions.insert(
            ch.into(),
            json!({"serial": ev["serial"], "stream_id": sub["data"]["stream_id"]}),
        );
    }
    a.close().await;
    const TOTAL: u64 = 60;
    let publisher = {
        let api = node.api(&test_app());
        tokio::spawn(async move {
            for i in 2..=TOTAL {
                for ch in ["feed-a", "feed-b"] {
                    let body = json!({"name": "ev", "channel": ch, "data": format!("m{i}")});
                    let (status, resp) = api.publish(&body).await;
                    assert_eq!(status, 200, "{resp}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
    let mut b = v2_client(&node).await;
    let resume = json!({"event": "sockudo:resume", "data": {"channel_positions": positions}});
    let sub = |ch: &str| json!({"event": "sockudo:subscribe", "data": {"channel": ch}});
    let frames = match order {
        Order::ResumeFirst => vec![resume, sub(channels[0]), sub(channels[1])],
        Order::Interleaved => vec![sub(channels[0]), resume, sub(channels[1])],
        Order::ResumeLast => vec![sub(channels[0]), sub(channels[1]), resume],
    };
    for f in &frames {
        b.send_json(f).await;
    }
    publisher.await.unwrap();
    let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut recovered = Vec::new();
    while got.values().map(Vec::len).sum::<usize>() < 2 * (TOTAL as usize - 1) {
        let f = match b.next_frame(WAIT).await {
            Ok(Some(f)) => f,
            other => panic!("{order:?}: stalled at {got:?}: {other:?}"),
        };
        match f["event"].as_str() {
            Some("ev") => got
                .entry(f["channel"].as_str().unwrap().to_owned())
                .or_default()
                .push(f["serial"].as_u64().unwrap()),
            Some("sockudo:resume_success") => {
                assert_eq!(f["data"]["failed"], json!([]), "{order:?}: {f}");
                recovered.extend(f["data"]["recovered"].as_array().unwrap().clone());
            }
            Some("sockudo:resume_failed") | Some("sockudo:error") => panic!("{order:?}: {f}"),
            _ => {}
        }
    }
    for ch in channels {
        assert_eq!(
            got[ch],
            (2..=TOTAL).collect::<Vec<_>>(),
            "{order:?}: {ch} in order, none missing or twice"
        );
    }
    assert_eq!(recovered.len(), 2, "{order:?}: both channels recovered");
    b.expect_no_event("ev", common::QUIET).await;
}

#[tokio::test]
async fn resume_sent_before_the_subscribes_is_applied_when_they_complete() {
    resume_in_order(Order::ResumeFirst).await;
}

#[tokio::test]
async fn resume_between_subscribes_is_honoured() {
    resume_in_order(Order::Interleaved).await;
}

#[tokio::test]
async fn resume_right_behind_the_subscribes_replays_before_live_frames() {
    resume_in_order(Order::ResumeLast).await;
}

#[tokio::test]
async fn a_parked_position_whose_channel_never_comes_fails_closed() {
    let mut s = settings(vec![test_app()]);
    s.resume_pending_secs = 1;
    let node = TestNode::start(s).await;
    let mut c = v2_client(&node).await;
    let positions = json!({
        "never": {"serial": 3, "stream_id": "s"},
        "no-stream": {"serial": 3},
    });
    c.send_json(&json!({"event": "sockudo:resume", "data": {"channel_positions": positions}}))
        .await;
    let mut failed = std::collections::BTreeMap::new();
    while failed.len() < 2 {
        let f = c.recv_event("sockudo:resume_failed", WAIT).await;
        let data: Value = match &f["data"] {
            Value::String(s) => serde_json::from_str(s).unwrap(),
            other => other.clone(),
        };
        assert_eq!(data["code"], "continuity_unverifiable", "{f}");
        assert_eq!(f["channel"], data["channel"], "{f}");
        failed.insert(data["channel"].as_str().unwrap().to_owned(), data);
    }
    assert!(failed.contains_key("never") && failed.contains_key("no-stream"));
}

#[tokio::test]
async fn subscription_succeeded_carries_the_position_at_the_top_level_too() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    publish(&node, "pos", "x", None).await;
    let mut c = v2_client(&node).await;
    let sub = v2_subscribe(&mut c, "pos").await;
    assert_eq!(sub["serial"], 1, "{sub}");
    assert_eq!(sub["stream_id"], sub["data"]["stream_id"], "{sub}");
}

#[tokio::test]
async fn the_excluded_publisher_learns_the_serial_it_did_not_get() {
    let node = TestNode::start(settings(vec![test_app()])).await;
    let mut sender = v2_client(&node).await;
    let mut other = v2_client(&node).await;
    let mut v1 = node.client("app-key").await;
    v2_subscribe(&mut sender, "talk").await;
    v2_subscribe(&mut other, "talk").await;
    v1.send_json(&json!({"event": "pusher:subscribe", "data": {"channel": "talk"}}))
        .await;
    v1.recv_event("pusher_internal:subscription_succeeded", WAIT)
        .await;
    for socket_id in [sender.socket_id.clone(), v1.socket_id.clone()] {
        let body = json!({"name": "ev", "channel": "talk", "data": "x", "socket_id": socket_id});
        let (status, resp) = node.api(&test_app()).publish(&body).await;
        assert_eq!(status, 200, "{resp}");
    }
    let pos = sender.recv_event("sockudo_internal:position", WAIT).await;
    assert_eq!(
        (pos["channel"].clone(), pos["serial"].clone()),
        (json!("talk"), json!(1))
    );
    assert_eq!(sender.recv_event("ev", WAIT).await["serial"], 2);
    assert_eq!(other.recv_event("ev", WAIT).await["serial"], 1);
    assert_eq!(other.recv_event("ev", WAIT).await["serial"], 2);
    // A protocol 7 publisher is simply not sent its own message (it gets the sender's).
    v1.recv_event("ev", WAIT).await;
    v1.expect_no_event("ev", common::QUIET).await;
    v1.expect_no_event("pusher_internal:position", common::QUIET)
        .await;
}

/// Store a message in the channel's history without broadcasting it: what a publisher that
/// died between the append and the broker leaves behind.
async fn append_unsent(node: &TestNode, channel: &str, data: &str) -> u64 {
    let history = node.node.history.as_ref().expect("history on");
    let channel_owned = channel.to_owned();
    let data = data.to_owned();
    let frame_for = move |stream_id: &str, serial: u64| {
        json!({"event": "ev", "channel": channel_owned, "data": data,
               "message_id": format!("unsent-{serial}"), "serial": serial, "stream_id": stream_id})
        .to_string()
        .into()
    };
    let id = format!("unsent-{}", rand_suffix());
    history
        .append(
            &test_app().id,
            channel,
            &id,
            std::time::Duration::from_secs(60),
            &frame_for,
        )
        .await
        .unwrap()
        .serial
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test]
async fn a_live_gap_is_repaired_from_history_before_later_messages() {
    let mut s = settings(vec![test_app()]);
    s.live_gap_wait_ms = 50;
    let node = TestNode::start(s).await;
    let mut v2 = v2_client(&node).await;
    let mut v1 = node.client("app-key").await;
    v2_subscribe(&mut v2, "gap").await;
    v1.send_json(&json!({"event": "pusher:subscribe", "data": {"channel": "gap"}}))
        .await;
    v1.recv_event("pusher_internal:subscription_succeeded", WAIT)
        .await;
    assert_eq!(append_unsent(&node, "gap", "lost").await, 1);
    publish(&node, "gap", "after", None).await;
    let first = v2.recv_event("ev", WAIT).await;
    assert_eq!(
        (first["serial"].clone(), first["data"].clone()),
        (json!(1), json!("lost"))
    );
    assert_eq!(v2.recv_event("ev", WAIT).await["serial"], 2);
    // Protocol 7 subscribers get the repaired message too, in its V1 form.
    let v1_first = v1.recv_event("ev", WAIT).await;
    assert_eq!(v1_first["data"], "lost");
    assert!(v1_first.get("serial").is_none(), "{v1_first}");
    assert_eq!(v1.recv_event("ev", WAIT).await["data"], "after");
}

#[tokio::test]
async fn a_live_gap_history_cannot_fill_is_announced_before_what_follows() {
    let mut s = settings(vec![test_app()]);
    s.live_gap_wait_ms = 50;
    s.history_max_messages = 2;
    let node = TestNode::start(s).await;
    let mut v2 = v2_client(&node).await;
    v2_subscribe(&mut v2, "gap").await;
    append_unsent(&node, "gap", "trimmed").await;
    append_unsent(&node, "gap", "kept").await;
    publish(&node, "gap", "live", None).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let f = v2.next_frame(WAIT).await.unwrap().unwrap();
        match f["event"].as_str() {
            Some("sockudo:resume_failed") => got.push(format!("failed:{}", f["channel"])),
            Some("ev") => got.push(f["serial"].to_string()),
            _ => {}
        }
    }
    assert_eq!(
        got,
        ["failed:\"gap\"", "2", "3"],
        "told first, then what follows"
    );
}

/// A resume bomb: positions far behind on several channels. What one resume replays is
/// bounded in bytes; the channels beyond the budget fail closed with `position_expired`
/// (reason naming the limit), the ones within it are replayed in full, and the connection
/// keeps working.
#[tokio::test]
async fn a_resume_replays_at_most_its_byte_budget() {
    let mut s = settings(vec![test_app()]);
    s.resume_max_replay_bytes = 15_000;
    let node = TestNode::start(s).await;
    let mut b = v2_client(&node).await;
    let mut positions = serde_json::Map::new();
    for ch in ["bomb-a", "bomb-b", "bomb-c"] {
        let sub = v2_subscribe(&mut b, ch).await;
        positions.insert(
            ch.to_owned(),
            json!({"serial": 0, "stream_id": sub["data"]["stream_id"]}),
        );
    }
    let big = "x".repeat(1_000);
    for ch in ["bomb-a", "bomb-b", "bomb-c"] {
        for _ in 0..10 {
            publish(&node, ch, &big, None).await;
        }
    }
    // Drain the live copies; the resume below replays from serial 0.
    for _ in 0..30 {
        b.recv_event("ev", WAIT).await;
    }
    b.send_json(&json!({"event": "sockudo:resume", "data": {"channel_positions": positions}}))
        .await;
    let mut replayed = 0;
    let mut failed = Vec::new();
    let success = loop {
        match b.next_frame(WAIT).await {
            Ok(Some(v)) if v["event"] == "ev" => replayed += 1,
            Ok(Some(v)) if v["event"] == "sockudo:resume_failed" => failed.push(v),
            Ok(Some(v)) if v["event"] == "sockudo:resume_success" => break v,
            Ok(Some(_)) => continue,
            other => panic!("no resume outcome: {other:?}"),
        }
    };
    assert_eq!(replayed, 10, "one channel's replay fits the budget");
    assert_eq!(
        success["data"]["recovered"][0]["channel"], "bomb-a",
        "{success}"
    );
    assert_eq!(failed.len(), 2, "{failed:?}");
    for f in &failed {
        assert_eq!(f["data"]["code"], "position_expired", "{f}");
        assert!(
            f["data"]["reason"]
                .as_str()
                .unwrap()
                .contains("RESUME_MAX_REPLAY_BYTES"),
            "{f}"
        );
    }
    publish(&node, "bomb-c", "after", None).await;
    assert_eq!(b.recv_event("ev", WAIT).await["data"], "after");
}
