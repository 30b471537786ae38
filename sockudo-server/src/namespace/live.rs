//! Positioned broadcasts through each channel's live sequence (see [`crate::sequencer`]):
//! passed on in serial order, repeats dropped, gaps parked until repaired from the history
//! store or given up with a `resume_failed` notice to every V2 subscriber.

use std::sync::Arc;

use serde_json::json;
use sockudo_core::protocol::events::Family;
use sockudo_core::protocol::{OutboundFrame, ProtocolVersion};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::recipients::{fanout_to, snapshot, Recipient};
use super::{Delivery, Namespace};
use crate::sequencer::{Gap, Sequence, Step};

/// A channel's live sequence, locked (owning a handle, so it outlives the map's lock).
type SequenceGuard =
    parking_lot::ArcMutexGuard<parking_lot::RawMutex, Option<Sequence<Positioned>>>;

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
    ///
    /// The sequence stays locked across the fanout (the order of decisions is the order of
    /// queuing), the channel map does not: the recipient snapshot is taken once the sequence
    /// is locked, and the map lock is let go before anything is queued. A subscriber added
    /// after that snapshot misses nothing released under it: every message released here was
    /// appended to the history store before it reached this node, so before the snapshot,
    /// and the new subscriber reads its stream position after it was added, so after; its
    /// position already covers them.
    pub fn deliver_positioned(&self, channel: &str, p: Positioned) -> Sequenced {
        let Some((key, mut seq, recipients)) = self.locked_sequence(channel) else {
            return Sequenced {
                unsubscribed: true,
                ..Sequenced::default()
            };
        };
        let (key, ch) = (&key, &recipients[..]);
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
        let Some((key, mut seq, recipients)) = self.locked_sequence(channel) else {
            return 0;
        };
        let Some(s) = seq.as_mut() else { return 0 };
        let ready = s.repair(stream_id, fetched.into_iter().map(|p| (p.serial, p)));
        self.pass_on(&key, &recipients, ready)
    }

    /// Give up `channel`'s first gap: every V2 subscriber is told (`resume_failed`,
    /// `continuity_unverifiable`) before the messages after the gap are passed on.
    pub fn give_up_gap(&self, channel: &str) -> Option<Gap> {
        let (key, mut seq, recipients) = self.locked_sequence(channel)?;
        let s = seq.as_mut()?;
        let stream_id = Arc::clone(s.position().0);
        let (gap, next) = s.give_up()?;
        let notice: Utf8Bytes = gap_notice(&key, &stream_id, gap).into();
        for r in recipients.iter().filter(|r| r.is_active()) {
            if r.conn.protocol == ProtocolVersion::V2 {
                r.conn.send_on(&key, notice.clone());
            }
        }
        self.pass_on(&key, &recipients, next);
        Some(gap)
    }

    /// The channel's key, its live sequence locked, and its recipient snapshot, all taken
    /// under one hold of the channel map's read lock (so they belong to one channel
    /// incarnation), which is let go before the caller queues anything.
    fn locked_sequence(
        &self,
        channel: &str,
    ) -> Option<(Arc<str>, SequenceGuard, Arc<[Recipient]>)> {
        let ch = self.channels.get(channel)?;
        let seq = ch.sequence.lock_arc();
        Some((Arc::clone(ch.key()), seq, snapshot(ch.value())))
    }

    /// Queue messages that the sequence released, in order, and remember them in the hot
    /// ring (in order too, so the ring stays contiguous).
    fn pass_on(&self, key: &Arc<str>, ch: &[Recipient], list: Vec<Positioned>) -> usize {
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
