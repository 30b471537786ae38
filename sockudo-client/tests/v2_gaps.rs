//! "Never a silent gap", against a scripted server: a live serial gap is resumed and filled
//! in order, or reported before the next live event; unsolicited `resume_failed`; stream
//! resets; slow subscriptions; and the reconnect order (subscribes, then one resume right
//! behind them, answered channel by channel).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::time::Duration;

use fake::*;
use serde_json::json;
use sockudo_client::{
    authorizer_fn, ChannelAuth, ChannelEvent, Client, ClientEvent, HistoryQuery, RecoveryFailure,
    Subscription,
};

/// A connected client with `chat` subscribed at `s1/0`.
async fn chat() -> (Client, Ws, Subscription) {
    let (url, mut conns) = fake_server().await;
    let (client, mut ws) = tokio::join!(client(&url), accept(&mut conns, "1.1"));
    let sub = subscribe_at(&client, &mut ws, "chat", "s1", 0).await;
    (client, ws, sub)
}

async fn failure(sub: &mut Subscription) -> RecoveryFailure {
    match next(sub).await {
        ChannelEvent::RecoveryFailed(f) => f,
        other => panic!("expected RecoveryFailed, got {other:?}"),
    }
}

async fn serials(sub: &mut Subscription, n: usize) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(serial_of(&next(sub).await));
    }
    out
}

#[tokio::test]
async fn a_live_gap_is_resumed_and_the_replay_fills_it_in_order() {
    let (client, mut ws, mut sub) = chat().await;
    send(&mut ws, message("chat", "s1", 1)).await;
    send(&mut ws, message("chat", "s1", 3)).await; // 2 is missing
    let (_, resume) = expect(&mut ws, "sockudo:resume").await;
    assert_eq!(
        resume,
        json!({"channel_positions": {"chat": {"stream_id": "s1", "serial": 1, "last_message_id": "s1:1"}}})
    );
    send(&mut ws, message("chat", "s1", 4)).await; // live, behind the gap
    send(&mut ws, message("chat", "s1", 2)).await; // the replay
    send(&mut ws, message("chat", "s1", 3)).await;
    send(&mut ws, resume_success(&[("chat", 4)], &[])).await;
    send(&mut ws, message("chat", "s1", 5)).await;
    let got = serials(&mut sub, 5).await;
    assert_eq!(got, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    let stats = client.stats();
    assert_eq!((stats.gaps_detected, stats.gaps_filled), (1, 1));
    assert_eq!(stats.recovery_failures, 0);
    assert_eq!(stats.duplicates_dropped, 1, "the replayed 3");
}

#[tokio::test]
async fn an_unfillable_gap_is_reported_before_the_next_live_event() {
    let (client, mut ws, mut sub) = chat().await;
    let mut events = client.events();
    send(&mut ws, message("chat", "s1", 1)).await;
    send(&mut ws, message("chat", "s1", 3)).await;
    expect(&mut ws, "sockudo:resume").await;
    send(&mut ws, message("chat", "s1", 4)).await;
    // The server's answer: the bare frame, then the same channel in resume_success.
    send(&mut ws, resume_failed("chat", "position_expired")).await;
    send(&mut ws, resume_success(&[], &["chat"])).await;
    send(&mut ws, message("chat", "s1", 5)).await;

    assert_eq!(serial_of(&next(&mut sub).await), Some(1));
    let f = failure(&mut sub).await;
    assert_eq!(
        (f.channel.as_str(), f.code.as_str()),
        ("chat", "position_expired")
    );
    assert_eq!(serials(&mut sub, 3).await, [Some(3), Some(4), Some(5)]);
    let stats = client.stats();
    assert_eq!(
        (
            stats.gaps_detected,
            stats.gaps_filled,
            stats.recovery_failures
        ),
        (1, 0, 1)
    );
    let mut reported = 0;
    while let Ok(e) = events.try_recv() {
        reported += usize::from(matches!(e, ClientEvent::RecoveryFailed(_)));
    }
    assert_eq!(reported, 1, "one failure, also as a connection event");
}

#[tokio::test]
async fn a_gap_without_an_answer_fails_closed_on_timeout() {
    let (url, mut conns) = fake_server().await;
    let opts = v2_options(&url).resume_timeout(Duration::from_millis(300));
    let (client, mut ws) = tokio::join!(Client::connect(opts), accept(&mut conns, "1.1"));
    let client = client.unwrap();
    let mut sub = subscribe_at(&client, &mut ws, "chat", "s1", 0).await;
    send(&mut ws, message("chat", "s1", 2)).await;
    expect(&mut ws, "sockudo:resume").await; // never answered
    assert_eq!(failure(&mut sub).await.code, "resume_timeout");
    assert_eq!(serial_of(&next(&mut sub).await), Some(2));
}

#[tokio::test]
async fn an_unsolicited_resume_failed_is_reported_and_the_channel_stays_live() {
    let (client, mut ws, mut sub) = chat().await;
    send(&mut ws, message("chat", "s1", 1)).await;
    // The server lost serial 2 upstream and says so before sending 3.
    let data = json!({"channel": "chat", "code": "continuity_unverifiable",
                      "reason": "live gap not in history"});
    send(
        &mut ws,
        json!({"event": "sockudo:resume_failed", "data": data.to_string()}),
    )
    .await;
    send(&mut ws, message("chat", "s1", 3)).await;
    send(&mut ws, message("chat", "s1", 4)).await;

    assert_eq!(serial_of(&next(&mut sub).await), Some(1));
    let f = failure(&mut sub).await;
    assert_eq!(
        (f.channel.as_str(), f.code.as_str(), f.reason.as_deref()),
        (
            "chat",
            "continuity_unverifiable",
            Some("live gap not in history")
        )
    );
    assert_eq!(serials(&mut sub, 2).await, [Some(3), Some(4)]);
    // The jump to 3 was covered by the notice: no resume was asked for.
    let (_, _) = tokio::join!(client.history("chat", HistoryQuery::default()), async {
        let (frame, _) = next_frame(&mut ws).await;
        assert_eq!(frame["event"], "sockudo:channel_history");
        let page = json!({"items": [], "has_more": false, "next_cursor": null});
        send(
            &mut ws,
            json!({"event": "sockudo:channel_history", "channel": "chat",
                             "data": page.to_string()}),
        )
        .await;
    });
    assert_eq!(client.stats().gaps_detected, 0);
}

#[tokio::test]
async fn a_frame_from_another_stream_is_a_reset_then_the_new_stream_is_followed() {
    let (client, mut ws, mut sub) = chat().await;
    send(&mut ws, message("chat", "s1", 1)).await;
    send(&mut ws, message("chat", "s2", 1)).await;
    send(&mut ws, message("chat", "s1", 2)).await; // a late frame of the old stream
    send(&mut ws, message("chat", "s2", 2)).await;

    assert_eq!(serial_of(&next(&mut sub).await), Some(1));
    let f = failure(&mut sub).await;
    assert_eq!(f.code, "stream_reset");
    assert_eq!(
        (
            f.expected_stream_id.as_deref(),
            f.current_stream_id.as_deref()
        ),
        (Some("s1"), Some("s2"))
    );
    let ChannelEvent::Message(first) = next(&mut sub).await else {
        panic!("the new stream's first frame")
    };
    assert_eq!(
        (first.stream_id.as_deref(), first.serial),
        (Some("s2"), Some(1))
    );
    // A late frame of the old stream is, again, a change of stream: reported and delivered
    // (never dropped unseen), and so is the way back to s2.
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(match next(&mut sub).await {
            ChannelEvent::Message(m) => format!("{}/{}", m.stream_id.unwrap(), m.serial.unwrap()),
            ChannelEvent::RecoveryFailed(f) => format!("!{}", f.code),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(rest, ["!stream_reset", "s1/2", "!stream_reset", "s2/2"]);
    assert_eq!(client.stats().recovery_failures, 3);
}

#[tokio::test]
async fn a_slow_subscription_is_told_where_events_were_dropped() {
    let (url, mut conns) = fake_server().await;
    let opts = v2_options(&url).subscription_capacity(2);
    let (client, mut ws) = tokio::join!(Client::connect(opts), accept(&mut conns, "1.1"));
    let client = client.unwrap();
    let mut sub = subscribe_at(&client, &mut ws, "chat", "s1", 0).await;
    for serial in 1..=6 {
        send(&mut ws, message("chat", "s1", serial)).await;
    }
    // Not reading meanwhile: wait until the client has dropped what did not fit.
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.stats().slow_consumer_drops < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(serials(&mut sub, 2).await, [Some(1), Some(2)]);
    let f = failure(&mut sub).await;
    assert_eq!(
        (f.channel.as_str(), f.code.as_str()),
        ("chat", "client_lagged")
    );
    // Caught up: delivery goes on after the marker.
    send(&mut ws, message("chat", "s1", 7)).await;
    assert_eq!(serial_of(&next(&mut sub).await), Some(7));
    let stats = client.stats();
    assert_eq!(
        (stats.slow_consumer_drops, stats.subscriptions_lagged),
        (4, 1)
    );
    assert_eq!(stats.recovery_failures, 0, "lag is counted on its own");
}

#[tokio::test]
async fn reconnect_sends_subscribes_then_one_resume_and_takes_answers_per_channel() {
    let (url, mut conns) = fake_server().await;
    let opts = v2_options(&url)
        .retry_on_initial_connect(true)
        .authorizer(authorizer_fn(|_req| async {
            Ok(ChannelAuth::new("app-key:signature"))
        }));
    let client = Client::connect(opts).await.unwrap();
    let mut ws = accept(&mut conns, "1.1").await;
    let mut a = subscribe_at(&client, &mut ws, "a", "s1", 5).await;
    let mut b = subscribe_at(&client, &mut ws, "b", "s1", 7).await;
    let mut c = subscribe_at(&client, &mut ws, "private-c", "s1", 9).await;
    close_4200(&mut ws).await;

    let mut ws = accept(&mut conns, "2.2").await;
    // Everything the client sends before any answer: the public subscribes, the resume right
    // behind them, and the private subscribe once authorized (before or after the resume).
    let mut subscribes = Vec::new();
    let mut resume = None;
    while subscribes.len() < 3 || resume.is_none() {
        let (frame, data) = next_frame(&mut ws).await;
        match frame["event"].as_str() {
            Some("sockudo:subscribe") => {
                assert!(
                    resume.is_none() || data["channel"] == "private-c",
                    "public subscribes come before the resume"
                );
                subscribes.push(data["channel"].as_str().unwrap().to_owned());
            }
            Some("sockudo:resume") => {
                assert!(resume.is_none(), "one resume for every channel");
                resume = Some(data);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    subscribes.sort();
    assert_eq!(subscribes, ["a", "b", "private-c"]);
    let positions = &resume.unwrap()["channel_positions"];
    assert_eq!(
        (
            &positions["a"]["serial"],
            &positions["b"]["serial"],
            &positions["private-c"]["serial"]
        ),
        (&json!(5), &json!(7), &json!(9))
    );

    // Answers channel by channel, interleaved with the subscriptions.
    send(&mut ws, resume_success(&[("a", 5)], &[])).await;
    send(&mut ws, subscribed("b", "s1", 8)).await;
    send(&mut ws, message("b", "s1", 8)).await; // replayed
    send(&mut ws, resume_failed("private-c", "position_expired")).await;
    send(&mut ws, subscribed("a", "s1", 5)).await;
    send(&mut ws, subscribed("private-c", "s1", 20)).await;
    send(&mut ws, resume_success(&[("b", 8)], &["private-c"])).await;
    for (channel, serial) in [("a", 6), ("b", 9), ("private-c", 21)] {
        send(&mut ws, message(channel, "s1", serial)).await;
    }

    assert!(matches!(next(&mut a).await, ChannelEvent::Recovered { .. }));
    assert_eq!(serial_of(&next(&mut a).await), Some(6));
    assert!(matches!(next(&mut b).await, ChannelEvent::Recovered { .. }));
    assert_eq!(serials(&mut b, 2).await, [Some(8), Some(9)]);
    assert_eq!(failure(&mut c).await.code, "position_expired");
    assert_eq!(serial_of(&next(&mut c).await), Some(21));
    let stats = client.stats();
    assert_eq!((stats.resumes_succeeded, stats.resumes_failed), (2, 1));
}
