//! `sockudo_internal:position`: a serial used by a message withheld from this connection
//! (its own client event, or an API publish excluding its socket). Against a scripted
//! server: never surfaced, never a gap; and a gap in front of one is resumed without the
//! replay echoing the connection's own event back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use fake::*;
use serde_json::{json, Value};
use sockudo_client::{Client, HistoryQuery, Subscription};

/// The frame the server sends the excluded publisher in place of serial `serial`.
fn position(channel: &str, stream_id: &str, serial: u64) -> Value {
    json!({"event": "sockudo_internal:position", "channel": channel, "data": "{}",
           "stream_id": stream_id, "serial": serial})
}

/// The serials of the next `n` events (`None` for anything but a message).
async fn serials(sub: &mut Subscription, n: usize) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(serial_of(&next(sub).await));
    }
    out
}

/// The next frame the client sends is its history request, not a resume: ask for a page
/// and answer it.
async fn next_sent_is_history(client: &Client, ws: &mut Ws) {
    let (page, _) = tokio::join!(client.history("chat", HistoryQuery::default()), async {
        let (frame, _) = next_frame(ws).await;
        assert_eq!(frame["event"], "sockudo:channel_history", "{frame}");
        let page = json!({"items": [], "has_more": false, "next_cursor": null});
        send(
            ws,
            json!({"event": "sockudo:channel_history", "channel": "chat",
                   "data": page.to_string()}),
        )
        .await;
    });
    page.unwrap();
}

#[tokio::test]
async fn a_position_frame_is_a_used_serial_never_an_event_nor_a_gap() {
    let (url, mut conns) = fake_server().await;
    let (client, mut ws) = tokio::join!(client(&url), accept(&mut conns, "1.1"));
    let mut sub = subscribe_at(&client, &mut ws, "chat", "s1", 0).await;
    send(&mut ws, message("chat", "s1", 1)).await;
    send(&mut ws, position("chat", "s1", 2)).await;
    send(&mut ws, message("chat", "s1", 3)).await;
    send(&mut ws, position("chat", "s1", 4)).await;
    send(&mut ws, position("chat", "s1", 5)).await;
    send(&mut ws, position("chat", "s1", 5)).await; // a duplicate marker: nothing
    send(&mut ws, message("chat", "s1", 6)).await;

    assert_eq!(serials(&mut sub, 3).await, [Some(1), Some(3), Some(6)]);
    next_sent_is_history(&client, &mut ws).await;
    let stats = client.stats();
    assert_eq!(
        (
            stats.messages_delivered,
            stats.gaps_detected,
            stats.recovery_failures,
            stats.duplicates_dropped
        ),
        (3, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_gap_before_a_position_frame_is_resumed_and_the_own_event_is_not_echoed() {
    let (url, mut conns) = fake_server().await;
    let (client, mut ws) = tokio::join!(client(&url), accept(&mut conns, "1.1"));
    let mut sub = subscribe_at(&client, &mut ws, "chat", "s1", 0).await;
    send(&mut ws, message("chat", "s1", 1)).await;
    send(&mut ws, position("chat", "s1", 3)).await; // 2 is missing
    let (_, resume) = expect(&mut ws, "sockudo:resume").await;
    assert_eq!(resume["channel_positions"]["chat"]["serial"], 1);
    // The replay from the history: 2, and 3, the client's own event.
    send(&mut ws, message("chat", "s1", 2)).await;
    send(&mut ws, message("chat", "s1", 3)).await;
    send(&mut ws, resume_success(&[("chat", 3)], &[])).await;
    send(&mut ws, message("chat", "s1", 4)).await;

    assert_eq!(serials(&mut sub, 3).await, [Some(1), Some(2), Some(4)]);
    let stats = client.stats();
    assert_eq!(
        (
            stats.gaps_detected,
            stats.gaps_filled,
            stats.recovery_failures
        ),
        (1, 1, 0)
    );
    assert_eq!(stats.duplicates_dropped, 1, "the replayed own event");
}
