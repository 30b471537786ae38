//! Live continuity on a node: per positioned channel, broadcasts are passed on in serial
//! order with no gap and no repeat.
//!
//! Serials are handed out by the shared history store, one channel at a time, without gaps
//! among stored messages. Broadcasts still reach a node out of order (two publishers on two
//! nodes, the origin node's local delivery racing a remote one) or not at all (a publisher
//! that crashed between the history append and the broker publish; a broker hiccup). This
//! state machine, one per channel that has local subscribers, keeps the last serial passed on
//! and parks anything that skips ahead:
//!
//! - the next serial goes out at once, followed by whatever it unblocks;
//! - a serial at or below the last one is a repeat and is dropped;
//! - a serial further ahead opens a gap: it waits (bounded in count) while the node gives the
//!   missing ones a moment to arrive, then fetches them from the history store
//!   ([`Sequence::repair`]);
//! - if the store cannot supply them, the gap is given up ([`Sequence::give_up`]): the node
//!   tells every V2 subscriber of the channel (`resume_failed`, `continuity_unverifiable`),
//!   then goes on from the parked frames. Never a silent skip.
//! - a broadcast of another stream (the history was reset) flushes what waited and restarts
//!   from it: its subscribers learn of the reset from the stream id itself.
//!
//! Pure logic, generic over what a message is, so it can be tested exhaustively.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Most out-of-order messages one channel parks while a gap is open; past it the node stops
/// waiting and repairs (or gives up) at once.
pub const MAX_PARKED: usize = 4096;

/// One channel's live sequence.
#[derive(Debug)]
pub struct Sequence<T> {
    stream_id: Arc<str>,
    last: u64,
    parked: BTreeMap<u64, T>,
}

/// What to do with a message the sequence was shown.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Pass these on, in this order.
    Deliver(Vec<T>),
    /// A repeat of something passed on already: drop it.
    Duplicate,
    /// Parked behind a gap. `opened` is true for the message that opened it (the caller
    /// schedules a repair then); `overflow` when the parking limit was reached (repair now).
    Parked { opened: bool, overflow: bool },
    /// Another stream: pass on what waited for the old one (`flushed`, in order; the gap
    /// before it can never be filled), then this message, which starts the new stream.
    Reset { flushed: Vec<T>, first: T },
}

/// A gap: serials `from..=to` are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
}

impl<T> Sequence<T> {
    /// A sequence that has passed on everything up to `serial` of `stream_id` (a
    /// subscriber's snapshot, or the first message seen).
    pub fn starting_at(stream_id: Arc<str>, serial: u64) -> Self {
        Sequence {
            stream_id,
            last: serial,
            parked: BTreeMap::new(),
        }
    }

    /// The last serial passed on, and its stream.
    pub fn position(&self) -> (&Arc<str>, u64) {
        (&self.stream_id, self.last)
    }

    /// Show the sequence a live message.
    pub fn observe(&mut self, stream_id: &Arc<str>, serial: u64, msg: T) -> Step<T> {
        if *stream_id != self.stream_id {
            let flushed = std::mem::take(&mut self.parked).into_values().collect();
            self.stream_id = Arc::clone(stream_id);
            self.last = serial;
            return Step::Reset {
                flushed,
                first: msg,
            };
        }
        if serial <= self.last || self.parked.contains_key(&serial) {
            return Step::Duplicate;
        }
        if serial == self.last + 1 {
            self.last = serial;
            let mut out = vec![msg];
            self.drain_into(&mut out);
            return Step::Deliver(out);
        }
        let opened = self.parked.is_empty();
        self.parked.insert(serial, msg);
        Step::Parked {
            opened,
            overflow: self.parked.len() >= MAX_PARKED,
        }
    }

    /// The gap in front of the parked messages, if one is open.
    pub fn gap(&self) -> Option<Gap> {
        let (&first, _) = self.parked.first_key_value()?;
        Some(Gap {
            from: self.last + 1,
            to: first - 1,
        })
    }

    /// Fill the gap with messages fetched from the history store (`stream_id`, serials in
    /// any order; anything outside the gap is ignored). Returns what can now be passed on,
    /// in order; [`gap`](Self::gap) says whether a gap remains.
    pub fn repair(
        &mut self,
        stream_id: &str,
        fetched: impl IntoIterator<Item = (u64, T)>,
    ) -> Vec<T> {
        if *stream_id != *self.stream_id {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (serial, msg) in fetched {
            if serial > self.last {
                self.parked.entry(serial).or_insert(msg);
            }
        }
        self.drain_into(&mut out);
        out
    }

    /// Abandon the first open gap: returns it and the parked messages that now follow it, in
    /// order. Messages parked behind a further gap stay parked ([`gap`](Self::gap) then
    /// reports that one).
    pub fn give_up(&mut self) -> Option<(Gap, Vec<T>)> {
        let gap = self.gap()?;
        self.last = gap.to;
        let mut out = Vec::new();
        self.drain_into(&mut out);
        Some((gap, out))
    }

    /// Move the contiguous run after `last` from `parked` to `out`.
    fn drain_into(&mut self, out: &mut Vec<T>) {
        while let Some(msg) = self.parked.remove(&(self.last + 1)) {
            self.last += 1;
            out.push(msg);
        }
    }
}

#[cfg(test)]
mod tests;
