//! Reconnect with several channels, against a scripted server: one `sockudo:resume` names
//! every channel's position, including a private channel whose authorizer answers only after
//! the public channels were resumed; each channel gets its own verdict and recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::time::Duration;

use fake::*;
use serde_json::{json, Value};
use sockudo_client::{authorizer_fn, ChannelAuth, ChannelEvent, Client, Subscription};

/// How long the authorizer takes on the second connection: longer than the resume timeout,
/// which only starts once a channel's subscribe is out (the server cannot answer before).
const LATE: Duration = Duration::from_millis(900);
const RESUME_TIMEOUT: Duration = Duration::from_millis(600);

/// `resume_success` recovering `channel` at `serial` after replaying `replayed` frames.
fn recovered(channel: &str, serial: u64, replayed: u64) -> Value {
    let data = json!({"recovered": [{"channel": channel, "source": "hot", "replayed": replayed,
        "position": {"stream_id": "s1", "serial": serial}}], "failed": []});
    json!({"event": "sockudo:resume_success", "data": data.to_string()})
}

/// `Recovered` first, then messages with these serials.
async fn recovers_then(sub: &mut Subscription, serials: &[u64]) {
    match next(sub).await {
        ChannelEvent::Recovered { .. } => {}
        other => panic!("{}: expected Recovered, got {other:?}", sub.channel()),
    }
    for serial in serials {
        assert_eq!(
            serial_of(&next(sub).await),
            Some(*serial),
            "{}",
            sub.channel()
        );
    }
}

#[tokio::test]
async fn every_channel_is_resumed_even_when_one_authorizes_late() {
    let (url, mut conns) = fake_server().await;
    let opts = v2_options(&url)
        .resume_timeout(RESUME_TIMEOUT)
        .authorizer(authorizer_fn(|req| async move {
            if req.socket_id == "2.2" {
                tokio::time::sleep(LATE).await;
            }
            Ok(ChannelAuth::new("app-key:signature"))
        }));
    let (client, mut ws) = tokio::join!(Client::connect(opts), accept(&mut conns, "1.1"));
    let client = client.unwrap();
    let mut a = subscribe_at(&client, &mut ws, "a", "s1", 5).await;
    let mut b = subscribe_at(&client, &mut ws, "b", "s1", 7).await;
    let mut c = subscribe_at(&client, &mut ws, "private-c", "s1", 9).await;
    close_4200(&mut ws).await;

    let mut ws = accept(&mut conns, "2.2").await;
    // The public subscribes and one resume with all three positions, without waiting for
    // the private channel's authorizer.
    let mut public = Vec::new();
    let resume = loop {
        let (frame, data) = next_frame(&mut ws).await;
        match frame["event"].as_str() {
            Some("sockudo:subscribe") => public.push(data["channel"].as_str().unwrap().to_owned()),
            Some("sockudo:resume") => break data,
            other => panic!("unexpected {other:?}"),
        }
    };
    public.sort();
    assert_eq!(public, ["a", "b"]);
    let positions = &resume["channel_positions"];
    let serial = |c: &str| positions[c]["serial"].as_u64();
    assert_eq!(
        (serial("a"), serial("b"), serial("private-c")),
        (Some(5), Some(7), Some(9)),
        "{resume}"
    );

    // The public channels are answered at once (b with a replay); the server keeps
    // private-c's position until its subscribe.
    send(&mut ws, subscribed("a", "s1", 5)).await;
    send(&mut ws, subscribed("b", "s1", 8)).await;
    send(&mut ws, message("b", "s1", 8)).await;
    send(&mut ws, resume_success(&[("a", 5), ("b", 8)], &[])).await;
    send(&mut ws, message("a", "s1", 6)).await;
    recovers_then(&mut a, &[6]).await;
    recovers_then(&mut b, &[8]).await;

    // The private subscribe comes once authorized, then its own verdict.
    let (_, data) = expect(&mut ws, "sockudo:subscribe").await;
    assert_eq!(data["channel"], "private-c");
    send(&mut ws, subscribed("private-c", "s1", 11)).await;
    send(&mut ws, message("private-c", "s1", 10)).await;
    send(&mut ws, message("private-c", "s1", 11)).await;
    send(&mut ws, recovered("private-c", 11, 2)).await;
    send(&mut ws, message("private-c", "s1", 12)).await;
    recovers_then(&mut c, &[10, 11, 12]).await;

    let stats = client.stats();
    assert_eq!(
        (
            stats.resumes_succeeded,
            stats.resumes_failed,
            stats.recovery_failures
        ),
        (3, 0, 0)
    );
}
