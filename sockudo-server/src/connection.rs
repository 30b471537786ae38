//! A connection as the rest of the node sees it: identity, its bounded outbound queue, and a
//! kill switch.
//!
//! The queue is bounded by frames *and* bytes. Publishers only ever `try_send`; a full queue
//! means the client is not reading fast enough, and the connection is closed with 4100 rather
//! than letting memory grow or the publisher wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sockudo_core::app::App;
use sockudo_core::protocol::{ErrorCode, ProtocolVersion};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Limits of one connection's outbound queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// Shared handle of a live connection.
#[derive(Debug)]
pub struct Connection {
    pub socket_id: Arc<str>,
    pub app: Arc<App>,
    pub protocol: ProtocolVersion,
    tx: mpsc::Sender<Utf8Bytes>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    close_code: AtomicU16,
    close_notify: Notify,
    user_id: Mutex<Option<Arc<str>>>,
    /// V2 only: per-channel serials delivered live, and channels held while resuming.
    streams: Mutex<StreamState>,
    /// Channels being subscribed (`StreamState::joining` is non-empty): lets the fanout skip
    /// the lock in the common case.
    joining: AtomicUsize,
}

/// Live serials seen by one V2 connection on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSerials {
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Default)]
struct StreamState {
    live: HashMap<Arc<str>, LiveSerials>,
    /// After a resume: (stream, serial) up to which the channel's replay was contiguous. A
    /// live copy of a replayed message (appended before the replay read, fanned out after the
    /// hold was released) is dropped instead of being delivered twice. Only this exact bound
    /// is safe: other serials may arrive out of order from different publishers.
    replayed: HashMap<Arc<str>, (Arc<str>, u64)>,
    /// Channels being resumed: their live frames wait here until the replay is written.
    held: HashMap<Arc<str>, Vec<Held>>,
    held_frames: usize,
    /// Channels being subscribed: every frame for them (positioned or not, any protocol)
    /// waits here until `subscription_succeeded` is queued, so that no channel event reaches
    /// the client before the subscription's snapshot (presence members, stream head) that the
    /// event may postdate.
    joining: HashMap<Arc<str>, Vec<Utf8Bytes>>,
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

/// Frames a resuming connection may hold before it is closed (reconnect and resume again).
pub const MAX_HELD_FRAMES: usize = 4096;

/// The receiving half, owned by the connection's task.
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::Receiver<Utf8Bytes>,
}

impl Connection {
    pub fn new(
        socket_id: Arc<str>,
        app: Arc<App>,
        protocol: ProtocolVersion,
        limits: QueueLimits,
    ) -> (Arc<Self>, Outbox) {
        let (tx, rx) = mpsc::channel(limits.frames.max(1));
        let conn = Arc::new(Connection {
            socket_id,
            app,
            protocol,
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes: limits.bytes,
            close_code: AtomicU16::new(0),
            close_notify: Notify::new(),
            user_id: Mutex::new(None),
            streams: Mutex::new(StreamState::default()),
            joining: AtomicUsize::new(0),
        });
        (conn, Outbox { rx })
    }

    /// Queue a frame without waiting. Returns false (and schedules a 4100 close) when the
    /// queue is over its frame or byte bound.
    pub fn send(&self, frame: Utf8Bytes) -> bool {
        let len = frame.len();
        let queued = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > self.max_queued_bytes || self.tx.try_send(frame).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            if !self.tx.is_closed() {
                self.close(ErrorCode::OverCapacity);
            }
            return false;
        }
        true
    }

    /// Queue a message that has a stream position, on a V2 connection: held while the channel
    /// is being resumed, otherwise recorded (first/last live serial) and queued.
    pub fn send_positioned(
        &self,
        channel: &Arc<str>,
        stream_id: Option<&Arc<str>>,
        serial: u64,
        frame: Utf8Bytes,
    ) -> bool {
        {
            // Runs once per V2 recipient per message: the rare states (resuming, just
            // resumed, subscribing) are checked only when present, and the key is cloned only
            // the first time a channel is seen.
            let mut st = self.streams.lock();
            if let Some(held) = (!st.held.is_empty())
                .then(|| st.held.get_mut(channel))
                .flatten()
            {
                held.push(Held {
                    serial,
                    stream_id: stream_id.cloned(),
                    frame,
                });
                st.held_frames += 1;
                if st.held_frames > MAX_HELD_FRAMES {
                    drop(st);
                    self.close(ErrorCode::ReconnectImmediately);
                    return false;
                }
                return true;
            }
            if !st.replayed.is_empty() {
                if let (Some(sid), Some((rsid, upto))) = (stream_id, st.replayed.get(channel)) {
                    if sid == rsid && serial <= *upto {
                        return true;
                    }
                }
            }
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
            if let Some(waiting) = (!st.joining.is_empty())
                .then(|| st.joining.get_mut(channel))
                .flatten()
            {
                return self.hold_joining(waiting, frame);
            }
        }
        self.send(frame)
    }

    /// Keep a frame for a channel being subscribed; over [`MAX_HELD_FRAMES`] the connection is
    /// closed (4200: reconnect) instead of growing.
    fn hold_joining(&self, waiting: &mut Vec<Utf8Bytes>, frame: Utf8Bytes) -> bool {
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
                return self.hold_joining(waiting, frame);
            }
        }
        self.send(frame)
    }

    /// Hold every frame for `channel` from now until [`finish_join`](Self::finish_join) (or
    /// [`cancel_join`](Self::cancel_join)). Call before the connection is added to the
    /// channel's subscribers.
    pub fn begin_join(&self, channel: &Arc<str>) {
        let mut st = self.streams.lock();
        st.joining.entry(Arc::clone(channel)).or_default();
        self.joining.store(st.joining.len(), Ordering::Release);
    }

    /// Queue the frames held since [`begin_join`](Self::begin_join), in arrival order, and
    /// stop holding. Call right after queuing `subscription_succeeded`. Atomic with respect to
    /// concurrent fanout: no newer frame can overtake a held one.
    pub fn finish_join(&self, channel: &str) {
        let mut st = self.streams.lock();
        if let Some(waiting) = st.joining.remove(channel) {
            for frame in waiting {
                if !self.send(frame) {
                    break;
                }
            }
        }
        self.joining.store(st.joining.len(), Ordering::Release);
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

    /// Stop holding `channel`; returns the held frames in arrival order.
    pub fn release(&self, channel: &str) -> Vec<Held> {
        self.release_after(channel, None)
    }

    /// Stop holding `channel` after a replay of `stream_id` up to `upto`; live copies of
    /// replayed messages that arrive later are dropped (see `StreamState::replayed`).
    pub fn release_after(&self, channel: &str, replayed: Option<(&str, u64)>) -> Vec<Held> {
        let mut st = self.streams.lock();
        if let Some((sid, upto)) = replayed {
            st.replayed
                .insert(Arc::from(channel), (Arc::from(sid), upto));
        }
        let held = st.held.remove(channel).unwrap_or_default();
        st.held_frames = st.held_frames.saturating_sub(held.len());
        if let Some(last) = held.iter().map(|h| h.serial).max() {
            st.live
                .entry(Arc::from(channel))
                .and_modify(|l| l.last = l.last.max(last))
                .or_insert(LiveSerials { first: last, last });
        }
        held
    }

    /// Forget the stream bookkeeping of a channel the connection left.
    pub fn forget_channel(&self, channel: &str) {
        let mut st = self.streams.lock();
        st.replayed.remove(channel);
        st.live.remove(channel);
        if let Some(h) = st.held.remove(channel) {
            st.held_frames = st.held_frames.saturating_sub(h.len());
        }
        if st.joining.remove(channel).is_some() {
            self.joining.store(st.joining.len(), Ordering::Release);
        }
    }

    /// Queue a frame built from an owned string (control frames: not on the fanout path).
    pub fn send_text(&self, text: String) -> bool {
        self.send(Utf8Bytes::from(text))
    }

    /// Ask the connection's task to close with `code`. The first code wins.
    pub fn close(&self, code: ErrorCode) {
        if self
            .close_code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.close_notify.notify_one();
        }
    }

    /// The close code requested so far, if any.
    pub fn requested_close(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    pub async fn close_requested(&self) -> u16 {
        loop {
            if let Some(c) = self.requested_close() {
                return c;
            }
            self.close_notify.notified().await;
        }
    }

    pub fn user_id(&self) -> Option<Arc<str>> {
        self.user_id.lock().clone()
    }

    pub fn set_user_id(&self, user: Arc<str>) {
        *self.user_id.lock() = Some(user);
    }

    fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}

impl Outbox {
    /// Next queued frame; `None` only when every sender is gone.
    pub async fn recv(&mut self, conn: &Connection) -> Option<Utf8Bytes> {
        let f = self.rx.recv().await?;
        conn.dequeued(f.len());
        Some(f)
    }

    /// A frame that is already queued, without waiting (for batching writes).
    pub fn try_recv(&mut self, conn: &Connection) -> Option<Utf8Bytes> {
        let f = self.rx.try_recv().ok()?;
        conn.dequeued(f.len());
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(frames: usize, bytes: usize) -> (Arc<Connection>, Outbox) {
        Connection::new(
            "1.1".into(),
            Arc::new(App::new("a", "k", "s")),
            ProtocolVersion::V1,
            QueueLimits { frames, bytes },
        )
    }

    #[tokio::test]
    async fn full_by_frames_closes_with_4100() {
        let (c, mut out) = conn(2, 1000);
        assert!(c.send("a".into()));
        assert!(c.send("b".into()));
        assert!(!c.send("c".into()));
        assert_eq!(c.requested_close(), Some(4100));
        assert_eq!(out.recv(&c).await.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn full_by_bytes_closes_with_4100() {
        let (c, mut out) = conn(100, 5);
        assert!(c.send("abc".into()));
        assert!(!c.send("abc".into()));
        assert_eq!(c.requested_close(), Some(4100));
        out.recv(&c).await;
        assert!(c.send("ab".into()), "bytes are released when dequeued");
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
        c.finish_join("presence-c");
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

    #[test]
    fn first_close_code_wins() {
        let (c, _out) = conn(1, 1);
        c.close(ErrorCode::ReconnectImmediately);
        c.close(ErrorCode::OverCapacity);
        assert_eq!(c.requested_close(), Some(4200));
    }
}
