//! Holding, releasing and filtering frames per channel.

use std::sync::Arc;

use sockudo_core::adapter::{MemberChange, MemberEvent};
use sockudo_core::app::App;
use sockudo_core::protocol::ProtocolVersion;

use super::*;
use crate::connection::{Outbox, QueueLimits};
use crate::presence_view::PresenceView;

fn conn(frames: usize, bytes: usize) -> (Arc<Connection>, Outbox) {
    Connection::new(
        "1.1".into(),
        Arc::new(App::new("a", "k", "s")),
        ProtocolVersion::V2,
        QueueLimits { frames, bytes },
    )
}

fn drain(c: &Connection, out: &mut Outbox) -> Vec<String> {
    std::iter::from_fn(|| out.try_recv(c))
        .map(|f| f.to_string())
        .collect()
}

fn member(user: &str, seq: u64, change: MemberChange) -> MemberEvent {
    MemberEvent {
        user_id: Arc::from(user),
        seq,
        change,
    }
}

#[tokio::test]
async fn frames_of_a_channel_being_subscribed_wait_for_finish_join() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("presence-c");
    c.begin_join(&ch);
    assert!(c.send_on(&ch, "member".into()));
    assert!(c.send_positioned(&ch, None, 3, "positioned".into()));
    assert!(
        c.send_on(&Arc::from("other"), "other".into()),
        "other channels are not held"
    );
    assert_eq!(out.try_recv(&c).as_deref(), Some("other"));
    assert!(
        out.try_recv(&c).is_none(),
        "held until the subscription succeeds"
    );
    assert!(c.send_text("succeeded".into()));
    c.finish_join(&ch, None, AfterJoin::Release);
    assert!(c.send_on(&ch, "later".into()));
    let got: Vec<String> = std::iter::from_fn(|| out.try_recv(&c))
        .map(|f| f.to_string())
        .collect();
    assert_eq!(got, ["succeeded", "member", "positioned", "later"]);
    c.begin_join(&ch);
    assert!(c.send_on(&ch, "dropped".into()));
    c.cancel_join("presence-c");
    assert!(
        out.try_recv(&c).is_none(),
        "a failed subscription's frames are dropped"
    );
}

#[tokio::test]
async fn live_copies_of_replayed_messages_are_dropped_once_released() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("c");
    let s1: Arc<str> = Arc::from("s1");
    let s2: Arc<str> = Arc::from("s2");
    c.hold(&ch);
    assert!(c.release_after("c", Some(("s1", 7))).is_empty());
    assert!(c.send_positioned(&ch, Some(&s1), 7, "late copy of 7".into()));
    assert!(c.send_positioned(&ch, Some(&s1), 8, "8".into()));
    assert!(c.send_positioned(&ch, Some(&s2), 1, "new stream 1".into()));
    assert_eq!(
        out.recv(&c).await.as_deref(),
        Some("8"),
        "7 was replayed already"
    );
    assert_eq!(
        out.recv(&c).await.as_deref(),
        Some("new stream 1"),
        "the bound is per stream"
    );
}

#[tokio::test]
async fn held_frames_wait_until_release() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("c");
    assert!(c.send_positioned(&ch, None, 5, "5".into()));
    assert_eq!(c.hold(&ch), Some(LiveSerials { first: 5, last: 5 }));
    assert!(c.send_positioned(&ch, None, 6, "6".into()));
    assert!(c.send_positioned(&ch, None, 7, "7".into()));
    assert_eq!(out.recv(&c).await.as_deref(), Some("5"));
    assert!(out.try_recv(&c).is_none(), "held frames are not queued");
    let held: Vec<u64> = c.release("c").into_iter().map(|h| h.serial).collect();
    assert_eq!(held, vec![6, 7]);
    assert!(c.send_positioned(&ch, None, 8, "8".into()));
    assert_eq!(out.recv(&c).await.as_deref(), Some("8"));
}

/// Held frames are bounded in bytes by the outbound byte bound too: a resume that waits
/// while large frames pile up ends the connection with 4200 (reconnect, resume again)
/// instead of growing, and releasing what was held frees its count.
#[tokio::test]
async fn held_frames_are_bounded_in_bytes() {
    let (c, _out) = conn(1024, 100);
    let ch: Arc<str> = Arc::from("c");
    assert!(c.send_positioned(&ch, None, 1, "1".into()));
    c.hold(&ch);
    let big: String = "x".repeat(40);
    assert!(c.send_positioned(&ch, None, 2, big.clone().into()));
    assert!(c.send_positioned(&ch, None, 3, big.clone().into()));
    assert_eq!(c.release("c").len(), 2, "80 bytes fit");
    c.hold(&ch);
    assert!(c.send_positioned(&ch, None, 4, big.clone().into()));
    assert!(c.send_positioned(&ch, None, 5, big.clone().into()));
    assert!(
        c.requested_close().is_none(),
        "the released bytes were freed"
    );
    assert!(!c.send_positioned(&ch, None, 6, big.into()));
    assert_eq!(c.requested_close(), Some(4200));
}

#[tokio::test]
async fn member_events_are_filtered_against_the_snapshot_once_it_is_known() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("presence-c");
    c.begin_join(&ch);
    // In flight while the snapshot (at 5) was read: bob's join (4) is in it, cid's (6) not.
    assert!(c.send_member(&ch, &member("bob", 4, MemberChange::Added), "bob+".into()));
    assert!(c.send_member(&ch, &member("cid", 6, MemberChange::Added), "cid+".into()));
    assert!(c.send_text("succeeded".into()));
    let view = PresenceView::from_snapshot(5, ["ann", "bob"], 10);
    c.finish_join(&ch, Some(view), AfterJoin::Release);
    assert!(!c.send_member(
        &ch,
        &member("bob", 7, MemberChange::Added),
        "bob+ again".into()
    ));
    assert!(c.send_member(&ch, &member("ann", 8, MemberChange::Removed), "ann-".into()));
    assert!(!c.send_member(&ch, &member("dan", 9, MemberChange::Removed), "dan-".into()));
    assert_eq!(drain(&c, &mut out), ["succeeded", "cid+", "ann-"]);
}

#[tokio::test]
async fn a_join_that_expects_a_resume_keeps_positioned_frames_held() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("c");
    c.begin_join(&ch);
    assert!(c.send_positioned(&ch, None, 11, "11".into()));
    assert!(c.send_on(&ch, "plain".into()));
    assert!(c.send_text("succeeded".into()));
    c.finish_join(&ch, None, AfterJoin::Hold);
    assert!(c.send_positioned(&ch, None, 12, "12".into()));
    assert_eq!(drain(&c, &mut out), ["succeeded", "plain"]);
    assert!(c.is_held("c"));
    let held: Vec<u64> = c.release("c").into_iter().map(|h| h.serial).collect();
    assert_eq!(held, [11, 12]);
}

#[tokio::test]
async fn released_to_the_queue_in_serial_order() {
    let (c, mut out) = conn(16, 1 << 20);
    let ch: Arc<str> = Arc::from("c");
    c.hold(&ch);
    assert!(c.send_positioned(&ch, None, 3, "3".into()));
    assert!(c.send_positioned(&ch, None, 2, "2".into()));
    c.release_to_queue("c");
    assert!(c.send_positioned(&ch, None, 4, "4".into()));
    assert_eq!(drain(&c, &mut out), ["2", "3", "4"]);
}
