//! One test per transition of the gap state machine.
#![allow(clippy::expect_used)]

use serde_json::Value;

use super::*;

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn msg_on(stream: &str, serial: u64) -> Message {
    Message {
        channel: "c".into(),
        event: "e".into(),
        data: Value::Null,
        user_id: None,
        message_id: Some(format!("{stream}-{serial}")),
        serial: Some(serial),
        stream_id: Some(stream.into()),
        extras: None,
    }
}

pub(super) fn msg(serial: u64) -> Message {
    msg_on("s1", serial)
}

pub(super) fn machine_with(limits: GapLimits) -> (Continuity, Instant) {
    let now = Instant::now();
    let mut c = Continuity::new("c", HoldBudget::new(limits), TIMEOUT);
    assert_eq!(c.attach(Position::new("s1", 0), now), Outcome::default());
    (c, now)
}

pub(super) fn machine() -> (Continuity, Instant) {
    machine_with(GapLimits::default())
}

/// The events as short strings: `s1/3` for a message, `!code` for a failure, `R` for
/// Recovered.
pub(super) fn seen(out: &Outcome) -> Vec<String> {
    out.events
        .iter()
        .map(|e| match e {
            ChannelEvent::Message(m) => format!(
                "{}/{}",
                m.stream_id.as_deref().unwrap_or("-"),
                m.serial.unwrap_or(0)
            ),
            ChannelEvent::RecoveryFailed(f) => format!("!{}", f.code),
            ChannelEvent::Recovered { .. } => "R".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

pub(super) fn recovered(serial: u64) -> Recovered {
    Recovered {
        channel: "c".into(),
        source: crate::RecoverySource::Hot,
        replayed: 0,
        position: Position::new("s1", serial),
    }
}

pub(super) fn failed(code: &str) -> RecoveryFailure {
    RecoveryFailure::client_side("c", crate::RecoveryCode::parse(code), "test")
}

#[test]
fn in_order_frames_are_delivered_at_once() {
    let (mut c, now) = machine();
    assert_eq!(seen(&c.on_message(msg(1), now)), ["s1/1"]);
    assert_eq!(seen(&c.on_message(msg(2), now)), ["s1/2"]);
    assert_eq!(c.position().map(|p| p.serial), Some(2));
    assert!(!c.in_gap());
}

#[test]
fn a_frame_at_or_behind_the_position_is_a_counted_duplicate() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(2), now);
    let out = c.on_message(msg(1), now);
    assert!(out.events.is_empty());
    assert_eq!(out.duplicates, 1);
    assert_eq!(c.on_message(msg(2), now).duplicates, 1);
}

#[test]
fn a_gap_holds_later_frames_and_asks_to_resume_from_the_last_contiguous_position() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_message(msg(4), now);
    assert!(
        out.events.is_empty(),
        "nothing is delivered ahead of the gap"
    );
    assert_eq!(out.gaps_opened, 1);
    let from = out.resume_from.expect("a resume is asked for");
    assert_eq!((from.stream_id.as_str(), from.serial), ("s1", 1));
    assert_eq!(from.last_message_id.as_deref(), Some("s1-1"));
    let out = c.on_message(msg(5), now);
    assert!(
        out.events.is_empty() && out.resume_from.is_none(),
        "{out:?}"
    );
    assert_eq!(c.on_message(msg(5), now).duplicates, 1, "held twice");
    assert_eq!(c.held(), 2);
}

#[test]
fn the_replay_fills_the_gap_then_held_frames_follow_in_serial_order() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(5), now);
    c.on_message(msg(4), now);
    assert!(c.on_message(msg(2), now).events == [ChannelEvent::Message(msg(2))]);
    let out = c.on_message(msg(3), now);
    assert_eq!(seen(&out), ["s1/3", "s1/4", "s1/5"]);
    assert_eq!(out.gaps_filled, 1);
    assert!(!c.in_gap());
    // Replayed copies of the held frames, then the verdict: nothing more to do.
    assert_eq!(c.on_message(msg(4), now).duplicates, 1);
    assert_eq!(c.on_recovered(&recovered(5), now), None);
    assert_eq!(c.held(), 0);
}

#[test]
fn a_late_frame_can_fill_the_gap_before_the_answer_which_is_then_ignored() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    assert_eq!(seen(&c.on_message(msg(2), now)), ["s1/2", "s1/3"]);
    // The answer to the resume comes after all: a failure is late news, not a new gap.
    assert_eq!(c.on_failed(failed("continuity_unverifiable"), now), None);
    // A later notice of a real failure is reported.
    let out = c.on_failed(failed("continuity_unverifiable"), now);
    assert_eq!(seen(&out.unwrap_or_default()), ["!continuity_unverifiable"]);
}

#[test]
fn an_unfillable_gap_reports_the_failure_before_the_held_frames() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(4), now);
    c.on_message(msg(3), now);
    let out = c
        .on_failed(failed("position_expired"), now)
        .unwrap_or_default();
    assert_eq!(seen(&out), ["!position_expired", "s1/3", "s1/4"]);
    assert_eq!(seen(&c.on_message(msg(5), now)), ["s1/5"]);
    // The same channel listed as failed in the resume_success that follows: settled.
    assert_eq!(c.on_answer_failed(failed("position_expired"), now), None);
}

#[test]
fn held_frames_with_holes_of_their_own_get_their_own_failure() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    c.on_message(msg(6), now);
    let out = c
        .on_failed(failed("position_expired"), now)
        .unwrap_or_default();
    assert_eq!(
        seen(&out),
        [
            "!position_expired",
            "s1/3",
            "!continuity_unverifiable",
            "s1/6"
        ]
    );
}

#[test]
fn a_success_that_did_not_replay_the_gap_fails_closed() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    let out = c.on_recovered(&recovered(3), now).unwrap_or_default();
    assert_eq!(seen(&out), ["!continuity_unverifiable", "s1/3"]);
}

#[test]
fn another_stream_is_a_reset_reported_before_its_first_frame() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c.on_message(msg_on("s2", 7), now);
    assert_eq!(seen(&out), ["!stream_reset", "s2/7"]);
    let ChannelEvent::RecoveryFailed(f) = &out.events[0] else {
        unreachable!()
    };
    assert_eq!(
        (
            f.expected_stream_id.as_deref(),
            f.current_stream_id.as_deref()
        ),
        (Some("s1"), Some("s2"))
    );
    assert_eq!(seen(&c.on_message(msg_on("s2", 8), now)), ["s2/8"]);
    assert!(c.on_message(msg_on("s2", 10), now).resume_from.is_some());
}

#[test]
fn a_stream_reset_during_a_gap_reports_both_discontinuities() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    let out = c.on_message(msg_on("s2", 1), now);
    assert_eq!(
        seen(&out),
        ["!continuity_unverifiable", "s1/3", "!stream_reset", "s2/1"]
    );
    assert!(!c.in_gap());
    // The resume's own answer (the old stream is gone) is late news.
    assert_eq!(c.on_failed(failed("stream_reset"), now), None);
}

#[test]
fn a_new_stream_in_the_subscription_head_is_a_reset() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    assert_eq!(
        seen(&c.attach(Position::new("s1", 9), now)),
        Vec::<String>::new()
    );
    assert_eq!(
        c.position().map(|p| p.serial),
        Some(1),
        "a head is not a frame"
    );
    assert_eq!(
        seen(&c.attach(Position::new("s2", 9), now)),
        ["!stream_reset"]
    );
    assert_eq!(seen(&c.on_message(msg_on("s2", 10), now)), ["s2/10"]);
}

#[test]
fn an_unsolicited_failure_is_reported_and_covers_the_next_jump() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let out = c
        .on_failed(failed("continuity_unverifiable"), now)
        .unwrap_or_default();
    assert_eq!(seen(&out), ["!continuity_unverifiable"]);
    // Reported once, not twice in a row.
    assert_eq!(c.on_failed(failed("continuity_unverifiable"), now), None);
    let out = c.on_message(msg(3), now);
    assert_eq!(seen(&out), ["s1/3"]);
    assert!(out.resume_from.is_none());
    // Only that one jump.
    assert!(c.on_message(msg(5), now).resume_from.is_some());
}

#[test]
fn no_answer_in_time_fails_the_gap() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    assert_eq!(c.deadline(), Some(now + TIMEOUT));
    assert_eq!(c.check_timeout(now + TIMEOUT / 2), None);
    let out = c.check_timeout(now + TIMEOUT).unwrap_or_default();
    assert_eq!(seen(&out), ["!resume_timeout", "s1/3"]);
    assert_eq!(c.deadline(), None);
}

#[test]
fn the_per_channel_bound_gives_the_gap_up_instead_of_growing() {
    let (mut c, now) = machine_with(GapLimits {
        per_channel: 2,
        total: 100,
    });
    c.on_message(msg(1), now);
    c.on_message(msg(4), now);
    c.on_message(msg(3), now);
    let out = c.on_message(msg(5), now);
    assert_eq!(seen(&out), ["!gap_overflow", "s1/3", "s1/4", "s1/5"]);
    assert_eq!(c.held(), 0);
}

#[test]
fn the_total_bound_is_shared_by_every_channel() {
    let now = Instant::now();
    let budget = HoldBudget::new(GapLimits {
        per_channel: 10,
        total: 1,
    });
    let mut a = Continuity::new("a", budget.clone(), TIMEOUT);
    let mut b = Continuity::new("b", budget.clone(), TIMEOUT);
    for c in [&mut a, &mut b] {
        c.attach(Position::new("s1", 0), now);
    }
    assert!(a.on_message(msg(2), now).resume_from.is_some());
    assert_eq!(budget.used(), 1);
    let out = b.on_message(msg(2), now);
    assert_eq!(seen(&out), ["!gap_overflow", "s1/2"]);
    drop(a);
    assert_eq!(budget.used(), 0, "a dropped channel gives its room back");
}

#[test]
fn reconnect_success_releases_recovered_then_frames_in_order() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    let from = c.begin_resume(now).expect("there is a position");
    assert_eq!(from.serial, 1);
    assert!(c.attach(Position::new("s1", 3), now).events.is_empty());
    for s in [3, 2, 4] {
        assert!(c.on_message(msg(s), now).events.is_empty(), "held");
    }
    let out = c.on_recovered(&recovered(3), now).unwrap_or_default();
    assert_eq!(seen(&out), ["R", "s1/2", "s1/3", "s1/4"]);
    assert_eq!(out.resume_verdict, Some(true));
}

#[test]
fn reconnect_success_with_a_short_replay_is_not_silent() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.begin_resume(now);
    c.on_message(msg(4), now);
    let out = c.on_recovered(&recovered(4), now).unwrap_or_default();
    assert_eq!(seen(&out), ["R"]);
    assert_eq!(
        out.resume_from.map(|p| p.serial),
        Some(1),
        "asks again for 2..3"
    );
    // Nothing held and the server claims more than arrived.
    let (mut c, now) = machine();
    c.begin_resume(now);
    let out = c.on_recovered(&recovered(6), now).unwrap_or_default();
    assert_eq!(seen(&out), ["R", "!continuity_unverifiable"]);
    assert_eq!(seen(&c.on_message(msg(7), now)), ["s1/7"]);
}

#[test]
fn reconnect_failure_comes_first_and_continues_from_the_head() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.begin_resume(now);
    c.attach(Position::new("s2", 40), now);
    let out = c.on_failed(failed("stream_reset"), now).unwrap_or_default();
    assert_eq!(seen(&out), ["!stream_reset"]);
    assert_eq!(out.resume_verdict, Some(false));
    assert_eq!(c.position(), Some(&Position::new("s2", 40)));
    assert_eq!(seen(&c.on_message(msg_on("s2", 41), now)), ["s2/41"]);
}

#[test]
fn reconnect_failure_releases_held_frames_after_it() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.begin_resume(now);
    c.attach(Position::new("s2", 40), now);
    c.on_message(msg_on("s2", 42), now);
    c.on_message(msg_on("s2", 41), now);
    let out = c.on_failed(failed("stream_reset"), now).unwrap_or_default();
    assert_eq!(seen(&out), ["!stream_reset", "s2/41", "s2/42"]);
}

#[test]
fn abandon_forgets_held_frames_and_gives_the_room_back() {
    let budget = HoldBudget::new(GapLimits::default());
    let now = Instant::now();
    let mut c = Continuity::new("c", budget.clone(), TIMEOUT);
    c.attach(Position::new("s1", 0), now);
    c.on_message(msg(2), now);
    assert_eq!(budget.used(), 1);
    assert_eq!(c.begin_resume(now).map(|p| p.serial), Some(0));
    assert_eq!(budget.used(), 0);
    assert!(c.is_resuming());
    c.abandon();
    assert!(!c.is_resuming());
}

#[test]
fn frames_without_a_serial_pass_straight_through() {
    let (mut c, now) = machine();
    c.on_message(msg(1), now);
    c.on_message(msg(3), now);
    let mut plain = msg(0);
    plain.serial = None;
    plain.stream_id = None;
    assert_eq!(c.on_message(plain, now).events.len(), 1);
    assert!(c.in_gap());
}

#[test]
fn the_head_event_right_after_the_first_attach_is_delivered_once() {
    // A cache channel sends its last event (the head) right after subscription_succeeded.
    let now = Instant::now();
    let mut c = Continuity::new("c", HoldBudget::new(GapLimits::default()), TIMEOUT);
    c.attach(Position::new("s1", 5), now);
    assert_eq!(seen(&c.on_message(msg(5), now)), ["s1/5"]);
    assert_eq!(c.on_message(msg(5), now).duplicates, 1);
    assert_eq!(seen(&c.on_message(msg(6), now)), ["s1/6"]);
    // Only right after the attach.
    c.attach(Position::new("s1", 6), now);
    assert_eq!(c.on_message(msg(6), now).duplicates, 1);
}

#[test]
fn the_resume_wait_starts_again_when_the_subscribe_goes_out() {
    let (mut c, now) = machine();
    c.begin_resume(now);
    // Authorizing took most of the timeout; the server could not answer before.
    let sent = now + TIMEOUT - Duration::from_secs(1);
    c.subscribe_sent(sent);
    assert_eq!(c.deadline(), Some(sent + TIMEOUT));
    assert_eq!(c.check_timeout(now + TIMEOUT), None);
    let out = c.check_timeout(sent + TIMEOUT).unwrap_or_default();
    assert_eq!(seen(&out), ["!resume_timeout"]);
    // Live (or in a gap), a subscribe changes no deadline.
    c.subscribe_sent(sent + TIMEOUT);
    assert_eq!(c.deadline(), None);
}

/// Found by the property test: after a stream reset announced at attach, the new stream's
/// head event is delivered; a later jump back to the old stream needs its own failure.
#[test]
fn a_head_event_after_a_reset_uncovers_the_next_discontinuity() {
    let now = Instant::now();
    let mut c = Continuity::new(
        "c",
        HoldBudget::new(GapLimits::default()),
        Duration::from_secs(10),
    );
    c.attach(Position::new("s0", 0), now);
    let out = c.attach(Position::new("s1", 1), now);
    assert!(matches!(
        out.events.as_slice(),
        [ChannelEvent::RecoveryFailed(_)]
    ));
    let out = c.on_message(msg_on("s1", 1), now);
    assert!(matches!(out.events.as_slice(), [ChannelEvent::Message(_)]));
    let out = c.on_message(msg_on("s0", 1), now);
    assert!(
        matches!(
            out.events.as_slice(),
            [ChannelEvent::RecoveryFailed(_), ChannelEvent::Message(_)]
        ),
        "{:?}",
        out.events
    );
}
