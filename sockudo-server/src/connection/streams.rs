//! The per-channel state of one connection that orders what it receives: frames held while a
//! channel is being subscribed or resumed, the live serials it was sent, and its view of each
//! presence channel's members.
//!
//! Everything here sits behind the connection's one `streams` lock, taken by the fanout only
//! when a rare state (subscribing, resuming, just resumed) is present or for member events, so
//! ordinary deliveries stay a counter check and a queue push.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sockudo_core::adapter::MemberEvent;
use sockudo_core::protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Connection;
use crate::presence_view::{Admit, PresenceView};

/// Live serials seen by one V2 connection on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSerials {
    pub first: u64,
    pub last: u64,
}

/// A live frame held while its channel is being resumed.
#[derive(Debug)]
pub struct Held {
    pub serial: u64,
    /// The stream the frame belongs to: a replay may only be followed by frames of its own
    /// stream.
    pub stream_id: Option<Arc<str>>,
    pub frame: Utf8Bytes,
}

/// Frames a connection may hold (per channel being subscribed, and over every channel being
/// resumed) before it is closed with 4200 (reconnect and resume again) instead of growing.
/// Frames held for resumes are also bounded in bytes, by the connection's outbound byte
/// bound (`OUTBOUND_QUEUE_BYTES`).
pub const MAX_HELD_FRAMES: usize = 4096;

/// A frame that reached a channel while it was being subscribed.
#[derive(Debug)]
enum Pending {
    Frame(Utf8Bytes),
    /// A presence member event: delivered only if the subscriber's snapshot does not already
    /// reflect it (decided once the snapshot is known).
    Member(Utf8Bytes, MemberEvent),
    Positioned(Held),
}

/// What [`Connection::finish_join`] does with the positioned frames that waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterJoin {
    /// Queue them: the channel is live.
    Release,
    /// Keep them (and every later positioned frame) held: a resume of the channel is coming
    /// or expected, and its replay must go first.
    Hold,
}

#[derive(Debug, Default)]
pub(super) struct StreamState {
    live: HashMap<Arc<str>, LiveSerials>,
    /// After a resume: (stream, serial) up to which the channel's replay was contiguous. A
    /// live copy of a replayed message (appended before the replay read, fanned out after the
    /// hold was released) is dropped instead of being delivered twice. Only this exact bound
    /// is safe: other serials may arrive out of order from different publishers.
    replayed: HashMap<Arc<str>, (Arc<str>, u64)>,
    /// Channels being resumed: their live frames wait here until the replay is written.
    held: HashMap<Arc<str>, Vec<Held>>,
    held_frames: usize,
    /// Bytes of the held frames: bounded by the connection's outbound byte bound, like what
    /// it has queued.
    held_bytes: usize,
    /// Channels being subscribed: every frame for them (positioned or not, any protocol)
    /// waits here until `subscription_succeeded` is queued, so that no channel event reaches
    /// the client before the subscription's snapshot (presence members, stream head) that the
    /// event may postdate.
    joining: HashMap<Arc<str>, Vec<Pending>>,
    /// Presence channels: the members this connection was told about (see
    /// [`crate::presence_view`]).
    presence: HashMap<Arc<str>, PresenceView>,
}

impl Connection {
    /// Queue a message that has a stream position, on a V2 connection: held while the channel
    /// is being resumed, otherwise recorded (first/last live serial) and queued.
    pub fn send_positioned(
        &self,
        channel: &Arc<str>,
        stream_id: Option<&Arc<str>>,
        serial: u64,
        frame: Utf8Bytes,
    ) -> bool {
        // Runs once per V2 recipient per message: the rare states (resuming, just resumed,
        // subscribing) are checked only when present, and the key is cloned only the first
        // time a channel is seen.
        let mut st = self.streams.lock();
        let held = Held {
            serial,
            stream_id: stream_id.cloned(),
            frame,
        };
        let len = held.frame.len();
        let held = match (!st.held.is_empty())
            .then(|| st.held.get_mut(channel))
            .flatten()
        {
            Some(list) => {
                list.push(held);
                None
            }
            None => Some(held),
        };
        let Some(held) = held else {
            st.held_frames += 1;
            st.held_bytes = st.held_bytes.saturating_add(len);
            if st.held_frames > MAX_HELD_FRAMES || st.held_bytes > self.max_queued_bytes {
                drop(st);
                self.close(ErrorCode::ReconnectImmediately);
                return false;
            }
            return true;
        };
        if !st.replayed.is_empty() {
            if below_floor(&st, channel, stream_id, serial) {
                return true;
            }
            // The node passes a channel on in serial order (see `crate::sequencer`): once a
            // frame above the floor went out, none below it can follow, so the check (a map
            // lookup per recipient) stops here.
            if stream_id.is_some() && !st.joining.contains_key(channel) {
                st.replayed.remove(channel);
            }
        }
        if let Some(waiting) = (!st.joining.is_empty())
            .then(|| st.joining.get_mut(channel))
            .flatten()
        {
            return self.hold_joining(waiting, Pending::Positioned(held));
        }
        // Recorded only when it goes out: a resume replays up to what was not sent yet.
        record_live(&mut st, channel, serial);
        drop(st);
        self.send(held.frame)
    }

    /// Keep a frame for a channel being subscribed; over [`MAX_HELD_FRAMES`] the connection is
    /// closed (4200: reconnect) instead of growing.
    fn hold_joining(&self, waiting: &mut Vec<Pending>, frame: Pending) -> bool {
        if waiting.len() >= MAX_HELD_FRAMES {
            self.close(ErrorCode::ReconnectImmediately);
            return false;
        }
        waiting.push(frame);
        true
    }

    /// Queue a channel frame without a stream position: like [`send`](Self::send), except
    /// while `channel` is being subscribed ([`begin_join`](Self::begin_join)).
    pub fn send_on(&self, channel: &Arc<str>, frame: Utf8Bytes) -> bool {
        if self.joining.load(Ordering::Acquire) > 0 {
            let mut st = self.streams.lock();
            if let Some(waiting) = st.joining.get_mut(channel) {
                return self.hold_joining(waiting, Pending::Frame(frame));
            }
        }
        self.send(frame)
    }

    /// Queue a presence member event unless this connection's view of the channel already
    /// reflects it (see [`crate::presence_view`]). Returns whether it was queued.
    pub fn send_member(&self, channel: &Arc<str>, event: &MemberEvent, frame: Utf8Bytes) -> bool {
        let mut st = self.streams.lock();
        if let Some(waiting) = st.joining.get_mut(channel) {
            return self.hold_joining(waiting, Pending::Member(frame, event.clone()));
        }
        let admit = st
            .presence
            .get_mut(channel)
            .map_or(Admit::Deliver, |view| view.admit(event));
        drop(st);
        self.deliver_admitted(admit, frame)
    }

    fn deliver_admitted(&self, admit: Admit, frame: Utf8Bytes) -> bool {
        match admit {
            Admit::Deliver => self.send(frame),
            Admit::Skip => false,
            Admit::Overflow => {
                // More members than the channel may hold: this view cannot be trusted any
                // more; a reconnect rebuilds it from a fresh snapshot.
                tracing::warn!(socket_id = %self.socket_id, "presence view over its bound; closing for a resync");
                self.close(ErrorCode::ReconnectImmediately);
                false
            }
        }
    }

    /// Hold every frame for `channel` from now until [`finish_join`](Self::finish_join) (or
    /// [`cancel_join`](Self::cancel_join)). Call before the connection is added to the
    /// channel's subscribers.
    pub fn begin_join(&self, channel: &Arc<str>) {
        let mut st = self.streams.lock();
        st.joining.entry(Arc::clone(channel)).or_default();
        self.joining.store(st.joining.len(), Ordering::Release);
    }

    /// End the subscribe of `channel`: call right after queuing `subscription_succeeded`.
    /// `view` is the presence snapshot that frame listed; member events that waited are
    /// filtered against it, and it filters every later one. Frames that waited are queued in
    /// arrival order, except positioned ones under [`AfterJoin::Hold`], which stay held for a
    /// resume. Atomic with respect to concurrent fanout: no newer frame can overtake a held
    /// one.
    pub fn finish_join(&self, channel: &Arc<str>, view: Option<PresenceView>, after: AfterJoin) {
        let mut st = self.streams.lock();
        let waiting = st.joining.remove(channel).unwrap_or_default();
        self.joining.store(st.joining.len(), Ordering::Release);
        if let Some(view) = view {
            st.presence.insert(Arc::clone(channel), view);
        }
        if after == AfterJoin::Hold {
            st.held.entry(Arc::clone(channel)).or_default();
        }
        for pending in waiting {
            let sent = match pending {
                Pending::Frame(f) => self.send(f),
                Pending::Member(f, ev) => {
                    let admit = st
                        .presence
                        .get_mut(channel)
                        .map_or(Admit::Deliver, |v| v.admit(&ev));
                    if admit == Admit::Skip {
                        continue;
                    }
                    self.deliver_admitted(admit, f)
                }
                Pending::Positioned(h)
                    if below_floor(&st, channel, h.stream_id.as_ref(), h.serial) =>
                {
                    continue;
                }
                Pending::Positioned(h) if after == AfterJoin::Hold => {
                    st.held_frames += 1;
                    st.held_bytes = st.held_bytes.saturating_add(h.frame.len());
                    if let Some(list) = st.held.get_mut(channel) {
                        list.push(h);
                    }
                    true
                }
                Pending::Positioned(h) => {
                    record_live(&mut st, channel, h.serial);
                    self.send(h.frame)
                }
            };
            if !sent && self.requested_close().is_some() {
                break;
            }
        }
        if st.held_frames > MAX_HELD_FRAMES || st.held_bytes > self.max_queued_bytes {
            drop(st);
            self.close(ErrorCode::ReconnectImmediately);
        }
    }

    /// Drop the frames held for a subscription that failed.
    pub fn cancel_join(&self, channel: &str) {
        let mut st = self.streams.lock();
        st.joining.remove(channel);
        self.joining.store(st.joining.len(), Ordering::Release);
    }

    /// Start holding `channel`'s live frames; returns the live serials delivered so far.
    pub fn hold(&self, channel: &Arc<str>) -> Option<LiveSerials> {
        let mut st = self.streams.lock();
        st.held.entry(Arc::clone(channel)).or_default();
        st.live.get(channel).copied()
    }

    /// Whether `channel`'s live frames are being held.
    pub fn is_held(&self, channel: &str) -> bool {
        self.streams.lock().held.contains_key(channel)
    }

    /// Stop holding `channel`; returns the held frames in arrival order.
    pub fn release(&self, channel: &str) -> Vec<Held> {
        self.release_after(channel, None)
    }

    /// Stop holding `channel` and queue what was held, in serial order: no resume came for
    /// it. Atomic with respect to concurrent fanout.
    pub fn release_to_queue(&self, channel: &str) {
        let mut st = self.streams.lock();
        let mut held = take_held(&mut st, channel);
        held.retain(|h| !below_floor(&st, channel, h.stream_id.as_ref(), h.serial));
        held.sort_by_key(|h| h.serial);
        for h in held {
            if !self.send(h.frame) {
                break;
            }
        }
    }

    /// Stop holding `channel` after a replay of `stream_id` up to `upto`; live copies of
    /// replayed messages that arrive later are dropped (see `StreamState::replayed`).
    pub fn release_after(&self, channel: &str, replayed: Option<(&str, u64)>) -> Vec<Held> {
        let mut st = self.streams.lock();
        if let Some((sid, upto)) = replayed {
            st.replayed
                .insert(Arc::from(channel), (Arc::from(sid), upto));
        }
        take_held(&mut st, channel)
    }

    /// A V2 subscribe answered with the stream head `serial` of `stream_id`: live frames of
    /// that stream at or below it are already part of what the subscriber starts from (its
    /// attach position; history has them), so they are not sent. Call before
    /// [`finish_join`](Self::finish_join).
    pub fn set_floor(&self, channel: &Arc<str>, stream_id: &str, serial: u64) {
        self.streams
            .lock()
            .replayed
            .insert(Arc::clone(channel), (Arc::from(stream_id), serial));
    }

    /// Forget the stream bookkeeping of a channel the connection left.
    pub fn forget_channel(&self, channel: &str) {
        let mut st = self.streams.lock();
        st.replayed.remove(channel);
        st.live.remove(channel);
        st.presence.remove(channel);
        if let Some(h) = st.held.remove(channel) {
            st.held_frames = st.held_frames.saturating_sub(h.len());
            st.held_bytes = st.held_bytes.saturating_sub(frame_bytes(&h));
        }
        if st.joining.remove(channel).is_some() {
            self.joining.store(st.joining.len(), Ordering::Release);
        }
    }
}

/// Whether a frame of `channel` at `serial` is at or below the position the connection
/// already has (its subscribe head, or the end of a replay) on the same stream.
fn below_floor(st: &StreamState, channel: &str, stream_id: Option<&Arc<str>>, serial: u64) -> bool {
    match (stream_id, st.replayed.get(channel)) {
        (Some(sid), Some((floor_sid, floor))) => sid == floor_sid && serial <= *floor,
        _ => false,
    }
}

fn frame_bytes(held: &[Held]) -> usize {
    held.iter().map(|h| h.frame.len()).sum()
}

/// Note that `serial` of `channel` went out live.
fn record_live(st: &mut StreamState, channel: &Arc<str>, serial: u64) {
    match st.live.get_mut(channel) {
        Some(l) => l.last = l.last.max(serial),
        None => {
            st.live.insert(
                Arc::clone(channel),
                LiveSerials {
                    first: serial,
                    last: serial,
                },
            );
        }
    }
}

/// Remove `channel`'s held frames (arrival order), keeping the count and live serials right.
fn take_held(st: &mut StreamState, channel: &str) -> Vec<Held> {
    let held = st.held.remove(channel).unwrap_or_default();
    st.held_frames = st.held_frames.saturating_sub(held.len());
    st.held_bytes = st.held_bytes.saturating_sub(frame_bytes(&held));
    let serials = held.iter().map(|h| h.serial);
    if let (Some(first), Some(last)) = (serials.clone().min(), serials.max()) {
        st.live
            .entry(Arc::from(channel))
            .and_modify(|l| l.last = l.last.max(last))
            .or_insert(LiveSerials { first, last });
    }
    held
}

#[cfg(test)]
mod tests;
