//! Positioned broadcasts through each channel's live sequence (see [`crate::sequencer`]):
//! passed on in serial order, repeats dropped, gaps parked until repaired from the history
//! store or given up with a `resume_failed` notice to every V2 subscriber.

use std::sync::Arc;

use serde_json::json;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::{OutboundFrame, ProtocolVersion};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{fanout_to, Channel, Delivery, Namespace};
use crate::sequencer::{Gap, Sequence, Step};

/// A broadcast that has a place in its channel's stream, owned so it can wait behind a gap.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub v1: Utf8Bytes,
    pub v2: Utf8Bytes,
    pub serial: u64,
    pub stream_id: Arc<str>,
    pub except: Option<Arc<str>>,
}

/// What [`Namespace::deliver_positioned`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sequenced {
    /// No local subscriber: nothing to order (the caller still feeds the hot ring).
    pub unsubscribed: bool,
    /// Frames queued to connections.
    pub frames: usize,
    /// A repeat of a message already passed on.
    pub duplicate: bool,
    /// The message opened a gap (or overflowed the parking): the caller starts a repair.
    pub gap_opened: bool,
}

impl Namespace {
    /// Pass a positioned broadcast through its channel's live sequence.
    pub fn deliver_positioned(&self, channel: &str, p: Positioned) -> Sequenced {
        let Some(ch) = self.channels.get(channel) else {
            return Sequenced {
                unsubscribed: true,
                ..Sequenced::default()
            };
        };
        let (key, ch) = (ch.key(), ch.value());
        // Held across the fanout: the order of decisions is the order of queuing.
        let mut seq = ch.sequence.lock();
        let step = match &mut *seq {
            Some(s) => {
                let sid = Arc::clone(&p.stream_id);
                s.observe(&sid, p.serial, p)
            }
            None => {
                *seq = Some(Sequence::starting_at(Arc::clone(&p.stream_id), p.serial));
                Step::Deliver(vec![p])
            }
        };
        let mut out = Sequenced::default();
        match step {
            Step::Deliver(list) => out.frames = self.pass_on(key, ch, list),
            Step::Duplicate => out.duplicate = true,
            Step::Parked { opened, overflow } => out.gap_opened = opened || overflow,
            Step::Reset { flushed, first } => {
                out.frames = self.pass_on(key, ch, flushed);
                out.frames += self.pass_on(key, ch, vec![first]);
            }
        }
        out
    }

    /// Start a channel's live sequence at a subscriber's snapshot, unless one runs already:
    /// a message after it that never arrives is then a gap, not a silent first message.
    pub fn sequence_from(&self, channel: &str, stream_id: &str, serial: u64) {
        if let Some(ch) = self.channels.get(channel) {
            let mut seq = ch.sequence.lock();
            if seq.is_none() {
                *seq = Some(Sequence::starting_at(Arc::from(stream_id), serial));
            }
        }
    }

    /// The gap open in front of `channel`'s parked messages, with its stream.
    pub fn open_gap(&self, channel: &str) -> Option<(Arc<str>, Gap)> {
        let ch = self.channels.get(channel)?;
        let seq = ch.sequence.lock();
        let s = seq.as_ref()?;
        Some((Arc::clone(s.position().0), s.gap()?))
    }

    /// Fill `channel`'s gap with messages fetched from the history store; returns the
    /// frames queued.
    pub fn repair_gap(&self, channel: &str, stream_id: &str, fetched: Vec<Positioned>) -> usize {
        let Some(ch) = self.channels.get(channel) else {
            return 0;
        };
        let (key, ch) = (ch.key(), ch.value());
        let mut seq = ch.sequence.lock();
        let Some(s) = seq.as_mut() else { return 0 };
        let ready = s.repair(stream_id, fetched.into_iter().map(|p| (p.serial, p)));
        self.pass_on(key, ch, ready)
    }

    /// Give up `channel`'s first gap: every V2 subscriber is told (`resume_failed`,
    /// `continuity_unverifiable`) before the messages after the gap are passed on.
    pub fn give_up_gap(&self, channel: &str) -> Option<Gap> {
        let ch = self.channels.get(channel)?;
        let (key, ch) = (ch.key(), ch.value());
        let mut seq = ch.sequence.lock();
        let s = seq.as_mut()?;
        let stream_id = Arc::clone(s.position().0);
        let (gap, next) = s.give_up()?;
        let notice: Utf8Bytes = gap_notice(key, &stream_id, gap).into();
        for sub in ch.subscribers.values() {
            if sub.conn.protocol == ProtocolVersion::V2 {
                sub.conn.send_on(key, notice.clone());
            }
        }
        self.pass_on(key, ch, next);
        Some(gap)
    }

    /// Queue messages that the sequence released, in order, and remember them in the hot
    /// ring (in order too, so the ring stays contiguous).
    fn pass_on(&self, key: &Arc<str>, ch: &Channel, list: Vec<Positioned>) -> usize {
        let mut frames = 0;
        for p in list {
            self.hot.push(key, &p.stream_id, p.serial, &p.v2);
            let d = Delivery {
                v1: p.v1,
                v2: Some(p.v2),
                serial: Some(p.serial),
                stream_id: Some(&p.stream_id),
                except: p.except.as_deref(),
            };
            frames += fanout_to(key, ch, &d);
        }
        frames
    }
}

/// The fail-closed notice of a live gap that could not be repaired: the shape of a failed
/// resume (PROTOCOL §6), which V2 clients already handle, with the channel on the frame and in
/// `data`.
pub fn gap_notice(channel: &str, stream_id: &str, gap: Gap) -> String {
    let data = json!({
        "channel": channel,
        "code": "continuity_unverifiable",
        "reason": format!("live gap: serials {} to {} could not be recovered", gap.from, gap.to),
        "expected_stream_id": stream_id,
        "current_stream_id": stream_id,
        "oldest_available_serial": null,
        "newest_available_serial": null,
    });
    OutboundFrame::system(
        Family::Sockudo,
        "resume_failed",
        Some(channel),
        &data.to_string(),
    )
}
