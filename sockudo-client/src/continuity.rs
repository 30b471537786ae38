//! Live continuity of one V2 channel: the gap state machine.
//!
//! Every V2 broadcast carries `(stream_id, serial)`. A channel's [`Continuity`] knows the last
//! position it delivered and decides, frame by frame, what the application sees:
//!
//! - **in order** (`serial == last + 1`, same stream): delivered at once;
//! - **duplicate** (`serial <= last`, same stream): dropped and counted;
//! - **gap** (`serial > last + 1`, same stream): nothing later is delivered ahead of the
//!   missing serials. The frame is held (bounded by [`GapLimits`]) and the caller sends
//!   `sockudo:resume` for the channel from the last contiguous position
//!   ([`Outcome::resume_from`]). The gap closes when the missing serials arrive, whether as
//!   the server's replay or as late live frames; the held frames then follow in serial
//!   order. If it cannot close (a `resume_failed`, a success that did not replay them, no
//!   answer within the timeout, the hold bound exceeded, the stream reset meanwhile), a
//!   [`ChannelEvent::RecoveryFailed`] is delivered first and the held frames after it;
//! - **another stream** (`stream_id` differs): continuity was lost upstream; a
//!   `RecoveryFailed` with code [`CODE_STREAM_RESET`] precedes the frame, whose stream the
//!   channel adopts.
//!
//! A `sockudo_internal:position` frame ([`Continuity::on_position`]) says that a serial was
//! used by a message withheld from this connection (its own client event, or an API publish
//! excluding its socket). It goes through the same rules as a message (it can fill a gap, be
//! a duplicate, open a gap, come from another stream, wait behind a resume verdict) but
//! delivers nothing: the position moves past the serial. When both the marker and the
//! message of one serial arrive (a replay of the connection's own event), the marker wins
//! and the message is dropped as a duplicate, so the publisher never gets its own event back.
//!
//! After a reconnect the channel waits for the verdict on its `sockudo:resume`
//! ([`Continuity::begin_resume`]): everything is held; a success releases
//! [`ChannelEvent::Recovered`] and then the held frames through the rules above; a failure
//! releases `RecoveryFailed` first.
//!
//! The guarantee, for what is delivered: per stream, serials strictly increase; nothing is
//! delivered twice; and wherever two consecutive delivered frames are not contiguous (a
//! serial skipped, or a change of stream), a `RecoveryFailed` lies between them. A
//! `RecoveryFailed` is never followed directly by a second one: the first already says that
//! continuity is not proven at that point.
//!
//! A `sockudo:resume_failed` can also arrive unasked (the server saw a gap it cannot repair):
//! the channel reports it and stays live; the next jump in serials is then already covered.
//! Pure logic: the caller passes frames, answers and the clock, and carries out the outcome.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub use budget::{GapLimits, HoldBudget};
use frame::{sorted, Frame};

use crate::event::{ChannelEvent, Message, RecoveryFailure};
use crate::positions::{ChannelPosition, Position};
use crate::recovery_code::RecoveryCode;
use crate::resume::{Recovered, CODE_RESUME_TIMEOUT};

/// The stream id changed: the old stream's continuity is lost.
pub const CODE_STREAM_RESET: RecoveryCode = RecoveryCode::StreamReset;
/// Serials were skipped and could not be proven (or recovered).
pub const CODE_CONTINUITY_UNVERIFIABLE: RecoveryCode = RecoveryCode::ContinuityUnverifiable;
/// Client side: more frames waited behind a gap (or a resume verdict) than [`GapLimits`]
/// allow, so the gap was given up rather than buffering without bound.
pub const CODE_GAP_OVERFLOW: RecoveryCode = RecoveryCode::GapOverflow;

/// How many left-behind streams a channel remembers, so that a late frame of one is
/// recognised as stale instead of being taken for yet another stream change.
const RETIRED_STREAMS: usize = 4;

/// What the caller must do after feeding a [`Continuity`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Hand these to the channel's subscriptions, in this order.
    pub events: Vec<ChannelEvent>,
    /// Send `sockudo:resume` for this channel from this position (a gap just opened).
    pub resume_from: Option<Position>,
    /// Frames dropped because their serial was at or behind the position.
    pub duplicates: u64,
    /// Gaps opened.
    pub gaps_opened: u64,
    /// Gaps closed with every missing serial delivered.
    pub gaps_filled: u64,
    /// `Some(true)` / `Some(false)`: the verdict on a reconnect resume came (or timed out).
    pub resume_verdict: Option<bool>,
}

impl Outcome {
    /// The failures this outcome surfaces.
    pub fn failures(&self) -> impl Iterator<Item = &RecoveryFailure> {
        self.events.iter().filter_map(|e| match e {
            ChannelEvent::RecoveryFailed(f) => Some(f),
            _ => None,
        })
    }
}

/// How a positioned frame relates to the channel's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    /// No position yet: the frame sets it.
    First,
    /// The head event itself right after the first attach (a cache channel's replay).
    HeadEvent,
    /// At or behind where its stream stood.
    Stale,
    /// Another stream than the position's.
    OtherStream,
    /// `last + 1`.
    Next,
    /// Beyond `last + 1`.
    Ahead,
}

#[derive(Debug)]
enum Mode {
    Live,
    /// Serials after the position are missing; later frames wait, keyed by serial.
    Gap {
        since: Instant,
        held: BTreeMap<u64, Frame>,
    },
    /// Reconnected: waiting for the verdict on `sockudo:resume`; everything waits.
    Resuming {
        since: Instant,
        held: Vec<Frame>,
        attach: Option<Position>,
    },
}

/// The gap state machine of one channel (see the module docs).
#[derive(Debug)]
pub struct Continuity {
    channel: String,
    budget: HoldBudget,
    timeout: Duration,
    position: ChannelPosition,
    /// Where the streams the channel left behind stood (oldest first).
    retired: VecDeque<Position>,
    mode: Mode,
    /// A `RecoveryFailed` is the latest thing delivered: the next discontinuity is covered.
    marked: bool,
    /// Attached for the first time and nothing delivered since: the head event itself may
    /// still come (a cache channel's last event, sent right after the subscription).
    fresh: bool,
    /// Expiry times of gap resumes whose answer has not been seen. A `resume_failed` that
    /// arrives while live and one of these is pending is that late answer, not news.
    outstanding: VecDeque<Instant>,
}

impl Continuity {
    /// `timeout`: how long a gap or a reconnect resume waits for the server.
    pub fn new(channel: impl Into<String>, budget: HoldBudget, timeout: Duration) -> Self {
        Continuity {
            channel: channel.into(),
            budget,
            timeout,
            position: ChannelPosition::default(),
            retired: VecDeque::new(),
            mode: Mode::Live,
            marked: false,
            fresh: false,
            outstanding: VecDeque::new(),
        }
    }

    /// The last delivered (or attached) position.
    pub fn position(&self) -> Option<&Position> {
        self.position.get()
    }

    /// Waiting for the verdict on a reconnect resume.
    pub fn is_resuming(&self) -> bool {
        matches!(self.mode, Mode::Resuming { .. })
    }

    /// Waiting for a live gap to close.
    pub fn in_gap(&self) -> bool {
        matches!(self.mode, Mode::Gap { .. })
    }

    /// Frames held right now.
    pub fn held(&self) -> usize {
        match &self.mode {
            Mode::Live => 0,
            Mode::Gap { held, .. } => held.len(),
            Mode::Resuming { held, .. } => held.len(),
        }
    }

    /// When the pending gap or resume gives up (`None` when live).
    pub fn deadline(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Live => None,
            Mode::Gap { since, .. } | Mode::Resuming { since, .. } => Some(*since + self.timeout),
        }
    }

    /// A broadcast of the channel arrived.
    pub fn on_message(&mut self, message: Message, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        self.take(Frame::Message(message), now, &mut out);
        out
    }

    /// `sockudo_internal:position`: `position.serial` of `position.stream_id` was used by a
    /// message withheld from this connection. Ordered like a message, never delivered (its
    /// `last_message_id` is ignored: the withheld message's id is unknown here).
    pub fn on_position(&mut self, position: Position, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        let marker = Position {
            last_message_id: None,
            ..position
        };
        self.take(Frame::Withheld(marker), now, &mut out);
        out
    }

    /// `subscription_succeeded` gave the stream head. It becomes the position only when
    /// there is none yet, or (as a stream reset) when its stream differs: a head ahead of the
    /// position on the same stream is not adopted, since the serials between were not seen.
    pub fn attach(&mut self, head: Position, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        if let Mode::Resuming { attach, .. } = &mut self.mode {
            *attach = Some(head);
            return out;
        }
        let Some(current) = self.position.get().cloned() else {
            self.position.set(head);
            self.fresh = true;
            return out;
        };
        if current.stream_id != head.stream_id {
            if self.in_gap() {
                let f = self.failure(
                    CODE_CONTINUITY_UNVERIFIABLE,
                    "the stream was reset before the gap was filled",
                );
                self.fail_pending(f, None, now, &mut out);
            }
            let f = self.stream_reset(&current, &head.stream_id);
            self.report(f, &mut out);
            self.move_to(head);
        }
        out
    }

    /// A connection is up: hold everything until the verdict on resuming from the returned
    /// position (`None`: nothing to resume, the channel just goes live).
    pub fn begin_resume(&mut self, now: Instant) -> Option<Position> {
        self.abandon();
        self.fresh = false;
        let position = self.position.get().cloned()?;
        self.mode = Mode::Resuming {
            since: now,
            held: Vec::new(),
            attach: None,
        };
        Some(position)
    }

    /// The channel's subscribe went out on this connection. The server answers a resume for
    /// a channel only once it is subscribed (it keeps the position until then), so the wait
    /// for the verdict starts here: a slow authorizer does not use up the resume timeout.
    pub fn subscribe_sent(&mut self, now: Instant) {
        if let Mode::Resuming { since, .. } = &mut self.mode {
            *since = now;
        }
    }

    /// The connection is gone: forget what was held. Those frames lie after the unchanged
    /// position, so the next resume replays them (or reports that it cannot).
    pub fn abandon(&mut self) {
        let held = self.held();
        self.budget.give(held);
        self.mode = Mode::Live;
        self.outstanding.clear();
    }

    /// `resume_success` lists the channel as recovered.
    pub fn on_recovered(&mut self, recovered: &Recovered, now: Instant) -> Option<Outcome> {
        let mut out = Outcome::default();
        match &mut self.mode {
            Mode::Resuming { held, .. } => {
                let held = std::mem::take(held);
                self.budget.give(held.len());
                self.mode = Mode::Live;
                out.resume_verdict = Some(true);
                out.events.push(ChannelEvent::Recovered {
                    source: recovered.source.clone(),
                    replayed: recovered.replayed,
                });
                // Not `recovered.position`: only frames actually received move the
                // position, so a short replay shows up as a gap instead of a silent hole.
                for frame in sorted(held) {
                    self.take(frame, now, &mut out);
                }
                self.check_claim(&recovered.position, &mut out);
            }
            Mode::Gap { .. } => {
                if self.answer_is_for_current_gap(now) {
                    // The replay came before this answer and did not close the gap.
                    let f = self.failure(
                        CODE_CONTINUITY_UNVERIFIABLE,
                        "the resume succeeded but did not replay the missing serials",
                    );
                    self.fail_pending(f, None, now, &mut out);
                }
            }
            Mode::Live => {
                self.outstanding.pop_front();
            }
        }
        Some(out).filter(|o| *o != Outcome::default())
    }

    /// `resume_success` lists the channel as failed: certainly the answer to a resume.
    pub fn on_answer_failed(&mut self, failure: RecoveryFailure, now: Instant) -> Option<Outcome> {
        let current = match self.mode {
            Mode::Resuming { .. } => true,
            Mode::Gap { .. } => self.answer_is_for_current_gap(now),
            Mode::Live => {
                // Already settled (by a bare `resume_failed`, or the gap closed itself).
                self.outstanding.pop_front();
                false
            }
        };
        if !current {
            return None;
        }
        let mut out = Outcome::default();
        self.fail_pending(failure, None, now, &mut out);
        Some(out)
    }

    /// A bare `sockudo:resume_failed`: the answer to a resume, or the server's notice of a
    /// gap it cannot repair; the two cannot be told apart.
    pub fn on_failed(&mut self, failure: RecoveryFailure, now: Instant) -> Option<Outcome> {
        self.expire_outstanding(now);
        let mut out = Outcome::default();
        match self.mode {
            // Settles what is pending. Not counted as the answer: if it was the notice, the
            // answer that follows is then recognised as late.
            Mode::Resuming { .. } | Mode::Gap { .. } => {
                self.fail_pending(failure, None, now, &mut out)
            }
            Mode::Live => {
                if self.outstanding.pop_front().is_some() {
                    return None;
                }
                self.report(failure, &mut out);
            }
        }
        Some(out).filter(|o| !o.events.is_empty())
    }

    /// Give up a gap or resume whose answer is overdue at `now`.
    pub fn check_timeout(&mut self, now: Instant) -> Option<Outcome> {
        self.expire_outstanding(now);
        if self.deadline().is_none_or(|d| now < d) {
            return None;
        }
        let reason = if self.is_resuming() {
            "no resume verdict from the server in time"
        } else {
            "no answer to the resume for a gap in time"
        };
        let f = self.failure(CODE_RESUME_TIMEOUT, reason);
        let mut out = Outcome::default();
        self.fail_pending(f, None, now, &mut out);
        Some(out)
    }

    /// Route one frame by mode and position.
    fn take(&mut self, frame: Frame, now: Instant, out: &mut Outcome) {
        if let Mode::Resuming { held, .. } = &mut self.mode {
            if self.budget.try_take(held.len()) {
                held.push(frame);
            } else {
                let f = self.failure(
                    CODE_GAP_OVERFLOW,
                    "too many frames arrived while waiting for the resume verdict",
                );
                self.fail_pending(f, Some(frame), now, out);
            }
            return;
        }
        let Some((stream, serial)) = frame.place() else {
            // Not part of the stream (no serial): nothing to order it against.
            if let Frame::Message(message) = frame {
                out.events.push(ChannelEvent::Message(message));
            }
            return;
        };
        let relation = self.relation(stream, serial);
        match relation {
            Relation::First => self.deliver(frame, out),
            Relation::HeadEvent => {
                // Never delivered before, and the position already accounts for it. It is
                // delivered: a `RecoveryFailed` before it no longer covers what follows.
                self.fresh = false;
                self.marked = false;
                if let Frame::Message(message) = frame {
                    out.events.push(ChannelEvent::Message(message));
                }
            }
            Relation::Stale => out.duplicates += u64::from(frame.is_message()),
            Relation::OtherStream => {
                if self.in_gap() {
                    let f = self.failure(
                        CODE_CONTINUITY_UNVERIFIABLE,
                        "the stream was reset before the gap was filled",
                    );
                    self.fail_pending(f, None, now, out);
                }
                self.deliver_covering(frame, out);
            }
            Relation::Next => {
                self.deliver(frame, out);
                self.drain_contiguous(out);
            }
            Relation::Ahead => self.ahead(frame, serial, now, out),
        }
    }

    /// Where a frame of `stream`/`serial` stands against the position (no copies: this is
    /// the path of every frame).
    fn relation(&self, stream: &str, serial: u64) -> Relation {
        let Some(current) = self.position.get() else {
            return Relation::First;
        };
        let same = current.stream_id == stream;
        if self.fresh && same && serial == current.serial {
            Relation::HeadEvent
        } else if self.is_stale(stream, serial) {
            Relation::Stale
        } else if !same {
            Relation::OtherStream
        } else if Some(serial) == current.serial.checked_add(1) {
            Relation::Next
        } else {
            Relation::Ahead
        }
    }

    /// A frame beyond `last + 1` on the position's stream: held behind the gap (opening it
    /// and asking for a resume if it is new).
    fn ahead(&mut self, frame: Frame, serial: u64, now: Instant, out: &mut Outcome) {
        if matches!(self.mode, Mode::Live) && self.marked {
            // A RecoveryFailed was the last thing delivered: this jump is covered by it.
            self.deliver(frame, out);
            return;
        }
        if let Mode::Gap { held, .. } = &mut self.mode {
            if let Some(waiting) = held.get_mut(&serial) {
                // Held twice. A marker replaces a message of its serial: that message is the
                // connection's own event coming back in a replay.
                if waiting.is_message() {
                    out.duplicates += 1;
                    if !frame.is_message() {
                        *waiting = frame;
                    }
                } else {
                    out.duplicates += u64::from(frame.is_message());
                }
                return;
            }
        }
        if !self.budget.try_take(self.held()) {
            let f = self.failure(
                CODE_GAP_OVERFLOW,
                "too many frames arrived while waiting for a gap to be filled",
            );
            self.fail_pending(f, Some(frame), now, out);
            return;
        }
        if let Mode::Gap { held, .. } = &mut self.mode {
            held.insert(serial, frame);
            return;
        }
        out.resume_from = self.position.get().cloned();
        out.gaps_opened += 1;
        self.mode = Mode::Gap {
            since: now,
            held: BTreeMap::from([(serial, frame)]),
        };
        self.outstanding.push_back(now + self.timeout * 2);
    }

    /// After an in-order delivery: release held frames that are now contiguous.
    fn drain_contiguous(&mut self, out: &mut Outcome) {
        loop {
            let Mode::Gap { held, .. } = &mut self.mode else {
                return;
            };
            let last = self.position.get().map_or(0, |p| p.serial);
            let Some(entry) = held.first_entry() else {
                self.mode = Mode::Live;
                out.gaps_filled += 1;
                return;
            };
            let serial = *entry.key();
            if serial > last.saturating_add(1) {
                return;
            }
            let frame = entry.remove();
            self.budget.give(1);
            if serial <= last {
                out.duplicates += u64::from(frame.is_message());
            } else {
                self.deliver(frame, out);
            }
        }
    }

    /// Settle a pending gap or resume as failed: `failure` first, then every held frame (and
    /// `extra`) in serial order, each further discontinuity with its own `RecoveryFailed`.
    fn fail_pending(
        &mut self,
        failure: RecoveryFailure,
        extra: Option<Frame>,
        now: Instant,
        out: &mut Outcome,
    ) {
        let (frames, attach) = match std::mem::replace(&mut self.mode, Mode::Live) {
            Mode::Live => {
                self.report(failure, out);
                if let Some(frame) = extra {
                    self.take(frame, now, out);
                }
                return;
            }
            Mode::Gap { held, .. } => (held.into_values().collect::<Vec<_>>(), None),
            Mode::Resuming { held, attach, .. } => {
                out.resume_verdict = Some(false);
                (held, attach)
            }
        };
        self.budget.give(frames.len());
        self.report(failure, out);
        let mut frames = frames;
        frames.extend(extra);
        if frames.is_empty() {
            // Nothing arrived: continue from the subscription head, if one came (and it is
            // not behind what was already delivered).
            let behind = |head: &Position| {
                self.position
                    .get()
                    .is_some_and(|p| p.stream_id == head.stream_id && head.serial <= p.serial)
            };
            if let Some(head) = attach.filter(|h| !behind(h)) {
                self.move_to(head);
            }
        }
        for frame in sorted(frames) {
            self.deliver_covering(frame, out);
        }
    }
}

impl Drop for Continuity {
    fn drop(&mut self) {
        self.budget.give(self.held());
    }
}

mod budget;
mod delivery;
mod frame;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod withheld_tests;
