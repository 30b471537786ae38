//! `sockudo_internal:position` markers through the gap state machine: a withheld serial is
//! used, nothing is delivered for it, and it is never taken for a gap.
#![allow(clippy::expect_used)]

use super::tests::{failed, machine, msg, msg_on, recovered, seen, TIMEOUT};
use super::*;

fn marker(serial: u64) -> Position {
    marker_on("s1", serial)
}

fn marker_on(stream: &str, serial: u64) -> Position {
    Position::new(stream, serial)
}

const NOTHING: [&str; 0] = [];

#[test]
fn a_marker_in_order_moves_the_position_and_delivers_nothing() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_position(marker(2), now);
    assert_eq!(
        out,
        Outcome::default(),
        "no event, no resume, nothing counted"
    );
    assert_eq!(c.position(), Some(&Position::new("s1", 2)));
    let out = c.on_message(msg(3), now);
    assert_eq!(seen(&out), ["s1/3"]);
    assert!(out.resume_from.is_none() && !c.in_gap());
}

#[test]
fn a_marker_fills_a_gap_and_releases_what_waited_behind_it() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    assert!(c.on_message(msg(3), now).resume_from.is_some());
    let out = c.on_position(marker(2), now);
    assert_eq!(seen(&out), ["s1/3"]);
    assert_eq!(out.gaps_filled, 1);
    assert!(!c.in_gap());
    // The resume's answer comes after all: late news.
    assert_eq!(c.on_recovered(&recovered(3), now), None);
}

#[test]
fn a_marker_ahead_opens_a_gap_and_the_replayed_own_event_is_not_echoed() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_position(marker(3), now);
    assert!(out.events.is_empty());
    assert_eq!(out.gaps_opened, 1);
    assert_eq!(out.resume_from.map(|p| p.serial), Some(1));
    // The replay: 2, then 3 (the connection's own event, kept in the history).
    assert_eq!(seen(&c.on_message(msg(2), now)), ["s1/2"]);
    let echo = c.on_message(msg(3), now);
    assert_eq!(seen(&echo), NOTHING);
    assert_eq!(echo.duplicates, 1);
    assert_eq!(c.position().map(|p| p.serial), Some(3));
    assert_eq!(seen(&c.on_message(msg(4), now)), ["s1/4"]);
}

#[test]
fn a_marker_replaces_a_held_message_of_its_serial() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now); // a replayed copy of the own event, ahead of the marker
    let out = c.on_position(marker(3), now);
    assert_eq!(out.duplicates, 1);
    assert_eq!(c.held(), 1);
    assert_eq!(seen(&c.on_message(msg(2), now)), ["s1/2"]);
    assert_eq!(c.position().map(|p| p.serial), Some(3));
}

#[test]
fn a_marker_at_or_behind_the_position_is_dropped_uncounted() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(2), now);
    assert_eq!(c.on_position(marker(2), now), Outcome::default());
    assert_eq!(c.on_position(marker(1), now), Outcome::default());
    assert_eq!(c.position().map(|p| p.serial), Some(2));
    // Held twice behind a gap: still nothing counted.
    c.on_position(marker(4), now);
    assert_eq!(c.on_position(marker(4), now).duplicates, 0);
    assert_eq!(c.held(), 1);
}

#[test]
fn a_marker_from_another_stream_is_a_reset() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_position(marker_on("s2", 1), now);
    assert_eq!(seen(&out), ["!stream_reset"]);
    assert_eq!(c.position(), Some(&Position::new("s2", 1)));
    assert_eq!(seen(&c.on_message(msg_on("s2", 2), now)), ["s2/2"]);
    // A late frame of the old stream is behind where it stood: a duplicate.
    assert_eq!(c.on_message(msg(1), now).duplicates, 1);
}

#[test]
fn a_marker_after_a_failure_ends_its_cover() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_failed(failed("continuity_unverifiable"), now);
    assert_eq!(seen(&out.unwrap_or_default()), ["!continuity_unverifiable"]);
    // The jump to 5 is covered by that failure: no resume.
    let out = c.on_position(marker(5), now);
    assert!(out.resume_from.is_none() && out.events.is_empty());
    // The marker is the latest position now, so a jump after it is a new gap.
    let out = c.on_message(msg(7), now);
    assert_eq!(out.resume_from.map(|p| p.serial), Some(5));
}

#[test]
fn an_unfilled_gap_before_a_marker_is_reported_when_the_gap_is_given_up() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_position(marker(3), now);
    c.on_message(msg(4), now);
    c.on_message(msg(6), now);
    let out = c.check_timeout(now + TIMEOUT).unwrap_or_default();
    // 2 missing (one failure covers it, the marker moves to 3), 4 follows at once, 5
    // missing again: a failure of its own.
    assert_eq!(
        seen(&out),
        [
            "!resume_timeout",
            "s1/4",
            "!continuity_unverifiable",
            "s1/6"
        ]
    );
    assert_eq!(c.held(), 0);
}

#[test]
fn markers_wait_behind_a_reconnect_resume_and_win_over_replayed_own_events() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.begin_resume(now).expect("there is a position");
    // The replay (2 from another publisher, 3 the connection's own event), then live: the
    // marker of a new own event 4 and a message 5. A marker for 3 too, in any order.
    for s in [2, 3] {
        assert!(c.on_message(msg(s), now).events.is_empty(), "held");
    }
    for p in [marker(4), marker(3)] {
        assert!(c.on_position(p, now).events.is_empty(), "held");
    }
    c.on_message(msg(5), now);
    assert_eq!(c.held(), 5);
    let out = c.on_recovered(&recovered(3), now).unwrap_or_default();
    assert_eq!(seen(&out), ["R", "s1/2", "s1/5"]);
    assert_eq!(out.duplicates, 1, "the replayed own event 3");
    assert_eq!(c.held(), 0);
}

#[test]
fn a_marker_right_after_the_first_attach_at_the_head_is_nothing() {
    let now = Instant::now();
    let mut c = Continuity::new("c", HoldBudget::new(GapLimits::default()), TIMEOUT);
    c.attach(Position::new("s1", 5), now);
    assert_eq!(c.on_position(marker(5), now), Outcome::default());
    assert_eq!(c.on_message(msg(5), now).duplicates, 1, "no longer fresh");
    assert_eq!(seen(&c.on_message(msg(6), now)), ["s1/6"]);
}
