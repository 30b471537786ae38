//! A connection as the rest of the node sees it: identity, its bounded outbound queue, and a
//! kill switch.
//!
//! The queue is bounded by frames *and* bytes. Publishers only ever `try_send`; a full queue
//! means the client is not reading fast enough, and the connection is closed with 4100 rather
//! than letting memory grow or the publisher wait.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sockudo_core::app::App;
use sockudo_core::protocol::{ErrorCode, ProtocolVersion};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

mod streams;

use streams::StreamState;
pub use streams::{AfterJoin, Held, LiveSerials, MAX_HELD_FRAMES};

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

    #[test]
    fn first_close_code_wins() {
        let (c, _out) = conn(1, 1);
        c.close(ErrorCode::ReconnectImmediately);
        c.close(ErrorCode::OverCapacity);
        assert_eq!(c.requested_close(), Some(4200));
    }
}
