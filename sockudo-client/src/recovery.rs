//! The connection task's side of V2 continuity: it feeds each channel's
//! [`Continuity`](crate::continuity::Continuity) the frames, subscription heads, resume
//! answers and the clock, and carries out what it decides (send a resume, deliver events in
//! order, count).
//!
//! Resume answers are handled channel by channel, so the server may answer one
//! `sockudo:resume` with several `resume_success` frames and bare `resume_failed` frames, in
//! any order relative to other channels' `subscription_succeeded`. A bare `resume_failed`
//! may also come unasked, at any time: the server saw a gap it cannot repair.

use std::time::Instant;

use serde_json::Value;
use sockudo_core::channel::ChannelKind;

use crate::connection::Task;
use crate::continuity::Outcome;
use crate::event::{ChannelEvent, ClientEvent, Message, RecoveryFailure};
use crate::positions::Position;
use crate::resume::{self, resume_frame};
use crate::stats::StatsCell;

impl Task {
    /// A V2 broadcast for a channel that is not the user's own.
    pub(crate) fn on_stream_message(&mut self, channel: &str, message: Message, now: Instant) {
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let outcome = entry.continuity.on_message(message, now);
        self.apply(channel, outcome, now);
    }

    /// `sockudo_internal:position`: a serial of the channel went to a message withheld from
    /// this connection. It advances the channel like a delivered message and is never
    /// surfaced; the user's own channel has no continuity to advance.
    pub(crate) fn on_withheld(&mut self, channel: &str, position: Position) {
        let now = Instant::now();
        let Some(entry) = self
            .channels
            .get_mut(channel)
            .filter(|e| e.kind != ChannelKind::ServerToUser)
        else {
            return;
        };
        let outcome = entry.continuity.on_position(position, now);
        self.apply(channel, outcome, now);
    }

    /// The stream head from `subscription_succeeded`.
    pub(crate) fn on_head(&mut self, channel: &str, head: Position) {
        let now = Instant::now();
        let Some(entry) = self.channels.get_mut(channel) else {
            return;
        };
        let outcome = entry.continuity.attach(head, now);
        self.apply(channel, outcome, now);
    }

    /// `sockudo:resume_success`: the channels it lists, each on its own.
    pub(crate) fn on_resume_success(&mut self, data: Value) {
        let now = Instant::now();
        let answer = resume::parse_success(&data);
        for recovered in answer.recovered {
            let outcome = self
                .channels
                .get_mut(&recovered.channel)
                .and_then(|e| e.continuity.on_recovered(&recovered, now));
            if let Some(outcome) = outcome {
                self.apply(&recovered.channel, outcome, now);
            }
        }
        for failure in answer.failed {
            let channel = failure.channel.clone();
            let outcome = self
                .channels
                .get_mut(&channel)
                .and_then(|e| e.continuity.on_answer_failed(failure, now));
            if let Some(outcome) = outcome {
                self.apply(&channel, outcome, now);
            }
        }
    }

    /// A bare `sockudo:resume_failed`, asked for or not.
    pub(crate) fn on_resume_failed(&mut self, failure: RecoveryFailure) {
        let now = Instant::now();
        let channel = failure.channel.clone();
        let outcome = self
            .channels
            .get_mut(&channel)
            .and_then(|e| e.continuity.on_failed(failure, now));
        if let Some(outcome) = outcome {
            self.apply(&channel, outcome, now);
        }
    }

    /// Give up the gaps and resumes whose answer is overdue.
    pub(crate) fn check_resume_timeouts(&mut self, now: Instant) {
        let overdue: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, e)| e.deadline().is_some_and(|d| d <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in overdue {
            let outcome = self
                .channels
                .get_mut(&channel)
                .and_then(|e| e.continuity.check_timeout(now));
            if let Some(outcome) = outcome {
                self.apply(&channel, outcome, now);
            }
        }
    }

    /// Carry out an outcome: count, ask for a resume, deliver the events in order.
    fn apply(&mut self, channel: &str, outcome: Outcome, now: Instant) {
        let stats = &self.stats;
        for _ in 0..outcome.duplicates {
            stats.duplicate(channel);
        }
        StatsCell::add(&stats.gaps_detected, outcome.gaps_opened);
        StatsCell::add(&stats.gaps_filled, outcome.gaps_filled);
        match outcome.resume_verdict {
            Some(true) => StatsCell::bump(&stats.resumes_succeeded),
            Some(false) => StatsCell::bump(&stats.resumes_failed),
            None => {}
        }
        if let Some(from) = &outcome.resume_from {
            if let Some(frame) = resume_frame(self.family, [(channel, from)]) {
                self.outbox.push(frame);
            }
        }
        for event in outcome.events {
            match event {
                ChannelEvent::Message(message) => self.present(channel, message, now),
                ChannelEvent::RecoveryFailed(failure) => {
                    StatsCell::bump(&self.stats.recovery_failures);
                    let _ = self
                        .events_tx
                        .send(ClientEvent::RecoveryFailed(failure.clone()));
                    self.deliver(channel, ChannelEvent::RecoveryFailed(failure));
                }
                other => self.deliver(channel, other),
            }
        }
    }
}
