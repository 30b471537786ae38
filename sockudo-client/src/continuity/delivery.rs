//! How a [`Continuity`] hands frames and failures out: delivery with the coverage rule,
//! the position across streams, and the bookkeeping of resume answers.

use std::time::Instant;

use super::{
    Continuity, Frame, Outcome, CODE_CONTINUITY_UNVERIFIABLE, CODE_STREAM_RESET, RETIRED_STREAMS,
};
use crate::event::{ChannelEvent, RecoveryFailure};
use crate::positions::Position;

impl Continuity {
    /// Deliver `frame` whatever its serial: a duplicate is dropped, anything not
    /// contiguous with the position gets a `RecoveryFailed` first (unless one just went).
    /// A withheld marker is covered the same way: the next message would be contiguous with
    /// it, so the serials skipped before it must be reported here.
    pub(super) fn deliver_covering(&mut self, frame: Frame, out: &mut Outcome) {
        if let (Some(current), Some((stream, serial))) =
            (self.position.get().cloned(), frame.place())
        {
            if self.is_stale(stream, serial) {
                out.duplicates += u64::from(frame.is_message());
                return;
            }
            if current.stream_id != stream {
                let f = self.stream_reset(&current, stream);
                self.report(f, out);
            } else if Some(serial) != current.serial.checked_add(1) {
                let f = self.failure(
                    CODE_CONTINUITY_UNVERIFIABLE,
                    &format!(
                        "serials {}..={} were not received",
                        current.serial.saturating_add(1),
                        serial - 1
                    ),
                );
                self.report(f, out);
            }
        }
        self.deliver(frame, out);
    }

    /// Move the position to `frame` and hand its message (if any) out. A withheld marker
    /// counts as delivered: after it, a `RecoveryFailed` no longer covers the next jump.
    pub(super) fn deliver(&mut self, frame: Frame, out: &mut Outcome) {
        if let Some((stream, serial)) = frame.place() {
            if let Some(current) = self.position.get().filter(|p| p.stream_id != stream) {
                let current = current.clone();
                self.retire(current, stream);
            }
            self.position.observe(stream, serial, frame.message_id());
            self.marked = false;
            self.fresh = false;
        }
        if let Frame::Message(message) = frame {
            out.events.push(ChannelEvent::Message(message));
        }
    }

    /// Continue from `next`, remembering the position left behind on another stream. Back on
    /// a stream left before, never behind where it stood then.
    pub(super) fn move_to(&mut self, next: Position) {
        let next = match self.retired.iter().find(|p| p.stream_id == next.stream_id) {
            Some(left) if left.serial >= next.serial => left.clone(),
            _ => next,
        };
        if let Some(current) = self
            .position
            .get()
            .filter(|p| p.stream_id != next.stream_id)
        {
            let current = current.clone();
            self.retire(current, &next.stream_id);
        }
        self.position.set(next);
    }

    /// Remember `old` as left behind for `next_stream`, which is current again if it was
    /// retired before.
    pub(super) fn retire(&mut self, old: Position, next_stream: &str) {
        self.retired
            .retain(|p| p.stream_id != old.stream_id && p.stream_id != next_stream);
        if self.retired.len() >= RETIRED_STREAMS {
            self.retired.pop_front();
        }
        self.retired.push_back(old);
    }

    /// At or behind where its stream stood: the current one, or one left behind.
    pub(super) fn is_stale(&self, stream: &str, serial: u64) -> bool {
        let behind = |p: &Position| p.stream_id == stream && serial <= p.serial;
        self.position.get().is_some_and(behind) || self.retired.iter().any(behind)
    }

    /// After a reconnect resume succeeded and the held frames went through: the server's
    /// position says how far its replay and live frames reached. Short of it on the same
    /// stream (and no gap pending to explain it), serials were claimed but never received:
    /// fail closed and continue from the claimed position.
    pub(super) fn check_claim(&mut self, claimed: &Position, out: &mut Outcome) {
        let Some(current) = self.position.get().cloned() else {
            return;
        };
        if self.in_gap()
            || current.stream_id != claimed.stream_id
            || claimed.serial <= current.serial
        {
            return;
        }
        let f = self.failure(
            CODE_CONTINUITY_UNVERIFIABLE,
            &format!(
                "the resume reported serials up to {} but only {} arrived",
                claimed.serial, current.serial
            ),
        );
        self.report(f, out);
        self.position.set(claimed.clone());
    }

    /// Surface `failure`, unless a `RecoveryFailed` is already the latest thing delivered.
    pub(super) fn report(&mut self, failure: RecoveryFailure, out: &mut Outcome) {
        if !self.marked {
            out.events.push(ChannelEvent::RecoveryFailed(failure));
            self.marked = true;
        }
    }

    /// Whether an answer that arrives during a gap is for that gap's own resume (answers
    /// come in request order; older requests were for gaps already settled).
    pub(super) fn answer_is_for_current_gap(&mut self, now: Instant) -> bool {
        self.expire_outstanding(now);
        let older = self.outstanding.len() > 1;
        self.outstanding.pop_front();
        !older
    }

    pub(super) fn expire_outstanding(&mut self, now: Instant) {
        while self.outstanding.front().is_some_and(|at| *at <= now) {
            self.outstanding.pop_front();
        }
    }

    pub(super) fn failure(&self, code: crate::RecoveryCode, reason: &str) -> RecoveryFailure {
        RecoveryFailure::client_side(&self.channel, code, reason)
    }

    pub(super) fn stream_reset(&self, current: &Position, new_stream: &str) -> RecoveryFailure {
        RecoveryFailure {
            expected_stream_id: Some(current.stream_id.clone()),
            current_stream_id: Some(new_stream.to_owned()),
            ..self.failure(
                CODE_STREAM_RESET,
                "a frame from another stream arrived: continuity was lost upstream",
            )
        }
    }
}
